//! The job queue port. A message only says "look at upload N": the uploads
//! table is the source of truth, and the worker's claim on the row (a lease)
//! decides who flips it. Adapters: [`db`] (the uploads table itself, the
//! embedded default) and `sqs` (Amazon SQS with a dead-letter queue).

pub mod db;

use crate::error::Cause;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::UploadId;
use crate::store::MetadataStore;

pub use crate::records::QueueDepth;
pub use flipstack_aws::REDRIVE_AFTER_RECEIVES;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue configuration: {message}")]
    Config { message: String, source: Option<Cause> },
    #[error("the queue is unavailable: {message}")]
    Unavailable { message: String, source: Option<Cause> },
}

impl QueueError {
    pub fn config(message: impl Into<String>) -> QueueError {
        QueueError::Config { message: message.into(), source: None }
    }

    /// The queue did not answer; `message` already says what and why, `e` is kept beneath.
    pub fn unavailable(message: impl Into<String>, e: Option<Cause>) -> QueueError {
        QueueError::Unavailable { message: message.into(), source: e }
    }

    /// Whether the caller can retry: the queue did not answer or refused.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable { .. })
    }
}

/// A message handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub upload_id: UploadId,
    /// The queue's handle for this delivery (SQS receipt handle).
    pub handle: Option<String>,
    /// How many times the message has been received (1 on the first).
    pub receive_count: u32,
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// `db` or `sqs`.
    fn kind(&self) -> crate::domain::QueueBackend;
    /// Announces a new job (a no-op where the table is the queue).
    async fn enqueue(&self, id: UploadId) -> Result<(), QueueError>;
    /// Waits up to `wait` for jobs.
    async fn receive(&self, wait: Duration, max: u32) -> Result<Vec<Delivery>, QueueError>;
    /// Keeps a delivery hidden from other workers while its job runs.
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError>;
    /// The job is finished (or was already): forget the message.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Hand the message back to be delivered again after `delay`.
    async fn release(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
    /// True where messages can be lost apart from the table (SQS): a
    /// reconciler then re-sends jobs that wait with no live lease.
    fn needs_reconciler(&self) -> bool;
    /// The dead-letter queue's messages, for marking their uploads failed
    /// (SQS only). Each is left in place for operators to inspect.
    async fn dead_letters(&self, _max: u32) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }
    /// Moves up to `max` messages from the dead-letter queue back to the
    /// queue (an operator's redrive); answers their uploads, which the caller
    /// sets back to pending. Only SQS has a dead-letter queue.
    async fn redrive(&self, _max: u32) -> Result<Vec<UploadId>, QueueError> {
        Err(QueueError::config(format!(
            "the {} queue has no dead-letter queue: retry the failed uploads instead",
            self.kind()
        )))
    }
}

/// Opens the queue a URL names: `db://` or an SQS queue URL.
pub async fn connect(
    url: &str,
    store: Arc<dyn MetadataStore>,
    poll: Duration,
    wake_dir: &std::path::Path,
    aws: &crate::aws::AwsSettings,
) -> Result<Arc<dyn JobQueue>, QueueError> {
    if url == "db://" || url == "db" {
        return Ok(Arc::new(db::DbQueue::new(store, poll, wake_dir.to_owned())));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Arc::new(crate::aws::sqs::SqsQueue::connect(url, aws).await?));
    }
    Err(QueueError::config(format!("FLIPSTACK_QUEUE_URL must be db:// or an SQS queue URL, not {url:?}")))
}
