//! Drawing: a pure function of the [`App`]. Nothing here waits or fetches.
//!
//! At 80×24 the five panels sit in three rows (fleet | queue, cache | reads,
//! uploads); a larger terminal gives every panel more lines and the uploads
//! panel a column of recent jobs.

use flipstack_domain::domain::WorkerStatus;
use flipstack_domain::status::AdminStatus;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Clear, Paragraph, Sparkline, Widget, Wrap};

use crate::app::{App, DumpState, Level, Mode, STATUS_STALE_MS};
use crate::model::{AdminEvent, Freshness, Series, human_age, human_bytes};
use crate::operate::{Change, ScalePrompt};
use crate::provision::{Confirm, ProvisionOp, StepState};

/// The panels, for drawing one alone (the snapshot tests do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    Fleet,
    Queue,
    Cache,
    Reads,
    Uploads,
}

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let [header, body, footer] =
        area.layout(&Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]));
    let buf = frame.buffer_mut();
    render_header(app, header, buf);
    let [top, middle, bottom] =
        body.layout(&Layout::vertical([Constraint::Fill(1), Constraint::Fill(1), Constraint::Fill(1)]));
    let halves = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]);
    let [fleet, queue] = top.layout(&halves);
    let [cache, reads] = middle.layout(&halves);
    render_panel(Panel::Fleet, app, fleet, buf);
    render_panel(Panel::Queue, app, queue, buf);
    render_panel(Panel::Cache, app, cache, buf);
    render_panel(Panel::Reads, app, reads, buf);
    render_panel(Panel::Uploads, app, bottom, buf);
    render_footer(app, footer, buf);

    if let Some(cursor) = render_overlay(app, area, frame.buffer_mut()) {
        frame.set_cursor_position(cursor);
    }
    if app.options.no_color {
        without_colors(frame.buffer_mut());
    }
}

/// `NO_COLOR`: every cell in the terminal's own colours; bold, dim and
/// reverse stay, so what stands out still does.
pub fn without_colors(buf: &mut Buffer) {
    for cell in buf.content.iter_mut() {
        cell.fg = Color::Reset;
        cell.bg = Color::Reset;
    }
}

pub fn render_panel(panel: Panel, app: &App, area: Rect, buf: &mut Buffer) {
    match panel {
        Panel::Fleet => fleet(app, area, buf),
        Panel::Queue => queue(app, area, buf),
        Panel::Cache => cache(app, area, buf),
        Panel::Reads => reads(app, area, buf),
        Panel::Uploads => uploads(app, area, buf),
    }
}

const DIM: Style = Style::new().fg(Color::DarkGray);
const KEY: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const GOOD: Style = Style::new().fg(Color::Green);
const BAD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const WARN: Style = Style::new().fg(Color::Yellow);

/// A panel's frame: its name, what it shows, and how fresh that is.
fn panel_block<'a>(name: &'a str, detail: String, freshness: &Freshness) -> Block<'a> {
    let mut title = vec![Span::raw(" "), Span::styled(name, Style::new().bold())];
    if !detail.is_empty() {
        title.push(Span::styled(format!(" · {detail}"), DIM));
    }
    title.push(Span::raw(" "));
    let block = Block::bordered().title(Line::from(title));
    match freshness {
        Freshness::Live => block,
        Freshness::Stale { age_ms, .. } => block
            .title(Line::from(Span::styled(format!(" stale {} ", human_age(*age_ms)), BAD)).right_aligned())
            .border_style(Style::new().fg(Color::Red)),
        Freshness::Waiting { .. } => block
            .title(Line::from(Span::styled(" waiting ", WARN)).right_aligned())
            .border_style(Style::new().fg(Color::Yellow)),
    }
}

fn status_freshness(app: &App) -> Freshness {
    app.status.health.freshness(app.now, STATUS_STALE_MS)
}

/// What a panel shows while its source has never answered; one panel per
/// source (`with_error`) says why.
fn waiting_text(source: &str, freshness: &Freshness, with_error: bool) -> Text<'static> {
    let mut t = Text::from(Line::styled(format!("waiting for {source}…"), WARN));
    if with_error && let Freshness::Waiting { error: Some(e) } | Freshness::Stale { error: Some(e), .. } = freshness {
        t.push_line(Line::styled(e.clone(), BAD));
    }
    t
}

/// `label` then a one-line sparkline of `series` filling the rest of `area`,
/// scaled to at least `top`.
fn spark_row(label: &str, series: &Series, top: u64, area: Rect, buf: &mut Buffer, style: Style) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    let label_w = (label.chars().count() as u16 + 1).min(area.width);
    let [l, s] = area.layout(&Layout::horizontal([Constraint::Length(label_w), Constraint::Min(0)]));
    Paragraph::new(Span::styled(label.to_owned(), DIM)).render(l, buf);
    sparkline(series, top, s, buf, style);
}

fn sparkline(series: &Series, top: u64, area: Rect, buf: &mut Buffer, style: Style) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    let data = series.last(area.width as usize);
    // Never scale to less than 1: a flat zero series stays at the bottom.
    let max = data.iter().copied().max().unwrap_or(0).max(top).max(1);
    Sparkline::default().data(&data).max(max).style(style).render(area, buf);
}

fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let mut spans = vec![
        Span::styled(" flipstack ", Style::new().bold().reversed()),
        Span::raw(" "),
        Span::raw(app.options.url.clone()),
    ];
    if let Some(stack) = &app.options.stack {
        spans.push(Span::styled(format!(" · stack {stack}"), DIM));
    }
    match app.blocked() {
        Some(true) => spans.push(Span::styled(" · uploads BLOCKED", BAD)),
        Some(false) => spans.push(Span::styled(" · uploads open", GOOD)),
        None => {}
    }
    if app.paused() == Some(true) {
        spans.push(Span::styled(" · workers PAUSED", BAD));
    }
    if app.options.read_only {
        spans.push(Span::styled(" · READ-ONLY", WARN));
    }
    // Last: what is cut off at 80 columns is the least needed.
    if let Some(s) = &app.status.last {
        spans.push(Span::styled(format!(" · v{} up {}", s.version, human_age(s.uptime_secs as i64 * 1000)), DIM));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let line = if let Some(f) = &app.flash {
        let style = match f.level {
            Level::Info => GOOD,
            Level::Warn => WARN,
            Level::Error => BAD,
        };
        Line::from(Span::styled(format!(" {}", f.text), style))
    } else {
        let mut spans = vec![Span::raw(" ")];
        let keys: &[(&str, &str)] = if app.options.read_only {
            &[("u", "uploads"), ("l", "log"), ("p", "plan"), ("?", "help"), ("q", "quit")]
        } else {
            &[
                ("b", if app.blocked() == Some(true) { "unblock" } else { "block" }),
                ("w", if app.paused() == Some(true) { "resume" } else { "pause" }),
                ("r", "retry"),
                ("u", "uploads"),
                ("l", "log"),
                ("d", "dump"),
                ("p", "prov"),
                ("?", "help"),
                ("q", "quit"),
            ]
        };
        for (k, what) in keys {
            spans.push(Span::styled(*k, KEY));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        if let Some(d) = app.dump.as_ref().filter(|d| d.running()) {
            spans.push(Span::styled(format!("dumping {}…  ", human_bytes(d.bytes)), WARN));
        }
        if let Some(run) = app.provision.run.as_ref().filter(|r| r.running()) {
            spans.push(Span::styled(format!("provision {}: step {}…", run.op.name(), run.steps.len()), WARN));
        }
        Line::from(spans)
    };
    Paragraph::new(line).render(area, buf);
}

fn fleet(app: &App, area: Rect, buf: &mut Buffer) {
    match &app.options.stack {
        Some(stack) => aws_fleet(app, stack, area, buf),
        None => local_fleet(app, area, buf),
    }
}

fn aws_fleet(app: &App, stack: &str, area: Rect, buf: &mut Buffer) {
    let freshness = app.fleet.health.freshness(app.now, app.options.fleet_interval_ms * 3);
    let block = panel_block("fleet", format!("stack {stack}"), &freshness);
    let inner = block.inner(area);
    block.render(area, buf);
    if let Freshness::Waiting { .. } = freshness {
        Paragraph::new(waiting_text("AWS", &freshness, true)).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    }
    if app.fleet.groups.is_empty() {
        Paragraph::new(vec![
            Line::styled(format!("no Auto Scaling groups tagged flipstack:stack={stack}"), WARN),
            Line::styled("provision it with p, or check --stack and the region", DIM),
        ])
        .wrap(Wrap { trim: true })
        .render(inner, buf);
        return;
    }
    let mut rows = inner.rows();
    if let Some(r) = rows.next() {
        Paragraph::new(Line::styled(
            format!("{:<7}{:>5}{:>4}{:>5}{:>6}  history", "group", "want", "in", "pend", "range"),
            DIM,
        ))
        .render(r, buf);
    }
    for g in &app.fleet.groups {
        let Some(r) = rows.next() else { break };
        let s = &g.status;
        let role = if s.role.is_empty() { &s.name } else { &s.role };
        let text = format!(
            "{:<7}{:>5}{:>4}{:>5}{:>6}  ",
            truncate(role, 7),
            s.desired,
            s.in_service,
            s.pending,
            format!("{}-{}", s.min, s.max)
        );
        let [t, h] =
            r.layout(&Layout::horizontal([Constraint::Length(text.chars().count() as u16), Constraint::Min(0)]));
        let style = if s.in_service < s.desired { WARN } else { Style::new() };
        Paragraph::new(Span::styled(text, style)).render(t, buf);
        sparkline(&g.in_service, s.max as u64, h, buf, GOOD);
    }
    let mut rest: Vec<Rect> = rows.collect();
    // AWS's trouble takes the last line; the workers reporting fill the rest.
    if let Freshness::Stale { error: Some(e), .. } = &freshness
        && let Some(r) = rest.pop()
    {
        Paragraph::new(Line::styled(e.clone(), BAD)).render(r, buf);
    }
    if let Some(st) = &app.status.last {
        let mut lines = vec![Line::styled(workers_line(st), DIM)];
        lines.extend(worker_lines(st));
        for (r, line) in rest.into_iter().zip(lines) {
            Paragraph::new(line).render(r, buf);
        }
    }
}

/// One line per worker that reports: id, state, its job, jobs done.
fn worker_lines(s: &AdminStatus) -> Vec<Line<'static>> {
    s.live_workers()
        .map(|w| {
            let job = w.current_upload.map(|u| format!("#{u}")).unwrap_or_default();
            let status_style = match w.status {
                WorkerStatus::Busy => GOOD,
                WorkerStatus::Draining => WARN,
                // Only busy and draining stand out.
                WorkerStatus::Idle | WorkerStatus::Paused => DIM,
            };
            Line::from(vec![
                Span::raw(format!("{:<15}", truncate(&w.id, 14))),
                Span::styled(format!("{:<6}", w.status), status_style),
                Span::raw(format!("{job:<7}")),
                Span::styled(format!("{} jobs", w.jobs_done), DIM),
            ])
        })
        .collect()
}

fn workers_line(s: &AdminStatus) -> String {
    let live: Vec<_> = s.live_workers().collect();
    let busy = live.iter().filter(|w| w.status == WorkerStatus::Busy).count();
    format!("workers reporting {} (busy {busy})", live.len())
}

fn local_fleet(app: &App, area: Rect, buf: &mut Buffer) {
    let freshness = status_freshness(app);
    let block = panel_block("fleet", "local".into(), &freshness);
    let inner = block.inner(area);
    block.render(area, buf);
    let Some(s) = &app.status.last else {
        Paragraph::new(waiting_text("the server", &freshness, false)).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    };
    let mut lines = Vec::new();
    match &s.pool {
        Some(p) => lines.push(Line::from(vec![
            Span::raw(format!("running {}/{}", p.running, p.desired)),
            Span::styled(format!(" (min {} max {}) backlog {}", p.min, p.max, p.backlog), DIM),
        ])),
        None => lines.push(Line::styled("no local pool (not `flipstack up`)", DIM)),
    }
    let workers = worker_lines(s);
    if workers.is_empty() {
        lines.push(Line::styled("no worker reporting: jobs wait", WARN));
    }
    lines.extend(workers);
    // The last line is the history of running workers.
    let text_h = inner.height.saturating_sub(1);
    let [text, spark] = inner.layout(&Layout::vertical([Constraint::Length(text_h), Constraint::Length(1)]));
    if lines.len() > text_h as usize && text_h > 0 {
        let more = lines.len() - text_h as usize + 1;
        lines.truncate(text_h as usize - 1);
        lines.push(Line::styled(format!("… {more} more"), DIM));
    }
    Paragraph::new(lines).render(text, buf);
    let top = s.pool.as_ref().map_or(0, |p| p.max as u64);
    spark_row("running", &app.status.pool_running, top, spark, buf, GOOD);
}

