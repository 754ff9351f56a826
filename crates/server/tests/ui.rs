//! The web UI's routes on the real app (`app()` with `oneshot`, API keys required): its files
//! are served to anyone with their content types and cache headers, everything the page
//! refers to exists, unknown names are 404s, and opening `/ui/` opens nothing else. Also the
//! JSON views it reads, `GET /v1/engine` and `GET /v1/tools`, behind their scopes.
//! (tests/ui/run.mjs drives the page itself in a browser.)

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use autoglm_engine::ServeConfig;
use autoglm_model::Model;
use autoglm_server::{AppState, AuthMode, app};
use autoglm_store::Store;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn state() -> Arc<AppState> {
    static STATE: OnceLock<Arc<AppState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let model =
                Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads");
            let cfg = ServeConfig {
                threads: 1,
                ..Default::default()
            };
            let store = Arc::new(Store::in_memory().expect("store"));
            AppState::new(model, "smollm2-135m", cfg, store, AuthMode::Keys).expect("state")
        })
        .clone()
}

fn key(scopes: &[&str]) -> String {
    state()
        .store()
        .create_key("ui", "test", scopes, Default::default())
        .expect("key")
        .key
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn call(method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let req = req
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let resp = app(state()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(uri: &str) -> Reply {
    call("GET", uri, &[], None).await
}

async fn get_as(uri: &str, authorization: &str) -> Reply {
    call("GET", uri, &[("authorization", authorization)], None).await
}

#[tokio::test]
async fn ui_files_are_served_without_a_key_with_their_types_and_cache_headers() {
    let cases = [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/sse.js", "text/javascript; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ];
    for (uri, content_type) in cases {
        let r = get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
        assert_eq!(r.header("content-type"), content_type, "{uri}");
        assert_eq!(r.header("cache-control"), "no-cache", "{uri}");
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{uri}");
        assert!(
            r.header("content-security-policy")
                .contains("script-src 'self'"),
            "{uri}"
        );
        assert!(r.header("etag").starts_with('"'), "{uri}");
        assert!(!r.body.is_empty(), "{uri}");
    }
    assert_eq!(get("/ui/").await.body, get("/ui/index.html").await.body);
    // HEAD: the same headers, no body.
    let r = call("HEAD", "/ui/app.js", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "text/javascript; charset=utf-8");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn the_root_redirects_to_the_page() {
    for uri in ["/", "/ui"] {
        let r = get(uri).await;
        assert!(r.status.is_redirection(), "{uri}: {}", r.status);
        assert_eq!(r.header("location"), "/ui/", "{uri}");
    }
}

#[tokio::test]
async fn a_file_is_revalidated_by_its_etag() {
    let first = get("/ui/app.js").await;
    let etag = first.header("etag").to_string();
    let again = call("GET", "/ui/app.js", &[("if-none-match", &etag)], None).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), etag);
    let weak = format!("W/{etag}");
    let r = call("GET", "/ui/app.js", &[("if-none-match", &weak)], None).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = call("GET", "/ui/app.js", &[("if-none-match", "\"0\"")], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, first.body);
    // Another file's tag does not match this one.
    let css = get("/ui/style.css").await;
    assert_ne!(css.header("etag"), etag);
}

/// What a file refers to: `src="/ui/…"` and `href="/ui/…"` in HTML, relative module imports
/// (`from './x.js'`, `import('./x.js')`) in scripts.
fn references(name: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if name.ends_with(".html") {
        for attr in ["src=\"", "href=\""] {
            for piece in text.split(attr).skip(1) {
                let target = piece.split('"').next().unwrap_or("");
                if let Some(file) = target.strip_prefix("/ui/") {
                    out.push(file.to_string());
                }
            }
        }
    } else if name.ends_with(".js") {
        for quote in ["'./", "\"./"] {
            for piece in text.split(quote).skip(1) {
                let end = quote.chars().next().unwrap_or('\'');
                let target = piece.split(end).next().unwrap_or("");
                if target.ends_with(".js") {
                    out.push(target.to_string());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_file_the_page_refers_to_is_served() {
    let mut todo = vec!["index.html".to_string()];
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let r = get(&format!("/ui/{name}")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "/ui/{name}, referred to by the page"
        );
        if name.ends_with(".js") {
            assert!(r.header("content-type").starts_with("text/javascript"));
        }
        todo.extend(references(&name, &r.text()));
    }
    // The page, its style, its icon and every view's module are reached.
    for must in [
        "style.css",
        "favicon.svg",
        "app.js",
        "sse.js",
        "task.js",
        "timeline.js",
        "engine.js",
        "list.js",
        "new.js",
    ] {
        assert!(seen.contains(must), "{must} not referred to: {seen:?}");
    }
}

#[tokio::test]
async fn unknown_files_are_404_and_the_open_prefix_opens_nothing_else() {
    for uri in [
        "/ui/nope.js",
        "/ui/package.json",
        "/ui/sub/app.js",
        "/ui/../v1/tasks",
        "/ui/%2e%2e/v1/tasks",
        "/ui/..%2fv1%2ftasks",
    ] {
        let r = get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{uri}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("web UI"),
            "{uri}: {}",
            r.text()
        );
    }
    // Outside the UI's paths, the key is still asked for.
    for uri in [
        "/uix",
        "/ui.js",
        "/v1/tasks",
        "/v1/engine",
        "/v1/tools",
        "/metrics",
    ] {
        assert_eq!(get(uri).await.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test]
async fn engine_and_tools_views_behind_their_scopes() {
    let tasks_only = format!("Bearer {}", key(&["tasks"]));
    let models = format!("Bearer {}", key(&["models"]));
    assert_eq!(
        get_as("/v1/engine", &tasks_only).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_as("/v1/tools", &models).await.status,
        StatusCode::FORBIDDEN
    );

    let tools = get_as("/v1/tools", &tasks_only).await;
    assert_eq!(tools.status, StatusCode::OK, "{}", tools.text());
    let names: Vec<String> = tools.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for builtin in ["calculator", "read_file", "memory_search"] {
        assert!(names.contains(&builtin.to_string()), "{names:?}");
    }

    let before = get_as("/v1/engine", &models).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text());
    let e = before.json();
    assert_eq!(e["object"], "engine");
    assert_eq!(e["model"], "smollm2-135m");
    let total = e["kv_blocks"]["total"].as_u64().unwrap();
    assert!(total > 0, "{e}");
    assert!(e["kv_blocks"]["used"].as_u64().unwrap() <= total);
    let share = e["kv_cache_use"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{e}");
    assert!(e["history"]["points"].is_array(), "{e}");
    assert_eq!(e["history"]["interval_s"], 2);
    for k in [
        "queue_depth",
        "running_sequences",
        "batch_size",
        "requests_in_flight",
    ] {
        assert!(e[k].is_u64(), "{k}: {e}");
    }

    // A generation shows in the counters.
    let done = call(
        "POST",
        "/v1/completions",
        &[("authorization", &models)],
        Some(json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0})),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    let after = get_as("/v1/engine", &models).await.json();
    let grew = |k: &str| after[k].as_u64().unwrap() - e[k].as_u64().unwrap();
    assert!(grew("generated_tokens") >= 1, "{after}");
    assert!(grew("prompt_tokens") >= 1, "{after}");
    let looked = after["prefix_cache"]["lookup_tokens"].as_u64().unwrap();
    let hit = after["prefix_cache"]["hit_tokens"].as_u64().unwrap();
    assert!(looked > 0 && hit <= looked, "{after}");
}
