//! Who is asking: sessions (random tokens, stored hashed, looked up through
//! the cache so a cached gallery touches no database) and CSRF tokens.
//!
//! Cookies: `fs_session` (the session token, when signed in) and `fs_anon`
//! (a random value for visitors who are not, so their forms carry a CSRF
//! token too). Both are HttpOnly and SameSite=Lax, and Secure when the site
//! is served over TLS. A CSRF token is an HMAC of the session (or anonymous)
//! value under a secret shared by every instance through the database; the
//! same signature ([`sign`]) makes the unsubscribe links of completion notices.

use std::time::Duration;

use base64::Engine;
use flipstack_core::domain::{Email, PersonId, SecretToken, TokenHash, now_millis};
use flipstack_core::store::{SessionInfo, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::state::AppState;

pub const SESSION_COOKIE: &str = "fs_session";
pub const ANON_COOKIE: &str = "fs_anon";
pub const SESSION_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
const SESSION_CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct SignedIn {
    pub token: SecretToken,
    pub person_id: PersonId,
    pub email: Email,
}

impl SignedIn {
    pub fn token_hash(&self) -> TokenHash {
        self.token.hash()
    }
}

#[derive(Debug, Clone)]
pub struct Visitor {
    pub signed_in: Option<SignedIn>,
    csrf_seed: String,
    /// An anonymous cookie to set with the response (first visit).
    pub new_anon_cookie: Option<String>,
}

fn session_cache_key(hash: &TokenHash) -> String {
    format!("fs:s:{}", hash.0)
}

/// Reads one cookie out of a `Cookie:` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').map(str::trim).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then_some(v.trim())
    })
}

/// A `Set-Cookie` value.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

impl Visitor {
    pub async fn resolve(state: &AppState, cookie_header: Option<&str>) -> Result<Visitor, StoreError> {
        let mut signed_in = None;
        if let Some(token) = cookie(cookie_header, SESSION_COOKIE).and_then(SecretToken::parse)
            && let Some(info) = lookup_session(state, &token.hash()).await?
        {
            signed_in = Some(SignedIn { token, person_id: info.person_id, email: info.email });
        }
        let anon = cookie(cookie_header, ANON_COOKIE).and_then(SecretToken::parse);
        let (csrf_seed, new_anon_cookie) = match (&signed_in, anon) {
            (Some(s), _) => (s.token.as_str().to_owned(), None),
            (None, Some(a)) => (a.as_str().to_owned(), None),
            (None, None) => {
                let fresh = SecretToken::generate();
                (fresh.as_str().to_owned(), Some(fresh.as_str().to_owned()))
            }
        };
        Ok(Visitor { signed_in, csrf_seed, new_anon_cookie })
    }

    pub fn csrf_token(&self, secret: &[u8]) -> String {
        sign(secret, "csrf", &self.csrf_seed)
    }

    pub fn csrf_ok(&self, secret: &[u8], submitted: &str) -> bool {
        signed(secret, "csrf", &self.csrf_seed, submitted)
    }

    /// For pages shown when the database cannot say who is asking.
    pub fn resolve_offline() -> Visitor {
        Visitor { signed_in: None, csrf_seed: String::new(), new_anon_cookie: None }
    }

    /// A visitor who just signed in: later tokens derive from the new session.
    pub fn signed_in_as(&self, signed: SignedIn) -> Visitor {
        Visitor { csrf_seed: signed.token.as_str().to_owned(), signed_in: Some(signed), new_anon_cookie: None }
    }
}

