//! Traces over OTLP/HTTP (protobuf), when `FLIPSTACK_OTLP_ENDPOINT` names a
//! receiver: the spans `flipstack_core::trace` makes (a request, a job) go
//! to `<endpoint>/v1/traces` in batches, from the SDK's own thread, so a
//! receiver that is slow or down never holds up a request (its batches are
//! dropped, and the SDK says so in the log). The process names itself
//! `flipstack` with its command and instance, so a trace that spans the
//! server and a worker shows both.

use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The exporter of this process; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `traces_url`. Made before the async runtime: the
    /// exporter's HTTP client is a blocking one with a runtime of its own.
    pub fn start(traces_url: &str, command: &str) -> Result<Telemetry> {
        flipstack_core::tls::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .with_context(|| format!("setting up the OTLP exporter for {traces_url} (FLIPSTACK_OTLP_ENDPOINT)"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let resource = Resource::builder()
            .with_service_name("flipstack")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("service.instance.id", format!("{}-{}", host.trim(), std::process::id())))
            .with_attribute(KeyValue::new("flipstack.command", command.to_owned()))
            .build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        Ok(Telemetry { provider })
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("flipstack")
    }

    /// Exports the spans still queued; called once the work is done.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flipstack: the last traces could not be sent to the OTLP receiver: {e}");
        }
    }
}
