//! The production metadata store: a MySQL/MariaDB primary for every write and
//! MariaDB read replicas for gallery reads.
//!
//! Read-your-writes: every write reports the primary's `@@last_gtid`; a read
//! that must show at least a position waits for it on a replica with
//! `MASTER_GTID_WAIT(pos, bound)` and goes to the primary when the wait runs
//! out. A replica that is down or further behind than `max_lag` is skipped
//! until a health check (every second) sees it healthy again; a replica's
//! failure is never a user's error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, TxOpts, Value};
use tokio::sync::mpsc;

use super::sql::{CLAIMABLE_WHERE, EVENT_INSERT, GALLERY_COLUMNS, UPLOAD_COLUMNS};
use super::*;
use crate::domain::{new_id, now_millis};
use crate::metrics::DbTarget;

/// How long a primary operation may take before the caller is told the
/// database is unavailable (the pool itself has no connect timeout).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(5);
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

pub struct MysqlStore {
    primary: Pool,
    replicas: Arc<Vec<Replica>>,
    next_replica: AtomicUsize,
    metrics: Arc<Metrics>,
    replica_wait: Duration,
    health_task: tokio::task::AbortHandle,
}

struct Replica {
    /// host:port, for logs and the admin API (never the password).
    name: String,
    pool: Pool,
    health: Mutex<ReplicaHealth>,
}

#[derive(Debug, Clone, Copy)]
struct ReplicaHealth {
    usable: bool,
    lag_ms: Option<u64>,
    /// A failed read or wait marks the replica unusable until the next health
    /// check at least this late finds it well.
    benched_until: Option<Instant>,
}

impl Drop for MysqlStore {
    fn drop(&mut self) {
        self.health_task.abort();
    }
}

fn map_err(e: mysql_async::Error) -> StoreError {
    match &e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => StoreError::unavailable_because("MariaDB", e),
        // Lock wait timeout, deadlock, server shutting down, too many connections.
        mysql_async::Error::Server(s) if matches!(s.code, 1205 | 1213 | 1053 | 1040 | 2006 | 2013) => {
            StoreError::unavailable_because("MariaDB", e)
        }
        _ => StoreError::query_because("MariaDB", e),
    }
}

fn is_duplicate(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1062)
}

fn pool_for(url: &str, max: usize) -> StoreResult<(Pool, String)> {
    let opts = Opts::from_url(url).map_err(|e| StoreError::query_because("bad database URL", e))?;
    let name = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let constraints = PoolConstraints::new(0, max).unwrap_or_default();
    let builder = OptsBuilder::from_opts(opts)
        .pool_opts(
            PoolOpts::default().with_constraints(constraints).with_inactive_connection_ttl(Duration::from_secs(60)),
        )
        .setup(vec!["SET NAMES utf8mb4 COLLATE utf8mb4_bin"])
        .tcp_nodelay(true)
        .stmt_cache_size(64);
    Ok((Pool::new(builder), name))
}

async fn with_timeout<T>(limit: Duration, f: impl Future<Output = Result<T, mysql_async::Error>>) -> StoreResult<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(StoreError::unavailable(format!("the database did not answer within {limit:?}"))),
    }
}

fn get<T: FromValue>(row: &Row, i: usize) -> StoreResult<T> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(StoreError::Corrupt(format!("column {i}: {e}"))),
        None => Err(StoreError::Corrupt(format!("column {i} missing"))),
    }
}

fn upload_row(r: &Row) -> StoreResult<UploadRow> {
    Ok(UploadRow {
        id: get(r, 0)?,
        person_id: get(r, 1)?,
        display_name: get(r, 2)?,
        format: get(r, 3)?,
        bytes: get(r, 4)?,
        width: get(r, 5)?,
        height: get(r, 6)?,
        state: get(r, 7)?,
        attempts: get(r, 8)?,
        claims: get(r, 9)?,
        next_attempt_at: get(r, 10)?,
        lease_owner: get(r, 11)?,
        lease_until: get(r, 12)?,
        failure_reason: get(r, 13)?,
        flipped_bytes: get(r, 14)?,
        flipped_width: get(r, 15)?,
        flipped_height: get(r, 16)?,
        flip_method: get(r, 17)?,
        thumb_width: get(r, 18)?,
        thumb_height: get(r, 19)?,
        created_at: get(r, 20)?,
        updated_at: get(r, 21)?,
        finished_at: get(r, 22)?,
    })
}

fn gallery_row(r: &Row) -> StoreResult<GalleryRow> {
    Ok(GalleryRow {
        id: get(r, 0)?,
        display_name: get(r, 1)?,
        format: get(r, 2)?,
        state: get(r, 3)?,
        failure_reason: get(r, 4)?,
        width: get(r, 5)?,
        height: get(r, 6)?,
        flipped_width: get(r, 7)?,
        flipped_height: get(r, 8)?,
        thumb_width: get(r, 9)?,
        thumb_height: get(r, 10)?,
        bytes: get(r, 11)?,
        created_at: get(r, 12)?,
    })
}

