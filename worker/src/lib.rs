//! flipstack's worker: take a job, flip the picture, store it, complete the
//! job, and only then let the queue forget the message.
//!
//! Every state change is a conditional update on the primary (see the
//! store's `claim`, `complete`, `fail_attempt`), so a message delivered twice
//! is flipped once in effect, and a worker killed mid-job leaves a lease that
//! runs out and lets the next worker take the job. The flipped picture's key
//! is made from the upload id, so a job done again writes the same object.
//!
//! Also the workers' supervisor on one machine: `flipstack up`'s [`pool`],
//! scaled by the target-tracking [`policy`] that the AWS worker group mirrors.

pub mod policy;
pub mod pool;
pub mod protection;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flipstack_core::Services;
use flipstack_core::blob::BlobKind;
use flipstack_core::domain::{UploadId, UploadState, now_millis};
use flipstack_core::error::ignore_failure;
use flipstack_core::imaging::{self, FlipError};
use flipstack_core::metrics::background;
use flipstack_core::queue::Delivery;
use flipstack_core::screens;
use flipstack_core::store::{Failure, FleetDuty, FlipOutcome, Lead, StateChange, Upload, WorkerInfo, WorkerStatus};
use flipstack_core::wake;
use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub id: String,
    pub lease: Duration,
    pub max_attempts: u32,
    pub job_timeout: Duration,
}

impl WorkerOptions {
    pub fn from_services(services: &Services) -> WorkerOptions {
        let c = &services.config;
        WorkerOptions {
            id: worker_id(),
            lease: Duration::from_secs(c.job_lease_secs),
            max_attempts: c.job_max_attempts.max(1),
            job_timeout: Duration::from_secs(c.job_timeout_secs.max(1)),
        }
    }
}

/// `host-pid-xxxx`: unique per process, readable in the console.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    let suffix: u16 = rand::rng().random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A flip ran past its time limit; its thread cannot be stopped, so the
    /// process should exit and be started again.
    #[error("a flip of upload {0} ran past its time limit; exiting so a fresh process takes over")]
    Stuck(UploadId),
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSummary {
    pub jobs_done: u64,
}

struct Shared {
    info: Mutex<WorkerInfo>,
    /// True while a job is in hand (what scale-in protection follows).
    busy: tokio::sync::watch::Sender<bool>,
    /// The last job's screen sizes, still being made while the next job
    /// runs; at most one lags behind.
    lagging_screens: Mutex<Option<(UploadId, Screens)>>,
}

/// Runs jobs until `stop` is cancelled, then finishes the job in hand (graceful drain).
pub async fn run(
    services: Arc<Services>,
    options: WorkerOptions,
    stop: CancellationToken,
) -> Result<WorkerSummary, WorkerError> {
    background(run_inner(services, options, stop)).await
}

