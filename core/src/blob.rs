//! The blob store: originals, flipped pictures and thumbnails, under keys the
//! server makes from upload ids (never from a client's file name). The
//! adapter is `object_store`, so a local folder (`file://`) and S3 (`s3://`)
//! are the same code and differ only in configuration. On a local folder every
//! write is durable (file and directories fsynced) before it returns.

use crate::domain::BlobBackend;
use crate::error::{Cause, cause};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use crate::backups::{BACKUP_FOLDER, BackupName};
use crate::domain::UploadId;
use crate::imaging::ScreenSize;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Original,
    Flipped,
    OriginalThumb,
    FlippedThumb,
    /// Browser-viewable copies of a HEIC/AVIF original and its flip.
    OriginalDisplay,
    FlippedDisplay,
    /// Screen sizes ([`crate::imaging::screen`]) of the original and the flip.
    OriginalMedium,
    FlippedMedium,
    OriginalLarge,
    FlippedLarge,
}

impl BlobKind {
    pub const ALL: [BlobKind; 10] = [
        Self::Original,
        Self::Flipped,
        Self::OriginalThumb,
        Self::FlippedThumb,
        Self::OriginalDisplay,
        Self::FlippedDisplay,
        Self::OriginalMedium,
        Self::FlippedMedium,
        Self::OriginalLarge,
        Self::FlippedLarge,
    ];

    /// The kind holding one screen size of the original or of the flip.
    pub fn screen(size: ScreenSize, flipped: bool) -> BlobKind {
        match (size, flipped) {
            (ScreenSize::Medium, false) => Self::OriginalMedium,
            (ScreenSize::Medium, true) => Self::FlippedMedium,
            (ScreenSize::Large, false) => Self::OriginalLarge,
            (ScreenSize::Large, true) => Self::FlippedLarge,
        }
    }

    /// Is it a screen size?
    pub fn is_screen(self) -> bool {
        matches!(self, Self::OriginalMedium | Self::FlippedMedium | Self::OriginalLarge | Self::FlippedLarge)
    }

    fn folder(self) -> &'static str {
        match self {
            Self::Original => "originals",
            Self::Flipped => "flipped",
            Self::OriginalThumb => "thumbs/original",
            Self::FlippedThumb => "thumbs/flipped",
            Self::OriginalDisplay => "display/original",
            Self::FlippedDisplay => "display/flipped",
            Self::OriginalMedium => "screen/medium/original",
            Self::FlippedMedium => "screen/medium/flipped",
            Self::OriginalLarge => "screen/large/original",
            Self::FlippedLarge => "screen/large/flipped",
        }
    }
}

pub fn key(kind: BlobKind, id: UploadId) -> Path {
    Path::from(format!("{}/{}", kind.folder(), id.get()))
}

/// The inverse of [`key`]; `None` for anything flipstack did not name.
pub fn parse_key(key: &str) -> Option<(BlobKind, UploadId)> {
    let (folder, digits) = key.rsplit_once('/')?;
    let kind = BlobKind::ALL.into_iter().find(|k| k.folder() == folder)?;
    let id: i64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(()).and(UploadId::from_i64(id).ok()).map(|id| (kind, id))
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the orphan sweep could not list or delete objects: {0}")]
    Blob(#[source] BlobError),
    #[error("the orphan sweep could not look the uploads up: {0}")]
    Store(#[source] crate::store::StoreError),
}

/// What one orphan sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepSummary {
    /// Objects flipstack named, written before the cutoff.
    pub old_enough: u64,
    /// Of those, the ones whose upload had no row, now deleted.
    pub removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store configuration: {message}")]
    Config { message: String, source: Option<Cause> },
    #[error("the blob store is unavailable: {message}")]
    Unavailable { message: String, source: Option<Cause> },
}

impl BlobError {
    fn config(message: impl Into<String>) -> BlobError {
        BlobError::Config { message: message.into(), source: None }
    }

    fn config_because(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> BlobError {
        BlobError::Config { message: format!("{context}: {e}"), source: cause(e) }
    }

    pub(crate) fn unavailable_because(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> BlobError {
        BlobError::Unavailable { message: format!("{context}: {e}"), source: cause(e) }
    }

    /// Whether the caller can retry: the store did not answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BlobError::Unavailable { .. })
    }
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        BlobError::Unavailable { message: e.to_string(), source: cause(e) }
    }
}

/// A backup in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackup {
    pub name: BackupName,
    pub bytes: u64,
}