fn queue(app: &App, area: Rect, buf: &mut Buffer) {
    let freshness = status_freshness(app);
    let kind = app.status.last.as_ref().map(|s| s.queue.kind.clone()).unwrap_or_default();
    let block = panel_block("queue", kind, &freshness);
    let inner = block.inner(area);
    block.render(area, buf);
    // The workers' numbers from CloudWatch need no answer from a server.
    let fleet = fleet_line(app, |n| {
        let jobs = n.jobs_done.or(n.jobs_failed.map(|_| 0.0))?;
        let failed = n.jobs_failed.map(|f| format!("  failed {f:.0}")).unwrap_or_default();
        let secs = n.job_seconds.map(|s| format!("  job {s:.2}s")).unwrap_or_default();
        Some(format!("done {jobs:.0}{failed}{secs}"))
    });
    let Some(s) = &app.status.last else {
        let mut text = waiting_text("the server", &freshness, false);
        text.lines.extend(fleet);
        Paragraph::new(text).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    };
    let d = &s.queue.depth;
    let dlq = match d.dead_letters {
        Some(0) => Span::raw("0"),
        Some(n) => Span::styled(n.to_string(), BAD),
        None => Span::styled("—", DIM),
    };
    let m = &s.metrics;
    let avg = |sum: f64, n: u64| {
        if n == 0 { "—".to_owned() } else { format!("{:.2}s", sum / n as f64) }
    };
    let oldest = s.oldest_unfinished_age_secs.map(|a| human_age((a * 1000.0) as i64)).unwrap_or_else(|| "—".into());
    let mut lines = vec![
        Line::from(vec![Span::raw(format!("waiting {}  in flight {}  dead ", d.visible, d.in_flight)), dlq]),
        Line::raw(format!("oldest {oldest}  done {}/min", app.events.jobs_done_within(app.now, 60_000))),
    ];
    lines.extend(fleet);
    // This process's own job timings: none where workers run apart from it.
    if m.job_count > 0 || m.queue_wait_count > 0 {
        let timings = Span::styled(
            format!(
                "  wait {} job {}",
                avg(m.queue_wait_seconds_sum, m.queue_wait_count),
                avg(m.job_seconds_sum, m.job_count)
            ),
            DIM,
        );
        if inner.width >= 50 {
            lines[1].push_span(timings);
        } else if inner.height >= 6 {
            lines.push(Line::from(timings.content.trim_start().to_owned()).style(DIM));
        }
    }
    let [text, spark] = inner.layout(&Layout::vertical([Constraint::Length(lines.len() as u16), Constraint::Min(0)]));
    Paragraph::new(lines).render(text, buf);
    let color = if d.visible > 0 { WARN } else { GOOD };
    sparkline_with_label("depth", &app.status.queue_depth, spark, buf, color);
}

/// A sparkline taking the whole area, its label on the first row.
fn sparkline_with_label(label: &str, series: &Series, area: Rect, buf: &mut Buffer, style: Style) {
    if area.height == 0 {
        return;
    }
    let label_w = (label.len() as u16 + 1).min(area.width);
    let [l, s] = area.layout(&Layout::horizontal([Constraint::Length(label_w), Constraint::Min(0)]));
    Paragraph::new(Span::styled(label.to_owned(), DIM)).render(l, buf);
    sparkline(series, 0, s, buf, style);
}

/// The fleet-wide numbers (CloudWatch, with `--stack`) as one panel line,
/// red and marked when stale.
fn fleet_line(
    app: &App,
    text: impl FnOnce(&flipstack_provision::fleet_numbers::FleetNumbers) -> Option<String>,
) -> Option<Line<'static>> {
    let (body, stale) = app.fleet_numbers.line(app.now, text)?;
    Some(if stale {
        Line::styled(format!("{body} (stale)"), BAD)
    } else {
        Line::styled(body, Style::new().fg(Color::Cyan))
    })
}

fn fleet_reads(app: &App) -> Option<Line<'static>> {
    fleet_line(app, |n| {
        let [c, r, p] = n.reads;
        (c.is_some() || r.is_some() || p.is_some()).then(|| {
            let v = |x: Option<f64>| x.map_or("—".to_owned(), |x| format!("{x:.0}"));
            format!("cache {}  replica {}  primary {}", v(c), v(r), v(p))
        })
    })
}

fn cache(app: &App, area: Rect, buf: &mut Buffer) {
    let freshness = status_freshness(app);
    let kind = app.status.last.as_ref().map(|s| s.cache.clone()).unwrap_or_default();
    let block = panel_block("cache", kind, &freshness);
    let inner = block.inner(area);
    block.render(area, buf);
    let fleet = fleet_line(app, |n| {
        let (h, m) = (n.cache_hits?, n.cache_misses.unwrap_or(0.0));
        let ratio = if h + m > 0.0 { format!(" ({:.1}%)", 100.0 * h / (h + m)) } else { String::new() };
        Some(format!("hits {h:.0}  misses {m:.0}{ratio}"))
    });
    let Some(s) = &app.status.last else {
        let mut text = waiting_text("the server", &freshness, false);
        text.lines.extend(fleet);
        Paragraph::new(text).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    };
    let pct = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let rates = app.status.rates;
    let now_ratio = rates.and_then(|r| r.hit_ratio());
    let m = &s.metrics;
    let errors = if m.cache_errors > 0 {
        Span::styled(format!("  errors {}", m.cache_errors), BAD)
    } else {
        Span::styled("  errors 0", DIM)
    };
    let lines = vec![
        Line::from(vec![
            Span::raw(format!("hit ratio {}", pct(now_ratio))),
            Span::styled(format!("  overall {}", pct(s.cache_hit_ratio())), DIM),
        ]),
        Line::from(vec![
            Span::raw(match rates {
                Some(r) => format!("hits {:.1}/s  misses {:.1}/s", r.cache_hits, r.cache_misses),
                None => "hits —/s  misses —/s".to_owned(),
            }),
            errors,
        ]),
    ];
    let mut lines = lines;
    lines.extend(fleet);
    let [text, spark] = inner.layout(&Layout::vertical([Constraint::Length(lines.len() as u16), Constraint::Min(0)]));
    Paragraph::new(lines).render(text, buf);
    sparkline_with_label("hits/s", &app.status.cache_hits_per_s, spark, buf, GOOD);
}