fn worker_row(r: &Row) -> StoreResult<WorkerInfo> {
    Ok(WorkerInfo {
        id: get(r, 0)?,
        host: get(r, 1)?,
        pid: get::<i64>(r, 2)? as u32,
        started_at: get(r, 3)?,
        heartbeat_at: get(r, 4)?,
        status: get::<String>(r, 5)
            .and_then(|s| WorkerStatus::parse(&s).ok_or_else(|| unknown_name("worker status", &s)))?,
        current_upload: get::<Option<i64>>(r, 6)?.map(UploadId::from_stored),
        jobs_done: get::<i64>(r, 7)? as u64,
    })
}

fn event_row(r: &Row) -> StoreResult<Event> {
    Ok(Event {
        id: get(r, 0)?,
        at: get(r, 1)?,
        kind: get::<String>(r, 2).and_then(|s| EventKind::parse(&s).ok_or_else(|| unknown_name("event kind", &s)))?,
        upload_id: get::<Option<i64>>(r, 3)?.map(UploadId::from_stored),
        person_hash: get(r, 4)?,
        detail: get(r, 5)?,
    })
}

fn email_hash(email: &str) -> String {
    Email::parse(email).map(|e| e.hashed_id()).unwrap_or_default()
}

/// The position the connection's last transaction wrote (`@@last_gtid`).
async fn last_gtid(conn: &mut Conn) -> StoreResult<WriteReceipt> {
    let gtid: Option<String> = conn.exec_first("SELECT @@last_gtid", ()).await.map_err(map_err)?;
    Ok(WriteReceipt { position: gtid.and_then(|g| ReplicationPos::parse(&g)) })
}

async fn insert_event(
    tx: &mut mysql_async::Transaction<'_>,
    now: Millis,
    kind: EventKind,
    upload: UploadId,
    person_hash: Option<&str>,
    detail: Option<&str>,
) -> Result<(), mysql_async::Error> {
    tx.exec_drop(EVENT_INSERT, (new_id(), now, kind.as_str(), upload.get(), person_hash, detail)).await
}

async fn person_of(tx: &mut mysql_async::Transaction<'_>, id: UploadId) -> StoreResult<(i64, String)> {
    let row: Option<(i64, String)> = tx
        .exec_first(
            "SELECT u.person_id, p.email FROM uploads u JOIN people p ON p.id = u.person_id WHERE u.id = ?",
            (id.get(),),
        )
        .await
        .map_err(map_err)?;
    row.ok_or_else(|| StoreError::Corrupt(format!("upload {id} has no owner")))
}

/// The name of an advisory lock: `migrate` (the migrations) or a fleet
/// duty's. Locks are per server, so it carries the database's name: two
/// stacks on one server do not wait for each other.
async fn lock_name(conn: &mut Conn, what: &str) -> StoreResult<String> {
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.map_err(map_err)?;
    Ok(format!("flipstack-{what}:{}", db.unwrap_or_default()))
}

/// A `GET_LOCK` held by one connection the leader keeps checked out of the
/// pool: the server frees it when that connection (or this process) dies.
struct LockLeadership {
    conn: Option<Conn>,
    name: String,
}

#[async_trait]
impl Leadership for LockLeadership {
    async fn still_held(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        let held: StoreResult<Option<Option<i64>>> =
            with_timeout(PRIMARY_TIMEOUT, conn.exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (&self.name,)))
                .await;
        let held = matches!(held, Ok(Some(Some(1))));
        if !held {
            // A connection that lost the lock (or cannot say) is closed, never pooled.
            if let Some(c) = self.conn.take() {
                tokio::spawn(async move {
                    crate::error::ignore_failure("closing a connection that lost its lock", c.disconnect().await);
                });
            }
        }
        held
    }
}

impl Drop for LockLeadership {
    fn drop(&mut self) {
        // Given up (the duty stopped): release the lock before the
        // connection goes back to the pool; without a runtime, close it.
        if let Some(mut c) = self.conn.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let name = std::mem::take(&mut self.name);
            rt.spawn(async move {
                if c.exec_drop("DO RELEASE_LOCK(?)", (&name,)).await.is_err() {
                    crate::error::ignore_failure(
                        "closing a connection whose lock release failed",
                        c.disconnect().await,
                    );
                }
            });
        }
    }
}

/// How long a process waits for another one's migrations before it gives up.
const MIGRATION_LOCK_WAIT_SECS: u32 = 300;

/// Brings the schema up to date while holding `GET_LOCK`, so any number of
/// processes starting together on an empty database migrate one after
/// another: the first applies the migrations, the others find them applied.
/// The lock belongs to one connection held for the whole run (and is freed
/// by the server if this process dies).
async fn migrate_under_lock(primary: &Pool) -> StoreResult<()> {
    let mut lock_conn = with_timeout(PRIMARY_TIMEOUT, primary.get_conn()).await?;
    let name = lock_name(&mut lock_conn, "migrate").await?;
    let got: Option<Option<i64>> =
        lock_conn.exec_first("SELECT GET_LOCK(?, ?)", (&name, MIGRATION_LOCK_WAIT_SECS)).await.map_err(map_err)?;
    if got.flatten() != Some(1) {
        return Err(StoreError::unavailable(format!(
            "another process held the migration lock {name:?} for over {MIGRATION_LOCK_WAIT_SECS} s; \
             look for a stuck `flipstack` process or migration in SHOW PROCESSLIST"
        )));
    }
    let result = async {
        // Tables take the database's default character set: make it full UTF-8
        // with exact (binary) comparison, as in SQLite.
        lock_conn.query_drop("ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin").await.map_err(map_err)?;
        let mut migrating = primary.clone();
        migrations::runner().run_async(&mut migrating).await.map_err(StoreError::migration)?;
        Ok(())
    }
    .await;
    // Released whatever happened; a lost connection releases it too.
    crate::error::ignore_failure(
        "releasing the migration lock",
        lock_conn.exec_drop("DO RELEASE_LOCK(?)", (&name,)).await,
    );
    result
}

