//! The instances: a launch template per role (its user data fetches the
//! release and the configuration from the bucket and runs `flipstack serve` or
//! `flipstack work` under systemd), an Auto Scaling group per role, and their
//! target-tracking policies — the web group on requests per target, the worker
//! group on backlog per instance (the rule of [`crate::policy`]).

use std::collections::BTreeSet;

use aws_sdk_autoscaling::types::{
    CustomizedMetricSpecification, LaunchTemplateSpecification, Metric, MetricDimension, MetricType,
    PredefinedMetricSpecification, ScalingPolicy, TargetTrackingConfiguration, TargetTrackingMetricDataQuery,
    TargetTrackingMetricStat,
};
use aws_sdk_ec2::types::{
    LaunchTemplate, LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, ResponseLaunchTemplateData,
    TagSpecification,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::balancer::LoadBalancer;
use super::clients::{aws_error, code_in};
use super::names::{Names, ensure_ours, owner};
use super::network::{APP_PORT, Groups, Network, filter, tags};
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::{ROLE_TAG, STACK_TAG};
use flipstack_aws::metric::BACKLOG as BACKLOG_METRIC;

pub const ROLES: [&str; 2] = ["web", "worker"];
/// Time a new instance has to fetch the release and pass its first health check.
const HEALTH_GRACE_SECS: i32 = 300;
/// Liveness: the web process's own answer, which no outage of another service changes.
pub const LIVENESS_PATH: &str = "/livez";
/// A web instance whose `/livez` failed this many checks in a row (10 s apart)
/// reports itself unhealthy, and its group replaces it.
pub const LIVENESS_FAILURES: u32 = 6;
/// What the groups' own health check looks at: the instance (EC2 status
/// checks) and what the instance reports with SetInstanceHealth (liveness).
/// Never the load balancer's check: that is readiness, and a database
/// outage would replace every web instance at once.
pub const GROUP_HEALTH_CHECK: &str = "EC2";
/// What the worker group's scaling metric needs collected.
const WORKER_METRICS: [&str; 1] = ["GroupInServiceInstances"];

/// The boot script. It runs once, as root, on first boot.
pub fn user_data(names: &Names, role: &str, release_sha256: &str) -> String {
    let bucket = names.bucket();
    let region = &names.region;
    let release = names.release_key();
    let config = names.config_key();
    let (command, extra_env, stop_timeout) = match role {
        "web" => ("serve", format!("Environment=FLIPSTACK_LISTEN=0.0.0.0:{APP_PORT}\n"), 30),
        // A worker told to stop finishes the job in hand first.
        _ => ("work", String::new(), 120),
    };
    format!(
        r#"#!/bin/bash
# flipstack {role} instance of stack {stack}: written by `flipstack provision up`.
set -euo pipefail
install -d -m 0755 /opt/flipstack
install -d -m 0700 /etc/flipstack
# The release, checked against the digest this launch template was made for.
aws s3 cp --only-show-errors --region {region} s3://{bucket}/{release} /opt/flipstack/flipstack.download
echo "{release_sha256}  /opt/flipstack/flipstack.download" | sha256sum --check --strict -
install -m 0755 /opt/flipstack/flipstack.download /usr/local/bin/flipstack
rm -f /opt/flipstack/flipstack.download
# HEIC/AVIF need libheif, which flipstack loads at run time: without it the
# service runs and refuses those uploads (415), saying why.
dnf install -y -q libheif >/dev/null 2>&1 || echo "flipstack: no libheif package here; HEIC/AVIF uploads will be refused"
# The configuration: endpoints, queue, bucket and secrets, for systemd only.
aws s3 cp --only-show-errors --region {region} s3://{bucket}/{config} /etc/flipstack/flipstack.env
chmod 0600 /etc/flipstack/flipstack.env
id flipstack >/dev/null 2>&1 || useradd --system --home-dir /var/lib/flipstack --shell /sbin/nologin flipstack
install -d -m 0750 -o flipstack -g flipstack /var/lib/flipstack
cat > /etc/systemd/system/flipstack.service <<'UNIT'
[Unit]
Description=flipstack {role}
Wants=network-online.target
After=network-online.target

[Service]
User=flipstack
Group=flipstack
EnvironmentFile=/etc/flipstack/flipstack.env
{extra_env}ExecStart=/usr/local/bin/flipstack {command}
WorkingDirectory=/var/lib/flipstack
Restart=always
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/flipstack

[Install]
WantedBy=multi-user.target
UNIT
{liveness}systemctl daemon-reload
systemctl enable --now flipstack.service
"#,
        stack = names.stack,
        liveness = if role == "web" { liveness_watch(region) } else { String::new() },
    )
}

/// The web instance's liveness check: a systemd timer asks `/livez` every
/// 10 s after the grace period; after [`LIVENESS_FAILURES`] failures in a
/// row the instance tells its group it is unhealthy (SetInstanceHealth), and
/// the group replaces it. The process itself restarting (systemd) is not a
/// failure unless it keeps failing.
fn liveness_watch(region: &str) -> String {
    format!(
        r#"cat > /usr/local/bin/flipstack-liveness <<'CHECK'
#!/bin/bash
set -uo pipefail
count=/run/flipstack-liveness-failures
if curl -fsS --max-time 5 -o /dev/null http://127.0.0.1:{APP_PORT}{LIVENESS_PATH}; then
  echo 0 > "$count"
  exit 0
fi
n=$(( $(cat "$count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$count"
echo "flipstack {LIVENESS_PATH} failed ($n in a row)"
if [ "$n" -ge {LIVENESS_FAILURES} ]; then
  token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
  id=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)
  aws autoscaling set-instance-health --region {region} --instance-id "$id" --health-status Unhealthy
fi
CHECK
chmod 0755 /usr/local/bin/flipstack-liveness
cat > /etc/systemd/system/flipstack-liveness.service <<'UNIT'
[Unit]
Description=flipstack liveness ({LIVENESS_PATH}); replaces this instance when it keeps failing

[Service]
Type=oneshot
ExecStart=/usr/local/bin/flipstack-liveness
UNIT
cat > /etc/systemd/system/flipstack-liveness.timer <<'UNIT'
[Unit]
Description=flipstack liveness every 10 s, after the start-up grace

[Timer]
OnBootSec={HEALTH_GRACE_SECS}s
OnUnitActiveSec=10s
AccuracySec=1s

[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl enable --now flipstack-liveness.timer
"#
    )
}

/// The image: the operator's, else the template's current one (so a new
/// Amazon Linux release does not by itself change the stack), else the newest
/// Amazon Linux 2023 for x86-64.
async fn image(run: &Run<'_>, spec: &StackSpec, current: Option<&str>) -> Result<String, ProvisionError> {
    if let Some(ami) = &spec.ami {
        return Ok(ami.clone());
    }
    if let Some(ami) = current {
        return Ok(ami.to_owned());
    }
    let out = run
        .c
        .ec2
        .describe_images()
        .owners("amazon")
        .filters(filter("name", "al2023-ami-2023.*-x86_64"))
        .filters(filter("architecture", "x86_64"))
        .filters(filter("state", "available"))
        .send()
        .await
        .map_err(|e| aws_error("finding the newest Amazon Linux 2023 image", e))?;
    out.images()
        .iter()
        .filter(|i| i.image_id().is_some())
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .and_then(|i| i.image_id())
        .map(String::from)
        .ok_or_else(|| {
            ProvisionError::Invalid(format!(
                "no Amazon Linux 2023 image found in {}; pass --ami with an x86-64 Linux image that has the AWS CLI",
                run.names.region
            ))
        })
}

struct Template {
    image: String,
    instance_type: String,
    profile: String,
    security_group: String,
    user_data: String,
    key_name: Option<String>,
}

impl Template {
    fn request(&self, stack: &str, role: &str) -> RequestLaunchTemplateData {
        let resource_tags = |rt: ResourceType| {
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(rt)
                .set_tags(Some(tags(stack, Some(role))))
                .build()
        };
        RequestLaunchTemplateData::builder()
            .image_id(&self.image)
            .instance_type(self.instance_type.as_str().into())
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(&self.profile).build(),
            )
            .security_group_ids(&self.security_group)
            .user_data(B64.encode(&self.user_data))
            .set_key_name(self.key_name.clone())
            // IMDSv2 only: the instance role's credentials are not one
            // forged GET away.
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .tag_specifications(resource_tags(ResourceType::Instance))
            .tag_specifications(resource_tags(ResourceType::Volume))
            .build()
    }

    fn differences(&self, have: &ResponseLaunchTemplateData) -> Vec<String> {
        let mut what = Vec::new();
        if have.image_id() != Some(self.image.as_str()) {
            what.push(format!("image to {}", self.image));
        }
        if have.instance_type().map(|t| t.as_str()) != Some(self.instance_type.as_str()) {
            what.push(format!("instance type to {}", self.instance_type));
        }
        let profile_ok = have.iam_instance_profile().is_some_and(|p| {
            p.name() == Some(self.profile.as_str())
                || p.arn().is_some_and(|a| a.ends_with(&format!("/{}", self.profile)))
        });
        if !profile_ok {
            what.push(format!("instance profile to {}", self.profile));
        }
        let sgs: BTreeSet<&str> = have.security_group_ids().iter().map(String::as_str).collect();
        if sgs != BTreeSet::from([self.security_group.as_str()]) {
            what.push("security group".into());
        }
        let user_data =
            have.user_data().and_then(|u| B64.decode(u).ok()).map(|b| String::from_utf8_lossy(&b).into_owned());
        if user_data.as_deref() != Some(self.user_data.as_str()) {
            what.push("user data (boot script or release digest)".into());
        }
        if have.key_name() != self.key_name.as_deref() {
            what.push(match &self.key_name {
                Some(k) => format!("key pair to {k}"),
                None => "no key pair".into(),
            });
        }
        if have.metadata_options().and_then(|m| m.http_tokens()) != Some(&LaunchTemplateHttpTokensState::Required) {
            what.push("require IMDSv2".into());
        }
        what
    }
}

pub async fn find_template(run: &Run<'_>, name: &str) -> Result<Option<LaunchTemplate>, ProvisionError> {
    match run.c.ec2.describe_launch_templates().launch_template_names(name).send().await {
        Ok(out) => Ok(out.launch_templates().first().cloned()),
        Err(e) if code_in(&e, &["InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"]) => {
            Ok(None)
        }
        Err(e) => Err(aws_error(format!("looking for the launch template {name}"), e)),
    }
}

async fn default_version(
    run: &Run<'_>,
    lt: &LaunchTemplate,
) -> Result<Option<ResponseLaunchTemplateData>, ProvisionError> {
    let id = lt.launch_template_id().unwrap_or_default();
    let out = run
        .c
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .versions("$Default")
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the launch template {id}"), e))?;
    Ok(out.launch_template_versions().first().and_then(|v| v.launch_template_data()).cloned())
}

pub async fn ensure_launch_templates(
    run: &mut Run<'_>,
    spec: &StackSpec,
    groups: &Groups,
    release_sha256: Option<&str>,
) -> Result<(), ProvisionError> {
    let stack = run.stack().to_owned();
    let ec2 = run.c.ec2.clone();
    let sha = release_sha256.map(String::from).unwrap_or_else(|| Run::pending("release"));
    for role in ROLES {
        let name = run.names.launch_template(role);
        run.checking(Kind::LaunchTemplate, &name);
        let existing = find_template(run, &name).await?;
        let current = match &existing {
            Some(lt) => {
                let tags = lt.tags().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")));
                ensure_ours(Kind::LaunchTemplate, &name, owner(tags, &stack), &stack)?;
                default_version(run, lt).await?
            }
            None => None,
        };
        let want = Template {
            image: image(run, spec, current.as_ref().and_then(|c| c.image_id())).await?,
            instance_type: match role {
                "web" => spec.web_instance_type.clone(),
                _ => spec.worker_instance_type.clone(),
            },
            profile: run.names.instance_profile(),
            security_group: groups.id(role),
            user_data: user_data(&run.names, role, &sha),
            key_name: spec.key_name.clone(),
        };
        match (existing, current) {
            (None, _) => {
                let notes = vec![format!(
                    "{} on {}, runs `flipstack {}` under systemd, IMDSv2 only",
                    want.instance_type,
                    want.image,
                    if role == "web" { "serve" } else { "work" }
                )];
                if run.create(Kind::LaunchTemplate, &name, notes) {
                    ec2.create_launch_template()
                        .launch_template_name(&name)
                        .version_description("flipstack provision up")
                        .launch_template_data(want.request(&stack, role))
                        .tag_specifications(
                            TagSpecification::builder()
                                .resource_type(ResourceType::LaunchTemplate)
                                .set_tags(Some(tags(&stack, Some(role))))
                                .build(),
                        )
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("creating the launch template {name}"), e))?;
                    run.done(Kind::LaunchTemplate, &name);
                }
            }
            (Some(lt), current) => {
                let what = match &current {
                    Some(data) => want.differences(data),
                    None => vec!["a default version".into()],
                };
                if run.update(Kind::LaunchTemplate, &name, what) {
                    let id = lt.launch_template_id().unwrap_or_default();
                    let made = ec2
                        .create_launch_template_version()
                        .launch_template_id(id)
                        .version_description("flipstack provision up")
                        .launch_template_data(want.request(&stack, role))
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("adding a version to {name}"), e))?;
                    let version = made.launch_template_version().and_then(|v| v.version_number()).ok_or_else(|| {
                        ProvisionError::Invalid(format!(
                            "EC2 did not say which version of {name} it made; run `up` again"
                        ))
                    })?;
                    ec2.modify_launch_template()
                        .launch_template_id(id)
                        .default_version(version.to_string())
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("making version {version} of {name} the default"), e))?;
                    run.warn(
                        Kind::LaunchTemplate,
                        &name,
                        format!(
                            "running instances keep the old version until replaced: `aws autoscaling start-instance-refresh --auto-scaling-group-name {}`",
                            run.names.group(role)
                        ),
                    );
                    run.done(Kind::LaunchTemplate, &name);
                }
            }
        }
    }
    Ok(())
}

