//! Issue 5's acceptance for the AWS target, against moto_server: plan, up, up
//! again (no change), status, down; each resource's configuration read back
//! through the AWS APIs; bystanders (a second stack, an untagged bucket and
//! instance) untouched by down.
//!
//! The endpoint comes from FLIPSTACK_TEST_AWS_ENDPOINT (the project's test
//! script starts moto_server on a free loopback port and sets it, with
//! AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY=testing). Without it these tests
//! say so and return, unless FLIPSTACK_TEST_TIERS asks for `aws`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceStateName, InstanceType};
use aws_sdk_sqs::types::QueueAttributeName;
use base64::Engine;
use clap::Parser;
use flipstack_aws::{AwsSettings, sdk_config};
use flipstack_provision::aws::{self, Change, DownOptions, Event, Kind, Plan, ProvisionError, StackSpec, Step, Waits};
use flipstack_provision::cli::ProvisionCommand;
use flipstack_provision::fleet::{ROLE_TAG, STACK_TAG, fleet, group_name};
use rand::Rng;
use sha2::Digest;

const REGION: &str = "us-east-1";

/// The moto endpoint, or None when the AWS tests were not asked for.
fn endpoint() -> Option<String> {
    match std::env::var("FLIPSTACK_TEST_AWS_ENDPOINT") {
        Ok(url) if !url.is_empty() => {
            let parsed = url::Url::parse(&url).expect("FLIPSTACK_TEST_AWS_ENDPOINT is a URL");
            let host = parsed.host_str().unwrap_or("");
            assert!(
                host == "localhost" || host == "[::1]" || host.starts_with("127."),
                "FLIPSTACK_TEST_AWS_ENDPOINT must be a loopback address, not {host}"
            );
            let port = parsed.port().expect("FLIPSTACK_TEST_AWS_ENDPOINT names its port");
            assert!(port >= 1024, "the test endpoint must not be on a standard port ({port})");
            Some(url)
        }
        _ => {
            let tiers = std::env::var("FLIPSTACK_TEST_TIERS").unwrap_or_default();
            if tiers.split([',', ' ']).any(|t| t == "aws") {
                panic!(
                    "FLIPSTACK_TEST_TIERS asks for the aws tests but FLIPSTACK_TEST_AWS_ENDPOINT is not set: start `moto_server -H 127.0.0.1 -p PORT` and set it to http://127.0.0.1:PORT (with AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing)"
                );
            }
            println!("AWS tests not requested: FLIPSTACK_TEST_AWS_ENDPOINT is not set (see docs/aws.md)");
            None
        }
    }
}

fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings { region: REGION.into(), endpoint: Some(endpoint.into()) }
}

/// A stack name no other test uses.
fn unique(prefix: &str) -> String {
    let mut rng = rand::rng();
    let tail: String = (0..6).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect();
    format!("{prefix}{tail}")
}

/// A small Linux x86-64 executable that needs glibc 2.34 (what `up` checks
/// before uploading a release), different for every call.
fn fake_release(dir: &std::path::Path) -> std::path::PathBuf {
    let mut padding = vec![0u8; 4096];
    rand::rng().fill(&mut padding[..]);
    let bytes = flipstack_provision::release::minimal_executable(&["GLIBC_2.2.5", "GLIBC_2.34"], &padding);
    let path = dir.join("flipstack");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn spec(endpoint: &str, stack: &str, binary: &std::path::Path) -> StackSpec {
    let mut s = StackSpec::new(stack, settings(endpoint));
    s.binary = Some(binary.to_owned());
    s.web = aws::Capacity { min: 1, max: 3 };
    s.worker = aws::Capacity { min: 1, max: 5 };
    s.backlog_per_worker = 6.0;
    s.requests_per_target = 500.0;
    s.warmup_secs = 90;
    s.waits = Waits { poll: Duration::from_millis(50), timeout: Duration::from_secs(60) };
    s
}

struct Clients {
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    iam: aws_sdk_iam::Client,
    rds: aws_sdk_rds::Client,
    cache: aws_sdk_elasticache::Client,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn clients(endpoint: &str) -> Clients {
    let conf = sdk_config(&settings(endpoint)).await;
    Clients {
        ec2: aws_sdk_ec2::Client::new(&conf),
        asg: aws_sdk_autoscaling::Client::new(&conf),
        elb: aws_sdk_elasticloadbalancingv2::Client::new(&conf),
        iam: aws_sdk_iam::Client::new(&conf),
        rds: aws_sdk_rds::Client::new(&conf),
        cache: aws_sdk_elasticache::Client::new(&conf),
        s3: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&conf).force_path_style(true).build()),
        sqs: aws_sdk_sqs::Client::new(&conf),
    }
}

fn kinds(plan: &Plan) -> Vec<(Kind, String)> {
    plan.actions.iter().map(|a| (a.kind, a.name.clone())).collect()
}

/// Every resource `up` makes for a stack, as (kind, name).
fn expected_resources(stack: &str) -> BTreeSet<(Kind, String)> {
    let f = |s: &str| format!("flipstack-{stack}-{s}");
    let mut out: BTreeSet<(Kind, String)> =
        ["lb", "web", "worker", "db", "cache"].iter().map(|r| (Kind::SecurityGroup, f(r))).collect();
    out.extend([
        (Kind::Queue, f("jobs")),
        (Kind::DeadLetterQueue, f("jobs-dlq")),
        (Kind::Role, f("instance")),
        (Kind::InstanceProfile, f("instance")),
        (Kind::DbSubnetGroup, f("db")),
        (Kind::Database, f("db")),
        (Kind::DatabaseReplica, f("db-replica")),
        (Kind::CacheSubnetGroup, f("cache")),
        (Kind::CacheCluster, f("cache")),
        (Kind::TargetGroup, f("web")),
        (Kind::LoadBalancer, format!("flipstack-{stack}")),
        (Kind::Listener, format!("flipstack-{stack}:80")),
        (Kind::LaunchTemplate, group_name(stack, "web")),
        (Kind::LaunchTemplate, group_name(stack, "worker")),
        (Kind::AutoScalingGroup, group_name(stack, "web")),
        (Kind::AutoScalingGroup, group_name(stack, "worker")),
        (Kind::ScalingPolicy, f("web-requests")),
        (Kind::ScalingPolicy, f("worker-backlog")),
        (Kind::Alarm, f("alarm-dead-letters")),
        (Kind::Alarm, f("alarm-oldest-job")),
        (Kind::Alarm, f("alarm-http-5xx")),
        (Kind::Alarm, f("alarm-db-storage")),
    ]);
    out
}

fn has_stack_tag<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>, stack: &str) -> bool {
    tags.into_iter().any(|(k, v)| k == STACK_TAG && v == stack)
}

