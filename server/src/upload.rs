//! `POST /upload`: the multipart form is read as it arrives. Each file is
//! spooled to disk (never held in memory) while the inspector checks it, so a
//! picture over the pixel limit is refused as soon as its header arrives; a
//! JPEG's scan data is then verified off the async threads. Only an accepted
//! picture reaches the blob store, and only after its owner is settled:
//! a browser that is not signed in as an address with a gallery cannot add to
//! that gallery by typing the address (a sign-in link is mailed instead).
//!
//! A plain form post may carry several files; the upload page's script sends
//! one file a request (for a progress bar each) and asks for JSON answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use flipstack_core::blob::BlobKind;
use flipstack_core::domain::{DisplayName, Email, PersonId, SecretToken, UploadId, now_millis};
use flipstack_core::imaging::{self, ImageInfo, Inspector, Rejection};
use flipstack_core::store::{AcceptUpload, NewOwner, NewSession, NewUpload, Person, SessionInfo, StoreError};
use futures::{Stream, StreamExt};
use multer::{Field, Multipart};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use warp::http::{HeaderValue, StatusCode};

use crate::multipart::{self, BodyError, BodyLimits};
use crate::pages::{self, FormInput, form_page};
use crate::rules::{UploadTarget, upload_target};
use crate::session::{SESSION_LIFETIME_MS, SignedIn, Visitor, remember_session};
use crate::shield::{ClientAddr, Limit, SpoolShare, human_wait, too_many_text};
use crate::signin;
use crate::state::AppState;
use crate::web::{Resp, add_cookie, human_bytes, json as json_reply, message, see_other};

/// Parts a form may have beside its files: the CSRF token, the address and a few more.
const OTHER_PARTS: usize = 8;
/// Longest multipart boundary taken (RFC 2046 allows 70 characters).
const MAX_BOUNDARY: usize = 200;

struct Spooled<'a> {
    file: tempfile::NamedTempFile,
    /// The spool disk this file holds, given back when it goes.
    _share: SpoolShare<'a>,
    info: ImageInfo,
    bytes: u64,
    name: DisplayName,
}

const TOO_MANY_FILES: &str =
    "That is more pictures than one upload takes (the upload page says how many); send fewer at a time.";

