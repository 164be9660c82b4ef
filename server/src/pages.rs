//! The pages: upload form, gallery, sign-in (and its mailed one-time link),
//! logout, and the unsubscribe link of completion notices.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;

use flipstack_core::domain::{Email, SecretToken, TokenHash, now_millis};
use flipstack_core::store::{NewSession, Person, SessionInfo, SigninOutcome, StoreError};
use warp::http::{HeaderName, HeaderValue, StatusCode};

use crate::notices::{self, LinkProblem};
use crate::session::{
    SESSION_COOKIE, SESSION_LIFETIME_MS, SignedIn, Visitor, forget_cached_session, forget_session,
    mark_gallery_verified, remember_session, set_cookie,
};
use crate::shield::{ClientAddr, Limit, too_many_text};
use crate::signin;
use crate::state::{AppState, RenderedGallery};
use crate::views::{Chrome, FormPage, GalleryView, SigninLinkPage, SigninPage, UnsubscribePage};
use crate::web::{Resp, add_cookie, finish, html, message, render, see_other};

pub const PER_PAGE: u64 = 12;

pub fn unavailable_page(state: &AppState) -> Resp {
    let nobody = Visitor::resolve_offline();
    let mut r = message(
        state,
        &nobody,
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again in a moment",
        "flipstack cannot reach its database right now. Nothing you sent was lost or half-saved; please try again in a minute.",
        Some(("/form", "Back to the upload page")),
    );
    r.headers_mut().insert("retry-after", HeaderValue::from_static("10"));
    r
}

/// The gallery page a `?page=N` names (1 when absent or not a number).
fn page_number(query: &HashMap<String, String>) -> u64 {
    query.get("page").and_then(|p| p.parse::<u64>().ok()).unwrap_or(1).clamp(1, 100_000)
}

pub async fn index() -> Result<Resp, Infallible> {
    Ok(see_other("/form"))
}

pub async fn form(state: Arc<AppState>, visitor: Visitor) -> Result<Resp, Infallible> {
    Ok(form_page(&state, &visitor, StatusCode::OK, None, &FormInput::default()).await)
}

/// What a person sent in the upload form, kept when the form is shown again.
#[derive(Debug, Clone, Default)]
pub struct FormInput {
    pub email: String,
    /// The "mail me" box as sent; `None` when the form was not read that far,
    /// and the person's remembered choice is shown.
    pub notice: Option<bool>,
}

/// The upload form, with an error and what the person sent kept.
pub async fn form_page(
    state: &AppState,
    visitor: &Visitor,
    status: StatusCode,
    error: Option<String>,
    sent: &FormInput,
) -> Resp {
    // (ticked, unknown): a database that is away costs the box, not the form.
    let (notice, notice_unknown) = match (sent.notice, &visitor.signed_in) {
        (Some(ticked), _) => (ticked, false),
        (None, Some(me)) => match state.services.store.notice_wish(me.person_id).await {
            Ok((wanted, _)) => (wanted, false),
            Err(e) => {
                tracing::warn!(error = %e, "could not read whether a person asked for completion notices; the form leaves their choice as it is");
                (false, true)
            }
        },
        (None, None) => (false, false),
    };
    let blocked = state.blocked.get(&state.services).await;
    let c = &state.services.config;
    let page = FormPage {
        chrome: Chrome::for_visitor(visitor, &state.secret),
        blocked,
        error,
        email_value: sent.email.clone(),
        notice,
        notice_unknown,
        notice_every: c.notice_every.to_string(),
        max_size: crate::web::human_bytes(c.max_upload_bytes),
        max_bytes: c.max_upload_bytes,
        max_mp: format!("{}", c.max_pixels as f64 / 1e6),
        max_files: c.max_files_per_upload,
    };
    finish(state, visitor, render(status, &page))
}

