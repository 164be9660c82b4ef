//! The console's state and what changes it: keys ([`App::on_key`]) and
//! messages from the background tasks ([`App::on_msg`]). Keys never do I/O:
//! they answer an [`Action`] that the runtime carries out off the draw loop,
//! and the outcome comes back as a [`Msg`].

use std::path::{Path, PathBuf};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use flipstack_domain::status::{AdminStatus, BackupInfo, LogLine, UploadDetail, UploadListing};
use flipstack_provision::fleet::GroupStatus;
use flipstack_provision::fleet_numbers::FleetNumbers;
use tui_input::Input;
use tui_input::backend::crossterm::EventHandler;

use crate::client::DumpWritten;
use crate::model::{AdminEvent, EventData, FleetData, FleetNumbersData, Millis, StatusData, UploadQuery};
use crate::operate::{BackupsView, Change, LogsView, RESTORE_WORD, ScalePrompt, ScaleTarget, UploadsView};
use crate::provision::{ProvisionMsg, ProvisionOp, ProvisionState};

/// The status is polled every second; older than this it is stale.
pub const STATUS_STALE_MS: i64 = 3_000;
/// How long a message stays in the footer.
const FLASH_MS: i64 = 6_000;

#[derive(Debug, Clone)]
pub struct Options {
    /// The server's base URL (shown in the header).
    pub url: String,
    /// `--stack`: read the AWS fleet of this stack, and provision it.
    pub stack: Option<String>,
    /// `--read-only`: no action changes anything.
    pub read_only: bool,
    /// Where `d` proposes to write dumps.
    pub dump_dir: PathBuf,
    /// The fleet is polled this often; older than three times it is stale.
    pub fleet_interval_ms: i64,
    /// `NO_COLOR`: draw without colours (bold and reverse stay).
    pub no_color: bool,
}

/// Something the runtime must do for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    SetBlocked(bool),
    Dump(PathBuf),
    CancelDump,
    Plan,
    Provision(ProvisionOp),
    /// An operator's change, confirmed.
    Change(Change),
    LoadUploads(UploadQuery),
    LoadUpload(i64),
    LoadLogs,
    LoadBackups,
}

/// What the background tasks tell the app.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Boxed: a status is large and most messages are small.
    Status(Result<Box<AdminStatus>, String>),
    Fleet(Result<Vec<GroupStatus>, String>),
    /// The fleet's numbers from CloudWatch (with `--stack`).
    FleetNumbers(Result<FleetNumbers, String>),
    EventsConnected,
    Event(AdminEvent),
    EventsDown(String),
    BlockDone(Result<bool, String>),
    DumpProgress(u64),
    DumpDone(Result<DumpWritten, String>),
    Provision(ProvisionMsg),
    /// A change's outcome: the count the server answered (see [`Change::done`]).
    ChangeDone(Change, Result<u64, String>),
    Uploads(Result<Vec<UploadListing>, String>),
    UploadDetail(Result<UploadDetail, String>),
    Logs(Result<Vec<LogLine>, String>),
    Backups(Result<Vec<BackupInfo>, String>),
}