/// Why a file or the form could not be taken.
enum Refusal {
    Picture(Rejection),
    TooLarge(u64),
    BadForm(&'static str),
    /// The body broke a limit of [`multipart::guard`].
    Body(StatusCode, &'static str),
    /// The spool's disk budget is used up.
    SpoolFull,
    Csrf,
    Io(String),
}

impl Refusal {
    /// A parser error, with the guard's reason when the guard stopped the body.
    fn from_multipart(e: &multer::Error, otherwise: &'static str) -> Refusal {
        // The parser wraps a stream error once or twice, depending on where it met it.
        fn guard_error(e: &multer::Error) -> Option<&BodyError> {
            let multer::Error::StreamReadFailed(inner) = e else { return None };
            inner.downcast_ref::<BodyError>().or_else(|| inner.downcast_ref::<multer::Error>().and_then(guard_error))
        }
        match guard_error(e) {
            Some(BodyError::TooLarge(_)) => {
                Refusal::Body(StatusCode::PAYLOAD_TOO_LARGE, "The upload is larger than this server takes at once.")
            }
            Some(BodyError::Stalled(_) | BodyError::TooSlow(_)) => Refusal::Body(
                StatusCode::REQUEST_TIMEOUT,
                "The upload came in too slowly and was stopped. Please try again on a better connection.",
            ),
            Some(BodyError::TooManyParts(_)) => Refusal::BadForm(TOO_MANY_FILES),
            Some(BodyError::Transport(_)) => Refusal::BadForm("The upload was interrupted. Please try again."),
            Some(BodyError::Preamble | BodyError::PartHeaders(_)) | None => Refusal::BadForm(otherwise),
        }
    }
}

/// One refused file of a form that carried several.
struct FileRefusal {
    name: String,
    status: StatusCode,
    message: String,
}

/// How an upload ends, before it is shown as a page or as JSON.
enum Answer {
    Accepted {
        ids: Vec<UploadId>,
        refused: Vec<FileRefusal>,
        signed: Option<SignedIn>,
        cookie: Option<String>,
    },
    /// Refused; the upload form is shown again with the message and what was sent.
    Form {
        status: StatusCode,
        message: Option<String>,
        typed: FormInput,
    },
    /// Refused with a page of its own (not the owner, CSRF, unavailable).
    Page {
        status: StatusCode,
        title: &'static str,
        message: String,
        /// Seconds, for the `Retry-After` header.
        retry_after: Option<u64>,
    },
}

fn unavailable(what: &str) -> Answer {
    Answer::Page {
        status: StatusCode::SERVICE_UNAVAILABLE,
        title: "Please try again in a moment",
        message: format!("flipstack could not {what} just now. Nothing was stored; please try again."),
        retry_after: Some(10),
    }
}

fn too_many(wait: Duration, what: &str) -> Answer {
    Answer::Page {
        status: StatusCode::TOO_MANY_REQUESTS,
        title: "Too many requests",
        message: too_many_text(what, wait),
        retry_after: Some(wait.as_secs().max(1)),
    }
}

fn csrf_answer() -> Answer {
    Answer::Page {
        status: StatusCode::FORBIDDEN,
        title: "Please try again",
        message: "This form was out of date or did not come from this site, so nothing was done. Go back, reload the page and send it again.".into(),
        retry_after: None,
    }
}

fn describe(max: u64, refusal: &Refusal) -> (StatusCode, String) {
    match refusal {
        Refusal::Picture(r) => {
            (StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY), r.to_string())
        }
        Refusal::TooLarge(n) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The file is {} or more; the limit is {}. Make it smaller and try again.",
                human_bytes(*n),
                human_bytes(max)
            ),
        ),
        Refusal::BadForm(t) => (StatusCode::BAD_REQUEST, (*t).to_owned()),
        Refusal::Body(status, t) => (*status, (*t).to_owned()),
        Refusal::SpoolFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            "flipstack is taking in a great many uploads just now; please try again in a minute.".into(),
        ),
        Refusal::Csrf => (StatusCode::FORBIDDEN, "This form was out of date; reload the page and try again.".into()),
        Refusal::Io(_) => (StatusCode::SERVICE_UNAVAILABLE, "flipstack could not take the upload just now.".into()),
    }
}

fn refusal_code(r: &Refusal) -> &'static str {
    match r {
        Refusal::Picture(r) => r.code(),
        Refusal::TooLarge(_) => "too_large",
        Refusal::BadForm(_) => "bad_form",
        Refusal::Body(..) => "body_limit",
        Refusal::SpoolFull => "spool_full",
        Refusal::Csrf => "csrf",
        Refusal::Io(_) => "io",
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn upload<S, B>(
    state: Arc<AppState>,
    visitor: Visitor,
    client: ClientAddr,
    content_length: Option<u64>,
    content_type: Option<String>,
    accept: Option<String>,
    body: S,
) -> Result<Resp, Infallible>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let wants_json = accept.as_deref().is_some_and(|a| a.contains("application/json"));
    let answer = take(&state, &visitor, client, content_length, content_type, body).await;
    Ok(respond(&state, &visitor, answer, wants_json).await)
}