fn reads(app: &App, area: Rect, buf: &mut Buffer) {
    let status_fresh = status_freshness(app);
    // The feed comes from the event stream: its state is the panel's.
    let events_fresh = if app.events.connected {
        Freshness::Live
    } else {
        match app.events.health.last_ok {
            None => Freshness::Waiting { error: app.events.health.error.as_ref().map(|e| e.1.clone()) },
            Some(t) => {
                Freshness::Stale { age_ms: app.now - t, error: app.events.health.error.as_ref().map(|e| e.1.clone()) }
            }
        }
    };
    let detail = match (app.events.connected, app.status.rates) {
        (true, Some(r)) => format!("{:.1}/s · live", r.reads),
        (true, None) => "live".to_owned(),
        (false, _) => "feed down".to_owned(),
    };
    let block = panel_block("reads", detail, &events_fresh);
    let inner = block.inner(area);
    block.render(area, buf);
    let mut lines = Vec::new();
    match &app.status.last {
        Some(s) => {
            let m = &s.metrics;
            lines.push(Line::raw(format!(
                "cache {}  replica {}  primary {}",
                m.reads_cache, m.reads_replica, m.reads_primary
            )));
            lines.extend(fleet_reads(app));
            let lag = if s.replicas.is_empty() {
                Line::styled("no replica: reads go to the primary", DIM)
            } else {
                let mut spans = vec![Span::raw("lag ")];
                for (i, r) in s.replicas.iter().enumerate() {
                    if i > 0 {
                        spans.push(Span::raw("  "));
                    }
                    spans.push(Span::raw(format!("{} ", truncate(&r.name, 14))));
                    spans.push(match r.lag_ms {
                        Some(ms) if ms >= 1000 => Span::styled(format!("{ms}ms"), WARN),
                        Some(ms) => Span::styled(format!("{ms}ms"), GOOD),
                        None => Span::styled("down", BAD),
                    });
                }
                Line::from(spans)
            };
            lines.push(lag);
        }
        None => {
            lines.extend(waiting_text("the server", &status_fresh, false).lines);
            lines.extend(fleet_reads(app));
        }
    }
    if let Freshness::Waiting { error: Some(e) } | Freshness::Stale { error: Some(e), .. } = &events_fresh {
        lines.push(Line::styled(format!("events: {e}"), BAD));
    }
    if app.events.reads.is_empty() {
        lines.push(Line::styled("no gallery read seen yet", DIM));
    }
    for r in &app.events.reads {
        let style = match r.source.as_str() {
            "cache" => GOOD,
            "replica" => Style::new().fg(Color::Cyan),
            _ => WARN,
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{:>6} ", human_age(app.now - r.at)), DIM),
            Span::styled(format!("{:<8}", r.source.as_str()), style),
            Span::styled(truncate(&r.person, 12), DIM),
        ]));
    }
    Paragraph::new(lines).render(inner, buf);
}