/// The ingress rules of a group as (port, source), sources named by role
/// for the stack's own groups.
async fn ingress(c: &Clients, stack: &str) -> BTreeMap<String, BTreeSet<(i32, String)>> {
    let out = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name(format!("tag:{STACK_TAG}")).values(stack).build())
        .send()
        .await
        .unwrap();
    let roles: BTreeMap<String, String> = out
        .security_groups()
        .iter()
        .map(|g| {
            let role =
                g.tags().iter().find(|t| t.key() == Some(ROLE_TAG)).and_then(|t| t.value()).unwrap_or("?").to_owned();
            (g.group_id().unwrap().to_owned(), role)
        })
        .collect();
    let mut rules = BTreeMap::new();
    for g in out.security_groups() {
        let mut set = BTreeSet::new();
        for p in g.ip_permissions() {
            assert_eq!(p.ip_protocol(), Some("tcp"), "only TCP rules");
            assert_eq!(p.from_port(), p.to_port(), "single ports only");
            let port = p.from_port().unwrap();
            for r in p.ip_ranges() {
                set.insert((port, r.cidr_ip().unwrap().to_owned()));
            }
            for pair in p.user_id_group_pairs() {
                let id = pair.group_id().unwrap();
                set.insert((port, format!("sg:{}", roles.get(id).cloned().unwrap_or(id.to_owned()))));
            }
            assert!(p.ipv6_ranges().is_empty() && p.prefix_list_ids().is_empty());
        }
        rules.insert(roles[g.group_id().unwrap()].clone(), set);
    }
    rules
}

/// Keeps every event a step reports.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn push(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
    fn events(self) -> Vec<Event> {
        self.0.into_inner().unwrap()
    }
}

