//! `GET /images/{id}/{variant}`: a person's own pictures, streamed from the
//! blob store. Only the owner's session gets them (403 signed out, 404 for
//! anyone else, so ids reveal nothing). The type comes from the checked
//! content, never the upload's name; `nosniff` and a sandboxing CSP make sure
//! a browser never runs what it is served.

use std::convert::Infallible;
use std::sync::Arc;

use flipstack_core::blob::BlobKind;
use flipstack_core::domain::UploadId;
use flipstack_core::imaging;
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
    let kind = match variant.as_str() {
        "original" => BlobKind::Original,
        "flipped" => BlobKind::Flipped,
        "original-thumb" => BlobKind::OriginalThumb,
        "flipped-thumb" => BlobKind::FlippedThumb,
        // HEIC/AVIF: the browser-viewable copies the gallery shows.
        "original-view" => BlobKind::OriginalDisplay,
        "flipped-view" => BlobKind::FlippedDisplay,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
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
    let format = match owner {
        Some((person, format)) if person == me.person_id => format,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "No such picture.")),
    };
    // Thumbnails, views and some flips are stored in another format than the upload's.
    let format = match kind {
        BlobKind::OriginalThumb | BlobKind::FlippedThumb => imaging::thumbnail_format(format),
        BlobKind::OriginalDisplay | BlobKind::FlippedDisplay => imaging::display_format(format).unwrap_or(format),
        BlobKind::Flipped => imaging::flipped_format(format),
        BlobKind::Original => format,
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
