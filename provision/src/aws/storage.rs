//! The private bucket (blobs, the release artifact, the configuration), the
//! job queue with its dead-letter queue, and the configuration the instances
//! run with.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint, BucketVersioningStatus,
    CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    NoncurrentVersionExpiration, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tagging, VersioningConfiguration,
};
use aws_sdk_sqs::types::QueueAttributeName;
use flipstack_domain::backups::{BACKUP_FOLDER, PICTURE_FOLDERS};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::balancer::LoadBalancer;
use super::clients::{aws_error, code_in};
use super::data::{CacheEndpoint, Databases};
use super::names::{Names, ensure_ours, owner};
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::STACK_TAG;
use crate::release::{self, Executable, TARGET_GLIBC};

/// Messages received this often without being deleted go to the dead-letter
/// queue (see `flipstack_aws::REDRIVE_AFTER_RECEIVES` for why so many).
pub const MAX_RECEIVE_COUNT: u64 = flipstack_aws::REDRIVE_AFTER_RECEIVES as u64;
/// The dead-letter queue keeps messages as long as SQS allows (14 days).
const DLQ_RETENTION_SECS: &str = "1209600";
const LONG_POLL_SECS: &str = "20";

/// The HTTP status of a failed S3 call, for the calls (HEAD) whose errors
/// have no body to carry a code.
pub fn s3_status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn built<T>(r: Result<T, aws_sdk_s3::error::BuildError>) -> Result<T, ProvisionError> {
    r.map_err(|e| ProvisionError::Invalid(format!("building an S3 request: {e}")))
}

/// Old versions of a backup (overwritten or deleted by the schedule's
/// pruning) are kept this long; the current ones are kept by the schedule.
pub const BACKUP_VERSION_DAYS: i32 = 30;
/// A deleted picture's old version goes after a day (the shortest a
/// lifecycle rule takes), so nothing of it stays for long.
pub const PICTURE_VERSION_DAYS: i32 = 1;
/// Old releases and configurations, to go back to for a while.
pub const STACK_FILE_VERSION_DAYS: i32 = 7;
/// Lifecycle rules `up` made start with this; others' rules are kept as they are.
const RULE_ID_PREFIX: &str = "flipstack-";

/// One lifecycle rule of the stack's versioned bucket: under `prefix`, old
/// versions go after `noncurrent_days`; every rule also removes delete
/// markers left with no version and uploads abandoned for a day.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionRule {
    pub id: String,
    pub prefix: String,
    pub noncurrent_days: i32,
}

/// The lifecycle rules the bucket needs: one per folder, since S3 applies
/// the shortest of overlapping rules and a picture's old version must go
/// sooner than a backup's.
pub fn version_rules(names: &Names) -> Vec<VersionRule> {
    let blobs = names.blob_prefix();
    let rule = |id: String, prefix: String, noncurrent_days| VersionRule { id, prefix, noncurrent_days };
    let mut rules = vec![rule(
        format!("{RULE_ID_PREFIX}{BACKUP_FOLDER}"),
        format!("{blobs}/{BACKUP_FOLDER}/"),
        BACKUP_VERSION_DAYS,
    )];
    rules.extend(
        PICTURE_FOLDERS
            .iter()
            .map(|f| rule(format!("{RULE_ID_PREFIX}pictures-{f}"), format!("{blobs}/{f}/"), PICTURE_VERSION_DAYS)),
    );
    for key in [names.release_key(), names.config_key()] {
        let folder = key.split('/').next().unwrap_or(key);
        rules.push(rule(format!("{RULE_ID_PREFIX}{folder}"), format!("{folder}/"), STACK_FILE_VERSION_DAYS));
    }
    rules
}

