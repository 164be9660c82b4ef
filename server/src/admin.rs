//! The admin API (the console's data source), behind a bearer token compared
//! in constant time (checked once, by the gate in front of every /admin route
//! in lib.rs): status, block and unblock uploads, a streamed database
//! dump, and a server-sent event stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use flipstack_core::domain::now_millis;
use flipstack_core::store::dump::write_dump;
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
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let expected = state.admin_token.as_bytes();
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
    let local = remote.is_some_and(|a| a.ip().is_loopback());
    if !local && !authorized(&state, auth.as_deref()) {
        return Ok(unauthorized());
    }
    let mut r = plain(StatusCode::OK, "");
    *r.body_mut() = Body::from(state.services.metrics.render());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}
