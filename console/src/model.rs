//! What the console knows: the last answer of each data source, how fresh it
//! is, and the history behind the sparklines. No terminal and no I/O here.

use flipstack_domain::domain::EventKind;
use flipstack_domain::records::ReadSource;
use std::collections::VecDeque;

use flipstack_domain::status::AdminStatus;
use flipstack_provision::fleet::GroupStatus;

/// Milliseconds since the epoch (the clock `AdminStatus::at` uses).
pub type Millis = i64;

/// How many points each sparkline keeps (wider than any panel needs).
pub const HISTORY: usize = 240;
/// How many gallery reads and job events the feeds keep.
pub const FEED: usize = 64;

pub use flipstack_domain::status::AdminEvent;

/// Whether a source answers, and since when it does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    pub last_ok: Option<Millis>,
    /// The last failure, when it is newer than the last success.
    pub error: Option<(Millis, String)>,
}

/// How a panel should present its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Answered within the expected interval.
    Live,
    /// Has answered before; the numbers shown are this old.
    Stale { age_ms: i64, error: Option<String> },
    /// Has never answered.
    Waiting { error: Option<String> },
}

impl SourceHealth {
    pub fn ok(&mut self, now: Millis) {
        self.last_ok = Some(now);
        self.error = None;
    }

    pub fn failed(&mut self, now: Millis, error: String) {
        self.error = Some((now, error));
    }

    /// `max_age_ms`: older than this (or failing) counts as stale.
    pub fn freshness(&self, now: Millis, max_age_ms: i64) -> Freshness {
        let error = self.error.as_ref().map(|(_, e)| e.clone());
        match self.last_ok {
            None => Freshness::Waiting { error },
            Some(t) if error.is_none() && now - t <= max_age_ms => Freshness::Live,
            Some(t) => Freshness::Stale { age_ms: (now - t).max(0), error },
        }
    }
}

/// A bounded series of samples for a sparkline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series(VecDeque<u64>);

impl Series {
    pub fn push(&mut self, v: u64) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    /// The newest `n` samples, oldest first.
    pub fn last(&self, n: usize) -> Vec<u64> {
        let skip = self.0.len().saturating_sub(n);
        self.0.iter().skip(skip).copied().collect()
    }

    pub fn latest(&self) -> Option<u64> {
        self.0.back().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Per-second rates between two status answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub reads: f64,
    pub jobs: f64,
}

impl Rates {
    /// None when the two answers cannot be compared (same instant, or the
    /// server restarted in between and its counters went back to zero).
    pub fn between(prev: &AdminStatus, cur: &AdminStatus) -> Option<Rates> {
        let secs = (cur.at - prev.at) as f64 / 1000.0;
        if secs <= 0.0 || cur.uptime_secs < prev.uptime_secs {
            return None;
        }
        let (p, c) = (&prev.metrics, &cur.metrics);
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Some(Rates {
            cache_hits: per(p.cache_hits, c.cache_hits),
            cache_misses: per(p.cache_misses, c.cache_misses),
            reads: per(
                p.reads_cache + p.reads_replica + p.reads_primary,
                c.reads_cache + c.reads_replica + c.reads_primary,
            ),
            jobs: per(p.job_count, c.job_count),
        })
    }

    /// Hit ratio over the interval, when there was any traffic.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.cache_hits + self.cache_misses;
        (total > 0.0).then(|| self.cache_hits / total)
    }
}

/// Rates are measured over about this long, so one quiet second does not
/// blank them.
pub const RATE_WINDOW_MS: i64 = 5_000;

/// The status source: the last answer and what was derived from it.
#[derive(Debug, Clone, Default)]
pub struct StatusData {
    pub health: SourceHealth,
    pub last: Option<AdminStatus>,
    /// Rates over the last [`RATE_WINDOW_MS`].
    pub rates: Option<Rates>,
    /// Recent answers, oldest first, for [`Self::rates`].
    window: VecDeque<AdminStatus>,
    pub queue_depth: Series,
    pub cache_hits_per_s: Series,
    pub pool_running: Series,
}

