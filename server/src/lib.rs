//! flipstack's HTTP server (warp): the pages people use, uploads, galleries,
//! images, health, metrics and the admin API. It talks to the worker only
//! through the metadata store and the job queue.

pub mod admin;
mod assets;
pub mod health;
pub mod images;
pub mod listener;
pub mod logbook;
mod multipart;
pub mod notices;
pub mod pages;
pub mod rules;
pub mod session;
pub mod shield;
pub mod signin;
pub mod state;
mod tasks;
pub mod upload;
pub mod views;
pub mod web;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use flipstack_core::Services;
use flipstack_core::domain::now_millis;
use rand::Rng;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use warp::Filter;
use warp::http::StatusCode;

use crate::state::{AppState, BlockFlag, COOKIE_SECRET, UPLOADS_BLOCKED};
use crate::web::Resp;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source}. Is another flipstack (or something else) using it? Pick another address with --listen or FLIPSTACK_LISTEN."
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the database did not answer while starting: {0}")]
    Store(#[from] flipstack_core::store::StoreError),
    #[error("{0}")]
    Setup(String),
}

/// A server that is running; dropping it does not stop it, [`Self::shutdown`] does.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub public_url: String,
    pub admin_token: String,
    stop: Option<watch::Sender<bool>>,
    done: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops taking connections, lets requests in flight finish (for at most
    /// `grace`; idle keep-alive connections of clients would otherwise hold it
    /// open), stops the background tasks.
    pub async fn shutdown_within(mut self, grace: std::time::Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if tokio::time::timeout(grace, &mut self.done).await.is_err() {
            tracing::warn!(?grace, "connections were still open after the grace period; closing them");
            self.done.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    /// [`Self::shutdown_within`] thirty seconds: long enough for an upload in flight.
    pub async fn shutdown(self) {
        self.shutdown_within(std::time::Duration::from_secs(30)).await
    }

    /// Runs until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down the server: finishing requests in flight");
        self.shutdown().await;
    }
}

/// The admin token: the configured one, or one made once and kept in
/// `<data>/admin-token` (readable by its owner only).
pub fn admin_token(services: &Services) -> Result<String, ServerError> {
    if let Some(token) = services.config.existing_admin_token() {
        return Ok(token);
    }
    let path = services.config.admin_token_path();
    let bytes: [u8; 32] = rand::rng().random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &token)
        .map_err(|e| ServerError::Setup(format!("cannot write the admin token to {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "made an admin token");
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

/// Starts the server on `addr` (port 0 picks a free one) with its background tasks.
pub async fn start(services: Arc<Services>, addr: SocketAddr) -> Result<RunningServer, ServerError> {
    let now = now_millis();
    let fresh_secret: [u8; 32] = rand::rng().random();
    let secret_hex = services.store.setting_or_init(COOKIE_SECRET, &hex::encode(fresh_secret), now).await?;
    let secret =
        hex::decode(secret_hex.trim()).map_err(|_| ServerError::Setup("the stored cookie secret is not hex".into()))?;
    let blocked = services.store.setting(UPLOADS_BLOCKED).await?.as_deref() == Some("true");
    let admin_token = admin_token(&services)?;
    let spool = prepare_spool(&services.config.data_dir)?;
    let (events, _) = broadcast::channel(1024);
    let (stop, stopped) = watch::channel(false);
    let (signin_mail, signin_mail_queue) = mpsc::channel(1024);
    let connections = Arc::new(listener::ConnectionCounts::new(services.metrics.clone()));
    let state = Arc::new(AppState {
        services: services.clone(),
        secret,
        admin_token: admin_token.clone(),
        blocked: BlockFlag::new(blocked),
        events,
        verify_slots: Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        screen_slots: Semaphore::new(1),
        stopping: stopped.clone(),
        spool,
        owners: moka::sync::Cache::new(100_000),
        started_at: Instant::now(),
        public_url: std::sync::OnceLock::new(),
        rendered: state::rendered_cache(),
        limiter: flipstack_core::limits::RateLimiter::new(services.cache.clone()),
        upload_slots: shield::UploadSlots::default(),
        spool_budget: shield::SpoolBudget::new(services.config.spool_budget_bytes),
        connections: connections.clone(),
        signin_mail,
        signin_mail_queue: std::sync::Mutex::new(Some(signin_mail_queue)),
    });
    let tcp = bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    let bound = tcp.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    let limits = listener::ListenerLimits::from_config(&services.config);
    let serving = listener::serve(tcp, warp::service(routes(state.clone())), limits, connections, stopped);
    let public = services.config.public_url.clone().unwrap_or_else(|| format!("http://{bound}"));
    let _ = state.public_url.set(public.trim_end_matches('/').to_owned());
    let done = tokio::spawn(serving);
    let tasks = tasks::spawn_all(state.clone());
    tracing::info!(addr = %bound, database = %services.store.backend(), cache = %services.cache.kind(), blobs = %services.blobs.kind(), queue = %services.queue.kind(), "server listening");
    Ok(RunningServer {
        addr: bound,
        public_url: state.public_url().to_owned(),
        admin_token,
        stop: Some(stop),
        done,
        tasks,
    })
}

/// `GET /metrics` alone, for a worker process: its own numbers on an address
/// of its own, behind the listener's limits and the server's rule (this
/// machine's scrapers, or the admin token). Serves until `stop` is dropped
/// or sent; the returned task ends when its connections have.
pub async fn serve_metrics(
    services: Arc<Services>,
    addr: SocketAddr,
) -> Result<(SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>), ServerError> {
    let admin_token = admin_token(&services)?;
    let metrics = services.metrics.clone();
    let routes = warp::path!("metrics")
        .and(warp::get())
        .and(listener::remote())
        .and(auth())
        .map(move |remote, auth: Option<String>| admin::metrics_page(&metrics, &admin_token, remote, auth.as_deref()))
        .or(warp::any().map(|| web::plain(StatusCode::NOT_FOUND, "Only GET /metrics is served here.")))
        .unify()
        .map(web::security_headers);
    let tcp = bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    let bound = tcp.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    let (stop, stopped) = watch::channel(false);
    let counts = Arc::new(listener::ConnectionCounts::new(services.metrics.clone()));
    let limits = listener::ListenerLimits::from_config(&services.config);
    let task = tokio::spawn(listener::serve(tcp, warp::service(routes), limits, counts, stopped));
    Ok((bound, stop, task))
}

/// A listening socket with address reuse, so a restarted server binds at once.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Uploads are spooled in a folder of this process's own while they are
/// checked. Servers may share a data folder (`flipstack up` restarts one
/// beside the others), so each holds a lock on its folder, and a starting
/// server clears only the folders no live server holds: the leftovers of a
/// crash, never another server's uploads in flight.
fn prepare_spool(data_dir: &Path) -> Result<state::Spool, ServerError> {
    let root = data_dir.join("spool");
    let setup = |what: &str, path: &Path, e: std::io::Error| {
        ServerError::Setup(format!("cannot {what} {}: {e}; check that the data folder is writable", path.display()))
    };
    std::fs::create_dir_all(&root).map_err(|e| setup("create", &root, e))?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                // Spooled by a server from before per-process folders.
                flipstack_core::error::ignore_failure("removing a left-over spool file", std::fs::remove_file(&path));
                continue;
            }
            let being_made = entry.file_name().to_string_lossy().starts_with('.');
            let unowned = if being_made {
                is_stale(&path)
            } else {
                // A folder's lock is free once its server has ended, however it ended.
                std::fs::File::open(path.join(SPOOL_LOCK)).is_ok_and(|lock| lock.try_lock().is_ok())
                    || !path.join(SPOOL_LOCK).exists()
            };
            if unowned {
                flipstack_core::error::ignore_failure(
                    "removing a crashed server's spool",
                    std::fs::remove_dir_all(&path),
                );
            }
        }
    }
    // Made under a hidden name and renamed once locked, so that no other
    // server ever sees this folder with its lock free.
    let name = format!("{}-{}", std::process::id(), hex::encode(rand::rng().random::<[u8; 4]>()));
    let making = root.join(format!(".{name}"));
    std::fs::create_dir(&making).map_err(|e| setup("create", &making, e))?;
    let lock = std::fs::File::create(making.join(SPOOL_LOCK)).map_err(|e| setup("create", &making, e))?;
    lock.try_lock().map_err(|e| setup("lock", &making, std::io::Error::other(e.to_string())))?;
    let dir = root.join(name);
    std::fs::rename(&making, &dir).map_err(|e| setup("rename", &making, e))?;
    Ok(state::Spool { dir, _lock: lock })
}

const SPOOL_LOCK: &str = ".lock";

/// A folder being made is another server's only for the moment it takes to
/// lock and rename it.
fn is_stale(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(60))
}

