//! The production database: a MySQL/MariaDB primary for every write and
//! MariaDB read replicas for gallery reads, under the one SQL store
//! (`super::sql`), with what has no SQLite counterpart: replica routing,
//! `GET_LOCK` leadership and the migration lock.
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
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts};

use super::dialect::Dialect;
use super::driver::{Driver, Row, RowSink, Session, Value, Work};
use super::{Leadership, ReplicationPos, StoreBackend, StoreError, StoreResult, migrations};
use crate::{DbTarget, StoreMetrics};

/// How long a primary operation may take before the caller is told the
/// database is unavailable (the pool itself has no connect timeout).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(5);
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
pub struct MariaDbDriver {
    primary: Pool,
    replicas: Arc<Vec<Replica>>,
    next_replica: AtomicUsize,
    metrics: Arc<dyn StoreMetrics>,
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

impl Drop for MariaDbDriver {
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

fn params(values: &[Value]) -> Params {
    if values.is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        values
            .iter()
            .map(|v| match v {
                Value::Null => mysql_async::Value::NULL,
                Value::Int(n) => mysql_async::Value::Int(*n),
                Value::Text(t) => mysql_async::Value::Bytes(t.as_bytes().to_vec()),
                Value::Bytes(b) => mysql_async::Value::Bytes(b.clone()),
            })
            .collect(),
    )
}

/// A row of the driver's as owned values.
fn row_of(row: mysql_async::Row) -> StoreResult<Row> {
    let columns = row.columns();
    let mut values = Vec::with_capacity(columns.len());
    for (i, value) in row.unwrap_raw().into_iter().enumerate() {
        values.push(match value {
            None | Some(mysql_async::Value::NULL) => Value::Null,
            Some(mysql_async::Value::Int(n)) => Value::Int(n),
            Some(mysql_async::Value::UInt(n)) => Value::Int(n as i64),
            Some(mysql_async::Value::Bytes(b)) => Value::Bytes(b),
            Some(other) => {
                let name = columns.get(i).map(|c| c.name_str().into_owned()).unwrap_or_default();
                return Err(StoreError::Corrupt(format!("column {name} holds {other:?}")));
            }
        });
    }
    Ok(Row(values))
}

/// A pooled connection, lent to one operation. The transaction is begun and
/// ended by statements of [`Dialect`], which mysql_async does not see: a
/// session dropped inside one (its future cancelled) rolls it back before the
/// connection is used again.
pub struct MariaDbSession {
    conn: Option<Conn>,
    in_transaction: bool,
}

impl MariaDbSession {
    fn new(conn: Conn) -> MariaDbSession {
        MariaDbSession { conn: Some(conn), in_transaction: false }
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a session holds its connection until dropped")
    }
}

impl Drop for MariaDbSession {
    fn drop(&mut self) {
        if !self.in_transaction {
            return;
        }
        if let Some(mut c) = self.conn.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if c.query_drop("ROLLBACK").await.is_err() {
                    flipstack_domain::error::ignore_failure(
                        "closing a connection whose rollback failed",
                        c.disconnect().await,
                    );
                }
            });
        }
    }
}

impl Session for MariaDbSession {
    const DIALECT: Dialect = Dialect::MariaDb;

    async fn query(&mut self, sql: &str, values: &[Value]) -> StoreResult<Vec<Row>> {
        let rows: Vec<mysql_async::Row> = self.conn().exec(sql, params(values)).await.map_err(map_err)?;
        rows.into_iter().map(row_of).collect()
    }

    async fn exec(&mut self, sql: &str, values: &[Value]) -> StoreResult<u64> {
        let conn = self.conn();
        conn.exec_drop(sql, params(values)).await.map_err(map_err)?;
        Ok(conn.affected_rows())
    }

    async fn columns(&mut self, sql: &str) -> StoreResult<Vec<String>> {
        let result = self.conn().exec_iter(sql, Params::Empty).await.map_err(map_err)?;
        let columns = result.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
        result.drop_result().await.map_err(map_err)?;
        Ok(columns)
    }

    async fn stream_into<T: Send>(&mut self, sql: &str, mut sink: RowSink<'_, T>) -> StoreResult<u64> {
        let mut stream =
            self.conn().exec_stream::<mysql_async::Row, _, _>(sql, Params::Empty).await.map_err(map_err)?;
        let columns: Vec<String> = stream.columns().iter().map(|c| c.name_str().into_owned()).collect();
        while let Some(row) = stream.try_next().await.map_err(map_err)? {
            sink.push(&columns, row_of(row)?).await?;
        }
        Ok(sink.sent())
    }

