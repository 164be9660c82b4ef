//! `POST /upload`: the multipart form is read as it arrives. The file is
//! spooled to disk (never held in memory) while the inspector checks it, so a
//! picture over the pixel limit is refused as soon as its header arrives; a
//! JPEG's scan data is then verified off the async threads. Only an accepted
//! picture reaches the blob store, and only after its owner is settled:
//! a browser that is not signed in as an address with a gallery cannot add to
//! that gallery by typing the address (a sign-in link is mailed instead).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use flipstack_core::blob::BlobKind;
use flipstack_core::domain::{DisplayName, Email, PersonId, SecretToken, UploadId, now_millis};
use flipstack_core::imaging::{self, ImageInfo, Inspector, Rejection};
use flipstack_core::store::{AcceptUpload, NewOwner, NewSession, NewUpload, SessionInfo, StoreError};
use futures::{Stream, StreamExt};
use multer::{Field, Multipart};
use tokio::io::AsyncWriteExt;
use warp::http::StatusCode;

use crate::pages::{self, csrf_refused, form_page, send_signin_link, unavailable_page};
use crate::session::{SESSION_LIFETIME_MS, Visitor, remember_session};
use crate::state::AppState;
use crate::web::{Resp, add_cookie, message, see_other};

/// A client that stops sending for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const SMALL_FIELD_LIMIT: usize = 1024;

struct Spooled {
    file: tempfile::NamedTempFile,
    info: ImageInfo,
    bytes: u64,
    name: DisplayName,
}

/// Why the form could not be taken, and how to answer.
enum Refusal {
    Picture(Rejection),
    TooLarge(u64),
    BadForm(&'static str),
    Csrf,
    Io(String),
}

pub async fn upload<S, B>(
    state: Arc<AppState>,
    cookie: Option<String>,
    content_length: Option<u64>,
    content_type: Option<String>,
    body: S,
) -> Result<Resp, Infallible>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let visitor = match pages::visitor(&state, cookie.as_deref()).await {
        Ok(v) => v,
        Err(r) => return Ok(r),
    };
    let services = &state.services;
    if state.blocked.get(services).await {
        services.metrics.upload_rejected("blocked");
        let mut r = form_page(&state, &visitor, StatusCode::SERVICE_UNAVAILABLE, None, "").await;
        r.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("60"));
        return Ok(r);
    }
    let max = services.config.max_upload_bytes;
    // The form's other fields and boundaries take a few kilobytes at most.
    if let Some(len) = content_length
        && len > max + 64 * 1024
    {
        services.metrics.upload_rejected("too_large");
        return Ok(refusal_page(&state, &visitor, Refusal::TooLarge(len), "").await);
    }
    let Some(boundary) = content_type.and_then(|ct| multer::parse_boundary(ct).ok()) else {
        services.metrics.upload_rejected("bad_form");
        let refusal = Refusal::BadForm("The upload was not sent as a form. Use the upload page.");
        return Ok(refusal_page(&state, &visitor, refusal, "").await);
    };
    let body = Box::pin(body.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining()))));
    let form = Multipart::new(crate::multipart::strip_nul_in_part_headers(body, &boundary), boundary);
    let (csrf, typed, spooled) = match read_form(&state, &visitor, form).await {
        Ok(parts) => parts,
        Err((refusal, typed)) => {
            let code = match &refusal {
                Refusal::Picture(r) => r.code(),
                Refusal::TooLarge(_) => "too_large",
                Refusal::BadForm(_) => "bad_form",
                Refusal::Csrf => "csrf",
                Refusal::Io(_) => "io",
            };
            services.metrics.upload_rejected(code);
            return Ok(refusal_page(&state, &visitor, refusal, &typed).await);
        }
    };
    if !csrf {
        services.metrics.upload_rejected("csrf");
        return Ok(csrf_refused(&state, &visitor));
    }
    let Some(spooled) = spooled else {
        services.metrics.upload_rejected("no_file");
        return Ok(form_page(
            &state,
            &visitor,
            StatusCode::BAD_REQUEST,
            Some("Choose a picture to upload.".into()),
            &typed,
        )
        .await);
    };
    accept(&state, &visitor, typed, spooled).await
}

