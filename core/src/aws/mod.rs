//! AWS clients shared by the adapters: one endpoint override
//! (`FLIPSTACK_AWS_ENDPOINT_URL`) for every client, so the whole AWS path runs
//! against moto_server or LocalStack in tests.

pub mod cloudwatch;
pub mod sqs;

use aws_config::{BehaviorVersion, Region, SdkConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: String,
    pub endpoint: Option<String>,
}

impl AwsSettings {
    pub fn from_config(c: &crate::config::Config) -> AwsSettings {
        AwsSettings { region: c.aws_region.clone(), endpoint: c.aws_endpoint_url.clone() }
    }
}

/// The HTTP client of every SDK client: hyper 1 with rustls on ring, the
/// process's one TLS stack (the SDK's default client would bring aws-lc-rs).
pub fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
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
