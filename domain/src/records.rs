//! The records the store returns and the admin API sends: plain data, one
//! type for the server, the worker and the console (serde names are the
//! wire's and the schema's).

use serde::{Deserialize, Serialize};

use crate::domain::{
    DisplayName, Email, EventKind, ImageFormat, Millis, PersonId, UploadId, UploadState, WorkerStatus,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: PersonId,
    pub email: Email,
    pub created_at: Millis,
}

/// What the worker wrote for a finished upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipOutcome {
    pub flipped_bytes: u64,
    pub flipped_width: u32,
    pub flipped_height: u32,
    /// How the flip was made, e.g. `jpeg-lossless`, `jpeg-reencode`, `pixels`.
    pub method: String,
    pub thumb_width: Option<u32>,
    pub thumb_height: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: UploadId,
    pub person_id: PersonId,
    pub name: DisplayName,
    pub format: ImageFormat,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub state: UploadState,
    pub attempts: u32,
    pub claims: u32,
    pub next_attempt_at: Millis,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub failure_reason: Option<String>,
    pub outcome: Option<FlipOutcome>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    /// The W3C traceparent of the request that accepted it (traces exported
    /// over OTLP): the worker's job continues that trace.
    #[serde(default)]
    pub trace_parent: Option<String>,
}

/// One picture as the gallery shows it (what the gallery cache holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GalleryItem {
    pub id: UploadId,
    pub name: DisplayName,
    pub format: ImageFormat,
    pub state: UploadState,
    pub failure_reason: Option<String>,
    pub width: u32,
    pub height: u32,
    pub flipped_width: Option<u32>,
    pub flipped_height: Option<u32>,
    pub thumb_width: Option<u32>,
    pub thumb_height: Option<u32>,
    pub bytes: u64,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GalleryPage {
    pub items: Vec<GalleryItem>,
    pub total: u64,
    /// Uploads of this person still pending or processing (on any page).
    pub unfinished: u64,
}

crate::domain::named_enum! {
    /// Which database a read went to.
    pub enum ReadSource {
        Cache = "cache",
        Replica = "replica",
        Primary = "primary",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: Millis,
    pub heartbeat_at: Millis,
    pub status: WorkerStatus,
    pub current_upload: Option<UploadId>,
    pub jobs_done: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: Millis,
    pub kind: EventKind,
    pub upload_id: Option<UploadId>,
    pub person_hash: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Waiting to be taken.
    pub visible: u64,
    /// Taken by a worker, not finished.
    pub in_flight: u64,
    /// In the dead-letter queue (SQS only).
    pub dead_letters: Option<u64>,
}

/// The numbers the admin API, the console and CloudWatch use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MetricsSnapshot {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_errors: u64,
    pub reads_cache: u64,
    pub reads_replica: u64,
    pub reads_primary: u64,
    pub db_queries_primary: u64,
    pub db_queries_replica: u64,
    pub queue_wait_seconds_sum: f64,
    pub queue_wait_count: u64,
    pub job_seconds_sum: f64,
    pub job_count: u64,
    /// Jobs that ended `failed` (permanently) and attempts put back for a retry.
    #[serde(default)]
    pub jobs_failed: u64,
    #[serde(default)]
    pub jobs_retried: u64,
}
