//! Every name a stack uses, in one place, and the tag test that says whether
//! a resource found under such a name is the stack's.

use super::{Kind, ProvisionError};
use crate::fleet::{STACK_TAG, group_name};

/// Longest stack name: the load balancer's target group
/// (`flipstack-<stack>-web`) must fit AWS's 32-character limit.
pub const MAX_STACK_NAME: usize = 16;

/// Lower-case letters, digits and single hyphens, starting with a letter: the
/// intersection of what RDS, ElastiCache, ELB, S3 and IAM accept in names.
pub fn validate_stack_name(stack: &str) -> Result<(), ProvisionError> {
    let ok = !stack.is_empty()
        && stack.len() <= MAX_STACK_NAME
        && stack.starts_with(|c: char| c.is_ascii_lowercase())
        && !stack.ends_with('-')
        && !stack.contains("--")
        && stack.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "stack name {stack:?} is not usable: use 1 to {MAX_STACK_NAME} lower-case letters, digits and single hyphens, starting with a letter (e.g. prod, photos-eu)"
        )))
    }
}

/// The security groups of a stack, by role.
pub const SG_ROLES: [&str; 5] = ["lb", "web", "worker", "db", "cache"];

#[derive(Debug, Clone)]
pub struct Names {
    pub stack: String,
    pub account: String,
    pub partition: String,
    pub region: String,
}

impl Names {
    fn of(&self, suffix: &str) -> String {
        format!("flipstack-{}-{suffix}", self.stack)
    }
    pub fn security_group(&self, role: &str) -> String {
        self.of(role)
    }
    /// Bucket names are global: the account and region make the name ours.
    pub fn bucket(&self) -> String {
        format!("flipstack-{}-{}-{}", self.stack, self.account, self.region)
    }
    /// `flipstack-<stack>-alarm-<what>` (with an empty `what`: the prefix of them all).
    pub fn alarm(&self, what: &str) -> String {
        format!("{}{what}", self.of("alarm-"))
    }
    pub fn queue(&self) -> String {
        self.of("jobs")
    }
    pub fn dead_letter_queue(&self) -> String {
        self.of("jobs-dlq")
    }
    /// An Auto Scaling group's ARN, any group id (policies cannot know it beforehand).
    pub fn group_arn(&self, role: &str) -> String {
        format!(
            "arn:{}:autoscaling:{}:{}:autoScalingGroup:*:autoScalingGroupName/{}",
            self.partition,
            self.region,
            self.account,
            self.group(role)
        )
    }

    pub fn queue_arn(&self, name: &str) -> String {
        format!("arn:{}:sqs:{}:{}:{name}", self.partition, self.region, self.account)
    }
    pub fn role(&self) -> String {
        self.of("instance")
    }
    pub fn instance_profile(&self) -> String {
        self.of("instance")
    }
    pub fn role_policy(&self) -> &'static str {
        "flipstack-app"
    }
    pub fn db_subnet_group(&self) -> String {
        self.of("db")
    }
    pub fn database(&self) -> String {
        self.of("db")
    }
    pub fn replica(&self) -> String {
        self.of("db-replica")
    }
    pub fn cache_subnet_group(&self) -> String {
        self.of("cache")
    }
    pub fn cache_cluster(&self) -> String {
        self.of("cache")
    }
    pub fn load_balancer(&self) -> String {
        format!("flipstack-{}", self.stack)
    }
    pub fn target_group(&self) -> String {
        self.of("web")
    }
    pub fn launch_template(&self, role: &str) -> String {
        group_name(&self.stack, role)
    }
    pub fn group(&self, role: &str) -> String {
        group_name(&self.stack, role)
    }
    pub fn policy(&self, role: &str) -> String {
        match role {
            "web" => self.of("web-requests"),
            _ => self.of("worker-backlog"),
        }
    }
    pub fn release_key(&self) -> &'static str {
        "release/flipstack"
    }
    pub fn config_key(&self) -> &'static str {
        "config/flipstack.env"
    }
    /// Blobs live under their own prefix: the instances may write there, and
    /// only read the release and the configuration.
    pub fn blob_prefix(&self) -> &'static str {
        "blobs"
    }
}

/// Whose a resource is, by its `flipstack:stack` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Stack,
    Other(String),
    Untagged,
}

pub fn owner<'t>(tags: impl IntoIterator<Item = (&'t str, &'t str)>, stack: &str) -> Owner {
    match tags.into_iter().find(|(k, _)| *k == STACK_TAG) {
        Some((_, v)) if v == stack => Owner::Stack,
        Some((_, v)) => Owner::Other(v.to_owned()),
        None => Owner::Untagged,
    }
}

impl Owner {
    pub fn describe(&self) -> String {
        match self {
            Owner::Stack => "is this stack's".into(),
            Owner::Other(s) => format!("belongs to stack {s:?}"),
            Owner::Untagged => format!("carries no {STACK_TAG} tag"),
        }
    }
}

/// The error for a name the stack needs that something else holds.
pub fn conflict(kind: Kind, name: &str, owner: &Owner, stack: &str) -> ProvisionError {
    ProvisionError::Conflict(format!(
        "the {kind} {name} exists but {}, so flipstack will not touch it. Choose another stack name than {stack:?}, or rename or remove that {kind} yourself",
        owner.describe()
    ))
}

/// Fails unless the resource is the stack's.
pub fn ensure_ours(kind: Kind, name: &str, owner: Owner, stack: &str) -> Result<(), ProvisionError> {
    match owner {
        Owner::Stack => Ok(()),
        other => Err(conflict(kind, name, &other, stack)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names() {
        for good in ["prod", "a", "photos-eu", "s1-2", "abcdefghijklmnop"] {
            assert!(validate_stack_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "1abc", "a--b", "abc-", "a_b", "abcdefghijklmnopq", "a.b"] {
            assert!(validate_stack_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_aws_limits() {
        let n = Names {
            stack: "abcdefghijklmnop".into(),
            account: "123456789012".into(),
            partition: "aws".into(),
            region: "ap-southeast-2".into(),
        };
        assert!(n.load_balancer().len() <= 32);
        assert!(n.target_group().len() <= 32);
        assert!(n.cache_cluster().len() <= 40);
        assert!(n.bucket().len() <= 63);
        assert!(n.replica().len() <= 63);
        assert_eq!(n.group("web"), "flipstack-abcdefghijklmnop-web");
    }

    #[test]
    fn ownership_by_tag() {
        assert_eq!(owner([(STACK_TAG, "a")], "a"), Owner::Stack);
        assert_eq!(owner([(STACK_TAG, "b")], "a"), Owner::Other("b".into()));
        assert_eq!(owner([("Name", "a")], "a"), Owner::Untagged);
    }
}
