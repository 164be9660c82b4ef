//! Log lines written off the request path, in batches.
//!
//! At the default level every gallery read is logged. A writer thread woken
//! for each line (what a channel to a logging thread does) costs a futex
//! wake and a context switch per request on a busy two-core machine, a
//! sixth of the cached gallery's throughput. Here a line is appended to a
//! shared buffer under a mutex held for a copy; the writer thread takes the
//! whole buffer every [`BATCH_EVERY`], or at once for a warning or an error
//! (which an operator may be watching for) or a buffer past [`FLUSH_AT`].
//! While stderr cannot keep up, lines past [`MAX_BUFFERED`] are dropped and
//! counted, so logging never holds up a request or grows without bound.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

const BATCH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 64 * 1024;
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    dropped: u64,
    urgent: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

/// What the fmt layer writes to (one `write` per formatted event).
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Flushes what is left and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A writer batching into `out` from a thread of its own.
pub fn batched(out: impl Write + Send + 'static) -> (BatchedWriter, Guard) {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("flipstack-log".into())
            .spawn(move || write_batches(&shared, out))
            .expect("cannot start the log writer thread")
    };
    (BatchedWriter { shared: shared.clone() }, Guard { shared, thread: Some(thread) })
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let (dropped, closed) = {
            let mut p = lock(&shared.pending);
            while p.lines.is_empty() && !p.closed {
                p = shared.ready.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if !p.urgent && !p.closed {
                // Let the lines of the next few milliseconds join this batch.
                p = shared
                    .ready
                    .wait_timeout_while(p, BATCH_EVERY, |p| !p.urgent && !p.closed)
                    .map_or_else(|e| e.into_inner().0, |(p, _)| p);
            }
            std::mem::swap(&mut batch, &mut p.lines);
            p.urgent = false;
            (std::mem::take(&mut p.dropped), p.closed)
        };
        if dropped > 0 {
            let _ =
                writeln!(out, "flipstack: {dropped} log lines were dropped because the log output could not keep up");
        }
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed && lock(&shared.pending).lines.is_empty() {
            return;
        }
    }
}

fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One event's line.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let wake = {
            let mut p = lock(&self.shared.pending);
            if p.lines.len() + buf.len() > MAX_BUFFERED {
                p.dropped += 1;
                return Ok(buf.len());
            }
            let was_empty = p.lines.is_empty();
            p.lines.extend_from_slice(buf);
            p.urgent |= self.urgent || p.lines.len() >= FLUSH_AT;
            // The thread sleeps until the first line of a batch, then waits
            // out the batch unless it is urgent.
            was_empty || p.urgent
        };
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        self.line_for(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        self.line_for(*meta.level())
    }
}

impl BatchedWriter {
    fn line_for(&self, level: Level) -> Line<'_> {
        Line { shared: &self.shared, urgent: level <= Level::WARN }
    }
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

    #[test]
    fn lines_arrive_in_order_and_all_are_written_by_the_end() {
        let seen = Seen::default();
        let (writer, guard) = batched(seen.clone());
        for i in 0..1000 {
            writer.make_writer().write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&seen), expected);
    }

    #[test]
    fn a_quiet_batch_is_written_without_a_flush_and_a_warning_is_urgent() {
        let seen = Seen::default();
        let (writer, _guard) = batched(seen.clone());
        writer.make_writer().write_all(b"an info line\n").unwrap();
        assert!(wait_for(&seen, "an info line"), "a quiet batch was never written");
        assert!(writer.line_for(Level::WARN).urgent && writer.line_for(Level::ERROR).urgent);
        assert!(!writer.line_for(Level::INFO).urgent && !writer.line_for(Level::DEBUG).urgent);
        writer.line_for(Level::WARN).write_all(b"a warning\n").unwrap();
        assert!(wait_for(&seen, "an info line\na warning\n"));
    }

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
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
        let (writer, guard) = batched(Stuck(gate.clone(), seen.clone()));
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        for _ in 0..(2 * MAX_BUFFERED / 1024 + 100) {
            writer.make_writer().write_all(&line).unwrap();
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let out = text(&seen);
        assert!(out.contains("log lines were dropped"), "no word of the dropped lines");
        assert!(out.len() <= 2 * MAX_BUFFERED + 1024 * 1024, "the buffer grew past its bound: {}", out.len());
    }
}
