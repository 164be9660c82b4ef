//! The provisioning view (`p`): the stack's plan, then `up` or `down` with
//! per-step progress. `down` deletes, so it asks for the stack's name typed
//! out in full, not a `y`.

use crossterm::event::{Event, KeyCode, KeyEvent};
use tui_input::Input;
use tui_input::backend::crossterm::EventHandler;

use crate::app::{Action, Level};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionOp {
    Up,
    Down,
}

impl ProvisionOp {
    pub fn name(self) -> &'static str {
        match self {
            ProvisionOp::Up => "up",
            ProvisionOp::Down => "down",
        }
    }
}

/// Where one step of `up` or `down` is, with what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// Under way: checking, creating, waiting for AWS…
    Running(String),
    /// Finished: created, exists, deleted, absent…
    Done(String),
    /// Something the operator should know; the run goes on.
    Warning(String),
    Failed(String),
}

/// What the provisioning task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionMsg {
    /// The plan, one line per change (or the reason there is none).
    Plan(Result<Vec<String>, String>),
    /// A step started, finished or failed; steps are keyed by their index.
    Step { index: usize, name: String, state: StepState },
    /// What the run did (a summary), or why it stopped.
    Finished(Result<String, String>),
}

#[derive(Debug, Clone)]
pub enum Confirm {
    None,
    Up,
    /// Down waits for the stack's name.
    Down(Input),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub op: ProvisionOp,
    pub steps: Vec<(String, StepState)>,
    /// None while it runs.
    pub outcome: Option<Result<String, String>>,
}

impl Run {
    pub fn running(&self) -> bool {
        self.outcome.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct ProvisionState {
    /// None until the first plan arrives.
    pub plan: Option<Result<Vec<String>, String>>,
    pub planning: bool,
    pub confirm: Confirm,
    pub run: Option<Run>,
    /// First plan line shown (the plan can be longer than the view).
    pub scroll: u16,
    /// Set when the view asks to be closed; the app clears it.
    pub closed: bool,
    notice: Option<(Level, String)>,
}

impl Default for ProvisionState {
    fn default() -> Self {
        ProvisionState {
            plan: None,
            planning: false,
            confirm: Confirm::None,
            run: None,
            scroll: 0,
            closed: false,
            notice: None,
        }
    }
}

const READ_ONLY: &str = "read-only console: up and down are off (start it without --read-only)";

impl ProvisionState {
    pub fn open(&mut self) {
        self.closed = false;
        self.confirm = Confirm::None;
    }

    /// True when the view has nothing to show (no plan, none being made, no
    /// run to report on); it is then marked as planning.
    pub fn needs_plan(&mut self) -> bool {
        let needed = self.plan.is_none() && !self.planning && self.run.is_none();
        if needed {
            self.planning = true;
        }
        needed
    }

    pub fn running(&self) -> bool {
        self.run.as_ref().is_some_and(Run::running)
    }

    pub fn take_notice(&mut self) -> Option<(Level, String)> {
        self.notice.take()
    }

    fn notice(&mut self, level: Level, text: impl Into<String>) {
        self.notice = Some((level, text.into()));
    }

    pub fn on_key(&mut self, key: KeyEvent, stack: &str, read_only: bool) -> Option<Action> {
        match &mut self.confirm {
            Confirm::Up => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.confirm = Confirm::None;
                    Some(self.start(ProvisionOp::Up))
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.confirm = Confirm::None;
                    self.notice(Level::Info, "nothing changed");
                    None
                }
                _ => None,
            },
            Confirm::Down(input) => match key.code {
                KeyCode::Esc => {
                    self.confirm = Confirm::None;
                    self.notice(Level::Info, "nothing changed");
                    None
                }
                KeyCode::Enter => {
                    if input.value() == stack {
                        self.confirm = Confirm::None;
                        Some(self.start(ProvisionOp::Down))
                    } else {
                        self.notice(Level::Warn, format!("the name does not match: type {stack} exactly, or Esc"));
                        None
                    }
                }
                _ => {
                    input.handle_event(&Event::Key(key));
                    None
                }
            },
            Confirm::None => match key.code {
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('p') => {
                    // A run goes on with the view closed; `p` shows it again.
                    self.closed = true;
                    None
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.scroll = self.scroll.saturating_sub(1);
                    None
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.scroll = self.scroll.saturating_add(1);
                    None
                }
                KeyCode::Char('r') => {
                    if self.running() || self.planning {
                        self.notice(Level::Info, "wait for the current work to finish");
                        return None;
                    }
                    self.planning = true;
                    self.run = None;
                    Some(Action::Plan)
                }
                KeyCode::Char('u') | KeyCode::Char('D') => {
                    if read_only {
                        self.notice(Level::Warn, READ_ONLY);
                        return None;
                    }
                    if self.running() {
                        self.notice(Level::Info, "a run is in progress: wait for it to finish");
                        return None;
                    }
                    if key.code == KeyCode::Char('u') {
                        if !matches!(self.plan, Some(Ok(_))) {
                            self.notice(Level::Warn, "no plan yet: wait for it, or r to plan again");
                            return None;
                        }
                        self.confirm = Confirm::Up;
                    } else {
                        self.confirm = Confirm::Down(Input::default());
                    }
                    None
                }
                _ => None,
            },
        }
    }

    fn start(&mut self, op: ProvisionOp) -> Action {
        self.run = Some(Run { op, steps: Vec::new(), outcome: None });
        Action::Provision(op)
    }

    /// Applies a report; answers a line for the footer when a run ends.
    pub fn on_msg(&mut self, msg: ProvisionMsg) -> Option<(Level, String)> {
        match msg {
            ProvisionMsg::Plan(plan) => {
                self.planning = false;
                self.scroll = 0;
                self.plan = Some(plan);
                None
            }
            ProvisionMsg::Step { index, name, state } => {
                let run = self.run.as_mut()?;
                if run.steps.len() <= index {
                    run.steps.resize(index + 1, (String::new(), StepState::Running(String::new())));
                }
                run.steps[index] = (name, state);
                None
            }
            ProvisionMsg::Finished(result) => {
                let run = self.run.as_mut()?;
                let op = run.op.name();
                let line = match &result {
                    Ok(summary) => (Level::Info, format!("provision {op} finished: {summary}")),
                    Err(e) => {
                        // The step under way when it failed is where it stopped.
                        for (_, state) in run.steps.iter_mut() {
                            if let StepState::Running(_) = state {
                                *state = StepState::Failed("stopped here".into());
                            }
                        }
                        (Level::Error, format!("provision {op} failed: {e}"))
                    }
                };
                run.outcome = Some(result);
                // What exists changed: the old plan no longer says what `up` would do.
                self.plan = None;
                Some(line)
            }
        }
    }
}