async fn run_inner(
    services: Arc<Services>,
    options: WorkerOptions,
    stop: CancellationToken,
) -> Result<WorkerSummary, WorkerError> {
    let now = now_millis();
    let shared = Arc::new(Shared {
        info: Mutex::new(WorkerInfo {
            id: options.id.clone(),
            host: options.id.rsplitn(3, '-').nth(2).unwrap_or("host").to_owned(),
            pid: std::process::id(),
            started_at: now,
            heartbeat_at: now,
            status: WorkerStatus::Idle,
            current_upload: None,
            jobs_done: 0,
        }),
        busy: tokio::sync::watch::Sender::new(false),
        lagging_screens: Mutex::new(None),
    });
    let protection = protection::start(&services, shared.busy.subscribe()).await;
    let beat = tokio::spawn(background(heartbeat(services.clone(), shared.clone())));
    let mut helpers = Vec::new();
    if services.queue.needs_reconciler() {
        helpers.push(tokio::spawn(background(fleet_duties(services.clone()))));
    }
    if services.on_aws() {
        // The worker's own numbers (jobs, durations, queue waits) reach CloudWatch
        // as the servers' do, under Role=worker.
        let s = services.clone();
        helpers.push(tokio::spawn(background(async move {
            let publisher =
                flipstack_core::aws::cloudwatch::Publisher::new(&s.aws, &s.config.metrics_namespace, "worker").await;
            publisher.run(s.metrics.clone(), s.store.clone(), Duration::from_secs(60)).await;
        })));
    }
    tracing::info!(worker = %options.id, queue = %services.queue.kind(), "worker started");
    let mut was_paused = false;
    let result = loop {
        if stop.is_cancelled() {
            break Ok(());
        }
        // Paused by an operator: nothing new is claimed until resumed.
        if paused(&services).await {
            if !was_paused {
                set_status(&shared, WorkerStatus::Paused, None);
                was_paused = true;
                tracing::info!(worker = %options.id, "paused by an operator; claiming nothing until resumed");
            }
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                _ = tokio::time::sleep(PAUSE_CHECK) => continue,
            }
        }
        if was_paused {
            set_status(&shared, WorkerStatus::Idle, None);
            was_paused = false;
            tracing::info!(worker = %options.id, "resumed by an operator");
        }
        let deliveries = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            r = services.queue.receive(Duration::from_secs(10), 1) => r,
        };
        let deliveries = match deliveries {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "the queue did not answer; trying again shortly");
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // A pause that came while waiting: hand the messages back unclaimed.
        if !deliveries.is_empty() && paused(&services).await {
            for d in &deliveries {
                ignore_failure(
                    "handing back a job received while paused",
                    services.queue.release(d, Duration::ZERO).await,
                );
            }
            continue;
        }
        let mut stuck = None;
        for d in deliveries {
            if let Err(e) = handle(&services, &options, &shared, &d).await {
                stuck = Some(e);
                break;
            }
        }
        if let Some(e) = stuck {
            break Err(e);
        }
    };
    shared.info.lock().unwrap_or_else(|p| p.into_inner()).status = WorkerStatus::Draining;
    let lagging = shared.lagging_screens.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((id, screens)) = lagging {
        finish_screens(&options, id, screens).await;
    }
    beat.abort();
    if let Some(p) = protection {
        p.abort();
    }
    for h in helpers {
        h.abort();
    }
    ignore_failure("removing the worker's heartbeat row", services.store.remove_worker(&options.id).await);
    let jobs_done = shared.info.lock().unwrap_or_else(|p| p.into_inner()).jobs_done;
    tracing::info!(worker = %options.id, jobs_done, "worker stopped");
    result.map(|()| WorkerSummary { jobs_done })
}

async fn heartbeat(services: Arc<Services>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let info = {
            let mut i = shared.info.lock().unwrap_or_else(|p| p.into_inner());
            i.heartbeat_at = now_millis();
            i.clone()
        };
        if let Err(e) = services.store.worker_heartbeat(&info).await {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
    }
}

/// How often a paused worker looks whether it was resumed.
const PAUSE_CHECK: Duration = Duration::from_secs(1);

/// True while an operator has paused the workers (a setting on the primary,
/// so it holds for every worker process and instance). A store that does not
/// answer counts as not paused: claiming needs it anyway.
async fn paused(services: &Services) -> bool {
    matches!(services.store.setting(flipstack_core::status::WORKERS_PAUSED).await, Ok(Some(v)) if v == "true")
}

fn set_status(shared: &Shared, status: WorkerStatus, current: Option<UploadId>) {
    let mut i = shared.info.lock().unwrap_or_else(|p| p.into_inner());
    i.status = status;
    i.current_upload = current;
    shared.busy.send_replace(current.is_some());
}

/// Waits before the next attempt: 2, 4, 8 … seconds (with jitter), at most a minute.
fn backoff(attempts: u32) -> Duration {
    let base = 2u64.saturating_pow(attempts.min(6)).min(60);
    Duration::from_millis(base * 1000 + rand::rng().random_range(0..500))
}

async fn handle(
    services: &Arc<Services>,
    options: &WorkerOptions,
    shared: &Shared,
    d: &Delivery,
) -> Result<(), WorkerError> {
    let now = now_millis();
    let claimed =
        match services.store.claim(d.upload_id, &options.id, now, now + options.lease.as_millis() as i64).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, upload = %d.upload_id, "could not claim a job; it stays queued");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
        };
    let Some(upload) = claimed else {
        not_claimable(services, d).await;
        return Ok(());
    };
    set_status(shared, WorkerStatus::Busy, Some(upload.id));
    let result = process(services, options, shared, d, upload).await;
    set_status(shared, WorkerStatus::Idle, None);
    if let Ok(true) = result {
        shared.info.lock().unwrap_or_else(|p| p.into_inner()).jobs_done += 1;
    }
    result.map(|_| ())
}

