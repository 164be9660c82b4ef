//! CSS, script and icon, compiled into the binary (no CDN, no files to ship).

use std::convert::Infallible;

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{HeaderValue, StatusCode};
use warp::hyper::Body;

use crate::web::{Resp, plain};

const ASSETS: &[(&str, &str, &[u8])] = &[
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../assets/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/app.js")),
    ("icon.svg", "image/svg+xml", include_bytes!("../../assets/icon.svg")),
];

pub async fn serve(name: String) -> Result<Resp, Infallible> {
    let Some((_, mime, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Ok(plain(StatusCode::NOT_FOUND, "No such file."));
    };
    let mut r = warp::http::Response::new(Body::from(*bytes));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(mime));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(r)
}
