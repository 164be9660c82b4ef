//! The Application Load Balancer, its target group (health check `/readyz`:
//! it routes on readiness, and replaces nothing — see [`super::compute`])
//! and listeners: HTTP on 80, or with a certificate HTTPS on 443 and 80
//! redirecting to it.

use std::collections::BTreeSet;

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, Listener, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, Matcher, ProtocolEnum,
    RedirectActionConfig, RedirectActionStatusCodeEnum, Tag, TargetTypeEnum,
};

use super::clients::{aws_error, code_in};
use super::names::{ensure_ours, owner};
use super::network::{APP_PORT, Groups, Network};
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::STACK_TAG;

/// Readiness: an instance whose database does not answer gets no requests
/// until it does. (Liveness, `/livez`, is what replaces instances.)
pub const HEALTH_PATH: &str = "/readyz";
const TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";

#[derive(Debug, Clone, Default)]
pub struct LoadBalancer {
    pub arn: Option<String>,
    pub dns: Option<String>,
    pub target_group_arn: Option<String>,
}

impl LoadBalancer {
    /// `app/<lb>/<id>/targetgroup/<tg>/<id>`: what ALBRequestCountPerTarget
    /// is measured by.
    pub fn resource_label(&self) -> Option<String> {
        let lb = self.arn.as_deref()?.split_once(":loadbalancer/")?.1;
        let tg = self.target_group_arn.as_deref()?.rsplit_once(':')?.1;
        Some(format!("{lb}/{tg}"))
    }

    /// `app/<lb>/<id>`: the `LoadBalancer` dimension of its CloudWatch metrics.
    pub fn metric_dimension(&self) -> Option<String> {
        Some(self.arn.as_deref()?.split_once(":loadbalancer/")?.1.to_owned())
    }
}

fn tag(stack: &str) -> Tag {
    Tag::builder().key(STACK_TAG).value(stack).build()
}

pub async fn elb_tags(run: &Run<'_>, arn: &str) -> Result<Vec<(String, String)>, ProvisionError> {
    let out = run
        .c
        .elb
        .describe_tags()
        .resource_arns(arn)
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the tags of {arn}"), e))?;
    Ok(out
        .tag_descriptions()
        .iter()
        .flat_map(|d| d.tags())
        .map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned()))
        .collect())
}

async fn check_ours(run: &Run<'_>, kind: Kind, name: &str, arn: &str) -> Result<(), ProvisionError> {
    let tags = elb_tags(run, arn).await?;
    let stack = run.stack();
    ensure_ours(kind, name, owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), stack), stack)
}

pub async fn find_target_group(
    run: &Run<'_>,
    name: &str,
) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup>, ProvisionError> {
    match run.c.elb.describe_target_groups().names(name).send().await {
        Ok(out) => Ok(out.target_groups().first().cloned()),
        Err(e) if code_in(&e, &["TargetGroupNotFound"]) => Ok(None),
        Err(e) => Err(aws_error(format!("looking for the target group {name}"), e)),
    }
}

pub async fn find_load_balancer(
    run: &Run<'_>,
    name: &str,
) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>, ProvisionError> {
    match run.c.elb.describe_load_balancers().names(name).send().await {
        Ok(out) => Ok(out.load_balancers().first().cloned()),
        Err(e) if code_in(&e, &["LoadBalancerNotFound"]) => Ok(None),
        Err(e) => Err(aws_error(format!("looking for the load balancer {name}"), e)),
    }
}

