//! Sends the process's numbers to CloudWatch (`PutMetricData`), batched once a
//! minute from a background task, never on a request path: cache hits and
//! misses, gallery reads by source, queue wait and processing time, jobs
//! done, failed and retried (a worker sends these every minute, zeros too,
//! so "no failures" differs from "no data"), and the fleet's backlog of
//! distinct unfinished jobs. Dimension `Role` tells web servers from workers.
//! [`fleet_numbers`] reads them back, summed over the fleet, for the console.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::AwsSettings;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::store::MetadataStore;

/// The fleet's backlog: distinct jobs waiting or in hand, counted in the
/// uploads table ([`UploadStats::unfinished`]), never queue messages (which a
/// re-send can duplicate). The worker group's scaling policy divides it by
/// the workers in service.
///
/// [`UploadStats::unfinished`]: crate::store::UploadStats::unfinished
pub const BACKLOG_METRIC: &str = "QueueBacklog";

pub struct Publisher {
    client: Client,
    namespace: String,
    role: &'static str,
}

impl Publisher {
    pub async fn new(aws: &AwsSettings, namespace: &str, role: &'static str) -> Publisher {
        Publisher { client: Client::new(&super::sdk_config(aws).await), namespace: namespace.to_owned(), role }
    }

    fn datum(&self, name: &str, value: f64, unit: StandardUnit, extra: Option<(&str, &str)>) -> MetricDatum {
        let mut b = MetricDatum::builder()
            .metric_name(name)
            .value(value)
            .unit(unit)
            .dimensions(Dimension::builder().name("Role").value(self.role).build());
        if let Some((k, v)) = extra {
            b = b.dimensions(Dimension::builder().name(k).value(v).build());
        }
        b.build()
    }

    /// The datums for what changed between two snapshots (plus the backlog, [`BACKLOG_METRIC`]).
    pub fn datums(&self, before: &MetricsSnapshot, now: &MetricsSnapshot, backlog: Option<u64>) -> Vec<MetricDatum> {
        let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
        let mut d = vec![
            self.datum("CacheHits", delta(before.cache_hits, now.cache_hits), StandardUnit::Count, None),
            self.datum("CacheMisses", delta(before.cache_misses, now.cache_misses), StandardUnit::Count, None),
            self.datum(
                "GalleryReads",
                delta(before.reads_cache, now.reads_cache),
                StandardUnit::Count,
                Some(("Source", "cache")),
            ),
            self.datum(
                "GalleryReads",
                delta(before.reads_replica, now.reads_replica),
                StandardUnit::Count,
                Some(("Source", "replica")),
            ),
            self.datum(
                "GalleryReads",
                delta(before.reads_primary, now.reads_primary),
                StandardUnit::Count,
                Some(("Source", "primary")),
            ),
        ];
        let jobs = now.job_count.saturating_sub(before.job_count);
        if jobs > 0 {
            let secs = (now.job_seconds_sum - before.job_seconds_sum) / jobs as f64;
            d.push(self.datum("JobSeconds", secs, StandardUnit::Seconds, None));
            d.push(self.datum("JobsDone", jobs as f64, StandardUnit::Count, None));
        }
        if self.role == "worker" {
            d.push(self.datum("JobsFailed", delta(before.jobs_failed, now.jobs_failed), StandardUnit::Count, None));
            d.push(self.datum("JobRetries", delta(before.jobs_retried, now.jobs_retried), StandardUnit::Count, None));
        }
        let waits = now.queue_wait_count.saturating_sub(before.queue_wait_count);
        if waits > 0 {
            let secs = (now.queue_wait_seconds_sum - before.queue_wait_seconds_sum) / waits as f64;
            d.push(self.datum("QueueWaitSeconds", secs, StandardUnit::Seconds, None));
        }
        if let Some(b) = backlog {
            d.push(self.datum(BACKLOG_METRIC, b as f64, StandardUnit::Count, None));
        }
        d
    }

    pub async fn put(&self, datums: Vec<MetricDatum>) -> Result<(), String> {
        for batch in datums.chunks(20) {
            self.client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string())?;
        }
        Ok(())
    }

    /// Runs until the task is dropped.
    pub async fn run(self, metrics: Arc<Metrics>, store: Arc<dyn MetadataStore>, every: Duration) {
        let mut last = metrics.snapshot();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = metrics.snapshot();
            let backlog = store.upload_stats().await.ok().map(|s| s.unfinished());
            if let Err(e) = self.put(self.datums(&last, &now, backlog)).await {
                tracing::warn!(error = %e, "could not send metrics to CloudWatch; will try again next minute");
            }
            last = now;
        }
    }
}

/// What the whole fleet sent in one period, summed over every process that
/// published (CloudWatch adds up the datums of one metric and dimensions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetNumbers {
    /// Start of the newest period any of these numbers come from (ms).
    pub newest_at: Option<i64>,
    pub period_secs: u32,
    pub cache_hits: Option<f64>,
    pub cache_misses: Option<f64>,
    /// Gallery reads by source: cache, replica, primary.
    pub reads: [Option<f64>; 3],
    pub jobs_done: Option<f64>,
    /// Jobs that failed for good, summed over the workers.
    pub jobs_failed: Option<f64>,
    /// Mean seconds per job over the workers' reports.
    pub job_seconds: Option<f64>,
    pub backlog: Option<f64>,
}