pub struct Blob {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Present on S3: signs short-lived links for the owner.
    signer: Option<Arc<AmazonS3>>,
    /// Present on a local folder: where a key lives on disk, for
    /// [`BlobStore::put_file`].
    local: Option<Arc<LocalFileSystem>>,
    kind: BlobBackend,
    prefix: Option<String>,
}

impl BlobStore {
    /// `file://PATH` or `s3://bucket[/prefix]`; S3 takes its credentials from the
    /// usual AWS variables and `endpoint` (moto, LocalStack) when given.
    pub fn from_url(url: &str, region: &str, endpoint: Option<&str>) -> Result<BlobStore, BlobError> {
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir)
                .map_err(|e| BlobError::config_because(&format!("cannot create the blob folder {dir}"), e))?;
            // fsync: a write returns only when the file and the directory
            // entries naming it are on disk, as S3 promises, because the
            // database row that points at it is committed right after.
            let fs = Arc::new(
                LocalFileSystem::new_with_prefix(dir).map_err(|e| BlobError::config_because(dir, e))?.with_fsync(true),
            );
            return Ok(BlobStore {
                store: fs.clone(),
                signer: None,
                local: Some(fs),
                kind: BlobBackend::File,
                prefix: None,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, Some(p.trim_matches('/').to_owned()).filter(|p| !p.is_empty())),
                None => (rest, None),
            };
            if bucket.is_empty() {
                return Err(BlobError::config("s3:// needs a bucket name, e.g. s3://my-bucket/flipstack"));
            }
            crate::tls::install_crypto_provider();
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_region(region);
            if let Some(ep) = endpoint {
                // moto and LocalStack answer path-style requests, often over plain HTTP.
                b = b.with_endpoint(ep).with_allow_http(true).with_virtual_hosted_style_request(false);
            }
            let s3 = Arc::new(b.build().map_err(|e| BlobError::config_because(url, e))?);
            return Ok(BlobStore { store: s3.clone(), signer: Some(s3), local: None, kind: BlobBackend::S3, prefix });
        }
        Err(BlobError::config(format!("FLIPSTACK_BLOB_URL must be file://PATH or s3://bucket[/prefix], not {url:?}")))
    }

    pub fn kind(&self) -> BlobBackend {
        self.kind
    }

    fn path(&self, kind: BlobKind, id: UploadId) -> Path {
        self.prefixed(key(kind, id))
    }

    fn prefixed(&self, key: Path) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => key,
        }
    }

    fn backup_path(&self, name: &BackupName) -> Path {
        self.prefixed(Path::from(format!("{BACKUP_FOLDER}/{name}")))
    }

    /// Writes a new backup: nothing is found under its name until
    /// `shutdown` completes it (S3: a multipart upload; a local folder: a
    /// temporary file, renamed), and `abort` leaves nothing behind.
    pub fn backup_writer(&self, name: &BackupName) -> BufWriter {
        let part = if self.kind == BlobBackend::File { 1024 * 1024 } else { 8 * 1024 * 1024 };
        BufWriter::with_capacity(self.store.clone(), self.backup_path(name), part).with_max_concurrency(2)
    }

    /// The backups under `backups/`, oldest first. Objects there whose name
    /// flipstack did not make (an operator's own files) are left out, so
    /// nothing prunes them.
    pub async fn list_backups(&self) -> Result<Vec<StoredBackup>, BlobError> {
        let folder = self.prefixed(Path::from(BACKUP_FOLDER));
        let mut backups = Vec::new();
        let mut stream = self.store.list(Some(&folder));
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            if let Some(name) = meta.location.filename().and_then(|n| BackupName::parse(n).ok())
                && meta.location == self.backup_path(&name)
            {
                backups.push(StoredBackup { name, bytes: meta.size });
            }
        }
        backups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(backups)
    }

    /// A backup's whole text, or `None` when there is no such backup.
    pub async fn get_backup(&self, name: &BackupName) -> Result<Option<Bytes>, BlobError> {
        match self.store.get(&self.backup_path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one backup; an absent one is fine.
    pub async fn delete_backup(&self, name: &BackupName) -> Result<(), BlobError> {
        match self.store.delete(&self.backup_path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a local file (a spooled upload): on S3 streamed in parts; on a
    /// local folder linked in (copied from another file system), made
    /// durable and renamed into place in one call on the blocking pool.
    /// Streamed through `object_store` the local copy took hundreds of
    /// 8 KiB reads and writes, each a trip to the blocking pool.
    pub async fn put_file(&self, kind: BlobKind, id: UploadId, file: &FsPath) -> Result<u64, BlobError> {
        if let Some(local) = &self.local {
            let dest = local
                .path_to_filesystem(&self.path(kind, id))
                .map_err(|e| BlobError::unavailable_because("naming the blob's file", e))?;
            let src = file.to_owned();
            return tokio::task::spawn_blocking(move || publish_local_file(&src, &dest))
                .await
                .map_err(|e| BlobError::unavailable_because("storing the upload", e))?
                .map_err(|e| BlobError::unavailable_because("writing to the blob folder", e));
        }
        let mut src = tokio::fs::File::open(file)
            .await
            .map_err(|e| BlobError::unavailable_because("reading the spooled upload", e))?;
        // S3 wants parts of 5 MiB or more; a local folder takes any size, and
        // small parts, two at a time, keep a burst of large uploads from
        // holding tens of MiB each in buffers (32 × 20 MB: peak RSS).
        let (part, in_flight) = if self.kind == BlobBackend::File { (1024 * 1024, 2) } else { (8 * 1024 * 1024, 8) };
        let mut w =
            BufWriter::with_capacity(self.store.clone(), self.path(kind, id), part).with_max_concurrency(in_flight);
        let n = tokio::io::copy(&mut src, &mut w)
            .await
            .map_err(|e| BlobError::unavailable_because("writing to the blob store", e))?;
        w.shutdown().await.map_err(|e| BlobError::unavailable_because("finishing the upload to the blob store", e))?;
        Ok(n)
    }

    pub async fn put(&self, kind: BlobKind, id: UploadId, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store.put(&self.path(kind, id), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// A stream of the blob for serving, or `None` when there is no such blob.
    pub async fn get(&self, kind: BlobKind, id: UploadId) -> Result<Option<Blob>, BlobError> {
        match self.store.get(&self.path(kind, id)).await {
            Ok(r) => {
                let size = r.meta.size;
                let stream = r.into_stream().map(|c| c.map_err(BlobError::from)).boxed();
                Ok(Some(Blob { size, stream }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_bytes(&self, kind: BlobKind, id: UploadId) -> Result<Option<Bytes>, BlobError> {
        match self.store.get(&self.path(kind, id)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, kind: BlobKind, id: UploadId) -> Result<bool, BlobError> {
        match self.store.head(&self.path(kind, id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one blob; an absent one is fine.
    pub async fn delete(&self, kind: BlobKind, id: UploadId) -> Result<(), BlobError> {
        match self.store.delete(&self.path(kind, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every blob of an upload; absent ones are fine.
    pub async fn delete_all(&self, id: UploadId) -> Result<(), BlobError> {
        for kind in BlobKind::ALL {
            self.delete(kind, id).await?;
        }
        Ok(())
    }

    /// A short-lived link straight to the object (S3 only).
    pub async fn presigned_get(
        &self,
        kind: BlobKind,
        id: UploadId,
        ttl: Duration,
    ) -> Result<Option<url::Url>, BlobError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer.signed_url(http::Method::GET, &self.path(kind, id), ttl).await?;
        Ok(Some(url))
    }

    /// Every key in the store (under its prefix), for checks and operators.
    pub async fn list(&self) -> Result<Vec<String>, BlobError> {
        let prefix = self.prefix.as_ref().map(|p| Path::from(p.as_str()));
        let mut keys = Vec::new();
        let mut stream = self.store.list(prefix.as_ref());
        while let Some(meta) = stream.next().await {
            keys.push(meta?.location.to_string());
        }
        keys.sort();
        Ok(keys)
    }

    /// Deletes every object written before `cutoff` (ms since the epoch) whose
    /// upload has no row: what a delete that raced a worker, or a crash
    /// between a write and its row, left behind. Objects newer than the
    /// cutoff are left alone, so an upload between its original and its row
    /// is never touched; so is anything whose key flipstack did not make, and
    /// everything under `backups/`.
    pub async fn sweep_orphans(
        &self,
        store: &dyn crate::store::MetadataStore,
        cutoff: crate::domain::Millis,
    ) -> Result<SweepSummary, SweepError> {
        const BATCH: usize = 500;
        let prefix = self.prefix.as_ref().map(|p| Path::from(p.as_str()));
        let mut summary = SweepSummary::default();
        let mut batch: Vec<(Path, UploadId)> = Vec::new();
        let mut stream = self.store.list(prefix.as_ref());
        loop {
            let next = stream.next().await;
            if let Some(meta) = &next {
                let meta = meta
                    .as_ref()
                    .map_err(|e| SweepError::Blob(BlobError::Unavailable { message: e.to_string(), source: None }))?;
                let key = meta.location.as_ref();
                let key = match &self.prefix {
                    Some(p) => key.strip_prefix(p.as_str()).and_then(|k| k.strip_prefix('/')).unwrap_or(""),
                    None => key,
                };
                // Backups are no upload's: never swept, whatever their names.
                let backup = key.split('/').next() == Some(BACKUP_FOLDER);
                if !backup
                    && meta.last_modified.timestamp_millis() < cutoff
                    && let Some((_, id)) = parse_key(key)
                {
                    batch.push((meta.location.clone(), id));
                }
            }
            if batch.len() >= BATCH || (next.is_none() && !batch.is_empty()) {
                let ids: Vec<UploadId> = batch.iter().map(|(_, id)| *id).collect();
                let live = store.existing_uploads(&ids).await.map_err(SweepError::Store)?;
                summary.old_enough += batch.len() as u64;
                for (path, id) in batch.drain(..) {
                    if live.contains(&id) {
                        continue;
                    }
                    match self.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => summary.removed += 1,
                        Err(e) => return Err(SweepError::Blob(e.into())),
                    }
                    tracing::info!(key = %path, upload = %id, "removed an object whose upload is gone");
                }
            }
            if next.is_none() {
                return Ok(summary);
            }
        }
    }

    /// Is the store reachable? (A missing key is an answer, so it counts as yes.)
    pub async fn ping(&self) -> Result<(), BlobError> {
        let probe = UploadId::from_i64(1).expect("1 is a valid id");
        self.exists(BlobKind::Original, probe).await.map(|_| ())
    }
}

/// Publishes `src` at `dest` as `object_store`'s local folder does, durably:
/// under a staging name beside `dest` (`#` and digits, which its listing
/// skips), the data synced, renamed over `dest`, the folder synced.
fn publish_local_file(src: &FsPath, dest: &FsPath) -> std::io::Result<u64> {
    let folder = dest.parent().ok_or_else(|| std::io::Error::other("a blob's path has no folder"))?;
    if !folder.is_dir() {
        std::fs::create_dir_all(folder)?;
        if let Some(above) = folder.parent() {
            std::fs::File::open(above)?.sync_all()?;
        }
    }
    let mut staging = dest.as_os_str().to_owned();
    staging.push(format!("#{}", std::process::id()));
    let staging = std::path::PathBuf::from(staging);
    // Left by a crashed process of the same id: the key is this upload's alone.
    let _ = std::fs::remove_file(&staging);
    let publish = || -> std::io::Result<u64> {
        let bytes = match std::fs::hard_link(src, &staging) {
            Ok(()) => std::fs::metadata(&staging)?.len(),
            Err(_) => std::fs::copy(src, &staging)?,
        };
        std::fs::File::open(&staging)?.sync_all()?;
        std::fs::rename(&staging, dest)?;
        // Stored again from the same spool file, `dest` is already a link to
        // it, and such a rename does nothing: the staging name stays.
        match std::fs::remove_file(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::File::open(folder)?.sync_all()?;
        Ok(bytes)
    };
    publish().inspect_err(|_| {
        let _ = std::fs::remove_file(&staging);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backups::PICTURE_FOLDERS;

    #[test]
    fn keys_round_trip_and_pictures_stay_in_the_picture_folders() {
        let id = UploadId::from_i64(4242).unwrap();
        for kind in BlobKind::ALL {
            let k = key(kind, id);
            assert_eq!(parse_key(k.as_ref()), Some((kind, id)));
            // The AWS lifecycle rules for pictures name these folders.
            let top = k.as_ref().split('/').next().unwrap();
            assert!(PICTURE_FOLDERS.contains(&top), "{kind:?} is under {top}/, not a picture folder");
            assert_ne!(top, BACKUP_FOLDER);
        }
        let backup = format!("{BACKUP_FOLDER}/{}", BackupName::at(1_796_667_300_000));
        assert_eq!(parse_key(&backup), None, "a backup is no upload's");
    }

    #[tokio::test]
    async fn a_spooled_file_is_stored_whole_and_outlives_its_spool_name() {
        let dir = tempfile::tempdir().unwrap();
        let blobs =
            BlobStore::from_url(&format!("file://{}", dir.path().join("blobs").display()), "us-east-1", None).unwrap();
        let spool = dir.path().join("upload-spool");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&spool, &bytes).unwrap();
        let id = UploadId::from_i64(77).unwrap();
        assert_eq!(blobs.put_file(BlobKind::Original, id, &spool).await.unwrap(), bytes.len() as u64);
        // Stored again (a retried request): replaced, not refused.
        assert_eq!(blobs.put_file(BlobKind::Original, id, &spool).await.unwrap(), bytes.len() as u64);
        // The server removes its spool file once the upload is recorded.
        std::fs::remove_file(&spool).unwrap();
        assert_eq!(blobs.get_bytes(BlobKind::Original, id).await.unwrap().unwrap(), bytes);
        // No staging name is left beside it.
        let folder = dir.path().join("blobs").join(key(BlobKind::Original, id).as_ref()).parent().unwrap().to_owned();
        let names: Vec<_> = std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(blobs.list().await.unwrap(), vec![key(BlobKind::Original, id).to_string()]);
        // A missing spool file is an error that names the blob folder.
        let missing = blobs.put_file(BlobKind::Original, id, &spool).await.unwrap_err();
        assert!(missing.is_unavailable() && missing.to_string().contains("blob folder"), "{missing}");
    }

    #[tokio::test]
    async fn backups_list_oldest_first_and_leave_other_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::from_url(&format!("file://{}", dir.path().display()), "us-east-1", None).unwrap();
        assert!(blobs.list_backups().await.unwrap().is_empty(), "no folder yet is no backup");
        let (older, newer) = (BackupName::at(1_796_667_300_000), BackupName::at(1_796_667_301_000));
        for (name, text) in [(&newer, "newer"), (&older, "older")] {
            let mut w = blobs.backup_writer(name);
            w.write_all(text.as_bytes()).await.unwrap();
            w.shutdown().await.unwrap();
        }
        std::fs::write(dir.path().join("backups/before-the-migration.sql"), "an operator's own").unwrap();
        let mut abandoned = blobs.backup_writer(&BackupName::at(1_796_667_302_000));
        abandoned.write_all(b"half").await.unwrap();
        abandoned.abort().await.unwrap();

        let listed = blobs.list_backups().await.unwrap();
        assert_eq!(
            listed,
            vec![StoredBackup { name: older.clone(), bytes: 5 }, StoredBackup { name: newer.clone(), bytes: 5 },]
        );
        assert_eq!(blobs.get_backup(&older).await.unwrap().unwrap(), "older");
        blobs.delete_backup(&older).await.unwrap();
        blobs.delete_backup(&older).await.unwrap();
        assert_eq!(blobs.get_backup(&older).await.unwrap(), None);
        assert_eq!(blobs.list_backups().await.unwrap().len(), 1);
        assert!(dir.path().join("backups/before-the-migration.sql").exists());
    }
}
