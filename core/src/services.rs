//! Wiring: every port opened from the configuration, once per process.

use std::sync::Arc;
use std::time::Duration;

use crate::aws::AwsSettings;
use crate::blob::{BlobError, BlobStore};
use crate::cache::{CacheError, KvCache};
use crate::config::Config;
use crate::gallery::Gallery;
use crate::imaging::Limits;
use crate::mail::{MailError, Mailer};
use crate::metrics::Metrics;
use crate::queue::{JobQueue, QueueError};
use crate::store::{MetadataStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(
        "cannot make the data folder {path} private (mode 0700): {source}; check that it belongs to the user running flipstack"
    )]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Services {
    pub config: Config,
    pub store: Arc<dyn MetadataStore>,
    pub cache: Arc<dyn KvCache>,
    pub gallery: Arc<Gallery>,
    pub blobs: BlobStore,
    pub queue: Arc<dyn JobQueue>,
    pub mailer: Arc<dyn Mailer>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub aws: AwsSettings,
}

impl Services {
    pub async fn connect(config: Config) -> Result<Arc<Services>, ServicesError> {
        private_data_dir(&config.data_dir)
            .map_err(|source| ServicesError::DataDir { path: config.data_dir.clone(), source })?;
        let metrics = Arc::new(Metrics::new());
        let store = crate::store::connect(
            &config.database_url(),
            &config.replica_urls,
            metrics.clone(),
            Duration::from_millis(config.replica_wait_ms),
            Duration::from_millis(config.replica_max_lag_ms),
        )
        .await?;
        let cache = crate::cache::connect(&config.cache_url).await?;
        let gallery =
            Gallery::new(store.clone(), cache.clone(), metrics.clone(), Duration::from_secs(config.cache_ttl_secs));
        let aws = AwsSettings::from_config(&config);
        let blobs = BlobStore::from_url(&config.blob_url(), &aws.region, aws.endpoint.as_deref())?;
        let queue =
            crate::queue::connect(&config.queue_url, store.clone(), Duration::from_millis(config.queue_poll_ms), &aws)
                .await?;
        let mailer = crate::mail::from_url(&config.mail_url(), &config.mail_from)?;
        let limits = Limits::new(config.max_pixels, config.max_frames);
        Ok(Arc::new(Services { config, store, cache, gallery, blobs, queue, mailer, metrics, limits, aws }))
    }

    /// True when this process runs on AWS infrastructure (SQS queue), where
    /// its numbers go to CloudWatch.
    pub fn on_aws(&self) -> bool {
        self.queue.kind() == "sqs"
    }
}

/// Creates the data folder 0700, and takes group and other access away from
/// one made earlier: it holds the database, pictures and live sign-in links.
fn private_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "made the data folder private (0700)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::private_data_dir;

    #[test]
    fn the_data_folder_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b/data");
        private_data_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_data_dir(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
