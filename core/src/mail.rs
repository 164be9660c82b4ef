//! The mailer port: sign-in links and completion notices leave through it. `outbox://DIR` writes each
//! message as an `.eml` file (and the caller logs the file's path), for one
//! machine with no mail server; SMTP sends for real:
//!
//! - `smtps://user:pass@host[:465]` — TLS from the first byte;
//! - `smtp://user:pass@host[:587]` — STARTTLS, required: a server that does not
//!   offer it gets nothing, not even the password;
//! - `smtp+insecure://host[:25]` — plaintext, only when asked for by name
//!   (a relay on the same machine or a trusted network).

use std::sync::Arc;

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::domain::Email;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail configuration: {0}")]
    Config(String),
    #[error("the mail could not be sent: {0}")]
    Send(String),
}

/// One plain-text mail.
#[derive(Debug, Clone, Copy)]
pub struct Mail<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    /// For mail a person asked for: the URL that stops it with one POST,
    /// sent as `List-Unsubscribe` with `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click` (RFC 8058), so mail programs offer it
    /// beside the message.
    pub unsubscribe: Option<&'a str>,
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// `outbox` or `smtp`.
    fn kind(&self) -> &'static str;
    async fn send(&self, to: &Email, mail: &Mail<'_>) -> Result<(), MailError>;
}

