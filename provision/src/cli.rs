//! `flipstack provision plan|up|down|status`: flags, progress bars and
//! printing. The work is in [`crate::aws`], which the console calls directly.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use flipstack_aws::AwsSettings;
use flipstack_domain::Config;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::aws::{self, Capacity, DownOptions, Event, Kind, StackSpec, Step};

#[derive(Subcommand, Debug)]
pub enum ProvisionCommand {
    /// Show what `up` would create, change or leave as it is. Changes nothing.
    Plan(UpArgs),
    /// Create the stack on AWS, or correct what differs; a second run changes nothing.
    Up(UpArgs),
    /// Delete every resource tagged with the stack (and nothing else), dependents first.
    Down(DownArgs),
    /// Show the stack's resources and its groups' desired and in-service counts.
    Status(StatusArgs),
    /// Check that a flipstack binary runs on the instances (Linux x86-64, glibc at most
    /// Amazon Linux 2023's 2.34): prints the highest GLIBC_ version it needs; fails otherwise.
    CheckRelease(CheckReleaseArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CheckReleaseArgs {
    /// The binary to check [default: this flipstack executable, what `up` ships].
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// The stack's name: resources are named flipstack-<stack>-… and tagged flipstack:stack=<stack>.
    #[arg(long, env = "FLIPSTACK_STACK")]
    pub stack: String,
    /// AWS region [default: FLIPSTACK_AWS_REGION, else us-east-1]
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub target: StackArgs,
    /// The flipstack binary to upload as the release [default: this flipstack
    /// executable]. Either must be a Linux x86-64 build that Amazon Linux 2023
    /// runs (glibc at most 2.34); it is uploaded when it differs from the stack's.
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    /// VPC to build in [default: the region's default VPC]
    #[arg(long)]
    pub vpc_id: Option<String>,
    /// Machine image [default: the newest Amazon Linux 2023, x86-64]
    #[arg(long)]
    pub ami: Option<String>,
    #[arg(long, default_value = "t3.small")]
    pub web_instance_type: String,
    #[arg(long, default_value = "t3.small")]
    pub worker_instance_type: String,
    #[arg(long, default_value_t = 1)]
    pub web_min: u32,
    #[arg(long, default_value_t = 4)]
    pub web_max: u32,
    /// Fewest workers [default: FLIPSTACK_WORKERS_MIN]
    #[arg(long)]
    pub worker_min: Option<u32>,
    /// Most workers [default: FLIPSTACK_WORKERS_MAX]
    #[arg(long)]
    pub worker_max: Option<u32>,
    /// Web target: ALB requests per instance per minute.
    #[arg(long, default_value_t = 1000.0)]
    pub requests_per_target: f64,
    /// Worker target: visible queue messages per in-service worker [default: FLIPSTACK_BACKLOG_PER_WORKER]
    #[arg(long)]
    pub backlog_per_worker: Option<f64>,
    /// Default instance warmup of both groups, in seconds.
    #[arg(long, default_value_t = 120)]
    pub warmup_secs: i32,
    #[arg(long, default_value = "db.t4g.micro")]
    pub db_instance_class: String,
    /// MariaDB version (the metadata store needs MariaDB, not MySQL).
    #[arg(long, default_value = "10.11")]
    pub db_engine_version: String,
    #[arg(long, default_value_t = 20)]
    pub db_storage_gb: i32,
    #[arg(long, default_value = "cache.t4g.micro")]
    pub cache_node_type: String,
    #[arg(long, default_value_t = 1)]
    pub cache_nodes: i32,
    /// ACM certificate ARN: serve HTTPS on 443 (80 redirects to it).
    #[arg(long)]
    pub certificate_arn: Option<String>,
    /// Open SSH (22) to the instances from this CIDR, e.g. 203.0.113.7/32. Closed by default.
    #[arg(long, value_name = "CIDR")]
    pub ssh_from: Option<String>,
    /// EC2 key pair for SSH.
    #[arg(long)]
    pub key_name: Option<String>,
    /// Where people reach the stack's service, e.g. https://photos.example.com
    /// [default: http(s)://<load balancer DNS>]. (Not --public-url: that one
    /// configures this machine's flipstack.)
    #[arg(long, value_name = "URL")]
    pub stack_public_url: Option<String>,
    /// The stack's mailer, smtp://user:pass@host:port [default: a local outbox on each instance]
    #[arg(long, value_name = "URL")]
    pub stack_mail_url: Option<String>,
    /// An SNS topic ARN the alarms notify (dead letters, an old job, 5xx, database storage).
    #[arg(long, value_name = "ARN")]
    pub alarm_topic_arn: Option<String>,
    /// The oldest-job alarm fires when a job has waited longer than this.
    #[arg(long, value_name = "MINUTES", default_value_t = 15)]
    pub oldest_job_alarm_minutes: u32,
    /// Seconds between checks while waiting for AWS.
    #[arg(long, default_value_t = 10)]
    pub poll_secs: u64,
    /// Print the plan as JSON (plan only).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DownArgs {
    #[command(flatten)]
    pub target: StackArgs,
    /// Confirm without asking: down deletes the stack's database, cache, queue and bucket with its pictures.
    #[arg(long)]
    pub yes: bool,
    /// Delete the primary database without the final snapshot down otherwise keeps.
    #[arg(long)]
    pub skip_final_snapshot: bool,
    /// Seconds between checks while waiting for AWS.
    #[arg(long, default_value_t = 10)]
    pub poll_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: StackArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

fn settings(target: &StackArgs, config: &Config) -> AwsSettings {
    let mut aws = AwsSettings::from_config(config);
    if let Some(r) = &target.region {
        aws.region = r.clone();
    }
    aws
}

pub fn spec(args: &UpArgs, config: &Config) -> StackSpec {
    let mut spec = StackSpec::new(args.target.stack.clone(), settings(&args.target, config));
    spec.binary = args.binary.clone();
    spec.vpc_id = args.vpc_id.clone();
    spec.ami = args.ami.clone();
    spec.web_instance_type = args.web_instance_type.clone();
    spec.worker_instance_type = args.worker_instance_type.clone();
    spec.web = Capacity { min: args.web_min, max: args.web_max };
    spec.worker = Capacity {
        min: args.worker_min.unwrap_or(config.workers_min),
        max: args.worker_max.unwrap_or(config.workers_max),
    };
    spec.requests_per_target = args.requests_per_target;
    spec.backlog_per_worker = args.backlog_per_worker.unwrap_or(config.backlog_per_worker as f64);
    spec.warmup_secs = args.warmup_secs;
    spec.db_instance_class = args.db_instance_class.clone();
    spec.db_engine_version = args.db_engine_version.clone();
    spec.db_storage_gb = args.db_storage_gb;
    spec.cache_node_type = args.cache_node_type.clone();
    spec.cache_nodes = args.cache_nodes;
    spec.certificate_arn = args.certificate_arn.clone();
    spec.ssh_from = args.ssh_from.clone();
    spec.key_name = args.key_name.clone();
    spec.public_url = args.stack_public_url.clone();
    spec.mail_url = args.stack_mail_url.clone();
    spec.metrics_namespace = config.metrics_namespace.clone();
    spec.alarm_topic_arn = args.alarm_topic_arn.clone();
    spec.oldest_job_alarm_minutes = args.oldest_job_alarm_minutes.max(1);
    spec.waits.poll = Duration::from_secs(args.poll_secs.max(1));
    spec
}

pub async fn run(cmd: ProvisionCommand, config: &Config) -> Result<()> {
    match cmd {
        ProvisionCommand::Plan(args) => {
            let plan = aws::plan(&spec(&args, config)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!("{plan}");
                if plan.is_noop() {
                    println!("nothing to do: the stack is as `up` would make it");
                }
            }
        }
        ProvisionCommand::Up(args) => {
            let spec = spec(&args, config);
            let view = Progress::new();
            let done = aws::up(&spec, &|e: &Event| view.show(e)).await;
            view.finish();
            let done = done?;
            for a in &done.actions {
                for w in &a.warnings {
                    eprintln!("note: {} {}: {w}", a.kind, a.name);
                }
            }
            if done.is_noop() {
                println!(
                    "stack {} is up to date: nothing changed ({} resources checked)",
                    done.stack,
                    done.actions.len()
                );
            } else {
                println!(
                    "stack {}: {} created, {} changed, {} unchanged",
                    done.stack,
                    done.creates(),
                    done.updates(),
                    done.keeps()
                );
            }
            if let Some(a) = aws::access(&spec.aws, &spec.stack).await? {
                println!("the service: {}/", a.public_url);
                println!("admin token: FLIPSTACK_ADMIN_TOKEN in {}", a.configuration);
            }
        }
        ProvisionCommand::Down(args) => {
            let aws = settings(&args.target, config);
            // What will go, before anything is asked or deleted.
            let st = aws::status(&aws, &args.target.stack)
                .await
                .with_context(|| format!("reading stack {}", args.target.stack))?;
            if st.resources.is_empty() {
                println!("stack {} has no resources in {}: nothing to delete", st.stack, st.region);
                return Ok(());
            }
            println!("down deletes these {} resources of stack {} in {}:", st.resources.len(), st.stack, st.region);
            for r in &st.resources {
                println!("  {:<18} {}", r.kind.label(), r.name);
            }
            for r in &st.not_ours {
                println!("  (left alone, not the stack's: {} {})", r.kind.label(), r.name);
            }
            println!(
                "{}",
                if args.skip_final_snapshot {
                    "the primary database goes WITHOUT a final snapshot (--skip-final-snapshot): its data is lost"
                        .into()
                } else {
                    format!(
                        "a final snapshot of the primary database is kept (flipstack-{}-db-final-…; delete it yourself later)",
                        st.stack
                    )
                }
            );
            if !args.yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "down deletes stack {:?}'s database, cache, queue and bucket (with every picture), listed above; run it again with --yes to confirm",
                        args.target.stack
                    );
                }
                eprint!("type the stack's name ({}) to delete it: ", args.target.stack);
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).context("reading the confirmation")?;
                if answer.trim() != args.target.stack {
                    bail!("the name does not match: nothing deleted");
                }
            }
            let options = DownOptions {
                final_snapshot: !args.skip_final_snapshot,
                waits: aws::Waits { poll: Duration::from_secs(args.poll_secs.max(1)), ..aws::Waits::default() },
            };
            let view = Progress::new();
            let done = aws::down(&aws, &args.target.stack, &options, &|e: &Event| view.show(e)).await;
            view.finish();
            let done = done?;
            for (kind, name, why) in &done.left_alone {
                eprintln!("left alone: {kind} {name}: {why}");
            }
            if done.deleted.is_empty() && done.failed.is_empty() {
                println!("stack {}: nothing carries its tag; nothing deleted", done.stack);
            } else {
                println!("stack {}: {} resources deleted", done.stack, done.deleted.len());
            }
            if !done.failed.is_empty() {
                for (kind, name, why) in &done.failed {
                    eprintln!("not deleted: {kind} {name}: {why}");
                }
                bail!(
                    "{} resource(s) of stack {} could not be deleted (listed above); fix the cause and run `flipstack provision down` again",
                    done.failed.len(),
                    done.stack
                );
            }
        }
        ProvisionCommand::CheckRelease(args) => {
            let path = crate::release::release_path(args.binary.as_deref())?;
            let exe = crate::release::inspect(&path)?;
            println!("{}", exe.summary());
            let highest = exe.glibc.map(|v| format!("GLIBC_{v}")).unwrap_or_else(|| "none".into());
            println!("highest GLIBC_ version required: {highest}");
            crate::release::check_for_target(&path)?;
            println!("runs on {} (glibc {})", crate::release::TARGET_SYSTEM, crate::release::TARGET_GLIBC);
        }
        ProvisionCommand::Status(args) => {
            let aws = settings(&args.target, config);
            let st = aws::status(&aws, &args.target.stack)
                .await
                .with_context(|| format!("reading stack {}", args.target.stack))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            if st.resources.is_empty() {
                println!("stack {} has no resources in {}", st.stack, st.region);
            }
            for r in &st.resources {
                println!("{:<18} {:<36} {}", r.kind.label(), r.name, r.state);
            }
            if !st.groups.is_empty() {
                println!();
                println!(
                    "{:<8} {:>7} {:>10} {:>7} {:>4} {:>4}  group",
                    "role", "desired", "in service", "pending", "min", "max"
                );
                for g in &st.groups {
                    println!(
                        "{:<8} {:>7} {:>10} {:>7} {:>4} {:>4}  {}",
                        g.role, g.desired, g.in_service, g.pending, g.min, g.max, g.name
                    );
                }
            }
            for r in &st.not_ours {
                println!("not this stack's (left alone): {} {}: {}", r.kind, r.name, r.state);
            }
            if let Some(u) = &st.public_url {
                println!("\nthe service: {u}/");
            }
        }
    }
    Ok(())
}