pub async fn ensure(
    run: &mut Run<'_>,
    spec: &StackSpec,
    net: &Network,
    groups: &Groups,
) -> Result<LoadBalancer, ProvisionError> {
    let stack = run.stack().to_owned();
    let elb = run.c.elb.clone();
    let mut out = LoadBalancer::default();

    let tg_name = run.names.target_group();
    run.checking(Kind::TargetGroup, &tg_name);
    match find_target_group(run, &tg_name).await? {
        None => {
            let notes = vec![format!("HTTP {APP_PORT} on the web instances, routed on readiness ({HEALTH_PATH})")];
            if run.create(Kind::TargetGroup, &tg_name, notes) {
                let created = elb
                    .create_target_group()
                    .name(&tg_name)
                    .protocol(ProtocolEnum::Http)
                    .port(APP_PORT)
                    .vpc_id(&net.vpc_id)
                    .target_type(TargetTypeEnum::Instance)
                    .health_check_protocol(ProtocolEnum::Http)
                    .health_check_path(HEALTH_PATH)
                    .health_check_interval_seconds(15)
                    .healthy_threshold_count(2)
                    .unhealthy_threshold_count(3)
                    .matcher(Matcher::builder().http_code("200").build())
                    .tags(tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the target group {tg_name}"), e))?;
                out.target_group_arn =
                    created.target_groups().first().and_then(|t| t.target_group_arn()).map(String::from);
                run.done(Kind::TargetGroup, &tg_name);
            }
        }
        Some(tg) => {
            let arn = tg.target_group_arn().unwrap_or_default().to_owned();
            check_ours(run, Kind::TargetGroup, &tg_name, &arn).await?;
            if tg.vpc_id() != Some(net.vpc_id.as_str()) || tg.port() != Some(APP_PORT) {
                return Err(ProvisionError::Conflict(format!(
                    "the target group {tg_name} is in another VPC or on another port than {APP_PORT}; delete it (after the load balancer's listeners stop using it) and run `up` again"
                )));
            }
            let mut what = Vec::new();
            if tg.health_check_path() != Some(HEALTH_PATH) {
                what.push(format!("health check path to {HEALTH_PATH}"));
            }
            if tg.matcher().and_then(|m| m.http_code()) != Some("200") {
                what.push("healthy only on 200".into());
            }
            if run.update(Kind::TargetGroup, &tg_name, what) {
                elb.modify_target_group()
                    .target_group_arn(&arn)
                    .health_check_protocol(ProtocolEnum::Http)
                    .health_check_path(HEALTH_PATH)
                    .matcher(Matcher::builder().http_code("200").build())
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("updating the target group {tg_name}"), e))?;
                run.done(Kind::TargetGroup, &tg_name);
            }
            out.target_group_arn = Some(arn);
        }
    }

    let lb_name = run.names.load_balancer();
    let sg = groups.id("lb");
    run.checking(Kind::LoadBalancer, &lb_name);
    match find_load_balancer(run, &lb_name).await? {
        None => {
            let notes = vec![format!(
                "internet-facing, in {} zones, security group {}",
                net.subnets.len(),
                run.names.security_group("lb")
            )];
            if run.create(Kind::LoadBalancer, &lb_name, notes) {
                let created = elb
                    .create_load_balancer()
                    .name(&lb_name)
                    .r#type(LoadBalancerTypeEnum::Application)
                    .scheme(LoadBalancerSchemeEnum::InternetFacing)
                    .set_subnets(Some(net.subnets.clone()))
                    .security_groups(&sg)
                    .tags(tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the load balancer {lb_name}"), e))?;
                let lb = created.load_balancers().first();
                out.arn = lb.and_then(|l| l.load_balancer_arn()).map(String::from);
                out.dns = lb.and_then(|l| l.dns_name()).map(String::from);
                wait_active(run, &lb_name).await?;
                run.done(Kind::LoadBalancer, &lb_name);
            }
        }
        Some(lb) => {
            let arn = lb.load_balancer_arn().unwrap_or_default().to_owned();
            check_ours(run, Kind::LoadBalancer, &lb_name, &arn).await?;
            if lb.scheme() != Some(&LoadBalancerSchemeEnum::InternetFacing)
                || lb.r#type() != Some(&LoadBalancerTypeEnum::Application)
            {
                return Err(ProvisionError::Conflict(format!(
                    "the load balancer {lb_name} is not an internet-facing application load balancer; delete it and run `up` again"
                )));
            }
            let have_sgs: BTreeSet<&str> = lb.security_groups().iter().map(String::as_str).collect();
            let have_subnets: BTreeSet<&str> = lb.availability_zones().iter().filter_map(|z| z.subnet_id()).collect();
            let want_subnets: BTreeSet<&str> = net.subnets.iter().map(String::as_str).collect();
            let mut what = Vec::new();
            let sgs_differ = have_sgs != BTreeSet::from([sg.as_str()]);
            if sgs_differ {
                what.push(format!("security groups to {}", run.names.security_group("lb")));
            }
            let subnets_differ = have_subnets != want_subnets;
            if subnets_differ {
                what.push(format!("subnets to {}", net.subnets.join(", ")));
            }
            if run.update(Kind::LoadBalancer, &lb_name, what) {
                if sgs_differ {
                    elb.set_security_groups()
                        .load_balancer_arn(&arn)
                        .security_groups(&sg)
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("setting the security groups of {lb_name}"), e))?;
                }
                if subnets_differ {
                    elb.set_subnets()
                        .load_balancer_arn(&arn)
                        .set_subnets(Some(net.subnets.clone()))
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("setting the subnets of {lb_name}"), e))?;
                }
                run.done(Kind::LoadBalancer, &lb_name);
            }
            if run.apply && lb.state().and_then(|s| s.code()).map(|c| c.as_str()) != Some("active") {
                wait_active(run, &lb_name).await?;
            }
            out.arn = Some(arn);
            out.dns = lb.dns_name().map(String::from);
        }
    }

    ensure_listeners(run, spec, &out).await?;
    Ok(out)
}

