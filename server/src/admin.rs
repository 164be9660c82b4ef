//! The admin API (the console's data source), behind a bearer token compared
//! in constant time (checked once, by the gate in front of every /admin route
//! in lib.rs): status, block and unblock uploads, a streamed database
//! dump, a server-sent event stream, and the operator's actions: retry
//! failed uploads, redrive the dead-letter queue, pause and resume the
//! workers, size the local pool; the uploads listing and one upload in
//! full; the server's recent warnings and errors; the database's backups
//! (list, take one, restore one).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use flipstack_core::domain::{UploadId, now_millis};
use flipstack_core::queue::QueueError;
use flipstack_core::status::{DesiredRequest, POOL_DESIRED_KEY, UploadDetail, UploadListing, WORKERS_PAUSED};
use flipstack_core::store::dump::write_dump;
use flipstack_core::store::{StoreError, UploadFilter};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;
use warp::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, WWW_AUTHENTICATE};
use warp::http::{HeaderValue, StatusCode};
use warp::hyper::Body;

use crate::state::{AdminEvent, AppState, UPLOADS_BLOCKED};
use crate::web::{Resp, json, plain};

/// True when the `Authorization` header carries the admin token.
pub fn authorized(state: &AppState, header: Option<&str>) -> bool {
    token_matches(&state.admin_token, header)
}

fn token_matches(admin_token: &str, header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let expected = admin_token.as_bytes();
    let given = given.trim().as_bytes();
    given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

pub fn unauthorized() -> Resp {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "missing or wrong admin token; send Authorization: Bearer <token> (see <data>/admin-token or FLIPSTACK_ADMIN_TOKEN)"}),
    );
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"flipstack admin\""));
    r
}

pub async fn status(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let blocked = state.blocked.get(&state.services).await;
    let status = flipstack_core::status::collect(&state.services, blocked, state.started_at.elapsed().as_secs()).await;
    Ok(json(StatusCode::OK, &status))
}

pub async fn set_blocked(state: Arc<AppState>, blocked: bool) -> Result<Resp, Infallible> {
    let value = if blocked { "true" } else { "false" };
    if let Err(e) = state.services.store.set_setting(UPLOADS_BLOCKED, value, now_millis()).await {
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": format!("could not change the setting: {e}")}),
        ));
    }
    state.blocked.set_local(blocked).await;
    state.services.metrics.uploads_blocked.set(blocked as i64);
    state.emit(AdminEvent::Blocked { at: now_millis(), blocked });
    tracing::info!(blocked, "uploads {} by an operator", if blocked { "blocked" } else { "unblocked" });
    Ok(json(StatusCode::OK, &json!({"blocked": blocked})))
}

/// The database as SQL, streamed as it is read from one consistent snapshot.
pub async fn dump(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let services = state.services.clone();
    tokio::spawn(async move {
        let mut writer = writer;
        match write_dump(services.store.as_ref(), &mut writer, |_, _| {}).await {
            Ok(s) => tracing::info!(rows = s.rows, bytes = s.bytes, "database dump streamed"),
            // The reader sees the stream end without the closing line, so a
            // restore refuses the partial dump.
            Err(e) => tracing::error!(error = %e, "database dump failed part-way"),
        }
    });
    let stream = tokio_util::io::ReaderStream::new(reader);
    let mut r = warp::http::Response::new(Body::wrap_stream(stream));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/sql; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let name = format!("attachment; filename=\"flipstack-{}.sql\"", now_millis() / 1000);
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

pub async fn events(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let rx = state.events.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(event) => {
                let name = match &event {
                    AdminEvent::Job { .. } => "job",
                    AdminEvent::GalleryRead { .. } => "read",
                    AdminEvent::Blocked { .. } => "blocked",
                };
                warp::sse::Event::default().event(name).json_data(&event).unwrap_or_default()
            }
            Err(RecvError::Lagged(n)) => {
                warp::sse::Event::default().comment(format!("{n} events skipped: the reader was too slow"))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(sse), rx))
    });
    let reply = warp::sse::reply(warp::sse::keep_alive().stream(stream));
    Ok(warp::reply::Reply::into_response(reply))
}

/// `GET /metrics`: for this machine's own scrapers, or anyone with the token.
pub async fn metrics(
    state: Arc<AppState>,
    remote: Option<SocketAddr>,
    auth: Option<String>,
) -> Result<Resp, Infallible> {
    Ok(metrics_page(&state.services.metrics, &state.admin_token, remote, auth.as_deref()))
}