pub async fn find_group(
    run: &Run<'_>,
    name: &str,
) -> Result<Option<aws_sdk_autoscaling::types::AutoScalingGroup>, ProvisionError> {
    let out = run
        .c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| aws_error(format!("looking for the group {name}"), e))?;
    Ok(out.auto_scaling_groups().first().cloned())
}

fn group_tags(stack: &str, name: &str, role: &str) -> Vec<aws_sdk_autoscaling::types::Tag> {
    [(STACK_TAG, stack), (ROLE_TAG, role), ("Name", name)]
        .into_iter()
        .map(|(k, v)| {
            aws_sdk_autoscaling::types::Tag::builder()
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .key(k)
                .value(v)
                .propagate_at_launch(true)
                .build()
        })
        .collect()
}

/// The target-tracking configuration of a role's policy; None in a plan
/// before the load balancer exists.
pub fn tracking(role: &str, spec: &StackSpec, names: &Names, lb: &LoadBalancer) -> Option<TargetTrackingConfiguration> {
    match role {
        "web" => Some(
            TargetTrackingConfiguration::builder()
                .predefined_metric_specification(
                    PredefinedMetricSpecification::builder()
                        .predefined_metric_type(MetricType::AlbRequestCountPerTarget)
                        .resource_label(lb.resource_label()?)
                        .build(),
                )
                .target_value(spec.requests_per_target)
                .build(),
        ),
        _ => {
            let stat = |id: &str, namespace: &str, metric: &str, dim: (&str, &str), stat: &str| {
                TargetTrackingMetricDataQuery::builder()
                    .id(id)
                    .metric_stat(
                        TargetTrackingMetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(namespace)
                                    .metric_name(metric)
                                    .dimensions(MetricDimension::builder().name(dim.0).value(dim.1).build())
                                    .build(),
                            )
                            .stat(stat)
                            .build(),
                    )
                    .return_data(false)
                    .build()
            };
            Some(
                TargetTrackingConfiguration::builder()
                    .customized_metric_specification(
                        CustomizedMetricSpecification::builder()
                            // Distinct jobs waiting or in hand, counted in the uploads
                            // table and published by the web servers: duplicate queue
                            // messages never count (the rule of `flipstack up`'s pool).
                            .metrics(stat("jobs", &spec.metrics_namespace, BACKLOG_METRIC, ("Role", "web"), "Maximum"))
                            .metrics(stat(
                                "workers",
                                "AWS/AutoScaling",
                                "GroupInServiceInstances",
                                ("AutoScalingGroupName", &names.group("worker")),
                                "Average",
                            ))
                            .metrics(
                                TargetTrackingMetricDataQuery::builder()
                                    .id("jobs_per_worker")
                                    .expression("jobs / workers")
                                    .label("distinct unfinished jobs per in-service worker")
                                    .return_data(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .target_value(spec.backlog_per_worker)
                    .build(),
            )
        }
    }
}

/// A policy's configuration as a comparable string: what it measures, how,
/// and the target. Fields an endpoint fills in by itself are left out.
pub fn fingerprint(t: &TargetTrackingConfiguration) -> String {
    let mut out = format!("target={};", t.target_value().unwrap_or(0.0));
    if let Some(p) = t.predefined_metric_specification() {
        out += &format!(
            "predefined={}:{};",
            p.predefined_metric_type().map(|m| m.as_str()).unwrap_or(""),
            p.resource_label().unwrap_or("")
        );
    }
    if let Some(c) = t.customized_metric_specification() {
        let mut queries: Vec<String> = c
            .metrics()
            .iter()
            .map(|q| {
                let stat = q.metric_stat().map(|s| {
                    let m = s.metric();
                    let mut dims: Vec<String> = m
                        .map(|m| {
                            m.dimensions()
                                .iter()
                                .map(|d| format!("{}={}", d.name().unwrap_or(""), d.value().unwrap_or("")))
                                .collect()
                        })
                        .unwrap_or_default();
                    dims.sort();
                    format!(
                        "{}/{}[{}]:{}",
                        m.and_then(|m| m.namespace()).unwrap_or(""),
                        m.and_then(|m| m.metric_name()).unwrap_or(""),
                        dims.join(","),
                        s.stat().unwrap_or("")
                    )
                });
                format!(
                    "{}|{}|{}|{}",
                    q.id().unwrap_or(""),
                    q.expression().unwrap_or(""),
                    stat.unwrap_or_default(),
                    q.return_data().unwrap_or(true)
                )
            })
            .collect();
        queries.sort();
        out += &format!("custom={};", queries.join(";"));
    }
    out += &format!("disable_scale_in={}", t.disable_scale_in().unwrap_or(false));
    out
}

pub async fn group_policies(run: &Run<'_>, group: &str) -> Result<Vec<ScalingPolicy>, ProvisionError> {
    let out = run
        .c
        .asg
        .describe_policies()
        .auto_scaling_group_name(group)
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the scaling policies of {group}"), e))?;
    Ok(out.scaling_policies().to_vec())
}

pub async fn ensure_groups(
    run: &mut Run<'_>,
    spec: &StackSpec,
    net: &Network,
    lb: &LoadBalancer,
) -> Result<(), ProvisionError> {
    let stack = run.stack().to_owned();
    let asg = run.c.asg.clone();
    let subnets = net.subnets.join(",");
    let tg = lb.target_group_arn.clone().unwrap_or_else(|| Run::pending("target group"));
    for role in ROLES {
        let name = run.names.group(role);
        let capacity = if role == "web" { spec.web } else { spec.worker };
        let (min, max) = (capacity.min as i32, capacity.max as i32);
        let template = LaunchTemplateSpecification::builder()
            .launch_template_name(run.names.launch_template(role))
            .version("$Default")
            .build();
        let health = GROUP_HEALTH_CHECK;
        let tgs = if role == "web" { vec![tg.clone()] } else { Vec::new() };
        run.checking(Kind::AutoScalingGroup, &name);
        match find_group(run, &name).await? {
            None => {
                let notes = vec![
                    format!("{min} to {max} instances in {} zones, warmup {} s", net.subnets.len(), spec.warmup_secs),
                    match role {
                        "web" => format!(
                            "behind the load balancer's target group (routed on readiness); replaced on liveness ({LIVENESS_PATH}) and EC2 status only"
                        ),
                        _ => "collects GroupInServiceInstances for its scaling metric".into(),
                    },
                ];
                if run.create(Kind::AutoScalingGroup, &name, notes) {
                    asg.create_auto_scaling_group()
                        .auto_scaling_group_name(&name)
                        .launch_template(template)
                        .min_size(min)
                        .max_size(max)
                        .desired_capacity(min)
                        .vpc_zone_identifier(&subnets)
                        .set_target_group_arns(Some(tgs.clone()))
                        .health_check_type(health)
                        .health_check_grace_period(HEALTH_GRACE_SECS)
                        .default_instance_warmup(spec.warmup_secs)
                        .set_tags(Some(group_tags(&stack, &name, role)))
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("creating the group {name}"), e))?;
                    if role == "worker" {
                        enable_metrics(run, &name).await?;
                    }
                    run.done(Kind::AutoScalingGroup, &name);
                }
            }
            Some(g) => {
                let tags = g.tags().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")));
                ensure_ours(Kind::AutoScalingGroup, &name, owner(tags, &stack), &stack)?;
                let mut what = Vec::new();
                if g.min_size() != Some(min) || g.max_size() != Some(max) {
                    what.push(format!(
                        "size from {}-{} to {min}-{max}",
                        g.min_size().unwrap_or(0),
                        g.max_size().unwrap_or(0)
                    ));
                }
                let lt_ok = g.launch_template().is_some_and(|t| {
                    t.launch_template_name() == Some(run.names.launch_template(role).as_str())
                        && t.version() == Some("$Default")
                });
                if !lt_ok {
                    what.push(format!("launch template to {} ($Default)", run.names.launch_template(role)));
                }
                let have_subnets: BTreeSet<&str> =
                    g.vpc_zone_identifier().unwrap_or("").split(',').filter(|s| !s.is_empty()).collect();
                if have_subnets != net.subnets.iter().map(String::as_str).collect() {
                    what.push(format!("subnets to {}", net.subnets.join(", ")));
                }
                if g.health_check_type() != Some(health) {
                    what.push(format!("{health} health checks"));
                }
                // Reported by AWS; an endpoint that leaves it out (moto) cannot be compared.
                if g.default_instance_warmup().is_some_and(|w| w != spec.warmup_secs) {
                    what.push(format!("default instance warmup to {} s", spec.warmup_secs));
                }
                let have_tgs: BTreeSet<&str> = g.target_group_arns().iter().map(String::as_str).collect();
                let want_tgs: BTreeSet<&str> = tgs.iter().map(String::as_str).collect();
                let attach: Vec<String> = want_tgs.difference(&have_tgs).map(|s| s.to_string()).collect();
                let detach: Vec<String> = have_tgs.difference(&want_tgs).map(|s| s.to_string()).collect();
                if !attach.is_empty() || !detach.is_empty() {
                    what.push("target groups".into());
                }
                let have_tags: BTreeSet<(&str, &str, bool)> = g
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""), t.propagate_at_launch().unwrap_or(false)))
                    .collect();
                let want_tags = group_tags(&stack, &name, role);
                let tags_ok = want_tags
                    .iter()
                    .all(|t| have_tags.contains(&(t.key().unwrap_or(""), t.value().unwrap_or(""), true)));
                if !tags_ok {
                    what.push("tags (propagated to instances)".into());
                }
                let metrics_ok = role != "worker"
                    || WORKER_METRICS.iter().all(|m| g.enabled_metrics().iter().any(|e| e.metric() == Some(*m)));
                if !metrics_ok {
                    what.push("collect GroupInServiceInstances".into());
                }
                if run.update(Kind::AutoScalingGroup, &name, what) {
                    let desired = g.desired_capacity().unwrap_or(min).clamp(min, max);
                    asg.update_auto_scaling_group()
                        .auto_scaling_group_name(&name)
                        .launch_template(template)
                        .min_size(min)
                        .max_size(max)
                        .desired_capacity(desired)
                        .vpc_zone_identifier(&subnets)
                        .health_check_type(health)
                        .health_check_grace_period(HEALTH_GRACE_SECS)
                        .default_instance_warmup(spec.warmup_secs)
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("updating the group {name}"), e))?;
                    if !attach.is_empty() {
                        asg.attach_load_balancer_target_groups()
                            .auto_scaling_group_name(&name)
                            .set_target_group_arns(Some(attach))
                            .send()
                            .await
                            .map_err(|e| aws_error(format!("attaching {name} to its target group"), e))?;
                    }
                    if !detach.is_empty() {
                        asg.detach_load_balancer_target_groups()
                            .auto_scaling_group_name(&name)
                            .set_target_group_arns(Some(detach))
                            .send()
                            .await
                            .map_err(|e| aws_error(format!("detaching {name} from other target groups"), e))?;
                    }
                    if !tags_ok {
                        asg.create_or_update_tags()
                            .set_tags(Some(want_tags))
                            .send()
                            .await
                            .map_err(|e| aws_error(format!("tagging the group {name}"), e))?;
                    }
                    if !metrics_ok {
                        enable_metrics(run, &name).await?;
                    }
                    run.done(Kind::AutoScalingGroup, &name);
                }
            }
        }
        ensure_policy(run, spec, role, lb).await?;
    }
    Ok(())
}

