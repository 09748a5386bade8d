//! What every server-rendered page shares (the console's and sign-in's): security headers
//! and embedded assets revalidated by ETag.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Adds a page's security headers: `csp`, no sniffing, no referrer, and (unless the
/// handler chose otherwise) no caching — pages name users.
pub fn security_headers(mut response: Response, csp: &'static str) -> Response {
    let h = response.headers_mut();
    // A page that needs a wider policy (a form whose answer leaves the site) sets its own.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(csp));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // `frame-ancestors 'none'` says the same to browsers that read CSP; older ones read
    // only this.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An embedded asset of type `kind`, revalidated on every use (`no-cache` with an ETag of
/// its content): a fixed script reaches browsers at once, an unchanged one costs a 304.
pub fn asset(body: &'static str, kind: &'static str, request: &HeaderMap) -> Response {
    let tag = format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(body.as_bytes()))[..32]
    );
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let head = [
        (header::CONTENT_TYPE, kind.to_owned()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
        (header::ETAG, tag),
    ];
    if cached {
        (StatusCode::NOT_MODIFIED, head).into_response()
    } else {
        (head, body).into_response()
    }
}
