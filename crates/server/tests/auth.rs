//! Authentication of the real app (`app()` with `oneshot` on the default model, keys in an
//! in-memory store): a table of presented credentials and the status each gets, scopes per
//! route, rate limits, revocation, the audit rows written, and `AuthMode::None`.

use std::sync::{Arc, OnceLock};

use autoglm_engine::ServeConfig;
use autoglm_model::Model;
use autoglm_server::auth::UNAUTHORIZED_MESSAGE;
use autoglm_server::{AppState, AuthMode, app};
use autoglm_store::{AuditFilter, KeyLimits, NewKey, Store};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One engine for every test; each test makes its own keys (ids are random, so tests sharing
/// the store do not see each other's keys, and audit checks filter by tenant).
fn model() -> Model {
    Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads")
}

fn state(mode: AuthMode) -> Arc<AppState> {
    static KEYS: OnceLock<Arc<AppState>> = OnceLock::new();
    static NONE: OnceLock<Arc<AppState>> = OnceLock::new();
    let cell = match mode {
        AuthMode::Keys => &KEYS,
        AuthMode::None => &NONE,
    };
    cell.get_or_init(|| {
        let store = Arc::new(Store::in_memory().expect("store"));
        let cfg = ServeConfig {
            threads: 1,
            ..Default::default()
        };
        AppState::new(model(), "smollm2-135m", cfg, store, mode).expect("state")
    })
    .clone()
}

fn key(tenant: &str, scopes: &[&str], rpm: Option<u32>) -> NewKey {
    let limits = KeyLimits {
        requests_per_minute: rpm,
        max_running_tasks: None,
    };
    state(AuthMode::Keys)
        .store()
        .create_key(tenant, "test", scopes, limits)
        .expect("key")
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn call(mode: AuthMode, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = if method == "POST" {
        Body::from(json!({"prompt": "Hi", "max_tokens": 1, "temperature": 0}).to_string())
    } else {
        Body::empty()
    };
    let req = req
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let resp = app(state(mode)).oneshot(req).await.unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        retry_after,
        body,
    }
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

#[tokio::test]
async fn every_bad_credential_gets_the_same_401() {
    let good = key("t-401", &["models"], None);
    let revoked = key("t-401", &["models"], None);
    let st = state(AuthMode::Keys);
    st.store().revoke_key(&revoked.row.id).unwrap();
    let (id, secret) = autoglm_store::keys::parse_key(&good.key).unwrap();
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b[10] = if b[10] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let unknown_id = format!("agk_{}_{secret}", flip(id));
    let wrong_secret = format!("agk_{id}_{}", flip(secret));
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no key", vec![]),
        ("empty header", vec![("authorization", String::new())]),
        (
            "not bearer",
            vec![("authorization", format!("Basic {}", good.key))],
        ),
        ("bearer, no token", vec![("authorization", "Bearer".into())]),
        ("malformed", vec![("authorization", bearer("agk_nothex_x"))]),
        (
            "truncated",
            vec![("authorization", bearer(&good.key[..good.key.len() - 1]))],
        ),
        ("unknown id", vec![("authorization", bearer(&unknown_id))]),
        (
            "wrong secret",
            vec![("authorization", bearer(&wrong_secret))],
        ),
        (
            "wrong secret, x-api-key",
            vec![("x-api-key", wrong_secret.clone())],
        ),
        ("revoked", vec![("authorization", bearer(&revoked.key))]),
    ];
    for (name, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (method, uri) in [("GET", "/v1/models"), ("POST", "/v1/completions")] {
            let r = call(AuthMode::Keys, method, uri, &h).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{name} {uri}: {:?}",
                r.body
            );
            assert_eq!(r.body["error"]["message"], UNAUTHORIZED_MESSAGE, "{name}");
            assert_eq!(r.body["error"]["code"], "invalid_api_key", "{name}");
        }
    }
    // The control: the same key, intact, is served.
    let auth = bearer(&good.key);
    let r = call(
        AuthMode::Keys,
        "GET",
        "/v1/models",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"][0]["id"], "smollm2-135m");
    // Every refusal is in the audit log, none names a tenant, none holds a secret.
    let rows = st
        .store()
        .audit(&AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    // (Other tests share the store: their refusals only add rows.)
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.status == Some(401))
        .collect();
    assert!(
        refused.len() >= 2 * cases.len(),
        "{} refusals logged",
        refused.len()
    );
    assert!(
        refused
            .iter()
            .all(|r| r.entry.tenant.is_none() && r.entry.outcome == "refused")
    );
    let all = serde_json::to_string(&rows).unwrap();
    assert!(
        !all.contains(secret) && !all.contains(&flip(secret)),
        "a secret in the audit log"
    );
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|r| r.entry.detail["reason"].as_str())
        .collect();
    for why in [
        "no key",
        "malformed key",
        "unknown key id",
        "wrong secret",
        "revoked key",
    ] {
        assert!(reasons.contains(&why), "{why} not logged: {reasons:?}");
    }
}