fn uploads(app: &App, area: Rect, buf: &mut Buffer) {
    let freshness = status_freshness(app);
    let detail = match app.blocked() {
        Some(true) => "BLOCKED",
        Some(false) => "open",
        None => "",
    };
    let block = panel_block("uploads", detail.into(), &freshness);
    let inner = block.inner(area);
    block.render(area, buf);
    let Some(s) = &app.status.last else {
        Paragraph::new(waiting_text("the server", &freshness, true)).wrap(Wrap { trim: true }).render(inner, buf);
        return;
    };
    // Wide terminals get a column of recent job events.
    let (left, right) = if inner.width >= 100 {
        let [l, r] = inner.layout(&Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)]));
        (l, Some(r))
    } else {
        (inner, None)
    };
    let mut lines = Vec::new();
    // The status source's trouble is told here, the widest panel.
    if let Freshness::Stale { error: Some(e), .. } = &freshness {
        lines.push(Line::styled(format!("no answer: {e}"), BAD));
    }
    let mut first = vec![if s.blocked { Span::styled("BLOCKED ", BAD) } else { Span::styled("open ", GOOD) }];
    for state in ["pending", "processing", "done", "failed"] {
        let n = s.uploads.get(state).copied().unwrap_or(0);
        let style = if state == "failed" && n > 0 { BAD } else { Style::new() };
        first.push(Span::styled(format!(" {state} {n}"), style));
    }
    for (state, n) in &s.uploads {
        if !["pending", "processing", "done", "failed"].contains(&state.as_str()) {
            first.push(Span::raw(format!(" {state} {n}")));
        }
    }
    if let Some(a) = s.oldest_unfinished_age_secs {
        first.push(Span::styled(format!("  oldest {}", human_age((a * 1000.0) as i64)), DIM));
    }
    lines.push(Line::from(first));
    for p in &s.problems {
        lines.push(Line::styled(format!("problem: {p}"), BAD));
    }
    if s.recent_failures.is_empty() {
        lines.push(Line::styled("no recent failures", DIM));
    } else {
        lines.push(Line::styled("recent failures", DIM));
        for f in &s.recent_failures {
            let when = f.at.map(|t| format!("{} ago", human_age(s.at - t))).unwrap_or_default();
            lines.push(Line::from(vec![
                Span::raw(format!(" #{:<6}", f.upload_id)),
                Span::styled(format!("{when:>9}  "), DIM),
                Span::styled(f.reason.clone(), WARN),
            ]));
        }
    }
    Paragraph::new(lines).render(left, buf);
    if let Some(right) = right {
        let mut jobs = vec![Line::styled("recent jobs", DIM)];
        for e in &app.events.jobs {
            if let AdminEvent::Job { at, kind, upload_id, detail, .. } = e {
                let style = match kind.as_str() {
                    "failed" => BAD,
                    "retry" => WARN,
                    "done" => GOOD,
                    _ => Style::new(),
                };
                jobs.push(Line::from(vec![
                    Span::styled(format!("{:>6} ", human_age(app.now - at)), DIM),
                    Span::styled(format!("{kind:<9}"), style),
                    Span::raw(upload_id.map(|u| format!("#{u} ")).unwrap_or_default()),
                    Span::styled(detail.clone().unwrap_or_default(), DIM),
                ]));
            }
        }
        Paragraph::new(jobs)
            .block(Block::new().borders(ratatui::widgets::Borders::LEFT).border_style(DIM))
            .render(right, buf);
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A centred box of at most `w`×`h`, cleared, with a border and title.
fn popup(area: Rect, w: u16, h: u16, title: &str, buf: &mut Buffer) -> Rect {
    let rect = area.centered(Constraint::Length(w.min(area.width)), Constraint::Length(h.min(area.height)));
    Clear.render(rect, buf);
    let block =
        Block::bordered().title(Line::from(format!(" {title} ").bold())).border_style(Style::new().fg(Color::Cyan));
    let inner = block.inner(rect);
    block.render(rect, buf);
    inner
}

/// Draws the overlay of the current mode; answers where the cursor goes.
fn render_overlay(app: &App, area: Rect, buf: &mut Buffer) -> Option<ratatui::layout::Position> {
    match &app.mode {
        Mode::Normal => None,
        Mode::Help => {
            help(app, area, buf);
            None
        }
        Mode::ConfirmBlock(block) => {
            confirm_block(*block, area, buf);
            None
        }
        Mode::DumpPath(input) => {
            let inner = popup(area, 72, 7, "dump the database", buf);
            let width = inner.width.max(1) as usize;
            let scroll = input.visual_scroll(width.saturating_sub(1));
            let lines = vec![
                Line::raw("Write the whole database as SQL to this file:"),
                Line::raw(""),
                Line::styled(
                    input.value().chars().skip(scroll).collect::<String>(),
                    Style::new().fg(Color::White).bg(Color::DarkGray),
                ),
                Line::raw(""),
                hint(&[("Enter", "start"), ("Esc", "cancel")]),
            ];
            Paragraph::new(lines).render(inner, buf);
            Some(ratatui::layout::Position::new(
                inner.x + (input.visual_cursor().saturating_sub(scroll)) as u16,
                inner.y + 2,
            ))
        }
        Mode::Dump => {
            if let Some(d) = &app.dump {
                dump_view(app, d, area, buf);
            }
            None
        }
        Mode::Provision => provision_view(app, area, buf),
        Mode::Confirm(change) => {
            confirm_change(change, area, buf);
            None
        }
        Mode::Scale(prompt) => Some(scale_prompt(prompt, area, buf)),
        Mode::Uploads => uploads_view(app, area, buf),
        Mode::Logs => {
            logs_view(app, area, buf);
            None
        }
        Mode::Backups => {
            backups_view(app, area, buf);
            None
        }
        Mode::ConfirmRestore(name, input) => {
            backups_view(app, area, buf);
            Some(confirm_restore(name, input, area, buf))
        }
    }
}

fn confirm_change(change: &Change, area: Rect, buf: &mut Buffer) {
    let mut lines: Vec<Line> = change.explain().into_iter().map(Line::raw).collect();
    lines.push(Line::raw(""));
    lines.push(hint(&[("y", change.yes()), ("n/Esc", "leave as it is")]));
    let inner = popup(area, 60, lines.len() as u16 + 2, &change.question(), buf);
    Paragraph::new(lines).render(inner, buf);
}

fn scale_prompt(prompt: &ScalePrompt, area: Rect, buf: &mut Buffer) -> ratatui::layout::Position {
    let mut lines = vec![Line::raw("Desired capacity of:")];
    for (i, t) in prompt.targets.iter().enumerate() {
        let mark = if i == prompt.selected { "›" } else { " " };
        let style = if i == prompt.selected { Style::new().bold() } else { DIM };
        lines.push(Line::styled(
            format!("{mark} {:<32} desired {:>3}  ({}–{})", t.label(), t.desired, t.min, t.max),
            style,
        ));
    }
    lines.push(Line::raw(""));
    let prompt_text = format!("new desired for {}: ", prompt.target().label());
    let col = (prompt_text.chars().count() + prompt.input.visual_cursor()) as u16;
    lines.push(Line::from(vec![
        Span::raw(prompt_text),
        Span::styled(prompt.input.value().to_owned(), Style::new().bold()),
    ]));
    lines.push(Line::raw(""));
    lines.push(hint(&[("Enter", "next"), ("Tab", "other group"), ("Esc", "cancel")]));
    let input_row = lines.len() as u16 - 3;
    let inner = popup(area, 64, lines.len() as u16 + 2, "set the desired capacity", buf);
    Paragraph::new(lines).render(inner, buf);
    ratatui::layout::Position::new((inner.x + col).min(inner.right().saturating_sub(1)), inner.y + input_row)
}

/// The uploads view: the filter, the listing, or one upload in full.
fn uploads_view(app: &App, area: Rect, buf: &mut Buffer) -> Option<ratatui::layout::Position> {
    let view = &app.uploads;
    // The footer row stays: it says what an action did.
    let area = Rect { height: area.height.saturating_sub(1), ..area };
    let inner = popup(area, area.width, area.height, "uploads view", buf);
    let [top, body, bottom] =
        inner.layout(&Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]));
    let mut cursor = None;
    if view.editing {
        let prompt = "filter: ";
        Paragraph::new(Line::from(vec![Span::styled(prompt, KEY), Span::raw(view.filter.value().to_owned())]))
            .render(top, buf);
        cursor = Some(ratatui::layout::Position::new(
            (top.x + (prompt.len() + view.filter.visual_cursor()) as u16).min(top.right().saturating_sub(1)),
            top.y,
        ));
    } else {
        let shown = if view.filter.value().trim().is_empty() {
            "everything".to_owned()
        } else {
            view.filter.value().to_owned()
        };
        Paragraph::new(Line::from(vec![
            Span::styled("filter: ", DIM),
            Span::raw(shown),
            Span::styled("  (state:, format:, person:, reason: or words)", DIM),
        ]))
        .render(top, buf);
    }
    let keys: Vec<(&str, &str)> = if view.editing {
        vec![("Enter", "apply"), ("Esc", "leave as it was")]
    } else if view.detail.is_some() {
        vec![("r", "retry"), ("g", "reload"), ("Esc", "back")]
    } else {
        vec![("/", "filter"), ("↑↓", "select"), ("Enter", "details"), ("r", "retry"), ("g", "reload"), ("Esc", "close")]
    };
    hint(&keys).render(bottom, buf);
    match &view.detail {
        Some(detail) => upload_detail(app, detail.as_ref(), body, buf),
        None => upload_rows(app, body, buf),
    }
    cursor
}

fn state_style(state: &str) -> Style {
    match state {
        "failed" => BAD,
        "done" => GOOD,
        "processing" => WARN,
        _ => Style::new(),
    }
}

