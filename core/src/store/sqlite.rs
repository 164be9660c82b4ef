//! The embedded metadata store: one SQLite file in WAL mode, shared safely by
//! several processes on one machine (`flipstack serve` + `flipstack work`).
//! Every call runs on the blocking pool, never on the async threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Semaphore, mpsc};

use super::sql::{CLAIMABLE_WHERE, EVENT_INSERT, GALLERY_COLUMNS, UPLOAD_COLUMNS};
use super::*;
use crate::domain::{new_id, now_millis};
use crate::metrics::DbTarget;

const POOL_SIZE: usize = 4;

pub struct SqliteStore {
    path: PathBuf,
    conns: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Another process may hold the write lock for a moment; wait rather than fail.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed upload survives a power cut, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// `<database>-<what>.lock`, beside the database file: the migration lock
/// (`migrate`) and the fleet duties' leader locks.
fn lock_path(db: &Path, what: &str) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!("-{what}.lock"));
    db.with_file_name(name)
}

/// An OS file lock: held as long as the file is open, freed by the kernel
/// when the process dies.
struct FileLeadership {
    _file: std::fs::File,
}

#[async_trait]
impl Leadership for FileLeadership {
    async fn still_held(&mut self) -> bool {
        true
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) =>
        {
            StoreError::unavailable_because("SQLite", e)
        }
        _ => StoreError::query_because("SQLite", e),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        id: r.get(0)?,
        person_id: r.get(1)?,
        display_name: r.get(2)?,
        format: r.get(3)?,
        bytes: r.get(4)?,
        width: r.get(5)?,
        height: r.get(6)?,
        state: r.get(7)?,
        attempts: r.get(8)?,
        claims: r.get(9)?,
        next_attempt_at: r.get(10)?,
        lease_owner: r.get(11)?,
        lease_until: r.get(12)?,
        failure_reason: r.get(13)?,
        flipped_bytes: r.get(14)?,
        flipped_width: r.get(15)?,
        flipped_height: r.get(16)?,
        flip_method: r.get(17)?,
        thumb_width: r.get(18)?,
        thumb_height: r.get(19)?,
        created_at: r.get(20)?,
        updated_at: r.get(21)?,
        finished_at: r.get(22)?,
    })
}

fn gallery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GalleryRow> {
    Ok(GalleryRow {
        id: r.get(0)?,
        display_name: r.get(1)?,
        format: r.get(2)?,
        state: r.get(3)?,
        failure_reason: r.get(4)?,
        width: r.get(5)?,
        height: r.get(6)?,
        flipped_width: r.get(7)?,
        flipped_height: r.get(8)?,
        thumb_width: r.get(9)?,
        thumb_height: r.get(10)?,
        bytes: r.get(11)?,
        created_at: r.get(12)?,
    })
}

fn worker_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: r.get(0)?,
        host: r.get(1)?,
        pid: r.get::<_, i64>(2)? as u32,
        started_at: r.get(3)?,
        heartbeat_at: r.get(4)?,
        status: parse_name(r, 5, WorkerStatus::parse)?,
        current_upload: r.get::<_, Option<i64>>(6)?.map(UploadId::from_stored),
        jobs_done: r.get::<_, i64>(7)? as u64,
    })
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: parse_name(r, 2, EventKind::parse)?,
        upload_id: r.get::<_, Option<i64>>(3)?.map(UploadId::from_stored),
        person_hash: r.get(4)?,
        detail: r.get(5)?,
    })
}

/// A column that holds one of an enum's names.
fn parse_name<T>(r: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let name: String = r.get(i)?;
    parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(unknown_name("name", &name)))
    })
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    now: Millis,
    kind: EventKind,
    upload: UploadId,
    person_hash: Option<&str>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(EVENT_INSERT, params![new_id(), now, kind.as_str(), upload.get(), person_hash, detail])?;
    Ok(())
}