fn with_state(state: Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Who is asking (session and CSRF seed from the cookies). When the database
/// cannot tell, the request is rejected and answered with the 503 page.
fn visitor(state: Arc<AppState>) -> impl Filter<Extract = (session::Visitor,), Error = warp::Rejection> + Clone {
    with_state(state).and(warp::header::optional::<String>("cookie")).and_then(
        |state: Arc<AppState>, cookie: Option<String>| async move {
            session::Visitor::resolve(&state, cookie.as_deref()).await.map_err(|e| {
                tracing::warn!(error = %e, "could not look up a session");
                warp::reject::custom(DatabaseUnavailable)
            })
        },
    )
}

#[derive(Debug)]
struct DatabaseUnavailable;
impl warp::reject::Reject for DatabaseUnavailable {}

fn auth() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
}

/// Small urlencoded forms (sign-in, logout), at most 16 KiB, with or
/// without a Content-Length (an empty POST is an empty form), sent within
/// the header timeout (a slow body holds nothing for long).
fn small_form(
    within: std::time::Duration,
) -> impl Filter<Extract = (HashMap<String, String>,), Error = warp::Rejection> + Clone {
    warp::body::stream().and_then(move |body| async move {
        match tokio::time::timeout(within, collect_small_form(body)).await {
            Ok(form) => form,
            Err(_) => Err(warp::reject::custom(FormTooSlow)),
        }
    })
}