/// What a view fetched, once it came; until then (or when it failed) says
/// so in `area` and answers None.
fn answered<'a, T>(fetched: Option<&'a Result<T, String>>, what: &str, area: Rect, buf: &mut Buffer) -> Option<&'a T> {
    match fetched {
        None => Paragraph::new(Line::styled(format!("reading the {what}…"), DIM)).render(area, buf),
        Some(Err(e)) => {
            Paragraph::new(vec![Line::styled(format!("The {what} could not be read:"), BAD), Line::raw(e.clone())])
                .wrap(Wrap { trim: false })
                .render(area, buf)
        }
        Some(Ok(v)) => return Some(v),
    }
    None
}

fn upload_rows(app: &App, area: Rect, buf: &mut Buffer) {
    let view = &app.uploads;
    let Some(rows) = answered(view.list.rows.as_ref(), "uploads", area, buf) else {
        return;
    };
    if rows.is_empty() {
        Paragraph::new(Line::styled("no upload matches the filter", DIM)).render(area, buf);
        return;
    }
    let mut lines = vec![Line::styled(
        format!("  {:<8} {:<10} {:<5} {:>3} {:>7}  {:<8} reason", "id", "state", "fmt", "try", "age", "person"),
        DIM,
    )];
    let visible = area.height.saturating_sub(1) as usize;
    // Keep the selected row in view.
    let first = view.list.selected.saturating_sub(visible.saturating_sub(1));
    for (i, l) in rows.iter().enumerate().skip(first).take(visible) {
        let u = &l.upload;
        let selected = i == view.list.selected;
        let line = Line::from(vec![
            Span::raw(if selected { "› " } else { "  " }),
            Span::raw(format!("{:<8} ", u.id.get())),
            Span::styled(format!("{:<10} ", u.state.as_str()), state_style(u.state.as_str())),
            Span::raw(format!("{:<5} {:>3} ", u.format.as_str(), u.attempts)),
            Span::styled(format!("{:>7}  ", human_age(app.now - u.created_at)), DIM),
            Span::raw(format!("{:<8} ", truncate(&l.person_hash, 8))),
            Span::styled(u.failure_reason.clone().unwrap_or_default(), WARN),
        ]);
        lines.push(if selected { line.style(Style::new().add_modifier(Modifier::REVERSED)) } else { line });
    }
    Paragraph::new(lines).render(area, buf);
}

fn upload_detail(
    app: &App,
    detail: Option<&Result<flipstack_domain::status::UploadDetail, String>>,
    area: Rect,
    buf: &mut Buffer,
) {
    let Some(d) = answered(detail, "upload", area, buf) else {
        return;
    };
    let u = &d.upload;
    let since = |t: i64| format!("+{:.1}s", (t - u.created_at).max(0) as f64 / 1000.0);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("upload #{} ", u.id), Style::new().bold()),
            Span::styled(u.state.as_str().to_owned(), state_style(u.state.as_str())),
            Span::raw(format!(" · {} {}×{} · {}", u.format.as_str(), u.width, u.height, human_bytes(u.bytes))),
        ]),
        Line::raw(format!("owner {} · attempts {} · claims {}", d.person_hash, u.attempts, u.claims)),
        Line::raw(format!(
            "uploaded {} ago{}",
            human_age(app.now - u.created_at),
            match u.finished_at {
                Some(f) => format!(" · finished {} after upload", since(f)),
                None => " · not finished".to_owned(),
            }
        )),
    ];
    if let Some(owner) = &u.lease_owner {
        lines.push(Line::raw(format!(
            "held by {owner}{}",
            u.lease_until.map(|t| format!(" until {}", since(t))).unwrap_or_default()
        )));
    }
    if let Some(o) = &u.outcome {
        lines.push(Line::raw(format!(
            "flipped {}×{} by {}, {}",
            o.flipped_width,
            o.flipped_height,
            o.method,
            human_bytes(o.flipped_bytes)
        )));
    }
    if let Some(reason) = &u.failure_reason {
        lines.push(Line::from(vec![Span::styled("reason ", DIM), Span::styled(reason.clone(), BAD)]));
    }
    lines.push(Line::styled("events", DIM));
    for e in &d.events {
        lines.push(Line::from(vec![
            Span::styled(format!("  {:>8} ", since(e.at)), DIM),
            Span::styled(format!("{:<9}", e.kind), state_style(e.kind.as_str())),
            Span::raw(e.detail.clone().unwrap_or_default()),
        ]));
    }
    Paragraph::new(lines).wrap(Wrap { trim: false }).render(area, buf);
}

fn logs_view(app: &App, area: Rect, buf: &mut Buffer) {
    let area = Rect { height: area.height.saturating_sub(1), ..area };
    let inner = popup(area, area.width, area.height, "server log · warnings and errors", buf);
    let [body, bottom] = inner.layout(&Layout::vertical([Constraint::Min(0), Constraint::Length(1)]));
    hint(&[("↑↓", "scroll"), ("g", "reload"), ("Esc", "close")]).render(bottom, buf);
    let lines: Vec<Line> = match &app.logs.lines {
        None => vec![Line::styled("reading the server's log…", DIM)],
        Some(Err(e)) => vec![Line::styled("The log could not be read:", BAD), Line::raw(e.clone())],
        Some(Ok(lines)) if lines.is_empty() => {
            vec![Line::styled("no warnings or errors since the server started", GOOD)]
        }
        Some(Ok(lines)) => lines
            .iter()
            .map(|l| {
                Line::from(vec![
                    Span::styled(format!("{:>6} ", human_age(app.now - l.at)), DIM),
                    Span::styled(format!("{:<5} ", l.level), if l.level == "ERROR" { BAD } else { WARN }),
                    Span::styled(format!("{} ", l.target), DIM),
                    Span::raw(l.message.clone()),
                ])
            })
            .collect(),
    };
    // The newest at the bottom; ↑ scrolls back.
    let width = body.width.max(1) as usize;
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(width).max(1)).sum();
    let scroll = (rows as u16).saturating_sub(body.height).saturating_sub(app.logs.back);
    Paragraph::new(lines).wrap(Wrap { trim: false }).scroll((scroll, 0)).render(body, buf);
}

