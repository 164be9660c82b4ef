//! The server's background work, off every request path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flipstack_core::backups::Period;
use flipstack_core::domain::{Millis, now_millis};
use flipstack_core::metrics::background;
use flipstack_core::store::WriteReceipt;
use flipstack_core::store::lead::{FleetDuty, Turn};
use flipstack_core::wake;

use crate::state::{AdminEvent, AppState};

pub fn spawn_all(state: Arc<AppState>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(background(tail_events(state.clone()))),
        tokio::spawn(background(retry_invalidations(state.clone()))),
        tokio::spawn(background(purge(state.clone()))),
        tokio::spawn(background(crate::signin::run_mailer(state.clone()))),
        tokio::spawn(background(sweep_orphans(state.clone()))),
        tokio::spawn(background(completion_notices(state.clone()))),
    ];
    if let Some(every) = state.services.config.backup_every {
        tasks.push(tokio::spawn(background(scheduled_backups(state.clone(), every))));
    }
    if state.services.on_aws() {
        let s = state.services.clone();
        tasks.push(tokio::spawn(background(async move {
            let publisher =
                flipstack_core::aws::cloudwatch::Publisher::new(&s.aws, &s.config.metrics_namespace, "web").await;
            publisher.run(s.metrics.clone(), s.store.clone(), Duration::from_secs(60)).await;
        })));
    }
    tasks
}

/// Follows the events table (written by every process): feeds the admin
/// event stream and the galleries' pushes (`/gallery/events`), and
/// invalidates galleries whose jobs finished in another process when the
/// cache is this process's own memory. Workers on this machine wake it as
/// they finish a job; the tick is for the others (other instances).
async fn tail_events(state: Arc<AppState>) {
    const WINDOW_MS: i64 = 5_000;
    let services = &state.services;
    let local_cache = services.cache.kind() == flipstack_core::domain::CacheBackend::Memory;
    let mut seen: HashSet<i64> = HashSet::new();
    let woken_by = wake::Listener::bind(&wake::folder(&services.config.data_dir), wake::Role::Server);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match &woken_by {
            Some(w) => tokio::select! {
                _ = tick.tick() => {}
                _ = w.woken() => {}
            },
            None => {
                tick.tick().await;
            }
        }
        if !local_cache && state.events.receiver_count() == 0 {
            continue;
        }
        // Ids are time-ordered but written by several processes, so an event
        // can commit a little after a later id: re-read a short window.
        let since = ((now_millis() - WINDOW_MS - 1_577_836_800_000).max(0)) << 20;
        let events = match services.store.events_since(since, 1000).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "could not read events");
                continue;
            }
        };
        tracing::trace!(events = events.len(), since, "event tail");
        seen.retain(|id| *id >= since);
        for e in events {
            if !seen.insert(e.id) {
                continue;
            }
            if local_cache
                && e.kind.changes_gallery()
                && let Some(person) = &e.person_hash
            {
                services.gallery.invalidate(person, &WriteReceipt::default()).await;
            }
            state.emit(AdminEvent::Job {
                id: e.id,
                at: e.at,
                kind: e.kind,
                upload_id: e.upload_id,
                person: e.person_hash,
                detail: e.detail,
            });
        }
    }
}

async fn retry_invalidations(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if state.services.gallery.unsent_invalidations() > 0 {
            state.services.gallery.retry_unsent().await;
        }
    }
}

async fn purge(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match state.services.store.purge_expired(now_millis()).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "removed expired sessions, links, events and workers"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired rows"),
        }
    }
}

/// Every hour (and at start): deletes stored objects whose upload has no row
/// and that are older than the grace period, so nothing of a deleted picture
/// stays behind whatever the timing of its delete and its worker.
async fn sweep_orphans(state: Arc<AppState>) {
    let services = &state.services;
    let grace_ms = services.config.orphan_grace_secs as i64 * 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match services.blobs.sweep_orphans(services.store.as_ref(), now_millis() - grace_ms).await {
            Ok(s) if s.removed > 0 => {
                tracing::info!(removed = s.removed, "orphan sweep removed objects of deleted uploads")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the orphan sweep did not finish; it runs again in an hour"),
        }
    }
}

/// Completion notices for the whole fleet, by the one server that holds the
/// `notices` lock; the others ask each round and take over within a round
/// when it dies. One sender keeps the fleet from racing for the same batches
/// (the store's conditional take would still send each once).
async fn completion_notices(state: Arc<AppState>) {
    let mut duty = FleetDuty::new(crate::notices::DUTY);
    let mut tick = tokio::time::interval(crate::notices::round_every(&state.services.config));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match duty.turn(state.services.store.as_ref()).await {
            Turn::NotOurs => continue,
            Turn::Took => tracing::info!("this server now sends the fleet's completion notices"),
            Turn::Holds => {}
        }
        crate::notices::send_ready(&state).await;
    }
}

/// The fleet-wide lock whose holder takes the scheduled backups.
pub const BACKUP_DUTY: &str = "backups";

/// Every server runs this; the one holding [`BACKUP_DUTY`] backs the
/// database up into the blob store every `every` and keeps the newest
/// `backup_keep`, the next one due `every` after the newest there
/// ([`flipstack_core::backup::next_due`]). The others ask for the lock each
/// period and take over when its holder dies.
async fn scheduled_backups(state: Arc<AppState>, every: Period) {
    let services = &state.services;
    let keep = services.config.backup_keep;
    let every_ms = every.secs() as i64 * 1000;
    // After a failure, try again sooner than a long period, but not at once.
    let retry_ms = every_ms.min(300_000);
    let retry_text = Period::from_secs(retry_ms / 1000).map(|p| p.to_string()).unwrap_or_default();
    let mut tick = tokio::time::interval(every.as_duration().clamp(Duration::from_secs(1), Duration::from_secs(30)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut duty = FleetDuty::new(BACKUP_DUTY);
    // None: read from the newest backup in the store.
    let mut due: Option<Millis> = None;
    loop {
        tick.tick().await;
        match duty.turn(services.store.as_ref()).await {
            Turn::NotOurs => continue,
            Turn::Took => {
                tracing::info!(%every, keep, "this server now takes the fleet's database backups (blob store, backups/)");
                due = None;
            }
            Turn::Holds => {}
        }
        let now = now_millis();
        if due.is_none_or(|d| now >= d) {
            // Looked at again when due: an operator may have taken one since.
            match services.blobs.list_backups().await {
                Ok(backups) => {
                    due = Some(flipstack_core::backup::next_due(backups.last().map(|b| &b.name), every, now))
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = %retry_text, "could not list the backups to see when the next is due; check that the blob store (FLIPSTACK_BLOB_URL) answers");
                    due = Some(now + retry_ms);
                    continue;
                }
            }
        }
        if due.is_some_and(|d| now < d) {
            continue;
        }
        match flipstack_core::backup::take(services).await {
            Ok(done) => {
                tracing::info!(backup = %done.name, rows = done.rows, bytes = done.bytes, "database backed up");
                due = Some(now + every_ms);
                if let Err(e) = flipstack_core::backup::prune(services, keep).await {
                    tracing::warn!(error = %e, keep, "could not delete the oldest backups; tried again after the next backup (check the blob store's permissions)");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = %retry_text, "the scheduled database backup failed; check that the database and the blob store (FLIPSTACK_BLOB_URL) answer, or take one with `flipstack db dump`");
                due = Some(now + retry_ms);
            }
        }
    }
}
