//! Where the stack lives (a VPC and one subnet per availability zone) and its
//! security groups, whose ingress rules are kept exactly as listed in
//! [`desired_rules`]: a rule somebody added by hand is revoked by `up`.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, ResourceType, SecurityGroup, Tag, TagSpecification, UserIdGroupPair,
};

use super::clients::aws_error;
use super::names::{SG_ROLES, ensure_ours, owner};
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::{ROLE_TAG, STACK_TAG};

/// The port the web servers listen on behind the load balancer.
pub const APP_PORT: i32 = 8080;
pub const DB_PORT: i32 = 3306;
pub const CACHE_PORT: i32 = 11211;
const ANYWHERE: &str = "0.0.0.0/0";

#[derive(Debug, Clone)]
pub struct Network {
    pub vpc_id: String,
    /// One subnet per availability zone, in zone order.
    pub subnets: Vec<String>,
}

pub async fn locate(run: &Run<'_>, spec: &StackSpec) -> Result<Network, ProvisionError> {
    let ec2 = &run.c.ec2;
    let vpc_id = match &spec.vpc_id {
        Some(id) => id.clone(),
        None => {
            let out = ec2
                .describe_vpcs()
                .filters(filter("isDefault", "true"))
                .send()
                .await
                .map_err(|e| aws_error("finding the default VPC", e))?;
            match out.vpcs().first().and_then(|v| v.vpc_id()) {
                Some(id) => id.to_owned(),
                None => {
                    return Err(ProvisionError::Invalid(format!(
                        "region {} has no default VPC; pass --vpc-id with a VPC whose subnets reach the internet",
                        run.names.region
                    )));
                }
            }
        }
    };
    let out = ec2
        .describe_subnets()
        .filters(filter("vpc-id", &vpc_id))
        .send()
        .await
        .map_err(|e| aws_error(format!("listing the subnets of {vpc_id}"), e))?;
    // One subnet per zone; in a zone, default and public subnets first, then
    // by id, so that every run picks the same ones.
    let mut by_zone: BTreeMap<String, (bool, bool, String)> = BTreeMap::new();
    for s in out.subnets() {
        let (Some(zone), Some(id)) = (s.availability_zone(), s.subnet_id()) else {
            continue;
        };
        let key = (!s.default_for_az().unwrap_or(false), !s.map_public_ip_on_launch().unwrap_or(false), id.to_owned());
        by_zone
            .entry(zone.to_owned())
            .and_modify(|k| {
                if key < *k {
                    *k = key.clone()
                }
            })
            .or_insert(key);
    }
    let subnets: Vec<String> = by_zone.into_values().map(|(_, _, id)| id).collect();
    if subnets.len() < 2 {
        return Err(ProvisionError::Invalid(format!(
            "VPC {vpc_id} has subnets in {} availability zone(s); the load balancer and the databases need two or more. Add a subnet in another zone, or pass another --vpc-id",
            subnets.len()
        )));
    }
    Ok(Network { vpc_id, subnets })
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub fn stack_filter(stack: &str) -> Filter {
    filter(&format!("tag:{STACK_TAG}"), stack)
}

pub fn tags(stack: &str, role: Option<&str>) -> Vec<Tag> {
    let mut t = vec![Tag::builder().key(STACK_TAG).value(stack).build()];
    if let Some(r) = role {
        t.push(Tag::builder().key(ROLE_TAG).value(r).build());
    }
    t
}

/// Where traffic to a rule may come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    /// Another of the stack's groups, by role.
    Group(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub port: i32,
    pub source: Source,
    pub why: &'static str,
}

/// Least privilege: the load balancer alone is open to the internet.
pub fn desired_rules(spec: &StackSpec) -> BTreeMap<&'static str, Vec<Rule>> {
    let rule = |port, source, why| Rule { port, source, why };
    let mut lb = vec![rule(80, Source::Cidr(ANYWHERE.into()), "HTTP from anywhere")];
    if spec.certificate_arn.is_some() {
        lb.push(rule(443, Source::Cidr(ANYWHERE.into()), "HTTPS from anywhere"));
    }
    let mut web = vec![rule(APP_PORT, Source::Group("lb"), "app port from the load balancer")];
    let mut worker = Vec::new();
    if let Some(cidr) = &spec.ssh_from {
        web.push(rule(22, Source::Cidr(cidr.clone()), "SSH, asked for with --ssh-from"));
        worker.push(rule(22, Source::Cidr(cidr.clone()), "SSH, asked for with --ssh-from"));
    }
    BTreeMap::from([
        ("lb", lb),
        ("web", web),
        ("worker", worker),
        (
            "db",
            vec![
                rule(DB_PORT, Source::Group("web"), "MariaDB from the web servers"),
                rule(DB_PORT, Source::Group("worker"), "MariaDB from the workers"),
            ],
        ),
        (
            "cache",
            vec![
                rule(CACHE_PORT, Source::Group("web"), "memcached from the web servers"),
                // A worker invalidates the owner's gallery after a flip.
                rule(CACHE_PORT, Source::Group("worker"), "memcached from the workers"),
            ],
        ),
    ])
}