/// Which overlay has the keyboard.
#[derive(Debug, Clone)]
pub enum Mode {
    Normal,
    Help,
    /// Asked before blocking (`true`) or unblocking (`false`) uploads.
    ConfirmBlock(bool),
    /// Typing the dump's file name.
    DumpPath(Input),
    /// The dump's progress or outcome.
    Dump,
    Provision,
    /// Asked before an operator's change.
    Confirm(Change),
    /// Choosing a group and typing its desired capacity (`s`).
    Scale(ScalePrompt),
    /// The uploads view (`u`).
    Uploads,
    /// The server's recent warnings and errors (`l`).
    Logs,
    /// The backups view (`B`).
    Backups,
    /// Restoring this backup waits for the word typed out.
    ConfirmRestore(String, Input),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub at: Millis,
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpState {
    pub path: PathBuf,
    pub started: Millis,
    pub bytes: u64,
    /// None while it runs.
    pub outcome: Option<Result<DumpWritten, String>>,
}

impl DumpState {
    pub fn running(&self) -> bool {
        self.outcome.is_none()
    }
}

pub struct App {
    pub options: Options,
    /// The clock every age is measured against; set by the runtime.
    pub now: Millis,
    pub mode: Mode,
    pub status: StatusData,
    pub fleet: FleetData,
    /// Fleet-wide numbers from CloudWatch; empty without `--stack`.
    pub fleet_numbers: FleetNumbersData,
    pub events: EventData,
    /// A block or unblock request in flight.
    pub block_pending: Option<bool>,
    pub dump: Option<DumpState>,
    pub provision: ProvisionState,
    /// A change on its way to the server.
    pub change_pending: Option<Change>,
    pub uploads: UploadsView,
    pub logs: LogsView,
    pub backups: BackupsView,
    /// What the runtime should do after a message (a reload after a retry).
    pub follow_up: Vec<Action>,
    pub flash: Option<Flash>,
    pub quit: bool,
    /// `q` was pressed once while provisioning runs.
    quit_armed: bool,
}

const READ_ONLY: &str = "read-only console: actions are off (start it without --read-only to act)";

impl App {
    pub fn new(options: Options, now: Millis) -> App {
        App {
            options,
            now,
            mode: Mode::Normal,
            status: StatusData::default(),
            fleet: FleetData::default(),
            fleet_numbers: FleetNumbersData::default(),
            events: EventData::default(),
            block_pending: None,
            dump: None,
            provision: ProvisionState::default(),
            change_pending: None,
            uploads: UploadsView::default(),
            logs: LogsView::default(),
            backups: BackupsView::default(),
            follow_up: Vec::new(),
            flash: None,
            quit: false,
            quit_armed: false,
        }
    }

    pub fn tick(&mut self, now: Millis) {
        self.now = now;
        if self.flash.as_ref().is_some_and(|f| now - f.at > FLASH_MS) {
            self.flash = None;
        }
    }

    fn say(&mut self, level: Level, text: impl Into<String>) {
        self.flash = Some(Flash { at: self.now, level, text: text.into() });
    }

    /// Whether the workers are paused, as last reported.
    pub fn paused(&self) -> Option<bool> {
        self.status.last.as_ref().map(|s| s.workers_paused)
    }

    /// What `s` can size: the stack's groups (`--stack`), else the local pool.
    pub fn scale_targets(&self) -> Vec<ScaleTarget> {
        if self.options.stack.is_some() {
            self.fleet
                .groups
                .iter()
                .map(|g| ScaleTarget {
                    group: Some(g.status.name.clone()),
                    min: g.status.min,
                    max: g.status.max,
                    desired: g.status.desired,
                })
                .collect()
        } else {
            let pool = self.status.last.as_ref().and_then(|s| s.pool.as_ref());
            pool.map(|p| ScaleTarget { group: None, min: p.min, max: p.max, desired: p.desired }).into_iter().collect()
        }
    }

    /// The uploads block as last reported, if known.
    pub fn blocked(&self) -> Option<bool> {
        self.status.last.as_ref().map(|s| s.blocked)
    }

