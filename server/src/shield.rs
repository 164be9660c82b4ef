//! What keeps one client from taking the service: who the client is (the
//! peer, or the load balancer's `X-Forwarded-For` entry), how many uploads it
//! may send at once, the spool's disk budget, and the rate limits' answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flipstack_core::domain::now_millis;
use flipstack_core::limits::{Rate, Verdict};
use warp::Filter;

use crate::listener::PeerAddr;
use crate::state::AppState;

/// The address a request came from, as far as this server can trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The client of a request: with `trusted_hops` proxies in front (each
/// appending the address it saw to `X-Forwarded-For`), the entry the
/// outermost trusted proxy appended; else the TCP peer. Entries to the left
/// of it were written by the client and are never believed. A header with
/// fewer entries than trusted proxies, or one that does not parse, gives the
/// peer: everyone behind it then shares one limit, which fails closed.
pub fn client_addr(peer: IpAddr, forwarded_for: &[&str], trusted_hops: u32) -> ClientAddr {
    if trusted_hops == 0 {
        return ClientAddr(peer);
    }
    let entries: Vec<&str> =
        forwarded_for.iter().flat_map(|h| h.split(',')).map(str::trim).filter(|e| !e.is_empty()).collect();
    let hops = trusted_hops as usize;
    if entries.len() < hops {
        return ClientAddr(peer);
    }
    entries[entries.len() - hops].parse::<IpAddr>().map(ClientAddr).unwrap_or(ClientAddr(peer))
}

/// The client address of a request, from the listener's peer and the trusted proxies.
pub fn client(state: Arc<AppState>) -> impl Filter<Extract = (ClientAddr,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>().and(warp::header::headers_cloned()).map(
        move |peer: Option<PeerAddr>, headers: warp::http::HeaderMap| {
            let peer = peer.map(|p| p.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
            let forwarded: Vec<&str> =
                headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
            client_addr(peer, &forwarded, state.services.config.trusted_proxy_hops)
        },
    )
}

/// Uploads being received now, per client address.
#[derive(Default)]
pub struct UploadSlots {
    per_client: Mutex<HashMap<ClientAddr, u32>>,
}

pub struct UploadSlot<'a> {
    slots: &'a UploadSlots,
    client: ClientAddr,
}

impl UploadSlots {
    pub fn take(&self, client: ClientAddr, max: u32) -> Option<UploadSlot<'_>> {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UploadSlot { slots: self, client })
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.slots.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

/// Bytes the upload spool holds, against its budget.
pub struct SpoolBudget {
    used: AtomicU64,
    budget: u64,
}

/// Spool bytes one upload holds; given back when it is dropped (its file
/// is gone by then, or about to be).
pub struct SpoolShare<'a> {
    budget: &'a SpoolBudget,
    held: u64,
}

impl SpoolBudget {
    pub fn new(budget: u64) -> SpoolBudget {
        SpoolBudget { used: AtomicU64::new(0), budget }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_full(&self) -> bool {
        self.used() >= self.budget
    }

    pub fn share(&self) -> SpoolShare<'_> {
        SpoolShare { budget: self, held: 0 }
    }
}

