//! The operator's actions and views beyond block and dump: retry failed
//! uploads, redrive the dead-letter queue, pause and resume the workers, set
//! a group's desired capacity (each asked before it is done, each off in a
//! read-only console); the uploads view with its filter and one upload in
//! full; the server's recent warnings and errors; the database's backups,
//! one taken now or one restored (typed out first: it replaces the
//! database). State only: the keys are handled in [`crate::app`], the
//! drawing in [`crate::ui`].

use flipstack_domain::status::{BackupInfo, LogLine, UploadDetail, UploadListing};
use tui_input::Input;

use crate::model::UploadQuery;

/// A change an operator asked for, shown for confirmation before it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Every failed upload back to pending.
    RetryAll,
    /// One failed upload back to pending.
    RetryOne(i64),
    /// The dead-letter queue's messages back to the queue.
    Redrive,
    /// Pause (`true`) or resume (`false`) every worker.
    Pause(bool),
    /// A group's desired capacity: an AWS group by name, or (None) the local pool.
    Scale { group: Option<String>, desired: u32 },
    /// A backup of the database into the blob store, now.
    BackUp,
    /// The database replaced by this backup (asked with the word typed out).
    Restore(String),
}

/// What the operator types to confirm a restore.
pub const RESTORE_WORD: &str = "restore";

impl Change {
    /// The confirmation's title.
    pub fn question(&self) -> String {
        match self {
            Change::RetryAll => "retry every failed upload?".into(),
            Change::RetryOne(id) => format!("retry upload #{id}?"),
            Change::Redrive => "redrive the dead-letter queue?".into(),
            Change::Pause(true) => "pause the workers?".into(),
            Change::Pause(false) => "resume the workers?".into(),
            Change::Scale { group, desired } => {
                format!("set {} to {desired}?", group.as_deref().unwrap_or("the local pool"))
            }
            Change::BackUp => "back up the database now?".into(),
            Change::Restore(name) => format!("restore {name}?"),
        }
    }

    /// What it will do, for the confirmation.
    pub fn explain(&self) -> Vec<&'static str> {
        match self {
            Change::RetryAll | Change::RetryOne(_) => vec![
                "Failed uploads go back to pending with their attempts",
                "counted from zero, and their jobs are sent again.",
            ],
            Change::Redrive => vec![
                "The dead-letter queue's messages go back to the queue,",
                "and their uploads back to pending (SQS only).",
            ],
            Change::Pause(true) => vec![
                "Every worker finishes the job in hand and claims",
                "nothing new until resumed; uploads still queue up.",
            ],
            Change::Pause(false) => vec!["Every worker claims jobs again within a second."],
            Change::Scale { .. } => {
                vec!["The group runs this many now; its scaling policy", "goes on from there as the backlog asks."]
            }
            Change::BackUp => vec![
                "A dump of the whole database goes to the blob store's",
                "backups/; the oldest beyond the number kept are deleted.",
            ],
            Change::Restore(_) => vec![
                "Every row of the database is replaced by the backup's:",
                "uploads, people, sessions and settings made since go.",
                "Pictures stay in the blob store. The database as it is",
                "now is backed up first: restoring that undoes this.",
            ],
        }
    }

    /// The key that says yes, and what it is called.
    pub fn yes(&self) -> &'static str {
        match self {
            Change::RetryAll | Change::RetryOne(_) => "retry",
            Change::Redrive => "redrive",
            Change::Pause(true) => "pause",
            Change::Pause(false) => "resume",
            Change::Scale { .. } => "set it",
            Change::BackUp => "back up",
            Change::Restore(_) => "restore",
        }
    }

    /// What the footer says once the server answered `n` (how many were
    /// retried or moved, the desired count; unused for a pause).
    pub fn done(&self, n: u64) -> (bool, String) {
        match self {
            Change::RetryAll => (true, format!("{n} failed upload(s) sent to be flipped again")),
            Change::RetryOne(id) if n == 0 => (false, format!("upload #{id} is not failed any more: nothing retried")),
            Change::RetryOne(id) => (true, format!("upload #{id} sent to be flipped again")),
            Change::Redrive => (true, format!("{n} dead letter(s) back in the queue, their uploads pending again")),
            Change::Pause(true) => (true, "workers paused: each finishes its job and claims nothing new".into()),
            Change::Pause(false) => (true, "workers resumed".into()),
            Change::Scale { group, .. } => {
                (true, format!("{}: desired capacity set to {n}", group.as_deref().unwrap_or("local pool")))
            }
            Change::BackUp => (true, format!("database backed up ({n} rows)")),
            Change::Restore(name) => {
                (true, format!("database restored from {name} ({n} rows); the one before is the newest backup"))
            }
        }
    }
}

