//! The local target: `flipstack up`'s worker pool. Worker processes
//! (`flipstack work`) are started, restarted when they die, and scaled
//! between min and max on the backlog per worker with the same [`Scaler`] the
//! AWS worker group mirrors. Scaling in sends SIGTERM, so a worker finishes
//! the job in hand before it exits. The pool's state is published to the
//! settings table for the admin API's status.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipstack_core::Services;
use flipstack_core::domain::now_millis;
use flipstack_core::metrics::background;
use flipstack_core::status::{POOL_STATUS_KEY, PoolStatus};
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
        let backlog = match services.queue.depth().await {
            Ok(d) => d.visible,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the backlog; keeping the pool as it is");
                continue;
            }
        };
        let desired = scaler.decide(now_millis(), active, backlog as f64);
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
            // Drain the newest first: the oldest have warm caches and steady leases.
            let mut surplus = active - desired;
            for w in workers.iter_mut().rev().filter(|w| !w.draining) {
                if surplus == 0 {
                    break;
                }
                if let Some(pid) = w.pid() {
                    signal(pid, libc::SIGTERM);
                }
                w.draining = true;
                surplus -= 1;
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
            let _ = services.store.set_setting(POOL_STATUS_KEY, &json, status.updated_at).await;
        }
    }
    drain_all(&mut workers, config.drain_timeout).await;
}

fn spawn(config: &PoolConfig) -> std::io::Result<Worker> {
    let child = Command::new(&config.program)
        .arg("work")
        .envs(config.env.iter().cloned())
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