/// The person of an upload, for the change's event and cache invalidation.
fn person_of(tx: &rusqlite::Transaction<'_>, id: UploadId) -> rusqlite::Result<(i64, String)> {
    tx.query_row(
        "SELECT u.person_id, p.email FROM uploads u JOIN people p ON p.id = u.person_id WHERE u.id = ?",
        [id.get()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

fn email_hash(email: &str) -> String {
    Email::parse(email).map(|e| e.hashed_id()).unwrap_or_default()
}

impl SqliteStore {
    pub async fn open(path: &Path, metrics: Arc<Metrics>) -> StoreResult<SqliteStore> {
        let path = path.to_owned();
        let p = path.clone();
        let conns = tokio::task::spawn_blocking(move || -> StoreResult<Vec<Connection>> {
            if let Some(dir) = p.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::unavailable_because(&format!("cannot create the data folder {}", dir.display()), e)
                })?;
            }
            let mut first = open_connection(&p)
                .map_err(|e| StoreError::unavailable_because(&format!("cannot open {}", p.display()), e))?;
            {
                // Processes starting together on a new file migrate one after another:
                // refinery reads the applied versions before its own transaction, so two
                // runs at once would both apply V1. The lock is a file beside the
                // database (the database's own locks belong to SQLite).
                let lock_path = lock_path(&p, "migrate");
                let lock =
                    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(
                        |e| StoreError::unavailable_because(&format!("cannot open {}", lock_path.display()), e),
                    )?;
                lock.lock().map_err(|e| {
                    StoreError::unavailable_because(
                        &format!("cannot take the migration lock {}", lock_path.display()),
                        e,
                    )
                })?;
                migrations::runner().run(&mut first).map_err(StoreError::migration)?;
                // Dropping the file releases the lock.
            }
            let mut conns = vec![first];
            for _ in 1..POOL_SIZE {
                conns.push(open_connection(&p).map_err(map_err)?);
            }
            Ok(conns)
        })
        .await
        .map_err(|e| StoreError::query_because("opening the database (a task)", e))??;
        Ok(SqliteStore {
            path,
            conns: Arc::new(Mutex::new(conns)),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ids a one-column `SELECT id` with these parameters returns.
    async fn ids(&self, query: &'static str, args: Vec<i64>) -> StoreResult<Vec<UploadId>> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(query).map_err(map_err)?;
            let ids = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            Ok(ids.into_iter().map(UploadId::from_stored).collect())
        })
        .await
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::unavailable_because("waiting for a database connection", e))?;
        self.metrics.db_query(DbTarget::Primary);
        let conns = self.conns.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let taken = conns.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match taken {
                Some(c) => c,
                None => open_connection(&path).map_err(map_err)?,
            };
            let result = f(&mut conn);
            conns.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::query_because("database task failed", e))?
    }
}

fn write_tx(conn: &mut Connection) -> StoreResult<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)
}