impl FleetNumbers {
    /// The newest period ended more than two periods ago: the publishers
    /// stopped (or cannot reach CloudWatch).
    pub fn is_stale(&self, now_ms: i64) -> bool {
        let period = 1000 * i64::from(self.period_secs);
        self.newest_at.is_none_or(|start| now_ms - (start + period) > 2 * period)
    }
}

/// One period's length for [`fleet_numbers`]: what the publishers batch.
pub const FLEET_PERIOD_SECS: u32 = 60;

/// Reads the fleet's numbers for the newest period with data (`GetMetricData`
/// over the last 10 minutes): the servers' cache and reads (`Role=web`) and
/// the workers' jobs (`Role=worker`).
pub async fn fleet_numbers(aws: &AwsSettings, namespace: &str, now_ms: i64) -> Result<FleetNumbers, String> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Metric, MetricDataQuery, MetricStat};
    let client = Client::new(&super::sdk_config(aws).await);
    let query = |id: &str, metric: &str, role: &str, source: Option<&str>, stat: &str| {
        let mut m = Metric::builder()
            .namespace(namespace)
            .metric_name(metric)
            .dimensions(Dimension::builder().name("Role").value(role).build());
        if let Some(s) = source {
            m = m.dimensions(Dimension::builder().name("Source").value(s).build());
        }
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(MetricStat::builder().metric(m.build()).period(FLEET_PERIOD_SECS as i32).stat(stat).build())
            .return_data(true)
            .build()
    };
    let out = client
        .get_metric_data()
        .start_time(DateTime::from_millis(now_ms - 10 * 60_000))
        .end_time(DateTime::from_millis(now_ms + 60_000))
        .metric_data_queries(query("hits", "CacheHits", "web", None, "Sum"))
        .metric_data_queries(query("misses", "CacheMisses", "web", None, "Sum"))
        .metric_data_queries(query("cache", "GalleryReads", "web", Some("cache"), "Sum"))
        .metric_data_queries(query("replica", "GalleryReads", "web", Some("replica"), "Sum"))
        .metric_data_queries(query("primary", "GalleryReads", "web", Some("primary"), "Sum"))
        .metric_data_queries(query("jobs", "JobsDone", "worker", None, "Sum"))
        .metric_data_queries(query("failed", "JobsFailed", "worker", None, "Sum"))
        .metric_data_queries(query("jobsecs", "JobSeconds", "worker", None, "Average"))
        .metric_data_queries(query("backlog", BACKLOG_METRIC, "web", None, "Maximum"))
        .send()
        .await
        .map_err(|e| aws_sdk_cloudwatch::error::DisplayErrorContext(e).to_string())?;
    let mut n = FleetNumbers { period_secs: FLEET_PERIOD_SECS, ..FleetNumbers::default() };
    for r in out.metric_data_results() {
        // The newest datapoint of each series (CloudWatch need not sort them).
        let newest = r
            .timestamps()
            .iter()
            .zip(r.values())
            .map(|(t, v)| (t.to_millis().unwrap_or(0), *v))
            .max_by_key(|(t, _)| *t);
        let Some((at, value)) = newest else { continue };
        n.newest_at = n.newest_at.max(Some(at));
        let slot = match r.id() {
            Some("hits") => &mut n.cache_hits,
            Some("misses") => &mut n.cache_misses,
            Some("cache") => &mut n.reads[0],
            Some("replica") => &mut n.reads[1],
            Some("primary") => &mut n.reads[2],
            Some("jobs") => &mut n.jobs_done,
            Some("failed") => &mut n.jobs_failed,
            Some("jobsecs") => &mut n.job_seconds,
            Some("backlog") => &mut n.backlog,
            _ => continue,
        };
        *slot = Some(value);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(d: &'a [MetricDatum], name: &str) -> Vec<&'a MetricDatum> {
        d.iter().filter(|m| m.metric_name() == Some(name)).collect()
    }

    #[tokio::test]
    async fn a_worker_sends_its_failures_every_minute_and_a_server_does_not() {
        let aws = AwsSettings { region: "us-east-1".into(), endpoint: Some("http://127.0.0.1:9".into()) };
        let before = MetricsSnapshot { jobs_failed: 2, jobs_retried: 1, ..MetricsSnapshot::default() };
        let now = MetricsSnapshot { jobs_failed: 5, jobs_retried: 1, ..MetricsSnapshot::default() };
        let worker = Publisher::new(&aws, "ns", "worker").await;
        let d = worker.datums(&before, &now, None);
        assert_eq!(named(&d, "JobsFailed")[0].value(), Some(3.0));
        assert_eq!(named(&d, "JobRetries")[0].value(), Some(0.0), "a quiet minute is a zero, not a gap");
        let server = Publisher::new(&aws, "ns", "web").await;
        assert!(named(&server.datums(&before, &now, Some(0)), "JobsFailed").is_empty());
    }

    #[test]
    fn numbers_are_stale_once_the_newest_minute_ended_two_periods_ago() {
        let n = FleetNumbers { newest_at: Some(600_000), period_secs: 60, ..FleetNumbers::default() };
        // The minute 600 s–660 s: fresh until 780 s.
        assert!(!n.is_stale(660_000));
        assert!(!n.is_stale(780_000));
        assert!(n.is_stale(780_001));
        assert!(FleetNumbers::default().is_stale(0), "no data at all is stale");
    }
}
