//! The one SQL store: every statement and the job state machine, written once
//! over a [`Driver`] (SQLite or MariaDB). What differs between their SQL comes
//! from [`Dialect`]; what has no SQL to share (locks, replicas) from the driver.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::dialect::{Dialect, Tx};
use super::driver::{self, Driver, Row, RowSink, Session, Value, args};
use super::*;
use flipstack_domain::domain::{UploadState, new_id, now_millis};

/// A failed attempt that will be tried again at `next_attempt_at`.
/// Parameters: next_attempt_at, reason, now, id, owner.
const FAIL_RETRY: &str = "UPDATE uploads SET state = 'pending', attempts = attempts + 1, next_attempt_at = ?, \
     lease_owner = NULL, lease_until = NULL, failure_reason = ?, updated_at = ?, finished_at = NULL \
     WHERE id = ? AND state = 'processing' AND lease_owner = ?";

/// A failed attempt that ends the job; `next_attempt_at` becomes the failure's
/// time. Parameters: now (next_attempt_at), reason, now (updated_at), now
/// (finished_at), id, owner.
const FAIL_PERMANENT: &str = "UPDATE uploads SET state = 'failed', attempts = attempts + 1, next_attempt_at = ?, \
     lease_owner = NULL, lease_until = NULL, failure_reason = ?, updated_at = ?, finished_at = ? \
     WHERE id = ? AND state = 'processing' AND lease_owner = ?";

/// Marks an unfinished upload failed whoever holds it. Parameters: reason, now, now, id.
const GIVE_UP: &str = "UPDATE uploads SET state = 'failed', lease_owner = NULL, lease_until = NULL, failure_reason = ?, \
     updated_at = ?, finished_at = ? WHERE id = ? AND state IN ('pending', 'processing')";

/// A finished flip. Parameters: the outcome's six values, now, now, id, owner.
const COMPLETE: &str = "UPDATE uploads SET state = 'done', lease_owner = NULL, lease_until = NULL, failure_reason = NULL, \
     flipped_bytes = ?, flipped_width = ?, flipped_height = ?, flip_method = ?, thumb_width = ?, \
     thumb_height = ?, updated_at = ?, finished_at = ? \
     WHERE id = ? AND state = 'processing' AND lease_owner = ?";

/// An operator's retry of a failed upload (see `Jobs::retry_upload`);
/// binds now (next attempt), now (enqueued), now (updated), id.
const RETRY_UPLOAD: &str = "UPDATE uploads SET state = 'pending', attempts = 0, claims = 0, next_attempt_at = ?, \
    lease_owner = NULL, lease_until = NULL, failure_reason = NULL, finished_at = NULL, enqueued_at = ?, updated_at = ? \
    WHERE id = ? AND state = 'failed'";

/// Upload counts by state and the oldest unfinished upload, in one statement:
/// one snapshot (a count and an age never come from two moments).
const UPLOAD_STATS: &str = "SELECT state, COUNT(*), \
     MIN(CASE WHEN state IN ('pending', 'processing') THEN created_at END) FROM uploads GROUP BY state";

/// What `purge_expired` deletes, with how far before now each cut-off is, in
/// one transaction: sessions at expiry; used or expired sign-in links a day
/// later (a late click still gets a clear answer); events after a week;
/// workers silent for ten minutes.
const PURGES: [(&str, i64); 4] = [
    ("DELETE FROM sessions WHERE expires_at <= ?", 0),
    ("DELETE FROM signin_tokens WHERE expires_at <= ?", 86_400_000),
    ("DELETE FROM events WHERE at <= ?", 7 * 86_400_000),
    ("DELETE FROM workers WHERE heartbeat_at <= ?", 600_000),
];

const UPLOAD_COLUMNS: &str = "id, person_id, display_name, format, bytes, width, height, state, attempts, claims, \
    next_attempt_at, lease_owner, lease_until, failure_reason, flipped_bytes, flipped_width, flipped_height, \
    flip_method, thumb_width, thumb_height, created_at, updated_at, finished_at, trace_parent";

const GALLERY_COLUMNS: &str = "id, display_name, format, state, failure_reason, width, height, \
    flipped_width, flipped_height, thumb_width, thumb_height, bytes, created_at";

const WORKER_COLUMNS: &str = "id, host, pid, started_at, heartbeat_at, status, current_upload, jobs_done";

const EVENT_COLUMNS: &str = "id, at, kind, upload_id, person_hash, detail";

/// Due pending jobs, and jobs whose worker's lease ran out. Binds now twice.
const CLAIMABLE_WHERE: &str =
    "((state = 'pending' AND next_attempt_at <= ?) OR (state = 'processing' AND lease_until < ?))";

const SESSION_INSERT: &str =
    "INSERT INTO sessions (token_hash, person_id, created_at, expires_at, proven) VALUES (?, ?, ?, ?, ?)";

const EVENT_INSERT: &str =
    "INSERT INTO events (id, at, kind, upload_id, person_hash, detail) VALUES (?, ?, ?, ?, ?, ?)";

const SETTING_SELECT: &str = "SELECT setting_value FROM settings WHERE setting_key = ?";

const SETTING_INSERT: &str = "INSERT INTO settings (setting_key, setting_value, updated_at) VALUES (?, ?, ?)";

/// Pending jobs never confirmed sent and never claimed; see `Jobs::unsent`.
const UNSENT_JOBS: &str = "SELECT id FROM uploads WHERE state = 'pending' AND claims = 0 \
    AND enqueued_at IS NULL AND created_at < ? ORDER BY id LIMIT ?";

