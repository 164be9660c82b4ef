//! `flipstack console`: the operator console, in the style of k9s.
//!
//! Three parts kept apart: the state ([`app`]: keys and messages in, actions
//! out), the drawing ([`ui`]: a pure function of the state), and the I/O
//! ([`sources`] and the actions run here), which happens in background tasks
//! that report back over a channel. The draw loop only waits on the terminal,
//! that channel and a clock tick.

pub mod app;
pub mod client;
pub mod model;
pub mod operate;
pub mod provision;
mod runner;
pub mod sources;
pub mod ui;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::EventStream;
use flipstack_domain::Config;
use flipstack_domain::domain::now_millis;
use flipstack_provision::AwsSettings;
use flipstack_provision::aws::{Capacity, StackSpec};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::app::{Action, App, Msg, Options};
use crate::client::{AdminClient, ClientError};
use crate::operate::Change;

/// What `flipstack console` was started with.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub url: String,
    pub token: String,
    /// `--stack`: the AWS stack whose fleet is shown and which `p` provisions
    /// (see [`stack_spec`]).
    pub stack: Option<StackSpec>,
    pub read_only: bool,
    pub dump_dir: PathBuf,
    pub status_every: Duration,
    pub fleet_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--stack: {0}")]
    Stack(String),
    #[error("the terminal failed: {0} (is this an interactive terminal?)")]
    Terminal(#[from] io::Error),
    #[error("the console stopped after an internal error (printed above); please report it")]
    Panicked,
}

/// The stack the console provisions: the CLI's defaults (`flipstack
/// provision up` without flags), sized from the configuration as the CLI
/// does; `binary` is uploaded as the release when it differs from the one in
/// the stack's bucket (needed on a stack's first `up`).
pub fn stack_spec(stack: &str, config: &Config, binary: Option<PathBuf>) -> StackSpec {
    let mut spec = StackSpec::new(stack, AwsSettings::from_config(config));
    spec.worker = Capacity { min: config.workers_min, max: config.workers_max };
    spec.backlog_per_worker = config.backlog_per_worker as f64;
    spec.metrics_namespace = config.metrics_namespace.clone();
    spec.binary = binary;
    spec
}