pub async fn gallery(
    state: Arc<AppState>,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let Some(me) = &visitor.signed_in else {
        return Ok(finish(&state, &visitor, see_other("/signin")));
    };
    let page_no = page_number(&query);
    let hash = me.email.hashed_id();
    let read = match state.services.gallery.read(me.person_id, &hash, page_no - 1, PER_PAGE).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "gallery read failed");
            return Ok(unavailable_page(&state));
        }
    };
    state.emit_read(&hash, read.source);
    // The same decoded page (a cache hit whose bytes did not change) renders
    // to the same HTML for this session (its token seeds the page's CSRF
    // token): reuse it, and make the page's parts only when rendering.
    let key = (me.token.as_str().to_owned(), page_no);
    let memo = state.rendered.get(&key).filter(|m| Arc::ptr_eq(&m.page, &read.page));
    let mut r = match memo {
        Some(m) => html(StatusCode::OK, m.html.clone()),
        None => {
            let chrome = Chrome::for_visitor(&visitor, &state.secret);
            let view = GalleryView::new(chrome, &read.page, page_no, PER_PAGE);
            match view.render() {
                Ok(body) => {
                    let body = bytes::Bytes::from(body);
                    state
                        .rendered
                        .insert(key, Arc::new(RenderedGallery { page: read.page.clone(), html: body.clone() }));
                    html(StatusCode::OK, body)
                }
                Err(_) => render(StatusCode::OK, &view),
            }
        }
    };
    const READ_SOURCE: HeaderName = HeaderName::from_static("x-read-source");
    r.headers_mut().insert(READ_SOURCE, HeaderValue::from_static(read.source.as_str()));
    Ok(r)
}

pub async fn signin_form(state: Arc<AppState>, visitor: Visitor) -> Result<Resp, Infallible> {
    let page = SigninPage {
        chrome: Chrome::for_visitor(&visitor, &state.secret),
        sent: false,
        error: None,
        email_value: String::new(),
    };
    Ok(finish(&state, &visitor, render(StatusCode::OK, &page)))
}

pub async fn signin_submit(
    state: Arc<AppState>,
    visitor: Visitor,
    client: ClientAddr,
    form: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    if !visitor.csrf_ok(&state.secret, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Ok(csrf_refused(&state, &visitor));
    }
    let typed = form.get("email").map(String::as_str).unwrap_or("").trim().to_owned();
    let chrome = Chrome::for_visitor(&visitor, &state.secret);
    let email = match Email::parse(&typed) {
        Ok(e) => e,
        Err(e) => {
            let page = SigninPage { chrome, sent: false, error: Some(format!("{e}.")), email_value: typed };
            return Ok(finish(&state, &visitor, render(StatusCode::UNPROCESSABLE_ENTITY, &page)));
        }
    };
    if let Some(wait) = state.over_limit(Limit::SigninMailsPerClient, &client.to_string()).await {
        return Ok(too_many(&state, &visitor, wait, "sign-in links asked for from your network"));
    }
    // The same answer, after the same work, either way: the page does not
    // tell who has a gallery (the lookup and the mail happen in the background).
    if signin::request_link(&state, email.clone()).is_err() {
        tracing::warn!("the sign-in mail queue is full; asking the visitor to try again");
        return Ok(unavailable_page(&state));
    }
    let page = SigninPage { chrome, sent: true, error: None, email_value: email.to_string() };
    Ok(finish(&state, &visitor, render(StatusCode::OK, &page)))
}

