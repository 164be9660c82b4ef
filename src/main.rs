//! `flipstack`: the one binary. Commands and their flags only; the work is in
//! the crates (core, server, worker, console, provision).

mod allocator;
mod log_writer;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use flipstack_core::store::dump::{restore_dump_file, write_dump, write_dump_file};
use flipstack_core::{Config, Services};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "flipstack",
    version,
    about = "A photo service that flips pictures and scales itself",
    long_about = "A photo service that flips pictures and scales itself.\n\n\
        `flipstack up` runs everything on this machine with embedded defaults (SQLite, \
        an in-process cache, a local folder, an outbox for mail): no other program needed.\n\n\
        Every setting has an environment variable FLIPSTACK_<KEY>, the same key in an \
        optional TOML file (--config), and for the common ones a flag of the commands that \
        use it; flags win over the environment, the environment over the file.",
    after_help = "See README.md for the configuration table and ARCHITECTURE.md for how it fits together."
)]
struct Cli {
    /// A TOML file with configuration keys (as in README.md).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written: `text` for people, `json` (one object per line) for log collectors
    #[arg(long, global = true, value_enum, env = "FLIPSTACK_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// The configuration keys that make sense as flags, grouped by the commands
// that use them: each command flattens the groups it needs, so its --help
// offers only those. Secrets (the admin token) are not among them: command
// lines are visible to other users. Each group serializes to the keys it set,
// which Config::load lays over the file and the environment.

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Where the embedded defaults keep their files.
#[derive(Args, Serialize, Default)]
struct DataFlags {
    /// Where the embedded defaults keep their files [env: FLIPSTACK_DATA_DIR] [default: ./data]
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

/// The AWS endpoint override.
#[derive(Args, Serialize, Default)]
struct AwsFlags {
    /// Endpoint override for every AWS client (moto_server, LocalStack) [env: FLIPSTACK_AWS_ENDPOINT_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_endpoint_url: Option<String>,
}

/// The metadata store.
#[derive(Args, Serialize, Default)]
struct StoreFlags {
    #[command(flatten)]
    #[serde(flatten)]
    data: DataFlags,
    /// Primary database: sqlite://PATH or mysql://user:pass@host:port/db [env: FLIPSTACK_DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Read replicas, comma-separated mysql:// URLs [env: FLIPSTACK_REPLICA_URLS]
    #[arg(long, global = true, value_name = "URLS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_urls: Option<String>,
}

/// Every service a server or a worker connects to.
#[derive(Args, Serialize, Default)]
struct ServiceFlags {
    #[command(flatten)]
    #[serde(flatten)]
    store: StoreFlags,
    /// Gallery cache: memory:// or memcache://host:port[,host:port…] [env: FLIPSTACK_CACHE_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_url: Option<String>,
    /// Blob store: file://PATH or s3://bucket[/prefix] [env: FLIPSTACK_BLOB_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    blob_url: Option<String>,
    /// Job queue: db:// or an SQS queue URL [env: FLIPSTACK_QUEUE_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_url: Option<String>,
    /// Mailer: outbox://DIR, smtps://user:pass@host:port, smtp://… (STARTTLS required) or smtp+insecure://… (plaintext) [env: FLIPSTACK_MAIL_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mail_url: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    aws: AwsFlags,
    /// The address people reach the server at, for mailed links [env: FLIPSTACK_PUBLIC_URL]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
}

/// The HTTP server.
#[derive(Args, Serialize, Default)]
struct ServeFlags {
    /// Address the HTTP server listens on [env: FLIPSTACK_LISTEN] [default: 127.0.0.1:5000]
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    #[serde(flatten)]
    services: ServiceFlags,
}

/// `up`: the server and its local worker pool.
#[derive(Args, Serialize, Default)]
struct UpFlags {
    #[command(flatten)]
    #[serde(flatten)]
    serve: ServeFlags,
    /// Fewest local workers `up` keeps [env: FLIPSTACK_WORKERS_MIN] [default: 1]
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    workers_min: Option<u32>,
    /// Most local workers `up` starts [env: FLIPSTACK_WORKERS_MAX] [default: 2]
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    workers_max: Option<u32>,
}

// Parsed once at start; the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: the server and a worker pool that scales with the backlog.
    Up(UpFlags),
    /// Run the HTTP server alone (pages, uploads, galleries, images, admin API).
    Serve(ServeFlags),
    /// Run one worker alone: take jobs, flip pictures, store them. SIGTERM lets it finish its job first.
    Work(ServiceFlags),
    /// The operator console: fleet, queue, cache, reads and uploads, live; block uploads, dump, provision.
    Console(ConsoleArgs),
    /// Database tools: dump, restore, migrate.
    #[command(subcommand)]
    Db(DbCommand),
    /// The stack on AWS: plan, up, down, status (see docs/aws.md).
    Provision(ProvisionArgs),
}

#[derive(Args)]
struct ProvisionArgs {
    #[command(flatten)]
    flags: AwsFlags,
    #[command(subcommand)]
    command: flipstack_provision::cli::ProvisionCommand,
}

#[derive(Args)]
struct ConsoleArgs {
    /// The running flipstack's address (a local `up`, or the load balancer).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    url: String,
    /// The admin token [default: FLIPSTACK_ADMIN_TOKEN, else <data-dir>/admin-token].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Also show this AWS stack's Auto Scaling groups, and provision it with `p`.
    #[arg(long, value_name = "NAME")]
    stack: Option<String>,
    /// Show everything, change nothing: block, dump and provisioning up/down are off.
    #[arg(long)]
    read_only: bool,
    /// With --stack: the flipstack binary (Linux x86-64, glibc ≤ 2.34) that `p` → up uploads as the release when it differs [default: this flipstack].
    #[arg(long, value_name = "FILE", requires = "stack")]
    binary: Option<PathBuf>,
    /// Where `d` proposes to write dumps.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dump_dir: PathBuf,
    /// How often the AWS fleet is read, in seconds (with --stack).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    fleet_every: u64,
    #[command(flatten)]
    flags: ConsoleFlags,
}

/// The console reads the admin token the server made (<data-dir>/admin-token)
/// and, with --stack, talks to AWS.
#[derive(Args, Serialize, Default)]
struct ConsoleFlags {
    #[command(flatten)]
    #[serde(flatten)]
    data: DataFlags,
    #[command(flatten)]
    #[serde(flatten)]
    aws: AwsFlags,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Write the whole database as SQL (schema and rows) from one consistent snapshot.
    Dump {
        /// Write here instead of standard output (written to a temporary file, renamed when complete).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Load a dump written by `flipstack db dump` (or GET /admin/api/dump) into an empty database.
    Restore {
        /// The dump file.
        file: PathBuf,
        /// Replace the rows of a database that is not empty.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Bring the schema up to date and say which version it is at.
    Migrate {
        #[command(flatten)]
        flags: StoreFlags,
    },
}

fn main() -> Result<()> {
    // Everything flipstack writes (the database with its cookie secret,
    // pictures, the outbox's live sign-in links, the admin token, dumps) is for
    // this user only: files 0600, folders 0700.
    // SAFETY: umask only sets this process's file-mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    if matches!(cli.command, Command::Work(_)) {
        // Before the log writer, telemetry and the runtime start threads.
        allocator::keep_freed_memory_between_jobs();
    }
    let file = cli.config.as_deref();
    let config = match &cli.command {
        Command::Up(flags) => Config::load(file, flags),
        Command::Serve(flags) => Config::load(file, flags),
        Command::Work(flags) => Config::load(file, flags),
        Command::Console(args) => Config::load(file, &args.flags),
        Command::Db(
            DbCommand::Dump { flags, .. } | DbCommand::Restore { flags, .. } | DbCommand::Migrate { flags },
        ) => Config::load(file, flags),
        Command::Provision(args) => Config::load(file, &args.flags),
    }?;
    // The console owns the terminal: log lines would draw over it. Traces
    // are for the long-running roles.
    let owns_terminal = matches!(cli.command, Command::Console(_));
    let traced = matches!(cli.command, Command::Up(_) | Command::Serve(_) | Command::Work(_));
    let telemetry = match (traced, config.otlp_traces_url()) {
        (true, Some(url)) => Some(telemetry::Telemetry::start(&url, cli.command.name())?),
        _ => None,
    };
    let log_writer = (!owns_terminal).then(|| init_logging(cli.log_format, telemetry.as_ref()));
    if telemetry.is_some() {
        flipstack_core::trace::start_exporting();
        tracing::info!(url = %config.otlp_traces_url().unwrap_or_default(), "exporting traces over OTLP");
    }
    let log_format = cli.log_format;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Up(_) => up(config, log_format).await,
            Command::Serve(_) => serve(config).await,
            Command::Work(_) => work(config).await,
            Command::Console(args) => console(config, args).await,
            Command::Db(cmd) => db(config, cmd).await,
            Command::Provision(args) => flipstack_provision::cli::run(args.command, &config).await,
        }
    });
    // The last spans leave while the log can still say so, outside the runtime.
    if let Some(t) = telemetry {
        t.shutdown();
    }
    drop(log_writer);
    outcome
}