/// An HMAC of `value` under the shared secret, for one `purpose` (a token
/// made for one purpose is worth nothing for another), URL-safe base64.
pub fn sign(secret: &[u8], purpose: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether `submitted` is [`sign`]'s token, compared in constant time.
pub fn signed(secret: &[u8], purpose: &str, value: &str, submitted: &str) -> bool {
    let expected = sign(secret, purpose, value);
    expected.len() == submitted.len() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

async fn lookup_session(state: &AppState, hash: &TokenHash) -> Result<Option<SessionInfo>, StoreError> {
    let services = &state.services;
    let key = session_cache_key(hash);
    let now = now_millis();
    match services.cache.get(&key).await {
        Ok(found) => {
            if let Some(c) = found
                && let Ok(info) = serde_json::from_slice::<SessionInfo>(&c.data)
                && info.expires_at > now
                && (info.proven || !gallery_verified_lately(state, info.person_id).await)
            {
                return Ok(Some(info));
            }
        }
        Err(_) => {
            services.metrics.cache_errors.inc();
        }
    }
    let info = services.store.session(hash, now).await?;
    if let Some(info) = &info {
        remember_session(state, hash, info).await;
    }
    Ok(info)
}

fn verified_key(person: PersonId) -> String {
    format!("fs:verified:{}", person.get())
}

/// How long the "just verified" mark outlives every cached copy of a session
/// (cached at most [`SESSION_CACHE_TTL`]).
const VERIFIED_MARK_TTL: Duration = Duration::from_secs(3600);

/// Whether the person's gallery was verified by a mailed link recently (or
/// the cache cannot say): a cached session that never proved the address is
/// then not believed, and the database (where it was deleted) decides.
async fn gallery_verified_lately(state: &AppState, person: PersonId) -> bool {
    let key = verified_key(person);
    match state.services.cache.get(&key).await {
        Ok(found) => found.is_some(),
        Err(_) => true,
    }
}

/// After a mailed-link sign-in: no cached unproven session of this person
/// is believed from now on (the store deleted their rows in the same step).
/// A mark the cache refused is tried again for a minute.
pub async fn mark_gallery_verified(state: &std::sync::Arc<AppState>, person: PersonId) {
    let key = verified_key(person);
    if state.services.cache.set(&key, b"1", VERIFIED_MARK_TTL).await.is_ok() {
        return;
    }
    state.services.metrics.cache_errors.inc();
    let state = state.clone();
    tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if state.services.cache.set(&key, b"1", VERIFIED_MARK_TTL).await.is_ok() {
                return;
            }
        }
        tracing::warn!(person = person.get(), "could not mark a gallery verified in the cache for a minute");
    });
}

/// Puts a session in the cache (after sign-in, or a lookup that missed).
/// A cached session that never proved its address is believed only while
/// its gallery was not verified lately (see [`mark_gallery_verified`]).
pub async fn remember_session(state: &AppState, hash: &TokenHash, info: &SessionInfo) {
    let ttl = SESSION_CACHE_TTL.min(Duration::from_millis((info.expires_at - now_millis()).max(1000) as u64));
    if let Ok(bytes) = serde_json::to_vec(info) {
        flipstack_core::error::ignore_failure(
            "caching a session",
            state.services.cache.set(&session_cache_key(hash), &bytes, ttl).await,
        );
    }
}

/// Ends a session everywhere: the database row and the cached copy.
pub async fn forget_session(state: &AppState, hash: &TokenHash) -> Result<(), StoreError> {
    state.services.store.delete_session(hash).await?;
    forget_cached_session(state, hash).await;
    Ok(())
}

/// Drops the cached copy of a session whose row is gone.
pub async fn forget_cached_session(state: &AppState, hash: &TokenHash) {
    if state.services.cache.delete(&session_cache_key(hash)).await.is_err() {
        state.services.metrics.cache_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies() {
        let h = Some("a=1; fs_session=abc ; other=x=y");
        assert_eq!(cookie(h, "fs_session"), Some("abc"));
        assert_eq!(cookie(h, "other"), Some("x=y"));
        assert_eq!(cookie(h, "missing"), None);
        assert_eq!(cookie(None, "a"), None);
    }

    #[test]
    fn signatures_hold_for_their_purpose_and_value_only() {
        let token = sign(b"secret", "csrf", "seed");
        assert!(signed(b"secret", "csrf", "seed", &token));
        assert!(!signed(b"secret", "notice", "seed", &token), "another purpose");
        assert!(!signed(b"secret", "csrf", "seed2", &token), "another value");
        assert!(!signed(b"other", "csrf", "seed", &token), "another secret");
        assert!(!signed(b"secret", "csrf", "seed", &token[1..]), "cut short");
        // The CSRF token is what it always was: old pages' tokens still hold.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"csrf\0seed");
        assert_eq!(token, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn set_cookie_is_http_only_and_lax() {
        let c = set_cookie("fs_session", "v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Secure"));
        assert!(!set_cookie("fs_session", "v", 60, false).contains("Secure"));
    }
}
