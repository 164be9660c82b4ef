//! Response helpers shared by the handlers: HTML pages, redirects, cookies,
//! and the security headers every response carries.

use askama::Template;
use warp::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use warp::http::{HeaderValue, StatusCode};
use warp::hyper::Body;

use crate::session::{ANON_COOKIE, Visitor, set_cookie};
use crate::state::AppState;
use crate::views::{Chrome, MessagePage};

pub type Resp = warp::reply::Response;

pub fn html(status: StatusCode, body: impl Into<Body>) -> Resp {
    let mut r = warp::http::Response::new(body.into());
    *r.status_mut() = status;
    // Room for every header a page gets (these two, the security headers,
    // a cookie or two): the map is sized once instead of grown twice.
    *r.headers_mut() = warp::http::HeaderMap::with_capacity(16);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Pages show a person's own data: never stored by shared caches.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn render<T: Template>(status: StatusCode, page: &T) -> Resp {
    match page.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "a page template failed to render");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side. Please try again.")
        }
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Resp {
    let mut r = warp::http::Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = warp::http::Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn see_other(location: &str) -> Resp {
    let mut r = warp::http::Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

pub fn add_cookie(mut r: Resp, cookie: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

/// Sets the anonymous cookie on a first visit, so the page's CSRF token holds.
pub fn finish(state: &AppState, visitor: &Visitor, r: Resp) -> Resp {
    match &visitor.new_anon_cookie {
        Some(v) => add_cookie(r, &set_cookie(ANON_COOKIE, v, 24 * 3600, state.cookie_secure())),
        None => r,
    }
}

/// A page with a title and one message (errors, confirmations).
pub fn message(
    state: &AppState,
    visitor: &Visitor,
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Resp {
    let tone = if status.is_success() || status.is_redirection() {
        "ok"
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        "paused"
    } else {
        "error"
    };
    let page = MessagePage {
        chrome: Chrome::for_visitor(visitor, &state.secret),
        title: title.to_owned(),
        message: message.to_owned(),
        tone,
        link: link.map(|(h, l)| (h.to_owned(), l.to_owned())),
    };
    finish(state, visitor, render(status, &page))
}

/// Headers on every response: no inline script, no framing, no referrer
/// leaking across sites, no MIME sniffing. Names and values are built once, at
/// compile time: this runs for every request.
pub fn security_headers(mut r: Resp) -> Resp {
    const CSP: HeaderValue = HeaderValue::from_static(
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    const FIXED: [(HeaderName, HeaderValue); 5] = [
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (REFERRER_POLICY, HeaderValue::from_static("same-origin")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
        (
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
        ),
    ];
    let h = r.headers_mut();
    h.entry(CONTENT_SECURITY_POLICY).or_insert(CSP);
    for (name, value) in FIXED {
        h.insert(name, value);
    }
    r
}

/// A byte count as people read it: "25 MB", "195 KB".
pub fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 {
        let mb = n as f64 / (1024.0 * 1024.0);
        if mb.fract() < 0.05 { format!("{mb:.0} MB") } else { format!("{mb:.1} MB") }
    } else {
        format!("{} KB", n.div_ceil(1024))
    }
}