    async fn control(&mut self, sql: &'static str, open_after: bool) -> StoreResult<()> {
        self.conn().query_drop(sql).await.map_err(map_err)?;
        self.in_transaction = open_after;
        Ok(())
    }
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
                    flipstack_domain::error::ignore_failure(
                        "closing a connection that lost its lock",
                        c.disconnect().await,
                    );
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
                    flipstack_domain::error::ignore_failure(
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
    flipstack_domain::error::ignore_failure(
        "releasing the migration lock",
        lock_conn.exec_drop("DO RELEASE_LOCK(?)", (&name,)).await,
    );
    result
}

impl MariaDbDriver {
    pub async fn connect(
        primary_url: &str,
        replica_urls: &[String],
        metrics: Arc<dyn StoreMetrics>,
        replica_wait: Duration,
        max_lag: Duration,
    ) -> StoreResult<MariaDbDriver> {
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

        Ok(MariaDbDriver { primary, replicas, next_replica: AtomicUsize::new(0), metrics, replica_wait, health_task })
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

    /// A session on `replica` once it has applied `at_least`, or why there is none.
    async fn replica_session(
        &self,
        replica: &Replica,
        at_least: Option<&ReplicationPos>,
    ) -> Result<MariaDbSession, &'static str> {
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
            let waited_secs = started.elapsed().as_secs_f64();
            match waited {
                Ok(Some(0)) => self.metrics.gtid_wait(waited_secs, true),
                Ok(_) => {
                    self.metrics.gtid_wait(waited_secs, false);
                    return Err("lagging");
                }
                Err(_) => return Err("error"),
            }
        }
        Ok(MariaDbSession::new(conn))
    }
}

/// One health check: is replication running, and how far behind is it?
async fn check_replica(r: &Replica, max_lag: Duration) {
    let probe = async {
        let mut conn = r.pool.get_conn().await?;
        let status: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
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

impl Driver for MariaDbDriver {
    type Session = MariaDbSession;
    const BACKEND: StoreBackend = StoreBackend::Mysql;

    async fn on_primary<T: Send + 'static>(&self, work: Work<MariaDbSession, T>) -> StoreResult<T> {
        self.metrics.db_query(DbTarget::Primary);
        let conn = with_timeout(PRIMARY_TIMEOUT, self.primary.get_conn()).await?;
        work(&mut MariaDbSession::new(conn)).await
    }

    async fn on_replica<T: Send + 'static>(
        &self,
        at_least: Option<&ReplicationPos>,
        work: Work<MariaDbSession, T>,
    ) -> Option<T> {
        let Some(replica) = self.pick_replica() else {
            if !self.replicas.is_empty() {
                self.metrics.replica_skip("none_healthy");
            }
            return None;
        };
        let reason = match self.replica_session(replica, at_least).await {
            Ok(mut session) => match work(&mut session).await {
                Ok(value) => return Some(value),
                Err(_) => "error",
            },
            Err(reason) => reason,
        };
        self.bench(replica, reason);
        None
    }

    async fn try_lead(&self, duty: &str) -> StoreResult<Option<Box<dyn Leadership>>> {
        self.metrics.db_query(DbTarget::Primary);
        let mut conn = with_timeout(PRIMARY_TIMEOUT, self.primary.get_conn()).await?;
        let name = lock_name(&mut conn, duty).await?;
        let got: Option<Option<i64>> =
            with_timeout(PRIMARY_TIMEOUT, conn.exec_first("SELECT GET_LOCK(?, 0)", (&name,))).await?;
        Ok((got.flatten() == Some(1))
            .then(|| Box::new(LockLeadership { conn: Some(conn), name }) as Box<dyn Leadership>))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.metrics.db_query(DbTarget::Primary);
        let mut conn = with_timeout(PRIMARY_TIMEOUT, self.primary.get_conn()).await?;
        conn.ping().await.map_err(map_err)
    }

    fn is_duplicate(e: &StoreError) -> bool {
        e.driver_error::<mysql_async::Error>().is_some_and(is_duplicate)
    }

    fn replica_lag(&self) -> Vec<(String, Option<u64>)> {
        self.replicas
            .iter()
            .map(|r| {
                let h = r.health.lock().unwrap_or_else(|p| p.into_inner());
                (r.name.clone(), if h.usable || h.lag_ms.is_some() { h.lag_ms } else { None })
            })
            .collect()
    }
}
