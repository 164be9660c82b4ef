//! The instances' IAM role and instance profile. The role's one inline policy
//! allows what the app calls and nothing else: the stack's blobs (read and
//! write), its release and configuration (read), its queue and dead-letter
//! queue, health and scale-in protection of instances in its own groups, and
//! PutMetricData in the app's own namespace.

use serde_json::{Value, json};

use super::clients::{aws_error, code_in};
use super::names::{Names, ensure_ours, owner};
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::STACK_TAG;

const SQS_ACTIONS: [&str; 6] = [
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
];

pub fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "ec2.amazonaws.com" },
            "Action": "sts:AssumeRole"
        }]
    })
}

pub fn app_policy(names: &Names, namespace: &str) -> Value {
    let bucket = format!("arn:{}:s3:::{}", names.partition, names.bucket());
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Blobs",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": format!("{bucket}/{}/*", names.blob_prefix())
            },
            {
                "Sid": "ReleaseAndConfiguration",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [format!("{bucket}/release/*"), format!("{bucket}/config/*")]
            },
            {
                // Without it a missing object answers 403 instead of 404.
                "Sid": "ListBucket",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket
            },
            {
                "Sid": "Jobs",
                "Effect": "Allow",
                "Action": SQS_ACTIONS,
                "Resource": [names.queue_arn(&names.queue()), names.queue_arn(&names.dead_letter_queue())]
            },
            {
                // An instance reports itself unhealthy when its liveness fails
                // (the only thing that replaces it) and a worker protects itself from
                // scale-in while it holds a job: its own groups only.
                "Sid": "OwnGroupHealthAndProtection",
                "Effect": "Allow",
                "Action": ["autoscaling:SetInstanceHealth", "autoscaling:SetInstanceProtection"],
                "Resource": super::compute::ROLES.iter().map(|role| names.group_arn(role)).collect::<Vec<_>>()
            },
            {
                "Sid": "Metrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": { "StringEquals": { "cloudwatch:namespace": namespace } }
            }
        ]
    })
}

/// IAM hands policy documents back URL-encoded; some endpoints do not.
pub fn parse_policy(doc: &str) -> Option<Value> {
    serde_json::from_str(doc).ok().or_else(|| {
        let decoded = percent_encoding::percent_decode_str(doc).decode_utf8().ok()?;
        serde_json::from_str(&decoded).ok()
    })
}

fn iam_tag(stack: &str) -> Result<aws_sdk_iam::types::Tag, ProvisionError> {
    aws_sdk_iam::types::Tag::builder()
        .key(STACK_TAG)
        .value(stack)
        .build()
        .map_err(|e| ProvisionError::Invalid(format!("building an IAM tag: {e}")))
}

