//! The operator's view of a running flipstack: what `GET /admin/api/status`
//! answers and the console shows. One type for both ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{EventKind, Millis, UploadId};
use crate::records::{Event, MetricsSnapshot, QueueDepth, ReadSource, Upload, WorkerInfo};

/// One thing that happened, as the admin API's event stream
/// (`GET /admin/api/events`) sends it and the console reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AdminEvent {
    /// An upload, completion, retry, failure or deletion, from the events table.
    Job {
        id: i64,
        at: Millis,
        kind: EventKind,
        upload_id: Option<UploadId>,
        person: Option<String>,
        detail: Option<String>,
    },
    /// A gallery read answered by a server.
    GalleryRead { at: Millis, person: String, source: ReadSource },
    /// Uploads were blocked or unblocked.
    Blocked { at: Millis, blocked: bool },
}

/// A worker that has not reported for this long is shown as gone.
pub const WORKER_STALE_MS: i64 = 30_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdminStatus {
    pub version: String,
    /// Milliseconds since the epoch when this answer was made.
    pub at: i64,
    pub uptime_secs: u64,
    pub blocked: bool,
    pub database: String,
    pub cache: String,
    pub blobs: String,
    /// Uploads by state (`pending`, `processing`, `done`, `failed`).
    pub uploads: BTreeMap<String, u64>,
    pub oldest_unfinished_age_secs: Option<f64>,
    pub queue: QueueStatus,
    pub metrics: MetricsSnapshot,
    pub replicas: Vec<ReplicaStatus>,
    pub workers: Vec<WorkerInfo>,
    pub recent_failures: Vec<FailureInfo>,
    /// The local worker pool of `flipstack up`, when there is one.
    pub pool: Option<PoolStatus>,
    /// An operator paused the workers: they finish the job in hand and claim nothing new.
    #[serde(default)]
    pub workers_paused: bool,
    /// Parts that did not answer while this status was made.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueStatus {
    pub kind: String,
    #[serde(flatten)]
    pub depth: QueueDepth,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub name: String,
    /// None when the replica is down or its lag is unknown.
    pub lag_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailureInfo {
    pub upload_id: i64,
    pub at: Option<i64>,
    pub reason: String,
}

/// The local supervisor's view, published through the settings table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub running: u32,
    pub backlog: u64,
    pub updated_at: i64,
}

/// The settings key the local supervisor publishes its [`PoolStatus`] under.
pub const POOL_STATUS_KEY: &str = "local_pool";

/// The settings key of an operator's desired size for the local pool (a
/// [`DesiredRequest`]), which the supervisor applies once.
pub const POOL_DESIRED_KEY: &str = "local_pool_desired";

/// The settings key that pauses every worker (`true`), read before each claim.
pub const WORKERS_PAUSED: &str = "workers_paused";

/// An operator's desired size for the local pool, as `SetDesiredCapacity`
/// is on AWS: applied now, after which the scaling policy goes on from it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DesiredRequest {
    pub desired: u32,
    /// When it was asked for; the supervisor applies each request once.
    pub at: i64,
}

/// One row of the operator's uploads view (`GET /admin/api/uploads`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadListing {
    pub upload: Upload,
    /// The owner's hashed e-mail (what the events and the cache know them by).
    pub person_hash: String,
}

/// One upload in full (`GET /admin/api/uploads/{id}`): with its events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadDetail {
    pub upload: Upload,
    pub person_hash: String,
    /// Oldest first.
    pub events: Vec<Event>,
}

/// One backup in the blob store (`GET /admin/api/backups`, newest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    /// `flipstack-YYYYMMDDTHHMMSSZ.sql`: what restore takes.
    pub name: String,
    pub bytes: u64,
    /// When it was taken (ms since the epoch, to the second).
    pub at: i64,
}

/// What a backup or a restore did (`POST /admin/api/backups`, `…/{name}/restore`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupDone {
    /// The backup written, or the one restored.
    pub name: String,
    /// Rows written into the backup, or restored from it.
    pub rows: u64,
    pub bytes: u64,
    /// A restore: the backup of the database as it was just before (undo with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// A warning or error the server logged (`GET /admin/api/logs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    pub at: i64,
    /// `WARN` or `ERROR`.
    pub level: String,
    pub target: String,
    /// The message and its fields (`error=…`).
    pub message: String,
}

impl AdminStatus {
    pub fn live_workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        let now = self.at;
        self.workers.iter().filter(move |w| now - w.heartbeat_at < WORKER_STALE_MS)
    }

    pub fn cache_hit_ratio(&self) -> Option<f64> {
        let total = self.metrics.cache_hits + self.metrics.cache_misses;
        (total > 0).then(|| self.metrics.cache_hits as f64 / total as f64)
    }
}
