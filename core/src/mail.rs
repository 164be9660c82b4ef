//! The mailer port: sign-in links leave through it. `outbox://DIR` writes each
//! message as an `.eml` file (and the caller logs the link), for one machine
//! with no mail server; `smtp://…` / `smtps://…` sends for real.

use std::sync::Arc;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::domain::Email;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail configuration: {0}")]
    Config(String),
    #[error("the mail could not be sent: {0}")]
    Send(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// `outbox` or `smtp`.
    fn kind(&self) -> &'static str;
    async fn send(&self, to: &Email, subject: &str, body: &str) -> Result<(), MailError>;
}

pub fn from_url(url: &str, from: &str) -> Result<Arc<dyn Mailer>, MailError> {
    let from: lettre::message::Mailbox =
        from.parse().map_err(|e| MailError::Config(format!("FLIPSTACK_MAIL_FROM {from:?}: {e}")))?;
    if let Some(dir) = url.strip_prefix("outbox://") {
        std::fs::create_dir_all(dir).map_err(|e| MailError::Config(format!("cannot create the outbox {dir}: {e}")))?;
        return Ok(Arc::new(Outbox { transport: AsyncFileTransport::new(dir), from }));
    }
    if url.starts_with("smtp://") || url.starts_with("smtps://") {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::Config(format!("FLIPSTACK_MAIL_URL: {e}")))?
            .build();
        return Ok(Arc::new(Smtp { transport, from }));
    }
    Err(MailError::Config(format!("FLIPSTACK_MAIL_URL must be outbox://DIR or smtp://…, not {url:?}")))
}

fn message(from: &lettre::message::Mailbox, to: &Email, subject: &str, body: &str) -> Result<Message, MailError> {
    let to = to.as_str().parse().map_err(|e| MailError::Send(format!("recipient: {e}")))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_owned())
        .map_err(|e| MailError::Send(e.to_string()))
}

struct Outbox {
    transport: AsyncFileTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

#[async_trait]
impl Mailer for Outbox {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, to: &Email, subject: &str, body: &str) -> Result<(), MailError> {
        let id = self
            .transport
            .send(message(&self.from, to, subject, body)?)
            .await
            .map_err(|e| MailError::Send(e.to_string()))?;
        tracing::debug!(%id, to = %to.hashed_id(), "mail written to the outbox");
        Ok(())
    }
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

#[async_trait]
impl Mailer for Smtp {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, to: &Email, subject: &str, body: &str) -> Result<(), MailError> {
        self.transport
            .send(message(&self.from, to, subject, body)?)
            .await
            .map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}
