//! What a stack has on AWS, found again from names and tags (no local state):
//! `status` reports it, `down` deletes it — only what carries the stack's tag,
//! in the reverse order of `up`, waiting where AWS needs it.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_sqs::types::QueueAttributeName;
use flipstack_aws::AwsSettings;
use serde::Serialize;

use super::balancer::{elb_tags, find_load_balancer, find_target_group};
use super::clients::{aws_error, code_in};
use super::compute::{find_group, group_policies};
use super::data::{cache_tags, describe_cache, describe_db};
use super::names::{Owner, owner, validate_stack_name};
use super::network::stack_filter;
use super::run::Run;
use super::storage::{bucket_settings, read_object, s3_status};
use super::{DownOptions, Kind, Progress, ProvisionError, Step, Waits, no_progress};
use crate::fleet::{GroupStatus, ROLE_TAG, fleet};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceStatus {
    pub kind: Kind,
    pub name: String,
    /// The AWS id or ARN.
    pub id: String,
    /// What AWS says about it (available, active, 3 messages visible, …).
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackStatus {
    pub stack: String,
    pub region: String,
    /// The stack's resources, in the order `up` makes them.
    pub resources: Vec<ResourceStatus>,
    /// The Auto Scaling groups' sizes (desired, in service, …).
    pub groups: Vec<GroupStatus>,
    /// Where the service answers, from the stack's configuration.
    pub public_url: Option<String>,
    /// Resources under the stack's names that do not carry its tag.
    pub not_ours: Vec<ResourceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Teardown {
    pub stack: String,
    pub region: String,
    pub deleted: Vec<(Kind, String)>,
    /// Found under the stack's names without its tag: not touched.
    pub left_alone: Vec<(Kind, String, String)>,
    /// The stack's resources that could not be deleted, and why. Empty when
    /// the stack is gone; otherwise fix the cause and run `down` again.
    pub failed: Vec<(Kind, String, String)>,
}

/// One resource found for the stack.
#[derive(Debug, Clone)]
struct Found {
    kind: Kind,
    name: String,
    id: String,
    state: String,
    owner: Owner,
    /// AWS is already deleting it.
    deleting: bool,
}

impl Found {
    fn ours(kind: Kind, name: impl Into<String>, id: impl Into<String>, state: impl Into<String>) -> Found {
        Found { kind, name: name.into(), id: id.into(), state: state.into(), owner: Owner::Stack, deleting: false }
    }
}

fn tag_owner(tags: &[(String, String)], stack: &str) -> Owner {
    owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), stack)
}