#[tokio::test]
async fn routes_need_their_scopes() {
    let models = key("t-scope", &["models"], None);
    let tasks = key("t-scope", &["tasks"], None);
    let admin = key("t-scope", &["admin"], None);
    let all = key("t-scope", &["tasks", "models", "admin"], None);
    use StatusCode as S;
    let table: &[(&str, &str, &NewKey, StatusCode)] = &[
        ("GET", "/v1/models", &models, S::OK),
        ("GET", "/v1/models", &tasks, S::FORBIDDEN),
        ("GET", "/v1/models", &admin, S::FORBIDDEN),
        ("POST", "/v1/completions", &models, S::OK),
        ("POST", "/v1/completions", &tasks, S::FORBIDDEN),
        ("POST", "/v1/chat/completions", &tasks, S::FORBIDDEN),
        ("GET", "/metrics", &models, S::FORBIDDEN),
        ("GET", "/metrics", &tasks, S::FORBIDDEN),
        ("GET", "/metrics", &admin, S::OK),
        ("GET", "/v1/admin/audit", &models, S::FORBIDDEN),
        ("GET", "/v1/admin/audit", &admin, S::OK),
        // Routes nobody listed need admin: closed by default, 404 only for an admin.
        ("GET", "/v1/unknown", &models, S::FORBIDDEN),
        ("GET", "/v1/unknown", &all, S::NOT_FOUND),
        ("GET", "/v1/models", &all, S::OK),
    ];
    for (method, uri, k, want) in table {
        let auth = bearer(&k.key);
        let r = call(AuthMode::Keys, method, uri, &[("authorization", &auth)]).await;
        assert_eq!(
            r.status, *want,
            "{method} {uri} with {:?}: {:?}",
            k.row.scopes, r.body
        );
        if *want == S::FORBIDDEN {
            assert_eq!(r.body["error"]["code"], "insufficient_scope");
        }
    }
    // /health is open; everything else, even an unknown path, wants a key first.
    assert_eq!(
        call(AuthMode::Keys, "GET", "/health", &[]).await.status,
        S::OK
    );
    assert_eq!(
        call(AuthMode::Keys, "GET", "/metrics", &[]).await.status,
        S::UNAUTHORIZED
    );
    assert_eq!(
        call(AuthMode::Keys, "GET", "/nope", &[]).await.status,
        S::UNAUTHORIZED
    );
    // The admin audit view serves rows, tenant-filtered on request.
    let auth = bearer(&admin.key);
    let r = call(
        AuthMode::Keys,
        "GET",
        "/v1/admin/audit?tenant=t-scope&limit=500",
        &[("authorization", &auth)],
    )
    .await;
    let rows = r.body["data"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["tenant"] == "t-scope"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["action"] == "POST /v1/completions" && r["status"] == 200)
    );
    assert!(
        rows.iter()
            .any(|r| r["action"] == "GET /metrics" && r["status"] == 403)
    );
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let k = key("t-rate", &["models"], Some(3));
    let other = key("t-rate", &["models"], Some(3));
    let auth = bearer(&k.key);
    let h = [("authorization", auth.as_str())];
    for i in 0..3 {
        let r = call(AuthMode::Keys, "GET", "/v1/models", &h).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let r = call(AuthMode::Keys, "GET", "/v1/models", &h).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    // A token comes back every 20 s.
    let after: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((19..=20).contains(&after), "{after}");
    // A mutating request refused for rate is audited.
    let r = call(AuthMode::Keys, "POST", "/v1/completions", &h).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let rows = state(AuthMode::Keys)
        .store()
        .audit(&AuditFilter {
            tenant: Some("t-rate".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows[0].entry.status, Some(429));
    assert_eq!(rows[0].entry.key_id.as_deref(), Some(k.row.id.as_str()));
    // The bucket is the key's own: another key of the same tenant is untouched.
    let auth = bearer(&other.key);
    let r = call(
        AuthMode::Keys,
        "GET",
        "/v1/models",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn revocation_takes_effect_within_the_cache_period() {
    let k = key("t-revoke", &["models"], None);
    let auth = bearer(&k.key);
    let h = [("authorization", auth.as_str())];
    assert_eq!(
        call(AuthMode::Keys, "GET", "/v1/models", &h).await.status,
        StatusCode::OK
    );
    state(AuthMode::Keys).store().revoke_key(&k.row.id).unwrap();
    tokio::time::sleep(autoglm_server::auth::KEY_CACHE_TTL + std::time::Duration::from_millis(100))
        .await;
    assert_eq!(
        call(AuthMode::Keys, "GET", "/v1/models", &h).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Last use was recorded (at the first request).
    let row = state(AuthMode::Keys)
        .store()
        .key(&k.row.id)
        .unwrap()
        .unwrap();
    assert!(row.last_used_ms.is_some());
}

#[tokio::test]
async fn mutating_requests_are_audited_with_who_and_status() {
    let k = key("t-audit", &["models"], None);
    let auth = bearer(&k.key);
    let h = [("authorization", auth.as_str())];
    assert_eq!(
        call(AuthMode::Keys, "POST", "/v1/completions", &h)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(AuthMode::Keys, "GET", "/v1/models", &h).await.status,
        StatusCode::OK
    );
    let rows = state(AuthMode::Keys)
        .store()
        .audit(&AuditFilter {
            tenant: Some("t-audit".into()),
            ..Default::default()
        })
        .unwrap();
    // The POST, not the GET.
    assert_eq!(rows.len(), 1, "{rows:?}");
    let e = &rows[0].entry;
    assert_eq!(e.action, "POST /v1/completions");
    assert_eq!((e.status, e.outcome.as_str()), (Some(200), "ok"));
    assert_eq!(e.key_id.as_deref(), Some(k.row.id.as_str()));
}

#[tokio::test]
async fn without_keys_everything_is_served_as_the_local_user() {
    for (method, uri) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("GET", "/metrics"),
    ] {
        let r = call(AuthMode::None, method, uri, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    }
    // A key presented to a server without keys is simply not looked at.
    let r = call(
        AuthMode::None,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer junk")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let rows = state(AuthMode::None)
        .store()
        .audit(&AuditFilter::default())
        .unwrap();
    assert!(rows.iter().any(|r| r.entry.action == "POST /v1/completions"
        && r.entry.tenant.as_deref() == Some("default")
        && r.entry.key_id.is_none()));
}