impl VersionRule {
    fn to_s3(&self) -> Result<LifecycleRule, ProvisionError> {
        built(
            LifecycleRule::builder()
                .id(&self.id)
                .filter(LifecycleRuleFilter::builder().prefix(&self.prefix).build())
                .status(ExpirationStatus::Enabled)
                .noncurrent_version_expiration(
                    NoncurrentVersionExpiration::builder().noncurrent_days(self.noncurrent_days).build(),
                )
                .expiration(LifecycleExpiration::builder().expired_object_delete_marker(true).build())
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder().days_after_initiation(1).build(),
                )
                .build(),
        )
    }

    /// The rule as `up` wrote it, or None for any other.
    pub fn from_s3(r: &LifecycleRule) -> Option<VersionRule> {
        let prefix = r.filter().and_then(|f| f.prefix())?;
        let ours = r.status() == &ExpirationStatus::Enabled
            && r.expiration().and_then(|e| e.expired_object_delete_marker()) == Some(true)
            && r.abort_incomplete_multipart_upload().and_then(|a| a.days_after_initiation()) == Some(1);
        ours.then_some(())?;
        Some(VersionRule {
            id: r.id()?.to_owned(),
            prefix: prefix.to_owned(),
            noncurrent_days: r.noncurrent_version_expiration()?.noncurrent_days()?,
        })
    }
}

/// Whether the bucket keeps versions, and its lifecycle rules (none: no configuration).
pub async fn bucket_versions(
    s3: &aws_sdk_s3::Client,
    name: &str,
) -> Result<(bool, Vec<LifecycleRule>), ProvisionError> {
    let versioned = match s3.get_bucket_versioning().bucket(name).send().await {
        Ok(versioning) => versioning.status() == Some(&BucketVersioningStatus::Enabled),
        // moto 5.2 answers under another root element, which the SDK refuses
        // to decode; the status inside is the same.
        Err(e) => match e
            .raw_response()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.body().bytes())
            .and_then(versioning_status_in)
        {
            Some(status) => status == BucketVersioningStatus::Enabled,
            None => return Err(aws_error(format!("reading the versioning of {name}"), e)),
        },
    };
    let rules = match s3.get_bucket_lifecycle_configuration().bucket(name).send().await {
        Ok(out) => out.rules().to_vec(),
        Err(e) if code_in(&e, &["NoSuchLifecycleConfiguration"]) => Vec::new(),
        Err(e) => return Err(aws_error(format!("reading the lifecycle rules of {name}"), e)),
    };
    Ok((versioned, rules))
}

/// The `<Status>` of a GetBucketVersioning answer's text (none: never versioned).
fn versioning_status_in(body: &[u8]) -> Option<BucketVersioningStatus> {
    let text = std::str::from_utf8(body).ok()?;
    text.contains("Versioning").then_some(())?;
    let status = text.split_once("<Status>").and_then(|(_, rest)| rest.split_once("</Status>")).map(|(s, _)| s);
    Some(BucketVersioningStatus::from(status.unwrap_or("").trim()))
}

/// The lifecycle configuration to write when `have` lacks a wanted rule or
/// holds an outdated rule of ours: the wanted ones beside everyone else's.
fn lifecycle_fix(wanted: &[VersionRule], have: &[LifecycleRule]) -> Option<Vec<LifecycleRule>> {
    let ours = |r: &LifecycleRule| r.id().is_some_and(|id| id.starts_with(RULE_ID_PREFIX));
    let mut current: Vec<VersionRule> = have.iter().filter(|r| ours(r)).filter_map(VersionRule::from_s3).collect();
    current.sort();
    let mut sorted = wanted.to_vec();
    sorted.sort();
    if current == sorted && have.iter().filter(|r| ours(r)).count() == wanted.len() {
        return None;
    }
    Some(have.iter().filter(|r| !ours(r)).cloned().collect())
}

async fn keep_versions(
    run: &Run<'_>,
    name: &str,
    versioning: bool,
    others: Option<Vec<LifecycleRule>>,
) -> Result<(), ProvisionError> {
    let s3 = &run.c.s3;
    if versioning {
        s3.put_bucket_versioning()
            .bucket(name)
            .versioning_configuration(
                VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build(),
            )
            .send()
            .await
            .map_err(|e| aws_error(format!("turning on versioning for {name}"), e))?;
    }
    if let Some(mut rules) = others {
        for rule in version_rules(&run.names) {
            rules.push(rule.to_s3()?);
        }
        s3.put_bucket_lifecycle_configuration()
            .bucket(name)
            .lifecycle_configuration(built(BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build())?)
            .send()
            .await
            .map_err(|e| aws_error(format!("setting the lifecycle rules of {name}"), e))?;
    }
    Ok(())
}

