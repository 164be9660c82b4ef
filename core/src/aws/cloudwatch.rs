//! Sends the process's numbers to CloudWatch (`PutMetricData`), batched once a
//! minute from a background task, never on a request path: cache hits and
//! misses, gallery reads by source, queue wait and processing time, and the
//! queue's depth. Dimension `Role` tells web servers from workers.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::AwsSettings;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::queue::JobQueue;

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

    /// The datums for what changed between two snapshots (plus the queue depth).
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
        let waits = now.queue_wait_count.saturating_sub(before.queue_wait_count);
        if waits > 0 {
            let secs = (now.queue_wait_seconds_sum - before.queue_wait_seconds_sum) / waits as f64;
            d.push(self.datum("QueueWaitSeconds", secs, StandardUnit::Seconds, None));
        }
        if let Some(b) = backlog {
            d.push(self.datum("QueueBacklog", b as f64, StandardUnit::Count, None));
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
    pub async fn run(self, metrics: Arc<Metrics>, queue: Arc<dyn JobQueue>, every: Duration) {
        let mut last = metrics.snapshot();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = metrics.snapshot();
            let backlog = queue.depth().await.ok().map(|d| d.visible);
            if let Err(e) = self.put(self.datums(&last, &now, backlog)).await {
                tracing::warn!(error = %e, "could not send metrics to CloudWatch; will try again next minute");
            }
            last = now;
        }
    }
}
