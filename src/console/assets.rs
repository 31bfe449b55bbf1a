//! The console's stylesheet, script and icon, compiled into the binary (no
//! external fonts, CDNs or build step). Their URLs carry a hash of their
//! content, so a browser may keep them while they stay the same.
//!
//! May call: nothing.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const ICON: &str = include_str!("assets/favicon.svg");

/// One embedded file: its body, type and content hash.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    version: String,
}

fn asset(body: &'static str, content_type: &'static str) -> Asset {
    let digest = Sha256::digest(body.as_bytes());
    let version = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Asset {
        body,
        content_type,
        version,
    }
}

static STYLE: LazyLock<Asset> = LazyLock::new(|| asset(CSS, "text/css; charset=utf-8"));
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| asset(JS, "text/javascript; charset=utf-8"));
static FAVICON: LazyLock<Asset> = LazyLock::new(|| asset(ICON, "image/svg+xml"));

/// The stylesheet's URL.
pub(super) fn css_href() -> String {
    format!("/ui/assets/console.css?v={}", STYLE.version)
}

/// The script's URL.
pub(super) fn js_href() -> String {
    format!("/ui/assets/console.js?v={}", SCRIPT.version)
}

/// The icon's URL.
pub(super) fn icon_href() -> String {
    format!("/ui/assets/favicon.svg?v={}", FAVICON.version)
}

/// `GET /ui/assets/{name}`: open, like the login page that needs them;
/// they hold nothing secret.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    let a: &Asset = match name.as_str() {
        "console.css" => &STYLE,
        "console.js" => &SCRIPT,
        "favicon.svg" => &FAVICON,
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let mut resp = a.body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", a.version)) {
        h.insert(header::ETAG, etag);
    }
    resp
}