fn versions_note() -> String {
    format!(
        "versioned; lifecycle: old versions of backups/ kept {BACKUP_VERSION_DAYS} days, of pictures {PICTURE_VERSION_DAYS} day, of the release and configuration {STACK_FILE_VERSION_DAYS} days"
    )
}

fn bucket_tagging(stack: &str) -> Result<Tagging, ProvisionError> {
    let tag = built(aws_sdk_s3::types::Tag::builder().key(STACK_TAG).value(stack).build())?;
    built(Tagging::builder().tag_set(tag).build())
}

fn all_blocked() -> PublicAccessBlockConfiguration {
    PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build()
}

pub async fn ensure_bucket(run: &mut Run<'_>) -> Result<(), ProvisionError> {
    let name = run.names.bucket();
    let stack = run.stack().to_owned();
    run.checking(Kind::Bucket, &name);
    let s3 = run.c.s3.clone();
    match s3.head_bucket().bucket(&name).send().await {
        Ok(_) => {}
        Err(e) if s3_status(&e) == Some(404) => {
            let notes = vec![
                "private: public access blocked (all four settings), ACLs disabled, encrypted (SSE-S3)".into(),
                format!(
                    "holds blobs under {}/ (backups under {0}/{BACKUP_FOLDER}/), the release under release/, the configuration under config/",
                    run.names.blob_prefix()
                ),
                versions_note(),
            ];
            if !run.create(Kind::Bucket, &name, notes) {
                return Ok(());
            }
            let mut req = s3.create_bucket().bucket(&name);
            // us-east-1 is the one region that takes no location constraint.
            if run.names.region != "us-east-1" {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(run.names.region.as_str()))
                        .build(),
                );
            }
            req.send().await.map_err(|e| aws_error(format!("creating the bucket {name}"), e))?;
            s3.put_bucket_tagging()
                .bucket(&name)
                .tagging(bucket_tagging(&stack)?)
                .send()
                .await
                .map_err(|e| aws_error(format!("tagging the bucket {name}"), e))?;
            secure_bucket(run, &name, true, true, true).await?;
            keep_versions(run, &name, true, Some(Vec::new())).await?;
            run.done(Kind::Bucket, &name);
            return Ok(());
        }
        Err(e) if s3_status(&e) == Some(403) => {
            return Err(ProvisionError::Conflict(format!(
                "the bucket name {name} is taken by another AWS account; choose another stack name"
            )));
        }
        Err(e) => return Err(aws_error(format!("looking for the bucket {name}"), e)),
    }

    let tags = match s3.get_bucket_tagging().bucket(&name).send().await {
        Ok(t) => t.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect::<Vec<_>>(),
        Err(e) if code_in(&e, &["NoSuchTagSet"]) => Vec::new(),
        Err(e) => {
            return Err(aws_error(format!("reading the tags of the bucket {name}"), e));
        }
    };
    ensure_ours(Kind::Bucket, &name, owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), &stack), &stack)?;

    let (block_ok, enc_ok, owner_ok) = bucket_settings(&run.c.s3, &name).await?;
    let mut what = Vec::new();
    if !block_ok {
        what.push("block all public access".to_owned());
    }
    if !enc_ok {
        what.push("turn on default encryption (SSE-S3)".to_owned());
    }
    if !owner_ok {
        what.push("disable ACLs (bucket owner enforced)".to_owned());
    }
    let (versioned, rules) = bucket_versions(&run.c.s3, &name).await?;
    if !versioned {
        what.push("turn on versioning".to_owned());
    }
    let lifecycle = lifecycle_fix(&version_rules(&run.names), &rules);
    if lifecycle.is_some() {
        what.push(format!("set the lifecycle rules ({})", versions_note()));
    }
    if run.update(Kind::Bucket, &name, what) {
        secure_bucket(run, &name, !block_ok, !enc_ok, !owner_ok).await?;
        keep_versions(run, &name, !versioned, lifecycle).await?;
        run.done(Kind::Bucket, &name);
    }
    Ok(())
}

