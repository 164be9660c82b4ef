//! The AWS target: `flipstack provision plan|up|down|status`.
//!
//! Every resource is named from the stack (`flipstack-<stack>-…`) and tagged
//! `flipstack:stack=<stack>`; the tag, not a local file, is what says a
//! resource belongs to the stack. `up` observes each resource, compares it with
//! what the stack needs, and creates or corrects only what differs, so a second
//! run changes nothing; `plan` is the same walk without the changes. `down`
//! deletes only what carries the stack's tag, in dependency order.
//!
//! Callers see each step through a [`Progress`] callback ([`Event`]s: which
//! resource, creating / exists / updating / waiting / done), which is how the
//! console shows provisioning without going through the CLI.

mod access;
mod alarms;
mod balancer;
mod clients;
mod compute;
mod data;
mod inventory;
mod names;
mod network;
mod run;
mod storage;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use flipstack_aws::AwsSettings;
use serde::Serialize;

pub use inventory::{Access, ResourceStatus, StackStatus, Teardown, access, down, status};
pub use names::validate_stack_name;
pub use run::{plan, up};

/// What the operator asks `up` for. [`StackSpec::new`] gives the defaults the
/// CLI uses; every field can be changed before calling [`plan`] or [`up`].
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub stack: String,
    pub aws: AwsSettings,
    /// The VPC to build in; the region's default VPC when unset.
    pub vpc_id: Option<String>,
    /// The machine image; the newest Amazon Linux 2023 (x86_64) when unset.
    pub ami: Option<String>,
    pub web_instance_type: String,
    pub worker_instance_type: String,
    pub web: Capacity,
    pub worker: Capacity,
    /// Web group's target: ALB requests per instance per minute.
    pub requests_per_target: f64,
    /// Worker group's target: waiting and in-flight queue messages per in-service instance.
    pub backlog_per_worker: f64,
    /// The groups' default instance warmup (seconds).
    pub warmup_secs: i32,
    pub db_instance_class: String,
    /// MariaDB version (the metadata store needs MariaDB's GTID functions).
    pub db_engine_version: String,
    pub db_storage_gb: i32,
    pub cache_node_type: String,
    pub cache_nodes: i32,
    /// An ACM certificate: adds an HTTPS listener on 443 (and opens 443).
    pub certificate_arn: Option<String>,
    /// Opens SSH (22) on the instances from this CIDR; closed when unset.
    pub ssh_from: Option<String>,
    /// EC2 key pair for SSH.
    pub key_name: Option<String>,
    /// The flipstack binary (Linux x86_64) uploaded as the release artifact;
    /// None: the running executable. Either is checked that Amazon Linux 2023
    /// can run it, and uploaded when it differs from the bucket's.
    pub binary: Option<PathBuf>,
    /// Where people reach the service; `http(s)://<load balancer DNS>` when unset.
    pub public_url: Option<String>,
    /// The instances' mailer (`smtp://…`); their local outbox when unset.
    pub mail_url: Option<String>,
    pub metrics_namespace: String,
    /// The SNS topic the alarms notify; none: they only change state.
    pub alarm_topic_arn: Option<String>,
    /// The oldest-job alarm fires when a job waits longer than this.
    pub oldest_job_alarm_minutes: u32,
    pub waits: Waits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub min: u32,
    pub max: u32,
}

/// How `up` and `down` wait for AWS (databases take minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            poll: Duration::from_secs(10),
            // RDS creation and replica set-up can take 20 minutes or more.
            timeout: Duration::from_secs(45 * 60),
        }
    }
}

