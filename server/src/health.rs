//! Health, in two kinds that must not be confused:
//!
//! - `GET /livez` — liveness: the process runs and serves HTTP. It looks at
//!   nothing else, so a database outage never makes it fail. What replaces an
//!   instance (the Auto Scaling group's check) follows this one only.
//! - `GET /readyz` — readiness: the services a request needs answer (the
//!   primary database; the cache is reported but optional, as galleries fall
//!   back to the database). The load balancer routes on this one: during an
//!   outage it stops sending requests, and sends them again when it is over.
//!
//! `GET /healthz` is readiness under its older name.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;

use crate::state::AppState;
use crate::web::{Resp, json};

/// How long a readiness probe waits for each service.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn livez(state: Arc<AppState>) -> Result<Resp, Infallible> {
    Ok(json(StatusCode::OK, &json!({"status": "ok", "uptime_secs": state.started_at.elapsed().as_secs()})))
}

pub async fn readyz(state: Arc<AppState>) -> Result<Resp, Infallible> {
    let s = &state.services;
    let db = matches!(tokio::time::timeout(PROBE_TIMEOUT, s.store.ping()).await, Ok(Ok(())));
    let cache = matches!(tokio::time::timeout(PROBE_TIMEOUT, s.cache.get_many(&["fs:health"])).await, Ok(Ok(_)));
    let body = json!({
        "status": if db { "ok" } else { "unavailable" },
        "database": if db { "ok" } else { "unavailable" },
        // A cache outage slows galleries down but breaks nothing.
        "cache": if cache { "ok" } else { "unavailable" },
        "uptime_secs": state.started_at.elapsed().as_secs(),
    });
    Ok(json(if db { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body))
}

/// `/livez`, `/readyz` and `/healthz` (readiness).
pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (Resp,), Error = warp::Rejection> + Clone {
    let s = move || {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let live = warp::path!("livez").and(warp::get()).and(s()).and_then(livez);
    let ready = warp::path!("readyz").or(warp::path!("healthz")).unify().and(warp::get()).and(s()).and_then(readyz);
    live.or(ready).unify()
}