/// Reads back every resource of a stack and checks it is as issue 5 asks.
async fn assert_configured(c: &Clients, stack: &str, spec: &StackSpec, release_sha: &str) {
    let account = "123456789012";
    let bucket = format!("flipstack-{stack}-{account}-{REGION}");

    // Security groups: exactly these rules; 0.0.0.0/0 only on the load balancer.
    let rules = ingress(c, stack).await;
    let set = |v: &[(i32, &str)]| v.iter().map(|(p, s)| (*p, s.to_string())).collect::<BTreeSet<_>>();
    assert_eq!(rules["lb"], set(&[(80, "0.0.0.0/0")]));
    assert_eq!(rules["web"], set(&[(8080, "sg:lb")]));
    assert_eq!(rules["worker"], set(&[]));
    assert_eq!(rules["db"], set(&[(3306, "sg:web"), (3306, "sg:worker")]));
    assert_eq!(rules["cache"], set(&[(11211, "sg:web"), (11211, "sg:worker")]));
    assert_eq!(rules.len(), 5);

    // The bucket: tagged, public access blocked (all four), encrypted, ACLs off.
    let tags = c.s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    assert!(has_stack_tag(tags.tag_set().iter().map(|t| (t.key(), t.value())), stack));
    let pab = c.s3.get_public_access_block().bucket(&bucket).send().await.unwrap();
    let pab = pab.public_access_block_configuration().unwrap();
    assert_eq!(
        (pab.block_public_acls(), pab.ignore_public_acls(), pab.block_public_policy(), pab.restrict_public_buckets()),
        (Some(true), Some(true), Some(true), Some(true))
    );
    c.s3.get_bucket_encryption().bucket(&bucket).send().await.unwrap();
    let own = c.s3.get_bucket_ownership_controls().bucket(&bucket).send().await.unwrap();
    assert_eq!(own.ownership_controls().unwrap().rules()[0].object_ownership().as_str(), "BucketOwnerEnforced");
    let head = c.s3.head_object().bucket(&bucket).key("release/flipstack").send().await.unwrap();
    assert_eq!(head.metadata().unwrap()["sha256"], release_sha);
    // Versioned, with old versions of the database backups kept longest (issue 16).
    let status = match c.s3.get_bucket_versioning().bucket(&bucket).send().await {
        Ok(v) => v.status().map(|s| s.as_str().to_owned()),
        // moto 5.2 roots the answer as GetBucketVersioningResponse, which the SDK refuses.
        Err(e) => {
            let body = e.raw_response().and_then(|r| r.body().bytes()).map(String::from_utf8_lossy).unwrap_or_default();
            body.contains("<Status>Enabled</Status>").then(|| "Enabled".to_owned())
        }
    };
    assert_eq!(status.as_deref(), Some("Enabled"));
    let lifecycle = c.s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.unwrap();
    let days: BTreeMap<&str, i32> = lifecycle
        .rules()
        .iter()
        .filter_map(|r| {
            let prefix = r.filter()?.prefix()?;
            Some((prefix, r.noncurrent_version_expiration()?.noncurrent_days()?))
        })
        .collect();
    assert_eq!(days.get("blobs/backups/"), Some(&30), "{lifecycle:?}");
    assert_eq!(days.get("blobs/originals/"), Some(&1), "{lifecycle:?}");
    assert!(days.values().all(|d| *d <= 30), "{days:?}");

    // The configuration the instances fetch.
    let conf = c.s3.get_object().bucket(&bucket).key("config/flipstack.env").send().await.unwrap();
    let conf = String::from_utf8(conf.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
    let vars: BTreeMap<&str, &str> = conf.lines().filter_map(|l| l.split_once('=')).collect();
    let primary =
        c.rds.describe_db_instances().db_instance_identifier(format!("flipstack-{stack}-db")).send().await.unwrap();
    let primary = &primary.db_instances()[0];
    let replica = c
        .rds
        .describe_db_instances()
        .db_instance_identifier(format!("flipstack-{stack}-db-replica"))
        .send()
        .await
        .unwrap();
    let replica = &replica.db_instances()[0];
    let host = |d: &aws_sdk_rds::types::DbInstance| d.endpoint().unwrap().address().unwrap().to_owned();
    assert!(vars["FLIPSTACK_DATABASE_URL"].starts_with("mysql://flipstack:"));
    assert!(vars["FLIPSTACK_DATABASE_URL"].contains(&format!("@{}:3306/flipstack", host(primary))));
    assert!(vars["FLIPSTACK_REPLICA_URLS"].contains(&format!("@{}:3306/flipstack", host(replica))));
    assert_eq!(vars["FLIPSTACK_BLOB_URL"], format!("s3://{bucket}/blobs"));
    assert!(vars["FLIPSTACK_QUEUE_URL"].ends_with(&format!("/flipstack-{stack}-jobs")));
    assert_eq!(vars["FLIPSTACK_AWS_REGION"], REGION);
    assert_eq!(vars["FLIPSTACK_ADMIN_TOKEN"].len(), 64);
    let lb = c.elb.describe_load_balancers().names(format!("flipstack-{stack}")).send().await.unwrap();
    let lb = &lb.load_balancers()[0];
    assert_eq!(vars["FLIPSTACK_PUBLIC_URL"], format!("http://{}", lb.dns_name().unwrap()));

    // Queue and dead-letter queue: tagged, redrive after 10 receives.
    for name in [format!("flipstack-{stack}-jobs"), format!("flipstack-{stack}-jobs-dlq")] {
        let url = c.sqs.get_queue_url().queue_name(&name).send().await.unwrap();
        let url = url.queue_url().unwrap();
        let tags = c.sqs.list_queue_tags().queue_url(url).send().await.unwrap();
        assert_eq!(tags.tags().unwrap().get(STACK_TAG).map(String::as_str), Some(stack), "{name}");
    }
    let url = c.sqs.get_queue_url().queue_name(format!("flipstack-{stack}-jobs")).send().await.unwrap();
    let attrs = c
        .sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap())
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs.attributes().unwrap()[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], format!("arn:aws:sqs:{REGION}:{account}:flipstack-{stack}-jobs-dlq"));
    assert_eq!(
        redrive["maxReceiveCount"].as_u64().or(redrive["maxReceiveCount"].as_str().and_then(|s| s.parse().ok())),
        Some(10)
    );

    // IAM: role and profile tagged; the policy names only the stack's resources.
    let role = c.iam.get_role().role_name(format!("flipstack-{stack}-instance")).send().await.unwrap();
    let role = role.role().unwrap();
    assert!(has_stack_tag(role.tags().iter().map(|t| (t.key(), t.value())), stack));
    let profile =
        c.iam.get_instance_profile().instance_profile_name(format!("flipstack-{stack}-instance")).send().await.unwrap();
    let profile = profile.instance_profile().unwrap();
    assert!(has_stack_tag(profile.tags().iter().map(|t| (t.key(), t.value())), stack));
    assert_eq!(profile.roles().iter().map(|r| r.role_name()).collect::<Vec<_>>(), vec![role.role_name()]);
    let policy = c.iam.get_role_policy().role_name(role.role_name()).policy_name("flipstack-app").send().await.unwrap();
    let doc = policy.policy_document();
    let doc: serde_json::Value = serde_json::from_str(doc).unwrap_or_else(|_| {
        serde_json::from_str(&percent_encoding::percent_decode_str(doc).decode_utf8().unwrap()).unwrap()
    });
    for s in doc["Statement"].as_array().unwrap() {
        let resources: Vec<String> = match &s["Resource"] {
            serde_json::Value::String(r) => vec![r.clone()],
            v => v.as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect(),
        };
        for r in resources {
            assert!(
                r.contains(&bucket)
                    || r.contains(&format!(":flipstack-{stack}-jobs"))
                    || r.ends_with(&format!(":autoScalingGroupName/flipstack-{stack}-web"))
                    || r.ends_with(&format!(":autoScalingGroupName/flipstack-{stack}-worker"))
                    || (r == "*" && s["Action"] == "cloudwatch:PutMetricData"),
                "the policy reaches beyond the stack: {r}"
            );
        }
    }

    let health = doc["Statement"].as_array().unwrap().iter().find(|s| s["Sid"] == "OwnGroupHealthAndProtection");
    let health = health.expect("instances may report their own health (liveness) to their group");
    assert_eq!(
        health["Action"],
        serde_json::json!(["autoscaling:SetInstanceHealth", "autoscaling:SetInstanceProtection"])
    );

    // RDS: MariaDB, private, in the db group; the replica linked to the primary.
    assert_eq!(primary.engine(), Some("mariadb"));
    assert_eq!(replica.read_replica_source_db_instance_identifier(), Some(format!("flipstack-{stack}-db").as_str()));
    assert!(primary.read_replica_db_instance_identifiers().contains(&format!("flipstack-{stack}-db-replica")));
    let db_sg = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values(format!("flipstack-{stack}-db")).build())
        .send()
        .await
        .unwrap();
    let db_sg = db_sg.security_groups()[0].group_id().unwrap().to_owned();
    for d in [primary, replica] {
        assert_eq!(d.publicly_accessible(), Some(false));
        assert!(has_stack_tag(d.tag_list().iter().map(|t| (t.key().unwrap(), t.value().unwrap())), stack));
        assert_eq!(
            d.vpc_security_groups().iter().map(|g| g.vpc_security_group_id().unwrap()).collect::<Vec<_>>(),
            vec![db_sg.as_str()]
        );
    }
    let subnet_group =
        c.rds.describe_db_subnet_groups().db_subnet_group_name(format!("flipstack-{stack}-db")).send().await.unwrap();
    let arn = subnet_group.db_subnet_groups()[0].db_subnet_group_arn().unwrap();
    let t = c.rds.list_tags_for_resource().resource_name(arn).send().await.unwrap();
    assert!(has_stack_tag(t.tag_list().iter().map(|t| (t.key().unwrap(), t.value().unwrap())), stack));

    // ElastiCache memcached, tagged (cluster and subnet group).
    let cl =
        c.cache.describe_cache_clusters().cache_cluster_id(format!("flipstack-{stack}-cache")).send().await.unwrap();
    let cl = &cl.cache_clusters()[0];
    assert_eq!(cl.engine(), Some("memcached"));
    for arn in [
        cl.arn().unwrap().to_owned(),
        format!("arn:aws:elasticache:{REGION}:{account}:subnetgroup:flipstack-{stack}-cache"),
    ] {
        let t = c.cache.list_tags_for_resource().resource_name(&arn).send().await.unwrap();
        assert!(has_stack_tag(t.tag_list().iter().map(|t| (t.key().unwrap(), t.value().unwrap())), stack), "{arn}");
    }

    // Load balancer, target group (routed on readiness, /readyz), listener: tagged.
    let tg = c.elb.describe_target_groups().names(format!("flipstack-{stack}-web")).send().await.unwrap();
    let tg = &tg.target_groups()[0];
    assert_eq!(tg.health_check_path(), Some("/readyz"));
    assert_eq!(tg.port(), Some(8080));
    let listeners = c.elb.describe_listeners().load_balancer_arn(lb.load_balancer_arn().unwrap()).send().await.unwrap();
    assert_eq!(listeners.listeners().len(), 1);
    let l = &listeners.listeners()[0];
    assert_eq!(l.port(), Some(80));
    assert_eq!(l.default_actions()[0].target_group_arn(), tg.target_group_arn());
    let arns = [lb.load_balancer_arn().unwrap(), tg.target_group_arn().unwrap(), l.listener_arn().unwrap()];
    let tags = c
        .elb
        .describe_tags()
        .set_resource_arns(Some(arns.iter().map(|s| s.to_string()).collect()))
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tag_descriptions().len(), 3);
    for d in tags.tag_descriptions() {
        assert!(
            has_stack_tag(d.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())), stack),
            "{:?}",
            d.resource_arn()
        );
    }

    // Launch templates: tagged; user data fetches the release (checked by
    // digest) and the configuration, and runs serve or work under systemd.
    for (role, command) in [("web", "serve"), ("worker", "work")] {
        let name = group_name(stack, role);
        let lt = c.ec2.describe_launch_templates().launch_template_names(&name).send().await.unwrap();
        let lt = &lt.launch_templates()[0];
        assert!(has_stack_tag(lt.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())), stack));
        let v = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(&name)
            .versions("$Default")
            .send()
            .await
            .unwrap();
        let data = v.launch_template_versions()[0].launch_template_data().unwrap();
        let script = base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap();
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains(&format!("s3://{bucket}/release/flipstack")), "{script}");
        assert!(script.contains(release_sha));
        assert!(script.contains(&format!("s3://{bucket}/config/flipstack.env")));
        assert!(script.contains(&format!("ExecStart=/usr/local/bin/flipstack {command}\n")));
        assert!(script.contains("systemctl enable --now flipstack.service"));
        // Liveness, not readiness, replaces an instance: the web instance asks
        // /livez and reports itself to its group only when that keeps failing.
        if role == "web" {
            assert!(script.contains("http://127.0.0.1:8080/livez"), "{script}");
            assert!(script.contains("aws autoscaling set-instance-health"), "{script}");
            assert!(script.contains("systemctl enable --now flipstack-liveness.timer"), "{script}");
            assert!(!script.contains("/readyz") && !script.contains("/healthz"), "{script}");
        } else {
            assert!(!script.contains("set-instance-health"), "{script}");
        }
        assert_eq!(data.iam_instance_profile().unwrap().name(), Some(format!("flipstack-{stack}-instance").as_str()));
        assert_eq!(data.metadata_options().unwrap().http_tokens().unwrap().as_str(), "required");
        assert_eq!(data.instance_type(), Some(&InstanceType::T3Small));
    }

    // Groups: tagged (propagated), sized from the spec, with their policies.
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group_name(stack, "web"))
        .auto_scaling_group_names(group_name(stack, "worker"))
        .send()
        .await
        .unwrap();
    assert_eq!(groups.auto_scaling_groups().len(), 2);
    for g in groups.auto_scaling_groups() {
        let name = g.auto_scaling_group_name().unwrap();
        let role = if name.ends_with("-web") { "web" } else { "worker" };
        let want = if role == "web" { spec.web } else { spec.worker };
        assert_eq!((g.min_size(), g.max_size()), (Some(want.min as i32), Some(want.max as i32)), "{name}");
        let tags: BTreeSet<(&str, &str, bool)> =
            g.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap(), t.propagate_at_launch().unwrap())).collect();
        assert!(tags.contains(&(STACK_TAG, stack, true)), "{name}: {tags:?}");
        assert!(tags.contains(&(ROLE_TAG, role, true)), "{name}: {tags:?}");
        assert_eq!(g.launch_template().unwrap().version(), Some("$Default"));
        let policies = c.asg.describe_policies().auto_scaling_group_name(name).send().await.unwrap();
        assert_eq!(policies.scaling_policies().len(), 1, "{name}");
        let p = &policies.scaling_policies()[0];
        assert_eq!(p.policy_type(), Some("TargetTrackingScaling"));
        let t = p.target_tracking_configuration().unwrap();
        // Never the load balancer's (readiness) check: a database outage
        // would mark every web instance unhealthy and replace them all.
        assert_eq!(g.health_check_type(), Some("EC2"), "{name}");
        if role == "web" {
            assert_eq!(g.target_group_arns(), &[tg.target_group_arn().unwrap().to_owned()]);
            assert_eq!(t.target_value(), Some(spec.requests_per_target));
            let m = t.predefined_metric_specification().unwrap();
            assert_eq!(m.predefined_metric_type().unwrap().as_str(), "ALBRequestCountPerTarget");
            let label = m.resource_label().unwrap();
            let lb_part = lb.load_balancer_arn().unwrap().split_once(":loadbalancer/").unwrap().1;
            let tg_part = tg.target_group_arn().unwrap().rsplit_once(':').unwrap().1;
            assert_eq!(label, format!("{lb_part}/{tg_part}"));
        } else {
            assert_eq!(t.target_value(), Some(spec.backlog_per_worker));
            let queries = t.customized_metric_specification().unwrap().metrics();
            let stat = |metric: &str| {
                queries
                    .iter()
                    .find(|q| q.metric_stat().and_then(|s| s.metric()).and_then(|m| m.metric_name()) == Some(metric))
                    .unwrap_or_else(|| panic!("no {metric} in the worker policy"))
            };
            // Distinct unfinished jobs, as the web servers publish them: never
            // the queue's message counts, which a re-sent copy would inflate.
            let jobs = stat(flipstack_aws::metric::BACKLOG);
            let s = jobs.metric_stat().unwrap();
            let m = s.metric().unwrap();
            assert_eq!(m.namespace(), Some(spec.metrics_namespace.as_str()));
            assert_eq!((m.dimensions()[0].name(), m.dimensions()[0].value()), (Some("Role"), Some("web")));
            assert_eq!(s.stat(), Some("Maximum"));
            assert!(
                queries
                    .iter()
                    .all(|q| q.metric_stat().and_then(|s| s.metric()).and_then(|m| m.namespace()) != Some("AWS/SQS")),
                "no SQS message count in the worker policy"
            );
            let workers = stat("GroupInServiceInstances");
            let m = workers.metric_stat().unwrap().metric().unwrap();
            assert_eq!(m.namespace(), Some("AWS/AutoScaling"));
            assert_eq!(m.dimensions()[0].value(), Some(name));
            let expr = queries.iter().find(|q| q.expression().is_some()).unwrap();
            assert_eq!(expr.expression().unwrap(), format!("{} / {}", jobs.id().unwrap(), workers.id().unwrap()));
            assert_eq!(expr.return_data(), Some(true));
            assert!(g.enabled_metrics().iter().any(|e| e.metric() == Some("GroupInServiceInstances")));
        }
    }

    // Instances launched by the groups carry the stack's and role's tags.
    let inst = c
        .ec2
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{STACK_TAG}")).values(stack).build())
        .send()
        .await
        .unwrap();
    let running: Vec<_> = inst
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
        .collect();
    assert_eq!(running.len() as u32, spec.web.min + spec.worker.min);
    for i in running {
        assert!(i.tags().iter().any(|t| t.key() == Some(ROLE_TAG)));
    }
}