#[derive(Debug)]
struct FormTooSlow;
impl warp::reject::Reject for FormTooSlow {}

async fn collect_small_form<S, B>(body: S) -> Result<HashMap<String, String>, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut body = Box::pin(body);
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::reject())?;
        buf.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        if buf.len() > 16 * 1024 {
            return Err(warp::reject::custom(FormTooLarge));
        }
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&buf).unwrap_or_default();
    Ok(pairs.into_iter().collect())
}

#[derive(Debug)]
struct FormTooLarge;
impl warp::reject::Reject for FormTooLarge {}

pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let s = || with_state(state.clone());
    let form_within = std::time::Duration::from_secs(state.services.config.header_timeout_secs.max(10));
    let index = warp::path::end().and(warp::get()).and_then(pages::index);
    let form = warp::path!("form").and(warp::get()).and(s()).and(visitor(state.clone())).and_then(pages::form);
    let upload = warp::path!("upload")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(shield::client(state.clone()))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("accept"))
        .and(warp::body::stream())
        .and_then(upload::upload);
    let gallery = warp::path!("gallery")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(pages::gallery);
    let signin =
        warp::path!("signin").and(warp::get()).and(s()).and(visitor(state.clone())).and_then(pages::signin_form);
    let signin_post = warp::path!("signin")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(shield::client(state.clone()))
        .and(small_form(form_within))
        .and_then(pages::signin_submit);
    let link = warp::path!("signin" / "link")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(pages::signin_link);
    let link_post = warp::path!("signin" / "link")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(small_form(form_within))
        .and_then(pages::signin_link_submit);
    let delete_confirm = warp::path!("uploads" / String / "delete")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|id, state, cookie, query| pages::delete_confirm(state, id, cookie, query));
    let delete_submit = warp::path!("uploads" / String / "delete")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and(small_form(form_within))
        .and_then(|id, state, cookie, accept, form| pages::delete_submit(state, id, cookie, accept, form));
    let gallery_events = warp::path!("gallery" / "events")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and_then(pages::gallery_events);
    let viewer = warp::path!("uploads" / String / "view")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|id, state, cookie, query| pages::viewer(state, id, cookie, query));
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(small_form(form_within))
        .and_then(pages::logout);
    let images = warp::path!("images" / String / String)
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::header::optional::<String>("if-none-match"))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(|id, variant, state, cookie, inm, query: HashMap<String, String>| {
            images::image(state, id, variant, cookie, inm, query.contains_key("download"))
        });
    // The links in completion notices: no session needed, the link's own
    // signature is the proof (so no CSRF token either; see notices.rs).
    let unsubscribe = warp::path!("notices" / "unsubscribe")
        .and(warp::get())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(pages::unsubscribe_page);
    let unsubscribe_post = warp::path!("notices" / "unsubscribe")
        .and(warp::post())
        .and(s())
        .and(visitor(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(pages::unsubscribe_submit);
    let notices = unsubscribe.or(unsubscribe_post).unify().boxed();
    let healthz = health::routes(state.clone());
    let metrics =
        warp::path!("metrics").and(warp::get()).and(s()).and(listener::remote()).and(auth()).and_then(admin::metrics);
    let assets = warp::path!("assets" / String).and(warp::get()).and_then(assets::serve);

    // The admin gate, in front of every /admin route: a request without the
    // token gets its 401 here; with it, the gate steps aside (not found) and
    // the routes below answer, so no admin handler checks the token itself.
    let admin_gate =
        warp::path("admin").and(s()).and(auth()).and_then(|state: Arc<AppState>, auth: Option<String>| async move {
            if admin::authorized(&state, auth.as_deref()) {
                Err(warp::reject::not_found())
            } else {
                Ok::<_, warp::Rejection>(admin::unauthorized())
            }
        });
    let admin_status = warp::path!("admin" / "api" / "status").and(warp::get()).and(s()).and_then(admin::status);
    let admin_block = warp::path!("admin" / "api" / "uploads" / "block")
        .and(warp::post())
        .and(s())
        .and_then(|state| admin::set_blocked(state, true));
    let admin_unblock = warp::path!("admin" / "api" / "uploads" / "unblock")
        .and(warp::post())
        .and(s())
        .and_then(|state| admin::set_blocked(state, false));
    let admin_dump = warp::path!("admin" / "api" / "dump").and(warp::get()).and(s()).and_then(admin::dump);
    let admin_events = warp::path!("admin" / "api" / "events").and(warp::get()).and(s()).and_then(admin::events);
    let admin_retry_all = warp::path!("admin" / "api" / "uploads" / "retry")
        .and(warp::post())
        .and(s())
        .and_then(|state| admin::retry(state, None));
    let admin_retry_one = warp::path!("admin" / "api" / "uploads" / String / "retry")
        .and(warp::post())
        .and(s())
        .and_then(|id, state| admin::retry(state, Some(id)));
    let admin_redrive =
        warp::path!("admin" / "api" / "queue" / "redrive").and(warp::post()).and(s()).and_then(admin::redrive);
    let admin_pause = warp::path!("admin" / "api" / "workers" / "pause")
        .and(warp::post())
        .and(s())
        .and_then(|state| admin::set_paused(state, true));
    let admin_resume = warp::path!("admin" / "api" / "workers" / "resume")
        .and(warp::post())
        .and(s())
        .and_then(|state| admin::set_paused(state, false));
    let admin_pool = warp::path!("admin" / "api" / "pool" / "desired")
        .and(warp::post())
        .and(s())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(admin::set_pool_desired);
    let admin_uploads = warp::path!("admin" / "api" / "uploads")
        .and(warp::get())
        .and(s())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(admin::uploads);
    let admin_upload = warp::path!("admin" / "api" / "uploads" / String)
        .and(warp::get())
        .and(s())
        .and_then(|id, state| admin::upload_detail(state, id));
    let admin_logs = warp::path!("admin" / "api" / "logs").and(warp::get()).and(s()).and_then(admin::logs);
    let admin_backups = warp::path!("admin" / "api" / "backups").and(warp::get()).and(s()).and_then(admin::backups);
    let admin_back_up =
        warp::path!("admin" / "api" / "backups").and(warp::post()).and(s()).and_then(admin::back_up_now);
    let admin_restore = warp::path!("admin" / "api" / "backups" / String / "restore")
        .and(warp::post())
        .and(s())
        .and_then(|name, state| admin::restore_backup(state, name));
    let admin_other = warp::path("admin")
        .map(|| web::json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "no such admin route"})));

    let pages =
        index.or(form).unify().or(upload).unify().or(gallery).unify().or(signin).unify().or(signin_post).unify();
    let pages = pages
        .or(link)
        .unify()
        .or(link_post)
        .unify()
        .or(logout)
        .unify()
        .or(delete_confirm)
        .unify()
        .or(delete_submit)
        .unify()
        .or(viewer)
        .unify()
        .or(gallery_events)
        .unify()
        .or(images)
        .unify();
    let pages = pages.boxed();
    let ops = healthz.or(metrics).unify().or(assets).unify().boxed();
    // Boxed one by one: a long chain of warp filters is a type that takes
    // the compiler minutes; boxed ones chain in constant size.
    let admin = [
        admin_gate.boxed(),
        admin_status.boxed(),
        admin_block.boxed(),
        admin_unblock.boxed(),
        admin_dump.boxed(),
        admin_events.boxed(),
        admin_retry_all.boxed(),
        admin_retry_one.boxed(),
        admin_redrive.boxed(),
        admin_pause.boxed(),
        admin_resume.boxed(),
        admin_pool.boxed(),
        admin_uploads.boxed(),
        admin_upload.boxed(),
        admin_logs.boxed(),
        admin_backups.boxed(),
        admin_back_up.boxed(),
        admin_restore.boxed(),
        admin_other.boxed(),
    ]
    .into_iter()
    .reduce(|all, next| all.or(next).unify().boxed())
    .expect("admin routes");
    let fallback_state = state.clone();
    let metrics = state.services.metrics.clone();
    pages
        .or(notices)
        .unify()
        .or(ops)
        .unify()
        .or(admin)
        .unify()
        .recover(move |rejection| recover(fallback_state.clone(), rejection))
        .unify()
        .map(web::security_headers)
        .with(warp::log::custom(move |info| {
            let status = info.status().as_u16();
            metrics.observe_request(route_name(info.path()), status, info.elapsed().as_secs_f64());
            tracing::debug!(method = %info.method(), path = info.path(), status, ms = info.elapsed().as_secs_f64() * 1000.0, "request");
        }))
}