/// A delivery whose job this worker could not claim: settle the message.
async fn not_claimable(services: &Services, d: &Delivery) {
    match services.store.upload(d.upload_id).await {
        // Deleted, or already done (a duplicate delivery): nothing left to do.
        Ok(None) => ack(services, d).await,
        Ok(Some(u)) if u.state == UploadState::Done => ack(services, d).await,
        // Failed: the message is left to reach the dead-letter queue, where
        // operators can see what failed.
        Ok(Some(u)) if u.state == UploadState::Failed => {
            ignore_failure("releasing a delivery", services.queue.release(d, Duration::ZERO).await);
        }
        // Another worker holds it, or it waits for a retry: look again then.
        Ok(Some(u)) => {
            let until = u.lease_until.unwrap_or(u.next_attempt_at).max(u.next_attempt_at);
            let wait = Duration::from_millis((until - now_millis()).clamp(1000, 600_000) as u64);
            ignore_failure("releasing a delivery", services.queue.release(d, wait).await);
        }
        Err(e) => {
            tracing::warn!(error = %e, upload = %d.upload_id, "could not look at an unclaimable job")
        }
    }
}

async fn ack(services: &Services, d: &Delivery) {
    if let Err(e) = services.queue.ack(d).await {
        // Delivered again later, it is recognised as done and acknowledged then.
        tracing::warn!(error = %e, upload = %d.upload_id, "could not acknowledge a message");
    }
}

async fn after_change(services: &Services, change: &StateChange) {
    services.gallery.invalidate(&change.person_hash, &change.receipt).await;
    // Servers on this machine read the events now instead of on their next
    // tick, so the uploader's page hears of it at once.
    wake::notify(&wake::folder(&services.config.data_dir), wake::Role::Server);
}