    pub fn on_msg(&mut self, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Status(Ok(s)) => self.status.update(now, *s),
            Msg::Status(Err(e)) => self.status.health.failed(now, e),
            Msg::Fleet(Ok(g)) => self.fleet.update(now, g),
            Msg::Fleet(Err(e)) => self.fleet.health.failed(now, e),
            Msg::FleetNumbers(Ok(n)) => {
                self.fleet_numbers.last = Some(n);
                self.fleet_numbers.health.ok(now);
            }
            Msg::FleetNumbers(Err(e)) => self.fleet_numbers.health.failed(now, e),
            Msg::EventsConnected => {
                self.events.connected = true;
                self.events.health.ok(now);
            }
            Msg::Event(e) => {
                if let AdminEvent::Blocked { blocked, .. } = &e
                    && let Some(s) = self.status.last.as_mut()
                {
                    // Shown at once; the next status confirms it.
                    s.blocked = *blocked;
                }
                self.events.push(now, e);
            }
            Msg::EventsDown(e) => {
                self.events.connected = false;
                self.events.health.failed(now, e);
            }
            Msg::BlockDone(result) => {
                self.block_pending = None;
                match result {
                    Ok(blocked) => {
                        if let Some(s) = self.status.last.as_mut() {
                            s.blocked = blocked;
                        }
                        self.say(
                            Level::Info,
                            if blocked {
                                "uploads blocked: every server answers new uploads with 503"
                            } else {
                                "uploads open again"
                            },
                        );
                    }
                    Err(e) => self.say(Level::Error, format!("the block did not change: {e}")),
                }
            }
            Msg::DumpProgress(bytes) => {
                if let Some(d) = self.dump.as_mut().filter(|d| d.running()) {
                    d.bytes = bytes;
                }
            }
            Msg::DumpDone(result) => {
                if let Some(d) = self.dump.as_mut() {
                    if let Ok(w) = &result {
                        d.bytes = w.bytes;
                    }
                    let text = match &result {
                        Ok(w) => (
                            Level::Info,
                            format!("dump written: {} ({})", w.path.display(), crate::model::human_bytes(w.bytes)),
                        ),
                        Err(e) => (Level::Error, format!("the dump failed: {e}")),
                    };
                    d.outcome = Some(result);
                    self.say(text.0, text.1);
                }
            }
            Msg::Provision(m) => {
                if let Some(text) = self.provision.on_msg(m) {
                    self.say(text.0, text.1);
                }
            }
            Msg::ChangeDone(change, result) => {
                self.change_pending = None;
                match result {
                    Ok(n) => {
                        let (good, text) = change.done(n);
                        self.say(if good { Level::Info } else { Level::Warn }, text);
                    }
                    // The reason first: the footer is one line.
                    Err(e) => self.say(Level::Error, format!("not done: {e}")),
                }
                // The view shows what changed.
                if matches!(self.mode, Mode::Backups) {
                    self.follow_up.push(Action::LoadBackups);
                }
                if matches!(self.mode, Mode::Uploads) {
                    self.follow_up.push(Action::LoadUploads(self.uploads.query.clone()));
                    if let Some(Some(Ok(d))) = &self.uploads.detail {
                        self.follow_up.push(Action::LoadUpload(d.upload.id.get()));
                    }
                }
            }
            Msg::Uploads(rows) => self.uploads.list.set_rows(rows, |l| l.upload.id),
            Msg::UploadDetail(d) => {
                // Only while the detail is open: Esc may have closed it.
                if self.uploads.detail.is_some() {
                    self.uploads.detail = Some(Some(d));
                }
            }
            Msg::Logs(lines) => self.logs.lines = Some(lines),
            Msg::Backups(rows) => self.backups.set_rows(rows, |b| b.name.clone()),
        }
    }

    /// Asks for `change` unless the console is read-only or another is on its way.
    fn ask(&mut self, change: Change) -> Option<Action> {
        if self.options.read_only {
            self.say(Level::Warn, READ_ONLY);
        } else if self.change_pending.is_some() {
            self.say(Level::Info, "the last change is still on its way");
        } else {
            self.mode = Mode::Confirm(change);
        }
        None
    }

    /// Where a confirmation or the scale prompt goes back to.
    fn after_confirm(&mut self, change: &Change) {
        self.mode = match change {
            Change::RetryOne(_) => Mode::Uploads,
            Change::BackUp | Change::Restore(_) => Mode::Backups,
            _ => Mode::Normal,
        };
    }

