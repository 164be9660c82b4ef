//! The console's key handling: confirmations before anything changes, and a
//! read-only console that changes nothing.

mod common;

use common::{T0, app};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use flipstack_console::app::{Action, App, Level, Mode, Msg};
use flipstack_console::client::DumpWritten;
use flipstack_console::provision::{Confirm, ProvisionMsg, ProvisionOp};

fn press(app: &mut App, code: KeyCode) -> Option<Action> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn chr(app: &mut App, c: char) -> Option<Action> {
    press(app, KeyCode::Char(c))
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        assert_eq!(chr(app, c), None, "typing {c:?} must not act");
    }
}

fn flash(app: &App) -> (Level, String) {
    let f = app.flash.as_ref().expect("a message in the footer");
    (f.level, f.text.clone())
}

#[test]
fn block_asks_first_and_only_yes_acts() {
    let mut a = app(None, false);
    assert_eq!(a.blocked(), Some(false));
    assert_eq!(chr(&mut a, 'b'), None);
    assert!(matches!(a.mode, Mode::ConfirmBlock(true)));
    // Keys other than y and n do nothing while asking.
    assert_eq!(chr(&mut a, 'b'), None);
    assert_eq!(press(&mut a, KeyCode::Enter), None);
    assert!(matches!(a.mode, Mode::ConfirmBlock(true)));
    assert_eq!(chr(&mut a, 'n'), None);
    assert!(matches!(a.mode, Mode::Normal));

    chr(&mut a, 'b');
    assert_eq!(press(&mut a, KeyCode::Esc), None);
    assert!(matches!(a.mode, Mode::Normal));

    chr(&mut a, 'b');
    assert_eq!(chr(&mut a, 'y'), Some(Action::SetBlocked(true)));
    assert!(matches!(a.mode, Mode::Normal));
    // While the request is on its way, b does not ask again.
    assert_eq!(chr(&mut a, 'b'), None);
    assert!(matches!(a.mode, Mode::Normal));

    a.on_msg(Msg::BlockDone(Ok(true)));
    assert_eq!(a.blocked(), Some(true));
    assert_eq!(flash(&a).0, Level::Info);
    // Now b offers to unblock.
    chr(&mut a, 'b');
    assert!(matches!(a.mode, Mode::ConfirmBlock(false)));
    assert_eq!(chr(&mut a, 'Y'), Some(Action::SetBlocked(false)));
}

#[test]
fn a_failed_block_says_so_and_keeps_the_state() {
    let mut a = app(None, false);
    chr(&mut a, 'b');
    chr(&mut a, 'y');
    a.on_msg(Msg::BlockDone(Err("cannot connect: Connection refused".into())));
    assert_eq!(a.blocked(), Some(false));
    let (level, text) = flash(&a);
    assert_eq!(level, Level::Error);
    assert!(text.contains("Connection refused"), "{text}");
}

#[test]
fn block_waits_for_the_servers_state() {
    let mut a = App::new(common::options(None, false), T0);
    assert_eq!(chr(&mut a, 'b'), None);
    assert!(matches!(a.mode, Mode::Normal));
    assert_eq!(flash(&a).0, Level::Warn);
}

#[test]
fn read_only_refuses_every_action() {
    let mut a = app(Some("demo"), true);
    assert_eq!(chr(&mut a, 'b'), None);
    assert!(matches!(a.mode, Mode::Normal));
    assert!(flash(&a).1.contains("read-only"));
    assert_eq!(chr(&mut a, 'd'), None);
    assert!(matches!(a.mode, Mode::Normal));
    assert!(a.dump.is_none());

    // The provisioning view opens (a plan changes nothing) but up and down do not.
    assert_eq!(chr(&mut a, 'p'), Some(Action::Plan));
    a.on_msg(Msg::Provision(ProvisionMsg::Plan(Ok(vec!["+ create queue".into()]))));
    assert_eq!(chr(&mut a, 'u'), None);
    assert!(matches!(a.provision.confirm, Confirm::None));
    assert!(flash(&a).1.contains("read-only"));
    assert_eq!(chr(&mut a, 'D'), None);
    assert!(matches!(a.provision.confirm, Confirm::None));
    assert!(a.provision.run.is_none());
    assert_eq!(chr(&mut a, 'y'), None);
    press(&mut a, KeyCode::Esc);
    assert!(matches!(a.mode, Mode::Normal));
    assert_eq!(chr(&mut a, 'q'), Some(Action::Quit));
}

#[test]
fn dump_asks_for_a_file_then_runs_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = app(None, false);
    a.options.dump_dir = dir.path().to_owned();
    assert_eq!(chr(&mut a, 'd'), None);
    let Mode::DumpPath(input) = &a.mode else { panic!("expected the file prompt, got {:?}", a.mode) };
    let proposed = dir.path().join(format!("flipstack-{}.sql", a.now / 1000));
    assert_eq!(input.value(), proposed.display().to_string());
    // Edit the name: drop ".sql", type ".backup.sql".
    for _ in 0..4 {
        press(&mut a, KeyCode::Backspace);
    }
    typed(&mut a, ".backup.sql");
    let wanted = dir.path().join(format!("flipstack-{}.backup.sql", a.now / 1000));
    assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::Dump(wanted.clone())));
    assert!(matches!(a.mode, Mode::Dump));
    assert!(a.dump.as_ref().unwrap().running());
    // Hiding the view leaves it running; d shows it again rather than a second dump.
    press(&mut a, KeyCode::Esc);
    assert!(matches!(a.mode, Mode::Normal));
    assert_eq!(chr(&mut a, 'd'), None);
    assert!(matches!(a.mode, Mode::Dump));
    a.on_msg(Msg::DumpProgress(1234));
    assert_eq!(a.dump.as_ref().unwrap().bytes, 1234);
    a.on_msg(Msg::DumpDone(Ok(DumpWritten { path: wanted.clone(), bytes: 5000 })));
    assert!(!a.dump.as_ref().unwrap().running());
    assert!(flash(&a).1.contains("5000") || flash(&a).1.contains("4.9 KiB"));
    press(&mut a, KeyCode::Esc);
    assert!(a.dump.is_none());
}

