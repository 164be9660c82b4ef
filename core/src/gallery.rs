//! The gallery read path: cache-aside with read-your-writes.
//!
//! Per person (keyed by the hash of the e-mail) the cache holds a *watermark*:
//! a random token that changes with every write of that person, and the
//! replication position of their newest write. Cached pages carry the token
//! that was current *before* they were read from the database, so a slow
//! reader that fetched an old view can store it but never have it served
//! after a newer write (the stale-set race): its token is already outdated.
//!
//! On a miss the page is read from a replica that has reached the watermark's
//! position (waited for, briefly), else from the primary. With no watermark
//! (first read, or the cache lost it) the read goes to the primary, and the
//! primary's position becomes the watermark. Misses for one page are
//! coalesced in this process (single flight). A cache that is down or slow
//! costs nothing but speed: reads go to the primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cache::KvCache;
use crate::domain::PersonId;
use crate::metrics::Metrics;
use crate::store::{GalleryPage, MetadataStore, ReadFrom, ReadSource, ReplicationPos, StoreError, WriteReceipt};

/// How long a watermark outlives the pages that depend on it.
const WATERMARK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Watermark {
    token: u64,
    pos: Option<ReplicationPos>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedPage {
    token: u64,
    page: GalleryPage,
}

#[derive(Debug, Clone)]
pub struct GalleryRead {
    pub page: Arc<GalleryPage>,
    pub source: ReadSource,
}

type Flight = Shared<BoxFuture<'static, Result<(Arc<GalleryPage>, ReadSource), StoreError>>>;

pub struct Gallery {
    store: Arc<dyn MetadataStore>,
    cache: Arc<dyn KvCache>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Invalidations the cache refused (it was down): retried until they land,
    /// so a cache that comes back cannot serve a page older than a write.
    unsent: Mutex<HashMap<String, WriteReceipt>>,
    /// Pages last decoded from the cache, with the bytes they came from: a
    /// hit whose bytes are unchanged is not parsed again (parsing was a
    /// quarter of a cached gallery request), and callers get the same `Arc`.
    decoded: moka::sync::Cache<String, Arc<DecodedPage>>,
}

struct DecodedPage {
    bytes: bytes::Bytes,
    token: u64,
    page: Arc<GalleryPage>,
}

fn watermark_key(person_hash: &str) -> String {
    format!("fs:wm:{person_hash}")
}

fn page_key(person_hash: &str, page: u64, per_page: u64) -> String {
    format!("fs:g:{person_hash}:{page}:{per_page}")
}

fn new_token() -> u64 {
    rand::rng().random()
}

impl Gallery {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        cache: Arc<dyn KvCache>,
        metrics: Arc<Metrics>,
        ttl: Duration,
    ) -> Arc<Gallery> {
        Arc::new(Gallery {
            store,
            cache,
            metrics,
            ttl,
            in_flight: Mutex::new(HashMap::new()),
            unsent: Mutex::new(HashMap::new()),
            decoded: moka::sync::Cache::builder()
                // Weighed by the cached bytes (the decoded page is about as big).
                .weigher(|k: &String, v: &Arc<DecodedPage>| {
                    (k.len() + 2 * v.bytes.len()).try_into().unwrap_or(u32::MAX)
                })
                .max_capacity(32 * 1024 * 1024)
                .build(),
        })
    }

    /// The token and page of cached bytes, parsed only when they changed.
    fn decode_page(&self, key: &str, bytes: &bytes::Bytes) -> Option<(u64, Arc<GalleryPage>)> {
        // The in-process cache hands out the very bytes it holds, so an
        // unchanged page is the same pointer; memcached's copy is compared.
        if let Some(d) = self.decoded.get(key)
            && ((d.bytes.as_ptr() == bytes.as_ptr() && d.bytes.len() == bytes.len()) || d.bytes == bytes)
        {
            return Some((d.token, d.page.clone()));
        }
        let hit = serde_json::from_slice::<CachedPage>(bytes).ok()?;
        let page = Arc::new(hit.page);
        self.decoded.insert(
            key.to_owned(),
            Arc::new(DecodedPage { bytes: bytes.clone(), token: hit.token, page: page.clone() }),
        );
        Some((hit.token, page))
    }

    /// Page `page` (from 0) of a person's gallery, newest first.
    pub async fn read(
        self: &Arc<Self>,
        person: PersonId,
        person_hash: &str,
        page: u64,
        per_page: u64,
    ) -> Result<GalleryRead, StoreError> {
        let wm_key = watermark_key(person_hash);
        let pg_key = page_key(person_hash, page, per_page);
        let cached = match self.cache.get_many(&[&wm_key, &pg_key]).await {
            Ok(c) => Some(c),
            Err(e) => {
                self.metrics.cache_errors.inc();
                tracing::debug!(error = %e, "gallery cache unavailable; reading the primary");
                None
            }
        };
        let Some(cached) = cached else {
            self.metrics.cache_misses.inc();
            let read = self.store.gallery_page(person, page * per_page, per_page, ReadFrom::Primary).await?;
            return Ok(self.answer(person_hash, page, Arc::new(read.page), read.source));
        };
        let watermark =
            cached.get(&wm_key).and_then(|c| serde_json::from_slice::<Watermark>(&c.data).ok().map(|w| (w, c.cas)));
        if let Some((wm, _)) = &watermark
            && let Some((token, hit)) = cached.get(&pg_key).and_then(|c| self.decode_page(&pg_key, &c.data))
            && token == wm.token
        {
            self.metrics.cache_hits.inc();
            return Ok(self.answer(person_hash, page, hit, ReadSource::Cache));
        }
        self.metrics.cache_misses.inc();
        let flight_key = format!("{pg_key}:{}", watermark.as_ref().map(|(w, _)| w.token).unwrap_or(0));
        let flight = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&flight_key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let (hash, key) = (person_hash.to_owned(), flight_key.clone());
                    let f: Flight = async move {
                        let r = me.load(person, &hash, page, per_page, watermark).await;
                        me.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        r
                    }
                    .boxed()
                    .shared();
                    map.insert(flight_key, f.clone());
                    f
                }
            }
        };
        let (page_data, source) = flight.await?;
        Ok(self.answer(person_hash, page, page_data, source))
    }

    fn answer(&self, person_hash: &str, page: u64, data: Arc<GalleryPage>, source: ReadSource) -> GalleryRead {
        self.metrics.gallery_read(source);
        tracing::info!(person = person_hash, page, source = source.as_str(), "gallery read");
        GalleryRead { page: data, source }
    }

    /// One database read for a missed page, stored under the token seen before it.
    async fn load(
        &self,
        person: PersonId,
        hash: &str,
        page: u64,
        per_page: u64,
        watermark: Option<(Watermark, u64)>,
    ) -> Result<(Arc<GalleryPage>, ReadSource), StoreError> {
        let wm_key = watermark_key(hash);
        let offset = page * per_page;
        let (token, read) = match watermark {
            Some((wm, cas)) => {
                let from = match &wm.pos {
                    Some(pos) => ReadFrom::Replica { at_least: Some(pos.clone()) },
                    None => ReadFrom::Primary,
                };
                let read = self.store.gallery_page(person, offset, per_page, from).await?;
                // A primary read tells a position; keep it so later misses can use a replica.
                if wm.pos.is_none()
                    && let Some(pos) = &read.position
                {
                    let better = Watermark { token: wm.token, pos: Some(pos.clone()) };
                    if let Ok(bytes) = serde_json::to_vec(&better) {
                        // A lost race keeps the other writer's watermark, which is as new.
                        crate::error::ignore_failure(
                            "raising the watermark's position",
                            self.cache.cas(&wm_key, &bytes, WATERMARK_TTL, cas).await,
                        );
                    }
                }
                (Some(wm.token), read)
            }
            None => {
                // Claim a fresh watermark before reading, so a write that lands
                // meanwhile replaces it and outdates what this read stores.
                let token = new_token();
                let fresh = serde_json::to_vec(&Watermark { token, pos: None }).unwrap_or_default();
                let added = self.cache.add(&wm_key, &fresh, WATERMARK_TTL).await.unwrap_or(false);
                let read = self.store.gallery_page(person, offset, per_page, ReadFrom::Primary).await?;
                if added && let Some(pos) = &read.position {
                    self.advance_position(&wm_key, token, pos).await;
                }
                (added.then_some(token), read)
            }
        };
        let data = Arc::new(read.page);
        if let Some(token) = token {
            let entry = CachedPage { token, page: (*data).clone() };
            if let Ok(bytes) = serde_json::to_vec(&entry)
                && self.cache.set(&page_key(hash, page, per_page), &bytes, self.ttl).await.is_err()
            {
                self.metrics.cache_errors.inc();
            }
        }
        Ok((data, read.source))
    }

    /// Records a position on a watermark this reader made, if it is still current.
    async fn advance_position(&self, wm_key: &str, token: u64, pos: &ReplicationPos) {
        let Ok(got) = self.cache.get_many(&[wm_key]).await else {
            return;
        };
        let Some(cur) = got.get(wm_key) else { return };
        let Ok(wm) = serde_json::from_slice::<Watermark>(&cur.data) else {
            return;
        };
        if wm.token == token {
            let next = Watermark { token, pos: Some(wm.pos.map(|p| p.merge(pos)).unwrap_or_else(|| pos.clone())) };
            if let Ok(bytes) = serde_json::to_vec(&next) {
                crate::error::ignore_failure(
                    "merging the watermark's position",
                    self.cache.cas(wm_key, &bytes, WATERMARK_TTL, cur.cas).await,
                );
            }
        }
    }

    /// After a write of this person: a new token (every cached page is
    /// outdated at once) and the write's position, merged so it only moves forward.
    pub async fn invalidate(&self, person_hash: &str, receipt: &WriteReceipt) {
        if self.try_invalidate(person_hash, receipt).await.is_err() {
            self.metrics.cache_errors.inc();
            let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
            let merged = match unsent.remove(person_hash) {
                Some(prev) => merge_receipts(&prev, receipt),
                None => receipt.clone(),
            };
            unsent.insert(person_hash.to_owned(), merged);
        }
    }

    async fn try_invalidate(&self, person_hash: &str, receipt: &WriteReceipt) -> Result<(), ()> {
        let key = watermark_key(person_hash);
        for _ in 0..8 {
            let got = self.cache.get_many(&[&key]).await.map_err(|_| ())?;
            let current =
                got.get(&key).and_then(|c| serde_json::from_slice::<Watermark>(&c.data).ok().map(|w| (w, c.cas)));
            let pos = match (&current, &receipt.position) {
                (Some((w, _)), Some(p)) => Some(w.pos.as_ref().map(|q| q.merge(p)).unwrap_or_else(|| p.clone())),
                (Some((w, _)), None) => w.pos.clone(),
                (None, p) => p.clone(),
            };
            let next = serde_json::to_vec(&Watermark { token: new_token(), pos }).map_err(|_| ())?;
            let stored = match current {
                Some((_, cas)) => self.cache.cas(&key, &next, WATERMARK_TTL, cas).await,
                None => self.cache.add(&key, &next, WATERMARK_TTL).await,
            }
            .map_err(|_| ())?;
            if stored {
                return Ok(());
            }
        }
        // Eight lost races in a row: someone else is writing this person's
        // watermark right now, which outdates the cached pages all the same.
        Ok(())
    }

    /// Retries invalidations the cache refused; run every second or so.
    pub async fn retry_unsent(&self) {
        let pending: Vec<(String, WriteReceipt)> =
            self.unsent.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (hash, receipt) in pending {
            self.invalidate(&hash, &receipt).await;
        }
    }

    pub fn unsent_invalidations(&self) -> usize {
        self.unsent.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn merge_receipts(a: &WriteReceipt, b: &WriteReceipt) -> WriteReceipt {
    WriteReceipt {
        position: match (&a.position, &b.position) {
            (Some(x), Some(y)) => Some(x.merge(y)),
            (x, y) => x.clone().or_else(|| y.clone()),
        },
    }
}