/// The stack's security groups: role → group id.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    pub ids: BTreeMap<&'static str, String>,
}

impl Groups {
    /// The group's id, or (in a plan, before it exists) a placeholder.
    pub fn id(&self, role: &str) -> String {
        self.ids.get(role).cloned().unwrap_or_else(|| Run::pending(&format!("{role} security group")))
    }
    fn role_of(&self, id: &str) -> Option<&'static str> {
        self.ids.iter().find(|(_, v)| *v == id).map(|(k, _)| *k)
    }
}

/// One ingress permission as (protocol, from port, to port, source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Perm {
    proto: String,
    from: i32,
    to: i32,
    /// `cidr:…`, `cidr6:…`, `group:<id>` or `prefix:…`.
    source: String,
}

fn flatten(p: &IpPermission) -> Vec<Perm> {
    let proto = p.ip_protocol().unwrap_or("-1").to_owned();
    let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
    let mk = |source: String| Perm { proto: proto.clone(), from, to, source };
    let mut out = Vec::new();
    out.extend(p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(|c| mk(format!("cidr:{c}"))));
    out.extend(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(|c| mk(format!("cidr6:{c}"))));
    out.extend(p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(|g| mk(format!("group:{g}"))));
    out.extend(p.prefix_list_ids().iter().filter_map(|l| l.prefix_list_id()).map(|l| mk(format!("prefix:{l}"))));
    out
}

fn perm_of(rule: &Rule, groups: &Groups) -> Perm {
    Perm {
        proto: "tcp".into(),
        from: rule.port,
        to: rule.port,
        source: match &rule.source {
            Source::Cidr(c) => format!("cidr:{c}"),
            Source::Group(role) => format!("group:{}", groups.id(role)),
        },
    }
}

fn describe_perm(p: &Perm, groups: &Groups, run: &Run<'_>) -> String {
    let ports = if p.proto == "-1" {
        "all traffic".to_owned()
    } else if p.from == p.to {
        format!("{} {}", p.proto, p.from)
    } else {
        format!("{} {}-{}", p.proto, p.from, p.to)
    };
    let from = match p.source.split_once(':') {
        Some(("group", id)) => match groups.role_of(id) {
            Some(role) => run.names.security_group(role),
            None => id.to_owned(),
        },
        Some((_, v)) => v.to_owned(),
        None => p.source.clone(),
    };
    format!("{ports} from {from}")
}

fn to_ip_permission(p: &Perm, why: Option<&str>) -> IpPermission {
    let b = IpPermission::builder().ip_protocol(&p.proto).from_port(p.from).to_port(p.to);
    match p.source.split_once(':') {
        Some(("cidr", c)) => {
            b.ip_ranges(IpRange::builder().cidr_ip(c).set_description(why.map(String::from)).build()).build()
        }
        Some(("cidr6", c)) => b.ipv6_ranges(aws_sdk_ec2::types::Ipv6Range::builder().cidr_ipv6(c).build()).build(),
        Some(("prefix", l)) => {
            b.prefix_list_ids(aws_sdk_ec2::types::PrefixListId::builder().prefix_list_id(l).build()).build()
        }
        Some((_, id)) => b
            .user_id_group_pairs(UserIdGroupPair::builder().group_id(id).set_description(why.map(String::from)).build())
            .build(),
        None => b.build(),
    }
}