impl Command {
    /// The command's name, as traces name the process.
    fn name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Serve(_) => "serve",
            Command::Work(_) => "work",
            Command::Console(_) => "console",
            Command::Db(_) => "db",
            Command::Provision(_) => "provision",
        }
    }
}

/// The one place the tracing subscriber is set up (layers go here). Events
/// are captured on the caller's thread and formatted and written to stderr
/// by a thread of their own (`log_writer`), so a request that logs never
/// waits on formatting, the terminal, a pipe or a file; when that thread
/// falls behind, lines are dropped rather than slowing requests. Colours
/// only on a terminal. The guard flushes what is queued when `main` returns.
fn init_logging(format: LogFormat, telemetry: Option<&telemetry::Telemetry>) -> log_writer::Guard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::Targets};
    // RUST_LOG picks the lines written (and kept for the console's log view),
    // not the spans traced: `warn` must not switch the traces off.
    let log_filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
                "info,aws_config=warn,aws_smithy_runtime=warn,hyper=warn,refinery_core=warn,mysql_async=warn",
            )
        })
    };
    let format = match format {
        LogFormat::Text => log_writer::Format::Text { ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()) },
        LogFormat::Json => log_writer::Format::Json,
    };
    let (lines, guard) = log_writer::deferred(format, std::io::stderr());
    // Spans of flipstack's own crates (requests, jobs, and the events inside
    // them) to the OTLP receiver, when there is one.
    let traces = telemetry.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_filter(Targets::new().with_target("flipstack", tracing::Level::INFO))
    });
    // The console's log view reads the recent warnings and errors (server's logbook).
    tracing_subscriber::registry()
        .with(lines.with_filter(log_filter()))
        .with(traces)
        .with(flipstack_server::logbook::layer().with_filter(log_filter()))
        .init();
    guard
}