/// A 429 page: what was limited, and when to try again.
pub fn too_many(state: &AppState, visitor: &Visitor, wait: Duration, what: &str) -> Resp {
    let text = too_many_text(what, wait);
    let mut r = message(
        state,
        visitor,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        &text,
        Some(("/form", "Back to the upload page")),
    );
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

pub async fn signin_link(
    state: Arc<AppState>,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let chrome = Chrome::for_visitor(&visitor, &state.secret);
    let problem = |chrome, status: StatusCode, text: &str| {
        (status, SigninLinkPage { chrome, token: String::new(), email: String::new(), problem: Some(text.to_owned()) })
    };
    let (status, page) = match query.get("token").and_then(|t| SecretToken::parse(t)) {
        Some(t) => match state.services.store.signin_token_email(&t.hash(), now_millis()).await {
            Ok(Some(email)) => (
                StatusCode::OK,
                SigninLinkPage { chrome, token: t.as_str().to_owned(), email: email.to_string(), problem: None },
            ),
            // Used, expired or unknown: the submit says which, with a new link offered.
            Ok(None) => problem(
                chrome,
                StatusCode::GONE,
                "This sign-in link was already used or has expired (links work once, for 15 minutes). Ask for a new one.",
            ),
            Err(_) => return Ok(unavailable_page(&state)),
        },
        None => problem(
            chrome,
            StatusCode::NOT_FOUND,
            "This sign-in link is not complete. Copy the whole link from the mail, or ask for a new one.",
        ),
    };
    Ok(finish(&state, &visitor, render(status, &page)))
}

pub async fn signin_link_submit(
    state: Arc<AppState>,
    visitor: Visitor,
    form: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    if !visitor.csrf_ok(&state.secret, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Ok(csrf_refused(&state, &visitor));
    }
    let problem = |status: StatusCode, text: &str| {
        let page = SigninLinkPage {
            chrome: Chrome::for_visitor(&visitor, &state.secret),
            token: String::new(),
            email: String::new(),
            problem: Some(text.to_owned()),
        };
        finish(&state, &visitor, render(status, &page))
    };
    let Some(token) = form.get("token").and_then(|t| SecretToken::parse(t)) else {
        return Ok(problem(StatusCode::NOT_FOUND, "This sign-in link is not valid. Ask for a new one."));
    };
    let outcome = match state.services.store.consume_signin_token(&token.hash(), now_millis()).await {
        Ok(o) => o,
        Err(_) => return Ok(unavailable_page(&state)),
    };
    match outcome {
        SigninOutcome::SignedIn(person) => match start_session(&state, &person, true).await {
            Ok((me, cookie)) => {
                mark_gallery_verified(&state, person.id).await;
                tracing::info!(person = %person.email.hashed_id(), "signed in with a mailed link");
                if form.get("elsewhere").is_some_and(|v| v == "out") {
                    sign_out_elsewhere(&state, &person, &me.token_hash()).await;
                }
                Ok(add_cookie(see_other("/gallery"), &cookie))
            }
            Err(_) => Ok(unavailable_page(&state)),
        },
        SigninOutcome::AlreadyUsed => Ok(problem(
            StatusCode::GONE,
            "This sign-in link was already used. Each link works once; ask for a new one.",
        )),
        SigninOutcome::Expired => Ok(problem(
            StatusCode::GONE,
            "This sign-in link has expired (links work for 15 minutes). Ask for a new one.",
        )),
        SigninOutcome::Unknown => {
            Ok(problem(StatusCode::NOT_FOUND, "This sign-in link is not valid. Ask for a new one."))
        }
    }
}

/// Ends every other session of the person (their other browsers, and anyone
/// who had got in), in the database and the cache.
async fn sign_out_elsewhere(state: &AppState, person: &Person, keep: &TokenHash) {
    match state.services.store.delete_other_sessions(person.id, keep).await {
        Ok(ended) => {
            for hash in &ended {
                forget_cached_session(state, hash).await;
            }
            tracing::info!(person = %person.email.hashed_id(), ended = ended.len(), "signed out every other browser");
        }
        Err(e) => tracing::warn!(error = %e, "could not sign out the other browsers"),
    }
}

/// A new session for a person (`proven`: made by a mailed link): stored
/// hashed, cached, and its cookie.
pub async fn start_session(state: &AppState, person: &Person, proven: bool) -> Result<(SignedIn, String), StoreError> {
    let token = SecretToken::generate();
    let now = now_millis();
    let expires_at = now + SESSION_LIFETIME_MS;
    let hash: TokenHash = token.hash();
    state
        .services
        .store
        .create_session(NewSession { token_hash: hash.clone(), person_id: person.id, expires_at, proven }, now)
        .await?;
    remember_session(
        state,
        &hash,
        &SessionInfo { person_id: person.id, email: person.email.clone(), expires_at, proven },
    )
    .await;
    let cookie = session_cookie(state, &token);
    Ok((SignedIn { token, person_id: person.id, email: person.email.clone() }, cookie))
}

pub fn session_cookie(state: &AppState, token: &SecretToken) -> String {
    set_cookie(SESSION_COOKIE, token.as_str(), SESSION_LIFETIME_MS / 1000, state.cookie_secure())
}

pub async fn logout(state: Arc<AppState>, visitor: Visitor, form: HashMap<String, String>) -> Result<Resp, Infallible> {
    if !visitor.csrf_ok(&state.secret, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Ok(csrf_refused(&state, &visitor));
    }
    if let Some(me) = &visitor.signed_in {
        if forget_session(&state, &me.token_hash()).await.is_err() {
            return Ok(unavailable_page(&state));
        }
        tracing::info!(person = %me.email.hashed_id(), "logged out");
    }
    let gone = set_cookie(SESSION_COOKIE, "", 0, state.cookie_secure());
    Ok(add_cookie(see_other("/form"), &gone))
}

/// `GET /notices/unsubscribe`, the link in a completion notice: a page with
/// one button, because mail scanners open links but press no buttons.
pub async fn unsubscribe_page(
    state: Arc<AppState>,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let person = match notices::unsubscribe_person(&state.secret, &query) {
        Ok(person) => person,
        Err(problem) => return Ok(bad_unsubscribe_link(&state, &visitor, problem)),
    };
    let page = UnsubscribePage {
        chrome: Chrome::for_visitor(&visitor, &state.secret),
        action: notices::unsubscribe_path(&state.secret, person),
    };
    Ok(finish(&state, &visitor, render(StatusCode::OK, &page)))
}

/// `POST /notices/unsubscribe`: that page's button, or a mail program's
/// one-click unsubscribe (RFC 8058), which posts to the mailed link itself.
pub async fn unsubscribe_submit(
    state: Arc<AppState>,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let person = match notices::unsubscribe_person(&state.secret, &query) {
        Ok(person) => person,
        Err(problem) => return Ok(bad_unsubscribe_link(&state, &visitor, problem)),
    };
    if let Err(e) = state.services.store.set_notice_wanted(person, false, now_millis()).await {
        tracing::warn!(error = %e, "could not turn completion notices off");
        return Ok(unavailable_page(&state));
    }
    tracing::info!(person = person.get(), "completion notices turned off by their mailed link");
    Ok(message(
        &state,
        &visitor,
        StatusCode::OK,
        "No more mails",
        "You will get no more mails when your pictures are flipped. To get them again, tick the box on the upload form with your next upload.",
        Some(("/form", "Go to the upload page")),
    ))
}

fn bad_unsubscribe_link(state: &AppState, visitor: &Visitor, problem: LinkProblem) -> Resp {
    let (status, text) = match problem {
        LinkProblem::Incomplete => (
            StatusCode::BAD_REQUEST,
            "This unsubscribe link is not complete: part of it was lost on the way. Open the link from the mail as it is, or untick the box on your next upload.",
        ),
        LinkProblem::Forged => (
            StatusCode::FORBIDDEN,
            "This unsubscribe link is not valid: it was changed, or flipstack did not make it. Nothing was changed. Open the link from the mail as it is, or untick the box on your next upload.",
        ),
    };
    message(state, visitor, status, "This link does not work", text, Some(("/form", "Go to the upload page")))
}

pub fn csrf_refused(state: &AppState, visitor: &Visitor) -> Resp {
    message(
        state,
        visitor,
        StatusCode::FORBIDDEN,
        "Please try again",
        "This form was out of date or did not come from this site, so nothing was done. Go back, reload the page and send it again.",
        Some(("/form", "Back to the upload page")),
    )
}

/// `GET /uploads/{id}/delete`: asks first (the page's script asks in a dialog instead).
pub async fn delete_confirm(
    state: Arc<AppState>,
    id: String,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let Some(me) = &visitor.signed_in else {
        return Ok(finish(&state, &visitor, see_other("/signin")));
    };
    let page = page_number(&query);
    let upload = match crate::rules::own_upload(state.services.store.as_ref(), me.person_id, &id).await {
        Ok(u) => u,
        Err(_) => return Ok(unavailable_page(&state)),
    };
    let Some(upload) = upload else {
        return Ok(message(
            &state,
            &visitor,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such picture in your gallery.",
            Some(("/gallery", "Your gallery")),
        ));
    };
    let view = crate::views::DeletePage {
        chrome: Chrome::for_visitor(&visitor, &state.secret),
        id: upload.id.get(),
        name: upload.name.as_str().to_owned(),
        page,
        has_thumbs: upload.outcome.as_ref().is_some_and(|o| o.thumb_width.is_some()),
    };
    Ok(render(StatusCode::OK, &view))
}

/// `POST /uploads/{id}/delete`: removes the rows, the blobs and the cached
/// pages, so the picture is gone for every replica read and every instance.
pub async fn delete_submit(
    state: Arc<AppState>,
    id: String,
    visitor: Visitor,
    accept: Option<String>,
    form: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let wants_json = accept.as_deref().is_some_and(|a| a.contains("application/json"));
    let answer = |status: StatusCode, text: &str| {
        crate::web::json(status, &serde_json::json!({"ok": status.is_success(), "error": text}))
    };
    if !visitor.csrf_ok(&state.secret, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Ok(if wants_json {
            answer(StatusCode::FORBIDDEN, "This page was out of date; reload it and try again.")
        } else {
            csrf_refused(&state, &visitor)
        });
    }
    let Some(me) = &visitor.signed_in else {
        return Ok(if wants_json { answer(StatusCode::FORBIDDEN, "Sign in first.") } else { see_other("/signin") });
    };
    let page = form.get("page").and_then(|p| p.parse::<u64>().ok()).unwrap_or(1).max(1);
    let Ok(id) = id.parse::<flipstack_core::domain::UploadId>() else {
        return Ok(if wants_json {
            answer(StatusCode::NOT_FOUND, "No such picture.")
        } else {
            see_other(&format!("/gallery?page={page}"))
        });
    };
    let services = &state.services;
    let hash = me.email.hashed_id();
    let removed = match services.store.delete_upload(id, me.person_id, &hash).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, upload = %id, "could not delete an upload");
            return Ok(if wants_json {
                answer(StatusCode::SERVICE_UNAVAILABLE, "flipstack could not delete it just now; try again.")
            } else {
                unavailable_page(&state)
            });
        }
    };
    let Some((_, receipt)) = removed else {
        return Ok(if wants_json {
            answer(StatusCode::NOT_FOUND, "No such picture in your gallery.")
        } else {
            see_other(&format!("/gallery?page={page}"))
        });
    };
    // The row is gone, so nothing can reach the blobs any more; a blob that
    // cannot be removed now is only wasted space, and is logged.
    if let Err(e) = services.blobs.delete_all(id).await {
        tracing::warn!(error = %e, upload = %id, "could not remove the blobs of a deleted upload");
    }
    state.owners.invalidate(&id);
    services.gallery.invalidate(&hash, &receipt).await;
    tracing::info!(upload = %id, person = %hash, "upload deleted");
    Ok(if wants_json { answer(StatusCode::OK, "") } else { see_other(&format!("/gallery?page={page}")) })
}