/// See `Jobs::unqueued`. Binds now, cutoff, cutoff, limit.
const UNQUEUED_JOBS: &str = "SELECT id FROM uploads \
    WHERE (state = 'pending' OR (state = 'processing' AND lease_until < ?)) \
    AND ((enqueued_at IS NULL AND created_at < ?) OR enqueued_at < ?) ORDER BY id LIMIT ?";

/// Turns a person's notices on or off (when they have a row: see
/// [`write_notice_wish`]). Turning them on covers every upload finished so
/// far. `covered_until` is assigned first: MariaDB assigns left to right, so
/// after `wanted = ?` its CASE would read the new value. Binds person,
/// wanted, now, person.
const NOTICE_WISH: &str = "UPDATE notices SET covered_until = CASE WHEN wanted = 0 \
    THEN (SELECT COALESCE(MAX(finished_at), 0) FROM uploads WHERE person_id = ?) ELSE covered_until END, \
    wanted = ?, updated_at = ? WHERE person_id = ?";

/// A person's notice row, off until [`NOTICE_WISH`] turns it on.
const NOTICE_INSERT: &str =
    "INSERT INTO notices (person_id, wanted, covered_until, sent_at, updated_at) VALUES (?, 0, 0, NULL, ?)";

/// See `Notices::due_notices`. Binds quiet_since, settled_before, limit.
const DUE_NOTICES: &str = "SELECT n.person_id FROM notices n \
    WHERE n.wanted = 1 AND (n.sent_at IS NULL OR n.sent_at <= ?) \
    AND EXISTS (SELECT 1 FROM uploads u WHERE u.person_id = n.person_id \
        AND u.state IN ('done', 'failed') AND u.finished_at > n.covered_until) \
    AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.person_id = n.person_id \
        AND (u.state IN ('pending', 'processing') OR u.finished_at > ?)) \
    ORDER BY n.person_id LIMIT ?";

/// A person's uploads that a notice would speak of or wait for: unfinished,
/// or finished after what was covered. Binds person, covered_until.
const NOTICE_BATCH: &str = "SELECT state, COUNT(*), MAX(finished_at) FROM uploads WHERE person_id = ? \
    AND (state IN ('pending', 'processing') OR (state IN ('done', 'failed') AND finished_at > ?)) GROUP BY state";

/// Records a notice as sent, only if the row is still what was read (so of
/// two takers one changes it). Binds sent_at, covered_until, now, person, the
/// covered_until read.
const NOTICE_TAKE: &str = "UPDATE notices SET sent_at = ?, covered_until = ?, updated_at = ? \
    WHERE person_id = ? AND wanted = 1 AND covered_until = ?";

/// Restores a taken notice whose mail was not sent, if nothing changed it
/// since. Binds sent_at, covered_until and now as before, person, the
/// taken sent_at and covered_until.
const NOTICE_GIVE_BACK: &str = "UPDATE notices SET sent_at = ?, covered_until = ?, updated_at = ? \
    WHERE person_id = ? AND sent_at = ? AND covered_until = ?";

/// How many ids one `IN (…)` list holds.
const IN_LIST_CHUNK: usize = 500;

/// `on_primary!(self, |s| body)`: runs `body`, the inside of an async block
/// that owns what it uses, with the primary's session as `s`; its value is
/// the operation's result.
macro_rules! on_primary {
    ($store:expr, |$s:ident| $body:expr) => {
        $store.primary(move |$s| Box::pin(async move { $body })).await
    };
}

/// `in_transaction!(self, Tx::Write, |s| body)`: [`on_primary!`] inside a
/// transaction, committed when `body` returns a value, rolled back when it fails.
macro_rules! in_transaction {
    ($store:expr, $tx:expr, |$s:ident| $body:expr) => {
        $store.transaction($tx, move |$s| Box::pin(async move { $body })).await
    };
}

/// The metadata store on one database, whichever driver speaks to it.
pub(crate) struct SqlStore<D> {
    driver: D,
}

impl<D: Driver> SqlStore<D> {
    pub fn new(driver: D) -> SqlStore<D> {
        SqlStore { driver }
    }

    /// Runs an operation on the primary.
    async fn primary<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&'s mut D::Session) -> BoxFuture<'s, StoreResult<T>> + Send + 'static,
    {
        self.driver.on_primary(driver::work(work)).await
    }

    /// Runs `work` in a transaction on the primary: committed when it returns
    /// a value, rolled back when it fails.
    async fn transaction<T, F>(&self, tx: Tx, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&'s mut D::Session) -> BoxFuture<'s, StoreResult<T>> + Send + 'static,
    {
        on_primary!(self, |s| {
            s.begin(tx).await?;
            let result = work(s).await;
            s.finish(result).await
        })
    }

    /// Upload ids a one-column `SELECT id` returns.
    async fn ids(&self, query: &'static str, params: Vec<Value>) -> StoreResult<Vec<UploadId>> {
        on_primary!(self, |s| upload_ids(s.query(query, &params).await?))
    }
}

/// The dialect the driver's sessions speak.
fn dialect<D: Driver>() -> Dialect {
    <D::Session as Session>::DIALECT
}

fn upload_ids(rows: Vec<Row>) -> StoreResult<Vec<UploadId>> {
    rows.iter().map(|r| r.get::<UploadId>(0)).collect()
}

/// The first row, if there is one.
fn first(rows: Vec<Row>) -> Option<Row> {
    rows.into_iter().next()
}

fn upload_from(r: &Row) -> StoreResult<Upload> {
    let id: UploadId = r.get(0)?;
    let format: String = r.get(3)?;
    let state: String = r.get(7)?;
    let format =
        ImageFormat::parse(&format).ok_or_else(|| StoreError::Corrupt(format!("upload {id} has format {format:?}")))?;
    let state =
        UploadState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("upload {id} has state {state:?}")))?;
    let flipped: (Option<i64>, Option<i64>, Option<i64>) = (r.get(14)?, r.get(15)?, r.get(16)?);
    let outcome = match flipped {
        (Some(b), Some(w), Some(h)) => Some(FlipOutcome {
            flipped_bytes: b as u64,
            flipped_width: w as u32,
            flipped_height: h as u32,
            method: r.get::<Option<String>>(17)?.unwrap_or_default(),
            thumb_width: r.get::<Option<i64>>(18)?.map(|v| v as u32),
            thumb_height: r.get::<Option<i64>>(19)?.map(|v| v as u32),
        }),
        _ => None,
    };
    Ok(Upload {
        id,
        person_id: r.get(1)?,
        name: DisplayName::from_stored(r.get(2)?),
        format,
        bytes: r.get::<i64>(4)? as u64,
        width: r.get::<i64>(5)? as u32,
        height: r.get::<i64>(6)? as u32,
        state,
        attempts: r.get::<i64>(8)? as u32,
        claims: r.get::<i64>(9)? as u32,
        next_attempt_at: r.get(10)?,
        lease_owner: r.get(11)?,
        lease_until: r.get(12)?,
        failure_reason: r.get(13)?,
        outcome,
        created_at: r.get(20)?,
        updated_at: r.get(21)?,
        finished_at: r.get(22)?,
        trace_parent: r.get(23)?,
    })
}