/// The metrics page of [`metrics`], also what a worker serves on its own address.
pub fn metrics_page(
    metrics: &flipstack_core::metrics::Metrics,
    admin_token: &str,
    remote: Option<SocketAddr>,
    auth: Option<&str>,
) -> Resp {
    let local = remote.is_some_and(|a| a.ip().is_loopback());
    if !local && !token_matches(admin_token, auth) {
        return unauthorized();
    }
    let mut r = plain(StatusCode::OK, "");
    *r.body_mut() = Body::from(metrics.render());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// `POST /admin/api/uploads/retry` (every failed upload) and
/// `POST /admin/api/uploads/{id}/retry` (one): back to pending, sent again.
pub async fn retry(state: Arc<AppState>, one: Option<String>) -> Result<Resp, Infallible> {
    let ids = match one {
        Some(id) => match id.parse::<UploadId>() {
            Ok(id) => vec![id],
            Err(_) => {
                return Ok(json(StatusCode::BAD_REQUEST, &json!({"error": format!("{id:?} is not an upload id")})));
            }
        },
        None => {
            let failed = UploadFilter { state: "failed".into(), ..Default::default() };
            match state.services.store.find_uploads(&failed, RETRY_ALL_AT_MOST).await {
                Ok(rows) => rows.into_iter().map(|(u, _)| u.id).collect(),
                Err(e) => return Ok(store_down("the failed uploads could not be read", &e)),
            }
        }
    };
    match retry_uploads(&state, &ids, true).await {
        Ok(retried) => {
            tracing::info!(retried = retried.len(), "failed uploads retried by an operator");
            Ok(json(StatusCode::OK, &json!({"retried": retried})))
        }
        Err(e) => Ok(store_down("the retry stopped part-way (run it again for the rest)", &e)),
    }
}

/// A retry all takes this many uploads at most; the rest on the next.
const RETRY_ALL_AT_MOST: u32 = 1000;

/// Sets each failed upload of `ids` back to pending and, with `send`, sends
/// its job again; answers those that were failed.
async fn retry_uploads(state: &AppState, ids: &[UploadId], send: bool) -> Result<Vec<UploadId>, StoreError> {
    let services = &state.services;
    let mut retried = Vec::new();
    for &id in ids {
        let now = now_millis();
        let Some(change) = services.store.retry_upload(id, now).await? else {
            continue;
        };
        services.gallery.invalidate(&change.person_hash, &change.receipt).await;
        // A send that fails is made again by the reconciler (SQS).
        if send && let Err(e) = services.queue.enqueue(id).await {
            tracing::warn!(error = %e, upload = %id, "a retried job was not sent; the reconciler sends it later");
        }
        retried.push(id);
    }
    Ok(retried)
}

fn store_down(what: &str, e: &StoreError) -> Resp {
    json(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": format!("{what}: {e}")}))
}

/// `POST /admin/api/queue/redrive`: the dead-letter queue's messages go back
/// to the queue and their uploads back to pending.
pub async fn redrive(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let moved = match state.services.queue.redrive(RETRY_ALL_AT_MOST).await {
        Ok(ids) => ids,
        Err(e @ QueueError::Config { .. }) => return Ok(json(StatusCode::CONFLICT, &json!({"error": e.to_string()}))),
        Err(e) => return Ok(json(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": e.to_string()}))),
    };
    // Their uploads were marked failed when they reached the dead-letter queue;
    // each is retried once (an upload may have had several messages), and its
    // moved message is the job: none is sent again.
    let mut uploads = moved.clone();
    uploads.sort_unstable();
    uploads.dedup();
    match retry_uploads(&state, &uploads, false).await {
        Ok(retried) => {
            tracing::info!(moved = moved.len(), retried = retried.len(), "dead-letter queue redriven by an operator");
            Ok(json(StatusCode::OK, &json!({"redriven": moved, "retried": retried})))
        }
        Err(e) => Ok(store_down("the messages were moved back, but their uploads were not all set to pending", &e)),
    }
}

/// `POST /admin/api/workers/pause` and `…/resume`: every worker finishes the
/// job in hand and claims nothing new until resumed.
pub async fn set_paused(state: Arc<AppState>, paused: bool) -> Result<Resp, Infallible> {
    let value = if paused { "true" } else { "false" };
    if let Err(e) = state.services.store.set_setting(WORKERS_PAUSED, value, now_millis()).await {
        return Ok(store_down("could not change the setting", &e));
    }
    tracing::info!(paused, "workers {} by an operator", if paused { "paused" } else { "resumed" });
    Ok(json(StatusCode::OK, &json!({"paused": paused})))
}

/// `POST /admin/api/pool/desired?count=N`: the local pool of `flipstack up`
/// runs N workers (within its min and max), then scales on from there.
pub async fn set_pool_desired(state: Arc<AppState>, query: HashMap<String, String>) -> Result<Resp, Infallible> {
    let Some(count) = query.get("count").and_then(|c| c.parse::<u32>().ok()) else {
        return Ok(json(StatusCode::BAD_REQUEST, &json!({"error": "give the number of workers as ?count=N"})));
    };
    let status = flipstack_core::status::collect(&state.services, false, 0).await;
    let Some(pool) = status.pool else {
        return Ok(json(
            StatusCode::CONFLICT,
            &json!({"error": "there is no local worker pool (it runs with `flipstack up`); on AWS set the group's desired capacity"}),
        ));
    };
    if count < pool.min || count > pool.max {
        return Ok(json(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("the pool takes {} to {} workers, not {count}", pool.min, pool.max)}),
        ));
    }
    let request = DesiredRequest { desired: count, at: now_millis() };
    let stored = serde_json::to_string(&request).unwrap_or_default();
    if let Err(e) = state.services.store.set_setting(POOL_DESIRED_KEY, &stored, request.at).await {
        return Ok(store_down("could not store the pool's size", &e));
    }
    tracing::info!(count, "worker pool size set by an operator");
    Ok(json(StatusCode::OK, &json!({"desired": count})))
}

/// The newest uploads an operator's listing shows at most.
const LISTING_AT_MOST: u32 = 500;
/// With a person filter, this many of the newest uploads are looked through.
const PERSON_SCAN: u32 = 5000;

/// `GET /admin/api/uploads?state=&format=&reason=&person=&limit=`: the
/// newest uploads that match; `person` is the start of the owner's hash.
pub async fn uploads(state: Arc<AppState>, query: HashMap<String, String>) -> Result<Resp, Infallible> {
    let field = |k: &str| query.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let filter = UploadFilter { state: field("state"), format: field("format"), reason: field("reason") };
    let person = field("person").to_ascii_lowercase();
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100).clamp(1, LISTING_AT_MOST);
    let scan = if person.is_empty() { limit } else { PERSON_SCAN };
    let rows = match state.services.store.find_uploads(&filter, scan).await {
        Ok(rows) => rows,
        Err(e) => return Ok(store_down("the uploads could not be read", &e)),
    };
    let listing: Vec<UploadListing> = rows
        .into_iter()
        .filter(|(_, hash)| hash.starts_with(&person))
        .take(limit as usize)
        .map(|(upload, person_hash)| UploadListing { upload, person_hash })
        .collect();
    Ok(json(StatusCode::OK, &listing))
}

/// `GET /admin/api/uploads/{id}`: one upload with its events.
pub async fn upload_detail(state: Arc<AppState>, id: String) -> Result<Resp, Infallible> {
    let Ok(id) = id.parse::<UploadId>() else {
        return Ok(json(StatusCode::BAD_REQUEST, &json!({"error": format!("{id:?} is not an upload id")})));
    };
    let store = &state.services.store;
    let upload = match store.upload(id).await {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(json(StatusCode::NOT_FOUND, &json!({"error": format!("there is no upload {id}")}))),
        Err(e) => return Ok(store_down("the upload could not be read", &e)),
    };
    let events = match store.events_for_upload(id).await {
        Ok(e) => e,
        Err(e) => return Ok(store_down("the upload's events could not be read", &e)),
    };
    let person_hash = events.iter().find_map(|e| e.person_hash.clone()).unwrap_or_default();
    Ok(json(StatusCode::OK, &UploadDetail { upload, person_hash, events }))
}

/// `GET /admin/api/logs`: this server's recent warnings and errors, oldest first.
pub async fn logs(_state: Arc<AppState>) -> Result<Resp, Infallible> {
    Ok(json(StatusCode::OK, &crate::logbook::recent()))
}

/// `GET /admin/api/backups`: the backups in the blob store, newest first.
pub async fn backups(state: Arc<AppState>) -> Result<Resp, Infallible> {
    match flipstack_core::backup::list(&state.services).await {
        Ok(list) => Ok(json(StatusCode::OK, &list)),
        Err(e) => Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": format!("the backups could not be listed: {e}")}),
        )),
    }
}

