//! What every AWS client of flipstack shares, whichever crate holds it (the
//! adapters' SQS queue and CloudWatch publisher, the provisioner): the
//! settings, one HTTP client on the process's one TLS stack, one endpoint
//! override (`FLIPSTACK_AWS_ENDPOINT_URL`) so the whole AWS path runs against
//! moto_server or LocalStack in tests, and the names both ends of a queue or
//! a metric must agree on.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Receives after which SQS's redrive policy parks a message in the
/// dead-letter queue (the provisioner sets it; the worker stays below it). It
/// stays above the worker's own limit on take-overs (a job whose worker died
/// mid-flip is taken again, a few times), so a crash or two never sends a
/// good job to the dead-letter queue: the worker judges those, and only a
/// message that keeps coming back without ever being handled reaches it.
pub const REDRIVE_AFTER_RECEIVES: u32 = 10;

/// The CloudWatch metrics the processes publish and the provisioner's
/// policies and the console's fleet view read: names and dimensions.
pub mod metric {
    /// The fleet's backlog: distinct jobs waiting or in hand, counted in the
    /// uploads table, never queue messages (which a re-send can duplicate).
    /// The worker group's scaling policy divides it by the workers in service.
    pub const BACKLOG: &str = "QueueBacklog";
    pub const CACHE_HITS: &str = "CacheHits";
    pub const CACHE_MISSES: &str = "CacheMisses";
    /// With the dimension [`SOURCE`]: `cache`, `replica` or `primary`.
    pub const GALLERY_READS: &str = "GalleryReads";
    pub const JOBS_DONE: &str = "JobsDone";
    pub const JOBS_FAILED: &str = "JobsFailed";
    pub const JOB_RETRIES: &str = "JobRetries";
    pub const JOB_SECONDS: &str = "JobSeconds";
    pub const QUEUE_WAIT_SECONDS: &str = "QueueWaitSeconds";
    /// Dimension: `web` for servers, `worker` for workers.
    pub const ROLE: &str = "Role";
    pub const SOURCE: &str = "Source";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: String,
    pub endpoint: Option<String>,
}

impl AwsSettings {
    pub fn from_config(c: &flipstack_domain::Config) -> AwsSettings {
        AwsSettings { region: c.aws_region.clone(), endpoint: c.aws_endpoint_url.clone() }
    }
}

/// The HTTP client of every SDK client: hyper 1 with rustls on ring, the
/// process's one TLS stack (the SDK's default client would bring aws-lc-rs).
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

/// The SDK configuration: credentials and region from the usual AWS sources
/// (environment, profile, instance role), the endpoint from our setting.
pub async fn sdk_config(s: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .region(Region::new(s.region.clone()));
    if let Some(endpoint) = &s.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