/// Everything of the stack, in creation order (`down` walks it backwards).
async fn discover(run: &Run<'_>) -> Result<Vec<Found>, ProvisionError> {
    let stack = run.stack().to_owned();
    let n = run.names.clone();
    let c = &run.c;
    let mut out = Vec::new();

    // Security groups: by tag, wherever they are.
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(stack_filter(&stack))
        .send()
        .await
        .map_err(|e| aws_error("listing the stack's security groups", e))?;
    for sg in sgs.security_groups() {
        let rules = sg.ip_permissions().len();
        out.push(Found::ours(
            Kind::SecurityGroup,
            sg.group_name().unwrap_or_default(),
            sg.group_id().unwrap_or_default(),
            format!("{rules} inbound rule(s)"),
        ));
    }

    // The bucket, by its name and then its tag.
    let bucket = n.bucket();
    match c.s3.head_bucket().bucket(&bucket).send().await {
        Ok(_) => {
            let tags = match c.s3.get_bucket_tagging().bucket(&bucket).send().await {
                Ok(t) => t.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect(),
                Err(e) if code_in(&e, &["NoSuchTagSet"]) => Vec::new(),
                Err(e) => return Err(aws_error(format!("reading the tags of {bucket}"), e)),
            };
            let (blocked, encrypted, _) = bucket_settings(&c.s3, &bucket).await?;
            let state = match (blocked, encrypted) {
                (true, true) => "private, encrypted".to_owned(),
                (false, _) => "PUBLIC ACCESS NOT BLOCKED: run `up` to fix".to_owned(),
                (true, false) => "private, not encrypted by default".to_owned(),
            };
            out.push(Found {
                kind: Kind::Bucket,
                name: bucket.clone(),
                id: format!("s3://{bucket}"),
                state,
                owner: tag_owner(&tags, &stack),
                deleting: false,
            });
        }
        Err(e) if matches!(s3_status(&e), Some(404) | Some(403)) => {}
        Err(e) => return Err(aws_error(format!("looking for the bucket {bucket}"), e)),
    }

    // Queues, by name and tag.
    for (kind, name) in [(Kind::DeadLetterQueue, n.dead_letter_queue()), (Kind::Queue, n.queue())] {
        let url = match c.sqs.get_queue_url().queue_name(&name).send().await {
            Ok(o) => o.queue_url().unwrap_or_default().to_owned(),
            Err(e) if code_in(&e, &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"]) => {
                continue;
            }
            Err(e) => return Err(aws_error(format!("looking for the queue {name}"), e)),
        };
        let tags = c
            .sqs
            .list_queue_tags()
            .queue_url(&url)
            .send()
            .await
            .map_err(|e| aws_error(format!("reading the tags of {name}"), e))?;
        let tags: Vec<(String, String)> = tags.tags().cloned().unwrap_or_default().into_iter().collect();
        let attrs = c
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| aws_error(format!("reading the queue {name}"), e))?;
        let get =
            |a: QueueAttributeName| attrs.attributes().and_then(|m| m.get(&a).cloned()).unwrap_or_else(|| "?".into());
        out.push(Found {
            kind,
            name: name.clone(),
            id: url,
            state: format!(
                "{} visible, {} in flight",
                get(QueueAttributeName::ApproximateNumberOfMessages),
                get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            ),
            owner: tag_owner(&tags, &stack),
            deleting: false,
        });
    }

    // IAM role and instance profile.
    let role = n.role();
    match c.iam.get_role().role_name(&role).send().await {
        Ok(o) => {
            if let Some(r) = o.role() {
                let tags: Vec<(String, String)> =
                    r.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
                out.push(Found {
                    kind: Kind::Role,
                    name: role.clone(),
                    id: r.arn().to_owned(),
                    state: "assumable by EC2".into(),
                    owner: tag_owner(&tags, &stack),
                    deleting: false,
                });
            }
        }
        Err(e) if code_in(&e, &["NoSuchEntity"]) => {}
        Err(e) => return Err(aws_error(format!("looking for the role {role}"), e)),
    }
    let profile = n.instance_profile();
    match c.iam.get_instance_profile().instance_profile_name(&profile).send().await {
        Ok(o) => {
            if let Some(p) = o.instance_profile() {
                let tags: Vec<(String, String)> =
                    p.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
                let roles: Vec<&str> = p.roles().iter().map(|r| r.role_name()).collect();
                out.push(Found {
                    kind: Kind::InstanceProfile,
                    name: profile.clone(),
                    id: p.arn().to_owned(),
                    state: format!("role {}", roles.join(", ")),
                    owner: tag_owner(&tags, &stack),
                    deleting: false,
                });
            }
        }
        Err(e) if code_in(&e, &["NoSuchEntity"]) => {}
        Err(e) => {
            return Err(aws_error(format!("looking for the instance profile {profile}"), e));
        }
    }

    // Databases.
    let sub = n.db_subnet_group();
    match c.rds.describe_db_subnet_groups().db_subnet_group_name(&sub).send().await {
        Ok(o) => {
            if let Some(g) = o.db_subnet_groups().first() {
                let arn = g.db_subnet_group_arn().unwrap_or_default().to_owned();
                let tags = c
                    .rds
                    .list_tags_for_resource()
                    .resource_name(&arn)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("reading the tags of {sub}"), e))?;
                let tags: Vec<(String, String)> = tags
                    .tag_list()
                    .iter()
                    .map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned()))
                    .collect();
                out.push(Found {
                    kind: Kind::DbSubnetGroup,
                    name: sub.clone(),
                    id: arn,
                    state: format!("{} subnets", g.subnets().len()),
                    owner: tag_owner(&tags, &stack),
                    deleting: false,
                });
            }
        }
        Err(e) if code_in(&e, &["DBSubnetGroupNotFoundFault"]) => {}
        Err(e) => {
            return Err(aws_error(format!("looking for the DB subnet group {sub}"), e));
        }
    }
    for (kind, id) in [(Kind::Database, n.database()), (Kind::DatabaseReplica, n.replica())] {
        if let Some(db) = describe_db(run, &id).await? {
            let tags: Vec<(String, String)> = db
                .tag_list()
                .iter()
                .map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned()))
                .collect();
            let mut state = format!(
                "{} {} {}",
                db.engine().unwrap_or("?"),
                db.db_instance_class().unwrap_or("?"),
                db.db_instance_status().unwrap_or("?")
            );
            if let Some(src) = db.read_replica_source_db_instance_identifier() {
                state += &format!(", replica of {src}");
            }
            if let Some(e) = db.endpoint().and_then(|e| e.address()) {
                state += &format!(", {e}");
            }
            out.push(Found {
                kind,
                name: id.clone(),
                id: db.db_instance_arn().unwrap_or_default().to_owned(),
                state,
                owner: tag_owner(&tags, &stack),
                deleting: false,
            });
        }
    }

    // Cache.
    let csub = n.cache_subnet_group();
    match c.cache.describe_cache_subnet_groups().cache_subnet_group_name(&csub).send().await {
        Ok(o) => {
            if let Some(g) = o.cache_subnet_groups().first() {
                let arn = g.arn().unwrap_or_default().to_owned();
                let tags = cache_tags(run, &arn).await?;
                out.push(Found {
                    kind: Kind::CacheSubnetGroup,
                    name: csub.clone(),
                    id: arn,
                    state: format!("{} subnets", g.subnets().len()),
                    owner: tag_owner(&tags, &stack),
                    deleting: false,
                });
            }
        }
        Err(e) if code_in(&e, &["CacheSubnetGroupNotFoundFault"]) => {}
        Err(e) => {
            return Err(aws_error(format!("looking for the cache subnet group {csub}"), e));
        }
    }
    let cid = n.cache_cluster();
    if let Some(cl) = describe_cache(run, &cid).await? {
        let arn = cl.arn().unwrap_or_default().to_owned();
        let tags = cache_tags(run, &arn).await?;
        out.push(Found {
            kind: Kind::CacheCluster,
            name: cid.clone(),
            id: arn,
            state: format!(
                "{} × {} {}",
                cl.num_cache_nodes().unwrap_or(0),
                cl.cache_node_type().unwrap_or("?"),
                cl.cache_cluster_status().unwrap_or("?")
            ),
            owner: tag_owner(&tags, &stack),
            deleting: cl.cache_cluster_status() == Some("deleting"),
        });
    }

    // Load balancing.
    let tg_name = n.target_group();
    if let Some(tg) = find_target_group(run, &tg_name).await? {
        let arn = tg.target_group_arn().unwrap_or_default().to_owned();
        let tags = elb_tags(run, &arn).await?;
        let health = c
            .elb
            .describe_target_health()
            .target_group_arn(&arn)
            .send()
            .await
            .map_err(|e| aws_error(format!("reading the health of {tg_name}"), e))?;
        let targets = health.target_health_descriptions();
        let healthy = targets
            .iter()
            .filter(|t| t.target_health().and_then(|h| h.state()).map(|s| s.as_str()) == Some("healthy"))
            .count();
        out.push(Found {
            kind: Kind::TargetGroup,
            name: tg_name.clone(),
            id: arn,
            state: format!("{healthy} of {} targets healthy", targets.len()),
            owner: tag_owner(&tags, &stack),
            deleting: false,
        });
    }
    let lb_name = n.load_balancer();
    if let Some(lb) = find_load_balancer(run, &lb_name).await? {
        let arn = lb.load_balancer_arn().unwrap_or_default().to_owned();
        let tags = elb_tags(run, &arn).await?;
        let ours = tag_owner(&tags, &stack);
        out.push(Found {
            kind: Kind::LoadBalancer,
            name: lb_name.clone(),
            id: arn.clone(),
            state: format!(
                "{}, {}",
                lb.state().and_then(|s| s.code()).map(|c| c.as_str()).unwrap_or("?"),
                lb.dns_name().unwrap_or("?")
            ),
            owner: ours.clone(),
            deleting: false,
        });
        let listeners = c
            .elb
            .describe_listeners()
            .load_balancer_arn(&arn)
            .send()
            .await
            .map_err(|e| aws_error(format!("listing the listeners of {lb_name}"), e))?;
        for l in listeners.listeners() {
            out.push(Found {
                kind: Kind::Listener,
                name: format!("{lb_name}:{}", l.port().unwrap_or(0)),
                id: l.listener_arn().unwrap_or_default().to_owned(),
                state: l.protocol().map(|p| p.as_str().to_owned()).unwrap_or_default(),
                // Listeners go with their load balancer.
                owner: ours.clone(),
                deleting: false,
            });
        }
    }

    // Launch templates and groups: by tag.
    let lts = c
        .ec2
        .describe_launch_templates()
        .filters(stack_filter(&stack))
        .send()
        .await
        .map_err(|e| aws_error("listing the stack's launch templates", e))?;
    for lt in lts.launch_templates() {
        out.push(Found::ours(
            Kind::LaunchTemplate,
            lt.launch_template_name().unwrap_or_default(),
            lt.launch_template_id().unwrap_or_default(),
            format!("default version {}", lt.default_version_number().unwrap_or(0)),
        ));
    }
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .filters(
            aws_sdk_autoscaling::types::Filter::builder()
                .name(format!("tag:{}", crate::fleet::STACK_TAG))
                .values(&stack)
                .build(),
        )
        .send()
        .await
        .map_err(|e| aws_error("listing the stack's Auto Scaling groups", e))?;
    for g in groups.auto_scaling_groups() {
        let name = g.auto_scaling_group_name().unwrap_or_default().to_owned();
        let role = g.tags().iter().find(|t| t.key() == Some(ROLE_TAG)).and_then(|t| t.value()).unwrap_or("?");
        let in_service =
            g.instances().iter().filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService")).count();
        out.push(Found::ours(
            Kind::AutoScalingGroup,
            &name,
            g.auto_scaling_group_arn().unwrap_or_default(),
            format!(
                "{role}: {} desired, {in_service} in service, {}-{}{}",
                g.desired_capacity().unwrap_or(0),
                g.min_size().unwrap_or(0),
                g.max_size().unwrap_or(0),
                g.status().map(|s| format!(", {s}")).unwrap_or_default()
            ),
        ));
        for p in group_policies(run, &name).await? {
            let target = p
                .target_tracking_configuration()
                .map(|t| format!("target tracking, target {}", t.target_value().unwrap_or(0.0)))
                .unwrap_or_else(|| p.policy_type().unwrap_or("?").to_owned());
            out.push(Found::ours(
                Kind::ScalingPolicy,
                p.policy_name().unwrap_or_default(),
                p.policy_arn().unwrap_or_default(),
                target,
            ));
        }
    }
    for a in super::alarms::existing(run).await? {
        let (Some(name), Some(arn)) = (a.alarm_name(), a.alarm_arn()) else { continue };
        let tags = c
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| aws_error(format!("reading the tags of the alarm {name}"), e))?;
        let tags: Vec<(String, String)> = tags
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned()))
            .collect();
        out.push(Found {
            kind: Kind::Alarm,
            name: name.to_owned(),
            id: arn.to_owned(),
            state: a.state_value().map(|s| s.as_str().to_owned()).unwrap_or_else(|| "?".into()),
            owner: tag_owner(&tags, &stack),
            deleting: false,
        });
    }
    Ok(out)
}

