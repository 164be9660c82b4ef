//! The background tasks that feed the console: the status poll, the event
//! stream and the AWS fleet poll. Each sends [`Msg`]s and never blocks the
//! draw loop; a source that fails reports why and tries again.

use std::sync::Arc;
use std::time::Duration;

use flipstack_provision::AwsSettings;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::MissedTickBehavior;

use crate::app::Msg;
use crate::client::{AdminClient, EVENTS_IDLE};

/// Polls `GET /admin/api/status` every `every`, and at once when `refresh`
/// is notified (after the console changed something).
pub async fn status(client: AdminClient, tx: mpsc::Sender<Msg>, every: Duration, refresh: Arc<Notify>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = refresh.notified() => {}
        }
        let msg = Msg::Status(client.status().await.map(Box::new).map_err(|e| e.to_string()));
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Follows `GET /admin/api/events`, reconnecting with a growing pause (up to
/// 5 s) while the server does not answer.
pub async fn events(client: AdminClient, tx: mpsc::Sender<Msg>) {
    let mut pause = Duration::from_millis(250);
    loop {
        let why = match client.events().await {
            Ok(stream) => {
                if tx.send(Msg::EventsConnected).await.is_err() {
                    return;
                }
                pause = Duration::from_millis(250);
                let mut stream = std::pin::pin!(stream);
                loop {
                    match tokio::time::timeout(EVENTS_IDLE, stream.next()).await {
                        Ok(Some(Ok(Some(event)))) => {
                            if tx.send(Msg::Event(event)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(Ok(None))) => {}
                        Ok(Some(Err(e))) => break e.to_string(),
                        Ok(None) => break "the server closed the event stream".to_owned(),
                        Err(_) => {
                            break format!("no event or keep-alive for {} s", EVENTS_IDLE.as_secs());
                        }
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if tx.send(Msg::EventsDown(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Reads the fleet's own numbers (what every server and worker sent to
/// CloudWatch, summed) every `every`.
pub async fn fleet_numbers(aws: AwsSettings, namespace: String, tx: mpsc::Sender<Msg>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = flipstack_domain::domain::now_millis();
        let read = flipstack_provision::fleet_numbers::fleet_numbers(&aws, &namespace, now);
        let msg = match tokio::time::timeout(every * 2 + Duration::from_secs(5), read).await {
            Ok(Ok(n)) => Msg::FleetNumbers(Ok(n)),
            Ok(Err(e)) => Msg::FleetNumbers(Err(format!("CloudWatch: {e}"))),
            Err(_) => Msg::FleetNumbers(Err("CloudWatch did not answer in time".into())),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Polls the stack's Auto Scaling groups every `every`.
pub async fn fleet(aws: AwsSettings, stack: String, tx: mpsc::Sender<Msg>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // AWS calls can hang on a bad network; a poll never outlives two intervals.
        let answer =
            tokio::time::timeout(every * 2 + Duration::from_secs(5), flipstack_provision::fleet::fleet(&aws, &stack))
                .await;
        let msg = match answer {
            Ok(Ok(groups)) => Msg::Fleet(Ok(groups)),
            Ok(Err(e)) => {
                Msg::Fleet(Err(format!("{e} (check the region, credentials and FLIPSTACK_AWS_ENDPOINT_URL)")))
            }
            Err(_) => Msg::Fleet(Err("AWS did not answer in time".into())),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
