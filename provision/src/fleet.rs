//! The fleet as AWS sees it: the stack's Auto Scaling groups, found by tag.
//! Shared by `flipstack provision status` and the console's fleet panel.

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::types::Filter;
use flipstack_aws::{AwsSettings, sdk_config};
use serde::{Deserialize, Serialize};

/// Every resource a stack owns carries this tag, valued with the stack's name.
pub const STACK_TAG: &str = "flipstack:stack";
/// What a resource is for within its stack (`web`, `worker`, …).
pub const ROLE_TAG: &str = "flipstack:role";

/// The name of a stack's group for a role: `flipstack-<stack>-<role>`.
pub fn group_name(stack: &str, role: &str) -> String {
    format!("flipstack-{stack}-{role}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// `web` or `worker` (from the role tag).
    pub role: String,
    pub desired: u32,
    pub in_service: u32,
    pub pending: u32,
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the Auto Scaling groups: {0}")]
pub struct FleetError(pub String);

/// The Auto Scaling groups tagged with this stack, web first.
pub async fn fleet(aws: &AwsSettings, stack: &str) -> Result<Vec<GroupStatus>, FleetError> {
    let client = Client::new(&sdk_config(aws).await);
    let mut groups = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = client
            .describe_auto_scaling_groups()
            .filters(Filter::builder().name(format!("tag:{STACK_TAG}")).values(stack).build())
            .set_next_token(next.clone())
            .send()
            .await
            .map_err(|e| FleetError(aws_sdk_autoscaling::error::DisplayErrorContext(e).to_string()))?;
        for g in out.auto_scaling_groups() {
            let role =
                g.tags().iter().find(|t| t.key() == Some(ROLE_TAG)).and_then(|t| t.value()).unwrap_or("").to_owned();
            let count = |state: &str| {
                g.instances().iter().filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some(state)).count() as u32
            };
            groups.push(GroupStatus {
                name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
                role,
                desired: g.desired_capacity().unwrap_or(0).max(0) as u32,
                in_service: count("InService"),
                pending: count("Pending"),
                min: g.min_size().unwrap_or(0).max(0) as u32,
                max: g.max_size().unwrap_or(0).max(0) as u32,
            });
        }
        next = out.next_token().map(String::from);
        if next.is_none() {
            break;
        }
    }
    groups.sort_by(|a, b| (a.role != "web", &a.name).cmp(&(b.role != "web", &b.name)));
    Ok(groups)
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// An Auto Scaling call failed: `detail` is what AWS said, `source` the SDK's error.
    #[error("setting the desired capacity: {detail}")]
    Aws { detail: String, source: Box<dyn std::error::Error + Send + Sync + 'static> },
    /// No such group, or a count outside its bounds.
    #[error("setting the desired capacity: {0}")]
    Refused(String),
}

impl ScaleError {
    fn aws<E, R>(e: aws_sdk_autoscaling::error::SdkError<E, R>) -> ScaleError
    where
        aws_sdk_autoscaling::error::SdkError<E, R>: std::error::Error + Send + Sync + 'static,
    {
        let detail = aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string();
        ScaleError::Aws { detail, source: Box::new(e) }
    }
}

/// Sets a group's desired capacity, which must lie within its min and max
/// (AWS refuses it otherwise; this says so first, with the bounds).
pub async fn set_desired(aws: &AwsSettings, group: &str, desired: u32) -> Result<(), ScaleError> {
    let client = Client::new(&sdk_config(aws).await);
    let out =
        client.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await.map_err(ScaleError::aws)?;
    let g = out
        .auto_scaling_groups()
        .first()
        .ok_or_else(|| ScaleError::Refused(format!("there is no Auto Scaling group {group}")))?;
    let (min, max) = (g.min_size().unwrap_or(0).max(0) as u32, g.max_size().unwrap_or(0).max(0) as u32);
    if desired < min || desired > max {
        return Err(ScaleError::Refused(format!("{group} takes {min} to {max} instances, not {desired}")));
    }
    client
        .set_desired_capacity()
        .auto_scaling_group_name(group)
        .desired_capacity(desired as i32)
        .honor_cooldown(false)
        .send()
        .await
        .map_err(ScaleError::aws)?;
    Ok(())
}
