//! Sends the process's numbers to CloudWatch (`PutMetricData`), batched once a
//! minute from a background task, never on a request path: cache hits and
//! misses, gallery reads by source, queue wait and processing time, jobs
//! done, failed and retried (a worker sends these every minute, zeros too,
//! so "no failures" differs from "no data"), and the fleet's backlog of
//! distinct unfinished jobs. Dimension `Role` tells web servers from workers.
//! The provisioner's fleet view reads them back, summed over the fleet, for
//! the console; the names both use are `flipstack_aws::metric`.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use flipstack_aws::metric;

use super::AwsSettings;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::store::MetadataStore;

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
            .dimensions(Dimension::builder().name(metric::ROLE).value(self.role).build());
        if let Some((k, v)) = extra {
            b = b.dimensions(Dimension::builder().name(k).value(v).build());
        }
        b.build()
    }

    /// The datums for what changed between two snapshots (plus the backlog, [`metric::BACKLOG`]).
    pub fn datums(&self, before: &MetricsSnapshot, now: &MetricsSnapshot, backlog: Option<u64>) -> Vec<MetricDatum> {
        let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
        let mut d = vec![
            self.datum(metric::CACHE_HITS, delta(before.cache_hits, now.cache_hits), StandardUnit::Count, None),
            self.datum(metric::CACHE_MISSES, delta(before.cache_misses, now.cache_misses), StandardUnit::Count, None),
            self.datum(
                metric::GALLERY_READS,
                delta(before.reads_cache, now.reads_cache),
                StandardUnit::Count,
                Some((metric::SOURCE, "cache")),
            ),
            self.datum(
                metric::GALLERY_READS,
                delta(before.reads_replica, now.reads_replica),
                StandardUnit::Count,
                Some((metric::SOURCE, "replica")),
            ),
            self.datum(
                metric::GALLERY_READS,
                delta(before.reads_primary, now.reads_primary),
                StandardUnit::Count,
                Some((metric::SOURCE, "primary")),
            ),
        ];
        let jobs = now.job_count.saturating_sub(before.job_count);
        if jobs > 0 {
            let secs = (now.job_seconds_sum - before.job_seconds_sum) / jobs as f64;
            d.push(self.datum(metric::JOB_SECONDS, secs, StandardUnit::Seconds, None));
            d.push(self.datum(metric::JOBS_DONE, jobs as f64, StandardUnit::Count, None));
        }
        if self.role == "worker" {
            d.push(self.datum(
                metric::JOBS_FAILED,
                delta(before.jobs_failed, now.jobs_failed),
                StandardUnit::Count,
                None,
            ));
            d.push(self.datum(
                metric::JOB_RETRIES,
                delta(before.jobs_retried, now.jobs_retried),
                StandardUnit::Count,
                None,
            ));
        }
        let waits = now.queue_wait_count.saturating_sub(before.queue_wait_count);
        if waits > 0 {
            let secs = (now.queue_wait_seconds_sum - before.queue_wait_seconds_sum) / waits as f64;
            d.push(self.datum(metric::QUEUE_WAIT_SECONDS, secs, StandardUnit::Seconds, None));
        }
        if let Some(b) = backlog {
            d.push(self.datum(metric::BACKLOG, b as f64, StandardUnit::Count, None));
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
        assert_eq!(named(&d, metric::JOBS_FAILED)[0].value(), Some(3.0));
        assert_eq!(named(&d, metric::JOB_RETRIES)[0].value(), Some(0.0), "a quiet minute is a zero, not a gap");
        let server = Publisher::new(&aws, "ns", "web").await;
        assert!(named(&server.datums(&before, &now, Some(0)), metric::JOBS_FAILED).is_empty());
    }
}