/// `GET /uploads/{id}/view?page=N`: one picture large beside its flip, with
/// links to its neighbours in the gallery. Read through the gallery's cache
/// like the gallery itself: the page it is on and, at the page's edges,
/// the next one.
pub async fn viewer(
    state: Arc<AppState>,
    id: String,
    visitor: Visitor,
    query: HashMap<String, String>,
) -> Result<Resp, Infallible> {
    let Some(me) = &visitor.signed_in else {
        return Ok(finish(&state, &visitor, see_other("/signin")));
    };
    let page_no = page_number(&query);
    let hash = me.email.hashed_id();
    let read_page = |n: u64| {
        let (state, hash) = (state.clone(), hash.clone());
        async move { state.services.gallery.read(me.person_id, &hash, n - 1, PER_PAGE).await.map(|r| r.page) }
    };
    let page = match read_page(page_no).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "gallery read for the viewer failed");
            return Ok(unavailable_page(&state));
        }
    };
    let Some(at) = page.items.iter().position(|i| i.id.to_string() == id) else {
        // Deleted, someone else's, or moved to another page by new uploads.
        return Ok(message(
            &state,
            &visitor,
            StatusCode::NOT_FOUND,
            "Not found",
            "This picture is not on that page of your gallery any more.",
            Some(("/gallery", "Your gallery")),
        ));
    };
    let neighbour = |i: usize| page.items.get(i).map(|n| (n.id.get(), page_no));
    let prev = match at.checked_sub(1) {
        Some(i) => neighbour(i),
        None if page_no > 1 => {
            read_page(page_no - 1).await.ok().and_then(|p| p.items.last().map(|n| (n.id.get(), page_no - 1)))
        }
        None => None,
    };
    let next = match neighbour(at + 1) {
        Some(n) => Some(n),
        None if page_no * PER_PAGE < page.total => {
            read_page(page_no + 1).await.ok().and_then(|p| p.items.first().map(|n| (n.id.get(), page_no + 1)))
        }
        None => None,
    };
    let view = crate::views::ViewerPage {
        chrome: Chrome::for_visitor(&visitor, &state.secret),
        item: crate::views::ItemView::from_item(&page.items[at]),
        page: page_no,
        prev,
        next,
    };
    Ok(finish(&state, &visitor, render(StatusCode::OK, &view)))
}