fn status_of(f: &Found) -> ResourceStatus {
    ResourceStatus { kind: f.kind, name: f.name.clone(), id: f.id.clone(), state: f.state.clone() }
}

/// Every resource of the stack and the groups' sizes.
pub async fn status(aws: &AwsSettings, stack: &str) -> Result<StackStatus, ProvisionError> {
    validate_stack_name(stack)?;
    let run = Box::pin(Run::start(aws, stack, false, &no_progress, Waits::default())).await?;
    let found = Box::pin(discover(&run)).await?;
    let groups = Box::pin(fleet(aws, stack)).await.map_err(|e| ProvisionError::Invalid(e.to_string()))?;
    let public_url = read_object(&run.c.s3, &run.names.bucket(), run.names.config_key())
        .await
        .ok()
        .flatten()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("FLIPSTACK_PUBLIC_URL=").map(String::from)));
    let (ours, not_ours): (Vec<&Found>, Vec<&Found>) = found.iter().partition(|f| f.owner == Owner::Stack);
    Ok(StackStatus {
        stack: stack.to_owned(),
        region: run.names.region.clone(),
        resources: ours.into_iter().map(status_of).collect(),
        groups,
        public_url,
        not_ours: not_ours.into_iter().map(status_of).collect(),
    })
}

/// How to reach a stack's servers: their public URL and the admin API's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub public_url: String,
    pub admin_token: String,
    /// Where both are kept: `s3://<bucket>/config/flipstack.env`.
    pub configuration: String,
}