/// Whether the bucket's public access block (all four), default encryption
/// and object ownership are as the stack needs.
pub async fn bucket_settings(s3: &aws_sdk_s3::Client, name: &str) -> Result<(bool, bool, bool), ProvisionError> {
    let block = match s3.get_public_access_block().bucket(name).send().await {
        Ok(out) => out.public_access_block_configuration().is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        }),
        Err(e) if code_in(&e, &["NoSuchPublicAccessBlockConfiguration"]) => false,
        Err(e) => {
            return Err(aws_error(format!("reading the public access block of {name}"), e));
        }
    };
    let encrypted = match s3.get_bucket_encryption().bucket(name).send().await {
        Ok(out) => out
            .server_side_encryption_configuration()
            .is_some_and(|c| c.rules().iter().any(|r| r.apply_server_side_encryption_by_default().is_some())),
        Err(e) if code_in(&e, &["ServerSideEncryptionConfigurationNotFoundError"]) => false,
        Err(e) => return Err(aws_error(format!("reading the encryption of {name}"), e)),
    };
    let enforced = match s3.get_bucket_ownership_controls().bucket(name).send().await {
        Ok(out) => out
            .ownership_controls()
            .is_some_and(|c| c.rules().iter().any(|r| r.object_ownership() == &ObjectOwnership::BucketOwnerEnforced)),
        Err(e) if code_in(&e, &["OwnershipControlsNotFoundError"]) => false,
        Err(e) => {
            return Err(aws_error(format!("reading the ownership controls of {name}"), e));
        }
    };
    Ok((block, encrypted, enforced))
}

async fn secure_bucket(
    run: &Run<'_>,
    name: &str,
    block: bool,
    encrypt: bool,
    enforce_owner: bool,
) -> Result<(), ProvisionError> {
    let s3 = &run.c.s3;
    if block {
        s3.put_public_access_block()
            .bucket(name)
            .public_access_block_configuration(all_blocked())
            .send()
            .await
            .map_err(|e| aws_error(format!("blocking public access to {name}"), e))?;
    }
    if encrypt {
        let by_default =
            built(ServerSideEncryptionByDefault::builder().sse_algorithm(ServerSideEncryption::Aes256).build())?;
        let conf = built(
            ServerSideEncryptionConfiguration::builder()
                .rules(ServerSideEncryptionRule::builder().apply_server_side_encryption_by_default(by_default).build())
                .build(),
        )?;
        s3.put_bucket_encryption()
            .bucket(name)
            .server_side_encryption_configuration(conf)
            .send()
            .await
            .map_err(|e| aws_error(format!("turning on encryption for {name}"), e))?;
    }
    if enforce_owner {
        let rule =
            built(OwnershipControlsRule::builder().object_ownership(ObjectOwnership::BucketOwnerEnforced).build())?;
        s3.put_bucket_ownership_controls()
            .bucket(name)
            .ownership_controls(built(OwnershipControls::builder().rules(rule).build())?)
            .send()
            .await
            .map_err(|e| aws_error(format!("disabling ACLs on {name}"), e))?;
    }
    Ok(())
}

/// SHA-256 of a file, read off the async threads.
async fn sha256_file(path: &Path) -> Result<String, ProvisionError> {
    let p = path.to_owned();
    let io = |source| ProvisionError::Binary { path: path.to_owned(), source };
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))?
    .map_err(io)
}

/// The release to ship (the given binary, else the running executable),
/// checked that the instances can run it.
pub async fn checked_release(spec: &StackSpec) -> Result<Executable, ProvisionError> {
    let path = release::release_path(spec.binary.as_deref())?;
    let exe = tokio::task::spawn_blocking(move || release::check_for_target(&path))
        .await
        .map_err(|e| ProvisionError::Invalid(format!("checking the release: {e}")))??;
    Ok(exe)
}