#[test]
fn dump_refuses_an_existing_file_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken.sql");
    std::fs::write(&taken, "x").unwrap();
    let mut a = app(None, false);
    a.options.dump_dir = dir.path().to_owned();
    chr(&mut a, 'd');
    // Clear the proposal and type the taken name.
    for _ in 0..200 {
        press(&mut a, KeyCode::Backspace);
    }
    typed(&mut a, &taken.display().to_string());
    assert_eq!(press(&mut a, KeyCode::Enter), None);
    assert!(flash(&a).1.contains("exists"));
    assert!(matches!(a.mode, Mode::DumpPath(_)));
    press(&mut a, KeyCode::Backspace);
    press(&mut a, KeyCode::Backspace);
    assert!(matches!(press(&mut a, KeyCode::Enter), Some(Action::Dump(_))));
    assert_eq!(chr(&mut a, 'c'), Some(Action::CancelDump));
    assert!(a.dump.is_none());
    assert!(matches!(a.mode, Mode::Normal));
}

#[test]
fn provisioning_needs_a_stack() {
    let mut a = app(None, false);
    assert_eq!(chr(&mut a, 'p'), None);
    assert!(matches!(a.mode, Mode::Normal));
    assert!(flash(&a).1.contains("--stack"));
}

#[test]
fn provisioning_up_asks_yes_and_down_asks_for_the_name() {
    let mut a = app(Some("demo"), false);
    assert_eq!(chr(&mut a, 'p'), Some(Action::Plan));
    // Up before the plan arrived is refused.
    assert_eq!(chr(&mut a, 'u'), None);
    assert!(matches!(a.provision.confirm, Confirm::None));
    a.on_msg(Msg::Provision(ProvisionMsg::Plan(Ok(vec!["+ create queue".into()]))));

    chr(&mut a, 'u');
    assert!(matches!(a.provision.confirm, Confirm::Up));
    assert_eq!(chr(&mut a, 'n'), None);
    assert!(matches!(a.provision.confirm, Confirm::None));

    // Down: a wrong name, or y, never deletes.
    chr(&mut a, 'D');
    assert!(matches!(a.provision.confirm, Confirm::Down(_)));
    assert_eq!(chr(&mut a, 'y'), None);
    assert_eq!(press(&mut a, KeyCode::Enter), None);
    assert!(flash(&a).1.contains("type demo exactly"));
    for _ in 0..3 {
        press(&mut a, KeyCode::Backspace);
    }
    typed(&mut a, "dem");
    assert_eq!(press(&mut a, KeyCode::Enter), None);
    typed(&mut a, "o");
    assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::Provision(ProvisionOp::Down)));
    assert!(a.provision.running());

    // While it runs: no second run, and q asks twice.
    assert_eq!(chr(&mut a, 'u'), None);
    assert_eq!(chr(&mut a, 'D'), None);
    press(&mut a, KeyCode::Esc);
    assert!(matches!(a.mode, Mode::Normal));
    assert_eq!(chr(&mut a, 'q'), None);
    assert!(!a.quit);
    assert_eq!(chr(&mut a, 'q'), Some(Action::Quit));
    assert!(a.quit);
}

#[test]
fn provisioning_progress_and_outcome() {
    let mut a = app(Some("demo"), false);
    chr(&mut a, 'p');
    a.on_msg(Msg::Provision(ProvisionMsg::Plan(Ok(vec!["+ create queue".into()]))));
    chr(&mut a, 'u');
    assert_eq!(chr(&mut a, 'y'), Some(Action::Provision(ProvisionOp::Up)));
    a.on_msg(Msg::Provision(ProvisionMsg::Step {
        index: 1,
        name: "queue q".into(),
        state: flipstack_console::provision::StepState::Running("creating".into()),
    }));
    let run = a.provision.run.as_ref().unwrap();
    assert_eq!(run.steps.len(), 2);
    a.on_msg(Msg::Provision(ProvisionMsg::Finished(Err("boom".into()))));
    // The step under way is marked as where it stopped.
    assert!(matches!(
        &a.provision.run.as_ref().unwrap().steps[1].1,
        flipstack_console::provision::StepState::Failed(_)
    ));
    assert!(!a.provision.running());
    let (level, text) = flash(&a);
    assert_eq!(level, Level::Error);
    assert!(text.contains("provision up failed: boom"), "{text}");
    // Reopening shows the outcome; r plans again.
    press(&mut a, KeyCode::Esc);
    assert_eq!(chr(&mut a, 'p'), None);
    assert_eq!(chr(&mut a, 'r'), Some(Action::Plan));
    assert!(a.provision.run.is_none());
}

#[test]
fn help_opens_and_any_key_closes_it_and_quit_quits() {
    let mut a = app(None, false);
    chr(&mut a, '?');
    assert!(matches!(a.mode, Mode::Help));
    // q in help closes help; it does not quit.
    assert_eq!(chr(&mut a, 'q'), None);
    assert!(matches!(a.mode, Mode::Normal));
    assert!(!a.quit);
    assert_eq!(a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
    assert!(a.quit);
}

#[test]
fn blocked_event_shows_at_once() {
    let mut a = app(None, false);
    a.on_msg(Msg::Event(flipstack_console::model::AdminEvent::Blocked { at: T0, blocked: true }));
    assert_eq!(a.blocked(), Some(true));
}
