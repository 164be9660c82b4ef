//! The process's counters, exposed on `GET /metrics` in the Prometheus text
//! format, read by the admin API's status, and sent to CloudWatch on AWS.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::records::MetricsSnapshot;
use crate::store::{DbTarget, ReadSource, StoreMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: &'static str,
    /// `request` (on behalf of an HTTP request) or `background` (tasks).
    pub origin: &'static str,
}

tokio::task_local! {
    static BACKGROUND: bool;
}

/// Runs `f` as background work: its database queries are counted apart from
/// those made for requests, so "this request made no query" can be checked.
pub async fn background<F: std::future::Future>(f: F) -> F::Output {
    BACKGROUND.scope(true, f).await
}

fn origin() -> &'static str {
    if BACKGROUND.try_with(|b| *b).unwrap_or(false) { "background" } else { "request" }
}

/// An HTTP request's route (a fixed set of names, never the path itself, so
/// the series stay few whatever strangers ask for) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub route: &'static str,
    pub status: u16,
}

type HistogramOf = fn() -> Histogram;

fn request_seconds() -> Histogram {
    // 0.25 ms to 8 s: a cached gallery takes a millisecond, an upload seconds.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub gallery_reads: Family<SourceLabel, Counter>,
    /// `gallery_reads`' series, made once: counted on every gallery request
    /// without the family's lock and label hashing. Indexed as `ReadSource::ALL`.
    reads_by_source: Vec<Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
    pub db_queries: Family<TargetLabel, Counter>,
    pub replica_skips: Family<ReasonLabel, Counter>,
    pub gtid_waits: Family<OutcomeLabel, Counter>,
    pub gtid_wait_seconds: Histogram,
    pub uploads: Family<OutcomeLabel, Counter>,
    pub upload_rejections: Family<ReasonLabel, Counter>,
    pub jobs: Family<OutcomeLabel, Counter>,
    /// Database backups this process wrote (`written`) or could not (`failed`).
    pub backups: Family<OutcomeLabel, Counter>,
    pub job_seconds: Histogram,
    pub queue_wait_seconds: Histogram,
    pub uploads_blocked: Gauge,
    pub rate_limited: Family<ReasonLabel, Counter>,
    /// Connections closed for being slow or idle, and connections refused at a cap.
    pub connections_timed_out: Counter,
    pub connections_refused: Counter,
    pub http_request_seconds: Family<RequestLabel, Histogram, HistogramOf>,
    // Running sums for averages (the histograms do not expose theirs).
    job_seconds_total: Counter<f64, std::sync::atomic::AtomicU64>,
    jobs_timed: Counter,
    queue_wait_seconds_total: Counter<f64, std::sync::atomic::AtomicU64>,
    queue_waits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flipstack");
        let gallery_reads: Family<SourceLabel, Counter> = Family::default();
        let reads_by_source = ReadSource::ALL
            .iter()
            .map(|s| gallery_reads.get_or_create(&SourceLabel { source: s.as_str() }).clone())
            .collect();
        let m = Metrics {
            gallery_reads,
            reads_by_source,
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_errors: Counter::default(),
            db_queries: Family::default(),
            replica_skips: Family::default(),
            gtid_waits: Family::default(),
            gtid_wait_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 10)),
            uploads: Family::default(),
            upload_rejections: Family::default(),
            jobs: Family::default(),
            backups: Family::default(),
            job_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            queue_wait_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            uploads_blocked: Gauge::default(),
            rate_limited: Family::default(),
            connections_timed_out: Counter::default(),
            connections_refused: Counter::default(),
            http_request_seconds: Family::new_with_constructor(request_seconds),
            job_seconds_total: Counter::default(),
            jobs_timed: Counter::default(),
            queue_wait_seconds_total: Counter::default(),
            queue_waits: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("gallery_reads", "Gallery reads by where they were answered from", m.gallery_reads.clone());
        registry.register("cache_hits", "Gallery cache hits", m.cache_hits.clone());
        registry.register("cache_misses", "Gallery cache misses", m.cache_misses.clone());
        registry.register(
            "cache_errors",
            "Gallery cache operations that failed (cache down or slow)",
            m.cache_errors.clone(),
        );
        registry.register("db_queries", "Database operations by target", m.db_queries.clone());
        registry.register(
            "replica_skips",
            "Replica reads that went to the primary instead, by reason",
            m.replica_skips.clone(),
        );
        registry.register(
            "gtid_waits",
            "Waits for a replica to reach a person's last write, by outcome",
            m.gtid_waits.clone(),
        );
        registry.register(
            "gtid_wait_seconds",
            "Time spent waiting for a replica to reach a person's last write",
            m.gtid_wait_seconds.clone(),
        );
        registry.register("uploads", "Upload requests by outcome", m.uploads.clone());
        registry.register("upload_rejections", "Refused uploads by reason", m.upload_rejections.clone());
        registry.register("jobs", "Flip jobs finished by this process, by outcome", m.jobs.clone());
        registry.register("backups", "Database backups into the blob store, by outcome", m.backups.clone());
        registry.register("job_seconds", "Time to flip and store one picture", m.job_seconds.clone());
        registry.register(
            "queue_wait_seconds",
            "Time from upload to a worker taking the job",
            m.queue_wait_seconds.clone(),
        );
        registry.register("uploads_blocked", "1 while uploads are blocked", m.uploads_blocked.clone());
        registry.register("rate_limited", "Requests refused by a rate limit, by limit", m.rate_limited.clone());
        registry.register(
            "connections_timed_out",
            "Connections closed for sending their request too slowly or idling",
            m.connections_timed_out.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once: too many open, in all or from one client",
            m.connections_refused.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to answer an HTTP request, by route and status",
            m.http_request_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text page: flipstack's metrics, then the process's
    /// under their usual unprefixed names (`process_cpu_seconds_total`, …).
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::process_stats::ProcessCollector));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &process))
            .and_then(|()| encode_eof(&mut out));
        out
    }

    pub fn observe_request(&self, route: &'static str, status: u16, seconds: f64) {
        self.http_request_seconds.get_or_create(&RequestLabel { route, status }).observe(seconds);
    }

    pub fn gallery_read(&self, source: ReadSource) {
        let i = ReadSource::ALL.iter().position(|s| *s == source).expect("every source is in ALL");
        self.reads_by_source[i].inc();
    }

    pub fn upload_rejected(&self, reason: &'static str) {
        self.uploads.get_or_create(&OutcomeLabel { outcome: "rejected" }).inc();
        self.upload_rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn rate_limited(&self, reason: &'static str) {
        self.rate_limited.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn upload_accepted(&self) {
        self.uploads.get_or_create(&OutcomeLabel { outcome: "accepted" }).inc();
    }

    pub fn job(&self, outcome: &'static str) {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn observe_job(&self, seconds: f64) {
        self.job_seconds.observe(seconds);
        self.job_seconds_total.inc_by(seconds);
        self.jobs_timed.inc();
    }

    pub fn observe_queue_wait(&self, seconds: f64) {
        self.queue_wait_seconds.observe(seconds);
        self.queue_wait_seconds_total.inc_by(seconds);
        self.queue_waits.inc();
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let source = |s: ReadSource| self.gallery_reads.get_or_create(&SourceLabel { source: s.as_str() }).get();
        let target = |t: &'static str| {
            ["request", "background"]
                .iter()
                .map(|o| self.db_queries.get_or_create(&TargetLabel { target: t, origin: o }).get())
                .sum()
        };
        // Each read in a function of its own: a family's guard lives to the end of
        // the statement, and a second label's first use needs the write lock.
        let jobs = |outcome: &'static str| self.jobs.get_or_create(&OutcomeLabel { outcome }).get();
        MetricsSnapshot {
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            cache_errors: self.cache_errors.get(),
            reads_cache: source(ReadSource::Cache),
            reads_replica: source(ReadSource::Replica),
            reads_primary: source(ReadSource::Primary),
            db_queries_primary: target("primary"),
            db_queries_replica: target("replica"),
            queue_wait_seconds_sum: self.queue_wait_seconds_total.get(),
            queue_wait_count: self.queue_waits.get(),
            job_seconds_sum: self.job_seconds_total.get(),
            job_count: self.jobs_timed.get(),
            jobs_failed: jobs("failed"),
            jobs_retried: jobs("retry"),
        }
    }
}