impl StackSpec {
    pub fn new(stack: impl Into<String>, aws: AwsSettings) -> StackSpec {
        StackSpec {
            stack: stack.into(),
            aws,
            vpc_id: None,
            ami: None,
            web_instance_type: "t3.small".into(),
            worker_instance_type: "t3.small".into(),
            web: Capacity { min: 1, max: 4 },
            worker: Capacity { min: 1, max: 4 },
            requests_per_target: 1000.0,
            backlog_per_worker: 4.0,
            warmup_secs: 120,
            db_instance_class: "db.t4g.micro".into(),
            db_engine_version: "10.11".into(),
            db_storage_gb: 20,
            cache_node_type: "cache.t4g.micro".into(),
            cache_nodes: 1,
            certificate_arn: None,
            ssh_from: None,
            key_name: None,
            binary: None,
            public_url: None,
            mail_url: None,
            metrics_namespace: "flipstack".into(),
            alarm_topic_arn: None,
            oldest_job_alarm_minutes: 15,
            waits: Waits::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ProvisionError> {
        validate_stack_name(&self.stack)?;
        let bad = |m: String| Err(ProvisionError::Invalid(m));
        for (role, c) in [("web", self.web), ("worker", self.worker)] {
            if c.min > c.max {
                return bad(format!(
                    "the {role} group's minimum ({}) is above its maximum ({}); lower --{role}-min or raise --{role}-max",
                    c.min, c.max
                ));
            }
            if c.max == 0 {
                return bad(format!("the {role} group's maximum must be at least 1"));
            }
        }
        // The worker policy divides the backlog by in-service workers: with
        // none in service the metric has no value and nothing would scale out.
        if self.worker.min == 0 {
            return bad(
                "the worker group needs at least one instance (--worker-min 1): its scaling metric is the backlog divided by in-service workers".into(),
            );
        }
        if self.requests_per_target <= 0.0 || self.backlog_per_worker <= 0.0 {
            return bad("scaling targets must be above zero".into());
        }
        if self.warmup_secs < 0 {
            return bad("the instance warmup cannot be negative".into());
        }
        if self.cache_nodes < 1 || self.cache_nodes > 40 {
            return bad("a memcached cluster has 1 to 40 nodes".into());
        }
        if self.db_storage_gb < 20 {
            return bad("RDS MariaDB needs at least 20 GB of storage".into());
        }
        if let Some(cidr) = &self.ssh_from {
            let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
                ip.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
            });
            if !ok {
                return bad(format!("--ssh-from {cidr:?} is not an IPv4 CIDR; give your address like 203.0.113.7/32"));
            }
            if cidr.ends_with("/0") {
                return bad("--ssh-from must not open SSH to the whole internet; give your own address (/32)".into());
            }
        }
        if let Some(url) = &self.public_url
            && url::Url::parse(url).is_err()
        {
            return bad(format!("--stack-public-url {url:?} is not a URL; use e.g. https://photos.example.com"));
        }
        Ok(())
    }
}

/// What kind of resource a step is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    SecurityGroup,
    Bucket,
    ReleaseArtifact,
    Configuration,
    Queue,
    DeadLetterQueue,
    Role,
    InstanceProfile,
    DbSubnetGroup,
    Database,
    DatabaseReplica,
    CacheSubnetGroup,
    CacheCluster,
    TargetGroup,
    LoadBalancer,
    Listener,
    LaunchTemplate,
    AutoScalingGroup,
    ScalingPolicy,
    Alarm,
    Instance,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::SecurityGroup => "security group",
            Kind::Bucket => "bucket",
            Kind::ReleaseArtifact => "release artifact",
            Kind::Configuration => "configuration",
            Kind::Queue => "queue",
            Kind::DeadLetterQueue => "dead-letter queue",
            Kind::Role => "IAM role",
            Kind::InstanceProfile => "instance profile",
            Kind::DbSubnetGroup => "DB subnet group",
            Kind::Database => "database",
            Kind::DatabaseReplica => "database replica",
            Kind::CacheSubnetGroup => "cache subnet group",
            Kind::CacheCluster => "cache cluster",
            Kind::TargetGroup => "target group",
            Kind::LoadBalancer => "load balancer",
            Kind::Listener => "listener",
            Kind::LaunchTemplate => "launch template",
            Kind::AutoScalingGroup => "auto scaling group",
            Kind::ScalingPolicy => "scaling policy",
            Kind::Alarm => "alarm",
            Kind::Instance => "instance",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What `up` does (or, in a [`Plan`], would do) to one resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", content = "what", rename_all = "kebab-case")]
pub enum Change {
    Create,
    /// Exists, but these differences are corrected.
    Update(Vec<String>),
    /// Exists as the stack needs it.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub kind: Kind,
    pub name: String,
    pub change: Change,
    /// What the resource will be (shown under it in a plan).
    pub notes: Vec<String>,
    /// What the operator should know or do about it (also sent as
    /// [`Step::Warning`] events).
    pub warnings: Vec<String>,
}

/// The list of actions `up` would take (from [`plan`]) or took (from [`up`]),
/// in the order it takes them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub stack: String,
    pub region: String,
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn creates(&self) -> usize {
        self.count(|c| matches!(c, Change::Create))
    }
    pub fn updates(&self) -> usize {
        self.count(|c| matches!(c, Change::Update(_)))
    }
    pub fn keeps(&self) -> usize {
        self.count(|c| matches!(c, Change::Keep))
    }
    /// True when nothing would be (or was) created or changed.
    pub fn is_noop(&self) -> bool {
        self.creates() == 0 && self.updates() == 0
    }
    fn count(&self, f: impl Fn(&Change) -> bool) -> usize {
        self.actions.iter().filter(|a| f(&a.change)).count()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            let (mark, word) = match &a.change {
                Change::Create => ('+', "create"),
                Change::Update(_) => ('~', "change"),
                Change::Keep => ('=', "keep"),
            };
            writeln!(f, "{mark} {word:<6} {:<18} {}", a.kind.label(), a.name)?;
            if let Change::Update(what) = &a.change {
                for w in what {
                    writeln!(f, "           - {w}")?;
                }
            }
            for n in &a.notes {
                writeln!(f, "           {n}")?;
            }
            for w in &a.warnings {
                writeln!(f, "           ! {w}")?;
            }
        }
        write!(
            f,
            "stack {} in {}: {} to create, {} to change, {} unchanged",
            self.stack,
            self.region,
            self.creates(),
            self.updates(),
            self.keeps()
        )
    }
}

