//! The in-process cache: bounded by bytes, entries expire on their own TTL.
//! It serves one process; several server processes need memcached.

use crate::domain::CacheBackend;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{CacheError, Cached, KvCache};

#[derive(Clone)]
struct Entry {
    data: Bytes,
    cas: u64,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct MemoryCache {
    entries: Cache<String, Entry>,
    next_cas: AtomicU64,
}

impl MemoryCache {
    pub fn new(max_bytes: u64) -> MemoryCache {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Entry| (k.len() + v.data.len() + 64).min(u32::MAX as usize) as u32)
            .expire_after(PerEntryTtl)
            .build();
        MemoryCache { entries, next_cas: AtomicU64::new(1) }
    }

    fn entry(&self, value: &[u8], ttl: Duration) -> Entry {
        Entry { data: Bytes::copy_from_slice(value), cas: self.next_cas.fetch_add(1, Ordering::Relaxed), ttl }
    }
}

#[async_trait]
impl KvCache for MemoryCache {
    fn kind(&self) -> CacheBackend {
        CacheBackend::Memory
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Cached>, CacheError> {
        Ok(keys
            .iter()
            .filter_map(|k| self.entries.get(*k).map(|e| (k.to_string(), Cached { data: e.data.clone(), cas: e.cas })))
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        Ok(self.entries.get(key).map(|e| Cached { data: e.data, cas: e.cas }))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        self.entries.insert(key.to_owned(), self.entry(value, ttl));
        Ok(())
    }

    async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let fresh = self.entry(value, ttl);
        let result = self.entries.entry(key.to_owned()).and_compute_with(|current| match current {
            Some(_) => Op::Nop,
            None => Op::Put(fresh),
        });
        Ok(matches!(result, moka::ops::compute::CompResult::Inserted(_)))
    }

    async fn cas(&self, key: &str, value: &[u8], ttl: Duration, cas: u64) -> Result<bool, CacheError> {
        let fresh = self.entry(value, ttl);
        let result = self.entries.entry(key.to_owned()).and_compute_with(|current| match current {
            Some(e) if e.value().cas == cas => Op::Put(fresh),
            _ => Op::Nop,
        });
        Ok(matches!(result, moka::ops::compute::CompResult::ReplacedWith(_)))
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.entries.invalidate(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn add_and_cas_are_conditional() {
        let c = MemoryCache::new(1 << 20);
        let ttl = Duration::from_secs(60);
        assert!(c.add("k", b"a", ttl).await.unwrap());
        assert!(!c.add("k", b"b", ttl).await.unwrap());
        let got = c.get_many(&["k", "absent"]).await.unwrap();
        assert_eq!(got.len(), 1);
        let token = got["k"].cas;
        assert!(c.cas("k", b"c", ttl, token).await.unwrap());
        assert!(!c.cas("k", b"d", ttl, token).await.unwrap(), "the token changed with the last write");
        assert_eq!(c.get_many(&["k"]).await.unwrap()["k"].data, &b"c"[..]);
        c.delete("k").await.unwrap();
        assert!(!c.cas("k", b"e", ttl, token).await.unwrap());
    }

    #[tokio::test]
    async fn entries_expire() {
        let c = MemoryCache::new(1 << 20);
        c.set("k", b"a", Duration::from_millis(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(c.get_many(&["k"]).await.unwrap().is_empty());
    }
}