/// `POST /admin/api/backups`: a backup now, then the oldest beyond `backup_keep` go.
pub async fn back_up_now(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let services = &state.services;
    let done = match flipstack_core::backup::take(services).await {
        Ok(done) => done,
        Err(e) => return Ok(backup_failed(&e)),
    };
    tracing::info!(backup = %done.name, rows = done.rows, bytes = done.bytes, "database backed up by an operator");
    if let Err(e) = flipstack_core::backup::prune(services, services.config.backup_keep).await {
        tracing::warn!(error = %e, "could not delete the oldest backups; the next backup tries again");
    }
    Ok(json(StatusCode::OK, &done))
}

/// `POST /admin/api/backups/{name}/restore`: the database replaced by that backup.
pub async fn restore_backup(state: Arc<AppState>, name: String) -> Result<Resp, Infallible> {
    let name = match flipstack_core::backups::BackupName::parse(&name) {
        Ok(name) => name,
        Err(e) => return Ok(json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))),
    };
    tracing::warn!(backup = %name, "an operator restores the database from a backup");
    match flipstack_core::backup::restore(&state.services, &name).await {
        Ok(done) => Ok(json(StatusCode::OK, &done)),
        Err(e) => {
            tracing::warn!(error = %e, backup = %name, "the restore did not happen");
            Ok(backup_failed(&e))
        }
    }
}

fn backup_failed(e: &flipstack_core::backup::BackupError) -> Resp {
    use flipstack_core::backup::BackupError;
    let status = match e {
        BackupError::NotFound(_) => StatusCode::NOT_FOUND,
        BackupError::Unreadable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        e if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, &json!({"error": e.to_string()}))
}
