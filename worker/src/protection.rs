//! Scale-in protection on AWS: while a worker holds a job its instance is
//! protected from scale-in (Auto Scaling `SetInstanceProtection`), so the
//! group shrinking after a burst never terminates a worker mid-flip. The
//! protection is set as soon as a job is taken and cleared only after the
//! worker has been idle for [`IDLE_GRACE`], so a steady stream of jobs makes
//! one call, not two per job.
//!
//! On with `scale_in_protection_group` (the worker's group, written into the
//! stack's configuration by `provision up`); the instance's id comes from the
//! instance metadata service.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flipstack_core::Services;
use tokio::sync::watch;

/// How long a worker stays protected after its last job.
pub const IDLE_GRACE: Duration = Duration::from_secs(10);
/// Pause before trying a failed call again.
const RETRY: Duration = Duration::from_secs(5);

/// Where protection is set: the Auto Scaling group, or (in tests) a recorder.
#[async_trait]
pub trait Protect: Send + Sync + 'static {
    async fn set(&self, protected: bool) -> Result<(), String>;
    /// For log lines: which instance in which group.
    fn describe(&self) -> String;
}

/// One instance of one Auto Scaling group.
pub struct AutoScalingInstance {
    client: aws_sdk_autoscaling::Client,
    group: String,
    instance_id: String,
}

impl AutoScalingInstance {
    /// Finds this instance's id from the instance metadata service.
    pub async fn this_instance(services: &Services, group: &str) -> Result<AutoScalingInstance, String> {
        let provider =
            aws_config::provider_config::ProviderConfig::default().with_http_client(flipstack_core::aws::http_client());
        let imds = aws_config::imds::Client::builder().configure(&provider).build();
        let instance_id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .map_err(|e| format!("reading this instance's id from the instance metadata service: {e}"))?;
        let sdk = flipstack_core::aws::sdk_config(&services.aws).await;
        Ok(AutoScalingInstance {
            client: aws_sdk_autoscaling::Client::new(&sdk),
            group: group.to_owned(),
            instance_id: instance_id.as_ref().to_owned(),
        })
    }

    pub fn new(client: aws_sdk_autoscaling::Client, group: &str, instance_id: &str) -> AutoScalingInstance {
        AutoScalingInstance { client, group: group.to_owned(), instance_id: instance_id.to_owned() }
    }
}

#[async_trait]
impl Protect for AutoScalingInstance {
    async fn set(&self, protected: bool) -> Result<(), String> {
        self.client
            .set_instance_protection()
            .auto_scaling_group_name(&self.group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(protected)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_autoscaling::error::DisplayErrorContext(e).to_string())
    }

    fn describe(&self) -> String {
        format!("instance {} in {}", self.instance_id, self.group)
    }
}

/// Follows `busy` (true while a job is in hand) and keeps the protection in step.
pub async fn follow(target: Arc<dyn Protect>, mut busy: watch::Receiver<bool>, idle_grace: Duration) {
    let mut protected = false;
    loop {
        let want = *busy.borrow_and_update();
        if want != protected {
            if !want {
                // Idle: wait out the grace; a new job within it keeps the protection.
                match tokio::time::timeout(idle_grace, busy.wait_for(|b| *b)).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
            match target.set(want).await {
                Ok(()) => {
                    protected = want;
                    tracing::debug!(target = %target.describe(), protected, "scale-in protection");
                }
                Err(e) => {
                    tracing::warn!(target = %target.describe(), protected = want, error = %e, "could not change scale-in protection; trying again shortly");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if busy.changed().await.is_err() {
            return;
        }
    }
}

/// Starts following `busy` when the configuration names the worker's group.
pub async fn start(services: &Services, busy: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let group = services.config.scale_in_protection_group.as_deref().filter(|g| !g.is_empty())?;
    match AutoScalingInstance::this_instance(services, group).await {
        Ok(instance) => {
            tracing::info!(target = %instance.describe(), "protecting this instance from scale-in while it holds a job");
            Some(tokio::spawn(follow(Arc::new(instance), busy, IDLE_GRACE)))
        }
        Err(e) => {
            tracing::error!(error = %e, group, "no scale-in protection: the group may stop this worker mid-job");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<bool>>);

    #[async_trait]
    impl Protect for Recorder {
        async fn set(&self, protected: bool) -> Result<(), String> {
            self.0.lock().unwrap().push(protected);
            Ok(())
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    async fn recorded(target: &Recorder, want: &[bool]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *target.0.lock().unwrap() != want {
            assert!(std::time::Instant::now() < deadline, "recorded {:?}, want {want:?}", target.0.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn protected_while_busy_and_released_after_the_idle_grace() {
        let target = Arc::new(Recorder::default());
        let (tx, rx) = watch::channel(false);
        let grace = Duration::from_millis(1500);
        let task = tokio::spawn(follow(target.clone(), rx, grace));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(target.0.lock().unwrap().is_empty(), "idle at start: nothing to set");

        tx.send_replace(true);
        recorded(&target, &[true]).await;

        // The next job taken at once: no release in between.
        tx.send_replace(false);
        tokio::task::yield_now().await;
        tx.send_replace(true);
        tokio::time::sleep(grace + Duration::from_millis(200)).await;
        assert_eq!(*target.0.lock().unwrap(), vec![true], "still protected: a job is in hand");

        tx.send_replace(false);
        recorded(&target, &[true, false]).await;
        drop(tx);
        task.await.unwrap();
    }
}
