//! Rate limits shared by every instance: fixed-window counters in the cache
//! (memcached in production, so every server counts together), with a count
//! of this process's own that is always kept. A cache that errs therefore
//! never lifts a limit: the limiter falls back to this instance's count
//! (fails closed), which can only be lower than the fleet's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::KvCache;

/// At most `limit` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub window: Duration,
}

impl Rate {
    pub fn per_hour(limit: u32) -> Rate {
        Rate { limit, window: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the window ends after this long.
    Limited {
        retry_after: Duration,
    },
}

impl Verdict {
    pub fn is_limited(self) -> bool {
        matches!(self, Verdict::Limited { .. })
    }
}

/// Local counters kept at most; older windows are dropped first.
const LOCAL_ENTRIES: usize = 100_000;
/// Compare-and-swap rounds before a contended shared counter gives way to the local one.
const CAS_ROUNDS: usize = 8;

pub struct RateLimiter {
    cache: Arc<dyn KvCache>,
    /// key → (window number, events counted here).
    local: Mutex<HashMap<String, (u64, u32)>>,
}

impl RateLimiter {
    pub fn new(cache: Arc<dyn KvCache>) -> RateLimiter {
        RateLimiter { cache, local: Mutex::new(HashMap::new()) }
    }

    /// Counts one event of `scope` for `subject` (a client address, a person)
    /// and says whether it is within `rate`. Refused events count too, so a
    /// client that keeps knocking stays limited until the window ends.
    pub async fn hit(&self, scope: &str, subject: &str, rate: Rate, now_ms: i64) -> Verdict {
        let window_ms = rate.window.as_millis().max(1) as i64;
        let window_no = (now_ms.max(0) / window_ms) as u64;
        let retry_after = Duration::from_millis((window_ms - now_ms.rem_euclid(window_ms)).max(1) as u64);
        let digest = Sha256::digest(subject.as_bytes());
        let key = format!("fs:rl:{scope}:{}:{window_no}", hex::encode(&digest[..12]));
        let local = self.count_locally(&key, window_no);
        let shared = self.count_shared(&key, rate.window + Duration::from_secs(60)).await;
        let seen = shared.unwrap_or(0).max(local);
        if seen > rate.limit { Verdict::Limited { retry_after } } else { Verdict::Allowed }
    }

    fn count_locally(&self, key: &str, window_no: u64) -> u32 {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.len() >= LOCAL_ENTRIES && !local.contains_key(key) {
            local.retain(|_, (w, _)| *w >= window_no);
            if local.len() >= LOCAL_ENTRIES {
                local.clear();
            }
        }
        let entry = local.entry(key.to_owned()).or_insert((window_no, 0));
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    /// The fleet-wide count after this event, or None when the cache could not say.
    async fn count_shared(&self, key: &str, ttl: Duration) -> Option<u32> {
        for _ in 0..CAS_ROUNDS {
            let found = self.cache.get_many(&[key]).await.ok()?;
            match found.get(key) {
                None => {
                    if self.cache.add(key, b"1", ttl).await.ok()? {
                        return Some(1);
                    }
                }
                Some(c) => {
                    let n: u32 = std::str::from_utf8(&c.data).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                    let next = n.saturating_add(1);
                    if self.cache.cas(key, next.to_string().as_bytes(), ttl, c.cas).await.ok()? {
                        return Some(next);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::memory::MemoryCache;

    #[tokio::test]
    async fn limits_within_a_window_and_frees_the_next() {
        let limiter = RateLimiter::new(Arc::new(MemoryCache::new(1 << 20)));
        let rate = Rate { limit: 3, window: Duration::from_secs(60) };
        let t0 = 1_000_000_000_000;
        for _ in 0..3 {
            assert_eq!(limiter.hit("t", "a", rate, t0).await, Verdict::Allowed);
        }
        let Verdict::Limited { retry_after } = limiter.hit("t", "a", rate, t0).await else { panic!("4th allowed") };
        assert!(retry_after <= Duration::from_secs(60));
        assert_eq!(limiter.hit("t", "b", rate, t0).await, Verdict::Allowed, "another subject has its own count");
        assert_eq!(limiter.hit("t", "a", rate, t0 + 60_000).await, Verdict::Allowed, "the next window starts at zero");
    }

    /// A cache that errs on every call: the limiter must still limit.
    struct Broken;
    #[async_trait::async_trait]
    impl KvCache for Broken {
        fn kind(&self) -> crate::domain::CacheBackend {
            crate::domain::CacheBackend::Memcached
        }
        async fn get_many(
            &self,
            _: &[&str],
        ) -> Result<HashMap<String, crate::cache::Cached>, crate::cache::CacheError> {
            Err(crate::cache::CacheError::unavailable("down"))
        }
        async fn set(&self, _: &str, _: &[u8], _: Duration) -> Result<(), crate::cache::CacheError> {
            Err(crate::cache::CacheError::unavailable("down"))
        }
        async fn add(&self, _: &str, _: &[u8], _: Duration) -> Result<bool, crate::cache::CacheError> {
            Err(crate::cache::CacheError::unavailable("down"))
        }
        async fn cas(&self, _: &str, _: &[u8], _: Duration, _: u64) -> Result<bool, crate::cache::CacheError> {
            Err(crate::cache::CacheError::unavailable("down"))
        }
        async fn delete(&self, _: &str) -> Result<(), crate::cache::CacheError> {
            Err(crate::cache::CacheError::unavailable("down"))
        }
    }

    #[tokio::test]
    async fn fails_closed_when_the_cache_errs() {
        let limiter = RateLimiter::new(Arc::new(Broken));
        let rate = Rate { limit: 2, window: Duration::from_secs(60) };
        assert!(!limiter.hit("t", "a", rate, 0).await.is_limited());
        assert!(!limiter.hit("t", "a", rate, 0).await.is_limited());
        assert!(limiter.hit("t", "a", rate, 0).await.is_limited());
    }
}