/// Flips one claimed upload. Ok(true) when it ended `done`.
async fn process(
    services: &Arc<Services>,
    options: &WorkerOptions,
    shared: &Shared,
    d: &Delivery,
    upload: Upload,
) -> Result<bool, WorkerError> {
    let id = upload.id;
    let max_claims = (options.max_attempts + 3).min(flipstack_core::queue::REDRIVE_AFTER_RECEIVES - 1);
    if upload.claims > max_claims {
        let reason = format!(
            "Flipping stopped {} times without finishing (the worker was restarted each time); flipstack gave up on this picture.",
            upload.claims - 1
        );
        if let Ok(Some(change)) = services.store.give_up(id, &reason, now_millis()).await {
            after_change(services, &change).await;
        }
        services.metrics.job("failed");
        return Ok(false);
    }
    if upload.claims == 1 {
        services.metrics.observe_queue_wait((now_millis() - upload.created_at).max(0) as f64 / 1000.0);
    }
    // Keep the lease (and the message's visibility) while the job runs.
    let keepalive = {
        let services = services.clone();
        let (owner, lease, d) = (options.id.clone(), options.lease, d.clone());
        tokio::spawn(background(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match services.store.renew_lease(id, &owner, now_millis() + lease.as_millis() as i64).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(upload = %id, "lost the lease on a job; its result will not be recorded by this worker")
                    }
                    Err(e) => tracing::warn!(error = %e, upload = %id, "could not renew a lease"),
                }
                ignore_failure("extending a delivery's visibility", services.queue.extend(&d, lease).await);
            }
        }))
    };
    let started = Instant::now();
    let outcome = flip_and_store(services, options, &upload).await;
    keepalive.abort();
    let now = now_millis();
    match outcome {
        Ok((result, screens, flip_time)) => match services.store.complete(id, &options.id, &result, now).await {
            Ok(Some(change)) => {
                after_change(services, &change).await;
                ack(services, d).await;
                services.metrics.job("done");
                services.metrics.observe_job(started.elapsed().as_secs_f64());
                tracing::info!(
                    upload = %id, method = %result.method, ms = started.elapsed().as_millis() as u64,
                    flip_ms = flip_time.as_millis() as u64, "flipped"
                );
                if let Some(screens) = screens {
                    // The next job starts while these finish; the previous
                    // job's, which had this whole job's time, must be done.
                    let previous =
                        shared.lagging_screens.lock().unwrap_or_else(|p| p.into_inner()).replace((id, screens));
                    if let Some((previous_id, previous)) = previous {
                        finish_screens(options, previous_id, previous).await;
                    }
                }
                Ok(true)
            }
            Ok(None) => {
                settle_lost_completion(services, d, id).await;
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(error = %e, upload = %id, "flipped, but could not record it; the job will run again");
                Ok(false)
            }
        },
        Err(JobError::Permanent(reason)) => {
            if let Ok(Some(change)) =
                services.store.fail_attempt(id, &options.id, &reason, Failure::Permanent, now).await
            {
                after_change(services, &change).await;
            }
            // Left unacknowledged: on SQS it reaches the dead-letter queue.
            ignore_failure("releasing a delivery", services.queue.release(d, Duration::ZERO).await);
            services.metrics.job("failed");
            tracing::info!(upload = %id, %reason, "job failed for good");
            Ok(false)
        }
        Err(JobError::Transient(reason)) => {
            let attempts = upload.attempts + 1;
            let failure = if attempts >= options.max_attempts {
                Failure::Permanent
            } else {
                Failure::RetryAt(now + backoff(attempts).as_millis() as i64)
            };
            let shown = if failure == Failure::Permanent {
                format!("flipstack tried {attempts} times and gave up: {reason}")
            } else {
                reason.clone()
            };
            if let Ok(Some(change)) = services.store.fail_attempt(id, &options.id, &shown, failure.clone(), now).await {
                after_change(services, &change).await;
            }
            match failure {
                Failure::RetryAt(at) => {
                    ignore_failure(
                        "releasing a delivery",
                        services.queue.release(d, Duration::from_millis((at - now).max(0) as u64)).await,
                    );
                    services.metrics.job("retry");
                    tracing::warn!(upload = %id, attempts, %reason, "job failed; will retry");
                }
                Failure::Permanent => {
                    ignore_failure("releasing a delivery", services.queue.release(d, Duration::ZERO).await);
                    services.metrics.job("failed");
                    tracing::warn!(upload = %id, attempts, %reason, "job failed too often; giving up");
                }
            }
            Ok(false)
        }
        Err(JobError::Stuck) => {
            let reason = format!(
                "Flipping took longer than {} seconds; this picture is too complex for flipstack.",
                options.job_timeout.as_secs()
            );
            if let Ok(Some(change)) =
                services.store.fail_attempt(id, &options.id, &reason, Failure::Permanent, now).await
            {
                after_change(services, &change).await;
            }
            services.metrics.job("failed");
            Err(WorkerError::Stuck(id))
        }
    }
}

/// The completion found the job no longer ours: taken over by another
/// worker, or deleted while it was flipped. A deleted upload's objects go
/// now (the delete may have removed its blobs before these were written);
/// anything this misses is left to the blob store's orphan sweep.
async fn settle_lost_completion(services: &Services, d: &Delivery, id: UploadId) {
    match services.store.upload(id).await {
        Ok(None) => {
            match services.blobs.delete_all(id).await {
                Ok(()) => {
                    tracing::info!(upload = %id, "the upload was deleted while it was flipped; removed what was written")
                }
                Err(e) => {
                    tracing::warn!(error = %e, upload = %id, "the upload was deleted while it was flipped; its objects are left to the orphan sweep")
                }
            }
            ack(services, d).await;
        }
        Ok(Some(_)) => {
            tracing::warn!(upload = %id, "the job was taken over while it ran; leaving it to its new worker")
        }
        Err(e) => {
            tracing::warn!(error = %e, upload = %id, "could not record a finished job nor look at it; it will run again")
        }
    }
}

/// The screen sizes being made beside a flip.
type Screens = tokio::task::JoinHandle<Result<Vec<imaging::ScreenPicture>, screens::ScreenError>>;

/// Waits for a job's screen sizes. They are a convenience: without them the
/// server makes them when they are first asked for, so a failure is only
/// logged.
async fn finish_screens(options: &WorkerOptions, id: UploadId, screens: Screens) {
    match tokio::time::timeout(options.job_timeout, screens).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(upload = %id, error = %e, "no screen sizes"),
        Ok(Err(e)) => tracing::warn!(upload = %id, error = %e, "making screen sizes crashed"),
        Err(_) => tracing::warn!(upload = %id, "screen sizes took longer than the job's time limit"),
    }
}

