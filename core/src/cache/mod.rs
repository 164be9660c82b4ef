//! The gallery cache port: a small key-value interface with compare-and-swap,
//! which is all the gallery's cache protocol ([`crate::gallery`]) needs.
//!
//! Adapters: [`memory`] (in-process, the embedded default) and [`memcached`]
//! (one or many memcached nodes, the production cache).

pub mod memcached;
pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache did not answer in time or refused the connection: callers go
    /// to the database instead, with no error for the user.
    #[error("the cache is unavailable: {message}")]
    Unavailable { message: String, source: Option<crate::error::Cause> },
    #[error("cache configuration: {message}")]
    Config { message: String, source: Option<crate::error::Cause> },
}

impl CacheError {
    pub fn unavailable(message: impl Into<String>) -> CacheError {
        CacheError::Unavailable { message: message.into(), source: None }
    }

    pub fn config(message: impl Into<String>) -> CacheError {
        CacheError::Config { message: message.into(), source: None }
    }

    /// Whether the caller can retry (or read the database instead).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CacheError::Unavailable { .. })
    }
}

/// A stored value and its compare-and-swap token. The bytes are shared, not
/// copied, out of the in-process cache: a cached gallery page is read on every
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub data: bytes::Bytes,
    pub cas: u64,
}

#[async_trait]
pub trait KvCache: Send + Sync + 'static {
    /// `memory` or `memcached`.
    fn kind(&self) -> crate::domain::CacheBackend;
    /// Looks up several keys in one round trip; absent keys are absent.
    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Cached>, CacheError>;
    /// One key: [`Self::get_many`] without the map, for the lookups every request makes.
    async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        Ok(self.get_many(&[key]).await?.remove(key))
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError>;
    /// Stores only when the key is absent; false when it was there.
    async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError>;
    /// Stores only when the key still has this token; false when it changed or went.
    async fn cas(&self, key: &str, value: &[u8], ttl: Duration, cas: u64) -> Result<bool, CacheError>;
    async fn delete(&self, key: &str) -> Result<(), CacheError>;
}

/// Opens the cache a URL names: `memory://` or `memcache://host:port[,host:port…]`.
pub async fn connect(url: &str) -> Result<Arc<dyn KvCache>, CacheError> {
    if url == "memory://" || url == "memory" {
        Ok(Arc::new(memory::MemoryCache::new(64 * 1024 * 1024)))
    } else if let Some(nodes) = url.strip_prefix("memcache://") {
        Ok(Arc::new(memcached::Memcached::connect(nodes).await?))
    } else {
        Err(CacheError::config(format!(
            "FLIPSTACK_CACHE_URL must be memory:// or memcache://host:port[,host:port…], not {url:?}"
        )))
    }
}