/// What moto (5.2) cannot do that `down` needs, and AWS does: it never
/// finishes deleting a cache cluster (it stays "deleting"), and it has no
/// DeleteCacheSubnetGroup (it answers 500). `down` reports the subnet group
/// as not deleted and goes on; these two are not counted against it.
fn moto_cannot_delete(kind: Kind, state_or_error: &str) -> bool {
    (kind == Kind::CacheCluster && state_or_error.ends_with("deleting"))
        || (kind == Kind::CacheSubnetGroup && (state_or_error.contains("500") || state_or_error.ends_with("subnets")))
}

/// What a stack still has after `down`, less moto's limits above.
fn left_after_down(st: &aws::StackStatus) -> Vec<&aws::ResourceStatus> {
    st.resources.iter().filter(|r| !moto_cannot_delete(r.kind, &r.state)).collect()
}

fn sha256_of(path: &std::path::Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_up_again_status_down_leaves_others_alone() {
    let Some(ep) = endpoint() else { return };
    let c = clients(&ep).await;
    let dir = tempfile::tempdir().unwrap();
    let release = fake_release(dir.path());
    let sha = sha256_of(&release);
    let stack = unique("life");
    let other = unique("other");
    let spec = spec(&ep, &stack, &release);

    // Bystanders: another stack, an untagged bucket and an untagged instance.
    let other_spec = self::spec(&ep, &other, &release);
    aws::up(&other_spec, &aws::no_progress).await.unwrap();
    let stray_bucket = unique("stray-bucket-");
    c.s3.create_bucket().bucket(&stray_bucket).send().await.unwrap();
    let images = c
        .ec2
        .describe_images()
        .owners("amazon")
        .filters(Filter::builder().name("name").values("al2023-ami-2023.*-x86_64").build())
        .send()
        .await
        .unwrap();
    let image = images.images()[0].image_id().unwrap().to_owned();
    let stray = c
        .ec2
        .run_instances()
        .image_id(&image)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let stray_id = stray.instances()[0].instance_id().unwrap().to_owned();

    // plan: everything to create, nothing created.
    let plan = aws::plan(&spec).await.unwrap();
    let expected = expected_resources(&stack);
    let planned: BTreeSet<(Kind, String)> = kinds(&plan)
        .into_iter()
        .filter(|(k, _)| !matches!(k, Kind::ReleaseArtifact | Kind::Configuration | Kind::Bucket))
        .collect();
    assert_eq!(planned, expected);
    assert!(plan.actions.iter().all(|a| a.change == Change::Create), "{plan}");
    assert_eq!(plan.creates(), expected.len() + 3, "plus bucket, release, configuration");
    let printed = plan.to_string();
    assert!(printed.contains(&format!("+ create security group     flipstack-{stack}-lb")), "{printed}");
    assert!(printed.contains("allow tcp 80 from 0.0.0.0/0"), "{printed}");
    assert!(
        c.sqs.get_queue_url().queue_name(format!("flipstack-{stack}-jobs")).send().await.is_err(),
        "plan created nothing"
    );

    // up: creates what plan said, reporting each step.
    let events = Recorder::default();
    let done = aws::up(&spec, &|e: &Event| events.push(e)).await.unwrap();
    assert_eq!(kinds(&done), kinds(&plan), "up did what plan said, in order");
    assert!(done.actions.iter().all(|a| a.change == Change::Create));
    let events = events.events();
    for a in &done.actions {
        let steps: Vec<&Step> =
            events.iter().filter(|e| e.kind == a.kind && e.name == a.name).map(|e| &e.step).collect();
        assert!(steps.contains(&&Step::Creating), "{} {}: {steps:?}", a.kind, a.name);
        let last = steps.iter().rev().find(|s| !matches!(s, Step::Warning(_)));
        assert_eq!(last, Some(&&Step::Done), "{} {}: {steps:?}", a.kind, a.name);
    }
    // moto lists no endpoint for memcached: up says so instead of inventing one.
    let cache = done.actions.iter().find(|a| a.kind == Kind::CacheCluster).unwrap();
    let cl = c
        .cache
        .describe_cache_clusters()
        .cache_cluster_id(&cache.name)
        .show_cache_node_info(true)
        .send()
        .await
        .unwrap();
    if cl.cache_clusters()[0].cache_nodes().is_empty() && cl.cache_clusters()[0].configuration_endpoint().is_none() {
        assert!(cache.warnings.iter().any(|n| n.contains("reported no endpoint")), "{:?}", cache.warnings);
    }

    assert_configured(&c, &stack, &spec, &sha).await;

    // up again: nothing to do, and it says so.
    let events = Recorder::default();
    let again = aws::up(&spec, &|e: &Event| events.push(e)).await.unwrap();
    assert!(again.is_noop(), "{again}");
    assert_eq!(again.keeps(), done.actions.len());
    assert!(
        events.events().iter().all(|e| matches!(e.step, Step::Checking | Step::Exists | Step::Warning(_))),
        "a second up acts on nothing"
    );
    assert!(aws::plan(&spec).await.unwrap().is_noop());

    // Drift: a hand-made SSH rule open to the world and a changed group size
    // are planned as changes, corrected by up, and then stable again.
    let web_sg = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values(format!("flipstack-{stack}-web")).build())
        .send()
        .await
        .unwrap();
    let web_sg = web_sg.security_groups()[0].group_id().unwrap().to_owned();
    c.ec2
        .authorize_security_group_ingress()
        .group_id(&web_sg)
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .cidr_ip("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    c.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(group_name(&stack, "worker"))
        .max_size(9)
        .send()
        .await
        .unwrap();
    let drift = aws::plan(&spec).await.unwrap();
    let changed: Vec<(Kind, String, Vec<String>)> = drift
        .actions
        .iter()
        .filter_map(|a| match &a.change {
            Change::Update(w) => Some((a.kind, a.name.clone(), w.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        vec![
            (Kind::SecurityGroup, format!("flipstack-{stack}-web"), vec!["revoke tcp 22 from 0.0.0.0/0".to_owned()]),
            (Kind::AutoScalingGroup, group_name(&stack, "worker"), vec!["size from 1-9 to 1-5".to_owned()]),
        ]
    );
    let fixed = aws::up(&spec, &aws::no_progress).await.unwrap();
    assert_eq!(fixed.updates(), 2);
    assert!(aws::up(&spec, &aws::no_progress).await.unwrap().is_noop());
    assert_configured(&c, &stack, &spec, &sha).await;

    // status: every resource, and the groups' counts from fleet().
    let st = aws::status(&spec.aws, &stack).await.unwrap();
    let listed: BTreeSet<(Kind, String)> =
        st.resources.iter().map(|r| (r.kind, r.name.clone())).filter(|(k, _)| *k != Kind::Bucket).collect();
    assert_eq!(listed, expected);
    assert!(st.resources.iter().any(|r| r.kind == Kind::Bucket && r.state == "private, encrypted"));
    assert!(st.not_ours.is_empty());
    let groups = fleet(&spec.aws, &stack).await.unwrap();
    assert_eq!(st.groups, groups);
    assert_eq!(
        groups.iter().map(|g| (g.role.as_str(), g.desired, g.in_service, g.min, g.max)).collect::<Vec<_>>(),
        vec![("web", 1, 1, 1, 3), ("worker", 1, 1, 1, 5)]
    );
    let db = st.resources.iter().find(|r| r.kind == Kind::DatabaseReplica).unwrap();
    assert!(db.state.contains(&format!("replica of flipstack-{stack}-db")), "{}", db.state);
    let access = aws::access(&spec.aws, &stack).await.unwrap().unwrap();
    assert_eq!(st.public_url.as_deref(), Some(access.public_url.as_str()));
    assert_eq!(access.admin_token.len(), 64);
    let other_before = aws::status(&spec.aws, &other).await.unwrap();

    // down: everything of the stack, in order, waiting where needed.
    let events = Recorder::default();
    let gone = aws::down(&spec.aws, &stack, &DownOptions { final_snapshot: false, waits: spec.waits }, &|e: &Event| {
        events.push(e)
    })
    .await
    .unwrap();
    for (kind, name, why) in &gone.failed {
        assert!(moto_cannot_delete(*kind, why), "{kind} {name} not deleted: {why}");
    }
    let deleted: BTreeSet<(Kind, String)> = gone
        .deleted
        .iter()
        .cloned()
        .chain(gone.failed.iter().map(|(k, n, _)| (*k, n.clone())))
        .filter(|(k, _)| *k != Kind::Bucket)
        .collect();
    assert_eq!(deleted, expected);
    assert!(gone.deleted.contains(&(Kind::Bucket, format!("flipstack-{stack}-123456789012-{REGION}"))));
    assert!(gone.left_alone.is_empty());
    let events = events.events();
    let order: Vec<Kind> = events.iter().filter(|e| e.step == Step::Deleting).map(|e| e.kind).collect();
    let first = |k: Kind| order.iter().position(|x| *x == k).unwrap();
    assert!(first(Kind::AutoScalingGroup) < first(Kind::LaunchTemplate));
    assert!(first(Kind::LoadBalancer) < first(Kind::TargetGroup));
    assert!(first(Kind::DatabaseReplica) < first(Kind::Database));
    assert!(first(Kind::Database) < first(Kind::DbSubnetGroup));
    assert!(first(Kind::CacheCluster) < first(Kind::CacheSubnetGroup));
    assert!(first(Kind::InstanceProfile) < first(Kind::Role));
    assert!(first(Kind::Bucket) < first(Kind::SecurityGroup));

    let st = aws::status(&spec.aws, &stack).await.unwrap();
    assert!(left_after_down(&st).is_empty(), "{:?}", st.resources);
    assert!(st.groups.is_empty());
    assert!(ingress(&c, &stack).await.is_empty());
    let left = c
        .ec2
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{STACK_TAG}")).values(&stack).build())
        .send()
        .await
        .unwrap();
    assert!(
        left.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .all(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Terminated))
    );

    // The bystanders are untouched.
    let other_after = aws::status(&spec.aws, &other).await.unwrap();
    assert_eq!(other_after.resources.len(), other_before.resources.len());
    assert_eq!(other_after.groups, other_before.groups);
    c.s3.head_bucket().bucket(&stray_bucket).send().await.expect("the untagged bucket survives");
    let stray = c.ec2.describe_instances().instance_ids(&stray_id).send().await.unwrap();
    assert_eq!(
        stray.reservations()[0].instances()[0].state().and_then(|s| s.name()),
        Some(&InstanceStateName::Running),
        "the untagged instance survives"
    );

    // down again: nothing left to delete.
    let again =
        aws::down(&spec.aws, &stack, &DownOptions { final_snapshot: false, waits: spec.waits }, &aws::no_progress)
            .await
            .unwrap();
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    assert!(again.failed.iter().all(|(k, _, why)| moto_cannot_delete(*k, why)));

    aws::down(&spec.aws, &other, &DownOptions { final_snapshot: false, waits: spec.waits }, &aws::no_progress)
        .await
        .unwrap();
    c.s3.delete_bucket().bucket(&stray_bucket).send().await.unwrap();
    c.ec2.terminate_instances().instance_ids(&stray_id).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_held_by_others_are_refused_and_left_alone() {
    let Some(ep) = endpoint() else { return };
    let c = clients(&ep).await;
    let dir = tempfile::tempdir().unwrap();
    let release = fake_release(dir.path());
    let stack = unique("taken");
    let spec = spec(&ep, &stack, &release);

    // A queue under the stack's name, not tagged for it.
    let queue = format!("flipstack-{stack}-jobs-dlq");
    let made = c.sqs.create_queue().queue_name(&queue).tags("owner", "someone-else").send().await.unwrap();
    let err = aws::plan(&spec).await.unwrap_err();
    assert!(matches!(err, ProvisionError::Conflict(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&queue) && msg.contains("carries no flipstack:stack tag"), "{msg}");
    assert!(msg.contains("Choose another stack name"), "the error says what to do: {msg}");
    assert!(matches!(aws::up(&spec, &aws::no_progress).await, Err(ProvisionError::Conflict(_))));

    // down deletes what is the stack's (its security groups, made before the
    // conflict stopped up) and leaves the queue alone.
    let gone =
        aws::down(&spec.aws, &stack, &DownOptions { final_snapshot: false, waits: spec.waits }, &aws::no_progress)
            .await
            .unwrap();
    assert_eq!(
        gone.left_alone.iter().map(|(k, n, _)| (*k, n.clone())).collect::<Vec<_>>(),
        vec![(Kind::DeadLetterQueue, queue.clone())]
    );
    assert!(gone.deleted.iter().all(|(k, _)| *k != Kind::DeadLetterQueue));
    c.sqs.get_queue_url().queue_name(&queue).send().await.expect("the foreign queue survives");
    c.sqs.delete_queue().queue_url(made.queue_url().unwrap()).send().await.unwrap();

    // A stack name AWS would refuse is refused before any call.
    let bad = StackSpec::new("Bad_Name", settings(&ep));
    assert!(matches!(aws::plan(&bad).await, Err(ProvisionError::Invalid(_))));
}

/// The command-line path: the same clap commands the binary mounts under
/// `flipstack provision`, run with a configuration pointing at moto.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ProvisionCommand,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_plan_up_status_down() {
    let Some(ep) = endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let release = fake_release(dir.path());
    let stack = unique("cli");
    let config = flipstack_domain::Config {
        aws_endpoint_url: Some(ep.clone()),
        aws_region: REGION.into(),
        ..flipstack_domain::Config::default()
    };
    let run = |args: &[&str]| {
        let mut argv = vec!["provision"];
        argv.extend_from_slice(args);
        let cmd = Cli::try_parse_from(argv).expect("the flags parse").cmd;
        let config = config.clone();
        async move { flipstack_provision::cli::run(cmd, &config).await }
    };
    let release = release.to_str().unwrap();
    run(&["plan", "--stack", &stack, "--binary", release]).await.unwrap();
    run(&["up", "--stack", &stack, "--binary", release, "--poll-secs", "1", "--worker-max", "3"]).await.unwrap();
    run(&["up", "--stack", &stack, "--binary", release, "--poll-secs", "1", "--worker-max", "3"]).await.unwrap();
    let plan = aws::plan(&{
        let mut s = StackSpec::new(&stack, settings(&ep));
        s.worker = aws::Capacity { min: 1, max: 3 };
        s.binary = Some(release.into());
        s
    })
    .await
    .unwrap();
    assert!(plan.is_noop(), "the CLI's up left nothing to do: {plan}");
    run(&["status", "--stack", &stack, "--json"]).await.unwrap();
    let refused = run(&["down", "--stack", &stack]).await.unwrap_err();
    assert!(refused.to_string().contains("--yes"), "{refused}");
    assert!(!aws::status(&settings(&ep), &stack).await.unwrap().resources.is_empty());
    if let Err(e) = run(&["down", "--stack", &stack, "--yes", "--poll-secs", "1"]).await {
        // Only what moto cannot delete may remain (see moto_cannot_delete).
        assert!(e.to_string().starts_with("1 resource(s) of stack"), "{e}");
        assert!(e.to_string().contains("run `flipstack provision down` again"), "{e}");
    }
    assert!(left_after_down(&aws::status(&settings(&ep), &stack).await.unwrap()).is_empty());
}

/// A plan needs no `--binary`: it shows the running executable as the release
/// `up` would ship, with what it needs of glibc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_without_a_binary_shows_the_running_executable_as_the_release() {
    let Some(ep) = endpoint() else { return };
    let stack = unique("self");
    let plan = aws::plan(&StackSpec::new(&stack, settings(&ep))).await.unwrap();
    let release = plan.actions.iter().find(|a| a.kind == Kind::ReleaseArtifact).expect("a release action");
    assert!(matches!(release.change, Change::Create));
    let me = std::env::current_exe().unwrap();
    let text = format!("{plan}");
    assert!(text.contains(&me.display().to_string()), "{text}");
    assert!(text.contains("needs GLIBC_2."), "{text}");
    assert!(text.contains("Amazon Linux 2023 has 2.34"), "{text}");
    assert!(release.warnings.is_empty(), "{:?}", release.warnings);
}

/// A release that needs a newer glibc than Amazon Linux 2023's: `up` refuses
/// it before it makes anything; `plan` still answers, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_needs_a_newer_glibc_is_refused_before_anything_is_made() {
    let Some(ep) = endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipstack");
    std::fs::write(&path, flipstack_provision::release::minimal_executable(&["GLIBC_2.2.5", "GLIBC_2.38"], b""))
        .unwrap();
    let stack = unique("glibc");
    let spec = spec(&ep, &stack, &path);
    let plan = aws::plan(&spec).await.expect("a plan never fails for want of a release");
    let release = plan.actions.iter().find(|a| a.kind == Kind::ReleaseArtifact).unwrap();
    assert!(release.warnings.iter().any(|w| w.contains("needs glibc 2.38")), "{:?}", release.warnings);
    let err = aws::up(&spec, &aws::no_progress).await.unwrap_err();
    assert!(matches!(err, ProvisionError::Release(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("needs glibc 2.38") && msg.contains("Amazon Linux 2023 has 2.34"), "{msg}");
    assert!(aws::status(&settings(&ep), &stack).await.unwrap().resources.is_empty(), "up made something");
}

/// (host, port) of each endpoint a configuration names: the primary, the
/// replicas and the cache nodes.
fn configured_endpoints(vars: &BTreeMap<String, String>) -> Vec<(&'static str, String, i32)> {
    let mut out = Vec::new();
    let host_port = |hp: &str, default: i32| match hp.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap()),
        None => (hp.to_owned(), default),
    };
    for (key, what) in [("FLIPSTACK_DATABASE_URL", "database"), ("FLIPSTACK_REPLICA_URLS", "replica")] {
        for url in vars.get(key).map(String::as_str).unwrap_or("").split(',').filter(|u| !u.is_empty()) {
            let u = url::Url::parse(url).unwrap();
            out.push((what, u.host_str().unwrap().to_owned(), i32::from(u.port().unwrap_or(3306))));
        }
    }
    if let Some(nodes) = vars.get("FLIPSTACK_CACHE_URL").and_then(|u| u.strip_prefix("memcache://")) {
        for n in nodes.split(',') {
            let (h, p) = host_port(n, 11211);
            out.push(("cache", h, p));
        }
    }
    out
}

/// Issue 12: every endpoint a role's configuration names is reachable from
/// that role under the stack's ingress rules, and no other rule is open.
/// Everything is read back from AWS: the launch templates (which command each
/// role runs, which group it is in, which configuration it fetches), that
/// configuration object, the databases' and cache's groups, and the rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_a_role_is_configured_with_is_reachable_and_nothing_else_is_open() {
    let Some(ep) = endpoint() else { return };
    let c = clients(&ep).await;
    let dir = tempfile::tempdir().unwrap();
    let release = fake_release(dir.path());
    let stack = unique("reach");
    aws::up(&spec(&ep, &stack, &release), &aws::no_progress).await.unwrap();

    // The rules: (group id, port, source group id or CIDR).
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name(format!("tag:{STACK_TAG}")).values(&stack).build())
        .send()
        .await
        .unwrap();
    let mut open: BTreeSet<(String, i32, String)> = BTreeSet::new();
    for g in sgs.security_groups() {
        for p in g.ip_permissions() {
            let port = p.from_port().unwrap();
            assert_eq!(p.from_port(), p.to_port());
            for r in p.ip_ranges() {
                open.insert((g.group_id().unwrap().to_owned(), port, r.cidr_ip().unwrap().to_owned()));
            }
            for pair in p.user_id_group_pairs() {
                open.insert((g.group_id().unwrap().to_owned(), port, pair.group_id().unwrap().to_owned()));
            }
        }
    }

    // Which groups guard each host: the databases and the cache nodes.
    let mut guards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in c.rds.describe_db_instances().send().await.unwrap().db_instances() {
        if let Some(host) = d.endpoint().and_then(|e| e.address()) {
            let ids = d.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).map(String::from);
            guards.insert(host.to_owned(), ids.collect());
        }
    }
    // moto reports neither the cache's endpoint nor its groups (see docs/aws.md);
    // the cache is then known by its group's role tag and memcached's port.
    const UNREPORTED_CACHE: &str = "(the stack's cache cluster, endpoint not reported)";
    let cache_group = sgs
        .security_groups()
        .iter()
        .find(|g| g.tags().iter().any(|t| t.key() == Some(ROLE_TAG) && t.value() == Some("cache")))
        .and_then(|g| g.group_id())
        .expect("the stack has a cache group")
        .to_owned();
    guards.insert(UNREPORTED_CACHE.into(), vec![cache_group]);
    let clusters = c.cache.describe_cache_clusters().show_cache_node_info(true).send().await.unwrap();
    for cl in clusters.cache_clusters() {
        let ids: Vec<String> =
            cl.security_groups().iter().filter_map(|g| g.security_group_id()).map(String::from).collect();
        let mut hosts: Vec<&str> = cl.cache_nodes().iter().filter_map(|n| n.endpoint()?.address()).collect();
        hosts.extend(cl.configuration_endpoint().and_then(|e| e.address()));
        for h in hosts {
            guards.insert(h.to_owned(), ids.clone());
        }
    }

    // Each launch template: its role (the command it runs), its group, and the configuration it reads.
    let bucket = format!("flipstack-{stack}-123456789012-{REGION}");
    let mut needed: BTreeSet<(String, i32, String)> = BTreeSet::new();
    let mut role_groups = BTreeMap::new();
    for role in ["web", "worker"] {
        let v = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(group_name(&stack, role))
            .versions("$Default")
            .send()
            .await
            .unwrap();
        let data = v.launch_template_versions()[0].launch_template_data().unwrap().clone();
        let script = base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap();
        let script = String::from_utf8(script).unwrap();
        let command = if script.contains("ExecStart=/usr/local/bin/flipstack serve\n") { "serve" } else { "work" };
        assert_eq!(command, if role == "web" { "serve" } else { "work" });
        let key = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("s3://{bucket}/")).filter(|k| k.starts_with("config/")))
            .expect("the user data fetches a configuration")
            .to_owned();
        let conf = c.s3.get_object().bucket(&bucket).key(&key).send().await.unwrap();
        let conf = String::from_utf8(conf.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        let mut vars: BTreeMap<String, String> =
            conf.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        // What the unit sets beside the file.
        for line in script.lines().filter_map(|l| l.strip_prefix("Environment=")) {
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        let group = data.security_group_ids().first().expect("the template names its group").clone();
        role_groups.insert(role, group.clone());
        let mut endpoints = configured_endpoints(&vars);
        if !vars.contains_key("FLIPSTACK_CACHE_URL") {
            println!("{role}: the configuration names no cache (moto reports no endpoint); checking the cache group");
            endpoints.push(("cache", UNREPORTED_CACHE.into(), 11211));
        }
        let kinds: BTreeSet<&str> = endpoints.iter().map(|e| e.0).collect();
        assert_eq!(kinds, BTreeSet::from(["cache", "database", "replica"]), "{role}: {vars:?}");
        for (what, host, port) in endpoints {
            let targets =
                guards.get(&host).unwrap_or_else(|| panic!("{role}: no resource of the stack answers at {host}"));
            let reachable = targets.iter().any(|t| open.contains(&(t.clone(), port, group.clone())));
            assert!(
                reachable,
                "{role} is configured with the {what} at {host}:{port}, but its group {group} may not reach it (the {what}'s groups {targets:?} admit: {open:?})"
            );
            for t in targets {
                needed.insert((t.clone(), port, group.clone()));
            }
        }
    }

    // The load balancer reaches the web servers on the target group's port,
    // and is itself open to the internet on its listeners' ports.
    let lbs = c.elb.describe_load_balancers().names(format!("flipstack-{stack}")).send().await.unwrap();
    let lb = &lbs.load_balancers()[0];
    let lb_group = lb.security_groups()[0].clone();
    let tg = c.elb.describe_target_groups().names(format!("flipstack-{stack}-web")).send().await.unwrap();
    needed.insert((role_groups["web"].clone(), tg.target_groups()[0].port().unwrap(), lb_group.clone()));
    let listeners = c.elb.describe_listeners().load_balancer_arn(lb.load_balancer_arn().unwrap()).send().await.unwrap();
    for l in listeners.listeners() {
        needed.insert((lb_group.clone(), l.port().unwrap(), "0.0.0.0/0".into()));
    }
    let extra: Vec<_> = open.difference(&needed).collect();
    assert!(extra.is_empty(), "open, but no role's configuration needs it: {extra:?}");

    let _ = aws::down(&settings(&ep), &stack, &DownOptions::default(), &aws::no_progress).await;
}

