//! Making and storing an upload's screen sizes ([`crate::imaging::screen`]):
//! the worker does it beside each flip (finishing after the upload is
//! marked done, so they never delay the flip's arrival); the server does it on the
//! first request of an upload stored before screen sizes existed, so old
//! uploads get them without being uploaded again. Both write the same
//! objects from the same source, so doing it twice is harmless.

use bytes::Bytes;

use crate::blob::{BlobError, BlobKind, BlobStore};
use crate::domain::{ImageFormat, UploadId};
use crate::imaging::{FlipError, Limits, ScreenPicture, screen};
use crate::store::MetadataStore;

#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("the picture store failed while making screen sizes: {0}")]
    Blob(#[source] BlobError),
    #[error("the upload's source picture is not in the store (deleted, or not flipped yet)")]
    Missing,
    #[error("could not check that the upload still exists: {0}")]
    Store(#[source] crate::store::StoreError),
    #[error("screen sizes could not be made: {0}")]
    Image(#[source] FlipError),
    #[error("making screen sizes crashed: {0}")]
    Crashed(#[source] std::io::Error),
}

/// Where an upload's screen sizes are made from: its original, or for
/// HEIC/AVIF the JPEG view of it the worker stored.
pub fn source_kind(format: ImageFormat) -> BlobKind {
    if screen::made_from_view(format) { BlobKind::OriginalDisplay } else { BlobKind::Original }
}

/// Makes every screen size of upload `id` from `source` (read from the
/// store when `None`) on the blocking pool, stores them, and returns them.
/// An upload deleted meanwhile loses them again at once: the check comes
/// after the writes, so either it sees the row gone, or the delete, which
/// removes the row before the objects, comes after them.
pub async fn make_and_store(
    blobs: &BlobStore,
    store: &dyn MetadataStore,
    id: UploadId,
    format: ImageFormat,
    limits: Limits,
    source: Option<Bytes>,
) -> Result<Vec<ScreenPicture>, ScreenError> {
    let source = match source {
        Some(s) => s,
        None => {
            blobs.get_bytes(source_kind(format), id).await.map_err(ScreenError::Blob)?.ok_or(ScreenError::Missing)?
        }
    };
    let pictures = at_low_priority(move || screen::screen_pictures(&source, format, &limits))
        .await
        .map_err(ScreenError::Crashed)?
        .map_err(ScreenError::Image)?;
    let mut writes = Vec::with_capacity(pictures.len() * 2);
    for p in &pictures {
        writes.push(blobs.put(BlobKind::screen(p.size, false), id, p.original.clone()));
        writes.push(blobs.put(BlobKind::screen(p.size, true), id, p.flipped.clone()));
    }
    futures::future::try_join_all(writes).await.map_err(ScreenError::Blob)?;
    if store.upload(id).await.map_err(ScreenError::Store)?.is_none() {
        blobs.delete_all(id).await.map_err(ScreenError::Blob)?;
        return Err(ScreenError::Missing);
    }
    Ok(pictures)
}

/// Runs `work` on a thread of its own at the lowest CPU priority (nice 19):
/// screen sizes are a convenience, so on a busy machine they take what the
/// flips and the requests leave instead of slowing them down. (At nice 10
/// a job's screen sizes, still running, took a tenth of a core from the
/// next upload's flip: 103 ms from upload to flip shown, against 90 ms when
/// they had finished; BENCHMARKS.md §7.)
async fn at_low_priority<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, std::io::Error> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("screen-sizes".into()).spawn(move || {
        // Linux keeps the nice value per thread: this one only. Failing to
        // lower it costs nothing but the priority.
        // SAFETY: setpriority reads only its integer arguments.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, LOW_PRIORITY_NICE) };
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    })?;
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(std::io::Error::other("the screen-size thread panicked")),
        Err(_) => Err(std::io::Error::other("the screen-size thread ended without an answer")),
    }
}

const LOW_PRIORITY_NICE: libc::c_int = 19;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_at_a_lower_priority_and_reports_a_panic() {
        // SAFETY: getpriority reads only its integer arguments.
        let nice = at_low_priority(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert!(nice >= LOW_PRIORITY_NICE, "the thread ran at nice {nice}");
        let caller = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert!(caller < LOW_PRIORITY_NICE, "the caller's priority was lowered too");

        let panicked = at_low_priority(|| panic!("a broken picture")).await;
        assert!(panicked.is_err());
    }
}