impl MysqlStore {
    pub async fn connect(
        primary_url: &str,
        replica_urls: &[String],
        metrics: Arc<Metrics>,
        replica_wait: Duration,
        max_lag: Duration,
    ) -> StoreResult<MysqlStore> {
        let (primary, _) = pool_for(primary_url, 32)?;
        migrate_under_lock(&primary).await?;

        let mut replicas = Vec::new();
        for url in replica_urls {
            let (pool, name) = pool_for(url, 32)?;
            replicas.push(Replica {
                name,
                pool,
                health: Mutex::new(ReplicaHealth { usable: false, lag_ms: None, benched_until: None }),
            });
        }
        let replicas = Arc::new(replicas);
        for r in replicas.iter() {
            check_replica(r, max_lag).await;
        }
        let checked = replicas.clone();
        let health_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for r in checked.iter() {
                    check_replica(r, max_lag).await;
                }
            }
        })
        .abort_handle();

        Ok(MysqlStore { primary, replicas, next_replica: AtomicUsize::new(0), metrics, replica_wait, health_task })
    }

    async fn conn(&self) -> StoreResult<Conn> {
        self.metrics.db_query(DbTarget::Primary);
        with_timeout(PRIMARY_TIMEOUT, self.primary.get_conn()).await
    }

    /// A usable replica, round robin.
    fn pick_replica(&self) -> Option<&Replica> {
        let n = self.replicas.len();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find(|r| {
            let h = r.health.lock().unwrap_or_else(|p| p.into_inner());
            h.usable && h.benched_until.is_none_or(|t| Instant::now() >= t)
        })
    }

    fn bench(&self, replica: &Replica, reason: &'static str) {
        self.metrics.replica_skip(reason);
        let mut h = replica.health.lock().unwrap_or_else(|p| p.into_inner());
        h.benched_until = Some(Instant::now() + Duration::from_secs(1));
        tracing::warn!(replica = %replica.name, reason, "replica skipped until it looks healthy again");
    }

    async fn read_page(conn: &mut Conn, person: PersonId, offset: u64, limit: u64) -> StoreResult<GalleryPage> {
        let mut opts = TxOpts::default();
        opts.with_readonly(Some(true));
        let mut tx = conn.start_transaction(opts).await.map_err(map_err)?;
        let rows: Vec<Row> = tx
            .exec(
                format!("SELECT {GALLERY_COLUMNS} FROM uploads WHERE person_id = ? ORDER BY id DESC LIMIT ? OFFSET ?"),
                (person.get(), limit, offset),
            )
            .await
            .map_err(map_err)?;
        let counts: Option<(i64, Option<i64>)> = tx
            .exec_first(
                "SELECT COUNT(*), CAST(SUM(CASE WHEN state IN ('pending', 'processing') THEN 1 ELSE 0 END) AS SIGNED) \
                 FROM uploads WHERE person_id = ?",
                (person.get(),),
            )
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            items.push(gallery_row(r)?.into_item()?);
        }
        let (total, unfinished) = counts.unwrap_or((0, None));
        Ok(GalleryPage { items, total: total as u64, unfinished: unfinished.unwrap_or(0) as u64 })
    }

    /// Reads from a replica that has reached `at_least`, or gives the reason it could not.
    async fn replica_read(
        &self,
        replica: &Replica,
        person: PersonId,
        offset: u64,
        limit: u64,
        at_least: Option<&ReplicationPos>,
    ) -> Result<GalleryPage, &'static str> {
        let mut conn = match tokio::time::timeout(REPLICA_CONNECT_TIMEOUT, replica.pool.get_conn()).await {
            Ok(Ok(c)) => c,
            _ => return Err("down"),
        };
        self.metrics.db_query(DbTarget::Replica);
        if let Some(pos) = at_least {
            let started = Instant::now();
            let waited: Result<Option<i64>, _> = conn
                .exec_first("SELECT MASTER_GTID_WAIT(?, ?)", (pos.to_string(), self.replica_wait.as_secs_f64()))
                .await;
            self.metrics.gtid_wait_seconds.observe(started.elapsed().as_secs_f64());
            match waited {
                Ok(Some(0)) => {
                    self.metrics.gtid_waits.get_or_create(&crate::metrics::OutcomeLabel { outcome: "reached" }).inc();
                }
                Ok(_) => {
                    self.metrics.gtid_waits.get_or_create(&crate::metrics::OutcomeLabel { outcome: "timeout" }).inc();
                    return Err("lagging");
                }
                Err(_) => return Err("error"),
            }
        }
        Self::read_page(&mut conn, person, offset, limit).await.map_err(|_| "error")
    }
}

