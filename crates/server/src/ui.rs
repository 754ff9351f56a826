//! The web UI: one page with its scripts, styles and icon, embedded in the binary at build time
//! (the files under `crates/server/ui/`, plain HTML, CSS and JavaScript modules: no build step,
//! no CDN) and served at `/ui/`; `/` and `/ui` redirect there.
//!
//! These routes are open (see `auth::OPEN_PREFIXES`): the page must load before its user has
//! pasted a key into it. They hold no data — everything the page shows comes from the API,
//! called with that key. Every file is sent with `Cache-Control: no-cache` and an `ETag` of its
//! contents, so a browser revalidates each load (a 304 when nothing changed) and never runs a
//! stale script after an upgrade; a content security policy keeps the page to its own scripts
//! and its own server.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

/// Where the page lives.
pub const UI_ROOT: &str = "/ui/";

/// Scripts and styles from this server only; no inline code; not framed by other sites (the
/// page holds an API key).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI. A file added under `ui/` must be listed here (the tests fetch every
/// file the page and its modules refer to).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("sse.js", JS),
    asset!("list.js", JS),
    asset!("new.js", JS),
    asset!("task.js", JS),
    asset!("timeline.js", JS),
    asset!("engine.js", JS),
];

/// The UI's routes, merged into [`crate::app`]'s router (inside the auth guard, which lets them
/// through without a key).
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route(UI_ROOT, get(index))
        .route("/ui/{*name}", get(file))
}

async fn to_ui() -> Redirect {
    Redirect::to(UI_ROOT)
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// FNV-1a: a stable fingerprint of a file's bytes for its `ETag` (not a security measure).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", fingerprint(a.body)))
            .collect()
    })
}

/// Whether an `If-None-Match` header names `etag` (a list, `*`, or weak forms of it).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::NotFound(format!("no such file of the web UI: {name}")).into_response();
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let mut resp = if matches(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let tag = "\"00000000000000ab\"";
        let cases = [
            (None, false),
            (Some("\"00000000000000ab\""), true),
            (Some("W/\"00000000000000ab\""), true),
            (Some("\"x\", \"00000000000000ab\""), true),
            (Some("*"), true),
            (Some("\"00000000000000ac\""), false),
            (Some(""), false),
        ];
        for (header_value, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = header_value {
                h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            }
            assert_eq!(matches(&h, tag), want, "{header_value:?}");
        }
    }

    #[test]
    fn asset_names_are_unique_and_fingerprints_differ() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{}", a.name);
            for b in &ASSETS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(
                    fingerprint(a.body),
                    fingerprint(b.body),
                    "{} {}",
                    a.name,
                    b.name
                );
            }
        }
    }
}
