//! Whether a flip may take a second core ([`SecondCore`]). A lossless flip
//! split in two halves (`flip_jpeg::transform_in_halves`) takes about a
//! quarter less time but a third more CPU, since both halves read the whole
//! picture: worth it while a core would otherwise idle, a loss of
//! throughput when every core already has work. So by default a flip splits
//! when no other flip of this process is running and, while this process's
//! previous flip ran, the machine's other work (everything but this
//! process's flips and work at a lowered priority such as screen sizes)
//! left a core mostly free. With a backlog, every worker's flip keeps a
//! core busy and none splits; one upload at a time, each does.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether a lossless flip takes a second core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondCore {
    /// When the machine's other work leaves a core free (the default).
    WhenIdle,
    Always,
    Never,
}

static POLICY: AtomicU8 = AtomicU8::new(0);

impl SecondCore {
    /// Sets it for every flip in this process (benchmarks and tests compare
    /// both ways; the worker keeps the default).
    pub fn set(self) {
        POLICY.store(self as u8, Ordering::Relaxed);
    }

    fn current() -> SecondCore {
        match POLICY.load(Ordering::Relaxed) {
            1 => SecondCore::Always,
            2 => SecondCore::Never,
            _ => SecondCore::WhenIdle,
        }
    }
}

/// Flips running in this process, and the CPU time their threads have used.
static FLIPS_RUNNING: AtomicUsize = AtomicUsize::new(0);
static FLIP_CPU_NANOS: AtomicU64 = AtomicU64::new(0);
/// What the last measured flip saw: did the others leave a core free?
static A_CORE_WAS_FREE: AtomicBool = AtomicBool::new(true);

/// Spans shorter than this say nothing (`/proc/stat` counts in ticks of
/// 10 ms); the answer before them stands.
const SHORTEST_SPAN: Duration = Duration::from_millis(30);

/// Counts a thread's CPU time as a flip's while it lives; for a whole
/// flip ([`FlipCpu::whole_flip`]) it also measures what the machine's other
/// work used meanwhile, for the next flip's [`take_second_core`].
pub(crate) struct FlipCpu {
    thread_start: Option<Duration>,
    machine: Option<Sample>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    busy: Duration,
    flips: u64,
}

impl Sample {
    fn now() -> Option<Sample> {
        Some(Sample { at: Instant::now(), busy: machine_busy()?, flips: FLIP_CPU_NANOS.load(Ordering::Relaxed) })
    }
}

impl FlipCpu {
    /// A helper thread of a flip.
    pub(crate) fn helper() -> FlipCpu {
        FLIPS_RUNNING.fetch_add(1, Ordering::Relaxed);
        FlipCpu { thread_start: thread_cpu(), machine: None }
    }

    /// A flip, on the thread that was asked for it.
    pub(crate) fn whole_flip() -> FlipCpu {
        FLIPS_RUNNING.fetch_add(1, Ordering::Relaxed);
        FlipCpu { thread_start: thread_cpu(), machine: Sample::now() }
    }
}

impl Drop for FlipCpu {
    fn drop(&mut self) {
        FLIPS_RUNNING.fetch_sub(1, Ordering::Relaxed);
        if let (Some(start), Some(end)) = (self.thread_start, thread_cpu()) {
            FLIP_CPU_NANOS.fetch_add(end.saturating_sub(start).as_nanos() as u64, Ordering::Relaxed);
        }
        let (Some(before), Some(after)) = (self.machine, self.machine.and_then(|_| Sample::now())) else {
            return;
        };
        let span = after.at.duration_since(before.at);
        if span < SHORTEST_SPAN {
            return;
        }
        let flips = Duration::from_nanos(after.flips.saturating_sub(before.flips));
        let others = after.busy.saturating_sub(before.busy).saturating_sub(flips);
        let cores = cores() as f64;
        // Free: the others left three quarters of a core beside the flip's.
        A_CORE_WAS_FREE.store(others.as_secs_f64() <= span.as_secs_f64() * (cores - 1.75), Ordering::Relaxed);
    }
}

/// The cores this process may use (read once: on Linux it reads the
/// cgroup's quota files).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Can this machine's busy time be read (Linux)? Read once.
fn measurable() -> bool {
    static MEASURABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MEASURABLE.get_or_init(|| machine_busy().is_some())
}

fn thread_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec, which `ts` is.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    None
}

/// CPU time the machine has spent on work at normal priority (user,
/// system, interrupts, and what the hypervisor took), from the first line of
/// Linux's `/proc/stat`; nice time (lowered priority) and idle time are not
/// counted. `None` elsewhere.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().map(|t| t.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    let busy = ticks.first()? + ticks.get(2)? + ticks.get(5)? + ticks.get(6)? + ticks.get(7).unwrap_or(&0);
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(busy.saturating_mul(1_000_000_000 / per_second)))
}

/// Asked once per flip that could split, by the thread running it.
pub(crate) fn take_second_core() -> bool {
    let cores = cores();
    match SecondCore::current() {
        SecondCore::Always => true,
        SecondCore::Never => false,
        // The caller's own flip is running; any other shares the cores.
        SecondCore::WhenIdle => {
            cores >= 2
                && FLIPS_RUNNING.load(Ordering::Relaxed) <= 1
                && measurable()
                && A_CORE_WAS_FREE.load(Ordering::Relaxed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_flip_in_the_process_keeps_the_cores_and_the_setting_overrides() {
        let first = FlipCpu::whole_flip();
        SecondCore::WhenIdle.set();
        let alone = take_second_core();
        let second = FlipCpu::whole_flip();
        assert!(!take_second_core(), "two flips running: neither takes a second core");
        SecondCore::Always.set();
        assert!(take_second_core());
        drop(second);
        SecondCore::Never.set();
        assert!(!take_second_core());
        drop(first);
        // Alone, on Linux with two cores and a free one, it may split; never elsewhere.
        if cores() < 2 || !measurable() {
            assert!(!alone);
        }
        SecondCore::WhenIdle.set();
    }

    #[test]
    fn the_machines_busy_time_grows_with_work() {
        let Some(before) = machine_busy() else {
            eprintln!("skipped: no /proc/stat here");
            return;
        };
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = machine_busy().unwrap();
        assert!(after > before, "50 ms of work left the count at {before:?}");
    }
}