/// The backups view (`B`): the blob store's backups, newest first.
fn backups_view(app: &App, area: Rect, buf: &mut Buffer) {
    let area = Rect { height: area.height.saturating_sub(1), ..area };
    let inner = popup(area, area.width, area.height, "backups · blob store, backups/", buf);
    let [top, body, bottom] =
        inner.layout(&Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]));
    Paragraph::new(Line::styled("Database dumps; the fleet takes them every FLIPSTACK_BACKUP_EVERY.", DIM))
        .render(top, buf);
    let keys: &[(&str, &str)] = if app.options.read_only {
        &[("↑↓", "select"), ("g", "reload"), ("Esc", "close")]
    } else {
        &[("n", "back up now"), ("r", "restore"), ("↑↓", "select"), ("g", "reload"), ("Esc", "close")]
    };
    hint(keys).render(bottom, buf);
    let view = &app.backups;
    let Some(rows) = answered(view.rows.as_ref(), "backups", body, buf) else {
        return;
    };
    if rows.is_empty() {
        let how = if app.options.read_only {
            "set FLIPSTACK_BACKUP_EVERY (e.g. 6h) for a schedule"
        } else {
            "set FLIPSTACK_BACKUP_EVERY (e.g. 6h) for a schedule, or n for one now"
        };
        Paragraph::new(vec![Line::styled("no backups yet", DIM), Line::styled(how, DIM)]).render(body, buf);
        return;
    }
    let mut lines = vec![Line::styled(format!("  {:<32} {:>9} {:>9}", "name (when taken, UTC)", "size", "age"), DIM)];
    let visible = body.height.saturating_sub(1) as usize;
    let first = view.selected.saturating_sub(visible.saturating_sub(1));
    for (i, b) in rows.iter().enumerate().skip(first).take(visible) {
        let selected = i == view.selected;
        let line = Line::from(vec![
            Span::raw(if selected { "› " } else { "  " }),
            Span::raw(format!("{:<32} ", b.name)),
            Span::raw(format!("{:>9} ", human_bytes(b.bytes))),
            Span::styled(format!("{:>9}  ", human_age(app.now - b.at)), DIM),
            Span::styled(if i == 0 { "newest" } else { "" }, GOOD),
        ]);
        lines.push(if selected { line.style(Style::new().add_modifier(Modifier::REVERSED)) } else { line });
    }
    Paragraph::new(lines).render(body, buf);
}

/// Restoring replaces the database: the word is typed out, not a `y`.
fn confirm_restore(name: &str, input: &tui_input::Input, area: Rect, buf: &mut Buffer) -> ratatui::layout::Position {
    let change = Change::Restore(name.to_owned());
    let mut lines: Vec<Line> = change.explain().into_iter().map(|l| Line::styled(l, WARN)).collect();
    lines.push(Line::raw(""));
    let prompt = format!("Type {} to replace the database: ", crate::operate::RESTORE_WORD);
    let col = (prompt.chars().count() + input.visual_cursor()) as u16;
    lines
        .push(Line::from(vec![Span::styled(prompt, BAD), Span::styled(input.value().to_owned(), Style::new().bold())]));
    let input_row = lines.len() as u16 - 1;
    lines.push(hint(&[("Enter", "restore"), ("Esc", "cancel")]));
    let inner = popup(area, 64, lines.len() as u16 + 2, &change.question(), buf);
    Paragraph::new(lines).render(inner, buf);
    ratatui::layout::Position::new((inner.x + col).min(inner.right().saturating_sub(1)), inner.y + input_row)
}

fn hint(keys: &[(&str, &str)]) -> Line<'static> {
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(k.to_string(), KEY));
        spans.push(Span::raw(format!(" {what}   ")));
    }
    Line::from(spans)
}

fn help(app: &App, area: Rect, buf: &mut Buffer) {
    let row =
        |k: &str, what: &str| Line::from(vec![Span::styled(format!("  {k:<6}"), KEY), Span::raw(what.to_owned())]);
    let mut lines = vec![
        row("b", "block or unblock uploads"),
        row("w", "pause or resume the workers (they finish the job in hand)"),
        row("r", "retry every failed upload"),
        row("x", "redrive the dead-letter queue (SQS)"),
        row("s", "set a group's desired capacity (Tab: next group)"),
        row("u", "uploads: / filter, ↑↓, Enter details, r retry one"),
        row("l", "the server's recent warnings and errors"),
        row("B", "backups: n back up now, r restore the selected one"),
        row("d", "dump the database to a file (SQL)"),
        row("p", "provisioning: plan, then up or down (--stack)"),
        row("?", "this help; any key closes it"),
        row("q", "quit (Ctrl-C too)"),
        Line::styled("Every change asks first: y to go ahead.", DIM),
        Line::styled("Filter: state:failed format:png person:3fa1 reason:… or", DIM),
        Line::styled("bare words. A red border and \"stale 12s\": that source", DIM),
        Line::styled("has not answered for that long. Restore a dump with", DIM),
        Line::styled("flipstack db restore FILE.", DIM),
    ];
    if app.options.read_only {
        lines.push(Line::styled("Read-only: b w r x s d, backups and provisioning up/down are off.", WARN));
    }
    let inner = popup(area, 72, lines.len() as u16 + 2, "help", buf);
    Paragraph::new(lines).render(inner, buf);
}

fn confirm_block(block: bool, area: Rect, buf: &mut Buffer) {
    let (title, lines) = if block {
        (
            "block uploads?",
            vec![
                Line::raw("Every server will refuse new uploads (503) within a"),
                Line::raw("second, and the form will say uploads are paused."),
                Line::raw("Galleries and jobs already queued keep working."),
            ],
        )
    } else {
        ("unblock uploads?", vec![Line::raw("Every server will take new uploads again within a"), Line::raw("second.")])
    };
    let inner = popup(area, 60, lines.len() as u16 + 4, title, buf);
    let mut lines = lines;
    lines.push(Line::raw(""));
    lines.push(hint(&[("y", if block { "block" } else { "unblock" }), ("n/Esc", "leave as it is")]));
    Paragraph::new(lines).render(inner, buf);
}