impl StatusData {
    pub fn update(&mut self, now: Millis, status: AdminStatus) {
        let d = &status.queue.depth;
        self.queue_depth.push(d.visible + d.in_flight);
        if let Some(step) = self.last.as_ref().and_then(|prev| Rates::between(prev, &status)) {
            self.cache_hits_per_s.push(step.cache_hits.round() as u64);
        }
        // A restart resets the counters: what came before cannot be compared.
        if self.window.back().is_some_and(|p| status.uptime_secs < p.uptime_secs) {
            self.window.clear();
        }
        while self.window.front().is_some_and(|p| status.at - p.at > RATE_WINDOW_MS) && self.window.len() > 1 {
            self.window.pop_front();
        }
        self.rates = self.window.front().and_then(|first| Rates::between(first, &status));
        self.window.push_back(status.clone());
        let running = match &status.pool {
            Some(p) => p.running as u64,
            None => status.live_workers().count() as u64,
        };
        self.pool_running.push(running);
        self.last = Some(status);
        self.health.ok(now);
    }
}

/// One group of the AWS fleet with its history.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub status: GroupStatus,
    pub in_service: Series,
    pub desired: Series,
}

/// The fleet source (`--stack`): the stack's Auto Scaling groups.
#[derive(Debug, Clone, Default)]
pub struct FleetData {
    pub health: SourceHealth,
    /// Web first, as the provisioner orders them.
    pub groups: Vec<GroupView>,
}

impl FleetData {
    pub fn update(&mut self, now: Millis, groups: Vec<GroupStatus>) {
        let mut next = Vec::with_capacity(groups.len());
        for g in groups {
            let mut view = self
                .groups
                .iter()
                .position(|v| v.status.name == g.name)
                .map(|i| self.groups.swap_remove(i))
                .unwrap_or_else(|| GroupView {
                    status: g.clone(),
                    in_service: Series::default(),
                    desired: Series::default(),
                });
            view.in_service.push(g.in_service as u64);
            view.desired.push(g.desired as u64);
            view.status = g;
            next.push(view);
        }
        self.groups = next;
        self.health.ok(now);
    }
}

/// The fleet's numbers from CloudWatch: what every server and worker sent,
/// summed, for the newest minute with data.
#[derive(Debug, Clone, Default)]
pub struct FleetNumbersData {
    pub health: SourceHealth,
    pub last: Option<flipstack_provision::fleet_numbers::FleetNumbers>,
}

impl FleetNumbersData {
    /// One line for a panel: `label` and the numbers `pick` chooses, marked
    /// stale when the newest minute ended more than two periods ago.
    pub fn line(
        &self,
        now: Millis,
        text: impl FnOnce(&flipstack_provision::fleet_numbers::FleetNumbers) -> Option<String>,
    ) -> Option<(String, bool)> {
        let n = self.last.as_ref()?;
        let body = text(n)?;
        Some((format!("fleet/min {body}"), n.is_stale(now)))
    }
}

/// A gallery read from the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub at: Millis,
    pub person: String,
    pub source: ReadSource,
}

/// The event stream: connected or not, and the feeds it fills.
#[derive(Debug, Clone, Default)]
pub struct EventData {
    pub health: SourceHealth,
    pub connected: bool,
    /// Newest first.
    pub reads: VecDeque<Read>,
    /// Newest first: uploads, completions, retries, failures.
    pub jobs: VecDeque<AdminEvent>,
}

impl EventData {
    pub fn push(&mut self, now: Millis, event: AdminEvent) {
        self.health.ok(now);
        match event {
            AdminEvent::GalleryRead { at, person, source } => push_front(&mut self.reads, Read { at, person, source }),
            e @ AdminEvent::Job { .. } => push_front(&mut self.jobs, e),
            AdminEvent::Blocked { .. } => {}
        }
    }

    /// Jobs that finished (`done`) in the last `window_ms`.
    pub fn jobs_done_within(&self, now: Millis, window_ms: i64) -> usize {
        self.jobs
            .iter()
            .filter(
                |e| matches!(e, AdminEvent::Job { at, kind, .. } if *kind == EventKind::Done && now - at <= window_ms),
            )
            .count()
    }

    /// Reads by source among those seen in the last `window_ms`.
    pub fn recent_by_source(&self, now: Millis, window_ms: i64) -> [(&'static str, usize); 3] {
        let mut out = [("cache", 0), ("replica", 0), ("primary", 0)];
        for r in self.reads.iter().take_while(|r| now - r.at <= window_ms) {
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == r.source.as_str()) {
                slot.1 += 1;
            }
        }
        out
    }
}

