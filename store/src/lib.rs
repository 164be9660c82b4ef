//! The metadata store port: people, uploads (which are also the job queue's
//! source of truth), sessions, sign-in links, settings, workers, events and
//! completion notices.
//!
//! One implementation, `sql::SqlStore`: every statement and the job state
//! machine, over a thin driver (`driver`) for [`sqlite`] (embedded default) or
//! [`mysql`] (a MariaDB primary with read replicas); where their SQL differs is
//! named in `dialect`. Both run the same migrations (`core/migrations`).

mod dialect;
pub(crate) mod driver;
pub mod dump;
pub mod lead;
pub mod mysql;
pub mod position;
mod sql;
pub mod sqlite;

pub use flipstack_domain::domain::{EventKind, StoreBackend, WorkerStatus};
use flipstack_domain::error::{Cause, cause};
pub use flipstack_domain::records::{
    Event, FlipOutcome, GalleryItem, GalleryPage, Person, ReadSource, Upload, WorkerInfo,
};
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use position::ReplicationPos;

use flipstack_domain::domain::{DisplayName, Email, ImageFormat, Millis, PersonId, TokenHash, UploadId};

refinery::embed_migrations!("migrations");

/// The tables, in the order a dump writes and a restore reads them.
pub const TABLES: &[&str] =
    &["people", "uploads", "sessions", "signin_tokens", "settings", "workers", "events", "notices"];

/// The schema's SQL, one migration after another (what a dump starts with).
pub fn schema_sql() -> Vec<(String, String)> {
    let runner = migrations::runner();
    // Embedded in file-name order, where V10 sorts before V2: apply order is by version.
    let mut all: Vec<_> = runner.get_migrations().iter().collect();
    all.sort_by_key(|m| m.version());
    all.into_iter().map(|m| (m.name().to_owned(), m.sql().unwrap_or_default().to_owned())).collect()
}

/// A failure of the metadata store. `source()` is the driver's error
/// (rusqlite, mysql_async, refinery, I/O) where there is one; see crate::error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer or refused the connection; the caller can retry.
    #[error("the database is unavailable: {message}")]
    Unavailable { message: String, source: Option<Cause> },
    #[error("that e-mail address already has a gallery")]
    EmailTaken,
    #[error("database migration failed: {message}")]
    Migration { message: String, source: Option<Cause> },
    #[error("database error: {message}")]
    Query { message: String, source: Option<Cause> },
    #[error("the data in the database is not what flipstack expects: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Restore(String),
}

/// A name in a column that the schema's enum does not know (a row from a newer
/// flipstack, or damage).
pub(crate) fn unknown_name(what: &str, name: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} {name:?}"))
}

impl StoreError {
    /// The database did not answer, with no error beneath (a timeout of ours).
    pub fn unavailable(message: impl Into<String>) -> StoreError {
        StoreError::Unavailable { message: message.into(), source: None }
    }

    /// The database did not answer: `context` says what was being done.
    pub fn unavailable_because(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Unavailable { message: format!("{context}: {e}"), source: cause(e) }
    }

    /// A statement failed, with no error beneath.
    pub fn query(message: impl Into<String>) -> StoreError {
        StoreError::Query { message: message.into(), source: None }
    }

    /// A statement failed: `context` says what was being done.
    pub fn query_because(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Query { message: format!("{context}: {e}"), source: cause(e) }
    }

    /// The migrations failed.
    pub fn migration(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Migration { message: e.to_string(), source: cause(e) }
    }

    /// The driver's error beneath this one, when it is an `E`.
    pub(crate) fn driver_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }

    /// Whether the caller can retry: the database did not answer or refused.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a write leaves behind: the primary's replication position after it,
/// for read-your-writes on the replicas (`None` where there are no replicas).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReceipt {
    pub position: Option<ReplicationPos>,
}

/// Where a read may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    Primary,
    /// A healthy replica that has applied at least this position (it is waited
    /// for, briefly); the primary when there is none.
    Replica {
        at_least: Option<ReplicationPos>,
    },
}