fn dump_view(app: &App, d: &DumpState, area: Rect, buf: &mut Buffer) {
    let inner = popup(area, 72, 8, "database dump", buf);
    let path = d.path.display().to_string();
    let lines = match &d.outcome {
        None => vec![
            Line::raw(format!("Writing {path}")),
            Line::raw(""),
            Line::from(vec![
                Span::styled(format!("{} written", human_bytes(d.bytes)), GOOD),
                Span::styled(format!("  after {}", human_age(app.now - d.started)), DIM),
            ]),
            Line::raw(""),
            hint(&[("c", "cancel"), ("Esc", "hide (it goes on)")]),
        ],
        Some(Ok(w)) => vec![
            Line::styled(format!("Dump written: {}", w.path.display()), GOOD),
            Line::raw(format!("{} ({} bytes)", human_bytes(w.bytes), w.bytes)),
            Line::styled(format!("restore with: flipstack db restore {}", w.path.display()), DIM),
            Line::raw(""),
            hint(&[("Esc", "close")]),
        ],
        Some(Err(e)) => vec![
            Line::styled("The dump failed; nothing was kept.", BAD),
            Line::raw(e.clone()),
            Line::raw(""),
            hint(&[("Esc", "close"), ("d", "try again after closing")]),
        ],
    };
    Paragraph::new(lines).wrap(Wrap { trim: false }).render(inner, buf);
}

fn provision_view(app: &App, area: Rect, buf: &mut Buffer) -> Option<ratatui::layout::Position> {
    let stack = app.options.stack.as_deref().unwrap_or("");
    let p = &app.provision;
    let w = area.width.saturating_sub(4).max(20);
    let h = area.height.saturating_sub(2).max(8);
    let inner = popup(area, w, h, &format!("provision · stack {stack}"), buf);
    let (bottom_lines, input_at) = provision_prompt(app, stack);
    let [body, bottom] =
        inner.layout(&Layout::vertical([Constraint::Min(0), Constraint::Length(bottom_lines.len() as u16)]));
    let mut lines: Vec<Line> = Vec::new();
    if let Some(run) = &p.run {
        lines.push(Line::styled(format!("provision {}", run.op.name()), Style::new().bold()));
        if run.steps.is_empty() && run.running() {
            lines.push(Line::styled("starting…", DIM));
        }
        for (name, state) in &run.steps {
            let (mark, style, note) = match state {
                StepState::Running(note) => ("…", WARN, note.clone()),
                StepState::Done(note) => ("✓", GOOD, note.clone()),
                StepState::Warning(note) => ("!", WARN, note.clone()),
                StepState::Failed(e) => ("✗", BAD, e.clone()),
            };
            lines.push(Line::from(vec![
                Span::styled(format!(" {mark} "), style),
                Span::raw(name.clone()),
                Span::styled(if note.is_empty() { String::new() } else { format!("  {note}") }, DIM),
            ]));
        }
        match &run.outcome {
            None => {}
            Some(Ok(summary)) => {
                let failed = run.steps.iter().filter(|(_, s)| matches!(s, StepState::Failed(_))).count();
                if failed == 0 {
                    lines.push(Line::styled(format!("done: provision {} finished: {summary}", run.op.name()), GOOD))
                } else {
                    lines.push(Line::styled(
                        format!(
                            "provision {} finished: {summary}; {failed} step(s) failed (✗): run it again once fixed",
                            run.op.name()
                        ),
                        WARN,
                    ))
                }
            }
            Some(Err(e)) => lines.push(Line::styled(format!("failed: {e}"), BAD)),
        }
    } else {
        match &p.plan {
            None => lines.push(Line::styled("making the plan…", DIM)),
            Some(Err(e)) => {
                lines.push(Line::styled("The plan could not be made:", BAD));
                lines.push(Line::raw(e.clone()));
            }
            Some(Ok(plan)) => {
                // The plan ends with its summary ("stack … : 3 to create, …"): it heads the view.
                let (summary, changes) = match plan.split_last() {
                    Some((last, rest)) if last.starts_with("stack ") => (last.clone(), rest),
                    _ => (format!("plan for stack {stack}"), plan.as_slice()),
                };
                lines.push(Line::styled(format!("{summary} (what `up` would do)"), Style::new().bold()));
                lines.extend(changes.iter().map(|l| Line::raw(l.clone())));
            }
        }
    }
    // Long lines wrap (an error must be read whole). During a run the newest
    // steps stay in view; the plan scrolls by hand.
    let width = body.width.max(1) as usize;
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(width).max(1)).sum();
    let scroll = if p.run.is_some() { (rows as u16).saturating_sub(body.height) } else { p.scroll };
    Paragraph::new(lines).wrap(Wrap { trim: false }).scroll((scroll, 0)).render(body, buf);

    Paragraph::new(bottom_lines).render(bottom, buf);
    // The typed name's cursor: on its line, after the prompt.
    input_at.map(|(row, col)| {
        ratatui::layout::Position::new((inner.x + col).min(inner.right().saturating_sub(1)), bottom.y + row)
    })
}

/// The provisioning view's last lines: its keys, or the confirmation asked;
/// with where the cursor goes (line, column) while a name is typed.
fn provision_prompt(app: &App, stack: &str) -> (Vec<Line<'static>>, Option<(u16, u16)>) {
    let p = &app.provision;
    match &p.confirm {
        Confirm::Up => (
            vec![
                Line::styled(format!("Create or correct stack {stack} on AWS as planned?"), WARN),
                hint(&[("y", "yes, up"), ("n/Esc", "no")]),
            ],
            None,
        ),
        Confirm::Down(input) => {
            let prompt = "Type the stack's name to delete it: ".to_owned();
            let col = (prompt.chars().count() + input.visual_cursor()) as u16;
            (
                vec![
                    Line::styled(format!("Down deletes everything tagged with stack {stack}: instances, load"), BAD),
                    Line::styled("balancer, database (final snapshot kept), cache, queues, bucket, pictures.", BAD),
                    Line::from(vec![
                        Span::styled(prompt, BAD),
                        Span::styled(input.value().to_owned(), Style::new().bold()),
                    ]),
                    hint(&[("Enter", "delete"), ("Esc", "cancel")]),
                ],
                Some((2, col)),
            )
        }
        Confirm::None => {
            let mut keys = vec![("↑↓", "scroll"), ("Esc", "close")];
            if !p.running() {
                keys.insert(0, ("r", "plan again"));
                if !app.options.read_only {
                    keys.insert(0, ("D", "down"));
                    keys.insert(0, ("u", "up"));
                }
            }
            let mut l = vec![Line::raw(""), hint(&keys)];
            if app.options.read_only {
                l.push(Line::styled("read-only: up and down are off", WARN));
            } else if p.running() {
                l.push(Line::styled(
                    format!(
                        "running {}: Esc hides this view, the run goes on",
                        p.run.as_ref().map(|r| r.op).unwrap_or(ProvisionOp::Up).name()
                    ),
                    WARN,
                ));
            }
            (l, None)
        }
    }
}