async fn enable_metrics(run: &Run<'_>, name: &str) -> Result<(), ProvisionError> {
    run.c
        .asg
        .enable_metrics_collection()
        .auto_scaling_group_name(name)
        .granularity("1Minute")
        .set_metrics(Some(WORKER_METRICS.iter().map(|m| m.to_string()).collect()))
        .send()
        .await
        .map_err(|e| aws_error(format!("turning on group metrics for {name}"), e))?;
    Ok(())
}

async fn ensure_policy(
    run: &mut Run<'_>,
    spec: &StackSpec,
    role: &str,
    lb: &LoadBalancer,
) -> Result<(), ProvisionError> {
    let group = run.names.group(role);
    let name = run.names.policy(role);
    run.checking(Kind::ScalingPolicy, &name);
    let want = tracking(role, spec, &run.names, lb);
    let existing = if find_group(run, &group).await?.is_some() {
        group_policies(run, &group).await?.into_iter().find(|p| p.policy_name() == Some(name.as_str()))
    } else {
        None
    };
    let note = match role {
        "web" => format!("target tracking: {} ALB requests per instance per minute", spec.requests_per_target),
        _ => format!(
            "target tracking: {} unfinished jobs per in-service worker (metric math: {BACKLOG_METRIC} / GroupInServiceInstances; distinct jobs from the uploads table, never queue messages)",
            spec.backlog_per_worker
        ),
    };
    let go = match &existing {
        None => run.create(Kind::ScalingPolicy, &name, vec![note]),
        Some(p) => {
            let same = p.policy_type() == Some("TargetTrackingScaling")
                && p.enabled() != Some(false)
                && match (p.target_tracking_configuration(), &want) {
                    (Some(have), Some(want)) => fingerprint(have) == fingerprint(want),
                    _ => false,
                };
            let what = if same { Vec::new() } else { vec![note] };
            run.update(Kind::ScalingPolicy, &name, what)
        }
    };
    if !go {
        return Ok(());
    }
    let Some(config) = want else {
        return Err(ProvisionError::Invalid(format!(
            "the load balancer of {group} is still unknown after creating it; run `up` again"
        )));
    };
    run.c
        .asg
        .put_scaling_policy()
        .auto_scaling_group_name(&group)
        .policy_name(&name)
        .policy_type("TargetTrackingScaling")
        .target_tracking_configuration(config)
        .enabled(true)
        .send()
        .await
        .map_err(|e| aws_error(format!("attaching the scaling policy {name}"), e))?;
    run.done(Kind::ScalingPolicy, &name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names { stack: "t".into(), account: "123456789012".into(), partition: "aws".into(), region: "eu-west-1".into() }
    }

    #[test]
    fn user_data_fetches_checks_and_runs_the_role() {
        let web = user_data(&names(), "web", "abc123");
        assert!(web.starts_with("#!/bin/bash\n"));
        assert!(web.contains("s3://flipstack-t-123456789012-eu-west-1/release/flipstack"));
        assert!(web.contains("echo \"abc123  /opt/flipstack/flipstack.download\" | sha256sum --check"));
        assert!(web.contains("s3://flipstack-t-123456789012-eu-west-1/config/flipstack.env"));
        assert!(web.contains("EnvironmentFile=/etc/flipstack/flipstack.env"));
        assert!(web.contains("Environment=FLIPSTACK_LISTEN=0.0.0.0:8080\nExecStart=/usr/local/bin/flipstack serve\n"));
        assert!(web.contains("systemctl enable --now flipstack.service"));
        assert!(web.contains("dnf install -y -q libheif >/dev/null 2>&1 || echo"), "libheif is optional: {web}");
        let worker = user_data(&names(), "worker", "abc123");
        assert!(worker.contains("\nExecStart=/usr/local/bin/flipstack work\n"));
        assert!(!worker.contains("FLIPSTACK_LISTEN"));
    }

    #[test]
    fn the_worker_policy_divides_distinct_unfinished_jobs_by_in_service_workers() {
        let spec = StackSpec::new("t", flipstack_aws::AwsSettings { region: "eu-west-1".into(), endpoint: None });
        let t = tracking("worker", &spec, &names(), &LoadBalancer::default()).unwrap();
        let f = fingerprint(&t);
        assert!(f.contains("flipstack/QueueBacklog[Role=web]:Maximum"), "{f}");
        assert!(
            f.contains("AWS/AutoScaling/GroupInServiceInstances[AutoScalingGroupName=flipstack-t-worker]:Average"),
            "{f}"
        );
        assert!(!f.contains("AWS/SQS"), "queue message counts (duplicates included) never scale the group: {f}");
        assert!(f.contains("jobs_per_worker|jobs / workers||true"), "{f}");
        assert!(f.starts_with("target=4;"), "{f}");
        // The web policy needs the load balancer's label, unknown in a plan.
        assert!(tracking("web", &spec, &names(), &LoadBalancer::default()).is_none());
    }
}