fn gallery_item_from(r: &Row) -> StoreResult<GalleryItem> {
    let id: UploadId = r.get(0)?;
    let format: String = r.get(2)?;
    let state: String = r.get(3)?;
    let small = |i: usize| -> StoreResult<Option<u32>> { Ok(r.get::<Option<i64>>(i)?.map(|v| v as u32)) };
    Ok(GalleryItem {
        id,
        name: DisplayName::from_stored(r.get(1)?),
        format: ImageFormat::parse(&format)
            .ok_or_else(|| StoreError::Corrupt(format!("upload {id} has format {format:?}")))?,
        state: UploadState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("upload {id} has state {state:?}")))?,
        failure_reason: r.get(4)?,
        width: r.get::<i64>(5)? as u32,
        height: r.get::<i64>(6)? as u32,
        flipped_width: small(7)?,
        flipped_height: small(8)?,
        thumb_width: small(9)?,
        thumb_height: small(10)?,
        bytes: r.get::<i64>(11)? as u64,
        created_at: r.get(12)?,
    })
}

fn worker_from(r: &Row) -> StoreResult<WorkerInfo> {
    let status: String = r.get(5)?;
    Ok(WorkerInfo {
        id: r.get(0)?,
        host: r.get(1)?,
        pid: r.get::<i64>(2)? as u32,
        started_at: r.get(3)?,
        heartbeat_at: r.get(4)?,
        status: WorkerStatus::parse(&status).ok_or_else(|| unknown_name("worker status", &status))?,
        current_upload: r.get::<Option<UploadId>>(6)?,
        jobs_done: r.get::<i64>(7)? as u64,
    })
}

fn event_from(r: &Row) -> StoreResult<Event> {
    let kind: String = r.get(2)?;
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: EventKind::parse(&kind).ok_or_else(|| unknown_name("event kind", &kind))?,
        upload_id: r.get::<Option<UploadId>>(3)?,
        person_hash: r.get(4)?,
        detail: r.get(5)?,
    })
}

fn stored_email(email: &str) -> StoreResult<Email> {
    Email::parse(email).map_err(|e| StoreError::Corrupt(format!("stored e-mail: {e}")))
}

fn email_hash(email: &str) -> String {
    Email::parse(email).map(|e| e.hashed_id()).unwrap_or_default()
}

/// A dumped row's values; see [`Dialect::text_arrives_as_bytes`].
fn dump_values(dialect: Dialect, table: &str, columns: &[String], row: Row) -> StoreResult<Vec<SqlValue>> {
    row.0
        .into_iter()
        .zip(columns)
        .map(|(value, column)| match value {
            Value::Null => Ok(SqlValue::Null),
            Value::Int(n) => Ok(SqlValue::Int(n)),
            Value::Text(t) => Ok(SqlValue::Text(t)),
            Value::Bytes(b) if dialect.text_arrives_as_bytes() => {
                Ok(SqlValue::Text(String::from_utf8_lossy(&b).into_owned()))
            }
            Value::Bytes(_) => Err(StoreError::Corrupt(format!("{table}.{column} holds a Blob value"))),
        })
        .collect()
}

async fn insert_event<S: Session>(
    s: &mut S,
    now: Millis,
    kind: EventKind,
    upload: UploadId,
    person_hash: Option<&str>,
    detail: Option<&str>,
) -> StoreResult<()> {
    s.exec(EVENT_INSERT, args![new_id(), now, kind.as_str(), upload.get(), person_hash, detail]).await?;
    Ok(())
}

/// Remembers whether a person wants completion notices: a row is made the
/// first time they ask (made off, so turning it on is the one UPDATE that
/// decides what is covered); asking again changes nothing, unasking turns
/// it off. Never counts on affected rows (MariaDB counts only changed ones).
async fn write_notice_wish<S: Session>(s: &mut S, person: PersonId, wanted: bool, now: Millis) -> StoreResult<()> {
    if wanted {
        let insert = S::DIALECT.insert_unless_present(NOTICE_INSERT, "person_id");
        s.exec(&insert, args![person.get(), now]).await?;
    }
    s.exec(NOTICE_WISH, args![person.get(), wanted, now, person.get()]).await?;
    Ok(())
}

