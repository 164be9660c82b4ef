//! The process's own numbers for `/metrics`, under the names Prometheus's
//! client libraries use everywhere (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_threads`, `process_start_time_seconds`), read from `/proc/self`
//! at each scrape. Where there is no `/proc` (not Linux) nothing is written.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc`'s clock ticks per second (USER_HZ), fixed at 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub threads: i64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// This process's numbers, or `None` without a readable `/proc/self`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut stats = parse_stat(&stat)?;
        stats.resident_bytes = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0);
        stats.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l)).unwrap_or(0);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s)).unwrap_or(0.0);
        stats.start_time_seconds += boot;
        Some(stats)
    }
}

/// utime, stime, num_threads and starttime from `/proc/self/stat`; the start
/// time is still relative to boot. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<ProcessStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first here: field n is at index n - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
        threads: field(20)? as i64,
        start_time_seconds: field(22)? / TICKS_PER_SECOND,
        ..ProcessStats::default()
    })
}

fn status_kib(status: &str, key: &str) -> Option<i64> {
    status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
}

fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Writes [`ProcessStats`] at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size, in bytes", s.resident_bytes),
            ("process_open_fds", "Open file descriptors", s.open_fds),
            ("process_max_fds", "The limit of open file descriptors", s.max_fds),
            ("process_threads", "Operating system threads", s.threads),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_whose_name_has_spaces_and_parentheses_is_read_from_its_last_parenthesis() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 1000 20 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 123.45);
    }

    #[test]
    fn limits_status_and_boot_time_are_read_from_their_files_shapes() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(status_kib("Name:\tx\nVmRSS:\t   2048 kB\n", "VmRSS:"), Some(2048));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1764633600\n"), Some(1_764_633_600.0));
    }

    #[test]
    fn this_process_reads_its_own_numbers() {
        let s = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.max_fds >= s.open_fds && s.threads >= 1, "{s:?}");
        assert!(s.start_time_seconds > 1_600_000_000.0, "{s:?}");
    }
}