/// `GET /gallery/events`: server-sent events for the visitor's own gallery,
/// one `change` whenever one of their uploads is added, flipped, retried,
/// failed or deleted, by any process or instance (what the event tail
/// reads). The page then fetches itself again; nothing in between polls.
pub async fn gallery_events(state: Arc<AppState>, visitor: Visitor) -> Result<Resp, Infallible> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(me) = &visitor.signed_in else {
        return Ok(crate::web::plain(StatusCode::FORBIDDEN, "Sign in to follow your gallery."));
    };
    let mine = me.email.hashed_id();
    let rx = state.events.subscribe();
    let mut stopping = state.stopping.clone();
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let stream = futures::stream::unfold((rx, mine), |(mut rx, mine)| async move {
        loop {
            let kind = match rx.recv().await {
                Ok(crate::state::AdminEvent::Job { kind, person: Some(p), .. }) if p == mine => kind.as_str(),
                Ok(_) => continue,
                // Too slow to follow: whatever was missed, the page reads it all again.
                Err(RecvError::Lagged(_)) => "missed",
                Err(RecvError::Closed) => return None,
            };
            let event = warp::sse::Event::default().event("change").data(kind);
            return Some((Ok::<_, Infallible>(event), (rx, mine)));
        }
    });
    // Comments every 15 s keep the connection from counting as idle.
    let keep = warp::sse::keep_alive().interval(Duration::from_secs(15));
    let stream = futures::StreamExt::take_until(stream, Box::pin(stop));
    let mut r = warp::reply::Reply::into_response(warp::sse::reply(keep.stream(stream)));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(r)
}