/// Read from the stack's configuration; None before `up` has written it.
pub async fn access(aws: &AwsSettings, stack: &str) -> Result<Option<Access>, ProvisionError> {
    validate_stack_name(stack)?;
    let run = Box::pin(Run::start(aws, stack, false, &no_progress, Waits::default())).await?;
    let (bucket, key) = (run.names.bucket(), run.names.config_key());
    let text = read_object(&run.c.s3, &bucket, key).await?;
    let get = |text: &str, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(String::from))
    };
    Ok(text.and_then(|t| {
        Some(Access {
            public_url: get(&t, "FLIPSTACK_PUBLIC_URL")?,
            admin_token: get(&t, "FLIPSTACK_ADMIN_TOKEN")?,
            configuration: format!("s3://{bucket}/{key}"),
        })
    }))
}

/// Deletes every resource carrying the stack's tag, dependents first.
pub async fn down(
    aws: &AwsSettings,
    stack: &str,
    options: &DownOptions,
    progress: Progress<'_>,
) -> Result<Teardown, ProvisionError> {
    // Boxed: the SDK's futures are large enough to overflow a debug stack.
    Box::pin(teardown(aws, stack, options, progress)).await
}

async fn teardown(
    aws: &AwsSettings,
    stack: &str,
    options: &DownOptions,
    progress: Progress<'_>,
) -> Result<Teardown, ProvisionError> {
    validate_stack_name(stack)?;
    let run = Box::pin(Run::start(aws, stack, true, progress, options.waits)).await?;
    let found = Box::pin(discover(&run)).await?;
    let mut report = Teardown {
        stack: stack.to_owned(),
        region: run.names.region.clone(),
        deleted: Vec::new(),
        left_alone: Vec::new(),
        failed: Vec::new(),
    };
    let mut ours: Vec<Found> = Vec::new();
    for f in found {
        if f.owner == Owner::Stack {
            ours.push(f);
        } else {
            let why = format!("{} not carrying {}={stack}", f.owner.describe(), crate::fleet::STACK_TAG);
            run.emit(f.kind, &f.name, Step::LeftAlone(why.clone()));
            report.left_alone.push((f.kind, f.name, why));
        }
    }
    let of = |kind: Kind| -> Vec<Found> { ours.iter().filter(|f| f.kind == kind).cloned().collect() };

    // Alarms first: they watch everything else and would fire while it goes.
    for a in of(Kind::Alarm) {
        run.emit(a.kind, &a.name, Step::Deleting);
        let r = run
            .c
            .cloudwatch
            .delete_alarms()
            .alarm_names(&a.name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error(format!("deleting the alarm {}", a.name), e));
        settle(&run, &mut report, a, r);
    }

    // Groups first: their instances hold the security groups, the target
    // group and the instance profile. Their policies go with them.
    let groups = of(Kind::AutoScalingGroup);
    for g in &groups {
        run.emit(g.kind, &g.name, Step::Deleting);
        delete_group(&run, &g.name).await?;
    }
    for g in &groups {
        // Asked again while AWS refuses (a scaling activity in progress).
        run.wait_for(g.kind, &g.name, "to finish terminating its instances", || async {
            match find_group(&run, &g.name).await? {
                None => Ok(Some(())),
                Some(found) if found.status() == Some("Delete in progress") => Ok(None),
                Some(_) => delete_group(&run, &g.name).await.map(|_| None),
            }
        })
        .await?;
        run.done(g.kind, &g.name);
        report.deleted.push((g.kind, g.name.clone()));
        for p in of(Kind::ScalingPolicy) {
            if p.id.contains(&format!("autoScalingGroupName/{}:", g.name)) {
                report.deleted.push((p.kind, p.name.clone()));
            }
        }
    }
    let group_names: BTreeSet<String> = groups.iter().map(|g| g.name.clone()).collect();
    if !group_names.is_empty() {
        let what = format!("instances of {}", group_names.iter().cloned().collect::<Vec<_>>().join(", "));
        run.wait_for(Kind::Instance, &what, "to terminate", || async {
            let out = run
                .c
                .ec2
                .describe_instances()
                .filters(stack_filter(stack))
                .send()
                .await
                .map_err(|e| aws_error("listing the stack's instances", e))?;
            let alive = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated)
                        && i.tags().iter().any(|t| {
                            t.key() == Some("aws:autoscaling:groupName")
                                && t.value().is_some_and(|v| group_names.contains(v))
                        })
                })
                .count();
            Ok((alive == 0).then_some(()))
        })
        .await?;
    }

    for lt in of(Kind::LaunchTemplate) {
        run.emit(lt.kind, &lt.name, Step::Deleting);
        match run.c.ec2.delete_launch_template().launch_template_id(&lt.id).send().await {
            Ok(_) => {}
            Err(e) if code_in(&e, &["InvalidLaunchTemplateId.NotFound"]) => {}
            Err(e) => {
                return Err(aws_error(format!("deleting the launch template {}", lt.name), e));
            }
        }
        run.done(lt.kind, &lt.name);
        report.deleted.push((lt.kind, lt.name));
    }

    for lb in of(Kind::LoadBalancer) {
        run.emit(lb.kind, &lb.name, Step::Deleting);
        run.c
            .elb
            .delete_load_balancer()
            .load_balancer_arn(&lb.id)
            .send()
            .await
            .map_err(|e| aws_error(format!("deleting the load balancer {}", lb.name), e))?;
        run.wait_for(lb.kind, &lb.name, "to be deleted", || async {
            Ok(find_load_balancer(&run, &lb.name).await?.is_none().then_some(()))
        })
        .await?;
        run.done(lb.kind, &lb.name);
        for l in of(Kind::Listener) {
            report.deleted.push((l.kind, l.name));
        }
        report.deleted.push((lb.kind, lb.name));
    }
    for tg in of(Kind::TargetGroup) {
        run.emit(tg.kind, &tg.name, Step::Deleting);
        // In use until the load balancer's deletion has gone through.
        run.wait_for(tg.kind, &tg.name, "to be released by the load balancer", || async {
            match run.c.elb.delete_target_group().target_group_arn(&tg.id).send().await {
                Ok(_) => Ok(Some(())),
                Err(e) if code_in(&e, &["ResourceInUse"]) => Ok(None),
                Err(e) if code_in(&e, &["TargetGroupNotFound"]) => Ok(Some(())),
                Err(e) => Err(aws_error(format!("deleting the target group {}", tg.name), e)),
            }
        })
        .await?;
        run.done(tg.kind, &tg.name);
        report.deleted.push((tg.kind, tg.name));
    }

    // The cluster's deletion is waited for through its subnet group, which
    // AWS keeps "in use" until the cluster is gone; here only until AWS has
    // accepted the deletion (a cluster being created or modified refuses it).
    for cl in of(Kind::CacheCluster) {
        if cl.deleting {
            run.emit(cl.kind, &cl.name, Step::Warning("already being deleted".into()));
            continue;
        }
        run.emit(cl.kind, &cl.name, Step::Deleting);
        run.wait_for(cl.kind, &cl.name, "to accept its deletion", || async {
            match run.c.cache.delete_cache_cluster().cache_cluster_id(&cl.name).send().await {
                Ok(_) => Ok(Some(())),
                Err(e) if code_in(&e, &["CacheClusterNotFound"]) => Ok(Some(())),
                Err(e) if code_in(&e, &["InvalidCacheClusterState"]) => {
                    let status = describe_cache(&run, &cl.name).await?;
                    let status = status.as_ref().and_then(|c| c.cache_cluster_status());
                    Ok(matches!(status, None | Some("deleting")).then_some(()))
                }
                Err(e) => Err(aws_error(format!("deleting the cache cluster {}", cl.name), e)),
            }
        })
        .await?;
        run.done(cl.kind, &cl.name);
        report.deleted.push((cl.kind, cl.name));
    }

    // From here on, what fails to go does not stop the rest: nothing else
    // depends on it. It is reported, and `down` can be run again.
    for g in of(Kind::CacheSubnetGroup) {
        run.emit(g.kind, &g.name, Step::Deleting);
        let r = run
            .wait_for(g.kind, &g.name, "to be released by the cache cluster", || async {
                match run.c.cache.delete_cache_subnet_group().cache_subnet_group_name(&g.name).send().await {
                    Ok(_) => Ok(Some(())),
                    Err(e) if code_in(&e, &["CacheSubnetGroupInUse"]) => Ok(None),
                    Err(e) if code_in(&e, &["CacheSubnetGroupNotFoundFault"]) => Ok(Some(())),
                    Err(e) => Err(aws_error(format!("deleting the cache subnet group {}", g.name), e)),
                }
            })
            .await;
        settle(&run, &mut report, g, r);
    }

    // The replica before its primary: RDS refuses the other order.
    for kind in [Kind::DatabaseReplica, Kind::Database] {
        for db in of(kind) {
            run.emit(db.kind, &db.name, Step::Deleting);
            let snapshot = (kind == Kind::Database && options.final_snapshot).then(|| {
                let name = format!("{}-final-{}", db.name, flipstack_domain::domain::now_millis() / 1000);
                run.emit(
                    db.kind,
                    &db.name,
                    Step::Warning(format!(
                        "taking the final snapshot {name} (kept after down; delete it yourself when no longer needed)"
                    )),
                );
                name
            });
            // Asked again while RDS refuses (an instance being created,
            // backed up or modified), until it is gone.
            run.wait_for(db.kind, &db.name, "to be deleted", || async {
                let Some(found) = describe_db(&run, &db.name).await? else {
                    return Ok(Some(()));
                };
                if found.db_instance_status() == Some("deleting") {
                    return Ok(None);
                }
                let req =
                    run.c.rds.delete_db_instance().db_instance_identifier(&db.name).delete_automated_backups(true);
                let req = match &snapshot {
                    Some(name) => req.skip_final_snapshot(false).final_db_snapshot_identifier(name),
                    None => req.skip_final_snapshot(true),
                };
                match req.send().await {
                    Ok(_) => Ok(describe_db(&run, &db.name).await?.is_none().then_some(())),
                    Err(e) if code_in(&e, &["InvalidDBInstanceState"]) => Ok(None),
                    Err(e) if code_in(&e, &["DBInstanceNotFound"]) => Ok(Some(())),
                    Err(e) => Err(aws_error(format!("deleting the {kind} {}", db.name), e)),
                }
            })
            .await?;
            run.done(db.kind, &db.name);
            report.deleted.push((db.kind, db.name));
        }
    }
    for g in of(Kind::DbSubnetGroup) {
        run.emit(g.kind, &g.name, Step::Deleting);
        let r = run
            .wait_for(g.kind, &g.name, "to be released by the databases", || async {
                match run.c.rds.delete_db_subnet_group().db_subnet_group_name(&g.name).send().await {
                    Ok(_) => Ok(Some(())),
                    Err(e) if code_in(&e, &["InvalidDBSubnetGroupStateFault"]) => Ok(None),
                    Err(e) if code_in(&e, &["DBSubnetGroupNotFoundFault"]) => Ok(Some(())),
                    Err(e) => Err(aws_error(format!("deleting the DB subnet group {}", g.name), e)),
                }
            })
            .await;
        settle(&run, &mut report, g, r);
    }

    for kind in [Kind::Queue, Kind::DeadLetterQueue] {
        for q in of(kind) {
            run.emit(q.kind, &q.name, Step::Deleting);
            let r = match run.c.sqs.delete_queue().queue_url(&q.id).send().await {
                Ok(_) => Ok(()),
                Err(e) if code_in(&e, &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"]) => Ok(()),
                Err(e) => Err(aws_error(format!("deleting the queue {}", q.name), e)),
            };
            settle(&run, &mut report, q, r);
        }
    }

    for p in of(Kind::InstanceProfile) {
        run.emit(p.kind, &p.name, Step::Deleting);
        let r = Box::pin(delete_instance_profile(&run, &p.name)).await;
        settle(&run, &mut report, p, r);
    }
    for r in of(Kind::Role) {
        run.emit(r.kind, &r.name, Step::Deleting);
        let result = Box::pin(delete_role(&run, &r.name)).await;
        settle(&run, &mut report, r, result);
    }

    for b in of(Kind::Bucket) {
        run.emit(b.kind, &b.name, Step::Deleting);
        let r = async {
            let removed = Box::pin(empty_bucket(&run, &b.name)).await?;
            if removed > 0 {
                run.emit(b.kind, &b.name, Step::Warning(format!("deleted {removed} object(s) and versions")));
            }
            match run.c.s3.delete_bucket().bucket(&b.name).send().await {
                Ok(_) => Ok(()),
                Err(e) if code_in(&e, &["NoSuchBucket"]) => Ok(()),
                Err(e) => Err(aws_error(format!("deleting the bucket {}", b.name), e)),
            }
        }
        .await;
        settle(&run, &mut report, b, r);
    }

    // Security groups refer to each other: drop every rule first, then the
    // groups, retrying while network interfaces (the load balancer's, the
    // databases') are still being released.
    let sgs = of(Kind::SecurityGroup);
    for sg in &sgs {
        let out = run
            .c
            .ec2
            .describe_security_groups()
            .group_ids(&sg.id)
            .send()
            .await
            .map_err(|e| aws_error(format!("reading the security group {}", sg.name), e))?;
        if let Some(g) = out.security_groups().first()
            && !g.ip_permissions().is_empty()
        {
            run.c
                .ec2
                .revoke_security_group_ingress()
                .group_id(&sg.id)
                .set_ip_permissions(Some(g.ip_permissions().to_vec()))
                .send()
                .await
                .map_err(|e| aws_error(format!("revoking the rules of {}", sg.name), e))?;
        }
    }
    for sg in sgs {
        run.emit(sg.kind, &sg.name, Step::Deleting);
        let r = run
            .wait_for(sg.kind, &sg.name, "to be released by network interfaces", || async {
                match run.c.ec2.delete_security_group().group_id(&sg.id).send().await {
                    Ok(_) => Ok(Some(())),
                    Err(e) if code_in(&e, &["DependencyViolation"]) => Ok(None),
                    Err(e) if code_in(&e, &["InvalidGroup.NotFound"]) => Ok(Some(())),
                    Err(e) => Err(aws_error(format!("deleting the security group {}", sg.name), e)),
                }
            })
            .await;
        settle(&run, &mut report, sg, r);
    }
    Ok(report)
}