    fn backups_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => {
                self.mode = Mode::Normal;
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.backups.move_by(-1);
                None
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.backups.move_by(1);
                None
            }
            KeyCode::Char('g') => Some(Action::LoadBackups),
            KeyCode::Char('n') => self.ask(Change::BackUp),
            KeyCode::Char('r') => {
                if self.options.read_only {
                    self.say(Level::Warn, READ_ONLY);
                } else if self.change_pending.is_some() {
                    self.say(Level::Info, "the last change is still on its way");
                } else if let Some(b) = self.backups.selected_row() {
                    self.mode = Mode::ConfirmRestore(b.name.clone(), Input::default());
                } else {
                    self.say(Level::Warn, "no backup to restore: take one with n");
                }
                None
            }
            _ => None,
        }
    }

    fn confirm_restore_key(&mut self, name: String, mut input: Input, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Backups;
                self.say(Level::Info, "nothing changed");
                None
            }
            KeyCode::Enter if input.value().trim() == RESTORE_WORD => {
                let change = Change::Restore(name);
                self.mode = Mode::Backups;
                self.change_pending = Some(change.clone());
                Some(Action::Change(change))
            }
            KeyCode::Enter => {
                self.say(Level::Warn, format!("type {RESTORE_WORD} to replace the database, or Esc"));
                self.mode = Mode::ConfirmRestore(name, input);
                None
            }
            _ => {
                input.handle_event(&Event::Key(key));
                self.mode = Mode::ConfirmRestore(name, input);
                None
            }
        }
    }

    fn uploads_key(&mut self, key: KeyEvent) -> Option<Action> {
        let view = &mut self.uploads;
        if view.editing {
            return match key.code {
                KeyCode::Enter => {
                    view.editing = false;
                    view.query = UploadQuery::parse(view.filter.value());
                    view.list.rows = None;
                    view.list.selected = 0;
                    Some(Action::LoadUploads(view.query.clone()))
                }
                KeyCode::Esc => {
                    view.editing = false;
                    None
                }
                _ => {
                    view.filter.handle_event(&Event::Key(key));
                    None
                }
            };
        }
        if view.detail.is_some() {
            return match key.code {
                KeyCode::Esc | KeyCode::Backspace | KeyCode::Char('q') => {
                    view.detail = None;
                    None
                }
                KeyCode::Char('r') => match view.detail.clone().flatten() {
                    Some(Ok(d)) => self.retry_one(d.upload.id.get(), d.upload.state),
                    _ => None,
                },
                KeyCode::Char('g') => {
                    let id = view.selected_upload().map(|l| l.upload.id.get());
                    id.map(Action::LoadUpload)
                }
                _ => None,
            };
        }
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => {
                self.mode = Mode::Normal;
                None
            }
            KeyCode::Char('/') => {
                view.editing = true;
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                view.list.move_by(-1);
                None
            }
            KeyCode::Down | KeyCode::Char('j') => {
                view.list.move_by(1);
                None
            }
            KeyCode::PageUp => {
                view.list.move_by(-10);
                None
            }
            KeyCode::PageDown => {
                view.list.move_by(10);
                None
            }
            KeyCode::Char('g') => Some(Action::LoadUploads(view.query.clone())),
            KeyCode::Enter => {
                let id = view.selected_upload().map(|l| l.upload.id.get())?;
                view.detail = Some(None);
                Some(Action::LoadUpload(id))
            }
            KeyCode::Char('r') => {
                let (id, state) = view.selected_upload().map(|l| (l.upload.id.get(), l.upload.state))?;
                self.retry_one(id, state)
            }
            _ => None,
        }
    }

    fn retry_one(&mut self, id: i64, state: flipstack_domain::domain::UploadState) -> Option<Action> {
        if state != flipstack_domain::domain::UploadState::Failed && !self.options.read_only {
            self.say(Level::Warn, format!("upload #{id} is {}: only failed uploads are retried", state.as_str()));
            return None;
        }
        self.ask(Change::RetryOne(id))
    }

    /// Terminal events other than keys (resize) need nothing: the next draw
    /// uses the new size.
    pub fn on_event(&mut self, event: &Event) -> Option<Action> {
        match event {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.on_key(*key),
            _ => None,
        }
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Action::Quit);
        }
        match self.mode.clone() {
            Mode::Normal => self.normal_key(key),
            Mode::Help => {
                self.mode = Mode::Normal;
                None
            }
            Mode::ConfirmBlock(block) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.mode = Mode::Normal;
                    self.block_pending = Some(block);
                    Some(Action::SetBlocked(block))
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.mode = Mode::Normal;
                    self.say(Level::Info, "nothing changed");
                    None
                }
                _ => None,
            },
            Mode::DumpPath(mut input) => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    None
                }
                KeyCode::Enter => {
                    let value = input.value().trim();
                    if value.is_empty() {
                        self.say(Level::Warn, "type a file name for the dump");
                        return None;
                    }
                    let path = PathBuf::from(value);
                    if path.exists() {
                        self.say(Level::Warn, format!("{} exists: choose another name", path.display()));
                        return None;
                    }
                    self.dump = Some(DumpState { path: path.clone(), started: self.now, bytes: 0, outcome: None });
                    self.mode = Mode::Dump;
                    Some(Action::Dump(path))
                }
                _ => {
                    input.handle_event(&Event::Key(key));
                    self.mode = Mode::DumpPath(input);
                    None
                }
            },
            Mode::Dump => {
                let running = self.dump.as_ref().is_some_and(DumpState::running);
                match key.code {
                    KeyCode::Char('c') if running => {
                        self.mode = Mode::Normal;
                        self.say(Level::Warn, "dump cancelled; nothing was kept");
                        self.dump = None;
                        Some(Action::CancelDump)
                    }
                    // Closing the view leaves a running dump running.
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') => {
                        self.mode = Mode::Normal;
                        if !running {
                            self.dump = None;
                        }
                        None
                    }
                    _ => None,
                }
            }
            Mode::Confirm(change) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.after_confirm(&change);
                    self.change_pending = Some(change.clone());
                    Some(Action::Change(change))
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.after_confirm(&change);
                    self.say(Level::Info, "nothing changed");
                    None
                }
                _ => None,
            },
            Mode::Scale(mut prompt) => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    self.say(Level::Info, "nothing changed");
                    None
                }
                KeyCode::Tab | KeyCode::Up | KeyCode::Down => {
                    prompt.next();
                    self.mode = Mode::Scale(prompt);
                    None
                }
                KeyCode::Enter => {
                    match prompt.change() {
                        Ok(change) => self.mode = Mode::Confirm(change),
                        Err(why) => {
                            self.say(Level::Warn, why);
                            self.mode = Mode::Scale(prompt);
                        }
                    }
                    None
                }
                _ => {
                    prompt.input.handle_event(&Event::Key(key));
                    self.mode = Mode::Scale(prompt);
                    None
                }
            },
            Mode::Uploads => self.uploads_key(key),
            Mode::Backups => self.backups_key(key),
            Mode::ConfirmRestore(name, input) => self.confirm_restore_key(name, input, key),
            Mode::Logs => match key.code {
                KeyCode::Esc | KeyCode::Char('q') => {
                    self.mode = Mode::Normal;
                    None
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.logs.back = self.logs.back.saturating_add(1);
                    None
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.logs.back = self.logs.back.saturating_sub(1);
                    None
                }
                KeyCode::Char('g') => {
                    self.logs.back = 0;
                    Some(Action::LoadLogs)
                }
                _ => None,
            },
            Mode::Provision => {
                let stack = self.options.stack.clone().unwrap_or_default();
                let action = self.provision.on_key(key, &stack, self.options.read_only);
                if let Some(text) = self.provision.take_notice() {
                    self.say(text.0, text.1);
                }
                if self.provision.closed {
                    self.provision.closed = false;
                    self.mode = Mode::Normal;
                }
                action
            }
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.code != KeyCode::Char('q') {
            self.quit_armed = false;
        }
        match key.code {
            KeyCode::Char('q') => {
                // Quitting abandons a provisioning run part-way: ask twice.
                if self.provision.running() && !self.quit_armed {
                    self.quit_armed = true;
                    self.say(
                        Level::Warn,
                        "provisioning is running: q again quits and leaves it part-way (running it again continues)",
                    );
                    return None;
                }
                self.quit = true;
                Some(Action::Quit)
            }
            KeyCode::Char('?') => {
                self.mode = Mode::Help;
                None
            }
            KeyCode::Char('b') => {
                if self.options.read_only {
                    self.say(Level::Warn, READ_ONLY);
                    return None;
                }
                if self.block_pending.is_some() {
                    self.say(Level::Info, "the last change is still on its way");
                    return None;
                }
                match self.blocked() {
                    Some(blocked) => self.mode = Mode::ConfirmBlock(!blocked),
                    None => self.say(Level::Warn, "the server's state is not known yet: wait for its status"),
                }
                None
            }
            KeyCode::Char('d') => {
                if self.options.read_only {
                    self.say(Level::Warn, READ_ONLY);
                    return None;
                }
                if self.dump.is_some() {
                    // One dump at a time: show the one there is.
                    self.mode = Mode::Dump;
                    return None;
                }
                let name = default_dump_name(&self.options.dump_dir, self.now);
                self.mode = Mode::DumpPath(Input::new(name));
                None
            }
            KeyCode::Char('r') => self.ask(Change::RetryAll),
            KeyCode::Char('x') => self.ask(Change::Redrive),
            KeyCode::Char('w') => match self.paused() {
                Some(paused) => self.ask(Change::Pause(!paused)),
                None if self.options.read_only => self.ask(Change::Pause(true)),
                None => {
                    self.say(Level::Warn, "the server's state is not known yet: wait for its status");
                    None
                }
            },
            KeyCode::Char('s') => {
                if self.options.read_only {
                    self.say(Level::Warn, READ_ONLY);
                    return None;
                }
                let targets = self.scale_targets();
                if targets.is_empty() {
                    self.say(
                        Level::Warn,
                        if self.options.stack.is_some() {
                            "no Auto Scaling group of the stack is known yet"
                        } else {
                            "no local worker pool reports (it runs with `flipstack up`; on AWS start with --stack)"
                        },
                    );
                    return None;
                }
                self.mode = Mode::Scale(ScalePrompt::new(targets));
                None
            }
            KeyCode::Char('u') => {
                self.mode = Mode::Uploads;
                self.uploads.detail = None;
                Some(Action::LoadUploads(self.uploads.query.clone()))
            }
            KeyCode::Char('B') => {
                // Looking is not a change: the view opens in a read-only console too.
                self.mode = Mode::Backups;
                Some(Action::LoadBackups)
            }
            KeyCode::Char('l') => {
                self.mode = Mode::Logs;
                self.logs.back = 0;
                Some(Action::LoadLogs)
            }
            KeyCode::Char('p') => {
                if self.options.stack.is_none() {
                    self.say(Level::Warn, "provisioning needs a stack: start the console with --stack NAME");
                    return None;
                }
                self.mode = Mode::Provision;
                self.provision.open();
                // A plan is read-only: it is made even in a read-only console.
                self.provision.needs_plan().then_some(Action::Plan)
            }
            _ => None,
        }
    }
}

/// `<dir>/flipstack-<unix seconds>.sql`.
pub fn default_dump_name(dir: &Path, now: Millis) -> String {
    dir.join(format!("flipstack-{}.sql", now / 1000)).display().to_string()
}
