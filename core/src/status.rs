//! The operator's view of a running flipstack, gathered from the services:
//! the wire types are `flipstack_domain::status` (one type for the server and
//! the console); this module adds how a server fills them in.

use std::collections::BTreeMap;

pub use flipstack_domain::status::*;

use crate::Services;
use crate::domain::now_millis;
use crate::queue::QueueDepth;

/// Gathers the status; a part that fails is listed in `problems` rather than
/// failing the whole answer.
pub async fn collect(services: &Services, blocked: bool, uptime_secs: u64) -> AdminStatus {
    let now = now_millis();
    let mut problems = Vec::new();
    let (uploads, oldest) = match services.store.upload_stats().await {
        Ok(s) => (s.by_state, s.oldest_unfinished_at.map(|t| (now - t).max(0) as f64 / 1000.0)),
        Err(e) => {
            problems.push(format!("database: {e}"));
            (BTreeMap::new(), None)
        }
    };
    let depth = services.queue.depth().await.unwrap_or_else(|e| {
        problems.push(format!("queue: {e}"));
        QueueDepth::default()
    });
    let workers = services.store.workers().await.unwrap_or_else(|e| {
        problems.push(format!("workers: {e}"));
        Vec::new()
    });
    let recent_failures = services
        .store
        .recent_failures(10)
        .await
        .map(|v| {
            v.into_iter()
                .map(|u| FailureInfo {
                    upload_id: u.id.get(),
                    at: u.finished_at,
                    reason: u.failure_reason.unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let pool = services
        .store
        .setting(POOL_STATUS_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|s| serde_json::from_str::<PoolStatus>(&s).ok())
        // A pool that stopped publishing is gone.
        .filter(|p| now - p.updated_at < WORKER_STALE_MS);
    let workers_paused = match services.store.setting(WORKERS_PAUSED).await {
        Ok(v) => v.as_deref() == Some("true"),
        Err(e) => {
            problems.push(format!("settings: {e}"));
            false
        }
    };
    let replicas =
        services.store.replica_lag().await.into_iter().map(|(name, lag_ms)| ReplicaStatus { name, lag_ms }).collect();
    AdminStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        at: now,
        uptime_secs,
        blocked,
        database: services.store.backend().as_str().to_owned(),
        cache: services.cache.kind().as_str().to_owned(),
        blobs: services.blobs.kind().as_str().to_owned(),
        uploads,
        oldest_unfinished_age_secs: oldest,
        queue: QueueStatus { kind: services.queue.kind().as_str().to_owned(), depth },
        metrics: services.metrics.snapshot(),
        replicas,
        workers,
        recent_failures,
        pool,
        workers_paused,
        problems,
    }
}