/// One step of `up` or `down`, as it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub kind: Kind,
    pub name: String,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", content = "detail", rename_all = "kebab-case")]
pub enum Step {
    /// Looking at what exists.
    Checking,
    Creating,
    Updating(Vec<String>),
    /// Already as needed: nothing to do.
    Exists,
    Deleting,
    /// Waiting for AWS (a database becoming available, a group draining, …).
    Waiting {
        what: String,
        elapsed_secs: u64,
    },
    Done,
    /// Found under the stack's name but not carrying its tag: left alone.
    LeftAlone(String),
    /// Something the operator should know; the step goes on.
    Warning(String),
    /// The step failed; `down` goes on with what does not depend on it.
    Failed(String),
}

/// Receives every [`Event`]. The CLI draws progress bars from it; the console
/// forwards it to its provisioning view.
pub type Progress<'a> = &'a (dyn Fn(&Event) + Send + Sync);

/// A [`Progress`] that ignores events.
pub fn no_progress(_: &Event) {}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Invalid(String),
    /// A name the stack needs is taken by something that is not the stack's.
    #[error("{0}")]
    Conflict(String),
    /// An AWS call failed: `detail` is what AWS said, `source` the SDK's error.
    #[error("{doing}: {detail}{hint}")]
    Aws { doing: String, detail: String, hint: String, source: Box<dyn std::error::Error + Send + Sync + 'static> },
    #[error(
        "gave up after {secs} s waiting for {what}; AWS may still be working on it: run the same command again to continue from where it is"
    )]
    Timeout { what: String, secs: u64 },
    #[error("reading {path}: {source}; give the flipstack binary to upload with --binary")]
    Binary { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),
}

/// Down's choices.
#[derive(Debug, Clone)]
pub struct DownOptions {
    /// Take a final snapshot of the primary database before deleting it
    /// (the default; `--skip-final-snapshot` turns it off).
    pub final_snapshot: bool,
    pub waits: Waits,
}

impl Default for DownOptions {
    fn default() -> Self {
        DownOptions { final_snapshot: true, waits: Waits::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(t: T) -> T {
        t
    }

    /// The console runs these on tokio tasks: their futures must be Send.
    #[test]
    fn the_operations_can_run_on_spawned_tasks() {
        let aws = AwsSettings { region: "us-east-1".into(), endpoint: Some("http://127.0.0.1:9".into()) };
        let spec = StackSpec::new("a", aws.clone());
        let progress = |_: &Event| {};
        drop(send(plan(&spec)));
        drop(send(up(&spec, &progress)));
        drop(send(down(&aws, "a", &DownOptions::default(), &progress)));
        drop(send(status(&aws, "a")));
        drop(send(access(&aws, "a")));
    }

    #[test]
    fn the_spec_is_checked_before_any_call() {
        let aws = AwsSettings { region: "us-east-1".into(), endpoint: None };
        let ok = StackSpec::new("prod", aws.clone());
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.worker.min = 0;
        assert!(s.validate().unwrap_err().to_string().contains("--worker-min 1"));
        let mut s = ok.clone();
        s.web = Capacity { min: 3, max: 2 };
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.ssh_from = Some("0.0.0.0/0".into());
        assert!(s.validate().unwrap_err().to_string().contains("whole internet"));
        s.ssh_from = Some("203.0.113.7/32".into());
        assert!(s.validate().is_ok());
        s.ssh_from = Some("nonsense".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_plan_reads_as_a_list_of_changes() {
        let plan = Plan {
            stack: "a".into(),
            region: "us-east-1".into(),
            actions: vec![
                Action {
                    kind: Kind::Queue,
                    name: "flipstack-a-jobs".into(),
                    change: Change::Create,
                    notes: vec!["redrive".into()],
                    warnings: vec![],
                },
                Action {
                    kind: Kind::SecurityGroup,
                    name: "flipstack-a-web".into(),
                    change: Change::Update(vec!["revoke tcp 22 from 0.0.0.0/0".into()]),
                    notes: vec![],
                    warnings: vec![],
                },
                Action { kind: Kind::Bucket, name: "b".into(), change: Change::Keep, notes: vec![], warnings: vec![] },
            ],
        };
        assert!(!plan.is_noop());
        assert_eq!((plan.creates(), plan.updates(), plan.keeps()), (1, 1, 1));
        let text = plan.to_string();
        assert!(text.contains("+ create queue"), "{text}");
        assert!(text.contains("~ change security group"), "{text}");
        assert!(text.contains("- revoke tcp 22 from 0.0.0.0/0"), "{text}");
        assert!(text.ends_with("1 to create, 1 to change, 1 unchanged"), "{text}");
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["actions"][1]["change"]["change"], "update");
        assert_eq!(json["actions"][0]["kind"], "queue");
    }
}