/// One health check: is replication running, and how far behind is it?
async fn check_replica(r: &Replica, max_lag: Duration) {
    let probe = async {
        let mut conn = r.pool.get_conn().await?;
        let status: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await?;
        Ok::<_, mysql_async::Error>(status)
    };
    let (usable, lag_ms) = match tokio::time::timeout(Duration::from_millis(800), probe).await {
        Ok(Ok(Some(row))) => {
            let running = |col: &str| row.get::<String, &str>(col).is_some_and(|v| v == "Yes");
            let behind: Option<u64> = row.get::<Option<u64>, &str>("Seconds_Behind_Master").flatten();
            let lag_ms = behind.map(|s| s * 1000);
            let ok = running("Slave_SQL_Running")
                && running("Slave_IO_Running")
                && lag_ms.is_some_and(|l| l <= max_lag.as_millis() as u64);
            (ok, lag_ms)
        }
        // Not a replica at all (no status row): usable, lag unknown.
        Ok(Ok(None)) => (true, None),
        _ => (false, None),
    };
    let mut h = r.health.lock().unwrap_or_else(|p| p.into_inner());
    let was = h.usable;
    h.usable = usable;
    h.lag_ms = lag_ms;
    if usable && h.benched_until.is_some_and(|t| Instant::now() >= t) {
        h.benched_until = None;
    }
    if was != usable {
        if usable {
            tracing::info!(replica = %r.name, ?lag_ms, "replica is healthy; gallery reads use it again");
        } else {
            tracing::warn!(replica = %r.name, ?lag_ms, "replica is down or behind; gallery reads go to the primary");
        }
    }
}

