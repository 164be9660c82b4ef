//! What the whole fleet published to CloudWatch, read back for the console's
//! fleet panels: the servers' cache and reads and the workers' jobs, summed
//! over every process (the publisher is the adapters' `aws::cloudwatch`).

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::Dimension;
use flipstack_aws::{AwsSettings, metric, sdk_config};

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
    let client = Client::new(&sdk_config(aws).await);
    let query = |id: &str, metric: &str, role: &str, source: Option<&str>, stat: &str| {
        let mut m = Metric::builder()
            .namespace(namespace)
            .metric_name(metric)
            .dimensions(Dimension::builder().name(metric::ROLE).value(role).build());
        if let Some(s) = source {
            m = m.dimensions(Dimension::builder().name(metric::SOURCE).value(s).build());
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
        .metric_data_queries(query("hits", metric::CACHE_HITS, "web", None, "Sum"))
        .metric_data_queries(query("misses", metric::CACHE_MISSES, "web", None, "Sum"))
        .metric_data_queries(query("cache", metric::GALLERY_READS, "web", Some("cache"), "Sum"))
        .metric_data_queries(query("replica", metric::GALLERY_READS, "web", Some("replica"), "Sum"))
        .metric_data_queries(query("primary", metric::GALLERY_READS, "web", Some("primary"), "Sum"))
        .metric_data_queries(query("jobs", metric::JOBS_DONE, "worker", None, "Sum"))
        .metric_data_queries(query("failed", metric::JOBS_FAILED, "worker", None, "Sum"))
        .metric_data_queries(query("jobsecs", metric::JOB_SECONDS, "worker", None, "Average"))
        .metric_data_queries(query("backlog", metric::BACKLOG, "web", None, "Maximum"))
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
