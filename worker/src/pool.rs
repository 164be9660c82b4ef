//! The local target: `flipstack up`'s worker pool. Worker processes
//! (`flipstack work`) are started, restarted when they die, and scaled
//! between min and max on the backlog per worker with the same [`Scaler`] the
//! AWS worker group mirrors, on the backlog of distinct waiting and in-hand
//! jobs in the uploads table (never queue messages, which can be duplicated).
//! Scaling in drains only idle workers (one holding a job is protected, as on
//! AWS) with SIGTERM. The pool's state is published to the
//! settings table for the admin API's status.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipstack_core::Services;
use flipstack_core::domain::now_millis;
use flipstack_core::metrics::background;
use flipstack_core::status::{DesiredRequest, POOL_DESIRED_KEY, POOL_STATUS_KEY, PoolStatus};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::policy::{Policy, Scaler};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The flipstack binary; started as `PROGRAM work`.
    pub program: PathBuf,
    /// Environment for the workers (the configuration, as variables).
    pub env: Vec<(String, String)>,
    pub policy: Policy,
    /// How often the pool looks at the backlog.
    pub tick: Duration,
    /// How long a draining worker may take before it is killed.
    pub drain_timeout: Duration,
}

impl PoolConfig {
    /// The pool `flipstack up` runs: `program work` with `env`, scaled by the
    /// configured policy, looked at every second; a draining worker gets its
    /// job's timeout and ten seconds more before it is killed.
    pub fn from_config(config: &flipstack_core::Config, program: PathBuf, env: Vec<(String, String)>) -> PoolConfig {
        PoolConfig {
            program,
            env,
            policy: Policy::from_config(config),
            tick: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(config.job_timeout_secs + 10),
        }
    }
}

struct Worker {
    child: Child,
    started: Instant,
    /// Sent SIGTERM: finishing its job, then exiting.
    draining: bool,
}

