//! The embedded database: one SQLite file in WAL mode, shared safely by
//! several processes on one machine (`flipstack serve` + `flipstack work`).
//! A whole operation runs on the blocking pool, never on the async threads:
//! its session's futures never wait, so the thread drives them to the end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};
use tokio::sync::Semaphore;

use super::dialect::Dialect;
use super::driver::{self, Driver, Row, RowSink, Session, Value, Work};
use super::{Leadership, StoreBackend, StoreError, StoreResult, migrations};
use crate::{DbTarget, StoreMetrics};

const POOL_SIZE: usize = 4;
/// Prepared statements kept per connection (the store has about fifty).
const STATEMENT_CACHE: usize = 64;

pub struct SqliteDriver {
    path: PathBuf,
    conns: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    metrics: Arc<dyn StoreMetrics>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Another process may hold the write lock for a moment; wait rather than fail.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed upload survives a power cut, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

/// A row of `stmt`'s result as owned values.
fn row_of(r: &rusqlite::Row<'_>, width: usize) -> StoreResult<Row> {
    let mut values = Vec::with_capacity(width);
    for i in 0..width {
        values.push(match r.get_ref(i).map_err(map_err)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            ValueRef::Real(_) => {
                let name = r.as_ref().column_name(i).unwrap_or("?");
                return Err(StoreError::Corrupt(format!("column {name} holds a Real value")));
            }
        });
    }
    Ok(Row(values))
}

/// A pooled connection, lent to one operation on a blocking-pool thread.
pub struct SqliteSession {
    conn: Connection,
}

impl Session for SqliteSession {
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(map_err)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(row_of(r, width)?);
        }
        Ok(out)
    }

    async fn exec(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(map_err)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params)).map_err(map_err)? as u64)
    }

    async fn columns(&mut self, sql: &str) -> StoreResult<Vec<String>> {
        let stmt = self.conn.prepare(sql).map_err(map_err)?;
        Ok(stmt.column_names().map(str::to_owned).collect())
    }

    async fn stream_into<T: Send>(&mut self, sql: &str, mut sink: RowSink<'_, T>) -> StoreResult<u64> {
        let mut stmt = self.conn.prepare(sql).map_err(map_err)?;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let mut rows = stmt.query([]).map_err(map_err)?;
        while let Some(r) = rows.next().map_err(map_err)? {
            // This thread is the blocking pool's: it waits for the reader here
            // rather than hold the statement across an await.
            sink.push_blocking(&columns, row_of(r, columns.len())?)?;
        }
        Ok(sink.sent())
    }

    async fn control(&mut self, sql: &'static str, _open_after: bool) -> StoreResult<()> {
        // SQLite knows whether a transaction is open (`is_autocommit`); the pool asks it.
        self.conn.execute_batch(sql).map_err(map_err)
    }
}

impl SqliteDriver {
    pub async fn open(path: &Path, metrics: Arc<dyn StoreMetrics>) -> StoreResult<SqliteDriver> {
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
        Ok(SqliteDriver {
            path,
            conns: Arc::new(Mutex::new(conns)),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
            metrics,
        })
    }

    /// A connection back into the pool, never with a transaction left open.
    fn give_back(conns: &Mutex<Vec<Connection>>, conn: Connection) {
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            return; // dropped: closing it ends the transaction
        }
        conns.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }
}

impl Driver for SqliteDriver {
    type Session = SqliteSession;
    const BACKEND: StoreBackend = StoreBackend::Sqlite;

    async fn on_primary<T: Send + 'static>(&self, work: Work<SqliteSession, T>) -> StoreResult<T> {
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
            let conn = match taken {
                Some(c) => c,
                None => open_connection(&path).map_err(map_err)?,
            };
            let mut session = SqliteSession { conn };
            // Nothing in a SQLite session waits, so this never parks the thread.
            let result = futures::executor::block_on(work(&mut session));
            Self::give_back(&conns, session.conn);
            result
        })
        .await
        .map_err(|e| StoreError::query_because("database task failed", e))?
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

    async fn ping(&self) -> StoreResult<()> {
        self.on_primary(driver::work(|s: &mut SqliteSession| {
            Box::pin(async move { s.query("SELECT 1", &[]).await.map(drop) })
        }))
        .await
    }

    fn is_duplicate(e: &StoreError) -> bool {
        e.driver_error::<rusqlite::Error>().is_some_and(is_unique_violation)
    }
}
