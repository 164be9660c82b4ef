//! Amazon SQS as the job queue. A message carries only the upload id. Long
//! polling; the visibility timeout is extended while a job runs and the
//! message deleted only once the flipped picture is stored and the row is
//! `done`. The queue's redrive policy moves a message received too often to
//! the dead-letter queue, whose messages mark their uploads failed.

use crate::domain::QueueBackend;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::AwsSettings;
use crate::domain::UploadId;
use crate::queue::{Delivery, JobQueue, QueueDepth, QueueError};

pub struct SqsQueue {
    client: Client,
    url: String,
    dead_letter_url: Option<String>,
}

fn unavailable<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    aws_sdk_sqs::error::SdkError<E, R>: std::error::Error + Send + Sync + 'static,
{
    QueueError::unavailable(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(), crate::error::cause(e))
}

impl SqsQueue {
    pub async fn connect(url: &str, aws: &AwsSettings) -> Result<SqsQueue, QueueError> {
        let client = Client::new(&super::sdk_config(aws).await);
        let attrs = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| {
                // No answer at all (refused, timed out) may come later; an answer that
                // refuses (no such queue, no permission) will not change by waiting.
                let unreachable = matches!(
                    e,
                    aws_sdk_sqs::error::SdkError::DispatchFailure(_) | aws_sdk_sqs::error::SdkError::TimeoutError(_)
                );
                let message =
                    format!("cannot read the SQS queue {url}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
                let source = crate::error::cause(e);
                if unreachable {
                    QueueError::Unavailable { message, source }
                } else {
                    QueueError::Config { message, source }
                }
            })?;
        // The dead-letter queue is found from the redrive policy's target ARN.
        let dead_letter_url = match attrs.attributes().and_then(|a| a.get(&QueueAttributeName::RedrivePolicy)) {
            Some(policy) => {
                let arn = serde_json::from_str::<serde_json::Value>(policy)
                    .ok()
                    .and_then(|v| v.get("deadLetterTargetArn").and_then(|a| a.as_str()).map(String::from));
                match arn.as_deref().and_then(|a| a.rsplit(':').next()) {
                    Some(name) => client
                        .get_queue_url()
                        .queue_name(name)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.queue_url().map(String::from)),
                    None => None,
                }
            }
            None => {
                tracing::warn!(
                    queue = url,
                    "the SQS queue has no redrive policy: poison messages will not reach a dead-letter queue"
                );
                None
            }
        };
        Ok(SqsQueue { client, url: url.to_owned(), dead_letter_url })
    }

    async fn receive_from(
        &self,
        url: &str,
        wait: Duration,
        max: u32,
        visibility: Option<i32>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut req = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(v) = visibility {
            req = req.visibility_timeout(v);
        }
        let out = req.send().await.map_err(unavailable)?;
        let mut deliveries = Vec::new();
        for m in out.messages() {
            let handle = m.receipt_handle().map(String::from);
            match m.body().and_then(|b| b.trim().parse::<UploadId>().ok()) {
                Some(upload_id) => {
                    let receive_count = m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1);
                    deliveries.push(Delivery { upload_id, handle, receive_count });
                }
                None => {
                    // Not one of ours: drop it rather than let it circle forever.
                    tracing::warn!(queue = url, body = ?m.body().map(|b| b.chars().take(60).collect::<String>()), "deleting a message that is not an upload id");
                    if let Some(h) = handle {
                        crate::error::ignore_failure(
                            "deleting a message that is not an upload id",
                            self.client.delete_message().queue_url(url).receipt_handle(h).send().await,
                        );
                    }
                }
            }
        }
        Ok(deliveries)
    }

    async fn count(&self, url: &str) -> Result<(u64, u64), QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(unavailable)?;
        let get = |n: QueueAttributeName| {
            out.attributes().and_then(|a| a.get(&n)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

fn handle(d: &Delivery) -> Result<&str, QueueError> {
    d.handle.as_deref().ok_or_else(|| QueueError::unavailable("an SQS delivery without a receipt handle", None))
}

#[async_trait]
impl JobQueue for SqsQueue {
    fn kind(&self) -> QueueBackend {
        QueueBackend::Sqs
    }

    async fn enqueue(&self, id: UploadId) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(id.to_string())
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn receive(&self, wait: Duration, max: u32) -> Result<Vec<Delivery>, QueueError> {
        self.receive_from(&self.url, wait, max, None).await
    }

    async fn extend(&self, d: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(handle(d)?)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(handle(d)?)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.extend(d, delay).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let (visible, in_flight) = self.count(&self.url).await?;
        let dead_letters = match &self.dead_letter_url {
            Some(u) => {
                let (v, h) = self.count(u).await?;
                Some(v + h)
            }
            None => None,
        };
        Ok(QueueDepth { visible, in_flight, dead_letters })
    }

    fn needs_reconciler(&self) -> bool {
        true
    }

    async fn dead_letters(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        match &self.dead_letter_url {
            // Left visible by a look (a visibility of zero), so an operator's redrive
            // finds every one at any time; each look takes a sample of up to `max`,
            // and marking an upload that is already failed changes nothing.
            Some(u) => self.receive_from(u, Duration::ZERO, max, Some(0)).await,
            None => Ok(Vec::new()),
        }
    }

    async fn redrive(&self, max: u32) -> Result<Vec<UploadId>, QueueError> {
        let Some(dead) = &self.dead_letter_url else {
            return Err(QueueError::config(format!(
                "the SQS queue {} has no redrive policy, so no dead-letter queue to redrive",
                self.url
            )));
        };
        let mut moved = Vec::new();
        while (moved.len() as u32) < max {
            // Hidden while moved; one that fails to move shows again in a minute.
            let batch = self.receive_from(dead, Duration::ZERO, max - moved.len() as u32, Some(60)).await?;
            if batch.is_empty() {
                break;
            }
            for d in batch {
                self.enqueue(d.upload_id).await?;
                self.client
                    .delete_message()
                    .queue_url(dead)
                    .receipt_handle(handle(&d)?)
                    .send()
                    .await
                    .map_err(unavailable)?;
                moved.push(d.upload_id);
            }
        }
        Ok(moved)
    }
}
