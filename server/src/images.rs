//! `GET /images/{id}/{variant}`: a person's own pictures, streamed from the
//! blob store. Only the owner's session gets them (403 signed out, 404 for
//! anyone else, so ids reveal nothing). The type comes from the checked
//! content, never the upload's name; `nosniff` and a sandboxing CSP make sure
//! a browser never runs what it is served.

use std::convert::Infallible;
use std::sync::Arc;

use flipstack_core::blob::BlobKind;
use flipstack_core::domain::UploadId;
use flipstack_core::imaging::{self, ScreenSize};
use flipstack_core::screens::{self, ScreenError};
use futures::StreamExt;
use warp::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use warp::http::{HeaderValue, StatusCode};
use warp::hyper::Body;

use crate::pages;
use crate::session::Visitor;
use crate::state::AppState;
use crate::web::{Resp, plain};

pub async fn image(
    state: Arc<AppState>,
    id: String,
    variant: String,
    visitor: Visitor,
    if_none_match: Option<String>,
    download: bool,
) -> Result<Resp, Infallible> {
    let Some(kind) = variant_kind(&variant) else {
        return Ok(plain(StatusCode::NOT_FOUND, "No such picture."));
    };
    let Ok(id) = id.parse::<UploadId>() else {
        return Ok(plain(StatusCode::NOT_FOUND, "No such picture."));
    };
    let Some(me) = &visitor.signed_in else {
        return Ok(plain(StatusCode::FORBIDDEN, "Sign in to see your pictures."));
    };
    let owner = match state.owners.get(&id) {
        Some(o) => Some(o),
        None => match state.services.store.upload_owner(id).await {
            Ok(Some(o)) => {
                state.owners.insert(id, o);
                Some(o)
            }
            Ok(None) => None,
            Err(_) => return Ok(pages::unavailable_page(&state)),
        },
    };
    let upload_format = match owner {
        Some((person, format)) if person == me.person_id => format,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
    };
    let format = upload_format;
    // Thumbnails, views and some flips are stored in another format than the upload's.
    let format = match kind {
        BlobKind::OriginalThumb | BlobKind::FlippedThumb => imaging::thumbnail_format(format),
        BlobKind::OriginalDisplay | BlobKind::FlippedDisplay => imaging::display_format(format).unwrap_or(format),
        BlobKind::Flipped => imaging::flipped_format(format),
        BlobKind::Original => format,
        BlobKind::OriginalMedium | BlobKind::FlippedMedium | BlobKind::OriginalLarge | BlobKind::FlippedLarge => {
            imaging::screen_format(format)
        }
    };
    let etag = format!("\"{}-{}\"", id, variant);
    let unavailable = |e: flipstack_core::blob::BlobError| {
        tracing::warn!(error = %e, upload = %id, "blob store read failed");
        plain(StatusCode::SERVICE_UNAVAILABLE, "The picture store is not answering; try again in a moment.")
    };
    let mut r = if if_none_match.as_deref() == Some(etag.as_str()) {
        // The browser has it; only confirm it still exists (not deleted).
        match state.services.blobs.exists(kind, id).await {
            Ok(true) => {
                let mut r = warp::http::Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            }
            Ok(false) => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
            Err(e) => return Ok(unavailable(e)),
        }
    } else {
        match state.services.blobs.get(kind, id).await {
            Ok(Some(blob)) => {
                let mut r =
                    warp::http::Response::new(Body::wrap_stream(blob.stream.map(|c| c.map_err(std::io::Error::other))));
                r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(blob.size));
                r
            }
            // Stored before screen sizes existed (or their making failed).
            Ok(None) if kind.is_screen() => match screen_made_now(&state, id, upload_format, kind).await {
                Ok(Some(bytes)) => {
                    let len = bytes.len();
                    let mut r = warp::http::Response::new(Body::from(bytes));
                    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
                    r
                }
                Ok(None) => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
                Err(e) => return Ok(unavailable(e)),
            },
            // Not flipped yet, or deleted.
            Ok(None) => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
            Err(e) => return Ok(unavailable(e)),
        }
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(format.mime()));
    // Private, and checked again each time: a deleted picture or an ended
    // session must not live on in a browser cache.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}; filename=\"flipstack-{id}-{variant}.{}\"",
        if download { "attachment" } else { "inline" },
        format.extension()
    )) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'none'; sandbox"));
    Ok(r)
}

/// The blob behind a `/images/{id}/{variant}` name.
fn variant_kind(variant: &str) -> Option<BlobKind> {
    Some(match variant {
        "original" => BlobKind::Original,
        "flipped" => BlobKind::Flipped,
        "original-thumb" => BlobKind::OriginalThumb,
        "flipped-thumb" => BlobKind::FlippedThumb,
        // HEIC/AVIF: the browser-viewable copies the gallery shows.
        "original-view" => BlobKind::OriginalDisplay,
        "flipped-view" => BlobKind::FlippedDisplay,
        _ => {
            let (side, size) = variant.split_once('-')?;
            let flipped = match side {
                "original" => false,
                "flipped" => true,
                _ => return None,
            };
            let size = ScreenSize::ALL.into_iter().find(|s| s.name() == size)?;
            BlobKind::screen(size, flipped)
        }
    })
}

/// The screen size asked for when it is not stored: the worker's, when it
/// is about to store it; else made now, for an upload stored before screen
/// sizes existed (one upload at a time, so a gallery of old pictures does
/// not decode them all at once). `None` when the upload is not flipped
/// (yet) or has no such size.
async fn screen_made_now(
    state: &AppState,
    id: UploadId,
    format: flipstack_core::domain::ImageFormat,
    kind: BlobKind,
) -> Result<Option<Vec<u8>>, flipstack_core::blob::BlobError> {
    let blobs = &state.services.blobs;
    // Just flipped: the worker marks an upload done before its screen sizes
    // are stored, and stores them within moments; wait for those (bounded)
    // rather than decode the picture a second time.
    const JUST_FLIPPED_MS: i64 = 10_000;
    if let Ok(Some(u)) = state.services.store.upload(id).await
        && u.finished_at.is_some_and(|at| flipstack_core::domain::now_millis() - at < JUST_FLIPPED_MS)
    {
        for _ in 0..80 {
            if let Some(made) = blobs.get_bytes(kind, id).await? {
                return Ok(Some(made.to_vec()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    let Ok(_slot) = state.screen_slots.acquire().await else {
        return Ok(None);
    };
    // Made meanwhile, by the request before this one or the worker.
    if let Some(made) = blobs.get_bytes(kind, id).await? {
        return Ok(Some(made.to_vec()));
    }
    if !blobs.exists(BlobKind::Flipped, id).await? {
        return Ok(None);
    }
    match screens::make_and_store(blobs, state.services.store.as_ref(), id, format, state.services.limits, None).await {
        Ok(pictures) => Ok(pictures.into_iter().find_map(|p| {
            let (o, f) = (BlobKind::screen(p.size, false), BlobKind::screen(p.size, true));
            (o == kind).then_some(p.original).or_else(|| (f == kind).then_some(p.flipped))
        })),
        Err(ScreenError::Blob(e)) => Err(e),
        Err(e) => {
            tracing::warn!(upload = %id, error = %e, "could not make screen sizes for an earlier upload");
            Ok(None)
        }
    }
}