/// Reads the form's parts in order: `csrf`, `email`, `file`. The CSRF token
/// and the owner are settled before the file is read when the browser sends
/// them first (as the page's form does).
async fn read_form(
    state: &AppState,
    visitor: &Visitor,
    mut form: Multipart<'static>,
) -> Result<(bool, String, Option<Spooled>), (Refusal, String)> {
    let mut csrf_ok = false;
    let mut typed = String::new();
    let mut spooled = None;
    loop {
        let next = match tokio::time::timeout(IDLE_TIMEOUT, form.next_field()).await {
            Ok(n) => n,
            Err(_) => return Err((Refusal::BadForm("The upload stalled and was stopped. Please try again."), typed)),
        };
        let part = match next {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(_) => {
                return Err((Refusal::BadForm("The upload was not a complete form. Please try again."), typed));
            }
        };
        match part.name().unwrap_or("") {
            "csrf" => {
                let value = read_small(part).await.map_err(|r| (r, typed.clone()))?;
                csrf_ok = visitor.csrf_ok(&state.secret, value.trim());
            }
            "email" => typed = read_small(part).await.map_err(|r| (r, String::new()))?.trim().to_owned(),
            "file" => {
                if !csrf_ok {
                    return Err((Refusal::Csrf, typed));
                }
                if spooled.is_some() {
                    return Err((Refusal::BadForm("Upload one picture at a time."), typed));
                }
                spooled = Some(spool(state, part).await.map_err(|r| (r, typed.clone()))?);
            }
            _ => {
                read_small(part).await.map_err(|r| (r, typed.clone()))?;
            }
        }
    }
    Ok((csrf_ok, typed, spooled))
}

async fn read_small(mut part: Field<'static>) -> Result<String, Refusal> {
    let mut out = Vec::new();
    let incomplete = || Refusal::BadForm("The upload was not a complete form. Please try again.");
    while let Some(chunk) = part.chunk().await.map_err(|_| incomplete())? {
        out.extend_from_slice(&chunk);
        if out.len() > SMALL_FIELD_LIMIT {
            return Err(Refusal::BadForm("A form field was far too long."));
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Streams the file part to a temporary file while inspecting it.
async fn spool(state: &AppState, mut part: Field<'static>) -> Result<Spooled, Refusal> {
    let name = DisplayName::from_client(part.file_name());
    let max = state.services.config.max_upload_bytes;
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(&state.spool_dir)
        .map_err(|e| Refusal::Io(format!("cannot create a spool file: {e}")))?;
    let std_file = tmp.reopen().map_err(|e| Refusal::Io(e.to_string()))?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(std_file));
    let mut inspector = Inspector::new(state.services.limits);
    let mut total = 0u64;
    loop {
        let bytes: Bytes = match tokio::time::timeout(IDLE_TIMEOUT, part.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(_)) => return Err(Refusal::BadForm("The upload was interrupted. Please try again.")),
            Err(_) => return Err(Refusal::BadForm("The upload stalled and was stopped. Please try again.")),
        };
        total += bytes.len() as u64;
        if total > max {
            return Err(Refusal::TooLarge(total));
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
    Ok(Spooled { file: tmp, info, bytes: total, name })
}

async fn refusal_page(state: &AppState, visitor: &Visitor, refusal: Refusal, typed: &str) -> Resp {
    let max = crate::web::human_bytes(state.services.config.max_upload_bytes);
    let (status, text) = match refusal {
        Refusal::Picture(r) => {
            (StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY), r.to_string())
        }
        Refusal::TooLarge(n) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The file is {} or more; the limit is {max}. Make it smaller and try again.",
                crate::web::human_bytes(n)
            ),
        ),
        Refusal::BadForm(t) => (StatusCode::BAD_REQUEST, t.to_owned()),
        Refusal::Csrf => return csrf_refused(state, visitor),
        Refusal::Io(e) => {
            tracing::error!(error = %e, "upload spooling failed");
            return message(
                state,
                visitor,
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again in a moment",
                "flipstack could not take the upload just now. Nothing was stored; please try again.",
                Some(("/form", "Back to the upload page")),
            );
        }
    };
    tracing::info!(status = status.as_u16(), reason = %text, "upload refused");
    form_page(state, visitor, status, Some(text), typed).await
}