/// A gallery page read, and where it came from.
#[derive(Debug, Clone)]
pub struct PageRead {
    pub page: GalleryPage,
    pub source: ReadSource,
    /// When read from the primary: its position just after the read, which a
    /// later replica read must reach to show at least as much.
    pub position: Option<ReplicationPos>,
}

pub enum NewOwner {
    Existing(PersonId),
    /// The first upload of an e-mail address creates its gallery; fails with
    /// [`StoreError::EmailTaken`] when another browser got there first.
    Create {
        id: PersonId,
        email: Email,
    },
}

pub struct NewSession {
    pub token_hash: TokenHash,
    pub person_id: PersonId,
    pub expires_at: Millis,
    /// Made by a mailed sign-in link (control of the address proven), not by a first upload.
    pub proven: bool,
}

pub struct NewUpload {
    pub id: UploadId,
    pub name: DisplayName,
    pub format: ImageFormat,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    /// The accepting request's W3C traceparent, when traces are exported.
    pub trace_parent: Option<String>,
}

/// An accepted upload, written in one transaction with its owner and session.
pub struct AcceptUpload {
    pub upload: NewUpload,
    pub owner: NewOwner,
    pub session: Option<NewSession>,
    pub person_hash: String,
    /// The form's "mail me when my pictures are flipped": remembered for the
    /// person, turned on or off with the upload (see [`Notices`]); `None`
    /// leaves the remembered choice as it is (the form could not show it).
    pub notice: Option<bool>,
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub person_id: PersonId,
    pub email: Email,
    pub expires_at: Millis,
    /// See [`NewSession::proven`].
    #[serde(default)]
    pub proven: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigninOutcome {
    SignedIn(Person),
    AlreadyUsed,
    Expired,
    Unknown,
}

/// How a failed attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again at this time.
    RetryAt(Millis),
    /// Give up: the upload is `failed` with the reason.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub person_id: PersonId,
    /// The owner's hashed e-mail: the gallery cache's key.
    pub person_hash: String,
    pub receipt: WriteReceipt,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStats {
    pub by_state: BTreeMap<String, u64>,
    /// Creation time of the oldest upload still waiting to be flipped.
    pub oldest_unfinished_at: Option<Millis>,
}

impl UploadStats {
    /// From the rows of the stats query: (state, count, oldest unfinished in that state).
    pub(crate) fn from_rows(rows: Vec<(String, i64, Option<Millis>)>) -> UploadStats {
        let mut stats = UploadStats::default();
        for (state, n, oldest) in rows {
            stats.by_state.insert(state, n as u64);
            stats.oldest_unfinished_at = match (stats.oldest_unfinished_at, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        stats
    }

    /// Distinct jobs waiting or in hand (pending + processing rows): the
    /// backlog the fleet scales on, which duplicate queue messages never inflate.
    pub fn unfinished(&self) -> u64 {
        ["pending", "processing"].iter().filter_map(|s| self.by_state.get(*s)).sum()
    }
}

/// A fleet-wide duty held by one process at a time (see [`Jobs::try_lead`]).
#[async_trait]
pub trait Leadership: Send + Sync {
    /// False once the lock is lost (its connection dropped, the primary
    /// restarted): the holder stops its duty and tries to lead again later.
    async fn still_held(&mut self) -> bool;
}

/// What the operator's uploads view asks for; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadFilter {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub format: String,
    /// Part of the failure reason.
    #[serde(default)]
    pub reason: String,
}

impl UploadFilter {
    /// The state, format and LIKE pattern of the reason that `find_uploads` binds.
    pub(crate) fn params(&self) -> (String, String, String) {
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            // `!` escapes LIKE's wildcards in what the operator typed.
            let escaped = self.reason.replace('!', "!!").replace('%', "!%").replace('_', "!_");
            format!("%{escaped}%")
        };
        (self.state.clone(), self.format.clone(), reason)
    }
}

/// When a person's finished batch may be mailed (see [`Notices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeDue {
    /// Their last notice was sent at or before this (or never): the interval
    /// between notices has passed.
    pub quiet_since: Millis,
    /// Nothing of theirs finished after this: the page's script uploads a
    /// batch one picture after another, and a round that came between one
    /// picture's flip and the next one's upload would split the batch.
    pub settled_before: Millis,
}