/// The security groups carrying the stack's tag, found by name in the VPC.
async fn find_group(run: &Run<'_>, vpc_id: &str, name: &str) -> Result<Option<SecurityGroup>, ProvisionError> {
    let out = run
        .c
        .ec2
        .describe_security_groups()
        .filters(filter("vpc-id", vpc_id))
        .filters(filter("group-name", name))
        .send()
        .await
        .map_err(|e| aws_error(format!("looking for the security group {name}"), e))?;
    Ok(out.security_groups().first().cloned())
}

pub async fn ensure_security_groups(
    run: &mut Run<'_>,
    spec: &StackSpec,
    net: &Network,
) -> Result<Groups, ProvisionError> {
    let stack = run.stack().to_owned();
    let wanted = desired_rules(spec);
    let mut groups = Groups::default();
    let mut existing: BTreeMap<&'static str, SecurityGroup> = BTreeMap::new();
    for role in SG_ROLES {
        let name = run.names.security_group(role);
        run.checking(Kind::SecurityGroup, &name);
        if let Some(sg) = find_group(run, &net.vpc_id, &name).await? {
            let tags = sg.tags().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")));
            ensure_ours(Kind::SecurityGroup, &name, owner(tags, &stack), &stack)?;
            groups.ids.insert(role, sg.group_id().unwrap_or_default().to_owned());
            existing.insert(role, sg);
        }
    }

    // Create the missing groups first: rules refer to each other's ids.
    let mut created = BTreeSet::new();
    for role in SG_ROLES {
        if existing.contains_key(role) {
            continue;
        }
        let name = run.names.security_group(role);
        let notes = wanted[role]
            .iter()
            .map(|r| format!("allow {}", describe_perm(&perm_of(r, &groups), &groups, run)))
            .collect::<Vec<_>>();
        let notes = if notes.is_empty() { vec!["no inbound traffic".to_owned()] } else { notes };
        if run.create(Kind::SecurityGroup, &name, notes) {
            let out = run
                .c
                .ec2
                .create_security_group()
                .group_name(&name)
                .description(format!("flipstack {stack}: {role}"))
                .vpc_id(&net.vpc_id)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::SecurityGroup)
                        .set_tags(Some(tags(&stack, Some(role))))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| aws_error(format!("creating the security group {name}"), e))?;
            groups.ids.insert(role, out.group_id().unwrap_or_default().to_owned());
        }
        created.insert(role);
    }

    for role in SG_ROLES {
        let name = run.names.security_group(role);
        let want: BTreeMap<Perm, &'static str> = wanted[role].iter().map(|r| (perm_of(r, &groups), r.why)).collect();
        let have: BTreeSet<Perm> =
            existing.get(role).map(|sg| sg.ip_permissions().iter().flat_map(flatten).collect()).unwrap_or_default();
        let add: Vec<(&Perm, &str)> = want.iter().filter(|(p, _)| !have.contains(p)).map(|(p, w)| (p, *w)).collect();
        let remove: Vec<&Perm> = have.iter().filter(|p| !want.contains_key(p)).collect();
        if !created.contains(role) {
            let mut what: Vec<String> =
                add.iter().map(|(p, _)| format!("allow {}", describe_perm(p, &groups, run))).collect();
            what.extend(remove.iter().map(|p| format!("revoke {}", describe_perm(p, &groups, run))));
            if !run.update(Kind::SecurityGroup, &name, what) {
                continue;
            }
        } else if !run.apply {
            continue;
        }
        let id = groups.id(role);
        if !add.is_empty() {
            run.c
                .ec2
                .authorize_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(add.iter().map(|(p, why)| to_ip_permission(p, Some(why))).collect()))
                .send()
                .await
                .map_err(|e| aws_error(format!("opening the rules of {name}"), e))?;
        }
        if !remove.is_empty() {
            run.c
                .ec2
                .revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(remove.iter().map(|p| to_ip_permission(p, None)).collect()))
                .send()
                .await
                .map_err(|e| aws_error(format!("revoking the extra rules of {name}"), e))?;
        }
        run.done(Kind::SecurityGroup, &name);
    }
    Ok(groups)
}