/// Asks for a group's deletion, instances and all. AWS refusing because of
/// an activity in progress is not an error: the caller asks again.
async fn delete_group(run: &Run<'_>, name: &str) -> Result<(), ProvisionError> {
    match run.c.asg.delete_auto_scaling_group().auto_scaling_group_name(name).force_delete(true).send().await {
        Ok(_) => Ok(()),
        Err(e) if code_in(&e, &["ScalingActivityInProgress", "ResourceInUse"]) => Ok(()),
        Err(e) if code_in(&e, &["ValidationError"]) && find_group(run, name).await?.is_none() => Ok(()),
        Err(e) => Err(aws_error(format!("deleting the group {name}"), e)),
    }
}

/// Records a leaf's deletion, or its failure (reported, not fatal).
fn settle(run: &Run<'_>, report: &mut Teardown, f: Found, r: Result<(), ProvisionError>) {
    match r {
        Ok(()) => {
            run.done(f.kind, &f.name);
            report.deleted.push((f.kind, f.name));
        }
        Err(e) => {
            let why = e.to_string();
            run.emit(f.kind, &f.name, Step::Failed(why.clone()));
            report.failed.push((f.kind, f.name, why));
        }
    }
}

async fn delete_instance_profile(run: &Run<'_>, name: &str) -> Result<(), ProvisionError> {
    let iam = &run.c.iam;
    if let Ok(out) = iam.get_instance_profile().instance_profile_name(name).send().await
        && let Some(profile) = out.instance_profile()
    {
        for r in profile.roles() {
            iam.remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(r.role_name())
                .send()
                .await
                .map_err(|e| aws_error(format!("removing {} from {name}", r.role_name()), e))?;
        }
    }
    match iam.delete_instance_profile().instance_profile_name(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if code_in(&e, &["NoSuchEntity"]) => Ok(()),
        Err(e) => Err(aws_error(format!("deleting the instance profile {name}"), e)),
    }
}