/// Uploads the release (see [`checked_release`]) when it differs from the
/// bucket's; returns the SHA-256 of the release the instances will fetch.
/// A plan never fails for want of a release: it shows what `up` would ship,
/// or, when `up` would refuse it, says why as a warning.
pub async fn ensure_release(
    run: &mut Run<'_>,
    checked: Result<Executable, ProvisionError>,
) -> Result<Option<String>, ProvisionError> {
    let bucket = run.names.bucket();
    let key = run.names.release_key();
    let shown = format!("s3://{bucket}/{key}");
    run.checking(Kind::ReleaseArtifact, &shown);
    let current = match run.c.s3.head_object().bucket(&bucket).key(key).send().await {
        Ok(h) => Some(h.metadata().and_then(|m| m.get("sha256")).cloned()),
        Err(e) if s3_status(&e) == Some(404) => None,
        Err(e) => return Err(aws_error(format!("looking for the release {shown}"), e)),
    };
    let exe = match checked {
        Ok(exe) => exe,
        Err(e) if !run.apply => {
            let what = vec![format!("upload a release: `up` would refuse it: {e}")];
            match &current {
                Some(_) => run.update(Kind::ReleaseArtifact, &shown, what),
                None => run.create(Kind::ReleaseArtifact, &shown, what),
            };
            run.warn(Kind::ReleaseArtifact, &shown, e.to_string());
            return Ok(current.flatten());
        }
        Err(e) => return Err(e),
    };
    let path = exe.path.clone();
    let sha = sha256_file(&path).await?;
    let note = format!("{} (sha256 {}); {} has {TARGET_GLIBC}", exe.summary(), &sha[..12], release::TARGET_SYSTEM);
    let go = match &current {
        Some(Some(have)) if *have == sha => {
            run.keep(Kind::ReleaseArtifact, &shown);
            false
        }
        Some(_) => run.update(Kind::ReleaseArtifact, &shown, vec![format!("upload {note}")]),
        None => run.create(Kind::ReleaseArtifact, &shown, vec![format!("upload {note}")]),
    };
    if go {
        let body = ByteStream::from_path(&path)
            .await
            .map_err(|e| ProvisionError::Binary { path: path.clone(), source: std::io::Error::other(e) })?;
        run.c
            .s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(body)
            .metadata("sha256", &sha)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .send()
            .await
            .map_err(|e| aws_error(format!("uploading the release to {shown}"), e))?;
        run.done(Kind::ReleaseArtifact, &shown);
    }
    Ok(Some(sha))
}

#[derive(Debug, Clone)]
pub struct Queues {
    pub url: Option<String>,
}

async fn queue_url(run: &Run<'_>, name: &str) -> Result<Option<String>, ProvisionError> {
    match run.c.sqs.get_queue_url().queue_name(name).send().await {
        Ok(out) => Ok(out.queue_url().map(String::from)),
        Err(e) if code_in(&e, &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"]) => Ok(None),
        Err(e) => Err(aws_error(format!("looking for the queue {name}"), e)),
    }
}

pub fn redrive_policy(dlq_arn: &str) -> String {
    serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT }).to_string()
}

/// Whether a redrive policy sends to `dlq_arn` after MAX_RECEIVE_COUNT receives.
pub fn redrive_matches(policy: &str, dlq_arn: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(policy) else {
        return false;
    };
    let count = v.get("maxReceiveCount").and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
    v.get("deadLetterTargetArn").and_then(|a| a.as_str()) == Some(dlq_arn) && count == Some(MAX_RECEIVE_COUNT)
}