/// Settles the owner, stores the picture, records the upload and queues the job.
async fn accept(state: &AppState, visitor: &Visitor, typed: String, spooled: Spooled) -> Result<Resp, Infallible> {
    let services = &state.services;
    let typed_email = if typed.is_empty() {
        None
    } else {
        match Email::parse(&typed) {
            Ok(e) => Some(e),
            Err(e) => {
                services.metrics.upload_rejected("bad_email");
                return Ok(form_page(
                    state,
                    visitor,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some(format!("E-mail address: {e}.")),
                    &typed,
                )
                .await);
            }
        }
    };
    let now = now_millis();
    let mut new_session = None;
    let (owner, email) = match (&visitor.signed_in, typed_email) {
        (Some(me), None) => (NewOwner::Existing(me.person_id), me.email.clone()),
        (Some(me), Some(e)) if e == me.email => (NewOwner::Existing(me.person_id), me.email.clone()),
        (_, Some(e)) => match services.store.person_by_email(&e).await {
            Ok(Some(person)) => {
                services.metrics.upload_rejected("not_owner");
                return Ok(refuse_not_owner(state, visitor, &person).await);
            }
            Ok(None) => {
                let id = PersonId::new();
                let token = SecretToken::generate();
                new_session = Some((token, id));
                (NewOwner::Create { id, email: e.clone() }, e)
            }
            Err(_) => return Ok(unavailable_page(state)),
        },
        (None, None) => {
            services.metrics.upload_rejected("no_email");
            return Ok(form_page(
                state,
                visitor,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("Enter your e-mail address: your gallery is kept under it.".into()),
                "",
            )
            .await);
        }
    };
    let id = UploadId::new();
    if let Err(e) = services.blobs.put_file(BlobKind::Original, id, spooled.file.path()).await {
        tracing::error!(error = %e, "could not store an upload's original");
        return Ok(message(
            state,
            visitor,
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again in a moment",
            "flipstack could not store your picture just now. Nothing was saved; please try again.",
            Some(("/form", "Back to the upload page")),
        ));
    }
    let (width, height) = spooled.info.displayed_size();
    let session = new_session.as_ref().map(|(token, person_id)| NewSession {
        token_hash: token.hash(),
        person_id: *person_id,
        expires_at: now + SESSION_LIFETIME_MS,
    });
    let hash = email.hashed_id();
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
            },
            owner,
            session,
            person_hash: hash.clone(),
            now,
        })
        .await;
    let receipt = match accepted {
        Ok(r) => r,
        Err(e) => {
            // Nothing is left behind: the row was not written, so the blob goes too.
            if let Err(be) = services.blobs.delete_all(id).await {
                tracing::warn!(error = %be, upload = %id, "could not remove the original of a refused upload");
            }
            return Ok(match e {
                StoreError::EmailTaken => match services.store.person_by_email(&email).await {
                    Ok(Some(person)) => refuse_not_owner(state, visitor, &person).await,
                    _ => unavailable_page(state),
                },
                other => {
                    tracing::warn!(error = %other, "could not record an upload");
                    unavailable_page(state)
                }
            });
        }
    };
    services.gallery.invalidate(&hash, &receipt).await;
    if let Err(e) = services.queue.enqueue(id).await {
        // The row is the truth: the reconciler sends it again.
        tracing::warn!(error = %e, upload = %id, "could not queue a job; the reconciler will");
    }
    services.metrics.upload_accepted();
    tracing::info!(
        upload = %id, person = %hash, format = spooled.info.format.as_str(), bytes = spooled.bytes,
        width, height, "upload accepted"
    );
    let mut r = see_other("/gallery");
    if let Some((token, person_id)) = new_session {
        let info = SessionInfo { person_id, email: email.clone(), expires_at: now + SESSION_LIFETIME_MS };
        remember_session(state, &token.hash(), &info).await;
        r = add_cookie(r, &pages::session_cookie(state, &token));
        tracing::info!(person = %hash, "new gallery; browser signed in");
    }
    Ok(r)
}

/// The address has a gallery this browser is not signed in to: store
/// nothing, mail its owner a sign-in link, and say so.
async fn refuse_not_owner(state: &AppState, visitor: &Visitor, person: &flipstack_core::store::Person) -> Resp {
    if let Err(r) = send_signin_link(state, person).await {
        return r;
    }
    tracing::info!(person = %person.email.hashed_id(), "upload refused: the address has a gallery this browser is not signed in to");
    message(
        state,
        visitor,
        StatusCode::FORBIDDEN,
        "Check your mail",
        &format!(
            "{} already has a gallery, and this browser is not signed in to it. To keep galleries private, nothing was uploaded; we mailed a sign-in link to that address instead. Open it in this browser, then upload again.",
            person.email
        ),
        Some(("/form", "Back to the upload page")),
    )
}