/// A group whose desired capacity `s` can set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTarget {
    /// The AWS group's name; None for the local pool.
    pub group: Option<String>,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
}

impl ScaleTarget {
    pub fn label(&self) -> &str {
        self.group.as_deref().unwrap_or("local pool")
    }
}

/// The `s` prompt: which group, and the count typed.
#[derive(Debug, Clone)]
pub struct ScalePrompt {
    pub targets: Vec<ScaleTarget>,
    pub selected: usize,
    pub input: Input,
}

impl ScalePrompt {
    pub fn new(targets: Vec<ScaleTarget>) -> ScalePrompt {
        let input = Input::new(targets.first().map(|t| t.desired.to_string()).unwrap_or_default());
        ScalePrompt { targets, selected: 0, input }
    }

    pub fn target(&self) -> &ScaleTarget {
        &self.targets[self.selected]
    }

    /// Tab: the next group, with its current desired count to edit.
    pub fn next(&mut self) {
        self.selected = (self.selected + 1) % self.targets.len();
        self.input = Input::new(self.target().desired.to_string());
    }

    /// The change asked for, or why the count cannot be.
    pub fn change(&self) -> Result<Change, String> {
        let t = self.target();
        let desired: u32 = self
            .input
            .value()
            .trim()
            .parse()
            .map_err(|_| format!("type a number of instances ({}–{})", t.min, t.max))?;
        if desired < t.min || desired > t.max {
            return Err(format!("{} takes {} to {}, not {desired}", t.label(), t.min, t.max));
        }
        Ok(Change::Scale { group: t.group.clone(), desired })
    }
}

/// The uploads view (`u`): the listing the filter asks for, and one upload in full.
#[derive(Debug, Clone, Default)]
pub struct UploadsView {
    /// What was typed after `/`.
    pub filter: Input,
    /// `/` was pressed: keys go to the filter until Enter or Esc.
    pub editing: bool,
    /// The query of the listing shown.
    pub query: UploadQuery,
    pub list: Selectable<UploadListing>,
    /// Enter on a row: that upload in full (None while it is fetched).
    pub detail: Option<Option<Result<UploadDetail, String>>>,
}

impl UploadsView {
    pub fn selected_upload(&self) -> Option<&UploadListing> {
        self.list.selected_row()
    }
}

/// Rows the server listed, one of them selected; read again, the selection
/// stays on its row (found by a key) while it is still listed.
#[derive(Debug, Clone)]
pub struct Selectable<T> {
    /// None until the first answer.
    pub rows: Option<Result<Vec<T>, String>>,
    pub selected: usize,
}

impl<T> Default for Selectable<T> {
    fn default() -> Self {
        Selectable { rows: None, selected: 0 }
    }
}

impl<T> Selectable<T> {
    pub fn listing(&self) -> &[T] {
        match &self.rows {
            Some(Ok(rows)) => rows,
            _ => &[],
        }
    }

    pub fn selected_row(&self) -> Option<&T> {
        self.listing().get(self.selected)
    }

    pub fn set_rows<K: PartialEq>(&mut self, rows: Result<Vec<T>, String>, key: impl Fn(&T) -> K) {
        let keep = self.selected_row().map(&key);
        self.rows = Some(rows);
        self.selected = reselect(self.listing(), keep, key);
    }

    pub fn move_by(&mut self, delta: isize) {
        self.selected = moved(self.selected, self.listing().len(), delta);
    }
}

/// Where the selection goes in a new listing: the row it was on, when still
/// listed (found by `key`), else the first.
fn reselect<T, K: PartialEq>(rows: &[T], keep: Option<K>, key: impl Fn(&T) -> K) -> usize {
    keep.and_then(|k| rows.iter().position(|r| key(r) == k)).unwrap_or(0).min(rows.len().saturating_sub(1))
}

/// The selection moved by `delta` within `n` rows.
fn moved(selected: usize, n: usize, delta: isize) -> usize {
    if n == 0 { selected } else { (selected as isize + delta).clamp(0, n as isize - 1) as usize }
}

/// The log view (`l`): the server's recent warnings and errors.
#[derive(Debug, Clone, Default)]
pub struct LogsView {
    pub lines: Option<Result<Vec<LogLine>, String>>,
    /// Lines scrolled up from the newest.
    pub back: u16,
}

/// The backups view (`B`): the backups in the blob store, newest first.
pub type BackupsView = Selectable<BackupInfo>;
