//! The thin layer under the one SQL store ([`super::sql`]): what a database
//! driver must do — run a statement with positional `?` parameters, start and
//! end a transaction, stream a result — over a tiny owned value type, so that
//! every statement and the job state machine are written once.
//!
//! The SQLite driver runs a whole operation on the blocking pool (its session's
//! futures never wait); the MariaDB driver awaits the network. Both hand the
//! operation a [`Session`]: one connection for the length of the operation.

use std::future::Future;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::dialect::{Dialect, Tx};
use super::{Leadership, ReplicationPos, StoreError, StoreResult};
use flipstack_domain::domain::{PersonId, StoreBackend, UploadId};

/// A parameter or a column value. Integers are 64-bit on both back ends;
/// MariaDB sends text columns as bytes ([`Dialect::text_arrives_as_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Int(i64::from(n))
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        // Counts and sizes: far below i64::MAX.
        Value::Int(n as i64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

/// The parameters of a statement, in order: `args![id.get(), now, reason.as_str()]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::driver::Value::from($value)),*]
    };
}
pub(crate) use args;

/// One result row, read by column index.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, i: usize) -> StoreResult<T> {
        let value = self.0.get(i).ok_or_else(|| StoreError::Corrupt(format!("column {i} missing")))?;
        T::from_value(value).ok_or_else(|| StoreError::Corrupt(format!("column {i}: unexpected {value:?}")))
    }
}

/// What a column value can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(n) => Some(*n),
            // A DECIMAL (MariaDB's SUM) arrives as its digits.
            Value::Text(s) => s.parse().ok(),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::Null => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<bool> {
        i64::from_value(v).map(|n| n != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            Value::Int(_) | Value::Null => None,
        }
    }
}

/// Ids are checked as they are read: a row that holds no valid id is corrupt.
impl FromValue for UploadId {
    fn from_value(v: &Value) -> Option<UploadId> {
        UploadId::from_i64(i64::from_value(v)?).ok()
    }
}

impl FromValue for PersonId {
    fn from_value(v: &Value) -> Option<PersonId> {
        PersonId::from_i64(i64::from_value(v)?).ok()
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// An operation's body: it gets the session for as long as it runs.
pub(crate) type Work<S, T> = Box<dyn for<'s> FnOnce(&'s mut S) -> BoxFuture<'s, StoreResult<T>> + Send>;

/// `work` as a [`Work`] (a closure given straight to a function with this
/// bound learns that it takes the session for any lifetime).
pub(crate) fn work<S, T, F>(work: F) -> Work<S, T>
where
    F: for<'s> FnOnce(&'s mut S) -> BoxFuture<'s, StoreResult<T>> + Send + 'static,
{
    Box::new(work)
}

/// One connection, held for one operation.
pub(crate) trait Session: Send {
    /// Whose SQL this session speaks.
    const DIALECT: Dialect;

    /// The rows a statement returns.
    fn query(&mut self, sql: &str, params: &[Value]) -> impl Future<Output = StoreResult<Vec<Row>>> + Send;

    /// Runs a statement; returns how many rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> impl Future<Output = StoreResult<u64>> + Send;

    /// The names of the columns a statement (without parameters) returns.
    fn columns(&mut self, sql: &str) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Hands every row of a statement (without parameters) to `sink` as it is
    /// read; returns how many went.
    fn stream_into<T: Send>(
        &mut self,
        sql: &str,
        sink: RowSink<'_, T>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Runs a transaction-control statement of [`Dialect`] (`BEGIN …`,
    /// `COMMIT`, `ROLLBACK`); `open_after` says whether a transaction is open
    /// once it ran, so a session dropped half-way never leaves one open.
    fn control(&mut self, sql: &'static str, open_after: bool) -> impl Future<Output = StoreResult<()>> + Send;

    fn begin(&mut self, tx: Tx) -> impl Future<Output = StoreResult<()>> + Send {
        self.control(Self::DIALECT.begin(tx), true)
    }

    /// Commits what `result` was made in, or rolls it back when it is an
    /// error (which it returns unchanged).
    fn finish<T: Send>(&mut self, result: StoreResult<T>) -> impl Future<Output = StoreResult<T>> + Send {
        async move {
            match result {
                Ok(value) => {
                    self.control("COMMIT", false).await?;
                    Ok(value)
                }
                Err(e) => {
                    flipstack_domain::error::ignore_failure(
                        "rolling back a transaction",
                        self.control("ROLLBACK", false).await,
                    );
                    Err(e)
                }
            }
        }
    }
}

/// A database the one SQL store runs on: where an operation's session comes
/// from, and what has no SQL to share (locks, replicas, health).
pub(crate) trait Driver: Send + Sync + 'static {
    type Session: Session;

    const BACKEND: StoreBackend;

    /// Whether `e` is the driver's unique-key violation (an e-mail address taken).
    fn is_duplicate(e: &StoreError) -> bool;

    /// Runs `work` on a connection to the primary.
    fn on_primary<T: Send + 'static>(
        &self,
        work: Work<Self::Session, T>,
    ) -> impl Future<Output = StoreResult<T>> + Send;

    /// Runs `work` on a healthy replica that has applied `at_least`; `None`
    /// when there is none or it failed (the caller then reads the primary).
    fn on_replica<T: Send + 'static>(
        &self,
        at_least: Option<&ReplicationPos>,
        work: Work<Self::Session, T>,
    ) -> impl Future<Output = Option<T>> + Send {
        let _ = (at_least, work);
        std::future::ready(None)
    }

    /// See [`super::Jobs::try_lead`].
    fn try_lead(&self, duty: &str) -> impl Future<Output = StoreResult<Option<Box<dyn Leadership>>>> + Send;

    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;

    fn replica_lag(&self) -> Vec<(String, Option<u64>)> {
        Vec::new()
    }
}

/// Where [`Session::stream_into`] puts rows: each is made into an item and
/// sent to a channel, with a wait for room (awaited, or blocking on a
/// blocking-pool thread).
pub(crate) struct RowSink<'a, T> {
    out: &'a mpsc::Sender<T>,
    make: &'a mut (dyn FnMut(&[String], Row) -> StoreResult<T> + Send),
    sent: u64,
}

impl<'a, T: Send> RowSink<'a, T> {
    pub fn new(
        out: &'a mpsc::Sender<T>,
        make: &'a mut (dyn FnMut(&[String], Row) -> StoreResult<T> + Send),
    ) -> RowSink<'a, T> {
        RowSink { out, make, sent: 0 }
    }

    pub async fn push(&mut self, columns: &[String], row: Row) -> StoreResult<()> {
        let item = (self.make)(columns, row)?;
        self.out.send(item).await.map_err(|_| receiver_gone())?;
        self.sent += 1;
        Ok(())
    }

    /// [`RowSink::push`] for a thread that may block (never an async one).
    pub fn push_blocking(&mut self, columns: &[String], row: Row) -> StoreResult<()> {
        let item = (self.make)(columns, row)?;
        self.out.blocking_send(item).map_err(|_| receiver_gone())?;
        self.sent += 1;
        Ok(())
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }
}

fn receiver_gone() -> StoreError {
    StoreError::query("the dump's reader went away")
}