impl Worker {
    fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid of a child this process started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs the pool until `stop` is cancelled, then drains every worker.
pub async fn run(config: PoolConfig, services: Arc<Services>, stop: CancellationToken) {
    background(run_inner(config, services, stop)).await
}

async fn run_inner(config: PoolConfig, services: Arc<Services>, stop: CancellationToken) {
    let mut scaler = Scaler::new(config.policy);
    let mut workers: Vec<Worker> = Vec::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_desired = 0u32;
    // An operator's request is applied once: the first one seen is one that
    // was made before this pool started, and is old news.
    let mut applied_request = operator_request(&services).await.map(|r| r.at).unwrap_or(0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Reap: a draining worker that exited is done; any other exit is a crash.
        workers.retain_mut(|w| match w.child.try_wait() {
            Ok(Some(status)) => {
                if !w.draining {
                    tracing::warn!(
                        ?status,
                        ran_secs = w.started.elapsed().as_secs(),
                        "a worker exited unexpectedly; starting another"
                    );
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
        let active = workers.iter().filter(|w| !w.draining).count() as u32;
        // Distinct jobs from the uploads table, as the AWS worker group's policy
        // counts them: duplicate queue messages never grow the pool. Jobs in
        // hand count as much as waiting ones: a pool working hard is not
        // shrunk mid-burst just because its jobs were taken.
        let backlog = match services.store.upload_stats().await {
            Ok(s) => s.unfinished(),
            Err(e) => {
                tracing::debug!(error = %e, "could not read the backlog; keeping the pool as it is");
                continue;
            }
        };
        let desired = match operator_request(&services).await.filter(|r| r.at > applied_request) {
            Some(request) => {
                applied_request = request.at;
                let desired = scaler.hold(now_millis(), request.desired);
                tracing::info!(desired, asked = request.desired, "worker pool size set by an operator");
                desired
            }
            None => scaler.decide(now_millis(), active, backlog as f64),
        };
        if desired != last_desired {
            tracing::info!(desired, active, backlog, "worker pool size");
            last_desired = desired;
        }
        if desired > active {
            for _ in active..desired {
                match spawn(&config) {
                    Ok(w) => workers.push(w),
                    Err(e) => {
                        tracing::error!(error = %e, program = %config.program.display(), "cannot start a worker");
                        break;
                    }
                }
            }
        } else if desired < active {
            // A worker holding a job is protected from scale-in: only idle ones
            // are drained (newest first), and none while the store cannot say.
            let busy = match services.store.workers().await {
                Ok(list) => list.iter().filter(|w| w.current_upload.is_some()).map(|w| w.pid as i32).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot tell which workers hold a job; scaling in later");
                    Vec::new()
                }
            };
            let candidates: Vec<Option<i32>> = workers.iter().filter(|w| !w.draining).map(|w| w.pid()).collect();
            let chosen = pick_to_drain(&candidates, &busy, active - desired);
            for w in workers.iter_mut().filter(|w| !w.draining) {
                if let Some(pid) = w.pid()
                    && chosen.contains(&pid)
                {
                    signal(pid, libc::SIGTERM);
                    w.draining = true;
                }
            }
        }
        let status = PoolStatus {
            min: config.policy.min,
            max: config.policy.max,
            desired,
            running: workers.len() as u32,
            backlog,
            updated_at: now_millis(),
        };
        if let Ok(json) = serde_json::to_string(&status) {
            flipstack_core::error::ignore_failure(
                "publishing the pool's status",
                services.store.set_setting(POOL_STATUS_KEY, &json, status.updated_at).await,
            );
        }
    }
    drain_all(&mut workers, config.drain_timeout).await;
}

/// The operator's last desired size for the pool, if any.
async fn operator_request(services: &Services) -> Option<DesiredRequest> {
    let json = services.store.setting(POOL_DESIRED_KEY).await.ok().flatten()?;
    serde_json::from_str(&json).ok()
}

/// Which of the running workers (pids, oldest first) to drain to lose
/// `surplus`: idle ones only, newest first (the oldest have warm caches and
/// steady leases). A worker holding a job is never chosen; the pool asks
/// again next tick.
fn pick_to_drain(running: &[Option<i32>], busy: &[i32], surplus: u32) -> Vec<i32> {
    running.iter().rev().flatten().filter(|pid| !busy.contains(pid)).take(surplus as usize).copied().collect()
}

/// Names the pool's process to the workers it starts.
const SUPERVISOR_PID: &str = "FLIPSTACK_SUPERVISOR_PID";

/// In a worker the pool started: cancels `stop` (the job in hand is
/// finished, nothing new claimed) once the pool's process is gone. Dropping
/// the pool kills its workers, but a `flipstack up` killed outright (SIGKILL,
/// the OOM killer) drops nothing, and its workers would go on alone.
pub async fn stop_when_orphaned(stop: CancellationToken) {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID).ok().and_then(|v| v.parse::<u32>().ok()) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // An orphan is adopted by init (or a subreaper): its parent changes.
        if std::os::unix::process::parent_id() != supervisor {
            tracing::warn!(
                supervisor,
                "the flipstack up that started this worker is gone; stopping after the job in hand"
            );
            stop.cancel();
            return;
        }
    }
}

fn spawn(config: &PoolConfig) -> std::io::Result<Worker> {
    let child = Command::new(&config.program)
        .arg("work")
        .envs(config.env.iter().cloned())
        .env(SUPERVISOR_PID, std::process::id().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tracing::debug!(pid = child.id(), "started a worker");
    Ok(Worker { child, started: Instant::now(), draining: false })
}

/// SIGTERM to every worker, then SIGKILL to any still running after `timeout`.
async fn drain_all(workers: &mut [Worker], timeout: Duration) {
    for w in workers.iter_mut() {
        if let Some(pid) = w.pid() {
            signal(pid, libc::SIGTERM);
        }
        w.draining = true;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    for w in workers.iter_mut() {
        if tokio::time::timeout_at(deadline, w.child.wait()).await.is_err() {
            tracing::warn!(pid = w.pid(), "a worker did not finish in time; killing it");
            let _ = w.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick_to_drain;

    #[test]
    fn scale_in_drains_idle_workers_newest_first_and_never_a_busy_one() {
        let running = [Some(10), Some(11), Some(12), Some(13)];
        assert_eq!(pick_to_drain(&running, &[], 2), vec![13, 12]);
        assert_eq!(pick_to_drain(&running, &[13], 2), vec![12, 11]);
        assert_eq!(pick_to_drain(&running, &[10, 11, 12, 13], 2), Vec::<i32>::new());
        assert_eq!(pick_to_drain(&running, &[12], 9), vec![13, 11, 10]);
        assert_eq!(pick_to_drain(&[None, Some(5)], &[], 2), vec![5]);
    }
}
