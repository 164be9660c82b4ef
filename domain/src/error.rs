//! What the error types of the ports share: the error beneath, kept.
//!
//! `StoreError`, `QueueError`, `CacheError` and `BlobError` are `Clone`
//! (the gallery's single flight hands one result to every waiter), so the
//! driver's error they wrap is held in an [`Arc`]. Their `Display` is the
//! whole message (what failed, with the driver's words), for log lines and
//! operators; `source()` is the driver's error itself, for code that inspects
//! it (`downcast_ref::<rusqlite::Error>()`, …). They are classified by methods
//! (`is_unavailable`), never by matching on the text.

use std::sync::Arc;

/// The error beneath an error of ours, shared. Its `source()` is that error
/// itself, so a walk down the chain meets the driver's own type
/// (`downcast_ref::<rusqlite::Error>()`); an `Arc` in the chain would hide it.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// `e` as a kept cause.
pub fn cause(e: impl std::error::Error + Send + Sync + 'static) -> Option<Cause> {
    Some(Cause(Arc::new(e)))
}

/// Logs a result that is deliberately not acted on (a best-effort cleanup, a
/// notification nobody waits for): the one place such failures are written,
/// at debug level, with what was being done.
pub fn ignore_failure<T, E: std::fmt::Display>(doing: &str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "{doing} failed; going on without it");
    }
}