async fn ensure_queue(
    run: &mut Run<'_>,
    kind: Kind,
    name: &str,
    wanted: BTreeMap<QueueAttributeName, String>,
    notes: Vec<String>,
) -> Result<Option<String>, ProvisionError> {
    let stack = run.stack().to_owned();
    run.checking(kind, name);
    let sqs = run.c.sqs.clone();
    let Some(url) = queue_url(run, name).await? else {
        if !run.create(kind, name, notes) {
            return Ok(None);
        }
        let out = sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(wanted.into_iter().collect::<HashMap<_, _>>()))
            .tags(STACK_TAG, &stack)
            .send()
            .await
            .map_err(|e| aws_error(format!("creating the queue {name}"), e))?;
        run.done(kind, name);
        return Ok(out.queue_url().map(String::from));
    };
    let tags = sqs
        .list_queue_tags()
        .queue_url(&url)
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the tags of the queue {name}"), e))?;
    let tags = tags.tags().cloned().unwrap_or_default();
    ensure_ours(kind, name, owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), &stack), &stack)?;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the queue {name}"), e))?;
    let have = attrs.attributes().cloned().unwrap_or_default();
    let mut differ = Vec::new();
    let mut fix = HashMap::new();
    for (attr, value) in wanted {
        let same = match (&attr, have.get(&attr)) {
            (QueueAttributeName::RedrivePolicy, Some(h)) => {
                let dlq = serde_json::from_str::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| v["deadLetterTargetArn"].as_str().map(String::from))
                    .unwrap_or_default();
                redrive_matches(h, &dlq)
            }
            (_, Some(h)) => h.eq_ignore_ascii_case(&value),
            (_, None) => false,
        };
        if !same {
            differ.push(format!("set {} to {value}", attr.as_str()));
            fix.insert(attr, value);
        }
    }
    if run.update(kind, name, differ) {
        sqs.set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(fix))
            .send()
            .await
            .map_err(|e| aws_error(format!("updating the queue {name}"), e))?;
        run.done(kind, name);
    }
    Ok(Some(url))
}

pub async fn ensure_queues(run: &mut Run<'_>) -> Result<Queues, ProvisionError> {
    let (name, dlq) = (run.names.queue(), run.names.dead_letter_queue());
    let dlq_arn = run.names.queue_arn(&dlq);
    ensure_queue(
        run,
        Kind::DeadLetterQueue,
        &dlq,
        BTreeMap::from([
            (QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.into()),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ]),
        vec!["keeps failed jobs 14 days".into()],
    )
    .await?;
    let url = ensure_queue(
        run,
        Kind::Queue,
        &name,
        BTreeMap::from([
            (QueueAttributeName::RedrivePolicy, redrive_policy(&dlq_arn)),
            (QueueAttributeName::ReceiveMessageWaitTimeSeconds, LONG_POLL_SECS.into()),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ]),
        vec![format!("redrive to {dlq} after {MAX_RECEIVE_COUNT} receives; long polling")],
    )
    .await?;
    Ok(Queues { url })
}

/// The secrets of a stack: kept only in its (private, encrypted)
/// configuration object, from which later runs read them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    pub db_password: String,
    pub admin_token: String,
}

impl Secrets {
    pub fn generate() -> Secrets {
        let mut rng = rand::rng();
        // Letters and digits only: the password sits inside a URL and RDS
        // refuses some punctuation.
        let password: String = (0..32)
            .map(|_| {
                const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
                CHARS[rng.random_range(0..CHARS.len())] as char
            })
            .collect();
        let token: [u8; 32] = rng.random();
        Secrets { db_password: password, admin_token: hex::encode(token) }
    }

    pub fn from_config(config: &Config) -> Option<Secrets> {
        let vars = config.vars();
        let db = url::Url::parse(vars.get("FLIPSTACK_DATABASE_URL")?).ok()?;
        Some(Secrets {
            db_password: db.password()?.to_owned(),
            admin_token: vars.get("FLIPSTACK_ADMIN_TOKEN")?.clone(),
        })
    }
}

/// The stack's configuration: the environment file (`KEY=VALUE` lines) that
/// every instance fetches at boot and hands to flipstack through systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub text: String,
}

pub const DB_USER: &str = "flipstack";
pub const DB_NAME: &str = "flipstack";