/// The position this session's last write left on the primary.
async fn write_receipt<S: Session>(s: &mut S) -> StoreResult<WriteReceipt> {
    let Some(query) = S::DIALECT.write_position() else { return Ok(WriteReceipt::default()) };
    let position: Option<String> = match first(s.query(query, &[]).await?) {
        Some(row) => row.get(0)?,
        None => None,
    };
    Ok(WriteReceipt { position: position.and_then(|p| ReplicationPos::parse(&p)) })
}

/// One step of the job state machine: a conditional UPDATE of one upload and,
/// when it changed the row, its event, in one write transaction. `None` when
/// the upload was not in a state the change applies to.
async fn change_state<S: Session>(
    s: &mut S,
    update: &str,
    params: &[Value],
    id: UploadId,
    event: (EventKind, Option<&str>),
    now: Millis,
) -> StoreResult<Option<StateChange>> {
    s.begin(Tx::Write).await?;
    let changed = async {
        if s.exec(update, params).await? == 0 {
            return Ok(None);
        }
        let owner = first(
            s.query(
                "SELECT u.person_id, p.email FROM uploads u JOIN people p ON p.id = u.person_id WHERE u.id = ?",
                args![id.get()],
            )
            .await?,
        )
        .ok_or_else(|| StoreError::Corrupt(format!("upload {id} has no owner")))?;
        let (person, email): (PersonId, String) = (owner.get(0)?, owner.get(1)?);
        let person_hash = email_hash(&email);
        insert_event(s, now, event.0, id, Some(&person_hash), event.1).await?;
        Ok(Some((person, person_hash)))
    }
    .await;
    let Some((person, person_hash)) = s.finish(changed).await? else { return Ok(None) };
    Ok(Some(StateChange { person_id: person, person_hash, receipt: write_receipt(s).await? }))
}

/// A gallery page and its counts, from one read transaction (one snapshot).
async fn read_page<S: Session>(s: &mut S, person: PersonId, offset: u64, limit: u64) -> StoreResult<GalleryPage> {
    s.begin(Tx::Read).await?;
    let read = async {
        let rows = s
            .query(
                &format!("SELECT {GALLERY_COLUMNS} FROM uploads WHERE person_id = ? ORDER BY id DESC LIMIT ? OFFSET ?"),
                args![person.get(), limit, offset],
            )
            .await?;
        let counts = s
            .query(
                "SELECT COUNT(*), CAST(SUM(CASE WHEN state IN ('pending', 'processing') THEN 1 ELSE 0 END) AS SIGNED) \
                 FROM uploads WHERE person_id = ?",
                args![person.get()],
            )
            .await?;
        Ok((rows, counts))
    }
    .await;
    let (rows, counts) = s.finish(read).await?;
    let items = rows.iter().map(gallery_item_from).collect::<StoreResult<Vec<_>>>()?;
    let (total, unfinished): (i64, Option<i64>) = match first(counts) {
        Some(row) => (row.get(0)?, row.get(1)?),
        None => (0, None),
    };
    Ok(GalleryPage { items, total: total as u64, unfinished: unfinished.unwrap_or(0) as u64 })
}

#[async_trait]
impl<D: Driver> Uploads for SqlStore<D> {
    async fn person_by_email(&self, email: &Email) -> StoreResult<Option<Person>> {
        let email = email.clone();
        on_primary!(self, |s| {
            let rows = s.query("SELECT id, created_at FROM people WHERE email = ?", args![email.as_str()]).await?;
            first(rows).map(|r| Ok(Person { id: r.get(0)?, email, created_at: r.get(1)? })).transpose()
        })
    }

    async fn accept_upload(&self, a: AcceptUpload) -> StoreResult<WriteReceipt> {
        on_primary!(self, |s| {
            s.begin(Tx::Write).await?;
            let written = async {
                let person_id = match &a.owner {
                    NewOwner::Existing(id) => *id,
                    NewOwner::Create { id, email } => {
                        let insert = s
                            .exec(
                                "INSERT INTO people (id, email, created_at) VALUES (?, ?, ?)",
                                args![id.get(), email.as_str(), a.now],
                            )
                            .await;
                        match insert {
                            Ok(_) => *id,
                            Err(e) if D::is_duplicate(&e) => return Err(StoreError::EmailTaken),
                            Err(e) => return Err(e),
                        }
                    }
                };
                let u = &a.upload;
                s.exec(
                    "INSERT INTO uploads (id, person_id, display_name, format, bytes, width, height, state, \
                     attempts, claims, next_attempt_at, enqueued_at, created_at, updated_at, trace_parent) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, NULL, ?, ?, ?)",
                    args![
                        u.id.get(),
                        person_id.get(),
                        u.name.as_str(),
                        u.format.as_str(),
                        u.bytes,
                        u.width,
                        u.height,
                        a.now,
                        a.now,
                        a.now,
                        u.trace_parent.as_deref()
                    ],
                )
                .await?;
                if let Some(wanted) = a.notice {
                    write_notice_wish(s, person_id, wanted, a.now).await?;
                }
                if let Some(session) = &a.session {
                    s.exec(
                        SESSION_INSERT,
                        args![
                            session.token_hash.0.as_str(),
                            session.person_id.get(),
                            a.now,
                            session.expires_at,
                            session.proven
                        ],
                    )
                    .await?;
                }
                insert_event(s, a.now, EventKind::Uploaded, u.id, Some(&a.person_hash), Some(u.format.as_str())).await
            }
            .await;
            s.finish(written).await?;
            write_receipt(s).await
        })
    }