/// A completion notice taken to be sent: one mail for the batch of a
/// person's uploads that finished since the last one. Taking it already
/// recorded it (see [`Notices::take_notice`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeBatch {
    pub person_id: PersonId,
    pub email: Email,
    /// Pictures of the batch that were flipped.
    pub ready: u64,
    /// Pictures of the batch that could not be flipped.
    pub failed: u64,
    /// When this notice was recorded as sent.
    pub sent_at: Millis,
    /// The batch's newest finish time, now covered.
    pub covered_until: Millis,
    /// What taking it replaced: `give_back_notice` restores it.
    pub(crate) before: (Option<Millis>, Millis),
}

/// A value in a dumped row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

pub type DumpRow = (&'static str, Vec<String>, Vec<SqlValue>);

/// People, their uploads and galleries.
#[async_trait]
pub trait Uploads: Send + Sync + 'static {
    async fn person_by_email(&self, email: &Email) -> StoreResult<Option<Person>>;
    async fn accept_upload(&self, accept: AcceptUpload) -> StoreResult<WriteReceipt>;
    async fn upload(&self, id: UploadId) -> StoreResult<Option<Upload>>;
    /// The owner and format of an upload, which never change.
    async fn upload_owner(&self, id: UploadId) -> StoreResult<Option<(PersonId, ImageFormat)>>;
    async fn gallery_page(&self, person: PersonId, offset: u64, limit: u64, from: ReadFrom) -> StoreResult<PageRead>;
    /// Removes an upload of this person with its events; returns it so its blobs can go too.
    async fn delete_upload(
        &self,
        id: UploadId,
        person: PersonId,
        person_hash: &str,
    ) -> StoreResult<Option<(Upload, WriteReceipt)>>;
    /// Bytes a person's pictures take in the blob store (originals and flips).
    async fn person_usage(&self, person: PersonId) -> StoreResult<u64>;
    /// The newest uploads that match, each with its owner's hashed e-mail.
    async fn find_uploads(&self, filter: &UploadFilter, limit: u32) -> StoreResult<Vec<(Upload, String)>>;
    /// Which of `ids` have an upload row, read on the primary.
    async fn existing_uploads(&self, ids: &[UploadId]) -> StoreResult<std::collections::HashSet<UploadId>>;
}