pub async fn ensure_instance_role(run: &mut Run<'_>, spec: &StackSpec) -> Result<(), ProvisionError> {
    let stack = run.stack().to_owned();
    let iam = run.c.iam.clone();
    let role = run.names.role();
    let policy_name = run.names.role_policy();
    let policy = app_policy(&run.names, &spec.metrics_namespace);
    run.checking(Kind::Role, &role);

    let existing = match iam.get_role().role_name(&role).send().await {
        Ok(out) => out.role().cloned(),
        Err(e) if code_in(&e, &["NoSuchEntity"]) => None,
        Err(e) => return Err(aws_error(format!("looking for the IAM role {role}"), e)),
    };
    match existing {
        None => {
            let notes = vec![format!(
                "assumed by EC2; policy {policy_name}: the bucket's blobs (read/write), release and configuration (read), the job queue and dead-letter queue, PutMetricData in namespace {}",
                spec.metrics_namespace
            )];
            if run.create(Kind::Role, &role, notes) {
                iam.create_role()
                    .role_name(&role)
                    .description(format!("flipstack stack {stack}: web and worker instances"))
                    .assume_role_policy_document(trust_policy().to_string())
                    .tags(iam_tag(&stack)?)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the IAM role {role}"), e))?;
                put_policy(run, &role, policy_name, &policy).await?;
                run.done(Kind::Role, &role);
            }
        }
        Some(r) => {
            let tags = r.tags().iter().map(|t| (t.key(), t.value()));
            ensure_ours(Kind::Role, &role, owner(tags, &stack), &stack)?;
            let trust_ok = r.assume_role_policy_document().and_then(parse_policy).is_some_and(|d| d == trust_policy());
            let have = match iam.get_role_policy().role_name(&role).policy_name(policy_name).send().await {
                Ok(out) => parse_policy(out.policy_document()),
                Err(e) if code_in(&e, &["NoSuchEntity"]) => None,
                Err(e) => return Err(aws_error(format!("reading the policy of {role}"), e)),
            };
            let mut what = Vec::new();
            if !trust_ok {
                what.push("trust only EC2".to_owned());
            }
            if have.as_ref() != Some(&policy) {
                what.push(format!("rewrite the policy {policy_name}"));
            }
            if run.update(Kind::Role, &role, what) {
                if !trust_ok {
                    iam.update_assume_role_policy()
                        .role_name(&role)
                        .policy_document(trust_policy().to_string())
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("updating the trust policy of {role}"), e))?;
                }
                if have.as_ref() != Some(&policy) {
                    put_policy(run, &role, policy_name, &policy).await?;
                }
                run.done(Kind::Role, &role);
            }
        }
    }

    let profile = run.names.instance_profile();
    run.checking(Kind::InstanceProfile, &profile);
    match iam.get_instance_profile().instance_profile_name(&profile).send().await {
        Err(e) if code_in(&e, &["NoSuchEntity"]) => {
            if run.create(Kind::InstanceProfile, &profile, vec![format!("holds the role {role}")]) {
                iam.create_instance_profile()
                    .instance_profile_name(&profile)
                    .tags(iam_tag(&stack)?)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the instance profile {profile}"), e))?;
                iam.add_role_to_instance_profile()
                    .instance_profile_name(&profile)
                    .role_name(&role)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("adding {role} to {profile}"), e))?;
                run.done(Kind::InstanceProfile, &profile);
            }
        }
        Err(e) => {
            return Err(aws_error(format!("looking for the instance profile {profile}"), e));
        }
        Ok(out) => {
            let Some(p) = out.instance_profile() else {
                return Err(ProvisionError::Invalid(format!(
                    "IAM answered without the instance profile {profile}; run the command again"
                )));
            };
            let tags = p.tags().iter().map(|t| (t.key(), t.value()));
            ensure_ours(Kind::InstanceProfile, &profile, owner(tags, &stack), &stack)?;
            let others: Vec<String> =
                p.roles().iter().map(|r| r.role_name().to_owned()).filter(|n| *n != role).collect();
            let has_ours = p.roles().iter().any(|r| r.role_name() == role);
            let mut what: Vec<String> = others.iter().map(|o| format!("remove the role {o}")).collect();
            if !has_ours {
                what.push(format!("add the role {role}"));
            }
            if run.update(Kind::InstanceProfile, &profile, what) {
                for o in &others {
                    iam.remove_role_from_instance_profile()
                        .instance_profile_name(&profile)
                        .role_name(o)
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("removing {o} from {profile}"), e))?;
                }
                if !has_ours {
                    iam.add_role_to_instance_profile()
                        .instance_profile_name(&profile)
                        .role_name(&role)
                        .send()
                        .await
                        .map_err(|e| aws_error(format!("adding {role} to {profile}"), e))?;
                }
                run.done(Kind::InstanceProfile, &profile);
            }
        }
    }
    Ok(())
}

async fn put_policy(run: &Run<'_>, role: &str, name: &str, policy: &Value) -> Result<(), ProvisionError> {
    run.c
        .iam
        .put_role_policy()
        .role_name(role)
        .policy_name(name)
        .policy_document(policy.to_string())
        .send()
        .await
        .map_err(|e| aws_error(format!("writing the policy {name} of {role}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_reads_back_url_encoded_or_not() {
        let names = Names {
            stack: "a".into(),
            account: "123456789012".into(),
            partition: "aws".into(),
            region: "us-east-1".into(),
        };
        let p = app_policy(&names, "flipstack");
        let text = p.to_string();
        let encoded = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string();
        assert_eq!(parse_policy(&text), Some(p.clone()));
        assert_eq!(parse_policy(&encoded), Some(p.clone()));
        // Nothing in it reaches beyond the stack: no wildcard resource except
        // PutMetricData, which is held to the app's namespace.
        for s in p["Statement"].as_array().unwrap() {
            if s["Resource"] == "*" {
                assert_eq!(s["Action"], "cloudwatch:PutMetricData");
                assert_eq!(s["Condition"]["StringEquals"]["cloudwatch:namespace"], "flipstack");
            }
        }
        assert!(text.contains("arn:aws:s3:::flipstack-a-123456789012-us-east-1/blobs/*"));
        assert!(text.contains("arn:aws:sqs:us-east-1:123456789012:flipstack-a-jobs-dlq"));
    }
}
