//! The database as the queue: a job is an upload row that is due (pending) or
//! whose worker's lease ran out. Workers look for candidates when woken (an
//! enqueue on this machine wakes them through [`crate::wake`]) or on their
//! poll, and race for them with a conditional claim; the loser simply looks
//! again.

use crate::domain::QueueBackend;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rand::seq::SliceRandom;

use super::{Delivery, JobQueue, QueueDepth, QueueError};
use crate::domain::{UploadId, now_millis};
use crate::store::MetadataStore;
use crate::wake;

pub struct DbQueue {
    store: Arc<dyn MetadataStore>,
    poll: Duration,
    wake_dir: PathBuf,
    /// Bound on the first receive: only processes that take jobs wait.
    woken_by: OnceLock<Option<wake::Listener>>,
}

impl DbQueue {
    pub fn new(store: Arc<dyn MetadataStore>, poll: Duration, wake_dir: PathBuf) -> DbQueue {
        DbQueue { store, poll: poll.max(Duration::from_millis(5)), wake_dir, woken_by: OnceLock::new() }
    }
}

fn unavailable(e: crate::store::StoreError) -> QueueError {
    QueueError::unavailable(e.to_string(), crate::error::cause(e))
}

#[async_trait]
impl JobQueue for DbQueue {
    fn kind(&self) -> QueueBackend {
        QueueBackend::Db
    }

    /// The row is the job; this only wakes the workers on this machine.
    async fn enqueue(&self, _id: UploadId) -> Result<(), QueueError> {
        wake::notify(&self.wake_dir, wake::Role::Worker);
        Ok(())
    }

    async fn receive(&self, wait: Duration, max: u32) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let woken_by = self.woken_by.get_or_init(|| wake::Listener::bind(&self.wake_dir, wake::Role::Worker));
        loop {
            let mut ids = self.store.claimable(now_millis(), max.max(1) * 4).await.map_err(unavailable)?;
            if !ids.is_empty() {
                // Spread workers over the candidates so they rarely race for one row.
                ids.shuffle(&mut rand::rng());
                ids.truncate(max.max(1) as usize);
                return Ok(ids
                    .into_iter()
                    .map(|upload_id| Delivery { upload_id, handle: None, receive_count: 1 })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let poll = tokio::time::sleep(self.poll.min(deadline - now));
            match woken_by {
                Some(w) => tokio::select! {
                    _ = poll => {}
                    _ = w.woken() => {}
                },
                None => poll.await,
            }
        }
    }

    async fn extend(&self, _d: &Delivery, _visibility: Duration) -> Result<(), QueueError> {
        Ok(())
    }

    async fn ack(&self, _d: &Delivery) -> Result<(), QueueError> {
        Ok(())
    }

    async fn release(&self, _d: &Delivery, _delay: Duration) -> Result<(), QueueError> {
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let stats = self.store.upload_stats().await.map_err(unavailable)?;
        Ok(QueueDepth {
            visible: stats.by_state.get("pending").copied().unwrap_or(0),
            in_flight: stats.by_state.get("processing").copied().unwrap_or(0),
            dead_letters: None,
        })
    }

    fn needs_reconciler(&self) -> bool {
        false
    }
}