pub fn from_url(url: &str, from: &str) -> Result<Arc<dyn Mailer>, MailError> {
    let from: lettre::message::Mailbox =
        from.parse().map_err(|e| MailError::Config(format!("FLIPSTACK_MAIL_FROM {from:?}: {e}")))?;
    if let Some(dir) = url.strip_prefix("outbox://") {
        std::fs::create_dir_all(dir).map_err(|e| MailError::Config(format!("cannot create the outbox {dir}: {e}")))?;
        return Ok(Arc::new(Outbox { transport: AsyncFileTransport::new(dir), dir: dir.into(), from }));
    }
    let (lettre_url, security) = smtp_url(url)?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url)
        .map_err(|e| MailError::Config(format!("FLIPSTACK_MAIL_URL: {e}")))?
        .build();
    if security == SmtpSecurity::Plaintext {
        tracing::warn!(
            "FLIPSTACK_MAIL_URL is smtp+insecure://: mail, sign-in links and any SMTP password cross the network unencrypted"
        );
    }
    Ok(Arc::new(Smtp { transport, from, security }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpSecurity {
    /// `smtps://`
    ImplicitTls,
    /// `smtp://`: STARTTLS or nothing.
    StartTls,
    /// `smtp+insecure://`
    Plaintext,
}

const SMTP_SCHEMES_HINT: &str = "use smtps://HOST (TLS from the start), smtp://HOST (STARTTLS required), \
     or, on a trusted network only, smtp+insecure://HOST (plaintext)";

/// The URL lettre reads for ours, with the TLS rule the scheme promises.
fn smtp_url(url: &str) -> Result<(String, SmtpSecurity), MailError> {
    let (rest, security) = if let Some(rest) = url.strip_prefix("smtps://") {
        (rest, SmtpSecurity::ImplicitTls)
    } else if let Some(rest) = url.strip_prefix("smtp://") {
        (rest, SmtpSecurity::StartTls)
    } else if let Some(rest) = url.strip_prefix("smtp+insecure://") {
        (rest, SmtpSecurity::Plaintext)
    } else {
        return Err(MailError::Config(format!(
            "FLIPSTACK_MAIL_URL must be outbox://DIR or an SMTP URL, not {:?}: {SMTP_SCHEMES_HINT}",
            url.split("://").next().unwrap_or("")
        )));
    };
    // The scheme alone says how the connection is protected.
    if rest.contains("tls=") {
        return Err(MailError::Config(format!("FLIPSTACK_MAIL_URL: drop the tls= parameter; {SMTP_SCHEMES_HINT}")));
    }
    let lettre_url = match security {
        SmtpSecurity::ImplicitTls => format!("smtps://{rest}"),
        SmtpSecurity::Plaintext => format!("smtp://{rest}"),
        SmtpSecurity::StartTls => {
            let joint = if rest.contains('?') { '&' } else { '?' };
            format!("smtp://{rest}{joint}tls=required")
        }
    };
    Ok((lettre_url, security))
}

fn message(from: &lettre::message::Mailbox, to: &Email, mail: &Mail<'_>) -> Result<Message, MailError> {
    let to = to.as_str().parse().map_err(|e| MailError::Send(format!("recipient: {e}")))?;
    let mut builder =
        Message::builder().from(from.clone()).to(to).subject(mail.subject).header(ContentType::TEXT_PLAIN);
    if let Some(url) = mail.unsubscribe {
        // A header value lettre would encode (RFC 2047) is no longer a URL a
        // mail program can use: only printable ASCII, as a URL serialises.
        if url.is_empty() || !url.bytes().all(|b| b.is_ascii_graphic() && b != b'>') {
            return Err(MailError::Send(format!(
                "the unsubscribe link {url:?} is not a plain ASCII URL; check FLIPSTACK_PUBLIC_URL"
            )));
        }
        builder = builder
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{url}>")))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    builder.body(mail.body.to_owned()).map_err(|e| MailError::Send(e.to_string()))
}

struct Outbox {
    transport: AsyncFileTransport<Tokio1Executor>,
    dir: std::path::PathBuf,
    from: lettre::message::Mailbox,
}

#[async_trait]
impl Mailer for Outbox {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, to: &Email, mail: &Mail<'_>) -> Result<(), MailError> {
        let id =
            self.transport.send(message(&self.from, to, mail)?).await.map_err(|e| MailError::Send(e.to_string()))?;
        // The path, never the message: the log may be read by more people than the outbox.
        let path = self.dir.join(format!("{id}.eml"));
        tracing::info!(path = %path.display(), to = %to.hashed_id(), "mail written to the outbox");
        Ok(())
    }
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    security: SmtpSecurity,
}

#[async_trait]
impl Mailer for Smtp {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, to: &Email, mail: &Mail<'_>) -> Result<(), MailError> {
        self.transport.send(message(&self.from, to, mail)?).await.map_err(|e| {
            let e = e.to_string();
            if self.security == SmtpSecurity::StartTls && e.contains("STARTTLS") {
                MailError::Send(format!(
                    "{e}: smtp:// sends only after STARTTLS, and this server does not offer it; \
                     {SMTP_SCHEMES_HINT}"
                ))
            } else {
                MailError::Send(e)
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A minimal SMTP server on 127.0.0.1 that offers no STARTTLS; returns its
    /// port and, once a client is done, everything it was sent.
    async fn plaintext_smtp_server() -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut seen = String::new();
            write.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut in_data = false;
            // Bounded: a client says at most this many lines in these tests.
            for _ in 0..200 {
                let Ok(Some(line)) = lines.next_line().await else { break };
                seen.push_str(&line);
                seen.push('\n');
                let reply: &[u8] = if in_data {
                    if line == "." {
                        in_data = false;
                        b"250 queued\r\n"
                    } else {
                        continue;
                    }
                } else {
                    match line.split(' ').next().unwrap_or("").to_ascii_uppercase().as_str() {
                        "EHLO" => b"250-test\r\n250 AUTH PLAIN LOGIN\r\n",
                        "AUTH" => b"235 ok\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    }
                };
                if write.write_all(reply).await.is_err() {
                    break;
                }
            }
            seen
        });
        (port, task)
    }

    fn to() -> Email {
        Email::parse("someone@example.com").unwrap()
    }

    #[tokio::test]
    async fn smtp_refuses_a_server_without_starttls_before_the_password() {
        let (port, server) = plaintext_smtp_server().await;
        let mailer =
            from_url(&format!("smtp://user:secret-pw@127.0.0.1:{port}"), "flipstack <fs@example.com>").unwrap();
        let mail = Mail { subject: "Sign in", body: "https://example.com/signin/SECRET-LINK", unsubscribe: None };
        let err = mailer.send(&to(), &mail).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("STARTTLS") && text.contains("smtp+insecure://"), "{text}");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(!seen.contains("AUTH") && !seen.contains("SECRET-LINK"), "nothing secret was sent: {seen}");
    }

    #[tokio::test]
    async fn smtp_insecure_is_the_explicit_plaintext_opt_out() {
        let (port, server) = plaintext_smtp_server().await;
        let mailer = from_url(&format!("smtp+insecure://127.0.0.1:{port}"), "flipstack <fs@example.com>").unwrap();
        mailer
            .send(&to(), &Mail { subject: "Sign in", body: "the link: SECRET-LINK", unsubscribe: None })
            .await
            .unwrap();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(seen.contains("SECRET-LINK"), "delivered: {seen}");
    }

    #[test]
    fn a_mail_asked_for_can_be_stopped_in_one_click() {
        let from: lettre::message::Mailbox = "flipstack <fs@example.com>".parse().unwrap();
        let url = "https://photos.example.com/notices/unsubscribe?person=12345&token=a-long_token-of-forty-three-characters-abcd";
        let mail = Mail { subject: "Your pictures are flipped", body: "2 pictures", unsubscribe: Some(url) };
        let text = String::from_utf8(message(&from, &to(), &mail).unwrap().formatted()).unwrap();
        assert!(text.contains(&format!("\r\nList-Unsubscribe: <{url}>\r\n")), "one unfolded line: {text}");
        assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{text}");
        let plain = Mail { unsubscribe: None, ..mail };
        let text = String::from_utf8(message(&from, &to(), &plain).unwrap().formatted()).unwrap();
        assert!(!text.contains("List-Unsubscribe"), "only mail a person asked for: {text}");
        for bad in ["https://h/x\r\nBcc: someone@example.com", "https://h/ü", "https://h/a b", ""] {
            assert!(message(&from, &to(), &Mail { unsubscribe: Some(bad), ..mail }).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_say_how_mail_is_protected() {
        assert_eq!(smtp_url("smtp://h:587").unwrap(), ("smtp://h:587?tls=required".into(), SmtpSecurity::StartTls));
        assert_eq!(smtp_url("smtps://u:p@h").unwrap(), ("smtps://u:p@h".into(), SmtpSecurity::ImplicitTls));
        assert_eq!(smtp_url("smtp+insecure://h:25").unwrap(), ("smtp://h:25".into(), SmtpSecurity::Plaintext));
        // lettre's own switch would fall back to plaintext behind the scheme's back.
        assert!(smtp_url("smtp://h?tls=opportunistic").is_err());
        assert!(smtp_url("http://h").is_err());
    }
}