enum JobError {
    /// The picture itself is the problem: trying again cannot help.
    Permanent(String),
    /// Something around it failed (storage, this machine): try again later.
    Transient(String),
    /// The flip ran past its time limit.
    Stuck,
}

async fn flip_and_store(
    services: &Services,
    options: &WorkerOptions,
    upload: &Upload,
) -> Result<(FlipOutcome, Option<Screens>, Duration), JobError> {
    let original = match services.blobs.get_bytes(BlobKind::Original, upload.id).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(JobError::Permanent("The original picture is missing from storage.".into()));
        }
        Err(e) => {
            return Err(JobError::Transient(format!("could not read the original: {e}")));
        }
    };
    let (format, limits, upload_id) = (upload.format, services.limits, upload.id);
    imaging::keep_memory_between_flips();
    let flip_started = Instant::now();
    let work = {
        let original = original.clone();
        tokio::task::spawn_blocking(move || imaging::flip_with_thumbnails(&original, format, &limits))
    };
    let processed = match tokio::time::timeout(options.job_timeout, work).await {
        Err(_) => return Err(JobError::Stuck),
        Ok(Err(join)) => return Err(JobError::Transient(format!("the flip crashed: {join}"))),
        Ok(Ok(Err(FlipError::Unreadable(reason)))) => return Err(JobError::Permanent(reason)),
        Ok(Ok(Err(FlipError::Internal(reason)))) => return Err(JobError::Transient(reason)),
        Ok(Ok(Ok(p))) => p,
    };
    let flip_time = flip_started.elapsed();
    // Screen sizes come from their own scaled decode (HEIC/AVIF: from the
    // JPEG view the flip made), started once the flip is done: the flip is
    // what the uploader waits for, and beside it they would share the
    // cores it needs.
    let screens_from_original = (screens::source_kind(format) == BlobKind::Original).then(|| {
        let (blobs, store) = (services.blobs.clone(), services.store.clone());
        tokio::spawn(async move {
            screens::make_and_store(&blobs, store.as_ref(), upload_id, format, limits, Some(original)).await
        })
    });
    let flipped = processed.flipped;
    // Thumbnails are a convenience: without them the gallery shows the full
    // pictures, so their failure does not fail the job.
    let thumbs =
        processed.thumbnails.inspect_err(|e| tracing::warn!(upload = %upload.id, error = %e, "no thumbnails")).ok();
    let outcome = FlipOutcome {
        flipped_bytes: flipped.bytes.len() as u64,
        flipped_width: flipped.width,
        flipped_height: flipped.height,
        method: flipped.method.to_owned(),
        thumb_width: thumbs.as_ref().map(|t| t.width),
        thumb_height: thumbs.as_ref().map(|t| t.height),
    };
    let stored =
        |e: flipstack_core::blob::BlobError| JobError::Transient(format!("could not store the flipped picture: {e}"));
    match thumbs {
        Some(t) => {
            tokio::try_join!(
                services.blobs.put(BlobKind::Flipped, upload.id, flipped.bytes),
                services.blobs.put(BlobKind::OriginalThumb, upload.id, t.original),
                services.blobs.put(BlobKind::FlippedThumb, upload.id, t.flipped),
            )
            .map_err(stored)?;
        }
        None => services.blobs.put(BlobKind::Flipped, upload.id, flipped.bytes).await.map_err(stored)?,
    }
    // HEIC/AVIF: what the gallery shows, since browsers do not all show them.
    let screens = match processed.display {
        Some(d) => {
            let view = d.original.clone().into();
            tokio::try_join!(
                services.blobs.put(BlobKind::OriginalDisplay, upload.id, d.original),
                services.blobs.put(BlobKind::FlippedDisplay, upload.id, d.flipped),
            )
            .map_err(stored)?;
            let (blobs, store) = (services.blobs.clone(), services.store.clone());
            Some(tokio::spawn(async move {
                screens::make_and_store(&blobs, store.as_ref(), upload_id, format, limits, Some(view)).await
            }))
        }
        None => screens_from_original,
    };
    Ok((outcome, screens, flip_time))
}