async fn take<S, B>(
    state: &AppState,
    visitor: &Visitor,
    client: ClientAddr,
    content_length: Option<u64>,
    content_type: Option<String>,
    body: S,
) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let services = &state.services;
    if state.blocked.get(services).await {
        services.metrics.upload_rejected("blocked");
        return Answer::Form {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: Some("Uploads are paused for a moment; please try again later.".into()),
            typed: FormInput::default(),
        };
    }
    let max = services.config.max_upload_bytes;
    // Several files may come in one form; its other fields take a few kilobytes.
    let max_files = services.config.max_files_per_upload as usize;
    let max_body = max * max_files as u64 + 64 * 1024;
    let Some(_slot) = state.upload_slots.take(client, services.config.max_uploads_per_client) else {
        services.metrics.upload_rejected("concurrent");
        return Answer::Page {
            status: StatusCode::TOO_MANY_REQUESTS,
            title: "One moment, please",
            message: format!(
                "Your network is already sending {} uploads; wait for one of them to finish, then send this one again.",
                services.config.max_uploads_per_client
            ),
            retry_after: Some(5),
        };
    };
    if let Some(wait) = state.over_limit(Limit::UploadsPerClient, &client.to_string()).await {
        services.metrics.upload_rejected("rate_limited");
        return too_many(wait, "uploads from your network");
    }
    if state.spool_budget.is_full() {
        services.metrics.upload_rejected("spool_full");
        tracing::warn!(used = state.spool_budget.used(), "the upload spool is at its budget; refusing an upload");
        let (status, message) = describe(max, &Refusal::SpoolFull);
        return Answer::Page { status, title: "Please try again in a moment", message, retry_after: Some(30) };
    }
    if let Some(len) = content_length
        && len > max_body
    {
        services.metrics.upload_rejected("too_large");
        let (status, message) = describe(max, &Refusal::TooLarge(len));
        return Answer::Form { status, message: Some(message), typed: FormInput::default() };
    }
    let Some(boundary) = content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY)
    else {
        services.metrics.upload_rejected("bad_form");
        return Answer::Form {
            status: StatusCode::BAD_REQUEST,
            message: Some("The upload was not sent as a form. Use the upload page.".into()),
            typed: FormInput::default(),
        };
    };
    let body = Box::pin(body.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining()))));
    let limits = BodyLimits {
        max_body,
        max_preamble: services.config.form_preamble_bytes as usize,
        max_part_headers: services.config.form_part_header_bytes as usize,
        max_parts: max_files + OTHER_PARTS,
        idle: Duration::from_secs(services.config.idle_timeout_secs),
        min_rate: services.config.body_min_bytes_per_sec,
    };
    let form = Multipart::new(multipart::guard(body, &boundary, limits), boundary);
    let (typed, files) = match read_form(state, visitor, form).await {
        Ok(parts) => parts,
        Err((refusal, typed)) => {
            services.metrics.upload_rejected(refusal_code(&refusal));
            return match refusal {
                Refusal::Csrf => csrf_answer(),
                Refusal::Io(e) => {
                    tracing::error!(error = %e, "upload spooling failed");
                    unavailable("take the upload")
                }
                Refusal::SpoolFull => {
                    let (status, message) = describe(max, &Refusal::SpoolFull);
                    Answer::Page { status, title: "Please try again in a moment", message, retry_after: Some(30) }
                }
                other => {
                    let (status, message) = describe(max, &other);
                    tracing::info!(status = status.as_u16(), reason = %message, "upload refused");
                    Answer::Form { status, message: Some(message), typed }
                }
            };
        }
    };
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (name, file) in files {
        match file {
            Ok(s) => accepted.push(s),
            Err(r) => {
                services.metrics.upload_rejected(refusal_code(&r));
                let (status, message) = describe(max, &r);
                tracing::info!(status = status.as_u16(), reason = %message, "upload refused");
                refused.push(FileRefusal { name, status, message });
            }
        }
    }
    if accepted.is_empty() {
        let Some(first) = refused.first() else {
            services.metrics.upload_rejected("no_file");
            return Answer::Form {
                status: StatusCode::BAD_REQUEST,
                message: Some("Choose a picture to upload.".into()),
                typed,
            };
        };
        let status = first.status;
        let message = if refused.len() == 1 {
            first.message.clone()
        } else {
            refused.iter().map(|r| format!("{}: {}", r.name, r.message)).collect::<Vec<_>>().join(" ")
        };
        return Answer::Form { status, message: Some(message), typed };
    }
    store_all(state, visitor, client, typed, accepted, refused).await
}