fn push_front<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == FEED {
        q.pop_back();
    }
    q.push_front(item);
}

/// What the uploads view's `/` filter asks the server for
/// (`GET /admin/api/uploads`); empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UploadQuery {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// The start of the owner's hashed e-mail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub person: String,
    /// Part of the failure reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl UploadQuery {
    /// Reads what the operator typed: `state:failed`, `format:png`,
    /// `person:3fa1`, `reason:decoded`; a bare state or format name means
    /// that state or format, any other word is part of the reason.
    pub fn parse(text: &str) -> UploadQuery {
        use flipstack_domain::domain::{ImageFormat, UploadState};
        let mut q = UploadQuery::default();
        let mut reason = Vec::new();
        for word in text.split_whitespace() {
            match word.split_once(':') {
                Some(("state", v)) => q.state = v.to_ascii_lowercase(),
                Some(("format", v)) => q.format = v.to_ascii_lowercase(),
                Some(("person", v)) => q.person = v.to_ascii_lowercase(),
                Some(("reason", v)) => reason.push(v),
                _ if UploadState::parse(&word.to_ascii_lowercase()).is_some() => q.state = word.to_ascii_lowercase(),
                _ if ImageFormat::parse(&word.to_ascii_lowercase()).is_some() => q.format = word.to_ascii_lowercase(),
                _ => reason.push(word),
            }
        }
        q.reason = reason.join(" ");
        q
    }
}

/// `1.2 KiB`-style sizes for the dump's progress.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `4s`, `3m10s`, `2h05m`: ages short enough for a panel title.
pub fn human_age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_goes_stale_with_its_age() {
        let mut h = SourceHealth::default();
        assert_eq!(h.freshness(1_000, 3_000), Freshness::Waiting { error: None });
        h.ok(1_000);
        assert_eq!(h.freshness(2_000, 3_000), Freshness::Live);
        assert_eq!(h.freshness(9_000, 3_000), Freshness::Stale { age_ms: 8_000, error: None });
        h.failed(9_500, "connection refused".into());
        assert_eq!(
            h.freshness(9_600, 3_000),
            Freshness::Stale { age_ms: 8_600, error: Some("connection refused".into()) }
        );
        h.ok(10_000);
        assert_eq!(h.freshness(10_100, 3_000), Freshness::Live);
    }

    #[test]
    fn rates_ignore_a_restarted_server() {
        let mut a = AdminStatus { at: 10_000, uptime_secs: 100, ..Default::default() };
        a.metrics.cache_hits = 100;
        let mut b = a.clone();
        b.at = 12_000;
        b.uptime_secs = 102;
        b.metrics.cache_hits = 140;
        b.metrics.cache_misses = 10;
        let r = Rates::between(&a, &b).unwrap();
        assert_eq!(r.cache_hits, 20.0);
        assert_eq!(r.cache_misses, 5.0);
        assert_eq!(r.hit_ratio(), Some(0.8));
        b.uptime_secs = 1;
        assert_eq!(Rates::between(&a, &b), None);
    }

    #[test]
    fn series_keeps_the_newest() {
        let mut s = Series::default();
        for i in 0..(HISTORY as u64 + 10) {
            s.push(i);
        }
        assert_eq!(s.len(), HISTORY);
        assert_eq!(s.last(3), vec![247, 248, 249]);
        assert_eq!(s.latest(), Some(249));
    }

    #[test]
    fn the_filter_reads_keys_bare_names_and_words() {
        assert_eq!(
            UploadQuery::parse("failed png person:3FA1 could not"),
            UploadQuery {
                state: "failed".into(),
                format: "png".into(),
                person: "3fa1".into(),
                reason: "could not".into()
            }
        );
        assert_eq!(
            UploadQuery::parse("state:done format:jpeg reason:decoded"),
            UploadQuery { state: "done".into(), format: "jpeg".into(), reason: "decoded".into(), ..Default::default() }
        );
        assert_eq!(UploadQuery::parse("  "), UploadQuery::default());
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_age(4_200), "4s");
        assert_eq!(human_age(190_000), "3m10s");
        assert_eq!(human_age(7_500_000), "2h05m");
    }
}