async fn connect(config: Config) -> Result<Arc<Services>> {
    Services::connect(config).await.context("connecting to flipstack's services")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn serve(config: Config) -> Result<()> {
    let listen = config.listen;
    let services = connect(config).await?;
    let server = flipstack_server::start(services, listen).await?;
    // For people, on stdout like `up`'s: stderr carries only log lines (JSON ones with --log-format json).
    println!("flipstack server listening on {}", server.public_url);
    server.run_until(shutdown_signal()).await;
    Ok(())
}

async fn work(config: Config) -> Result<()> {
    let metrics_at = config.worker_metrics_listen;
    let services = connect(config).await?;
    let _metrics = match metrics_at {
        Some(addr) => {
            let (bound, stop, task) = flipstack_server::serve_metrics(services.clone(), addr)
                .await
                .context("serving the worker's metrics (FLIPSTACK_WORKER_METRICS_LISTEN)")?;
            tracing::info!(url = %format!("http://{bound}/metrics"), "worker metrics");
            Some((stop, task))
        }
        None => None,
    };
    let options = flipstack_worker::WorkerOptions::from_services(&services);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing the job in hand first");
        signal.cancel();
    });
    tokio::spawn(flipstack_worker::pool::stop_when_orphaned(stop.clone()));
    flipstack_worker::run(services, options, stop).await?;
    Ok(())
}