/// The route a path belongs to, as the request histogram's label: its
/// pattern with the variable parts named, or `other` (so strangers' paths
/// never make new series).
pub fn route_name(path: &str) -> &'static str {
    let mut parts = [""; 6];
    let mut n = 0;
    for segment in path.trim_start_matches('/').split('/') {
        if n == parts.len() {
            return "other";
        }
        parts[n] = segment;
        n += 1;
    }
    match &parts[..n] {
        [""] => "/",
        ["form"] => "/form",
        ["upload"] => "/upload",
        ["gallery"] => "/gallery",
        ["gallery", "events"] => "/gallery/events",
        ["signin"] => "/signin",
        ["signin", "link"] => "/signin/link",
        ["logout"] => "/logout",
        ["notices", "unsubscribe"] => "/notices/unsubscribe",
        ["uploads", _, "delete"] => "/uploads/{id}/delete",
        ["uploads", _, "view"] => "/uploads/{id}/view",
        ["images", _, _] => "/images/{id}/{kind}",
        ["assets", _] => "/assets/{name}",
        ["metrics"] => "/metrics",
        ["livez"] => "/livez",
        ["readyz"] => "/readyz",
        ["healthz"] => "/healthz",
        ["admin", "api", "status"] => "/admin/api/status",
        ["admin", "api", "dump"] => "/admin/api/dump",
        ["admin", "api", "events"] => "/admin/api/events",
        ["admin", "api", "logs"] => "/admin/api/logs",
        ["admin", "api", "backups"] => "/admin/api/backups",
        ["admin", "api", "backups", _, "restore"] => "/admin/api/backups/{name}/restore",
        ["admin", "api", "queue", "redrive"] => "/admin/api/queue/redrive",
        ["admin", "api", "workers", "pause"] => "/admin/api/workers/pause",
        ["admin", "api", "workers", "resume"] => "/admin/api/workers/resume",
        ["admin", "api", "pool", "desired"] => "/admin/api/pool/desired",
        ["admin", "api", "uploads"] => "/admin/api/uploads",
        ["admin", "api", "uploads", "block"] => "/admin/api/uploads/block",
        ["admin", "api", "uploads", "unblock"] => "/admin/api/uploads/unblock",
        ["admin", "api", "uploads", "retry"] => "/admin/api/uploads/retry",
        ["admin", "api", "uploads", _, "retry"] => "/admin/api/uploads/{id}/retry",
        ["admin", "api", "uploads", _] => "/admin/api/uploads/{id}",
        _ => "other",
    }
}