/// The job life cycle; every change is conditional, so a job delivered twice is done once.
#[async_trait]
pub trait Jobs: Send + Sync + 'static {
    /// Takes the job when it is due (pending) or its worker's lease ran out.
    async fn claim(&self, id: UploadId, owner: &str, now: Millis, lease_until: Millis) -> StoreResult<Option<Upload>>;
    async fn renew_lease(&self, id: UploadId, owner: &str, lease_until: Millis) -> StoreResult<bool>;
    async fn complete(
        &self,
        id: UploadId,
        owner: &str,
        outcome: &FlipOutcome,
        now: Millis,
    ) -> StoreResult<Option<StateChange>>;
    async fn fail_attempt(
        &self,
        id: UploadId,
        owner: &str,
        reason: &str,
        failure: Failure,
        now: Millis,
    ) -> StoreResult<Option<StateChange>>;
    /// Marks an unfinished upload failed whoever holds it (dead-letter queue, claim limit).
    async fn give_up(&self, id: UploadId, reason: &str, now: Millis) -> StoreResult<Option<StateChange>>;
    /// Jobs a worker may claim now, oldest first.
    async fn claimable(&self, now: Millis, limit: u32) -> StoreResult<Vec<UploadId>>;
    /// Unfinished jobs last sent to the queue before `cutoff` and not leased now.
    async fn unqueued(&self, now: Millis, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>>;
    async fn mark_enqueued(&self, id: UploadId, now: Millis) -> StoreResult<()>;
    /// Pending jobs recorded before `cutoff` whose message was never
    /// confirmed sent (the send failed, or the server died around it) and
    /// that no worker ever claimed (a claim proves a message existed).
    async fn unsent(&self, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>>;
    /// Takes the fleet-wide lock of `duty` without waiting: `Some` for the one
    /// process that holds it. The database frees it when the holder's
    /// connection or process dies (MySQL `GET_LOCK`; a file lock beside an
    /// SQLite database).
    async fn try_lead(&self, duty: &str) -> StoreResult<Option<Box<dyn Leadership>>>;
    async fn upload_stats(&self) -> StoreResult<UploadStats>;
    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<Upload>>;
    /// An operator's retry: a `failed` upload goes back to `pending` with its
    /// attempts counted from zero (a `retried` event records it). None when it
    /// is not failed (already retried, done, or gone).
    async fn retry_upload(&self, id: UploadId, now: Millis) -> StoreResult<Option<StateChange>>;
}

/// Sessions and sign-in links.
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    async fn create_session(&self, session: NewSession, now: Millis) -> StoreResult<()>;
    async fn session(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<SessionInfo>>;
    async fn delete_session(&self, token_hash: &TokenHash) -> StoreResult<()>;
    async fn create_signin_token(
        &self,
        token_hash: &TokenHash,
        person: PersonId,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<()>;
    /// Uses a sign-in link once. The first link used for a person verifies
    /// their gallery and, in the same transaction, ends every session of
    /// theirs that never proved control of the address (a squatter's).
    async fn consume_signin_token(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<SigninOutcome>;
    /// The address an unused, unexpired sign-in link is for (shown before it is used).
    async fn signin_token_email(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<Email>>;
    /// Ends every session of a person but `keep`; returns the ended ones (for the cache).
    async fn delete_other_sessions(&self, person: PersonId, keep: &TokenHash) -> StoreResult<Vec<TokenHash>>;
    /// Deletes expired sessions and sign-in links; returns how many went.
    async fn purge_expired(&self, now: Millis) -> StoreResult<u64>;
}

/// Settings shared by every instance (uploads blocked, workers paused, the cookie secret).
#[async_trait]
pub trait Settings: Send + Sync + 'static {
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    async fn set_setting(&self, key: &str, value: &str, now: Millis) -> StoreResult<()>;
    /// Stores `value` unless the key has one; returns the stored value.
    async fn setting_or_init(&self, key: &str, value: &str, now: Millis) -> StoreResult<String>;
}

/// The workers' heartbeats, for the operator's view.
#[async_trait]
pub trait Workers: Send + Sync + 'static {
    async fn worker_heartbeat(&self, worker: &WorkerInfo) -> StoreResult<()>;
    async fn remove_worker(&self, id: &str) -> StoreResult<()>;
    async fn workers(&self) -> StoreResult<Vec<WorkerInfo>>;
}

/// What happened to uploads, in order (the event tail, the operator's view).
#[async_trait]
pub trait Events: Send + Sync + 'static {
    async fn events_since(&self, after_id: i64, limit: u32) -> StoreResult<Vec<Event>>;
    async fn events_for_upload(&self, id: UploadId) -> StoreResult<Vec<Event>>;
}

/// Completion notices: whether a person asked for a mail when their pictures
/// are flipped, and which finished uploads a notice already covered.
#[async_trait]
pub trait Notices: Send + Sync + 'static {
    /// Whether the person asked for notices, and when the last one was sent.
    async fn notice_wish(&self, person: PersonId) -> StoreResult<(bool, Option<Millis>)>;
    /// Turns a person's notices on or off. Turning them on covers every
    /// upload already finished: only what finishes from now on is announced.
    async fn set_notice_wanted(&self, person: PersonId, wanted: bool, now: Millis) -> StoreResult<()>;
    /// People who asked, whose last notice was sent at or before
    /// `due.quiet_since` (or never), with uploads finished since it, none
    /// finished after `due.settled_before`, and none pending or processing:
    /// a batch is ready for them.
    async fn due_notices(&self, due: NoticeDue, limit: u32) -> StoreResult<Vec<PersonId>>;
    /// Takes a person's ready batch to mail it, checking again what
    /// [`Notices::due_notices`] found, and records it as sent in the same
    /// transaction with a conditional update: of two takers, one gets it.
    /// `None` when there is nothing to send (or another process took it).
    async fn take_notice(&self, person: PersonId, due: NoticeDue, now: Millis) -> StoreResult<Option<NoticeBatch>>;
    /// Gives a taken batch back (its mail could not be sent), unless
    /// something changed the person's notice since: the next round sends it.
    async fn give_back_notice(&self, batch: &NoticeBatch) -> StoreResult<bool>;
}