async fn wait_active(run: &Run<'_>, name: &str) -> Result<(), ProvisionError> {
    run.wait_for(Kind::LoadBalancer, name, "to become active", || async {
        let lb = find_load_balancer(run, name).await?;
        match lb.as_ref().and_then(|l| l.state()).and_then(|s| s.code()).map(|c| c.as_str()) {
            Some("active") => Ok(Some(())),
            Some("failed") => Err(ProvisionError::Invalid(format!(
                "the load balancer {name} failed to start; delete it and run `up` again"
            ))),
            _ => Ok(None),
        }
    })
    .await
}

/// What a listener on a port should do.
#[derive(Debug, Clone, PartialEq)]
enum Wanted {
    Forward,
    RedirectToHttps,
    HttpsForward(String),
}

fn wanted_listeners(spec: &StackSpec) -> Vec<(i32, Wanted)> {
    match &spec.certificate_arn {
        None => vec![(80, Wanted::Forward)],
        Some(cert) => vec![(80, Wanted::RedirectToHttps), (443, Wanted::HttpsForward(cert.clone()))],
    }
}

fn forward(tg: &str) -> Action {
    Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(tg).build()
}

fn redirect() -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Redirect)
        .redirect_config(
            RedirectActionConfig::builder()
                .protocol("HTTPS")
                .port("443")
                .status_code(RedirectActionStatusCodeEnum::Http301)
                .build(),
        )
        .build()
}

fn forwards_to(l: &Listener, tg: &str) -> bool {
    l.default_actions().iter().any(|a| {
        a.r#type() == Some(&ActionTypeEnum::Forward)
            && (a.target_group_arn() == Some(tg)
                || a.forward_config().is_some_and(|f| {
                    f.target_groups().len() == 1 && f.target_groups()[0].target_group_arn() == Some(tg)
                }))
    })
}

fn listener_matches(l: &Listener, want: &Wanted, tg: &str) -> Vec<String> {
    let mut what = Vec::new();
    match want {
        Wanted::Forward => {
            if l.protocol() != Some(&ProtocolEnum::Http) || !forwards_to(l, tg) {
                what.push("HTTP, forwarding to the web target group".into());
            }
        }
        Wanted::RedirectToHttps => {
            let ok = l.protocol() == Some(&ProtocolEnum::Http)
                && l.default_actions().iter().any(|a| {
                    a.r#type() == Some(&ActionTypeEnum::Redirect)
                        && a.redirect_config().is_some_and(|r| r.protocol() == Some("HTTPS") && r.port() == Some("443"))
                });
            if !ok {
                what.push("HTTP, redirecting to HTTPS".into());
            }
        }
        Wanted::HttpsForward(cert) => {
            if l.protocol() != Some(&ProtocolEnum::Https) || !forwards_to(l, tg) {
                what.push("HTTPS, forwarding to the web target group".into());
            }
            if !l.certificates().iter().any(|c| c.certificate_arn() == Some(cert.as_str())) {
                what.push(format!("certificate {cert}"));
            }
        }
    }
    what
}