async fn delete_role(run: &Run<'_>, name: &str) -> Result<(), ProvisionError> {
    let iam = &run.c.iam;
    let inline = iam
        .list_role_policies()
        .role_name(name)
        .send()
        .await
        .map_err(|e| aws_error(format!("listing the policies of {name}"), e))?;
    for policy in inline.policy_names() {
        iam.delete_role_policy()
            .role_name(name)
            .policy_name(policy)
            .send()
            .await
            .map_err(|e| aws_error(format!("deleting the policy {policy} of {name}"), e))?;
    }
    let attached = iam
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .map_err(|e| aws_error(format!("listing the managed policies of {name}"), e))?;
    for p in attached.attached_policies() {
        if let Some(arn) = p.policy_arn() {
            iam.detach_role_policy()
                .role_name(name)
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| aws_error(format!("detaching {arn} from {name}"), e))?;
        }
    }
    match iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if code_in(&e, &["NoSuchEntity"]) => Ok(()),
        Err(e) => Err(aws_error(format!("deleting the role {name}"), e)),
    }
}

/// Deletes every object and object version; returns how many.
async fn empty_bucket(run: &Run<'_>, bucket: &str) -> Result<usize, ProvisionError> {
    let s3 = &run.c.s3;
    let mut removed = 0;
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| aws_error(format!("listing the objects of {bucket}"), e))?;
        let mut ids = Vec::new();
        for v in page.versions() {
            if let Some(k) = v.key() {
                ids.push((k.to_owned(), v.version_id().map(String::from)));
            }
        }
        for m in page.delete_markers() {
            if let Some(k) = m.key() {
                ids.push((k.to_owned(), m.version_id().map(String::from)));
            }
        }
        if ids.is_empty() {
            return Ok(removed);
        }
        for chunk in ids.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|(k, v)| {
                    ObjectIdentifier::builder().key(k).set_version_id(v.clone().filter(|v| v != "null")).build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ProvisionError::Invalid(format!("building an S3 request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ProvisionError::Invalid(format!("building an S3 request: {e}")))?;
            s3.delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| aws_error(format!("emptying the bucket {bucket}"), e))?;
            removed += chunk.len();
        }
    }
}