/// `flipstack db dump` and its restore.
#[async_trait]
pub trait DumpRestore: Send + Sync + 'static {
    /// Streams every row of [`TABLES`] from one consistent snapshot.
    async fn dump_rows(&self, out: tokio::sync::mpsc::Sender<DumpRow>) -> StoreResult<u64>;
    async fn row_count(&self) -> StoreResult<u64>;
    /// Writes rows into the tables (emptying them first when `replace`), in one transaction.
    async fn restore_rows(&self, rows: Vec<DumpRow>, replace: bool) -> StoreResult<u64>;
}

/// The whole metadata store: every role, on one database (`sql::SqlStore` over
/// SQLite or MariaDB). Callers hold `Arc<dyn MetadataStore>`; a role's
/// methods are callable on it without naming the role.
#[async_trait]
pub trait MetadataStore: Uploads + Jobs + Sessions + Settings + Workers + Events + Notices + DumpRestore {
    fn backend(&self) -> StoreBackend;
    /// Is the primary answering?
    async fn ping(&self) -> StoreResult<()>;
    /// How far behind the primary each replica is, in milliseconds (None when unknown or down).
    async fn replica_lag(&self) -> Vec<(String, Option<u64>)>;
}

/// Which database a statement went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbTarget {
    Primary,
    Replica,
}

/// What the store counts, for the process's metrics: a port, so the store
/// knows no metrics library (the adapters' `Metrics` implements it).
pub trait StoreMetrics: Send + Sync + 'static {
    /// A session for a statement or transaction was taken on `target`.
    fn db_query(&self, target: DbTarget);
    /// A replica was passed over for a read (`down`, `lagging`, `none_healthy`, …).
    fn replica_skip(&self, reason: &'static str);
    /// A read waited `seconds` for a replica to apply a position; `reached` unless it timed out.
    fn gtid_wait(&self, seconds: f64, reached: bool);
}

/// Counts nothing: for tools and tests that have no metrics to feed.
pub struct NoMetrics;

impl StoreMetrics for NoMetrics {
    fn db_query(&self, _: DbTarget) {}
    fn replica_skip(&self, _: &'static str) {}
    fn gtid_wait(&self, _: f64, _: bool) {}
}

/// Opens the store a URL names and brings its schema up to date.
pub async fn connect(
    primary_url: &str,
    replica_urls: &[String],
    metrics: Arc<dyn StoreMetrics>,
    replica_wait: std::time::Duration,
    replica_max_lag: std::time::Duration,
) -> StoreResult<Arc<dyn MetadataStore>> {
    if let Some(path) = primary_url.strip_prefix("sqlite://") {
        if !replica_urls.is_empty() {
            return Err(StoreError::query(
                "read replicas need a MySQL/MariaDB primary; unset FLIPSTACK_REPLICA_URLS or use a mysql:// database",
            ));
        }
        let driver = sqlite::SqliteDriver::open(std::path::Path::new(path), metrics).await?;
        Ok(Arc::new(sql::SqlStore::new(driver)))
    } else if primary_url.starts_with("mysql://") {
        let driver =
            mysql::MariaDbDriver::connect(primary_url, replica_urls, metrics, replica_wait, replica_max_lag).await?;
        Ok(Arc::new(sql::SqlStore::new(driver)))
    } else {
        Err(StoreError::query(format!(
            "FLIPSTACK_DATABASE_URL must start with sqlite:// or mysql://, not {:?}",
            primary_url.split("://").next().unwrap_or("")
        )))
    }
}

/// Cuts a failure reason to what the column holds, on a character boundary.
pub(crate) fn clip_reason(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_control()).take(480).collect()
}