impl SpoolShare<'_> {
    /// Takes `n` more bytes; false (and nothing taken) when the budget has no room.
    pub fn grow(&mut self, n: u64) -> bool {
        let b = self.budget;
        let mut current = b.used.load(Ordering::Relaxed);
        loop {
            if current + n > b.budget {
                return false;
            }
            match b.used.compare_exchange_weak(current, current + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.held += n;
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for SpoolShare<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// The limits a request is counted against.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    GalleriesPerClient,
    UploadsPerClient,
    UploadsPerPerson,
    SigninMailsPerClient,
    SigninMailsPerAddress,
    /// One sign-in mail a minute per address.
    SigninMailInterval,
}

impl Limit {
    fn scope(self) -> &'static str {
        match self {
            Limit::GalleriesPerClient => "gallery-client",
            Limit::UploadsPerClient => "upload-client",
            Limit::UploadsPerPerson => "upload-person",
            Limit::SigninMailsPerClient => "mail-client",
            Limit::SigninMailsPerAddress => "mail-address",
            Limit::SigninMailInterval => "mail-interval",
        }
    }

    fn rate(self, c: &flipstack_core::Config) -> Rate {
        match self {
            Limit::GalleriesPerClient => Rate::per_hour(c.galleries_per_client_per_hour),
            Limit::UploadsPerClient => Rate::per_hour(c.uploads_per_client_per_hour),
            Limit::UploadsPerPerson => Rate::per_hour(c.uploads_per_person_per_hour),
            Limit::SigninMailsPerClient => Rate::per_hour(c.signin_mails_per_client_per_hour),
            Limit::SigninMailsPerAddress => Rate::per_hour(c.signin_mails_per_address_per_hour),
            Limit::SigninMailInterval => Rate { limit: 1, window: Duration::from_secs(60) },
        }
    }
}

impl AppState {
    /// Counts one event against a limit; `Some(retry_after)` when over it.
    pub async fn over_limit(&self, limit: Limit, subject: &str) -> Option<Duration> {
        let rate = limit.rate(&self.services.config);
        match self.limiter.hit(limit.scope(), subject, rate, now_millis()).await {
            Verdict::Allowed => None,
            Verdict::Limited { retry_after } => {
                self.services.metrics.rate_limited(limit.scope());
                Some(retry_after)
            }
        }
    }
}

/// What a 429 page says: what was limited, and when to try again.
pub fn too_many_text(what: &str, wait: Duration) -> String {
    format!(
        "There have been too many {what} in a short time, so this one was not taken. Please try again in {}.",
        human_wait(wait)
    )
}

/// "in 12 minutes", for a page that says when to try again.
pub fn human_wait(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    if secs < 90 { format!("{secs} seconds") } else { format!("{} minutes", secs.div_ceil(60)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusts_exactly_the_configured_hops() {
        let lb = ip("10.0.0.5");
        assert_eq!(client_addr(lb, &["1.2.3.4"], 0), ClientAddr(lb), "no proxy: the peer");
        assert_eq!(client_addr(lb, &["1.2.3.4"], 1), ClientAddr(ip("1.2.3.4")));
        // A client's forged entries sit left of what the load balancer appended.
        assert_eq!(client_addr(lb, &["6.6.6.6, 7.7.7.7, 1.2.3.4"], 1), ClientAddr(ip("1.2.3.4")));
        assert_eq!(client_addr(lb, &["6.6.6.6", "1.2.3.4"], 1), ClientAddr(ip("1.2.3.4")), "several headers");
        assert_eq!(client_addr(lb, &["6.6.6.6, 1.2.3.4, 10.0.0.9"], 2), ClientAddr(ip("1.2.3.4")));
        assert_eq!(client_addr(lb, &[], 1), ClientAddr(lb), "no header: the peer");
        assert_eq!(client_addr(lb, &["garbage"], 1), ClientAddr(lb), "unparsable: the peer");
    }

    #[test]
    fn spool_budget_refuses_past_its_size_and_frees_on_drop() {
        let b = SpoolBudget::new(100);
        let mut one = b.share();
        assert!(one.grow(60));
        let mut two = b.share();
        assert!(!two.grow(50), "60 + 50 is past 100");
        assert!(two.grow(40));
        assert!(b.is_full());
        drop(one);
        assert_eq!(b.used(), 40);
        drop(two);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn upload_slots_per_client() {
        let s = UploadSlots::default();
        let a = ClientAddr(ip("127.0.0.1"));
        let first = s.take(a, 2).unwrap();
        let _second = s.take(a, 2).unwrap();
        assert!(s.take(a, 2).is_none());
        assert!(s.take(ClientAddr(ip("127.0.0.2")), 2).is_some());
        drop(first);
        assert!(s.take(a, 2).is_some());
    }
}
