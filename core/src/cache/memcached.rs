//! memcached, one node or many (keys spread by rendezvous hashing), through the
//! `memcache` crate's async meta-protocol client: every exchange has a
//! deadline and a connection that failed mid-exchange is dropped, never reused.
//!
//! A node that is down or slow costs one short timeout; after that the cache
//! reports itself unavailable at once for a second (callers read the database
//! meanwhile), then tries again, so it recovers by itself when memcached returns.

use crate::domain::CacheBackend;
use crate::error::cause;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use memcache::exp::{AsyncMetaClient, Get, Meta, Ttl};

use super::{CacheError, Cached, KvCache};

const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(150);
const BACKOFF: Duration = Duration::from_secs(1);

pub struct Memcached {
    client: AsyncMetaClient,
    nodes: String,
    down_until: Mutex<Option<Instant>>,
}

impl Memcached {
    /// `nodes`: `host:port[,host:port…]`.
    pub async fn connect(nodes: &str) -> Result<Memcached, CacheError> {
        let addrs: Vec<String> = nodes.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if addrs.is_empty() {
            return Err(CacheError::config("memcache:// needs at least one host:port"));
        }
        let client = AsyncMetaClient::builder()
            .connect_timeout(Some(EXCHANGE_TIMEOUT))
            .io_timeout(Some(EXCHANGE_TIMEOUT))
            .max_idle(32)
            .connect_multiple_async(addrs)
            .await
            .map_err(|e| {
                let message = format!("memcached at {nodes}: {e}");
                match e {
                    // Not resolvable yet (a new cluster's name) or refused: worth waiting for.
                    memcache::exp::Error::Io(_) => CacheError::Unavailable { message, source: cause(e) },
                    _ => CacheError::Config { message, source: cause(e) },
                }
            })?;
        Ok(Memcached { client, nodes: nodes.to_owned(), down_until: Mutex::new(None) })
    }

    fn check_available(&self) -> Result<(), CacheError> {
        let until = *self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(t) if Instant::now() < t => {
                Err(CacheError::unavailable(format!("memcached at {} failed recently", self.nodes)))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, e: memcache::exp::Error) -> CacheError {
        let mut until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(nodes = %self.nodes, error = %e, "memcached failed; reading galleries from the database for a while");
        }
        *until = Some(Instant::now() + BACKOFF);
        CacheError::Unavailable { message: format!("memcached at {}: {e}", self.nodes), source: cause(e) }
    }

    fn succeeded(&self) {
        let mut until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.take().is_some() {
            tracing::info!(nodes = %self.nodes, "memcached answers again");
        }
    }
}

fn ttl(d: Duration) -> Ttl {
    Ttl::from(d.max(Duration::from_secs(1)))
}

#[async_trait]
impl KvCache for Memcached {
    fn kind(&self) -> CacheBackend {
        CacheBackend::Memcached
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Cached>, CacheError> {
        self.check_available()?;
        let results = self
            .client
            .run_many(keys.iter().map(|k| Get::new(k).meta(Meta::NONE.cas())))
            .await
            .map_err(|e| self.failed(e))?;
        let mut out = HashMap::new();
        for (key, result) in keys.iter().zip(results) {
            let got = result.map_err(|e| self.failed(e))?;
            if got.hit()
                && let Some(data) = got.value
            {
                out.insert(key.to_string(), Cached { data: data.into(), cas: got.item.cas.unwrap_or(0) });
            }
        }
        self.succeeded();
        Ok(out)
    }

    async fn set(&self, key: &str, value: &[u8], t: Duration) -> Result<(), CacheError> {
        self.check_available()?;
        self.client.set(key, value).ttl(ttl(t)).send().await.map_err(|e| self.failed(e))?;
        self.succeeded();
        Ok(())
    }

    async fn add(&self, key: &str, value: &[u8], t: Duration) -> Result<bool, CacheError> {
        self.check_available()?;
        let r = self.client.set(key, value).ttl(ttl(t)).add().send().await.map_err(|e| self.failed(e))?;
        self.succeeded();
        Ok(r.applied())
    }

    async fn cas(&self, key: &str, value: &[u8], t: Duration, cas: u64) -> Result<bool, CacheError> {
        self.check_available()?;
        let r = self.client.set(key, value).ttl(ttl(t)).compare_cas(cas).send().await.map_err(|e| self.failed(e))?;
        self.succeeded();
        Ok(r.applied())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.check_available()?;
        self.client.delete(key).send().await.map_err(|e| self.failed(e))?;
        self.succeeded();
        Ok(())
    }
}