/// Draws the events: a spinner per resource being worked on when stderr is a
/// terminal, plain lines otherwise (logs, CI).
struct Progress {
    bars: Option<MultiProgress>,
    active: Mutex<HashMap<(Kind, String), (ProgressBar, Instant)>>,
    /// When each resource last printed a waiting line (plain output only).
    quiet_until: Mutex<HashMap<(Kind, String), Instant>>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
            active: Mutex::new(HashMap::new()),
            quiet_until: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn show(&self, e: &Event) {
        let key = (e.kind, e.name.clone());
        let what = format!("{} {}", e.kind, e.name);
        let start = |verb: &str| {
            if let Some(m) = &self.bars {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message(format!("{verb} {what}"));
                if let Ok(mut a) = self.active.lock() {
                    a.insert(key.clone(), (bar, Instant::now()));
                }
            } else {
                eprintln!("{verb} {what}");
            }
        };
        match &e.step {
            Step::Checking => {}
            Step::Exists => self.line(format!("= {what}: as needed")),
            Step::Creating => start("creating"),
            Step::Updating(changes) => start(&format!("changing ({})", changes.join("; "))),
            Step::Deleting => start("deleting"),
            Step::Waiting { what: waiting, elapsed_secs } => {
                let msg = format!("waiting for {what} {waiting} ({elapsed_secs} s)");
                let shown = self.active.lock().ok().and_then(|a| {
                    a.get(&key).map(|(bar, _)| {
                        bar.set_message(msg.clone());
                    })
                });
                if shown.is_none() {
                    if let Some(m) = &self.bars {
                        // A wait with no step started (instances terminating).
                        let bar = m.add(ProgressBar::new_spinner());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar.set_message(msg);
                        if let Ok(mut a) = self.active.lock() {
                            a.insert(key, (bar, Instant::now()));
                        }
                    } else if let Ok(mut q) = self.quiet_until.lock() {
                        // Plain output: a line every 30 s, not every poll.
                        let now = Instant::now();
                        if q.get(&key).is_none_or(|t| now >= *t) {
                            eprintln!("{msg}");
                            q.insert(key, now + Duration::from_secs(30));
                        }
                    }
                }
            }
            Step::Done => {
                let finished = self.active.lock().ok().and_then(|mut a| a.remove(&key));
                match finished {
                    Some((bar, started)) => {
                        bar.finish_and_clear();
                        self.line(format!("✓ {what} ({} s)", started.elapsed().as_secs()));
                    }
                    None => self.line(format!("✓ {what}")),
                }
            }
            Step::LeftAlone(why) => self.line(format!("! left alone: {what}: {why}")),
            Step::Warning(msg) => self.line(format!("! {what}: {msg}")),
            Step::Failed(msg) => {
                if let Some((bar, _)) = self.active.lock().ok().and_then(|mut a| a.remove(&key)) {
                    bar.finish_and_clear();
                }
                self.line(format!("✗ {what}: {msg}"));
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut a) = self.active.lock() {
            for (_, (bar, _)) in a.drain() {
                bar.finish_and_clear();
            }
        }
    }
}