async fn up(config: Config, log_format: LogFormat) -> Result<()> {
    let services = connect(config.clone()).await?;
    let server = flipstack_server::start(services.clone(), config.listen).await?;
    let program = std::env::current_exe().context("finding the flipstack binary to start workers")?;
    let mut env = config.to_env();
    // Workers must send people's links to where the server really is.
    env.push(("FLIPSTACK_PUBLIC_URL".into(), server.public_url.clone()));
    // The workers' lines join the server's in the same format.
    env.push(("FLIPSTACK_LOG_FORMAT".into(), log_format.as_str().into()));
    // Each worker's own /metrics, on a free port of the configured address
    // (loopback by default) that it names in its log: the pool runs several.
    let metrics_ip = config.worker_metrics_listen.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    env.push(("FLIPSTACK_WORKER_METRICS_LISTEN".into(), SocketAddr::new(metrics_ip, 0).to_string()));
    let pool = flipstack_worker::pool::PoolConfig::from_config(&config, program, env);
    let stop = CancellationToken::new();
    let pool_task = tokio::spawn(flipstack_worker::pool::run(pool, services, stop.clone()));
    println!("flipstack is running at {}/  (Ctrl-C to stop)", server.public_url);
    println!("  data: {}   admin token: {}", config.data_dir.display(), config.admin_token_path().display());
    server.run_until(shutdown_signal()).await;
    stop.cancel();
    let _ = pool_task.await;
    Ok(())
}

async fn console(config: Config, args: ConsoleArgs) -> Result<()> {
    let Some(token) = args.token.filter(|t| !t.trim().is_empty()).or_else(|| config.existing_admin_token()) else {
        bail!(
            "no admin token: pass --token, set FLIPSTACK_ADMIN_TOKEN, or point --data-dir at the server's data ({} is missing or empty)",
            config.admin_token_path().display()
        );
    };
    flipstack_console::run(flipstack_console::ConsoleConfig {
        url: args.url,
        token: token.trim().to_owned(),
        stack: args.stack.map(|s| flipstack_console::stack_spec(&s, &config, args.binary)),
        read_only: args.read_only,
        dump_dir: args.dump_dir,
        status_every: Duration::from_secs(1),
        fleet_every: Duration::from_secs(args.fleet_every.max(1)),
    })
    .await?;
    Ok(())
}

async fn db(config: Config, cmd: DbCommand) -> Result<()> {
    let services = connect(config).await?;
    let store = services.store.as_ref();
    match cmd {
        DbCommand::Migrate { .. } => {
            let schema = flipstack_core::store::schema_sql();
            eprintln!(
                "the {} database is at schema version {} ({})",
                store.backend(),
                schema.len(),
                schema.last().map(|s| s.0.as_str()).unwrap_or("-")
            );
        }
        DbCommand::Dump { out, .. } => {
            let total = store.row_count().await?;
            let bar = indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template("{spinner} dumping {pos}/{len} rows, {msg} [{elapsed}]")
                    .expect("valid template"),
            );
            let progress = |rows: u64, bytes: u64| {
                bar.set_position(rows);
                bar.set_message(indicatif::HumanBytes(bytes).to_string());
            };
            let summary = match &out {
                Some(path) => write_dump_file(store, path, progress).await?,
                None => write_dump(store, &mut tokio::io::stdout(), progress).await?,
            };
            bar.finish_and_clear();
            eprintln!(
                "dumped {} rows ({}){}",
                summary.rows,
                indicatif::HumanBytes(summary.bytes),
                out.map(|p| format!(" to {}", p.display())).unwrap_or_default()
            );
        }
        DbCommand::Restore { file, force, .. } => {
            let n = restore_dump_file(store, &file, force).await?;
            eprintln!("restored {n} rows from {}", file.display());
        }
    }
    Ok(())
}