    async fn upload(&self, id: UploadId) -> StoreResult<Option<Upload>> {
        on_primary!(self, |s| {
            let rows = s.query(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), args![id.get()]).await?;
            first(rows).map(|r| upload_from(&r)).transpose()
        })
    }

    async fn upload_owner(&self, id: UploadId) -> StoreResult<Option<(PersonId, ImageFormat)>> {
        on_primary!(self, |s| {
            let rows = s.query("SELECT person_id, format FROM uploads WHERE id = ?", args![id.get()]).await?;
            let Some(row) = first(rows) else { return Ok(None) };
            let (person, format): (PersonId, String) = (row.get(0)?, row.get(1)?);
            Ok(ImageFormat::parse(&format).map(|f| (person, f)))
        })
    }

    async fn gallery_page(&self, person: PersonId, offset: u64, limit: u64, from: ReadFrom) -> StoreResult<PageRead> {
        if let ReadFrom::Replica { at_least } = &from {
            let read = driver::work(move |s: &mut D::Session| Box::pin(read_page(s, person, offset, limit)));
            if let Some(page) = self.driver.on_replica(at_least.as_ref(), read).await {
                return Ok(PageRead { page, source: ReadSource::Replica, position: None });
            }
        }
        on_primary!(self, |s| {
            let page = read_page(s, person, offset, limit).await?;
            let position: Option<String> = match dialect::<D>().read_position() {
                Some(query) => first(s.query(query, &[]).await?).map(|r| r.get(0)).transpose()?.flatten(),
                None => None,
            };
            Ok(PageRead {
                page,
                source: ReadSource::Primary,
                position: position.and_then(|p| ReplicationPos::parse(&p)),
            })
        })
    }

    async fn delete_upload(
        &self,
        id: UploadId,
        person: PersonId,
        person_hash: &str,
    ) -> StoreResult<Option<(Upload, WriteReceipt)>> {
        let person_hash = person_hash.to_owned();
        on_primary!(self, |s| {
            s.begin(Tx::Write).await?;
            let deleted = async {
                let select = format!(
                    "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ? AND person_id = ?{}",
                    dialect::<D>().for_update()
                );
                let Some(row) = first(s.query(&select, args![id.get(), person.get()]).await?) else {
                    return Ok(None);
                };
                let upload = upload_from(&row)?;
                s.exec("DELETE FROM uploads WHERE id = ?", args![id.get()]).await?;
                s.exec("DELETE FROM events WHERE upload_id = ?", args![id.get()]).await?;
                insert_event(s, now_millis(), EventKind::Deleted, id, Some(&person_hash), None).await?;
                Ok(Some(upload))
            }
            .await;
            let Some(upload) = s.finish(deleted).await? else { return Ok(None) };
            Ok(Some((upload, write_receipt(s).await?)))
        })
    }

    async fn person_usage(&self, person: PersonId) -> StoreResult<u64> {
        on_primary!(self, |s| {
            let rows = s
                .query(
                    "SELECT CAST(COALESCE(SUM(bytes + COALESCE(flipped_bytes, 0)), 0) AS SIGNED) FROM uploads \
                     WHERE person_id = ?",
                    args![person.get()],
                )
                .await?;
            let n: Option<i64> = first(rows).map(|r| r.get(0)).transpose()?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
    }

    async fn find_uploads(&self, filter: &UploadFilter, limit: u32) -> StoreResult<Vec<(Upload, String)>> {
        let (state, format, reason) = filter.params();
        on_primary!(self, |s| {
            // Binds state twice, format twice, the reason's LIKE pattern twice
            // ('' for any) and the limit. The last column is the owner's e-mail.
            let query = format!(
                "SELECT {UPLOAD_COLUMNS}, (SELECT p.email FROM people p WHERE p.id = uploads.person_id) FROM uploads \
                 WHERE (? = '' OR state = ?) AND (? = '' OR format = ?) AND (? = '' OR failure_reason LIKE ? ESCAPE '!') \
                 ORDER BY id DESC LIMIT ?"
            );
            let rows = s.query(&query, args![&state, &state, &format, &format, &reason, &reason, limit]).await?;
            rows.iter()
                .map(|r| {
                    let email: Option<String> = r.get(24)?;
                    Ok((upload_from(r)?, email.map(|e| email_hash(&e)).unwrap_or_default()))
                })
                .collect()
        })
    }

    async fn existing_uploads(&self, ids: &[UploadId]) -> StoreResult<HashSet<UploadId>> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        on_primary!(self, |s| {
            let mut found = HashSet::new();
            for chunk in ids.chunks(IN_LIST_CHUNK) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let params: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
                let rows = s.query(&format!("SELECT id FROM uploads WHERE id IN ({marks})"), &params).await?;
                found.extend(upload_ids(rows)?);
            }
            Ok(found)
        })
    }
}

