//! What every request handler shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flipstack_core::Services;
use flipstack_core::domain::{ImageFormat, PersonId, UploadId, now_millis};
use flipstack_core::store::ReadSource;
use tokio::sync::{Mutex, Semaphore, broadcast};

/// The settings key of the upload block, shared by every server instance.
pub const UPLOADS_BLOCKED: &str = "uploads_blocked";
/// The key that signs CSRF tokens, made once and shared through the database.
pub const COOKIE_SECRET: &str = "cookie_secret";

pub struct AppState {
    pub services: Arc<Services>,
    /// Signs CSRF tokens.
    pub secret: Vec<u8>,
    pub admin_token: String,
    pub blocked: BlockFlag,
    pub events: broadcast::Sender<AdminEvent>,
    /// Bounds the uploads being verified at once (each holds a decoder).
    pub verify_slots: Semaphore,
    /// Screen sizes made for earlier uploads on their first request: one
    /// upload at a time.
    pub screen_slots: Semaphore,
    /// Turns true when the server shuts down: long-lived answers (the
    /// galleries' event streams) end then instead of holding it open.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub spool: Spool,
    /// Owner and format of uploads, which never change: images are served
    /// without a database query after the first.
    pub owners: moka::sync::Cache<UploadId, (PersonId, ImageFormat)>,
    pub started_at: Instant,
    /// Where people reach this server (mailed links): the configured public
    /// URL, else the address it is bound to (known once bound).
    pub public_url: std::sync::OnceLock<String>,
    /// Gallery pages as rendered for one session (keyed by its token, which
    /// seeds the page's CSRF token and which no other session has) and page number, with the decoded page
    /// they show: a cached gallery is rendered again only when it changed.
    pub rendered: moka::sync::Cache<(String, u64), Arc<RenderedGallery>>,
    pub limiter: flipstack_core::limits::RateLimiter,
    pub upload_slots: crate::shield::UploadSlots,
    pub spool_budget: crate::shield::SpoolBudget,
    pub connections: Arc<crate::listener::ConnectionCounts>,
    /// Sign-in mails to send, off the request path (so an answer takes the
    /// same time whether the address has a gallery or not).
    pub signin_mail: tokio::sync::mpsc::Sender<flipstack_core::domain::Email>,
    pub signin_mail_queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<flipstack_core::domain::Email>>>,
}

pub struct RenderedGallery {
    pub page: Arc<flipstack_core::store::GalleryPage>,
    pub html: bytes::Bytes,
}

/// The rendered-gallery memo, bounded by the bytes it holds.
pub fn rendered_cache() -> moka::sync::Cache<(String, u64), Arc<RenderedGallery>> {
    moka::sync::Cache::builder()
        .weigher(|k: &(String, u64), v: &Arc<RenderedGallery>| {
            (k.0.len() + v.html.len()).try_into().unwrap_or(u32::MAX)
        })
        .max_capacity(64 * 1024 * 1024)
        .build()
}

pub use flipstack_core::status::AdminEvent;

impl AppState {
    pub fn public_url(&self) -> &str {
        self.public_url.get().map(String::as_str).unwrap_or("")
    }

    pub fn cookie_secure(&self) -> bool {
        self.services.config.cookie_secure.unwrap_or_else(|| self.public_url().starts_with("https://"))
    }

    pub fn emit(&self, event: AdminEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    pub fn emit_read(&self, person: &str, source: ReadSource) {
        if self.events.receiver_count() > 0 {
            self.emit(AdminEvent::GalleryRead { at: now_millis(), person: person.to_owned(), source });
        }
    }
}

/// The upload block as this instance sees it: read from the primary at most
/// every half second, so a change reaches every instance within a second.
pub struct BlockFlag {
    value: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

const BLOCK_TTL: Duration = Duration::from_millis(500);

impl BlockFlag {
    pub fn new(initial: bool) -> BlockFlag {
        BlockFlag { value: AtomicBool::new(initial), checked: Mutex::new(Some(Instant::now())) }
    }

    pub async fn get(&self, services: &Services) -> bool {
        let mut checked = self.checked.lock().await;
        if checked.is_none_or(|t| t.elapsed() >= BLOCK_TTL) {
            match services.store.setting(UPLOADS_BLOCKED).await {
                Ok(v) => {
                    let blocked = v.as_deref() == Some("true");
                    self.value.store(blocked, Ordering::Relaxed);
                    services.metrics.uploads_blocked.set(blocked as i64);
                    *checked = Some(Instant::now());
                }
                // Keep the last known value; the next request tries again.
                Err(e) => tracing::warn!(error = %e, "could not read the upload block setting"),
            }
        }
        self.value.load(Ordering::Relaxed)
    }

    /// After this instance changed it.
    pub async fn set_local(&self, blocked: bool) {
        self.value.store(blocked, Ordering::Relaxed);
        *self.checked.lock().await = Some(Instant::now());
    }
}

/// This server's spool folder, locked while the server runs so that another
/// server starting on the same data folder leaves it alone.
pub struct Spool {
    pub dir: PathBuf,
    pub _lock: std::fs::File,
}