/// Reads the form's parts in order: `csrf`, `email`, then each `file` (and
/// `notice`, the "mail me" box, wherever it comes). The CSRF token is settled
/// before any file is read (the page's form sends it first). A refused file
/// is reported and the next one read.
#[allow(clippy::type_complexity)]
async fn read_form<'a>(
    state: &'a AppState,
    visitor: &Visitor,
    mut form: Multipart<'static>,
) -> Result<(FormInput, Vec<(String, Result<Spooled<'a>, Refusal>)>), (Refusal, FormInput)> {
    let field_limit = state.services.config.form_field_bytes as usize;
    let mut csrf_ok = false;
    let mut notice_unknown = false;
    let mut typed = FormInput::default();
    let mut files = Vec::new();
    loop {
        // The body guard stops a client that stalls or crawls.
        let part = match form.next_field().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                let refusal = Refusal::from_multipart(&e, "The upload was not a complete form. Please try again.");
                return Err((refusal, typed));
            }
        };
        match part.name().unwrap_or("") {
            "csrf" => {
                let value = read_small(part, field_limit).await.map_err(|r| (r, typed.clone()))?;
                csrf_ok = visitor.csrf_ok(&state.secret, value.trim());
            }
            "email" => {
                let value = read_small(part, field_limit).await.map_err(|r| (r, FormInput::default()))?;
                typed.email = value.trim().to_owned();
            }
            // A checkbox is sent only when ticked, whatever its value.
            "notice" => {
                read_small(part, field_limit).await.map_err(|r| (r, typed.clone()))?;
                typed.notice = Some(true);
            }
            // The form could not read the remembered choice (the database
            // was away): an unticked box then changes nothing.
            "notice_unknown" => {
                read_small(part, field_limit).await.map_err(|r| (r, typed.clone()))?;
                notice_unknown = true;
            }
            "file" => {
                if !csrf_ok {
                    return Err((Refusal::Csrf, typed));
                }
                if files.len() >= state.services.config.max_files_per_upload as usize {
                    return Err((Refusal::BadForm(TOO_MANY_FILES), typed));
                }
                let unnamed = part.file_name().is_none_or(str::is_empty);
                let name = DisplayName::from_client(part.file_name()).as_str().to_owned();
                match spool(state, part).await {
                    Ok(s) => files.push((name, Ok(s))),
                    // A file input with no file chosen sends an empty, nameless part.
                    Err(Refusal::Picture(Rejection::Empty)) if unnamed => {}
                    Err(r @ (Refusal::Picture(_) | Refusal::TooLarge(_))) => files.push((name, Err(r))),
                    // The body itself broke a limit: the rest of the form cannot be read.
                    Err(other) => return Err((other, typed)),
                }
            }
            _ => {
                read_small(part, field_limit).await.map_err(|r| (r, typed.clone()))?;
            }
        }
    }
    if !csrf_ok {
        return Err((Refusal::Csrf, typed));
    }
    // The whole form was read: no box means it was not ticked.
    if !notice_unknown {
        typed.notice.get_or_insert(false);
    }
    Ok((typed, files))
}