#[async_trait]
impl MetadataStore for SqliteStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Sqlite
    }

    async fn person_by_email(&self, email: &Email) -> StoreResult<Option<Person>> {
        let email = email.clone();
        self.run(move |c| {
            c.query_row("SELECT id, created_at FROM people WHERE email = ?", [email.as_str()], |r| {
                Ok(Person { id: PersonId::from_stored(r.get(0)?), email: email.clone(), created_at: r.get(1)? })
            })
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn accept_upload(&self, a: AcceptUpload) -> StoreResult<WriteReceipt> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            let person_id = match &a.owner {
                NewOwner::Existing(id) => *id,
                NewOwner::Create { id, email } => {
                    match tx.execute(
                        "INSERT INTO people (id, email, created_at) VALUES (?, ?, ?)",
                        params![id.get(), email.as_str(), a.now],
                    ) {
                        Ok(_) => *id,
                        Err(e) if is_unique_violation(&e) => return Err(StoreError::EmailTaken),
                        Err(e) => return Err(map_err(e)),
                    }
                }
            };
            let u = &a.upload;
            tx.execute(
                "INSERT INTO uploads (id, person_id, display_name, format, bytes, width, height, state, attempts, \
                 claims, next_attempt_at, enqueued_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, NULL, ?, ?)",
                params![
                    u.id.get(),
                    person_id.get(),
                    u.name.as_str(),
                    u.format.as_str(),
                    u.bytes as i64,
                    u.width,
                    u.height,
                    a.now,
                    a.now,
                    a.now
                ],
            )
            .map_err(map_err)?;
            if let Some(s) = &a.session {
                tx.execute(
                    sql::SESSION_INSERT,
                    params![s.token_hash.0, s.person_id.get(), a.now, s.expires_at, s.proven],
                )
                .map_err(map_err)?;
            }
            insert_event(&tx, a.now, EventKind::Uploaded, u.id, Some(&a.person_hash), Some(u.format.as_str()))
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(WriteReceipt::default())
        })
        .await
    }

    async fn upload(&self, id: UploadId) -> StoreResult<Option<Upload>> {
        self.run(move |c| {
            let row = c
                .query_row(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), [id.get()], upload_row)
                .optional()
                .map_err(map_err)?;
            row.map(UploadRow::into_upload).transpose()
        })
        .await
    }

    async fn upload_owner(&self, id: UploadId) -> StoreResult<Option<(PersonId, ImageFormat)>> {
        self.run(move |c| {
            let row: Option<(i64, String)> = c
                .query_row("SELECT person_id, format FROM uploads WHERE id = ?", [id.get()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(map_err)?;
            Ok(row.and_then(|(p, f)| ImageFormat::parse(&f).map(|f| (PersonId::from_stored(p), f))))
        })
        .await
    }

    async fn gallery_page(&self, person: PersonId, offset: u64, limit: u64, _from: ReadFrom) -> StoreResult<PageRead> {
        self.run(move |c| {
            // One read transaction: the list and the counts come from one snapshot.
            let tx = c.transaction().map_err(map_err)?;
            let items = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {GALLERY_COLUMNS} FROM uploads WHERE person_id = ? ORDER BY id DESC LIMIT ? OFFSET ?"
                    ))
                    .map_err(map_err)?;
                let rows =
                    stmt.query_map(params![person.get(), limit as i64, offset as i64], gallery_row).map_err(map_err)?;
                let mut items = Vec::new();
                for row in rows {
                    items.push(row.map_err(map_err)?.into_item()?);
                }
                items
            };
            let (total, unfinished): (i64, Option<i64>) = tx
                .query_row(
                    "SELECT COUNT(*), SUM(CASE WHEN state IN ('pending', 'processing') THEN 1 ELSE 0 END) \
                     FROM uploads WHERE person_id = ?",
                    [person.get()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(PageRead {
                page: GalleryPage { items, total: total as u64, unfinished: unfinished.unwrap_or(0) as u64 },
                source: ReadSource::Primary,
                position: None,
            })
        })
        .await
    }

    async fn delete_upload(
        &self,
        id: UploadId,
        person: PersonId,
        person_hash: &str,
    ) -> StoreResult<Option<(Upload, WriteReceipt)>> {
        let person_hash = person_hash.to_owned();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let row = tx
                .query_row(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ? AND person_id = ?"),
                    params![id.get(), person.get()],
                    upload_row,
                )
                .optional()
                .map_err(map_err)?;
            let Some(row) = row else { return Ok(None) };
            let upload = row.into_upload()?;
            tx.execute("DELETE FROM uploads WHERE id = ?", [id.get()]).map_err(map_err)?;
            tx.execute("DELETE FROM events WHERE upload_id = ?", [id.get()]).map_err(map_err)?;
            insert_event(&tx, now_millis(), EventKind::Deleted, id, Some(&person_hash), None).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(Some((upload, WriteReceipt::default())))
        })
        .await
    }

    async fn claim(&self, id: UploadId, owner: &str, now: Millis, lease_until: Millis) -> StoreResult<Option<Upload>> {
        let owner = owner.to_owned();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let changed = tx
                .execute(
                    &format!(
                        "UPDATE uploads SET state = 'processing', lease_owner = ?, lease_until = ?, claims = claims + 1, \
                         updated_at = ? WHERE id = ? AND {CLAIMABLE_WHERE}"
                    ),
                    params![owner, lease_until, now, id.get(), now, now],
                )
                .map_err(map_err)?;
            if changed == 0 {
                return Ok(None);
            }
            let row = tx
                .query_row(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), [id.get()], upload_row)
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            row.into_upload().map(Some)
        })
        .await
    }

    async fn renew_lease(&self, id: UploadId, owner: &str, lease_until: Millis) -> StoreResult<bool> {
        let owner = owner.to_owned();
        self.run(move |c| {
            let n = c
                .execute(
                    "UPDATE uploads SET lease_until = ? WHERE id = ? AND state = 'processing' AND lease_owner = ?",
                    params![lease_until, id.get(), owner],
                )
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
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
        self.run(move |c| {
            let tx = write_tx(c)?;
            let n = tx
                .execute(
                    "UPDATE uploads SET state = 'done', lease_owner = NULL, lease_until = NULL, failure_reason = NULL, \
                     flipped_bytes = ?, flipped_width = ?, flipped_height = ?, flip_method = ?, thumb_width = ?, \
                     thumb_height = ?, updated_at = ?, finished_at = ? \
                     WHERE id = ? AND state = 'processing' AND lease_owner = ?",
                    params![
                        o.flipped_bytes as i64,
                        o.flipped_width,
                        o.flipped_height,
                        o.method,
                        o.thumb_width,
                        o.thumb_height,
                        now,
                        now,
                        id.get(),
                        owner
                    ],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Ok(None);
            }
            let (person, email) = person_of(&tx, id).map_err(map_err)?;
            insert_event(&tx, now, EventKind::Done, id, Some(&email_hash(&email)), Some(&o.method)).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(Some(StateChange {
                person_id: PersonId::from_stored(person),
                person_hash: email_hash(&email),
                receipt: WriteReceipt::default(),
            }))
        })
        .await
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
        self.run(move |c| {
            let tx = write_tx(c)?;
            let (statement, kind, at) = match failure {
                Failure::RetryAt(at) => (sql::FAIL_RETRY, EventKind::Retry, at),
                Failure::Permanent => (sql::FAIL_PERMANENT, EventKind::Failed, now),
            };
            let n = match failure {
                Failure::RetryAt(_) => tx.execute(statement, params![at, reason, now, id.get(), owner]),
                Failure::Permanent => tx.execute(statement, params![at, reason, now, now, id.get(), owner]),
            }
            .map_err(map_err)?;
            if n == 0 {
                return Ok(None);
            }
            let (person, email) = person_of(&tx, id).map_err(map_err)?;
            insert_event(&tx, now, kind, id, Some(&email_hash(&email)), Some(&reason)).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(Some(StateChange {
                person_id: PersonId::from_stored(person),
                person_hash: email_hash(&email),
                receipt: WriteReceipt::default(),
            }))
        })
        .await
    }

    async fn give_up(&self, id: UploadId, reason: &str, now: Millis) -> StoreResult<Option<StateChange>> {
        let reason = clip_reason(reason);
        self.run(move |c| {
            let tx = write_tx(c)?;
            let n = tx
                .execute(
                    "UPDATE uploads SET state = 'failed', lease_owner = NULL, lease_until = NULL, failure_reason = ?, \
                     updated_at = ?, finished_at = ? WHERE id = ? AND state IN ('pending', 'processing')",
                    params![reason, now, now, id.get()],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Ok(None);
            }
            let (person, email) = person_of(&tx, id).map_err(map_err)?;
            insert_event(&tx, now, EventKind::Failed, id, Some(&email_hash(&email)), Some(&reason)).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(Some(StateChange {
                person_id: PersonId::from_stored(person),
                person_hash: email_hash(&email),
                receipt: WriteReceipt::default(),
            }))
        })
        .await
    }

    async fn claimable(&self, now: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT id FROM uploads WHERE {CLAIMABLE_WHERE} ORDER BY next_attempt_at, id LIMIT ?"
                ))
                .map_err(map_err)?;
            let ids = stmt
                .query_map(params![now, now, limit], |r| r.get::<_, i64>(0))
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            Ok(ids.into_iter().map(UploadId::from_stored).collect())
        })
        .await
    }

    async fn unqueued(&self, now: Millis, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        self.ids(sql::UNQUEUED_JOBS, vec![now, cutoff, cutoff, i64::from(limit)]).await
    }

    async fn mark_enqueued(&self, id: UploadId, now: Millis) -> StoreResult<()> {
        self.run(move |c| {
            c.execute(sql::MARK_ENQUEUED, params![now, id.get()]).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn unsent(&self, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        self.ids(sql::UNSENT_JOBS, vec![cutoff, i64::from(limit)]).await
    }

    async fn try_lead(&self, duty: &str) -> StoreResult<Option<Box<dyn Leadership>>> {
        let path = lock_path(&self.path, duty);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::unavailable_because(&format!("cannot open {}", path.display()), e))?;
            match file.try_lock() {
                Ok(()) => Ok(Some(Box::new(FileLeadership { _file: file }) as Box<dyn Leadership>)),
                Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                Err(std::fs::TryLockError::Error(e)) => {
                    Err(StoreError::unavailable_because(&format!("cannot take the lock {}", path.display()), e))
                }
            }
        })
        .await
        .map_err(|e| StoreError::query_because("taking a lock (a task)", e))?
    }

    async fn upload_stats(&self) -> StoreResult<UploadStats> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::UPLOAD_STATS).map_err(map_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?)))
                .map_err(map_err)?;
            let rows = rows.collect::<Result<Vec<_>, _>>().map_err(map_err)?;
            Ok(UploadStats::from_rows(rows))
        })
        .await
    }

    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<Upload>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map([limit], upload_row).map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(map_err)?.into_upload()?);
            }
            Ok(out)
        })
        .await
    }

    async fn retry_upload(&self, id: UploadId, now: Millis) -> StoreResult<Option<StateChange>> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            if tx.execute(sql::RETRY_UPLOAD, params![now, now, now, id.get()]).map_err(map_err)? == 0 {
                return Ok(None);
            }
            let (person, email) = person_of(&tx, id).map_err(map_err)?;
            let person_hash = email_hash(&email);
            insert_event(&tx, now, EventKind::Retried, id, Some(&person_hash), None).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(Some(StateChange {
                person_id: PersonId::from_stored(person),
                person_hash,
                receipt: WriteReceipt::default(),
            }))
        })
        .await
    }

    async fn find_uploads(&self, filter: &UploadFilter, limit: u32) -> StoreResult<Vec<(Upload, String)>> {
        let (state, format, reason) = filter.params();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql::find_uploads()).map_err(map_err)?;
            let rows = stmt
                .query_map(params![state, state, format, format, reason, reason, limit], |r| {
                    Ok((upload_row(r)?, r.get::<_, Option<String>>(23)?))
                })
                .map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (upload, email) = row.map_err(map_err)?;
                out.push((upload.into_upload()?, email.map(|e| email_hash(&e)).unwrap_or_default()));
            }
            Ok(out)
        })
        .await
    }

    async fn create_session(&self, s: NewSession, now: Millis) -> StoreResult<()> {
        self.run(move |c| {
            c.execute(sql::SESSION_INSERT, params![s.token_hash.0, s.person_id.get(), now, s.expires_at, s.proven])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<SessionInfo>> {
        let hash = token_hash.0.clone();
        self.run(move |c| {
            let row: Option<(i64, String, i64, bool)> = c
                .query_row(sql::SESSION_SELECT, params![hash, now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
                .map_err(map_err)?;
            row.map(|(p, e, x, proven)| {
                let email = Email::parse(&e).map_err(|err| StoreError::Corrupt(format!("stored e-mail: {err}")))?;
                Ok(SessionInfo { person_id: PersonId::from_stored(p), email, expires_at: x, proven })
            })
            .transpose()
        })
        .await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> StoreResult<()> {
        let hash = token_hash.0.clone();
        self.run(move |c| {
            c.execute("DELETE FROM sessions WHERE token_hash = ?", [hash]).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn create_signin_token(
        &self,
        token_hash: &TokenHash,
        person: PersonId,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<()> {
        let hash = token_hash.0.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO signin_tokens (token_hash, person_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                params![hash, person.get(), now, expires_at],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn consume_signin_token(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<SigninOutcome> {
        let hash = token_hash.0.clone();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let n = tx
                .execute(
                    "UPDATE signin_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                    params![now, hash, now],
                )
                .map_err(map_err)?;
            let outcome = if n == 1 {
                let (id, email, created): (i64, String, i64) = tx
                    .query_row(
                        "SELECT p.id, p.email, p.created_at FROM signin_tokens t JOIN people p ON p.id = t.person_id \
                         WHERE t.token_hash = ?",
                        [&hash],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(map_err)?;
                let email = Email::parse(&email).map_err(|e| StoreError::Corrupt(format!("stored e-mail: {e}")))?;
                if tx.execute(sql::VERIFY_PERSON, params![now, id]).map_err(map_err)? == 1 {
                    tx.execute(sql::DELETE_UNPROVEN_SESSIONS, [id]).map_err(map_err)?;
                }
                SigninOutcome::SignedIn(Person { id: PersonId::from_stored(id), email, created_at: created })
            } else {
                let row: Option<Option<i64>> = tx
                    .query_row("SELECT used_at FROM signin_tokens WHERE token_hash = ?", [&hash], |r| r.get(0))
                    .optional()
                    .map_err(map_err)?;
                match row {
                    None => SigninOutcome::Unknown,
                    Some(Some(_)) => SigninOutcome::AlreadyUsed,
                    Some(None) => SigninOutcome::Expired,
                }
            };
            tx.commit().map_err(map_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn signin_token_email(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<Email>> {
        let hash = token_hash.0.clone();
        self.run(move |c| {
            let email: Option<String> =
                c.query_row(sql::SIGNIN_TOKEN_EMAIL, params![hash, now], |r| r.get(0)).optional().map_err(map_err)?;
            email
                .map(|e| Email::parse(&e).map_err(|err| StoreError::Corrupt(format!("stored e-mail: {err}"))))
                .transpose()
        })
        .await
    }

    async fn delete_other_sessions(&self, person: PersonId, keep: &TokenHash) -> StoreResult<Vec<TokenHash>> {
        let keep = keep.0.clone();
        self.run(move |c| {
            let tx = write_tx(c)?;
            let ended = {
                let mut stmt = tx.prepare(sql::OTHER_SESSIONS).map_err(map_err)?;
                let rows = stmt.query_map(params![person.get(), keep], |r| r.get::<_, String>(0)).map_err(map_err)?;
                rows.map(|r| r.map(TokenHash).map_err(map_err)).collect::<StoreResult<Vec<_>>>()?
            };
            tx.execute(sql::DELETE_OTHER_SESSIONS, params![person.get(), keep]).map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(ended)
        })
        .await
    }

    async fn person_usage(&self, person: PersonId) -> StoreResult<u64> {
        self.run(move |c| {
            let n: i64 = c.query_row(sql::PERSON_USAGE, [person.get()], |r| r.get(0)).map_err(map_err)?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn purge_expired(&self, now: Millis) -> StoreResult<u64> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            let mut n = 0;
            for (statement, before) in sql::PURGES {
                n += tx.execute(statement, [now - before]).map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.run(move |c| {
            c.query_row("SELECT setting_value FROM settings WHERE setting_key = ?", [key], |r| r.get(0))
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn set_setting(&self, key: &str, value: &str, now: Millis) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |c| {
            c.execute(
                "INSERT INTO settings (setting_key, setting_value, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (setting_key) DO UPDATE SET setting_value = excluded.setting_value, updated_at = excluded.updated_at",
                params![key, value, now],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn setting_or_init(&self, key: &str, value: &str, now: Millis) -> StoreResult<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |c| {
            let tx = write_tx(c)?;
            tx.execute(
                "INSERT OR IGNORE INTO settings (setting_key, setting_value, updated_at) VALUES (?, ?, ?)",
                params![key, value, now],
            )
            .map_err(map_err)?;
            let stored: String = tx
                .query_row("SELECT setting_value FROM settings WHERE setting_key = ?", [&key], |r| r.get(0))
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(stored)
        })
        .await
    }

    async fn worker_heartbeat(&self, w: &WorkerInfo) -> StoreResult<()> {
        let w = w.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, status, current_upload, jobs_done) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
                 status = excluded.status, current_upload = excluded.current_upload, jobs_done = excluded.jobs_done",
                params![
                    w.id,
                    w.host,
                    w.pid,
                    w.started_at,
                    w.heartbeat_at,
                    w.status.as_str(),
                    w.current_upload.map(|u| u.get()),
                    w.jobs_done as i64
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn remove_worker(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.run(move |c| {
            c.execute("DELETE FROM workers WHERE id = ?", [id]).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, host, pid, started_at, heartbeat_at, status, current_upload, jobs_done FROM workers ORDER BY started_at",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map([], worker_row).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn events_since(&self, after_id: i64, limit: u32) -> StoreResult<Vec<Event>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, at, kind, upload_id, person_hash, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map(params![after_id, limit], event_row).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn events_for_upload(&self, id: UploadId) -> StoreResult<Vec<Event>> {
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, at, kind, upload_id, person_hash, detail FROM events WHERE upload_id = ? ORDER BY id",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map([id.get()], event_row).map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }

    async fn dump_rows(&self, out: mpsc::Sender<DumpRow>) -> StoreResult<u64> {
        self.run(move |c| {
            // A read transaction in WAL mode is a consistent snapshot of every table.
            let tx = c.transaction().map_err(map_err)?;
            let mut count = 0u64;
            for table in TABLES {
                let mut stmt = tx.prepare(&format!("SELECT * FROM {table} ORDER BY 1")).map_err(map_err)?;
                let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
                let mut rows = stmt.query([]).map_err(map_err)?;
                while let Some(row) = rows.next().map_err(map_err)? {
                    let mut values = Vec::with_capacity(columns.len());
                    for (i, column) in columns.iter().enumerate() {
                        values.push(match row.get_ref(i).map_err(map_err)? {
                            ValueRef::Null => SqlValue::Null,
                            ValueRef::Integer(n) => SqlValue::Int(n),
                            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                            other => {
                                return Err(StoreError::Corrupt(format!(
                                    "{table}.{} holds a {:?} value",
                                    column,
                                    other.data_type()
                                )));
                            }
                        });
                    }
                    if out.blocking_send((table, columns.clone(), values)).is_err() {
                        return Err(StoreError::query("the dump's reader went away"));
                    }
                    count += 1;
                }
            }
            tx.commit().map_err(map_err)?;
            Ok(count)
        })
        .await
    }

    async fn row_count(&self) -> StoreResult<u64> {
        self.run(move |c| {
            let mut total = 0i64;
            for table in TABLES {
                total += c
                    .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get::<_, i64>(0))
                    .map_err(map_err)?;
            }
            Ok(total as u64)
        })
        .await
    }

    async fn restore_rows(&self, rows: Vec<DumpRow>, replace: bool) -> StoreResult<u64> {
        self.run(move |c| {
            let tx = write_tx(c)?;
            if replace {
                for table in TABLES {
                    tx.execute(&format!("DELETE FROM {table}"), []).map_err(map_err)?;
                }
            }
            let mut known = std::collections::HashMap::new();
            for table in TABLES {
                let stmt = tx.prepare(&format!("SELECT * FROM {table} LIMIT 0")).map_err(map_err)?;
                let cols: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
                known.insert(*table, cols);
            }
            let mut n = 0u64;
            for (table, columns, values) in rows {
                let insert = dump::checked_insert(table, &columns, &known)?;
                let params: Vec<rusqlite::types::Value> = values
                    .into_iter()
                    .map(|v| match v {
                        SqlValue::Null => rusqlite::types::Value::Null,
                        SqlValue::Int(i) => rusqlite::types::Value::Integer(i),
                        SqlValue::Text(t) => rusqlite::types::Value::Text(t),
                    })
                    .collect();
                tx.execute(&insert, rusqlite::params_from_iter(params)).map_err(map_err)?;
                n += 1;
            }
            tx.commit().map_err(map_err)?;
            Ok(n)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err)).await
    }

    async fn replica_lag(&self) -> Vec<(String, Option<u64>)> {
        Vec::new()
    }

    // The orphan sweep of the blob store (issue 11).
    async fn existing_uploads(&self, ids: &[UploadId]) -> StoreResult<std::collections::HashSet<UploadId>> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        self.run(move |c| {
            let mut found = std::collections::HashSet::new();
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut stmt = c.prepare(&format!("SELECT id FROM uploads WHERE id IN ({marks})")).map_err(map_err)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(chunk.iter()), |r| r.get::<_, i64>(0))
                    .map_err(map_err)?;
                for id in rows {
                    found.insert(UploadId::from_stored(id.map_err(map_err)?));
                }
            }
            Ok(found)
        })
        .await
    }
}