/// The fleet-wide lock whose holder runs [`fleet_duties`].
pub const RECONCILER_DUTY: &str = "reconciler";

/// SQS only: the duties one process does for the whole fleet, whichever
/// worker holds the database lock ([`RECONCILER_DUTY`]): re-sending jobs whose
/// message is really missing, and marking dead letters failed. Every worker
/// tries for the lock each period, so another takes over within one period
/// when the holder dies. One reconciler, re-sending only what is missing,
/// keeps the queue at one message per waiting job however old the backlog.
async fn fleet_duties(services: Arc<Services>) {
    let after = Duration::from_secs(services.config.requeue_after_secs.max(1));
    let mut tick = tokio::time::interval((after / 2).clamp(Duration::from_secs(1), Duration::from_secs(30)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut duty = FleetDuty::new(RECONCILER_DUTY);
    let mut reconciler = Reconciler { after, queue_was_empty: false };
    let mut dead_letters_due = Instant::now();
    loop {
        tick.tick().await;
        match duty.hold(services.store.as_ref()).await {
            Lead::Elsewhere => continue,
            Lead::Taken => {
                tracing::info!("this worker now reconciles the queue for the fleet");
                reconciler.queue_was_empty = false;
            }
            Lead::Held => {}
        }
        reconciler.pass(&services).await;
        if Instant::now() >= dead_letters_due {
            mark_dead_letters(&services).await;
            dead_letters_due = Instant::now() + Duration::from_secs(15);
        }
    }
}

/// Re-sends a job only when its message is missing, so a waiting job never
/// gets a second copy because it waited long.
struct Reconciler {
    /// How long a job may wait unsent (or, on an empty queue, since its last send).
    after: Duration,
    /// The previous pass found the queue empty.
    queue_was_empty: bool,
}

impl Reconciler {
    async fn pass(&mut self, services: &Services) {
        let now = now_millis();
        let cutoff = now - self.after.as_millis() as i64;
        // 1. Never confirmed sent: the send failed, or the server died around it.
        match services.store.unsent(cutoff, 100).await {
            Ok(ids) => resend(services, ids, "its message was never confirmed sent").await,
            Err(e) => tracing::debug!(error = %e, "reconciler could not read the uploads"),
        }
        // 2. Sent, but the queue lost it (purged, retention ran out): only an
        // empty queue, twice in a row a period apart, proves that waiting jobs
        // have no message; a job with its message always counts in the queue
        // (visible, or hidden while held or waiting for a retry).
        let empty = match services.queue.depth().await {
            Ok(d) => d.visible + d.in_flight == 0,
            Err(e) => {
                tracing::debug!(error = %e, "reconciler could not read the queue's depth");
                false
            }
        };
        if empty && self.queue_was_empty {
            match services.store.unqueued(now, cutoff, 100).await {
                Ok(ids) => resend(services, ids, "the queue is empty while it waits").await,
                Err(e) => tracing::debug!(error = %e, "reconciler could not read the uploads"),
            }
        }
        self.queue_was_empty = empty;
    }
}

async fn resend(services: &Services, ids: Vec<UploadId>, why: &str) {
    for id in ids {
        match services.queue.enqueue(id).await {
            Ok(()) => {
                ignore_failure("marking an upload enqueued", services.store.mark_enqueued(id, now_millis()).await);
                tracing::warn!(upload = %id, why, "re-sent a job whose message was missing");
            }
            Err(e) => {
                tracing::warn!(error = %e, upload = %id, "could not re-send a job; trying again next period");
                return;
            }
        }
    }
}

/// SQS only: a message in the dead-letter queue marks its upload failed.
async fn mark_dead_letters(services: &Services) {
    let Ok(letters) = services.queue.dead_letters(10).await else {
        return;
    };
    for d in letters {
        let reason = format!(
            "Flipping failed {} times in a row; the job was set aside for the operators.",
            d.receive_count.max(1)
        );
        if let Ok(Some(change)) = services.store.give_up(d.upload_id, &reason, now_millis()).await {
            after_change(services, &change).await;
            tracing::warn!(upload = %d.upload_id, "job reached the dead-letter queue; marked failed");
        }
    }
}