impl Config {
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// None while an endpoint it needs does not exist yet (in a plan).
    pub fn render(
        names: &Names,
        spec: &StackSpec,
        secrets: &Secrets,
        db: &Databases,
        cache: &CacheEndpoint,
        queues: &Queues,
        lb: &LoadBalancer,
    ) -> Option<Config> {
        let mysql =
            |host: &str, port: i32| format!("mysql://{DB_USER}:{}@{host}:{port}/{DB_NAME}", secrets.db_password);
        let (primary, replica) = (db.primary.as_ref()?, db.replica.as_ref()?);
        let public_url = match &spec.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if spec.certificate_arn.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", lb.dns.as_ref()?)
            }
        };
        let mut vars = vec![
            ("FLIPSTACK_DATABASE_URL", mysql(&primary.0, primary.1)),
            ("FLIPSTACK_REPLICA_URLS", mysql(&replica.0, replica.1)),
            ("FLIPSTACK_BLOB_URL", format!("s3://{}/{}", names.bucket(), names.blob_prefix())),
            ("FLIPSTACK_QUEUE_URL", queues.url.clone()?),
            ("FLIPSTACK_AWS_REGION", names.region.clone()),
            ("FLIPSTACK_PUBLIC_URL", public_url),
            ("FLIPSTACK_ADMIN_TOKEN", secrets.admin_token.clone()),
            ("FLIPSTACK_METRICS_NAMESPACE", spec.metrics_namespace.clone()),
            ("FLIPSTACK_DATA_DIR", "/var/lib/flipstack".into()),
            // Behind the load balancer: the client is the entry it appends to
            // X-Forwarded-For, and the peers are its few nodes, which carry
            // everyone's connections (the per-client caps apply to the clients).
            ("FLIPSTACK_TRUSTED_PROXY_HOPS", "1".into()),
            ("FLIPSTACK_MAX_CONNECTIONS_PER_CLIENT", "4096".into()),
            // Workers holding a job protect their instance from scale-in.
            ("FLIPSTACK_SCALE_IN_PROTECTION_GROUP", names.group("worker")),
        ];
        match cache {
            CacheEndpoint::Nodes(url) => vars.push(("FLIPSTACK_CACHE_URL", url.clone())),
            CacheEndpoint::Pending => return None,
            // Left out: the servers then use their in-process cache until a
            // later `up` finds the endpoint (see the warning `up` gives).
            CacheEndpoint::Unreported => {}
        }
        if let Some(mail) = &spec.mail_url {
            vars.push(("FLIPSTACK_MAIL_URL", mail.clone()));
        }
        if spec.public_url.as_deref().is_some_and(|u| u.starts_with("https://")) || spec.certificate_arn.is_some() {
            vars.push(("FLIPSTACK_COOKIE_SECURE", "true".into()));
        }
        let mut text = format!(
            "# flipstack stack {}: written by `flipstack provision up`; instances read it at boot.\n",
            names.stack
        );
        for (k, v) in vars {
            text.push_str(&format!("{k}={v}\n"));
        }
        Some(Config { text })
    }
}

pub async fn read_config(run: &Run<'_>) -> Result<Option<Config>, ProvisionError> {
    let (bucket, key) = (run.names.bucket(), run.names.config_key());
    read_object(&run.c.s3, &bucket, key).await.map(|t| t.map(|text| Config { text }))
}

pub async fn read_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Option<String>, ProvisionError> {
    match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => {
            let bytes = out.body.collect().await.map_err(|e| ProvisionError::Aws {
                doing: format!("reading s3://{bucket}/{key}"),
                detail: e.to_string(),
                hint: String::new(),
                source: Box::new(e),
            })?;
            Ok(Some(String::from_utf8_lossy(&bytes.into_bytes()).into_owned()))
        }
        Err(e) if code_in(&e, &["NoSuchKey", "NoSuchBucket"]) || s3_status(&e) == Some(404) => Ok(None),
        Err(e) => Err(aws_error(format!("reading s3://{bucket}/{key}"), e)),
    }
}

