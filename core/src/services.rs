//! Wiring: every port opened from the configuration, once per process.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    #[error(
        "gave up waiting for the {service} after {waited_secs} s (FLIPSTACK_STARTUP_WAIT_SECS): {source}. \
         Check that it is running and reachable from this machine (address, port, security group), then start again"
    )]
    GaveUp {
        service: &'static str,
        waited_secs: u64,
        #[source]
        source: Box<ServicesError>,
    },
}

impl ServicesError {
    /// Whether the service may answer a little later (refused, timed out, not
    /// resolvable yet), as opposed to a configuration that will never work.
    fn may_answer_later(&self) -> bool {
        match self {
            ServicesError::Store(e) => e.is_unavailable(),
            ServicesError::Cache(e) => e.is_unavailable(),
            ServicesError::Queue(e) => e.is_unavailable(),
            ServicesError::Blob(_)
            | ServicesError::Mail(_)
            | ServicesError::DataDir { .. }
            | ServicesError::GaveUp { .. } => false,
        }
    }
}

/// First pause between tries at start, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes,
/// pausing longer after each failure and saying what it waits for. A whole
/// fleet starting at once (a new stack, an Auto Scaling group after an
/// outage) comes up as its services do, in any order.
async fn wait_for<T, E, F, Fut>(
    service: &'static str,
    deadline: Instant,
    started: Instant,
    mut attempt: F,
) -> Result<T, ServicesError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<ServicesError>,
{
    let mut pause = FIRST_BACKOFF;
    loop {
        let error: ServicesError = match attempt().await {
            Ok(v) => {
                if started.elapsed() > FIRST_BACKOFF {
                    tracing::info!(service, waited_ms = started.elapsed().as_millis() as u64, "the {service} answers");
                }
                return Ok(v);
            }
            Err(e) => e.into(),
        };
        if !error.may_answer_later() {
            return Err(error);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ServicesError::GaveUp {
                service,
                waited_secs: started.elapsed().as_secs(),
                source: Box::new(error),
            });
        }
        let pause_now = pause.min(deadline - now);
        tracing::warn!(service, error = %error, retry_in_ms = pause_now.as_millis() as u64, "waiting for the {service} to answer");
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
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
    /// Opens every port. A service that does not answer yet is retried with
    /// backoff for up to `startup_wait_secs`, with a log line saying which.
    pub async fn connect(config: Config) -> Result<Arc<Services>, ServicesError> {
        private_data_dir(&config.data_dir)
            .map_err(|source| ServicesError::DataDir { path: config.data_dir.clone(), source })?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(config.startup_wait_secs);
        let metrics = Arc::new(Metrics::new());
        let database_url = config.database_url();
        let store = wait_for("database", deadline, Instant::now(), || {
            crate::store::connect(
                &database_url,
                &config.replica_urls,
                metrics.clone(),
                Duration::from_millis(config.replica_wait_ms),
                Duration::from_millis(config.replica_max_lag_ms),
            )
        })
        .await?;
        let cache = wait_for("cache", deadline, Instant::now(), || crate::cache::connect(&config.cache_url)).await?;
        let gallery =
            Gallery::new(store.clone(), cache.clone(), metrics.clone(), Duration::from_secs(config.cache_ttl_secs));
        let aws = AwsSettings::from_config(&config);
        let blobs = BlobStore::from_url(&config.blob_url(), &aws.region, aws.endpoint.as_deref())?;
        let poll = Duration::from_millis(config.queue_poll_ms);
        let wake_dir = crate::wake::folder(&config.data_dir);
        let queue = wait_for("queue", deadline, Instant::now(), || {
            crate::queue::connect(&config.queue_url, store.clone(), poll, &wake_dir, &aws)
        })
        .await?;
        let mailer = crate::mail::from_url(&config.mail_url(), &config.mail_from)?;
        let limits = Limits::new(config.max_pixels, config.max_frames);
        crate::imaging::heif::use_library(&config.libheif);
        match crate::imaging::heif::available() {
            Ok(()) => tracing::debug!(libheif = crate::imaging::heif::version(), "HEIC and AVIF are handled"),
            Err(e) => tracing::warn!("HEIC and AVIF uploads will be refused (415): {e}"),
        }
        Ok(Arc::new(Services { config, store, cache, gallery, blobs, queue, mailer, metrics, limits, aws }))
    }

    /// True when this process runs on AWS infrastructure (SQS queue), where
    /// its numbers go to CloudWatch.
    pub fn on_aws(&self) -> bool {
        self.queue.kind() == crate::domain::QueueBackend::Sqs
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