/// Set by the panic hook: a panic in any task ends the console, whose
/// terminal the hook has already restored.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// The terminal in raw mode on the alternate screen; restored when dropped
/// (every way out of [`run`]) and by ratatui's panic hook.
struct Screen {
    terminal: ratatui::DefaultTerminal,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        // try_init installs a panic hook that restores the terminal first.
        let terminal = ratatui::try_init()?;
        let restore_then_report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            restore_then_report(info);
        }));
        Ok(Screen { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Runs the console until the operator quits.
pub async fn run(config: ConsoleConfig) -> Result<(), ConsoleError> {
    let client = AdminClient::new(&config.url, &config.token)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let refresh = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    tasks.spawn(sources::status(client.clone(), tx.clone(), config.status_every, refresh.clone()));
    tasks.spawn(sources::events(client.clone(), tx.clone()));
    if let Some(spec) = &config.stack {
        flipstack_provision::aws::validate_stack_name(&spec.stack).map_err(|e| ConsoleError::Stack(e.to_string()))?;
        tasks.spawn(sources::fleet(spec.aws.clone(), spec.stack.clone(), tx.clone(), config.fleet_every));
        tasks.spawn(sources::fleet_numbers(
            spec.aws.clone(),
            spec.metrics_namespace.clone(),
            tx.clone(),
            config.fleet_every.max(std::time::Duration::from_secs(1)),
        ));
    }
    let mut app = App::new(
        Options {
            url: client.base_url().to_owned(),
            stack: config.stack.as_ref().map(|s| s.stack.clone()),
            read_only: config.read_only,
            dump_dir: config.dump_dir.clone(),
            fleet_interval_ms: config.fleet_every.as_millis() as i64,
            // https://no-color.org: set and not empty.
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        },
        now_millis(),
    );
    let mut actions = Actions { client, tx, refresh, stack: config.stack.clone(), dump: None, provision: None };

    let mut screen = Screen::enter()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let result = loop {
        if PANICKED.load(Ordering::SeqCst) {
            break Err(ConsoleError::Panicked);
        }
        screen.terminal.draw(|f| ui::draw(f, &app))?;
        if app.quit {
            break Ok(());
        }
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(event)) => {
                    app.tick(now_millis());
                    if let Some(action) = app.on_event(&event) {
                        actions.run(action);
                    }
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            Some(msg) = rx.recv() => {
                app.tick(now_millis());
                app.on_msg(msg);
                for action in std::mem::take(&mut app.follow_up) {
                    actions.run(action);
                }
                // A burst (many reads at once) is drawn once, within a bound.
                let started = Instant::now();
                while started.elapsed() < Duration::from_millis(20) {
                    match rx.try_recv() {
                        Ok(msg) => app.on_msg(msg),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => app.tick(now_millis()),
            _ = term.recv() => break Ok(()),
            _ = hangup.recv() => break Ok(()),
        }
    };
    drop(screen);
    actions.stop();
    tasks.abort_all();
    result
}

/// Makes a confirmed change: through the admin API, or for an AWS group
/// (`--stack`) through Auto Scaling. Answers the count the change reports.
async fn change_on_server(
    client: &AdminClient,
    aws: Option<flipstack_provision::AwsSettings>,
    change: &Change,
) -> Result<u64, String> {
    let e = |e: ClientError| e.to_string();
    match change {
        Change::RetryAll => client.retry(None).await.map(|n| n as u64).map_err(e),
        Change::RetryOne(id) => client.retry(Some(*id)).await.map(|n| n as u64).map_err(e),
        Change::Redrive => client.redrive().await.map(|n| n as u64).map_err(e),
        Change::Pause(paused) => client.set_paused(*paused).await.map(|p| p as u64).map_err(e),
        Change::Scale { group: None, desired } => client.set_pool_desired(*desired).await.map(u64::from).map_err(e),
        Change::BackUp => client.back_up().await.map(|done| done.rows).map_err(e),
        Change::Restore(name) => client.restore(name).await.map(|done| done.rows).map_err(e),
        Change::Scale { group: Some(group), desired } => {
            let aws = aws.ok_or("an AWS group needs --stack")?;
            flipstack_provision::fleet::set_desired(&aws, group, *desired)
                .await
                .map(|()| u64::from(*desired))
                .map_err(|e| format!("{e} (check the region, credentials and FLIPSTACK_AWS_ENDPOINT_URL)"))
        }
    }
}

/// Carries out the app's actions as background tasks.
struct Actions {
    client: AdminClient,
    tx: mpsc::Sender<Msg>,
    refresh: Arc<Notify>,
    stack: Option<StackSpec>,
    dump: Option<tokio::task::JoinHandle<()>>,
    provision: Option<tokio::task::JoinHandle<()>>,
}

impl Actions {
    fn run(&mut self, action: Action) {
        match action {
            Action::Quit => {}
            Action::SetBlocked(blocked) => {
                let (client, tx, refresh) = (self.client.clone(), self.tx.clone(), self.refresh.clone());
                tokio::spawn(async move {
                    let r = client.set_blocked(blocked).await.map_err(|e| e.to_string());
                    let _ = tx.send(Msg::BlockDone(r)).await;
                    refresh.notify_one();
                });
            }
            Action::Dump(path) => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                self.dump = Some(tokio::spawn(async move {
                    let progress_tx = tx.clone();
                    let mut last = Instant::now();
                    let r = client
                        .dump_to(&path, |bytes| {
                            // Progress is news, not a record: drop it when the app is busy.
                            if last.elapsed() >= Duration::from_millis(100) {
                                last = Instant::now();
                                let _ = progress_tx.try_send(Msg::DumpProgress(bytes));
                            }
                        })
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::DumpDone(r)).await;
                }));
            }
            Action::CancelDump => {
                // Dropping the task drops its temporary file, which deletes it.
                if let Some(t) = self.dump.take() {
                    t.abort();
                }
            }
            Action::Change(change) => {
                let (client, tx, refresh) = (self.client.clone(), self.tx.clone(), self.refresh.clone());
                let aws = self.stack.as_ref().map(|s| s.aws.clone());
                tokio::spawn(async move {
                    let r = change_on_server(&client, aws, &change).await;
                    let _ = tx.send(Msg::ChangeDone(change, r)).await;
                    refresh.notify_one();
                });
            }
            Action::LoadUploads(query) => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Uploads(client.uploads(&query).await.map_err(|e| e.to_string()))).await;
                });
            }
            Action::LoadUpload(id) => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Msg::UploadDetail(client.upload(id).await.map_err(|e| e.to_string()))).await;
                });
            }
            Action::LoadLogs => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Logs(client.logs().await.map_err(|e| e.to_string()))).await;
                });
            }
            Action::LoadBackups => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Backups(client.backups().await.map_err(|e| e.to_string()))).await;
                });
            }
            Action::Plan => {
                if let Some(spec) = &self.stack {
                    tokio::spawn(runner::plan(spec.clone(), self.tx.clone()));
                }
            }
            Action::Provision(op) => {
                if let Some(spec) = &self.stack {
                    self.provision = Some(tokio::spawn(runner::apply(spec.clone(), op, self.tx.clone())));
                }
            }
        }
    }

    /// On quit: a dump in progress is abandoned (its temporary file deleted).
    /// A provisioning run is abandoned too; `up` and `down` continue from
    /// where AWS is when run again.
    fn stop(&mut self) {
        if let Some(t) = self.dump.take() {
            t.abort();
        }
        if let Some(t) = self.provision.take() {
            t.abort();
        }
    }
}