/// Pages for requests no route took: a clear answer, never warp's default text.
async fn recover(state: Arc<AppState>, rejection: warp::Rejection) -> Result<Resp, Infallible> {
    if rejection.find::<DatabaseUnavailable>().is_some() {
        return Ok(pages::unavailable_page(&state));
    }
    let nobody = session::Visitor::resolve_offline();
    let (status, title, text) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "Page not found", "There is no page at this address.")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "This address does not take that kind of request.")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() || rejection.find::<FormTooLarge>().is_some()
    {
        (StatusCode::PAYLOAD_TOO_LARGE, "Too large", "What was sent is larger than this address takes.")
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form was not sent the way this page expects. Go back, reload and try again.",
        )
    } else if rejection.find::<FormTooSlow>().is_some() {
        (StatusCode::REQUEST_TIMEOUT, "Too slow", "The form came in too slowly and was stopped. Please send it again.")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "Bad request", "The request did not say how long it is.")
    } else {
        tracing::debug!(?rejection, "request rejected");
        (StatusCode::BAD_REQUEST, "Bad request", "This request could not be understood.")
    };
    Ok(web::message(&state, &nobody, status, title, text, Some(("/form", "Go to the upload page"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_by_their_pattern_and_strangers_paths_are_other() {
        assert_eq!(route_name("/"), "/");
        assert_eq!(route_name("/gallery"), "/gallery");
        assert_eq!(route_name("/notices/unsubscribe"), "/notices/unsubscribe");
        assert_eq!(route_name("/uploads/0193abc/view"), "/uploads/{id}/view");
        assert_eq!(route_name("/images/0193abc/flipped-screen"), "/images/{id}/{kind}");
        assert_eq!(route_name("/admin/api/uploads/0193abc/retry"), "/admin/api/uploads/{id}/retry");
        assert_eq!(route_name("/admin/api/uploads/retry"), "/admin/api/uploads/retry");
        assert_eq!(
            route_name("/admin/api/backups/flipstack-20261207T181500Z.sql/restore"),
            "/admin/api/backups/{name}/restore"
        );
        assert_eq!(route_name("/wp-login.php"), "other");
        assert_eq!(route_name("/a/b/c/d/e/f/g/h"), "other");
        assert_eq!(route_name("/gallery/"), "other");
    }

    #[test]
    fn a_starting_server_keeps_a_live_servers_spool_and_clears_a_dead_ones() {
        let data = tempfile::tempdir().unwrap();
        let running = prepare_spool(data.path()).unwrap();
        let in_flight = running.dir.join("upload-in-flight");
        std::fs::write(&in_flight, b"half an upload").unwrap();
        let crashed = prepare_spool(data.path()).unwrap();
        let leftover = crashed.dir.join("upload-of-a-crash");
        std::fs::write(&leftover, b"never finished").unwrap();
        std::fs::write(data.path().join("spool").join("flat-leftover"), b"old layout").unwrap();
        let crashed_dir = crashed.dir.clone();
        drop(crashed);

        let started = prepare_spool(data.path()).unwrap();

        assert!(in_flight.exists(), "a running server's upload was removed");
        assert!(!crashed_dir.exists(), "a dead server's spool was left behind");
        assert!(!data.path().join("spool").join("flat-leftover").exists());
        assert!(started.dir.is_dir() && started.dir != running.dir);
    }
}