/// Issue 12: `up` makes the alarms an operator needs, notifying the given
/// topic; a second `up` finds them as wanted; `down` deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_watch_dead_letters_old_jobs_5xx_and_storage() {
    let Some(ep) = endpoint() else { return };
    let conf = sdk_config(&settings(&ep)).await;
    let cw = aws_sdk_cloudwatch::Client::new(&conf);
    let dir = tempfile::tempdir().unwrap();
    let release = fake_release(dir.path());
    let stack = unique("alarm");
    let topic = format!("arn:aws:sns:{REGION}:123456789012:flipstack-ops");
    let mut spec = spec(&ep, &stack, &release);
    spec.alarm_topic_arn = Some(topic.clone());
    spec.oldest_job_alarm_minutes = 20;
    aws::up(&spec, &aws::no_progress).await.unwrap();

    let out = cw.describe_alarms().alarm_name_prefix(format!("flipstack-{stack}-alarm-")).send().await.unwrap();
    let alarms: BTreeMap<&str, &aws_sdk_cloudwatch::types::MetricAlarm> =
        out.metric_alarms().iter().map(|a| (a.alarm_name().unwrap(), a)).collect();
    let name = |s: &str| format!("flipstack-{stack}-alarm-{s}");
    let want: BTreeSet<String> =
        ["dead-letters", "oldest-job", "http-5xx", "db-storage"].iter().map(|s| name(s)).collect();
    assert_eq!(alarms.keys().map(|s| s.to_string()).collect::<BTreeSet<_>>(), want);
    for a in alarms.values() {
        assert_eq!(a.alarm_actions(), std::slice::from_ref(&topic), "{:?}", a.alarm_name());
        assert!(a.alarm_description().unwrap().contains("docs/aws.md"));
    }
    let dlq = alarms[name("dead-letters").as_str()];
    assert_eq!(dlq.metric_name(), Some("ApproximateNumberOfMessagesVisible"));
    assert_eq!(dlq.dimensions()[0].value(), Some(format!("flipstack-{stack}-jobs-dlq").as_str()));
    assert_eq!(dlq.threshold(), Some(0.0));
    let oldest = alarms[name("oldest-job").as_str()];
    assert_eq!(oldest.metric_name(), Some("ApproximateAgeOfOldestMessage"));
    assert_eq!(oldest.threshold(), Some(1200.0));
    let storage = alarms[name("db-storage").as_str()];
    assert_eq!((storage.namespace(), storage.metric_name()), (Some("AWS/RDS"), Some("FreeStorageSpace")));
    assert_eq!(storage.dimensions()[0].value(), Some(format!("flipstack-{stack}-db").as_str()));
    let http = alarms[name("http-5xx").as_str()];
    let ids: BTreeSet<&str> = http.metrics().iter().filter_map(|q| q.id()).collect();
    assert_eq!(ids, BTreeSet::from(["elb5xx", "target5xx", "requests", "rate"]));
    assert!(http.metrics().iter().any(|q| q.expression().is_some_and(|e| e.contains("/ requests"))));

    let again = aws::plan(&spec).await.unwrap();
    let changed: Vec<_> =
        again.actions.iter().filter(|a| a.kind == Kind::Alarm && !matches!(a.change, Change::Keep)).collect();
    assert!(changed.is_empty(), "a second up would change alarms: {again}");

    aws::down(&spec.aws, &stack, &DownOptions { final_snapshot: false, waits: spec.waits }, &aws::no_progress)
        .await
        .ok();
    let left = cw.describe_alarms().alarm_name_prefix(format!("flipstack-{stack}-")).send().await.unwrap();
    assert!(left.metric_alarms().is_empty(), "down left alarms: {:?}", left.metric_alarms());
}
