//! Snapshots of every panel and overlay, drawn from fixed data with
//! ratatui's TestBackend. A changed drawing fails here; review it and, if it
//! is right, accept it (`cargo insta review`, or INSTA_UPDATE=always).

mod common;

use common::{T0, app};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use flipstack_console::app::{App, Msg};
use flipstack_console::client::DumpWritten;
use flipstack_console::provision::{ProvisionMsg, StepState};
use flipstack_console::ui::{self, Panel};
use insta::assert_snapshot;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;

fn panel(app: &App, panel: Panel, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render_panel(panel, app, Rect::new(0, 0, w, h), f.buffer_mut())).unwrap();
    t.backend().to_string()
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    t.backend().to_string()
}

fn key(app: &mut App, c: char) {
    app.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

#[test]
fn fleet_local_pool() {
    assert_snapshot!(panel(&app(None, false), Panel::Fleet, 40, 7));
}

#[test]
fn fleet_aws_groups() {
    assert_snapshot!(panel(&app(Some("demo"), false), Panel::Fleet, 40, 7));
}

#[test]
fn fleet_aws_not_answering() {
    let mut a = app(Some("demo"), false);
    a.tick(T0 + 60_000);
    a.on_msg(Msg::Fleet(Err("cannot reach AWS: connection refused".into())));
    assert_snapshot!(panel(&a, Panel::Fleet, 40, 7));
}

#[test]
fn queue() {
    assert_snapshot!(panel(&app(None, false), Panel::Queue, 40, 7));
}

#[test]
fn cache() {
    assert_snapshot!(panel(&app(None, false), Panel::Cache, 40, 7));
}

#[test]
fn reads() {
    assert_snapshot!(panel(&app(None, false), Panel::Reads, 40, 9));
}

#[test]
fn reads_with_the_event_stream_down() {
    let mut a = app(None, false);
    a.tick(T0 + 41_000);
    a.on_msg(Msg::EventsDown("the server closed the event stream".into()));
    assert_snapshot!(panel(&a, Panel::Reads, 40, 9));
}

#[test]
fn uploads() {
    assert_snapshot!(panel(&app(None, false), Panel::Uploads, 80, 8));
}

#[test]
fn uploads_wide_with_recent_jobs() {
    assert_snapshot!(panel(&app(None, false), Panel::Uploads, 130, 8));
}

#[test]
fn uploads_blocked_with_a_problem() {
    let mut a = app(None, false);
    let mut s = common::status_at(29);
    s.blocked = true;
    s.problems = vec!["queue: SQS did not answer".into()];
    a.on_msg(Msg::Status(Ok(Box::new(s))));
    assert_snapshot!(panel(&a, Panel::Uploads, 80, 8));
}

#[test]
fn whole_screen_80x24() {
    assert_snapshot!(screen(&app(None, false), 80, 24));
}

#[test]
fn whole_screen_with_a_stack_140x40() {
    assert_snapshot!(screen(&app(Some("demo"), false), 140, 40));
}

#[test]
fn whole_screen_stale_after_the_server_stopped_answering() {
    let mut a = app(None, false);
    a.tick(T0 + 47_000);
    a.on_msg(Msg::Status(Err("cannot connect: Connection refused (os error 111)".into())));
    a.on_msg(Msg::EventsDown("cannot connect: Connection refused (os error 111)".into()));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn whole_screen_before_any_answer() {
    let mut a = App::new(common::options(None, false), T0);
    a.on_msg(Msg::Status(Err(
        "the server refused the admin token (401): check --token, FLIPSTACK_ADMIN_TOKEN or <data>/admin-token".into(),
    )));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn read_only_footer_and_header() {
    assert_snapshot!(screen(&app(None, true), 80, 24));
}

#[test]
fn help_overlay() {
    let mut a = app(None, false);
    key(&mut a, '?');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_block_overlay() {
    let mut a = app(None, false);
    key(&mut a, 'b');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn dump_overlays_prompt_progress_and_done() {
    let mut a = app(None, false);
    key(&mut a, 'd');
    assert_snapshot!("dump_prompt", screen(&a, 80, 24));
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    a.tick(T0 + 32_000);
    a.on_msg(Msg::DumpProgress(3 * 1024 * 1024 + 300_000));
    assert_snapshot!("dump_progress", screen(&a, 80, 24));
    a.on_msg(Msg::DumpDone(Ok(DumpWritten { path: "/var/backups/flipstack-1700000029.sql".into(), bytes: 4_404_019 })));
    assert_snapshot!("dump_done", screen(&a, 80, 24));
}

#[test]
fn provisioning_plan_confirm_down_and_progress() {
    let mut a = app(Some("demo"), false);
    key(&mut a, 'p');
    // As flipstack-provision's Plan prints itself.
    a.on_msg(Msg::Provision(ProvisionMsg::Plan(Ok(vec![
        "+ create security group     flipstack-demo-lb".into(),
        "           allow tcp 80 from 0.0.0.0/0".into(),
        "~ change queue              flipstack-demo-jobs".into(),
        "           - visibility timeout 30 s → 300 s".into(),
        "= keep   bucket             flipstack-demo-123456789012-us-east-1".into(),
        "stack demo in us-east-1: 1 to create, 1 to change, 1 unchanged".into(),
    ]))));
    assert_snapshot!("provision_plan", screen(&a, 80, 24));
    key(&mut a, 'D');
    for c in "dem".chars() {
        key(&mut a, c);
    }
    assert_snapshot!("provision_confirm_down", screen(&a, 80, 24));
    a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    key(&mut a, 'u');
    key(&mut a, 'y');
    for (i, (name, state)) in [
        ("security group flipstack-demo-web", StepState::Done("created".into())),
        ("queue flipstack-demo-jobs", StepState::Done("exists".into())),
        ("database flipstack-demo-db", StepState::Running("waiting for it to be available (40 s)".into())),
        (
            "cache cluster flipstack-demo-cache",
            StepState::Warning("the cluster reported no endpoint, so the configuration names none".into()),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        a.on_msg(Msg::Provision(ProvisionMsg::Step { index: i, name: name.into(), state }));
    }
    assert_snapshot!("provision_running", screen(&a, 80, 24));
    a.on_msg(Msg::Provision(ProvisionMsg::Step {
        index: 4,
        name: "cache subnet group flipstack-demo-cache".into(),
        state: StepState::Failed("deleting the cache subnet group: it is still in use by cluster flipstack-demo-cache (CacheSubnetGroupInUse)".into()),
    }));
    a.on_msg(Msg::Provision(ProvisionMsg::Finished(Ok("3 created, 0 changed, 1 unchanged".into()))));
    assert_snapshot!("provision_finished_with_a_failed_step", screen(&a, 80, 24));
}

fn uploads_app() -> App {
    let mut a = app(None, false);
    key(&mut a, 'u');
    a.on_msg(Msg::Uploads(Ok(common::listing())));
    a
}

#[test]
fn uploads_view_80x24() {
    let mut a = uploads_app();
    a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn uploads_view_filter_typed() {
    let mut a = uploads_app();
    key(&mut a, '/');
    for c in "failed person:3fa1".chars() {
        key(&mut a, c);
    }
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn upload_detail_80x24() {
    let mut a = uploads_app();
    a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    a.on_msg(Msg::UploadDetail(Ok(common::failed_detail())));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn log_view_80x24() {
    let mut a = app(None, false);
    key(&mut a, 'l');
    a.on_msg(Msg::Logs(Ok(common::log_lines())));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_retry_all() {
    let mut a = app(None, false);
    key(&mut a, 'r');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_redrive() {
    let mut a = app(None, false);
    key(&mut a, 'x');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_pause() {
    let mut a = app(None, false);
    key(&mut a, 'w');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn scale_prompt_with_a_stack() {
    let mut a = app(Some("demo"), false);
    key(&mut a, 's');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn help_lists_every_key_at_80x24() {
    let mut a = app(None, false);
    key(&mut a, '?');
    let s = screen(&a, 80, 24);
    for k in ["b ", "w ", "r ", "x ", "s ", "u ", "l ", "B ", "d ", "p ", "q "] {
        assert!(s.lines().any(|l| l.contains(&format!("│  {k}"))), "help lists {k:?}:\n{s}");
    }
    assert_snapshot!(s);
}

fn backups_app(read_only: bool) -> App {
    let mut a = app(None, read_only);
    key(&mut a, 'B');
    a.on_msg(Msg::Backups(Ok(common::backup_list())));
    a
}

#[test]
fn backups_view_80x24() {
    let mut a = backups_app(false);
    a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn backups_view_empty() {
    let mut a = app(None, false);
    key(&mut a, 'B');
    a.on_msg(Msg::Backups(Ok(vec![])));
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_back_up_now() {
    let mut a = backups_app(false);
    key(&mut a, 'n');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn confirm_restore_typed() {
    let mut a = backups_app(false);
    a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    key(&mut a, 'r');
    for c in "rest".chars() {
        key(&mut a, c);
    }
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn backups_read_only_refusal() {
    let mut a = backups_app(true);
    key(&mut a, 'r');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn read_only_refusal_in_the_footer() {
    let mut a = app(None, true);
    key(&mut a, 'x');
    assert_snapshot!(screen(&a, 80, 24));
}

#[test]
fn no_color_draws_in_the_terminals_own_colours() {
    let mut colored = app(None, false);
    colored.options.no_color = false;
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| ui::draw(f, &colored)).unwrap();
    let reset = ratatui::style::Color::Reset;
    assert!(
        t.backend().buffer().content.iter().any(|c| c.fg != reset),
        "the console has colours by default (so this test can fail)"
    );
    let mut plain = app(None, false);
    plain.options.no_color = true;
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| ui::draw(f, &plain)).unwrap();
    let buf = t.backend().buffer();
    assert!(buf.content.iter().all(|c| c.fg == reset && c.bg == reset), "NO_COLOR: no colour anywhere");
    assert!(
        buf.content.iter().any(|c| c.modifier.contains(ratatui::style::Modifier::BOLD)),
        "bold still marks what stands out"
    );
    assert_eq!(screen(&plain, 80, 24), screen(&colored, 80, 24), "the same text");
}