pub async fn ensure_config(
    run: &mut Run<'_>,
    wanted: Option<&Config>,
    previous: Option<&Config>,
) -> Result<(), ProvisionError> {
    let (bucket, key) = (run.names.bucket(), run.names.config_key());
    let shown = format!("s3://{bucket}/{key}");
    run.checking(Kind::Configuration, &shown);
    let go = match (previous, wanted) {
        (None, _) => run.create(
            Kind::Configuration,
            &shown,
            vec!["the instances' environment: endpoints, queue, bucket, secrets".into()],
        ),
        (Some(_), None) => run.update(
            Kind::Configuration,
            &shown,
            vec!["rewritten with the endpoints of the resources created above".into()],
        ),
        (Some(p), Some(w)) => {
            let (old, new) = (p.vars(), w.vars());
            let mut what: Vec<String> =
                new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, _)| format!("set {k}")).collect();
            what.extend(old.keys().filter(|k| !new.contains_key(*k)).map(|k| format!("remove {k}")));
            if what.is_empty() && p.text != w.text {
                what.push("rewrite".into());
            }
            run.update(Kind::Configuration, &shown, what)
        }
    };
    if !go {
        return Ok(());
    }
    let Some(config) = wanted else {
        return Err(ProvisionError::Invalid(
            "the stack's endpoints are still unknown after creating its resources; run `up` again".into(),
        ));
    };
    run.c
        .s3
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(ByteStream::from(config.text.clone().into_bytes()))
        .content_type("text/plain; charset=utf-8")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await
        .map_err(|e| aws_error(format!("writing the configuration {shown}"), e))?;
    run.done(Kind::Configuration, &shown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_round_trips() {
        let arn = "arn:aws:sqs:us-east-1:1:flipstack-a-jobs-dlq";
        assert!(redrive_matches(&redrive_policy(arn), arn));
        // AWS answers with a number, some endpoints with a string.
        assert!(redrive_matches(&format!(r#"{{"deadLetterTargetArn": "{arn}", "maxReceiveCount": "10"}}"#), arn));
        assert!(!redrive_matches(&format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":5}}"#), arn));
        assert!(!redrive_matches(&redrive_policy("arn:other"), arn));
    }

    #[test]
    fn every_folder_has_its_own_lifecycle_rule_and_backups_keep_versions_longest() {
        let names = Names {
            stack: "demo".into(),
            account: "123456789012".into(),
            partition: "aws".into(),
            region: "us-east-1".into(),
        };
        let rules = version_rules(&names);
        let prefixes: Vec<&str> = rules.iter().map(|r| r.prefix.as_str()).collect();
        assert!(prefixes.contains(&"blobs/backups/") && prefixes.contains(&"blobs/originals/"), "{prefixes:?}");
        for (i, a) in prefixes.iter().enumerate() {
            for b in &prefixes[i + 1..] {
                assert!(!a.starts_with(b) && !b.starts_with(a), "{a} and {b} overlap: S3 would apply the shorter");
            }
        }
        let s3_rules: Vec<LifecycleRule> = rules.iter().map(|r| r.to_s3().unwrap()).collect();
        let read_back: Vec<VersionRule> = s3_rules.iter().filter_map(VersionRule::from_s3).collect();
        assert_eq!(read_back, rules);
        assert_eq!(lifecycle_fix(&rules, &s3_rules), None, "as wanted: nothing to do");
        // Someone else's rule is kept; one of ours that changed is rewritten.
        let theirs = LifecycleRule::builder()
            .id("archive-logs")
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        let mut have = s3_rules.clone();
        have.push(theirs.clone());
        assert_eq!(lifecycle_fix(&rules, &have), None);
        have[0] = VersionRule { noncurrent_days: 2, ..rules[0].clone() }.to_s3().unwrap();
        assert_eq!(lifecycle_fix(&rules, &have), Some(vec![theirs]));
        assert_eq!(lifecycle_fix(&rules, &[]), Some(vec![]));
    }

    #[test]
    fn the_versioning_status_is_read_from_the_answers_text() {
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<GetBucketVersioningResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></GetBucketVersioningResponse>"#;
        assert_eq!(versioning_status_in(moto), Some(BucketVersioningStatus::Enabled));
        let never = br#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>"#;
        assert_ne!(versioning_status_in(never), Some(BucketVersioningStatus::Enabled));
        assert_eq!(versioning_status_in(b"<Error><Code>AccessDenied</Code></Error>"), None);
    }

    #[test]
    fn secrets_come_back_from_the_configuration() {
        let s = Secrets::generate();
        assert_eq!(s.db_password.len(), 32);
        assert!(s.db_password.chars().all(|c| c.is_ascii_alphanumeric()));
        let config = Config {
            text: format!(
                "# comment\nFLIPSTACK_DATABASE_URL=mysql://flipstack:{}@h:3306/flipstack\nFLIPSTACK_ADMIN_TOKEN={}\n",
                s.db_password, s.admin_token
            ),
        };
        assert_eq!(Secrets::from_config(&config), Some(s));
        assert_eq!(Secrets::from_config(&Config { text: String::new() }), None);
    }
}