async fn read_small(mut part: Field<'static>, limit: usize) -> Result<String, Refusal> {
    let mut out = Vec::new();
    let incomplete_text = || "The upload was not a complete form. Please try again.";
    while let Some(chunk) = part.chunk().await.map_err(|e| Refusal::from_multipart(&e, incomplete_text()))? {
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(Refusal::BadForm("A form field was far too long."));
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Streams the file part to a temporary file while inspecting it.
async fn spool<'a>(state: &'a AppState, mut part: Field<'static>) -> Result<Spooled<'a>, Refusal> {
    let name = DisplayName::from_client(part.file_name());
    let max = state.services.config.max_upload_bytes;
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(&state.spool.dir)
        .map_err(|e| Refusal::Io(format!("cannot create a spool file: {e}")))?;
    let std_file = tmp.reopen().map_err(|e| Refusal::Io(e.to_string()))?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(std_file));
    let mut inspector = Inspector::new(state.services.limits);
    let mut share = state.spool_budget.share();
    let mut total = 0u64;
    loop {
        let bytes: Bytes = match part.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(Refusal::from_multipart(&e, "The upload was interrupted. Please try again.")),
        };
        total += bytes.len() as u64;
        if total > max {
            return Err(Refusal::TooLarge(total));
        }
        if !share.grow(bytes.len() as u64) {
            tracing::warn!(used = state.spool_budget.used(), "the upload spool reached its budget mid-upload");
            return Err(Refusal::SpoolFull);
        }
        inspector.feed(&bytes).map_err(Refusal::Picture)?;
        out.write_all(&bytes).await.map_err(|e| Refusal::Io(format!("spooling the upload: {e}")))?;
    }
    out.flush().await.map_err(|e| Refusal::Io(e.to_string()))?;
    let info = inspector.finish().map_err(Refusal::Picture)?;
    imaging::check_name(name.as_str(), info.format).map_err(Refusal::Picture)?;
    // What only a decoder sees, on the blocking pool, a few at a time.
    let _slot = state.verify_slots.acquire().await.map_err(|e| Refusal::Io(e.to_string()))?;
    let limits = state.services.limits;
    let path = tmp.path().to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), Refusal> {
        let file = std::fs::File::open(&path).map_err(|e| Refusal::Io(e.to_string()))?;
        // SAFETY: the spool file is ours alone and is not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Refusal::Io(e.to_string()))?;
        imaging::verify(&map, &info, &limits).map_err(Refusal::Picture)
    })
    .await
    .map_err(|e| Refusal::Io(e.to_string()))??;
    Ok(Spooled { file: tmp, _share: share, info, bytes: total, name })
}