#[async_trait]
impl<D: Driver> Jobs for SqlStore<D> {
    async fn claim(&self, id: UploadId, owner: &str, now: Millis, lease_until: Millis) -> StoreResult<Option<Upload>> {
        let owner = owner.to_owned();
        in_transaction!(self, Tx::Write, |s| {
            let update = format!(
                "UPDATE uploads SET state = 'processing', lease_owner = ?, lease_until = ?, \
                 claims = claims + 1, updated_at = ? WHERE id = ? AND {CLAIMABLE_WHERE}"
            );
            if s.exec(&update, args![owner.as_str(), lease_until, now, id.get(), now, now]).await? == 0 {
                return Ok(None);
            }
            s.query(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), args![id.get()]).await.map(first)
        })?
        .map(|r| upload_from(&r))
        .transpose()
    }

    async fn renew_lease(&self, id: UploadId, owner: &str, lease_until: Millis) -> StoreResult<bool> {
        let owner = owner.to_owned();
        on_primary!(self, |s| {
            let n = s
                .exec(
                    "UPDATE uploads SET lease_until = ? WHERE id = ? AND state = 'processing' AND lease_owner = ?",
                    args![lease_until, id.get(), owner.as_str()],
                )
                .await?;
            Ok(n == 1)
        })
    }

    async fn complete(
        &self,
        id: UploadId,
        owner: &str,
        outcome: &FlipOutcome,
        now: Millis,
    ) -> StoreResult<Option<StateChange>> {
        let owner = owner.to_owned();
        let o = outcome.clone();
        on_primary!(self, |s| {
            let params = args![
                o.flipped_bytes,
                o.flipped_width,
                o.flipped_height,
                o.method.as_str(),
                o.thumb_width,
                o.thumb_height,
                now,
                now,
                id.get(),
                owner.as_str()
            ];
            change_state(s, COMPLETE, params, id, (EventKind::Done, Some(&o.method)), now).await
        })
    }

    async fn fail_attempt(
        &self,
        id: UploadId,
        owner: &str,
        reason: &str,
        failure: Failure,
        now: Millis,
    ) -> StoreResult<Option<StateChange>> {
        let owner = owner.to_owned();
        let reason = clip_reason(reason);
        on_primary!(self, |s| {
            let (update, params, kind): (_, &[Value], _) = match failure {
                Failure::RetryAt(at) => {
                    (FAIL_RETRY, args![at, reason.as_str(), now, id.get(), owner.as_str()], EventKind::Retry)
                }
                Failure::Permanent => {
                    (FAIL_PERMANENT, args![now, reason.as_str(), now, now, id.get(), owner.as_str()], EventKind::Failed)
                }
            };
            change_state(s, update, params, id, (kind, Some(&reason)), now).await
        })
    }

    async fn give_up(&self, id: UploadId, reason: &str, now: Millis) -> StoreResult<Option<StateChange>> {
        let reason = clip_reason(reason);
        on_primary!(self, |s| {
            let params = args![reason.as_str(), now, now, id.get()];
            change_state(s, GIVE_UP, params, id, (EventKind::Failed, Some(&reason)), now).await
        })
    }

    async fn claimable(&self, now: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        on_primary!(self, |s| {
            let query = format!("SELECT id FROM uploads WHERE {CLAIMABLE_WHERE} ORDER BY next_attempt_at, id LIMIT ?");
            upload_ids(s.query(&query, args![now, now, limit]).await?)
        })
    }

    async fn unqueued(&self, now: Millis, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        self.ids(UNQUEUED_JOBS, vec![now.into(), cutoff.into(), cutoff.into(), limit.into()]).await
    }

    async fn mark_enqueued(&self, id: UploadId, now: Millis) -> StoreResult<()> {
        on_primary!(self, |s| {
            s.exec("UPDATE uploads SET enqueued_at = ? WHERE id = ?", args![now, id.get()]).await?;
            Ok(())
        })
    }

    async fn unsent(&self, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        self.ids(UNSENT_JOBS, vec![cutoff.into(), limit.into()]).await
    }

    async fn try_lead(&self, duty: &str) -> StoreResult<Option<Box<dyn Leadership>>> {
        self.driver.try_lead(duty).await
    }

    async fn upload_stats(&self) -> StoreResult<UploadStats> {
        on_primary!(self, |s| {
            let rows = s.query(UPLOAD_STATS, &[]).await?;
            let rows = rows
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .collect::<StoreResult<Vec<(String, i64, Option<Millis>)>>>()?;
            Ok(UploadStats::from_rows(rows))
        })
    }

    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<Upload>> {
        on_primary!(self, |s| {
            let query = format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?"
            );
            s.query(&query, args![limit]).await?.iter().map(upload_from).collect()
        })
    }

    async fn retry_upload(&self, id: UploadId, now: Millis) -> StoreResult<Option<StateChange>> {
        on_primary!(self, |s| {
            change_state(s, RETRY_UPLOAD, args![now, now, now, id.get()], id, (EventKind::Retried, None), now).await
        })
    }
}

#[async_trait]
impl<D: Driver> Sessions for SqlStore<D> {
    async fn create_session(&self, session: NewSession, now: Millis) -> StoreResult<()> {
        on_primary!(self, |s| {
            let n = &session;
            s.exec(SESSION_INSERT, args![n.token_hash.0.as_str(), n.person_id.get(), now, n.expires_at, n.proven])
                .await?;
            Ok(())
        })
    }

