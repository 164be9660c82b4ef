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

/// Each operator change, from its key to its action: it asks first, `n`
/// leaves everything as it is, `y` acts once.
#[test]
fn every_change_asks_first_and_only_yes_acts() {
    use flipstack_console::operate::Change;
    let cases: [(char, Change); 3] = [('r', Change::RetryAll), ('x', Change::Redrive), ('w', Change::Pause(true))];
    for (k, change) in cases {
        let mut a = app(None, false);
        assert_eq!(chr(&mut a, k), None);
        assert!(matches!(&a.mode, Mode::Confirm(c) if *c == change), "{k}: {:?}", a.mode);
        // Keys other than y and n do nothing while asking.
        assert_eq!(press(&mut a, KeyCode::Enter), None);
        assert_eq!(chr(&mut a, k), None);
        assert_eq!(chr(&mut a, 'n'), None);
        assert!(matches!(a.mode, Mode::Normal));
        assert_eq!(flash(&a).1, "nothing changed");
        chr(&mut a, k);
        assert_eq!(chr(&mut a, 'y'), Some(Action::Change(change.clone())), "{k}");
        assert!(matches!(a.mode, Mode::Normal));
        // One change at a time.
        assert_eq!(chr(&mut a, k), None);
        assert!(matches!(a.mode, Mode::Normal));
        assert!(flash(&a).1.contains("still on its way"));
        a.on_msg(Msg::ChangeDone(change, Ok(3)));
        assert_eq!(flash(&a).0, Level::Info);
        assert!(a.change_pending.is_none());
    }
}

#[test]
fn pause_offers_resume_once_paused_and_the_header_says_so() {
    let mut a = app(None, false);
    let mut s = common::status_at(30);
    s.workers_paused = true;
    a.on_msg(Msg::Status(Ok(Box::new(s))));
    assert_eq!(a.paused(), Some(true));
    chr(&mut a, 'w');
    assert!(matches!(&a.mode, Mode::Confirm(flipstack_console::operate::Change::Pause(false))));
}

#[test]
fn scale_takes_a_count_within_the_groups_bounds() {
    use flipstack_console::operate::Change;
    // The local pool: 1 to 4 workers, 3 desired.
    let mut a = app(None, false);
    chr(&mut a, 's');
    let Mode::Scale(p) = &a.mode else { panic!("{:?}", a.mode) };
    assert_eq!(p.input.value(), "3", "starts from the desired count");
    press(&mut a, KeyCode::Backspace);
    typed(&mut a, "9");
    assert_eq!(press(&mut a, KeyCode::Enter), None);
    assert!(matches!(a.mode, Mode::Scale(_)), "9 is past the pool's max: still asking");
    assert!(flash(&a).1.contains("takes 1 to 4, not 9"), "{}", flash(&a).1);
    press(&mut a, KeyCode::Backspace);
    typed(&mut a, "2");
    press(&mut a, KeyCode::Enter);
    let want = Change::Scale { group: None, desired: 2 };
    assert!(matches!(&a.mode, Mode::Confirm(c) if *c == want));
    assert_eq!(chr(&mut a, 'y'), Some(Action::Change(want)));

    // With a stack: the AWS groups, Tab to the next.
    let mut a = app(Some("demo"), false);
    chr(&mut a, 's');
    press(&mut a, KeyCode::Tab);
    let Mode::Scale(p) = &a.mode else { panic!() };
    assert_eq!(p.target().label(), "flipstack-demo-worker");
    press(&mut a, KeyCode::Backspace);
    typed(&mut a, "5");
    press(&mut a, KeyCode::Enter);
    assert_eq!(
        chr(&mut a, 'y'),
        Some(Action::Change(Change::Scale { group: Some("flipstack-demo-worker".into()), desired: 5 }))
    );
    // Esc leaves it as it is.
    let mut a = app(None, false);
    chr(&mut a, 's');
    assert_eq!(press(&mut a, KeyCode::Esc), None);
    assert!(matches!(a.mode, Mode::Normal));
}

#[test]
fn the_uploads_view_filters_drills_down_and_retries_one() {
    use flipstack_console::model::UploadQuery;
    use flipstack_console::operate::Change;
    let mut a = app(None, false);
    assert_eq!(chr(&mut a, 'u'), Some(Action::LoadUploads(UploadQuery::default())));
    a.on_msg(Msg::Uploads(Ok(common::listing())));
    // The filter: typing is text, not keys.
    assert_eq!(chr(&mut a, '/'), None);
    typed(&mut a, "failed png person:3fa1 decoded");
    let want =
        UploadQuery { state: "failed".into(), format: "png".into(), person: "3fa1".into(), reason: "decoded".into() };
    assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::LoadUploads(want.clone())));
    a.on_msg(Msg::Uploads(Ok(common::listing())));
    // Down to the failed one; a retry of a done one is refused.
    press(&mut a, KeyCode::Down);
    press(&mut a, KeyCode::Down);
    assert_eq!(a.uploads.selected_upload().unwrap().upload.id.get(), 1302);
    assert_eq!(chr(&mut a, 'r'), None);
    assert!(flash(&a).1.contains("only failed uploads are retried"));
    press(&mut a, KeyCode::Up);
    assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::LoadUpload(1303)));
    a.on_msg(Msg::UploadDetail(Ok(common::failed_detail())));
    assert_eq!(chr(&mut a, 'r'), None);
    assert!(matches!(&a.mode, Mode::Confirm(Change::RetryOne(1303))));
    assert_eq!(chr(&mut a, 'y'), Some(Action::Change(Change::RetryOne(1303))));
    assert!(matches!(a.mode, Mode::Uploads), "back in the view");
    a.on_msg(Msg::ChangeDone(Change::RetryOne(1303), Ok(1)));
    assert_eq!(
        std::mem::take(&mut a.follow_up),
        vec![Action::LoadUploads(want), Action::LoadUpload(1303)],
        "the view reloads what changed"
    );
    // Esc: the list, then the main screen.
    press(&mut a, KeyCode::Esc);
    assert!(a.uploads.detail.is_none() && matches!(a.mode, Mode::Uploads));
    press(&mut a, KeyCode::Esc);
    assert!(matches!(a.mode, Mode::Normal));
}