async fn ensure_listeners(run: &mut Run<'_>, spec: &StackSpec, lb: &LoadBalancer) -> Result<(), ProvisionError> {
    let stack = run.stack().to_owned();
    let elb = run.c.elb.clone();
    let lb_name = run.names.load_balancer();
    let tg = lb.target_group_arn.clone().unwrap_or_else(|| Run::pending("target group"));
    let existing: Vec<Listener> = match &lb.arn {
        Some(arn) => elb
            .describe_listeners()
            .load_balancer_arn(arn)
            .send()
            .await
            .map_err(|e| aws_error(format!("listing the listeners of {lb_name}"), e))?
            .listeners()
            .to_vec(),
        None => Vec::new(),
    };
    let wanted = wanted_listeners(spec);
    for (port, want) in &wanted {
        let name = format!("{lb_name}:{port}");
        run.checking(Kind::Listener, &name);
        let (protocol, action) = match want {
            Wanted::Forward => (ProtocolEnum::Http, forward(&tg)),
            Wanted::RedirectToHttps => (ProtocolEnum::Http, redirect()),
            Wanted::HttpsForward(_) => (ProtocolEnum::Https, forward(&tg)),
        };
        let cert = match want {
            Wanted::HttpsForward(c) => Some(Certificate::builder().certificate_arn(c).build()),
            _ => None,
        };
        match existing.iter().find(|l| l.port() == Some(*port)) {
            None => {
                let note = match want {
                    Wanted::Forward => "HTTP → web target group",
                    Wanted::RedirectToHttps => "HTTP → redirect to HTTPS",
                    Wanted::HttpsForward(_) => "HTTPS (the certificate) → web target group",
                };
                if run.create(Kind::Listener, &name, vec![note.into()]) {
                    let arn = lb.arn.as_deref().unwrap_or_default();
                    let mut req = elb
                        .create_listener()
                        .load_balancer_arn(arn)
                        .port(*port)
                        .protocol(protocol)
                        .default_actions(action)
                        .tags(tag(&stack));
                    if let Some(c) = cert {
                        req = req.certificates(c).ssl_policy(TLS_POLICY);
                    }
                    req.send().await.map_err(|e| aws_error(format!("creating the listener {name}"), e))?;
                    run.done(Kind::Listener, &name);
                }
            }
            Some(l) => {
                let what = listener_matches(l, want, &tg);
                if run.update(Kind::Listener, &name, what) {
                    let mut req = elb
                        .modify_listener()
                        .listener_arn(l.listener_arn().unwrap_or_default())
                        .port(*port)
                        .protocol(protocol)
                        .default_actions(action);
                    if let Some(c) = cert {
                        req = req.certificates(c).ssl_policy(TLS_POLICY);
                    }
                    req.send().await.map_err(|e| aws_error(format!("updating the listener {name}"), e))?;
                    run.done(Kind::Listener, &name);
                }
            }
        }
    }
    // A listener on another port (443 after the certificate was dropped, or
    // one added by hand) is removed: the security group no longer opens it.
    for l in &existing {
        let port = l.port().unwrap_or(0);
        if wanted.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let name = format!("{lb_name}:{port}");
        if run.update(Kind::Listener, &name, vec!["remove: not part of the stack".into()]) {
            elb.delete_listener()
                .listener_arn(l.listener_arn().unwrap_or_default())
                .send()
                .await
                .map_err(|e| aws_error(format!("removing the listener {name}"), e))?;
            run.done(Kind::Listener, &name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_label_from_arns() {
        let lb = LoadBalancer {
            arn: Some("arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/flipstack-a/50dc6c495c0c9188".into()),
            dns: None,
            target_group_arn: Some(
                "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/flipstack-a-web/73e2d6bc24d8a067".into(),
            ),
        };
        assert_eq!(
            lb.resource_label().as_deref(),
            Some("app/flipstack-a/50dc6c495c0c9188/targetgroup/flipstack-a-web/73e2d6bc24d8a067")
        );
    }
}
