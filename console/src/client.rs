//! The admin API's client: status, block/unblock, the streamed dump and the
//! event stream. Every call is async and bounded in time, so a server that
//! does not answer shows up as an error, never as a wait.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eventsource_stream::Eventsource;
use flipstack_domain::status::{AdminStatus, BackupDone, BackupInfo, LogLine, UploadDetail, UploadListing};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use tokio::io::AsyncWriteExt;

use crate::model::{AdminEvent, UploadQuery};

/// Short requests (status, block) give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Actions and listings (a retry of many uploads, a redrive) may take longer.
const ACTION_TIMEOUT: Duration = Duration::from_secs(20);
/// A backup or a restore reads or writes the whole database: as long as the
/// server lets any request take (`FLIPSTACK_REQUEST_DEADLINE_SECS`' default).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
/// The server sends a keep-alive at least every 15 s; silence past this
/// means the stream is dead even if the connection is not closed.
pub const EVENTS_IDLE: Duration = Duration::from_secs(40);
/// The last line of every complete dump (see flipstack-core's `store::dump`).
const DUMP_TRAILER: &[u8] = b"-- end of flipstack dump: ";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server refused the admin token (401): check --token, FLIPSTACK_ADMIN_TOKEN or <data>/admin-token")]
    Unauthorized,
    /// `body` is the answer's `error` when it has one (the admin API's JSON errors).
    #[error("{body} (the server answered {status})")]
    Status { status: StatusCode, body: String },
    #[error("{}", transport_message(.0))]
    Transport(#[from] reqwest::Error),
    #[error("the server's answer could not be read: {0}")]
    Decode(String),
    #[error("{0}")]
    Io(String),
    #[error(
        "the dump ended without its closing line (the server or the connection failed part-way); nothing was kept, take it again"
    )]
    IncompleteDump,
}

fn transport_message(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The innermost cause names the real problem (refused, reset, DNS).
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{what}: {cause}")
}

/// What a finished dump wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpWritten {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
}