/// Settles the owner, then stores each picture, records it and queues its job.
async fn store_all(
    state: &AppState,
    visitor: &Visitor,
    client: ClientAddr,
    typed: FormInput,
    files: Vec<Spooled<'_>>,
    mut refused: Vec<FileRefusal>,
) -> Answer {
    let services = &state.services;
    let typed_email = if typed.email.is_empty() {
        None
    } else {
        match Email::parse(&typed.email) {
            Ok(e) => Some(e),
            Err(e) => {
                services.metrics.upload_rejected("bad_email");
                return Answer::Form {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    message: Some(format!("E-mail address: {e}.")),
                    typed,
                };
            }
        }
    };
    let now = now_millis();
    let mut new_session = None;
    let (mut owner, email) = match upload_target(visitor.signed_in.as_ref(), typed_email) {
        UploadTarget::Own { person, email } => (NewOwner::Existing(person), email),
        UploadTarget::Typed(e) => match services.store.person_by_email(&e).await {
            Ok(Some(person)) => {
                services.metrics.upload_rejected("not_owner");
                return refuse_not_owner(state, &person).await;
            }
            Ok(None) => {
                if let Some(wait) = state.over_limit(Limit::GalleriesPerClient, &client.to_string()).await {
                    services.metrics.upload_rejected("rate_limited");
                    return too_many(wait, "new galleries made from your network");
                }
                let id = PersonId::new();
                new_session = Some((SecretToken::generate(), id));
                (NewOwner::Create { id, email: e.clone() }, e)
            }
            Err(_) => return unavailable("check who owns that address"),
        },
        UploadTarget::NoAddress => {
            services.metrics.upload_rejected("no_email");
            return Answer::Form {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: Some("Enter your e-mail address: your gallery is kept under it.".into()),
                typed,
            };
        }
    };
    let person_id = match &owner {
        NewOwner::Existing(id) | NewOwner::Create { id, .. } => *id,
    };
    let hash = email.hashed_id();
    let quota = services.config.quota_bytes_per_person;
    let mut used = match &owner {
        NewOwner::Create { .. } => 0,
        NewOwner::Existing(id) => match services.store.person_usage(*id).await {
            Ok(n) => n,
            Err(_) => return unavailable("check how much your gallery holds"),
        },
    };
    let mut ids = Vec::new();
    for spooled in files {
        if used + spooled.bytes > quota {
            services.metrics.upload_rejected("quota");
            let message = format!(
                "Your gallery holds {} and may hold {}; delete some pictures to make room for this one.",
                human_bytes(used),
                human_bytes(quota)
            );
            if ids.is_empty() && refused.is_empty() {
                return Answer::Page {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    title: "Your gallery is full",
                    message,
                    retry_after: None,
                };
            }
            refused.push(FileRefusal {
                name: spooled.name.as_str().into(),
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message,
            });
            continue;
        }
        if let Some(wait) = state.over_limit(Limit::UploadsPerPerson, &hash).await {
            services.metrics.upload_rejected("rate_limited");
            if ids.is_empty() && refused.is_empty() {
                return too_many(wait, "uploads to this gallery");
            }
            refused.push(FileRefusal {
                name: spooled.name.as_str().into(),
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!("Too many uploads to this gallery just now; try again in {}.", human_wait(wait)),
            });
            continue;
        }
        let id = UploadId::new();
        if let Err(e) = services.blobs.put_file(BlobKind::Original, id, spooled.file.path()).await {
            tracing::error!(error = %e, "could not store an upload's original");
            if ids.is_empty() {
                return unavailable("store your picture");
            }
            refused.push(FileRefusal {
                name: spooled.name.as_str().into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "It could not be stored just now; upload it again.".into(),
            });
            continue;
        }
        let (width, height) = spooled.info.displayed_size();
        // Only the first picture of a new address creates its gallery and session.
        let session = match (&owner, &new_session) {
            (NewOwner::Create { .. }, Some((token, pid))) => Some(NewSession {
                token_hash: token.hash(),
                person_id: *pid,
                expires_at: now + SESSION_LIFETIME_MS,
                proven: false,
            }),
            _ => None,
        };
        let accepted = services
            .store
            .accept_upload(AcceptUpload {
                upload: NewUpload {
                    id,
                    name: spooled.name.clone(),
                    format: spooled.info.format,
                    bytes: spooled.bytes,
                    width,
                    height,
                    trace_parent: flipstack_core::trace::current_traceparent(),
                },
                owner: std::mem::replace(&mut owner, NewOwner::Existing(person_id)),
                session,
                person_hash: hash.clone(),
                notice: typed.notice,
                now,
            })
            .await;
        let receipt = match accepted {
            Ok(r) => r,
            Err(e) => {
                // A database that went away mid-commit may have recorded the
                // row: its original stays, and the orphan sweep removes it
                // after its grace if no row came of it. A refusal wrote nothing.
                if !e.is_unavailable()
                    && let Err(be) = services.blobs.delete_all(id).await
                {
                    tracing::warn!(error = %be, upload = %id, "could not remove the original of a refused upload");
                }
                if !ids.is_empty() {
                    tracing::warn!(error = %e, "could not record an upload");
                    refused.push(FileRefusal {
                        name: spooled.name.as_str().into(),
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "It could not be recorded just now; upload it again.".into(),
                    });
                    continue;
                }
                return match e {
                    StoreError::EmailTaken => match services.store.person_by_email(&email).await {
                        Ok(Some(person)) => refuse_not_owner(state, &person).await,
                        _ => unavailable("record your picture"),
                    },
                    other => {
                        tracing::warn!(error = %other, "could not record an upload");
                        unavailable("record your picture")
                    }
                };
            }
        };
        services.gallery.invalidate(&hash, &receipt).await;
        match services.queue.enqueue(id).await {
            // Confirmed sent: the fleet's reconciler never sends it again.
            Ok(()) if services.queue.needs_reconciler() => {
                if let Err(e) = services.store.mark_enqueued(id, now_millis()).await {
                    tracing::warn!(error = %e, upload = %id, "queued a job but could not record it; the reconciler will send one more copy");
                }
            }
            Ok(()) => {}
            // The row is the truth: the reconciler sends it again.
            Err(e) => tracing::warn!(error = %e, upload = %id, "could not queue a job; the reconciler will"),
        }
        services.metrics.upload_accepted();
        tracing::info!(
            upload = %id, person = %hash, format = spooled.info.format.as_str(), bytes = spooled.bytes,
            width, height, "upload accepted"
        );
        used += spooled.bytes;
        ids.push(id);
    }
    let (signed, cookie) = match new_session {
        Some((token, person_id)) => {
            let info =
                SessionInfo { person_id, email: email.clone(), expires_at: now + SESSION_LIFETIME_MS, proven: false };
            remember_session(state, &token.hash(), &info).await;
            tracing::info!(person = %hash, "new gallery; browser signed in");
            let cookie = pages::session_cookie(state, &token);
            (Some(SignedIn { token, person_id, email }), Some(cookie))
        }
        None => (None, None),
    };
    Answer::Accepted { ids, refused, signed, cookie }
}

