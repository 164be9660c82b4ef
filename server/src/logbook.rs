//! The server's recent warnings and errors, kept in memory for the console's
//! log view (`GET /admin/api/logs`). A `tracing` layer added where the
//! binary builds its subscriber; it keeps the last [`KEPT`] lines.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use flipstack_core::domain::now_millis;
use flipstack_core::status::LogLine;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many lines are kept (the newest).
pub const KEPT: usize = 200;

static RECENT: Mutex<VecDeque<LogLine>> = Mutex::new(VecDeque::new());

/// The layer that records WARN and ERROR events.
pub fn layer() -> RecentWarnings {
    RecentWarnings
}

pub struct RecentWarnings;

impl<S: Subscriber> Layer<S> for RecentWarnings {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        record(LogLine {
            at: now_millis(),
            level: level.to_string(),
            target: event.metadata().target().to_owned(),
            message: text.0,
        });
    }
}

fn record(line: LogLine) {
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() == KEPT {
        recent.pop_front();
    }
    recent.push_back(line);
}

/// The kept lines, oldest first.
pub fn recent() -> Vec<LogLine> {
    RECENT.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}

/// `message key=value …`, as the text log shows an event.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings as written, without Debug's quotes.
        self.record_debug(field, &format_args!("{value}"));
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn keeps_warnings_and_errors_with_their_fields_and_nothing_below() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(upload = 7, error = "the disk is full", "could not store a picture");
            tracing::error!("the database went away");
        });
        let lines = recent();
        let mine: Vec<_> = lines.iter().filter(|l| l.target.ends_with("logbook::tests")).collect();
        assert_eq!(mine.len(), 2, "{lines:?}");
        assert_eq!(mine[0].level, "WARN");
        assert_eq!(mine[0].message, "could not store a picture upload=7 error=the disk is full");
        assert_eq!(mine[1].level, "ERROR");
        assert_eq!(mine[1].message, "the database went away");
    }
}