#[async_trait]
impl MetadataStore for MysqlStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Mysql
    }

    async fn person_by_email(&self, email: &Email) -> StoreResult<Option<Person>> {
        let mut c = self.conn().await?;
        let row: Option<(i64, i64)> = c
            .exec_first("SELECT id, created_at FROM people WHERE email = ?", (email.as_str(),))
            .await
            .map_err(map_err)?;
        Ok(row.map(|(id, at)| Person { id: PersonId::from_stored(id), email: email.clone(), created_at: at }))
    }

    async fn accept_upload(&self, a: AcceptUpload) -> StoreResult<WriteReceipt> {
        let mut c = self.conn().await?;
        {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            let person_id = match &a.owner {
                NewOwner::Existing(id) => *id,
                NewOwner::Create { id, email } => {
                    match tx
                        .exec_drop(
                            "INSERT INTO people (id, email, created_at) VALUES (?, ?, ?)",
                            (id.get(), email.as_str(), a.now),
                        )
                        .await
                    {
                        Ok(()) => *id,
                        Err(e) if is_duplicate(&e) => return Err(StoreError::EmailTaken),
                        Err(e) => return Err(map_err(e)),
                    }
                }
            };
            let u = &a.upload;
            let values: Vec<Value> = vec![
                u.id.get().into(),
                person_id.get().into(),
                u.name.as_str().into(),
                u.format.as_str().into(),
                (u.bytes as i64).into(),
                u.width.into(),
                u.height.into(),
                a.now.into(),
                a.now.into(),
                a.now.into(),
            ];
            tx.exec_drop(
                "INSERT INTO uploads (id, person_id, display_name, format, bytes, width, height, state, attempts, \
                 claims, next_attempt_at, enqueued_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, NULL, ?, ?)",
                Params::Positional(values),
            )
            .await
            .map_err(map_err)?;
            if let Some(s) = &a.session {
                tx.exec_drop(
                    sql::SESSION_INSERT,
                    (s.token_hash.0.as_str(), s.person_id.get(), a.now, s.expires_at, s.proven),
                )
                .await
                .map_err(map_err)?;
            }
            insert_event(&mut tx, a.now, EventKind::Uploaded, u.id, Some(&a.person_hash), Some(u.format.as_str()))
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
        }
        last_gtid(&mut c).await
    }

    async fn upload(&self, id: UploadId) -> StoreResult<Option<Upload>> {
        let mut c = self.conn().await?;
        let row: Option<Row> = c
            .exec_first(format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), (id.get(),))
            .await
            .map_err(map_err)?;
        row.map(|r| upload_row(&r)?.into_upload()).transpose()
    }

    async fn upload_owner(&self, id: UploadId) -> StoreResult<Option<(PersonId, ImageFormat)>> {
        let mut c = self.conn().await?;
        let row: Option<(i64, String)> =
            c.exec_first("SELECT person_id, format FROM uploads WHERE id = ?", (id.get(),)).await.map_err(map_err)?;
        Ok(row.and_then(|(p, f)| ImageFormat::parse(&f).map(|f| (PersonId::from_stored(p), f))))
    }

    async fn gallery_page(&self, person: PersonId, offset: u64, limit: u64, from: ReadFrom) -> StoreResult<PageRead> {
        if let ReadFrom::Replica { at_least } = &from {
            if let Some(replica) = self.pick_replica() {
                match self.replica_read(replica, person, offset, limit, at_least.as_ref()).await {
                    Ok(page) => {
                        return Ok(PageRead { page, source: ReadSource::Replica, position: None });
                    }
                    Err(reason) => self.bench(replica, reason),
                }
            } else if !self.replicas.is_empty() {
                self.metrics.replica_skip("none_healthy");
            }
        }
        let mut c = self.conn().await?;
        let page = Self::read_page(&mut c, person, offset, limit).await?;
        let position: Option<String> = c.exec_first("SELECT @@gtid_binlog_pos", ()).await.map_err(map_err)?;
        Ok(PageRead { page, source: ReadSource::Primary, position: position.and_then(|p| ReplicationPos::parse(&p)) })
    }

    async fn delete_upload(
        &self,
        id: UploadId,
        person: PersonId,
        person_hash: &str,
    ) -> StoreResult<Option<(Upload, WriteReceipt)>> {
        let mut c = self.conn().await?;
        let upload = {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            let row: Option<Row> = tx
                .exec_first(
                    format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ? AND person_id = ? FOR UPDATE"),
                    (id.get(), person.get()),
                )
                .await
                .map_err(map_err)?;
            let Some(row) = row else { return Ok(None) };
            let upload = upload_row(&row)?.into_upload()?;
            tx.exec_drop("DELETE FROM uploads WHERE id = ?", (id.get(),)).await.map_err(map_err)?;
            tx.exec_drop("DELETE FROM events WHERE upload_id = ?", (id.get(),)).await.map_err(map_err)?;
            insert_event(&mut tx, now_millis(), EventKind::Deleted, id, Some(person_hash), None)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            upload
        };
        Ok(Some((upload, last_gtid(&mut c).await?)))
    }

    async fn claim(&self, id: UploadId, owner: &str, now: Millis, lease_until: Millis) -> StoreResult<Option<Upload>> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        tx.exec_drop(
            format!(
                "UPDATE uploads SET state = 'processing', lease_owner = ?, lease_until = ?, claims = claims + 1, \
                 updated_at = ? WHERE id = ? AND {CLAIMABLE_WHERE}"
            ),
            (owner, lease_until, now, id.get(), now, now),
        )
        .await
        .map_err(map_err)?;
        if tx.affected_rows() == 0 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        }
        let row: Option<Row> = tx
            .exec_first(format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?"), (id.get(),))
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        row.map(|r| upload_row(&r)?.into_upload()).transpose()
    }

    async fn renew_lease(&self, id: UploadId, owner: &str, lease_until: Millis) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "UPDATE uploads SET lease_until = ? WHERE id = ? AND state = 'processing' AND lease_owner = ?",
            (lease_until, id.get(), owner),
        )
        .await
        .map_err(map_err)?;
        Ok(c.affected_rows() == 1)
    }

    async fn complete(
        &self,
        id: UploadId,
        owner: &str,
        o: &FlipOutcome,
        now: Millis,
    ) -> StoreResult<Option<StateChange>> {
        let mut c = self.conn().await?;
        let (person, email) = {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            let values: Vec<Value> = vec![
                (o.flipped_bytes as i64).into(),
                o.flipped_width.into(),
                o.flipped_height.into(),
                o.method.as_str().into(),
                o.thumb_width.into(),
                o.thumb_height.into(),
                now.into(),
                now.into(),
                id.get().into(),
                owner.into(),
            ];
            tx.exec_drop(
                "UPDATE uploads SET state = 'done', lease_owner = NULL, lease_until = NULL, failure_reason = NULL, \
                 flipped_bytes = ?, flipped_width = ?, flipped_height = ?, flip_method = ?, thumb_width = ?, \
                 thumb_height = ?, updated_at = ?, finished_at = ? \
                 WHERE id = ? AND state = 'processing' AND lease_owner = ?",
                Params::Positional(values),
            )
            .await
            .map_err(map_err)?;
            if tx.affected_rows() == 0 {
                tx.rollback().await.map_err(map_err)?;
                return Ok(None);
            }
            let (person, email) = person_of(&mut tx, id).await?;
            insert_event(&mut tx, now, EventKind::Done, id, Some(&email_hash(&email)), Some(&o.method))
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            (person, email)
        };
        Ok(Some(StateChange {
            person_id: PersonId::from_stored(person),
            person_hash: email_hash(&email),
            receipt: last_gtid(&mut c).await?,
        }))
    }

    async fn fail_attempt(
        &self,
        id: UploadId,
        owner: &str,
        reason: &str,
        failure: Failure,
        now: Millis,
    ) -> StoreResult<Option<StateChange>> {
        let reason = clip_reason(reason);
        let mut c = self.conn().await?;
        let (person, email) = {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            let kind = match failure {
                Failure::RetryAt(at) => {
                    tx.exec_drop(sql::FAIL_RETRY, (at, reason.as_str(), now, id.get(), owner))
                        .await
                        .map_err(map_err)?;
                    EventKind::Retry
                }
                Failure::Permanent => {
                    tx.exec_drop(sql::FAIL_PERMANENT, (now, reason.as_str(), now, now, id.get(), owner))
                        .await
                        .map_err(map_err)?;
                    EventKind::Failed
                }
            };
            if tx.affected_rows() == 0 {
                tx.rollback().await.map_err(map_err)?;
                return Ok(None);
            }
            let (person, email) = person_of(&mut tx, id).await?;
            insert_event(&mut tx, now, kind, id, Some(&email_hash(&email)), Some(&reason)).await.map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            (person, email)
        };
        Ok(Some(StateChange {
            person_id: PersonId::from_stored(person),
            person_hash: email_hash(&email),
            receipt: last_gtid(&mut c).await?,
        }))
    }

    async fn give_up(&self, id: UploadId, reason: &str, now: Millis) -> StoreResult<Option<StateChange>> {
        let reason = clip_reason(reason);
        let mut c = self.conn().await?;
        let (person, email) = {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            tx.exec_drop(
                "UPDATE uploads SET state = 'failed', lease_owner = NULL, lease_until = NULL, failure_reason = ?, \
                 updated_at = ?, finished_at = ? WHERE id = ? AND state IN ('pending', 'processing')",
                (reason.as_str(), now, now, id.get()),
            )
            .await
            .map_err(map_err)?;
            if tx.affected_rows() == 0 {
                tx.rollback().await.map_err(map_err)?;
                return Ok(None);
            }
            let (person, email) = person_of(&mut tx, id).await?;
            insert_event(&mut tx, now, EventKind::Failed, id, Some(&email_hash(&email)), Some(&reason))
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            (person, email)
        };
        Ok(Some(StateChange {
            person_id: PersonId::from_stored(person),
            person_hash: email_hash(&email),
            receipt: last_gtid(&mut c).await?,
        }))
    }

    async fn claimable(&self, now: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        let mut c = self.conn().await?;
        let ids: Vec<i64> = c
            .exec(
                format!("SELECT id FROM uploads WHERE {CLAIMABLE_WHERE} ORDER BY next_attempt_at, id LIMIT ?"),
                (now, now, limit),
            )
            .await
            .map_err(map_err)?;
        Ok(ids.into_iter().map(UploadId::from_stored).collect())
    }

    async fn unqueued(&self, now: Millis, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        let mut c = self.conn().await?;
        let ids: Vec<i64> = c.exec(sql::UNQUEUED_JOBS, (now, cutoff, cutoff, limit)).await.map_err(map_err)?;
        Ok(ids.into_iter().map(UploadId::from_stored).collect())
    }

    async fn mark_enqueued(&self, id: UploadId, now: Millis) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop(sql::MARK_ENQUEUED, (now, id.get())).await.map_err(map_err)
    }

    async fn unsent(&self, cutoff: Millis, limit: u32) -> StoreResult<Vec<UploadId>> {
        let mut c = self.conn().await?;
        let ids: Vec<i64> = c.exec(sql::UNSENT_JOBS, (cutoff, limit)).await.map_err(map_err)?;
        Ok(ids.into_iter().map(UploadId::from_stored).collect())
    }

    async fn try_lead(&self, duty: &str) -> StoreResult<Option<Box<dyn Leadership>>> {
        let mut conn = self.conn().await?;
        let name = lock_name(&mut conn, duty).await?;
        let got: Option<Option<i64>> =
            with_timeout(PRIMARY_TIMEOUT, conn.exec_first("SELECT GET_LOCK(?, 0)", (&name,))).await?;
        Ok((got.flatten() == Some(1))
            .then(|| Box::new(LockLeadership { conn: Some(conn), name }) as Box<dyn Leadership>))
    }

    async fn upload_stats(&self) -> StoreResult<UploadStats> {
        let mut c = self.conn().await?;
        let rows: Vec<(String, i64, Option<i64>)> = c.exec(sql::UPLOAD_STATS, ()).await.map_err(map_err)?;
        Ok(UploadStats::from_rows(rows))
    }

    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<Upload>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                format!(
                    "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE state = 'failed' ORDER BY finished_at DESC LIMIT ?"
                ),
                (limit,),
            )
            .await
            .map_err(map_err)?;
        rows.iter().map(|r| upload_row(r)?.into_upload()).collect()
    }

    async fn retry_upload(&self, id: UploadId, now: Millis) -> StoreResult<Option<StateChange>> {
        let mut c = self.conn().await?;
        let (person, person_hash) = {
            let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
            tx.exec_drop(sql::RETRY_UPLOAD, (now, now, now, id.get())).await.map_err(map_err)?;
            if tx.affected_rows() == 0 {
                tx.rollback().await.map_err(map_err)?;
                return Ok(None);
            }
            let (person, email) = person_of(&mut tx, id).await?;
            let person_hash = email_hash(&email);
            insert_event(&mut tx, now, EventKind::Retried, id, Some(&person_hash), None).await.map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            (person, person_hash)
        };
        Ok(Some(StateChange {
            person_id: PersonId::from_stored(person),
            person_hash,
            receipt: last_gtid(&mut c).await?,
        }))
    }

    async fn find_uploads(&self, filter: &UploadFilter, limit: u32) -> StoreResult<Vec<(Upload, String)>> {
        let (state, format, reason) = filter.params();
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                sql::find_uploads(),
                (
                    state.as_str(),
                    state.as_str(),
                    format.as_str(),
                    format.as_str(),
                    reason.as_str(),
                    reason.as_str(),
                    limit,
                ),
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let email: Option<String> = get(r, 23)?;
                Ok((upload_row(r)?.into_upload()?, email.map(|e| email_hash(&e)).unwrap_or_default()))
            })
            .collect()
    }

    async fn create_session(&self, s: NewSession, now: Millis) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop(sql::SESSION_INSERT, (s.token_hash.0.as_str(), s.person_id.get(), now, s.expires_at, s.proven))
            .await
            .map_err(map_err)
    }

    async fn session(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<SessionInfo>> {
        let mut c = self.conn().await?;
        let row: Option<(i64, String, i64, bool)> =
            c.exec_first(sql::SESSION_SELECT, (token_hash.0.as_str(), now)).await.map_err(map_err)?;
        row.map(|(p, e, x, proven)| {
            let email = Email::parse(&e).map_err(|err| StoreError::Corrupt(format!("stored e-mail: {err}")))?;
            Ok(SessionInfo { person_id: PersonId::from_stored(p), email, expires_at: x, proven })
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop("DELETE FROM sessions WHERE token_hash = ?", (token_hash.0.as_str(),)).await.map_err(map_err)
    }

    async fn create_signin_token(
        &self,
        token_hash: &TokenHash,
        person: PersonId,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO signin_tokens (token_hash, person_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (token_hash.0.as_str(), person.get(), now, expires_at),
        )
        .await
        .map_err(map_err)
    }

    async fn consume_signin_token(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<SigninOutcome> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        let hash = token_hash.0.as_str();
        tx.exec_drop(
            "UPDATE signin_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
            (now, hash, now),
        )
        .await
        .map_err(map_err)?;
        let outcome = if tx.affected_rows() == 1 {
            let row: Option<(i64, String, i64)> = tx
                .exec_first(
                    "SELECT p.id, p.email, p.created_at FROM signin_tokens t JOIN people p ON p.id = t.person_id \
                     WHERE t.token_hash = ?",
                    (hash,),
                )
                .await
                .map_err(map_err)?;
            let (id, email, created) =
                row.ok_or_else(|| StoreError::Corrupt("sign-in link without a person".into()))?;
            let email = Email::parse(&email).map_err(|e| StoreError::Corrupt(format!("stored e-mail: {e}")))?;
            tx.exec_drop(sql::VERIFY_PERSON, (now, id)).await.map_err(map_err)?;
            if tx.affected_rows() == 1 {
                tx.exec_drop(sql::DELETE_UNPROVEN_SESSIONS, (id,)).await.map_err(map_err)?;
            }
            SigninOutcome::SignedIn(Person { id: PersonId::from_stored(id), email, created_at: created })
        } else {
            let row: Option<Option<i64>> = tx
                .exec_first("SELECT used_at FROM signin_tokens WHERE token_hash = ?", (hash,))
                .await
                .map_err(map_err)?;
            match row {
                None => SigninOutcome::Unknown,
                Some(Some(_)) => SigninOutcome::AlreadyUsed,
                Some(None) => SigninOutcome::Expired,
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn signin_token_email(&self, token_hash: &TokenHash, now: Millis) -> StoreResult<Option<Email>> {
        let mut c = self.conn().await?;
        let email: Option<String> =
            c.exec_first(sql::SIGNIN_TOKEN_EMAIL, (token_hash.0.as_str(), now)).await.map_err(map_err)?;
        email.map(|e| Email::parse(&e).map_err(|err| StoreError::Corrupt(format!("stored e-mail: {err}")))).transpose()
    }

    async fn delete_other_sessions(&self, person: PersonId, keep: &TokenHash) -> StoreResult<Vec<TokenHash>> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        let ended: Vec<String> =
            tx.exec(sql::OTHER_SESSIONS, (person.get(), keep.0.as_str())).await.map_err(map_err)?;
        tx.exec_drop(sql::DELETE_OTHER_SESSIONS, (person.get(), keep.0.as_str())).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(ended.into_iter().map(TokenHash).collect())
    }

    async fn person_usage(&self, person: PersonId) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let n: Option<i64> = c.exec_first(sql::PERSON_USAGE, (person.get(),)).await.map_err(map_err)?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    async fn purge_expired(&self, now: Millis) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        let mut n = 0;
        for (statement, before) in sql::PURGES {
            tx.exec_drop(statement, (now - before,)).await.map_err(map_err)?;
            n += tx.affected_rows();
        }
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        c.exec_first("SELECT setting_value FROM settings WHERE setting_key = ?", (key,)).await.map_err(map_err)
    }

    async fn set_setting(&self, key: &str, value: &str, now: Millis) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO settings (setting_key, setting_value, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE setting_value = VALUES(setting_value), updated_at = VALUES(updated_at)",
            (key, value, now),
        )
        .await
        .map_err(map_err)
    }

    async fn setting_or_init(&self, key: &str, value: &str, now: Millis) -> StoreResult<String> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO settings (setting_key, setting_value, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE setting_key = setting_key",
            (key, value, now),
        )
        .await
        .map_err(map_err)?;
        let stored: Option<String> =
            c.exec_first("SELECT setting_value FROM settings WHERE setting_key = ?", (key,)).await.map_err(map_err)?;
        stored.ok_or_else(|| StoreError::Corrupt(format!("setting {key} vanished")))
    }

    async fn worker_heartbeat(&self, w: &WorkerInfo) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, status, current_upload, jobs_done) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE heartbeat_at = VALUES(heartbeat_at), \
             status = VALUES(status), current_upload = VALUES(current_upload), jobs_done = VALUES(jobs_done)",
            (
                w.id.as_str(),
                w.host.as_str(),
                w.pid,
                w.started_at,
                w.heartbeat_at,
                w.status.as_str(),
                w.current_upload.map(|u| u.get()),
                w.jobs_done as i64,
            ),
        )
        .await
        .map_err(map_err)
    }

    async fn remove_worker(&self, id: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.exec_drop("DELETE FROM workers WHERE id = ?", (id,)).await.map_err(map_err)
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                "SELECT id, host, pid, started_at, heartbeat_at, status, current_upload, jobs_done FROM workers ORDER BY started_at",
                (),
            )
            .await
            .map_err(map_err)?;
        rows.iter().map(worker_row).collect()
    }

    async fn events_since(&self, after_id: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                "SELECT id, at, kind, upload_id, person_hash, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            .await
            .map_err(map_err)?;
        rows.iter().map(event_row).collect()
    }

    async fn events_for_upload(&self, id: UploadId) -> StoreResult<Vec<Event>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                "SELECT id, at, kind, upload_id, person_hash, detail FROM events WHERE upload_id = ? ORDER BY id",
                (id.get(),),
            )
            .await
            .map_err(map_err)?;
        rows.iter().map(event_row).collect()
    }

    async fn dump_rows(&self, out: mpsc::Sender<DumpRow>) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let mut opts = TxOpts::default();
        opts.with_consistent_snapshot(true).with_readonly(Some(true));
        let mut tx = c.start_transaction(opts).await.map_err(map_err)?;
        let mut count = 0u64;
        for table in TABLES {
            let mut stream =
                tx.exec_stream::<Row, _, _>(format!("SELECT * FROM {table} ORDER BY 1"), ()).await.map_err(map_err)?;
            let columns: Vec<String> = stream.columns().iter().map(|c| c.name_str().into_owned()).collect();
            while let Some(row) = stream.try_next().await.map_err(map_err)? {
                let mut values = Vec::with_capacity(columns.len());
                for (i, col) in columns.iter().enumerate() {
                    values.push(match row.as_ref(i) {
                        None | Some(Value::NULL) => SqlValue::Null,
                        Some(Value::Int(n)) => SqlValue::Int(*n),
                        Some(Value::UInt(n)) => SqlValue::Int(*n as i64),
                        Some(Value::Bytes(b)) => SqlValue::Text(String::from_utf8_lossy(b).into_owned()),
                        Some(other) => {
                            return Err(StoreError::Corrupt(format!("{table}.{col} holds {other:?}")));
                        }
                    });
                }
                if out.send((table, columns.clone(), values)).await.is_err() {
                    return Err(StoreError::query("the dump's reader went away"));
                }
                count += 1;
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(count)
    }

    async fn row_count(&self) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let mut total = 0u64;
        for table in TABLES {
            let n: Option<i64> = c.exec_first(format!("SELECT COUNT(*) FROM {table}"), ()).await.map_err(map_err)?;
            total += n.unwrap_or(0) as u64;
        }
        Ok(total)
    }

    async fn restore_rows(&self, rows: Vec<DumpRow>, replace: bool) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        if replace {
            for table in TABLES {
                tx.exec_drop(format!("DELETE FROM {table}"), ()).await.map_err(map_err)?;
            }
        }
        let mut known = std::collections::HashMap::new();
        for table in TABLES {
            let stream =
                tx.exec_stream::<Row, _, _>(format!("SELECT * FROM {table} LIMIT 0"), ()).await.map_err(map_err)?;
            let cols: Vec<String> = stream.columns().iter().map(|c| c.name_str().into_owned()).collect();
            drop(stream);
            known.insert(*table, cols);
        }
        let mut n = 0u64;
        for (table, columns, values) in rows {
            let insert = dump::checked_insert(table, &columns, &known)?;
            let params: Vec<Value> = values
                .into_iter()
                .map(|v| match v {
                    SqlValue::Null => Value::NULL,
                    SqlValue::Int(i) => Value::Int(i),
                    SqlValue::Text(t) => Value::Bytes(t.into_bytes()),
                })
                .collect();
            tx.exec_drop(insert, Params::Positional(params)).await.map_err(map_err)?;
            n += 1;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        c.ping().await.map_err(map_err)
    }

    async fn replica_lag(&self) -> Vec<(String, Option<u64>)> {
        self.replicas
            .iter()
            .map(|r| {
                let h = r.health.lock().unwrap_or_else(|p| p.into_inner());
                (r.name.clone(), if h.usable || h.lag_ms.is_some() { h.lag_ms } else { None })
            })
            .collect()
    }

    // The orphan sweep of the blob store (issue 11).
    async fn existing_uploads(&self, ids: &[UploadId]) -> StoreResult<std::collections::HashSet<UploadId>> {
        let mut c = self.conn().await?;
        let mut found = std::collections::HashSet::new();
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let params: Vec<Value> = chunk.iter().map(|id| Value::Int(id.get())).collect();
            let rows: Vec<i64> = c
                .exec(format!("SELECT id FROM uploads WHERE id IN ({marks})"), Params::Positional(params))
                .await
                .map_err(map_err)?;
            found.extend(rows.into_iter().map(UploadId::from_stored));
        }
        Ok(found)
    }
}