#[test]
fn the_log_view_loads_and_reloads() {
    let mut a = app(None, true);
    assert_eq!(chr(&mut a, 'l'), Some(Action::LoadLogs), "reading the log is not a change");
    a.on_msg(Msg::Logs(Ok(common::log_lines())));
    press(&mut a, KeyCode::Up);
    assert_eq!(a.logs.back, 1);
    assert_eq!(chr(&mut a, 'g'), Some(Action::LoadLogs));
    assert_eq!(a.logs.back, 0);
    press(&mut a, KeyCode::Esc);
    assert!(matches!(a.mode, Mode::Normal));
}

#[test]
fn read_only_refuses_every_operator_change() {
    let mut a = app(Some("demo"), true);
    for k in ['r', 'x', 'w', 's'] {
        assert_eq!(chr(&mut a, k), None, "{k}");
        assert!(matches!(a.mode, Mode::Normal), "{k}: {:?}", a.mode);
        let (level, text) = flash(&a);
        assert_eq!(level, Level::Warn);
        assert!(text.contains("read-only"), "{k}: {text}");
    }
    // In the uploads view, r on a failed upload is refused too.
    assert!(chr(&mut a, 'u').is_some());
    a.on_msg(Msg::Uploads(Ok(common::listing())));
    press(&mut a, KeyCode::Down);
    a.flash = None;
    assert_eq!(chr(&mut a, 'r'), None);
    assert!(matches!(a.mode, Mode::Uploads));
    assert!(flash(&a).1.contains("read-only"));
    assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::LoadUpload(1303)), "looking is allowed");
    a.on_msg(Msg::UploadDetail(Ok(common::failed_detail())));
    a.flash = None;
    assert_eq!(chr(&mut a, 'r'), None);
    assert!(flash(&a).1.contains("read-only"));
}

/// The backups view: looking is allowed anywhere; `n` asks and `y` backs up;
/// `r` asks for the word typed out; a read-only console refuses both.
#[test]
fn backups_ask_first_restore_wants_the_word_and_read_only_refuses() {
    use flipstack_console::operate::{Change, RESTORE_WORD};
    let list = common::backup_list();
    for read_only in [true, false] {
        let mut a = app(None, read_only);
        assert_eq!(chr(&mut a, 'B'), Some(Action::LoadBackups), "the view opens (read-only {read_only})");
        a.on_msg(Msg::Backups(Ok(list.clone())));
        assert!(matches!(a.mode, Mode::Backups));
        if read_only {
            for k in ['n', 'r'] {
                assert_eq!(chr(&mut a, k), None);
                assert!(matches!(a.mode, Mode::Backups), "{k}: {:?}", a.mode);
                assert!(flash(&a).1.contains("read-only"), "{k}");
            }
            continue;
        }
        assert_eq!(chr(&mut a, 'n'), None);
        assert!(matches!(&a.mode, Mode::Confirm(Change::BackUp)), "{:?}", a.mode);
        assert_eq!(chr(&mut a, 'n'), None);
        assert!(matches!(a.mode, Mode::Backups), "no goes back to the view: {:?}", a.mode);
        chr(&mut a, 'n');
        assert_eq!(chr(&mut a, 'y'), Some(Action::Change(Change::BackUp)));
        a.on_msg(Msg::ChangeDone(Change::BackUp, Ok(42)));
        assert_eq!(a.follow_up, vec![Action::LoadBackups], "the listing is read again");
        a.follow_up.clear();

        press(&mut a, KeyCode::Down);
        assert_eq!(chr(&mut a, 'r'), None);
        assert!(matches!(&a.mode, Mode::ConfirmRestore(name, _) if *name == list[1].name), "{:?}", a.mode);
        typed(&mut a, "yes");
        assert_eq!(press(&mut a, KeyCode::Enter), None, "only the word restores");
        assert!(matches!(a.mode, Mode::ConfirmRestore(..)));
        assert_eq!(press(&mut a, KeyCode::Esc), None);
        assert!(matches!(a.mode, Mode::Backups));
        assert_eq!(flash(&a).1, "nothing changed");
        chr(&mut a, 'r');
        typed(&mut a, RESTORE_WORD);
        let restore = Change::Restore(list[1].name.clone());
        assert_eq!(press(&mut a, KeyCode::Enter), Some(Action::Change(restore.clone())));
        assert!(matches!(a.mode, Mode::Backups));
        assert_eq!(a.change_pending, Some(restore));
        assert_eq!(press(&mut a, KeyCode::Esc), None);
        assert!(matches!(a.mode, Mode::Normal));
    }
}