    async fn session(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<SessionInfo>> {
        let hash = token_hash.0.clone();
        on_primary!(self, |s| {
            let rows = s
                .query(
                    "SELECT s.person_id, p.email, s.expires_at, s.proven FROM sessions s \
                     JOIN people p ON p.id = s.person_id WHERE s.token_hash = ? AND s.expires_at > ?",
                    args![hash, now],
                )
                .await?;
            let Some(r) = first(rows) else { return Ok(None) };
            Ok(Some(SessionInfo {
                person_id: r.get(0)?,
                email: stored_email(&r.get::<String>(1)?)?,
                expires_at: r.get(2)?,
                proven: r.get(3)?,
            }))
        })
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> StoreResult<()> {
        let hash = token_hash.0.clone();
        on_primary!(self, |s| {
            s.exec("DELETE FROM sessions WHERE token_hash = ?", args![hash]).await?;
            Ok(())
        })
    }

    async fn create_signin_token(
        &self,
        token_hash: &TokenHash,
        person: PersonId,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<()> {
        let hash = token_hash.0.clone();
        on_primary!(self, |s| {
            s.exec(
                "INSERT INTO signin_tokens (token_hash, person_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                args![hash, person.get(), now, expires_at],
            )
            .await?;
            Ok(())
        })
    }

    async fn consume_signin_token(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<SigninOutcome> {
        let hash = token_hash.0.clone();
        in_transaction!(self, Tx::Write, |s| {
            let used = s
                .exec(
                    "UPDATE signin_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL \
                     AND expires_at > ?",
                    args![now, &hash, now],
                )
                .await?;
            if used == 1 {
                let rows = s
                    .query(
                        "SELECT p.id, p.email, p.created_at FROM signin_tokens t \
                         JOIN people p ON p.id = t.person_id WHERE t.token_hash = ?",
                        args![&hash],
                    )
                    .await?;
                let r = first(rows).ok_or_else(|| StoreError::Corrupt("sign-in link without a person".into()))?;
                let (id, email, created_at): (PersonId, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                let email = stored_email(&email)?;
                // The first link used proves the address: the sessions
                // that never proved it end in the same transaction.
                let verified = s
                    .exec(
                        "UPDATE people SET verified_at = ? WHERE id = ? AND verified_at IS NULL",
                        args![now, id.get()],
                    )
                    .await?;
                if verified == 1 {
                    s.exec("DELETE FROM sessions WHERE person_id = ? AND proven = 0", args![id.get()]).await?;
                }
                return Ok(SigninOutcome::SignedIn(Person { id, email, created_at }));
            }
            let rows = s.query("SELECT used_at FROM signin_tokens WHERE token_hash = ?", args![&hash]).await?;
            Ok(match first(rows).map(|r| r.get::<Option<i64>>(0)).transpose()? {
                None => SigninOutcome::Unknown,
                Some(Some(_)) => SigninOutcome::AlreadyUsed,
                Some(None) => SigninOutcome::Expired,
            })
        })
    }

    async fn signin_token_email(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<Email>> {
        let hash = token_hash.0.clone();
        on_primary!(self, |s| {
            let rows = s
                .query(
                    "SELECT p.email FROM signin_tokens t JOIN people p ON p.id = t.person_id \
                     WHERE t.token_hash = ? AND t.used_at IS NULL AND t.expires_at > ?",
                    args![hash, now],
                )
                .await?;
            first(rows).map(|r| stored_email(&r.get::<String>(0)?)).transpose()
        })
    }

    async fn delete_other_sessions(&self, person: PersonId, keep: &TokenHash) -> StoreResult<Vec<TokenHash>> {
        let keep = keep.0.clone();
        in_transaction!(self, Tx::Write, |s| {
            let rows = s
                .query(
                    "SELECT token_hash FROM sessions WHERE person_id = ? AND token_hash <> ?",
                    args![person.get(), &keep],
                )
                .await?;
            s.exec("DELETE FROM sessions WHERE person_id = ? AND token_hash <> ?", args![person.get(), &keep]).await?;
            rows.iter().map(|r| Ok(TokenHash(r.get(0)?))).collect()
        })
    }

    async fn purge_expired(&self, now: Millis) -> StoreResult<u64> {
        in_transaction!(self, Tx::Write, |s| {
            let mut n = 0;
            for (statement, before) in PURGES {
                n += s.exec(statement, args![now - before]).await?;
            }
            Ok(n)
        })
    }
}

#[async_trait]
impl<D: Driver> Settings for SqlStore<D> {
    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        on_primary!(self, |s| first(s.query(SETTING_SELECT, args![key]).await?).map(|r| r.get(0)).transpose())
    }

    async fn set_setting(&self, key: &str, value: &str, now: Millis) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        on_primary!(self, |s| {
            let upsert = dialect::<D>().upsert(SETTING_INSERT, "setting_key", &["setting_value", "updated_at"]);
            s.exec(&upsert, args![key, value, now]).await?;
            Ok(())
        })
    }

    async fn setting_or_init(&self, key: &str, value: &str, now: Millis) -> StoreResult<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        in_transaction!(self, Tx::Write, |s| {
            let insert = dialect::<D>().insert_unless_present(SETTING_INSERT, "setting_key");
            s.exec(&insert, args![&key, value, now]).await?;
            let stored = first(s.query(SETTING_SELECT, args![&key]).await?);
            stored.ok_or_else(|| StoreError::Corrupt(format!("setting {key} vanished")))?.get(0)
        })
    }
}

#[async_trait]
impl<D: Driver> Workers for SqlStore<D> {
    async fn worker_heartbeat(&self, worker: &WorkerInfo) -> StoreResult<()> {
        let w = worker.clone();
        on_primary!(self, |s| {
            let upsert = dialect::<D>().upsert(
                &format!("INSERT INTO workers ({WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                "id",
                &["heartbeat_at", "status", "current_upload", "jobs_done"],
            );
            let params = args![
                w.id.as_str(),
                w.host.as_str(),
                w.pid,
                w.started_at,
                w.heartbeat_at,
                w.status.as_str(),
                w.current_upload.map(|u| u.get()),
                w.jobs_done
            ];
            s.exec(&upsert, params).await?;
            Ok(())
        })
    }

    async fn remove_worker(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        on_primary!(self, |s| {
            s.exec("DELETE FROM workers WHERE id = ?", args![id]).await?;
            Ok(())
        })
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        on_primary!(self, |s| {
            let query = format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY started_at");
            s.query(&query, &[]).await?.iter().map(worker_from).collect()
        })
    }
}

#[async_trait]
impl<D: Driver> Events for SqlStore<D> {
    async fn events_since(&self, after_id: i64, limit: u32) -> StoreResult<Vec<Event>> {
        on_primary!(self, |s| {
            let query = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?");
            s.query(&query, args![after_id, limit]).await?.iter().map(event_from).collect()
        })
    }

    async fn events_for_upload(&self, id: UploadId) -> StoreResult<Vec<Event>> {
        on_primary!(self, |s| {
            let query = format!("SELECT {EVENT_COLUMNS} FROM events WHERE upload_id = ? ORDER BY id");
            s.query(&query, args![id.get()]).await?.iter().map(event_from).collect()
        })
    }
}

#[async_trait]
impl<D: Driver> Notices for SqlStore<D> {
    async fn notice_wish(&self, person: PersonId) -> StoreResult<(bool, Option<Millis>)> {
        on_primary!(self, |s| {
            let rows = s.query("SELECT wanted, sent_at FROM notices WHERE person_id = ?", args![person.get()]).await?;
            Ok(match first(rows) {
                Some(r) => (r.get(0)?, r.get(1)?),
                None => (false, None),
            })
        })
    }

    async fn set_notice_wanted(&self, person: PersonId, wanted: bool, now: Millis) -> StoreResult<()> {
        in_transaction!(self, Tx::Write, |s| write_notice_wish(s, person, wanted, now).await)
    }

    async fn due_notices(&self, due: NoticeDue, limit: u32) -> StoreResult<Vec<PersonId>> {
        on_primary!(self, |s| {
            let params = args![due.quiet_since, due.settled_before, limit];
            s.query(DUE_NOTICES, params).await?.iter().map(|r| r.get::<PersonId>(0)).collect()
        })
    }

    async fn take_notice(&self, person: PersonId, due: NoticeDue, now: Millis) -> StoreResult<Option<NoticeBatch>> {
        in_transaction!(self, Tx::Write, |s| {
            let select = format!(
                "SELECT n.wanted, n.covered_until, n.sent_at, p.email FROM notices n JOIN people p ON p.id = n.person_id \
                 WHERE n.person_id = ?{}",
                dialect::<D>().for_update()
            );
            let Some(row) = first(s.query(&select, args![person.get()]).await?) else { return Ok(None) };
            let (wanted, covered, sent): (bool, Millis, Option<Millis>) = (row.get(0)?, row.get(1)?, row.get(2)?);
            if !wanted || sent.is_some_and(|at| at > due.quiet_since) {
                return Ok(None);
            }
            let (mut ready, mut failed, mut newest) = (0u64, 0u64, covered);
            for r in s.query(NOTICE_BATCH, args![person.get(), covered]).await? {
                let (state, n, finished): (String, i64, Option<Millis>) = (r.get(0)?, r.get(1)?, r.get(2)?);
                match state.as_str() {
                    "done" => ready = n as u64,
                    "failed" => failed = n as u64,
                    // Still flipping: the batch is not finished yet.
                    _ => return Ok(None),
                }
                newest = newest.max(finished.unwrap_or(covered));
            }
            if ready + failed == 0 || newest > due.settled_before {
                return Ok(None);
            }
            if s.exec(NOTICE_TAKE, args![now, newest, now, person.get(), covered]).await? != 1 {
                return Ok(None);
            }
            Ok(Some(NoticeBatch {
                person_id: person,
                email: stored_email(&row.get::<String>(3)?)?,
                ready,
                failed,
                sent_at: now,
                covered_until: newest,
                before: (sent, covered),
            }))
        })
    }

    async fn give_back_notice(&self, batch: &NoticeBatch) -> StoreResult<bool> {
        let b = batch.clone();
        on_primary!(self, |s| {
            let (sent_before, covered_before) = b.before;
            let params =
                args![sent_before, covered_before, now_millis(), b.person_id.get(), b.sent_at, b.covered_until];
            Ok(s.exec(NOTICE_GIVE_BACK, params).await? == 1)
        })
    }
}

#[async_trait]
impl<D: Driver> DumpRestore for SqlStore<D> {
    async fn dump_rows(&self, out: mpsc::Sender<DumpRow>) -> StoreResult<u64> {
        in_transaction!(self, Tx::Snapshot, |s| {
            let mut count = 0;
            for table in TABLES {
                let mut make = |columns: &[String], row: Row| {
                    Ok((*table, columns.to_vec(), dump_values(dialect::<D>(), table, columns, row)?))
                };
                let query = format!("SELECT * FROM {table} ORDER BY 1");
                count += s.stream_into(&query, RowSink::new(&out, &mut make)).await?;
            }
            Ok(count)
        })
    }

    async fn row_count(&self) -> StoreResult<u64> {
        on_primary!(self, |s| {
            let mut total = 0u64;
            for table in TABLES {
                let n: Option<i64> = first(s.query(&format!("SELECT COUNT(*) FROM {table}"), &[]).await?)
                    .map(|r| r.get(0))
                    .transpose()?;
                total += n.unwrap_or(0) as u64;
            }
            Ok(total)
        })
    }

    async fn restore_rows(&self, rows: Vec<DumpRow>, replace: bool) -> StoreResult<u64> {
        in_transaction!(self, Tx::Write, |s| {
            if replace {
                for table in TABLES {
                    s.exec(&format!("DELETE FROM {table}"), &[]).await?;
                }
            }
            let mut known = HashMap::new();
            for table in TABLES {
                known.insert(*table, s.columns(&format!("SELECT * FROM {table} LIMIT 0")).await?);
            }
            let mut n = 0u64;
            for (table, columns, values) in rows {
                let insert = dump::checked_insert(table, &columns, &known)?;
                let params: Vec<Value> = values
                    .into_iter()
                    .map(|v| match v {
                        SqlValue::Null => Value::Null,
                        SqlValue::Int(i) => Value::Int(i),
                        SqlValue::Text(t) => Value::Text(t),
                    })
                    .collect();
                s.exec(&insert, &params).await?;
                n += 1;
            }
            Ok(n)
        })
    }
}

#[async_trait]
impl<D: Driver> MetadataStore for SqlStore<D> {
    fn backend(&self) -> StoreBackend {
        D::BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        self.driver.ping().await
    }

    async fn replica_lag(&self) -> Vec<(String, Option<u64>)> {
        self.driver.replica_lag()
    }
}