impl AdminClient {
    pub fn new(base_url: &str, token: &str) -> Result<AdminClient, ClientError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ClientError::Decode("the admin token has characters a header cannot carry".into()))?;
        auth.set_sensitive(true);
        flipstack_domain::tls::install_crypto_provider();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build()?;
        Ok(AdminClient { http, base: base_url.trim_end_matches('/').to_owned(), auth })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).header(AUTHORIZATION, self.auth.clone())
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from));
            let body = error.unwrap_or_else(|| body.trim().to_owned());
            return Err(ClientError::Status { status, body: body.chars().take(200).collect() });
        }
        Ok(resp)
    }

    pub async fn status(&self) -> Result<AdminStatus, ClientError> {
        let resp = self.request(reqwest::Method::GET, "/admin/api/status").timeout(REQUEST_TIMEOUT).send().await?;
        Self::check(resp).await?.json::<AdminStatus>().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Blocks or unblocks uploads; answers the state the server now has.
    pub async fn set_blocked(&self, blocked: bool) -> Result<bool, ClientError> {
        let path = if blocked { "/admin/api/uploads/block" } else { "/admin/api/uploads/unblock" };
        let resp = self.request(reqwest::Method::POST, path).timeout(REQUEST_TIMEOUT).send().await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            blocked: bool,
        }
        let answer: Answer = Self::check(resp).await?.json().await.map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(answer.blocked)
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.post_within(path, ACTION_TIMEOUT).await
    }

    async fn post_within<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        within: Duration,
    ) -> Result<T, ClientError> {
        let resp = self.request(reqwest::Method::POST, path).timeout(within).send().await?;
        Self::check(resp).await?.json().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.request(reqwest::Method::GET, path).timeout(ACTION_TIMEOUT).send().await?;
        Self::check(resp).await?.json().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Retries one failed upload, or every one; answers how many went back to pending.
    pub async fn retry(&self, upload: Option<i64>) -> Result<usize, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            retried: Vec<i64>,
        }
        let path = match upload {
            Some(id) => format!("/admin/api/uploads/{id}/retry"),
            None => "/admin/api/uploads/retry".to_owned(),
        };
        Ok(self.post::<Answer>(&path).await?.retried.len())
    }

    /// Moves the dead-letter queue's messages back; answers how many.
    pub async fn redrive(&self) -> Result<usize, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            redriven: Vec<i64>,
        }
        Ok(self.post::<Answer>("/admin/api/queue/redrive").await?.redriven.len())
    }

    /// Pauses or resumes every worker; answers the state now.
    pub async fn set_paused(&self, paused: bool) -> Result<bool, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            paused: bool,
        }
        let path = if paused { "/admin/api/workers/pause" } else { "/admin/api/workers/resume" };
        Ok(self.post::<Answer>(path).await?.paused)
    }

    /// Sizes the local pool of `flipstack up`.
    pub async fn set_pool_desired(&self, count: u32) -> Result<u32, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            desired: u32,
        }
        Ok(self.post::<Answer>(&format!("/admin/api/pool/desired?count={count}")).await?.desired)
    }

    /// The newest uploads that match `filter`.
    pub async fn uploads(&self, filter: &UploadQuery) -> Result<Vec<UploadListing>, ClientError> {
        let query = serde_urlencoded::to_string(filter).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.get(&format!("/admin/api/uploads?{query}")).await
    }

    pub async fn upload(&self, id: i64) -> Result<UploadDetail, ClientError> {
        self.get(&format!("/admin/api/uploads/{id}")).await
    }

    /// The server's recent warnings and errors, oldest first.
    pub async fn logs(&self) -> Result<Vec<LogLine>, ClientError> {
        self.get("/admin/api/logs").await
    }

    /// The backups in the blob store, newest first.
    pub async fn backups(&self) -> Result<Vec<BackupInfo>, ClientError> {
        self.get("/admin/api/backups").await
    }

    /// Backs the database up into the blob store now.
    pub async fn back_up(&self) -> Result<BackupDone, ClientError> {
        self.post_within("/admin/api/backups", BACKUP_TIMEOUT).await
    }

    /// Replaces the database with a backup (the server backs it up first).
    pub async fn restore(&self, name: &str) -> Result<BackupDone, ClientError> {
        // A name is only ever letters, digits, `-` and `.`; the server checks it.
        self.post_within(&format!("/admin/api/backups/{name}/restore"), BACKUP_TIMEOUT).await
    }

    /// Streams the database dump into `path`: written beside it under a
    /// temporary name and renamed only once complete, so `path` never holds
    /// half a dump. `progress(bytes)` is called as it goes.
    pub async fn dump_to(&self, path: &Path, mut progress: impl FnMut(u64)) -> Result<DumpWritten, ClientError> {
        let io = |what: &str, e: std::io::Error| ClientError::Io(format!("{what}: {e}"));
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".flipstack-dump-")
            .tempfile_in(dir)
            .map_err(|e| io(&format!("creating a file in {}", dir.display()), e))?;
        let resp = self.request(reqwest::Method::GET, "/admin/api/dump").send().await?;
        let resp = Self::check(resp).await?;
        let file = tmp.reopen().map_err(|e| io("opening the temporary file", e))?;
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut stream = resp.bytes_stream();
        let mut bytes = 0u64;
        // The end of the file so far, to find the closing line.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(EVENTS_IDLE, stream.next()).await {
                Ok(Some(chunk)) => chunk?,
                Ok(None) => break,
                Err(_) => {
                    return Err(ClientError::Io(
                        "the server stopped sending the dump (nothing for 40 s); take it again".into(),
                    ));
                }
            };
            out.write_all(&chunk).await.map_err(|e| io("writing the dump", e))?;
            bytes += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 256);
            }
            progress(bytes);
        }
        out.flush().await.map_err(|e| io("writing the dump", e))?;
        drop(out);
        if !ends_with_trailer(&tail) {
            return Err(ClientError::IncompleteDump);
        }
        tmp.as_file().sync_all().map_err(|e| io("flushing the dump to disk", e))?;
        tmp.persist(path).map_err(|e| io(&format!("moving the dump to {}", path.display()), e.error))?;
        Ok(DumpWritten { path: path.to_owned(), bytes })
    }

    /// The event stream, until it ends or fails; reconnecting is the caller's.
    pub async fn events(
        &self,
    ) -> Result<impl Stream<Item = Result<Option<AdminEvent>, ClientError>> + use<>, ClientError> {
        let resp = self
            .request(reqwest::Method::GET, "/admin/api/events")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        let resp = Self::check(resp).await?;
        Ok(resp.bytes_stream().eventsource().map(|item| match item {
            // Events of kinds this console does not know are skipped.
            Ok(ev) => Ok(serde_json::from_str::<AdminEvent>(&ev.data).ok()),
            Err(e) => Err(ClientError::Decode(e.to_string())),
        }))
    }
}

/// True when the last line of `tail` is a dump's closing line.
fn ends_with_trailer(tail: &[u8]) -> bool {
    let body = tail.strip_suffix(b"\n").unwrap_or(tail);
    let last = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None => body,
    };
    last.starts_with(DUMP_TRAILER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_complete_only_with_its_closing_line() {
        assert!(ends_with_trailer(b"INSERT INTO x VALUES (1);\n-- end of flipstack dump: 1 rows\n"));
        assert!(!ends_with_trailer(b"INSERT INTO x VALUES (1);\n"));
        assert!(!ends_with_trailer(b"-- end of flipstack dump: 1 rows\nINSERT INTO x VALUES (1);\n"));
        assert!(!ends_with_trailer(b""));
    }
}
