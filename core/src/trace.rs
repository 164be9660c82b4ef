//! Traces across processes: a span per request (the server) and per job (the
//! worker), exported over OTLP by the binary when `FLIPSTACK_OTLP_ENDPOINT`
//! is set. An upload records the W3C `traceparent` of the request that
//! accepted it; the worker's job span continues that trace, whichever queue
//! carried the job (the row travels with every delivery and re-send).
//!
//! With no endpoint nothing here makes a span: the request path pays one
//! atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Called once by the binary after it installed the OTLP layer.
pub fn start_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Are spans exported (so worth making)?
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `traceparent` of the current span, when it is exported.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = tracing::Span::current().context();
    format_traceparent(cx.span().span_context())
}

/// Makes `span` continue the trace a `traceparent` names (an upload's, or an
/// incoming request's header). A malformed value is ignored: the span then
/// starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = parse_traceparent(traceparent) {
        let cx = Context::new().with_remote_span_context(parent);
        // Only fails when no OTLP layer is installed or the span started already.
        crate::error::ignore_failure("continuing a trace", span.set_parent(cx));
    }
}

/// `00-<trace id>-<span id>-<flags>` (W3C Trace Context, version 00).
pub fn format_traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four parts; a later version may add some.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(value).unwrap();
        assert_eq!(sc.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(format_traceparent(&sc).as_deref(), Some(value));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn nothing_is_recorded_while_not_exporting() {
        assert!(current_traceparent().is_none());
    }
}