/// The store's counts land in the process's registry.
impl StoreMetrics for Metrics {
    fn db_query(&self, target: DbTarget) {
        let target = match target {
            DbTarget::Primary => "primary",
            DbTarget::Replica => "replica",
        };
        self.db_queries.get_or_create(&TargetLabel { target, origin: origin() }).inc();
    }

    fn replica_skip(&self, reason: &'static str) {
        self.replica_skips.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn gtid_wait(&self, seconds: f64, reached: bool) {
        self.gtid_wait_seconds.observe(seconds);
        self.gtid_waits.get_or_create(&OutcomeLabel { outcome: if reached { "reached" } else { "timeout" } }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_prefix() {
        let m = Metrics::new();
        m.cache_hits.inc();
        m.gallery_read(ReadSource::Replica);
        m.db_query(DbTarget::Primary);
        let text = m.render();
        assert!(text.contains("flipstack_cache_hits_total 1"), "{text}");
        assert!(text.contains("flipstack_gallery_reads_total{source=\"replica\"} 1"), "{text}");
        assert_eq!(m.snapshot().db_queries_primary, 1);
    }

    #[test]
    fn a_snapshot_counts_failed_and_retried_jobs() {
        let m = Metrics::new();
        assert_eq!(m.snapshot().jobs_failed, 0, "first use of both labels in one snapshot");
        m.job("failed");
        m.job("retry");
        m.job("retry");
        let s = m.snapshot();
        assert_eq!((s.jobs_failed, s.jobs_retried), (1, 2));
    }
}