/// The address has a gallery this browser is not signed in to: store
/// nothing, mail its owner a sign-in link, and say so.
async fn refuse_not_owner(state: &AppState, person: &Person) -> Answer {
    if signin::request_link(state, person.email.clone()).is_err() {
        return unavailable("send the sign-in mail");
    }
    tracing::info!(person = %person.email.hashed_id(), "upload refused: the address has a gallery this browser is not signed in to");
    Answer::Page {
        status: StatusCode::FORBIDDEN,
        title: "Check your mail",
        message: format!(
            "{} already has a gallery, and this browser is not signed in to it. To keep galleries private, nothing was uploaded; we mailed a sign-in link to that address instead. Open it in this browser, then upload again.",
            person.email
        ),
        retry_after: None,
    }
}

/// The answer as a page (plain form posts) or JSON (the upload page's script).
async fn respond(state: &AppState, visitor: &Visitor, answer: Answer, wants_json: bool) -> Resp {
    match answer {
        Answer::Accepted { ids, refused, signed, cookie } => {
            let now_visitor = match signed {
                Some(s) => visitor.signed_in_as(s),
                None => visitor.clone(),
            };
            let mut r = if wants_json {
                let refused: Vec<_> = refused
                    .iter()
                    .map(|f| json!({"name": f.name, "status": f.status.as_u16(), "error": f.message}))
                    .collect();
                json_reply(
                    StatusCode::OK,
                    &json!({"ok": true, "ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(), "refused": refused, "csrf": now_visitor.csrf_token(&state.secret)}),
                )
            } else if refused.is_empty() {
                see_other("/gallery")
            } else {
                let listed = refused.iter().map(|f| format!("{}: {}", f.name, f.message)).collect::<Vec<_>>().join(" ");
                let text = format!("{} picture(s) were uploaded. These were not: {listed}", ids.len());
                form_page(state, &now_visitor, StatusCode::OK, Some(text), &FormInput::default()).await
            };
            if let Some(c) = cookie {
                r = add_cookie(r, &c);
            }
            r
        }
        Answer::Form { status, message, typed } => {
            if wants_json {
                let text = message.unwrap_or_else(|| "The upload was refused.".into());
                let mut r =
                    json_reply(status, &json!({"ok": false, "error": text, "csrf": visitor.csrf_token(&state.secret)}));
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut().insert("retry-after", HeaderValue::from_static("60"));
                }
                return r;
            }
            // A paused service shows its banner; the message would repeat it.
            let shown = if status == StatusCode::SERVICE_UNAVAILABLE && state.blocked.get(&state.services).await {
                None
            } else {
                message
            };
            let mut r = form_page(state, visitor, status, shown, &typed).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut().insert("retry-after", HeaderValue::from_static("60"));
            }
            r
        }
        Answer::Page { status, title, message: text, retry_after } => {
            let mut r = if wants_json {
                json_reply(status, &json!({"ok": false, "error": text, "csrf": visitor.csrf_token(&state.secret)}))
            } else {
                message(state, visitor, status, title, &text, Some(("/form", "Back to the upload page")))
            };
            if let Some(secs) = retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert("retry-after", v);
            }
            r
        }
    }
}
