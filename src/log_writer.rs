//! Log lines formatted and written off the request path, in batches.
//!
//! At the default level every gallery read is logged. Two costs were on the
//! request's thread and are not any more:
//!
//! - **Writing.** A writer thread woken for each line (what a channel to a
//!   logging thread does) costs a futex wake and a context switch per request
//!   on a busy two-core machine. Here an event is appended to a shared batch
//!   under a mutex held for a push; the writer thread takes the whole batch
//!   every [`BATCH_EVERY`], or at once for a warning or an error (which an
//!   operator may be watching for) or a batch past [`FLUSH_AT`] events.
//! - **Formatting.** `tracing-subscriber`'s formatter builds the whole line
//!   (timestamp, padded level, escaped fields) in the caller's thread, a
//!   tenth of the cached gallery's throughput. Here the event is only
//!   captured — its static metadata, the time, its fields as values (a
//!   string field is copied, numbers are kept as numbers) — and the writer
//!   thread formats it, as text or as one JSON object per line.
//!
//! While the output cannot keep up, events past [`MAX_BUFFERED`] are dropped
//! and counted, so logging never holds up a request or grows without bound.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

const BATCH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 1024;
const MAX_BUFFERED: usize = 64 * 1024;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people: `2026-12-07T16:40:11.843123Z  INFO target: message key=value`,
    /// with colours on a terminal.
    Text { ansi: bool },
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message`
    /// among them), `target`.
    Json,
}

/// One event as it happened, to be formatted by the writer thread.
struct Captured {
    at: SystemTime,
    meta: &'static Metadata<'static>,
    fields: Vec<(&'static str, Value)>,
}

enum Value {
    /// A string field (`key = some_str`): quoted in text, as tracing's own formatter does.
    Str(String),
    /// A `Debug` or `Display` field (`?x`, `%x`) and the message: shown as they are.
    Text(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Visit for Captured {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.push((field.name(), Value::Str(value.to_owned())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields.push((field.name(), Value::Text(value.to_string())));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.push((field.name(), Value::Text(format!("{value:?}"))));
    }
}

#[derive(Default)]
struct Pending {
    events: Vec<Captured>,
    dropped: u64,
    urgent: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

/// The layer that captures events for the writer thread.
pub struct Deferred {
    shared: Arc<Shared>,
}

/// Flushes what is left and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A layer whose events a thread of its own formats as `format` and writes to `out`.
pub fn deferred(format: Format, out: impl Write + Send + 'static) -> (Deferred, Guard) {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("flipstack-log".into())
            .spawn(move || write_batches(&shared, format, out))
            .expect("cannot start the log writer thread")
    };
    (Deferred { shared: shared.clone() }, Guard { shared, thread: Some(thread) })
}

impl<S: Subscriber> Layer<S> for Deferred {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut captured = Captured { at: SystemTime::now(), meta: event.metadata(), fields: Vec::with_capacity(4) };
        event.record(&mut captured);
        let urgent = *captured.meta.level() <= Level::WARN;
        self.shared.push(captured, urgent);
    }
}

impl Shared {
    fn push(&self, event: Captured, urgent: bool) {
        let wake = {
            let mut p = lock(&self.pending);
            if p.events.len() >= MAX_BUFFERED {
                p.dropped += 1;
                return;
            }
            let was_empty = p.events.is_empty();
            p.events.push(event);
            p.urgent |= urgent || p.events.len() >= FLUSH_AT;
            // The thread sleeps until the first event of a batch, then waits
            // out the batch unless it is urgent.
            was_empty || p.urgent
        };
        if wake {
            self.ready.notify_one();
        }
    }
}

fn write_batches(shared: &Shared, format: Format, mut out: impl Write) {
    let mut batch = Vec::new();
    let mut text = String::new();
    loop {
        let (dropped, closed) = {
            let mut p = lock(&shared.pending);
            while p.events.is_empty() && !p.closed {
                p = shared.ready.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if !p.urgent && !p.closed {
                // Let the events of the next few milliseconds join this batch.
                p = shared
                    .ready
                    .wait_timeout_while(p, BATCH_EVERY, |p| !p.urgent && !p.closed)
                    .map_or_else(|e| e.into_inner().0, |(p, _)| p);
            }
            std::mem::swap(&mut batch, &mut p.events);
            p.urgent = false;
            (std::mem::take(&mut p.dropped), p.closed)
        };
        text.clear();
        if dropped > 0 {
            let _ =
                writeln!(text, "flipstack: {dropped} log lines were dropped because the log output could not keep up");
        }
        for event in batch.drain(..) {
            match format {
                Format::Text { ansi } => write_text(&mut text, &event, ansi),
                Format::Json => write_json(&mut text, &event),
            }
        }
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        if closed && lock(&shared.pending).events.is_empty() {
            return;
        }
    }
}

fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `2026-12-07T16:40:11.843123Z`: UTC, microseconds. The writer thread
/// formats tens of thousands of lines a second on a busy server: the date
/// and time to the second are made once a second and reused.
fn write_timestamp(out: &mut String, at: SystemTime) {
    thread_local! {
        static TO_THE_SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    TO_THE_SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            *second = secs;
            text.clear();
            write_date_and_time(text, secs);
        }
        out.push_str(text);
    });
    out.push('.');
    push_digits(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// `2026-12-07T16:40:11` for `secs` since the epoch.
fn write_date_and_time(out: &mut String, secs: u64) {
    let (days, of_day) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ =
        write!(out, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", of_day / 3600, of_day / 60 % 60, of_day % 60);
}

/// `n`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits[..width].iter().map(|&d| d as char));
}

/// A level as the text format shows it: right-aligned in five columns.
fn padded_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

fn write_text(out: &mut String, e: &Captured, ansi: bool) {
    let level = *e.meta.level();
    let (dim, italic, reset) = if ansi { ("\x1b[2m", "\x1b[3m", "\x1b[0m") } else { ("", "", "") };
    let colour = match (ansi, level) {
        (false, _) => "",
        (true, Level::ERROR) => "\x1b[31m",
        (true, Level::WARN) => "\x1b[33m",
        (true, Level::INFO) => "\x1b[32m",
        (true, Level::DEBUG) => "\x1b[34m",
        (true, Level::TRACE) => "\x1b[35m",
    };
    out.push_str(dim);
    write_timestamp(out, e.at);
    for part in [reset, " ", colour, padded_level(level), reset, " ", dim, e.meta.target(), ":", reset] {
        out.push_str(part);
    }
    // The message first, then the other fields as key=value.
    for (name, value) in e.fields.iter().filter(|(n, _)| *n == "message") {
        let _ = name;
        out.push(' ');
        write_text_value(out, value, false);
    }
    for (name, value) in e.fields.iter().filter(|(n, _)| *n != "message") {
        for part in [" ", italic, name, reset, "="] {
            out.push_str(part);
        }
        write_text_value(out, value, true);
    }
    out.push('\n');
}

fn write_text_value(out: &mut String, value: &Value, quote_strings: bool) {
    let _ = match value {
        // Printable ASCII without quotes or backslashes: what `Debug` would
        // show, without its per-character escaping.
        Value::Str(s) if quote_strings && s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') => {
            out.push('"');
            out.push_str(s);
            out.push('"');
            Ok(())
        }
        Value::Str(s) if quote_strings => write!(out, "{s:?}"),
        Value::Str(s) | Value::Text(s) => {
            out.push_str(s);
            Ok(())
        }
        Value::I64(n) => write!(out, "{n}"),
        Value::U64(n) => write!(out, "{n}"),
        Value::F64(n) => write!(out, "{n}"),
        Value::Bool(b) => write!(out, "{b}"),
    };
}

fn write_json(out: &mut String, e: &Captured) {
    out.push_str("{\"timestamp\":\"");
    write_timestamp(out, e.at);
    let _ = write!(out, "\",\"level\":\"{}\",\"fields\":{{", e.meta.level().as_str());
    for (i, (name, value)) in e.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, name);
        out.push(':');
        let _ = match value {
            Value::Str(s) | Value::Text(s) => {
                write_json_string(out, s);
                Ok(())
            }
            Value::I64(n) => write!(out, "{n}"),
            Value::U64(n) => write!(out, "{n}"),
            // JSON has no NaN or infinity.
            Value::F64(n) if n.is_finite() => write!(out, "{n}"),
            Value::F64(n) => {
                write_json_string(out, &n.to_string());
                Ok(())
            }
            Value::Bool(b) => write!(out, "{b}"),
        };
    }
    out.push_str("},\"target\":");
    write_json_string(out, e.meta.target());
    out.push_str("}\n");
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// An output the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u8>>>);

    impl Write for Seen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(seen: &Seen) -> String {
        String::from_utf8(seen.0.lock().unwrap().clone()).unwrap()
    }

    fn wait_for(seen: &Seen, what: &str) -> bool {
        for _ in 0..200 {
            if text(seen).contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Runs `f` with a subscriber whose only layer is a deferred writer to `out`.
    fn logging(format: Format, out: impl Write + Send + 'static, f: impl FnOnce()) -> Guard {
        let (layer, guard) = deferred(format, out);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        guard
    }

    #[test]
    fn lines_arrive_in_order_and_all_are_written_by_the_end() {
        let seen = Seen::default();
        let guard = logging(Format::Text { ansi: false }, seen.clone(), || {
            for i in 0..1000 {
                tracing::info!(i, "line");
            }
        });
        drop(guard);
        let out = text(&seen);
        let numbers: Vec<usize> =
            out.lines().map(|l| l.rsplit_once("i=").expect("the field is there").1.parse().unwrap()).collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn text_lines_read_as_tracing_writes_them() {
        let seen = Seen::default();
        let guard = logging(Format::Text { ansi: false }, seen.clone(), || {
            let (person, plain) = ("ab\"c", "5484a20b");
            tracing::info!(person, plain, page = 2u64, source = %"cache", ok = true, "gallery read");
        });
        drop(guard);
        let out = text(&seen);
        let (stamp, rest) = out.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2026-12-07T16:40:11.843123Z".len(), "{out}");
        assert!(stamp.starts_with("20") && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{out}");
        assert_eq!(
            rest,
            " INFO flipstack::log_writer::tests: gallery read person=\"ab\\\"c\" plain=\"5484a20b\" page=2 source=cache ok=true\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each_with_the_fields_kept() {
        let seen = Seen::default();
        let guard = logging(Format::Json, seen.clone(), || {
            tracing::warn!(addr = %"127.0.0.1:5000", n = -3i64, x = 1.5f64, what = "a\nb", "server listening");
        });
        drop(guard);
        let out = text(&seen);
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "flipstack::log_writer::tests");
        assert_eq!(line["fields"]["message"], "server listening");
        assert_eq!(line["fields"]["addr"], "127.0.0.1:5000");
        assert_eq!(line["fields"]["n"], -3);
        assert_eq!(line["fields"]["x"], 1.5);
        assert_eq!(line["fields"]["what"], "a\nb");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let mut s = String::new();
        write_timestamp(&mut s, SystemTime::UNIX_EPOCH + Duration::from_micros(951_782_400_000_001));
        assert_eq!(s, "2000-02-29T00:00:00.000001Z");
        s.clear();
        write_timestamp(&mut s, SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_687_999));
        assert_eq!(s, "2026-12-07T23:59:59.000000Z");
        // The same second again (the reused part), then the next one.
        s.clear();
        write_timestamp(&mut s, SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_687_999_654_321));
        assert_eq!(s, "2026-12-07T23:59:59.654321Z");
        s.clear();
        write_timestamp(&mut s, SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_688_000_000_010));
        assert_eq!(s, "2026-12-08T00:00:00.000010Z");
    }

    #[test]
    fn a_quiet_batch_is_written_without_a_flush_and_a_warning_is_urgent() {
        let seen = Seen::default();
        let (layer, _guard) = deferred(Format::Text { ansi: false }, seen.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!("an info line");
            assert!(wait_for(&seen, "an info line"), "a quiet batch was never written");
            tracing::warn!("a warning");
            assert!(wait_for(&seen, "a warning"));
        });
    }

    #[test]
    fn events_past_the_bound_are_dropped_and_counted() {
        // An output that is stuck until the test lets it go.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>, Seen);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, turn) = &*self.0;
                let _open = turn.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
                self.1.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let seen = Seen::default();
        let guard = logging(Format::Text { ansi: false }, Stuck(gate.clone(), seen.clone()), || {
            for i in 0..(2 * MAX_BUFFERED + 100) {
                tracing::info!(i, "line");
            }
        });
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let out = text(&seen);
        assert!(out.contains("log lines were dropped"), "no word of the dropped lines");
        let lines = out.lines().filter(|l| l.contains(" line i=")).count();
        assert!(lines <= 2 * MAX_BUFFERED, "the buffer grew past its bound: {lines} lines");
    }
}
