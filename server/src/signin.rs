//! Sign-in links. A link is asked for on `/signin`, or by an upload to an
//! address that has a gallery this browser is not signed in to. The request
//! only queues the address; a background task looks it up, applies the
//! per-address limits, makes the one-time link and mails it. So the page
//! answers the same, after the same work, whether the address has a gallery
//! or not (no address enumeration by timing), and a slow mail server never
//! holds a request.

use std::sync::Arc;

use flipstack_core::domain::{Email, SecretToken, now_millis};
use flipstack_core::mail::Mail;
use flipstack_core::store::Person;

use crate::shield::Limit;
use crate::state::AppState;

pub const SIGNIN_LINK_LIFETIME_MS: i64 = 15 * 60 * 1000;

/// The queue of sign-in mails is full (the mail task is far behind).
#[derive(Debug)]
pub struct QueueFull;

/// Queues a sign-in link for `email`; mailed only if it has a gallery.
pub fn request_link(state: &AppState, email: Email) -> Result<(), QueueFull> {
    state.signin_mail.try_send(email).map_err(|_| QueueFull)
}

/// The background task that sends the queued links, one after another.
pub async fn run_mailer(state: Arc<AppState>) {
    let Some(mut queue) = state.signin_mail_queue.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    while let Some(email) = queue.recv().await {
        deliver(&state, &email).await;
    }
}

async fn deliver(state: &AppState, email: &Email) {
    let hash = email.hashed_id();
    let person = match state.services.store.person_by_email(email).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::info!(person = %hash, "sign-in asked for an address with no gallery; nothing mailed");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, person = %hash, "could not look up an address for a sign-in mail; ask again");
            return;
        }
    };
    // At most one mail a minute, and a few an hour, per address: the form
    // cannot be used to flood someone's inbox. Both fail closed.
    if state.over_limit(Limit::SigninMailInterval, &hash).await.is_some()
        || state.over_limit(Limit::SigninMailsPerAddress, &hash).await.is_some()
    {
        tracing::info!(person = %hash, "sign-in link already mailed recently; not sending another");
        return;
    }
    if let Err(e) = mail_link(state, &person).await {
        tracing::error!(error = %e, person = %hash, "could not send a sign-in mail");
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("storing the sign-in link: {0}")]
    Store(#[from] flipstack_core::store::StoreError),
    #[error("sending the mail: {0}")]
    Mail(#[from] flipstack_core::mail::MailError),
}

async fn mail_link(state: &AppState, person: &Person) -> Result<(), LinkError> {
    let services = &state.services;
    let token = SecretToken::generate();
    let now = now_millis();
    services.store.create_signin_token(&token.hash(), person.id, now + SIGNIN_LINK_LIFETIME_MS, now).await?;
    let link = format!("{}/signin/link?token={}", state.public_url(), token.as_str());
    let body = format!(
        "Hello,\n\nopen this link to sign in to your flipstack gallery ({}):\n\n{link}\n\nIt works once, for 15 minutes, in the browser you open it in.\nIf you did not ask for it, you can ignore this mail: nobody gets in without it.\n",
        person.email
    );
    let mail = Mail { subject: "Your flipstack sign-in link", body: &body, unsubscribe: None };
    services.mailer.send(&person.email, &mail).await?;
    // The link itself is a password for 15 minutes: it never goes to the log.
    tracing::info!(person = %person.email.hashed_id(), mailer = services.mailer.kind(), "sign-in link mailed");
    Ok(())
}
