//! Who is calling: the [`Principal`] every handler acts for — a tenant, the key used (if any)
//! and its scopes. A layer in front of the routes ([`guard`]) puts it into the request's
//! extensions; a handler takes it as an extractor argument, so a route cannot forget whose data
//! it serves. A request that reaches a handler without one is refused (401), never served as
//! someone.
//!
//! [`guard`], in order:
//!
//! 1. `/health`, `/openapi.json` and the web UI's files ([`OPEN_PATHS`], [`OPEN_PREFIXES`])
//!    pass untouched; everything else needs a principal.
//! 2. [`AuthMode::None`] (`autoglm serve --no-auth`, one user on loopback): every request is
//!    [`Principal::local`]. [`AuthMode::Keys`]: the key from `Authorization: Bearer <key>` or
//!    `x-api-key: <key>` is looked up by its id and its secret checked against the stored hash
//!    in constant time. A missing, malformed, unknown, wrong or revoked key gets the same 401,
//!    and an unknown id costs the same hashing as a wrong secret.
//! 3. The route's scope ([`required_scope`]: by path prefix, unlisted paths need `admin`) or 403.
//! 4. The key's requests-per-minute bucket, or 429 with `Retry-After`.
//! 5. The handler runs; afterwards every mutating request (POST, PUT, PATCH, DELETE) and every
//!    refusal at steps 2–3 is written to the audit log (refused keys at most
//!    [`REFUSAL_ROWS_PER_MINUTE`], the rest counted).
//!
//! Looked-up keys are cached for [`KEY_CACHE_TTL`], so a revocation (which may come from
//! another process: `autoglm keys revoke`) takes effect within that time. The cache holds the
//! stored row, not a verdict: every request's secret is checked again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoglm_store::keys::{parse_key, verify_unknown};
use autoglm_store::{AuditEntry, KeyRow, Store};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiError;

/// How long a looked-up key row is trusted before the store is asked again: the most a
/// revocation waits to take effect.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Every refused key gets this one message, whatever was wrong with it.
pub const UNAUTHORIZED_MESSAGE: &str = "invalid or missing API key";

/// Refused requests write at most this many audit rows a minute (a bucket of this size), so
/// a flood of bad keys cannot fill the disk; the rows skipped are counted in the next one
/// written (`detail.suppressed_before`).
pub const REFUSAL_ROWS_PER_MINUTE: u32 = 600;

/// Past this many cached lookups (most of them unknown ids, i.e. someone guessing) the cache
/// is emptied rather than allowed to grow.
const KEY_CACHE_MAX: usize = 4096;

/// Whether the server asks for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every route but the open ones (`/health`, `/openapi.json`) needs an API key from the store.
    Keys,
    /// No keys: every request is [`Principal::local`]. For one user on loopback only.
    None,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    /// Submit, watch and cancel agent tasks.
    pub tasks: bool,
    /// Use the OpenAI-compatible model API.
    pub models: bool,
    /// Manage keys, read the audit log and every tenant's engine metrics.
    pub admin: bool,
}

/// The scope names a key can be given.
pub const SCOPE_NAMES: [&str; 3] = ["tasks", "models", "admin"];

impl Scopes {
    pub const ALL: Scopes = Scopes {
        tasks: true,
        models: true,
        admin: true,
    };

    /// Scopes from their names; unknown names (from a newer version's keys) grant nothing.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Scopes {
        let mut s = Scopes::default();
        for n in names {
            match n.as_ref() {
                "tasks" => s.tasks = true,
                "models" => s.models = true,
                "admin" => s.admin = true,
                _ => {}
            }
        }
        s
    }

    /// Parses a user's comma-separated list ("tasks,models"), refusing unknown names.
    pub fn parse_list(list: &str) -> Result<Vec<&str>, String> {
        let names: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            return Err(format!(
                "no scopes given (choose from {})",
                SCOPE_NAMES.join(", ")
            ));
        }
        if let Some(bad) = names.iter().find(|n| !SCOPE_NAMES.contains(n)) {
            return Err(format!(
                "unknown scope {bad:?} (choose from {})",
                SCOPE_NAMES.join(", ")
            ));
        }
        Ok(names)
    }
}

/// One scope, as routes require them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Tasks,
    Models,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Tasks => "tasks",
            Scope::Models => "models",
            Scope::Admin => "admin",
        }
    }

    fn held(self, s: &Scopes) -> bool {
        match self {
            Scope::Tasks => s.tasks,
            Scope::Models => s.models,
            Scope::Admin => s.admin,
        }
    }
}

/// Path prefixes (whole segments: `/v1/tasks` covers `/v1/tasks/abc/events`, not
/// `/v1/tasksx`) and the scope each needs. A route missing here needs `admin`: forgetting to
/// list a new route fails closed.
const ROUTE_SCOPES: &[(&str, Scope)] = &[
    ("/v1/chat/completions", Scope::Models),
    ("/v1/completions", Scope::Models),
    ("/v1/models", Scope::Models),
    ("/v1/engine", Scope::Models),
    ("/v1/tasks", Scope::Tasks),
    ("/v1/tools", Scope::Tasks),
    ("/v1/memories", Scope::Tasks),
    ("/v1/memory", Scope::Tasks),
    ("/v1/admin", Scope::Admin),
    ("/metrics", Scope::Admin),
];

/// Paths served to anyone, matched exactly: the health check, the OpenAPI document and the web
/// UI's redirects.
pub const OPEN_PATHS: &[&str] = &["/health", "/openapi.json", "/", "/ui"];

/// Path prefixes served to anyone: the web UI's files, which its user loads before giving a
/// key (they hold no data; the page calls the API with the key). Only the UI's own routes
/// answer under them: the router matches paths as they are (`/ui/../v1/tasks` is a UI file
/// name, unknown, 404), so no API route is reachable through one.
pub const OPEN_PREFIXES: &[&str] = &["/ui/"];

/// The scope a request path needs; `None` for the open paths.
pub fn required_scope(path: &str) -> Option<Scope> {
    if OPEN_PATHS.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    Some(
        ROUTE_SCOPES
            .iter()
            .find(|(p, _)| under(p))
            .map_or(Scope::Admin, |(_, s)| *s),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// The key's id (never the key itself); `None` without authentication.
    pub key_id: Option<String>,
    pub scopes: Scopes,
    /// The most agent tasks this key may have running at once (`None`: no limit of its own).
    /// Stored with the key; the tasks API enforces it when a task is submitted.
    pub max_running_tasks: Option<usize>,
}

impl Principal {
    /// The single local user of a server started with `--no-auth`.
    pub fn local() -> Principal {
        Principal {
            tenant: "default".into(),
            key_id: None,
            scopes: Scopes::ALL,
            max_running_tasks: None,
        }
    }

    /// The principal a stored key stands for.
    pub fn of_key(row: &KeyRow) -> Principal {
        Principal {
            tenant: row.tenant.clone(),
            key_id: Some(row.id.clone()),
            scopes: Scopes::from_names(&row.scopes),
            max_running_tasks: row.limits.max_running_tasks.map(|n| n as usize),
        }
    }

    /// Refuses with 403 unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if scope.held(&self.scopes) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the \"{}\" scope",
                scope.name()
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("an API key is required".into()))
    }
}

/// A token bucket: `rpm` tokens at most, refilled at `rpm` a minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rpm: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rpm),
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rpm: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rpm) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(rpm));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

struct CachedKey {
    /// `None`: no such id (cached too, so guessing ids is not a way to load the store).
    row: Option<KeyRow>,
    fetched: Instant,
}

/// The authentication state a server shares between requests: the mode, the store, the key
/// cache and the rate-limit buckets.
pub struct Auth {
    mode: AuthMode,
    store: Arc<Store>,
    cache: Mutex<HashMap<String, CachedKey>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The budget of audit rows for refused keys, and how many were skipped since the last.
    refusal_rows: Mutex<(Bucket, u64)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Why a key was refused: for the audit log only, never for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    UnknownKey,
    WrongSecret,
    Revoked,
    StoreFailed,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "no key",
            Refusal::Malformed => "malformed key",
            Refusal::UnknownKey => "unknown key id",
            Refusal::WrongSecret => "wrong secret",
            Refusal::Revoked => "revoked key",
            Refusal::StoreFailed => "key store unavailable",
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain maps).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    pub fn new(mode: AuthMode, store: Arc<Store>) -> Auth {
        Auth {
            mode,
            store,
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            refusal_rows: Mutex::new((Bucket::full(REFUSAL_ROWS_PER_MINUTE, Instant::now()), 0)),
        }
    }

    /// Whether a refused request may write its audit row now; `Some(n)`: yes, and `n` rows
    /// were skipped before it.
    fn admit_refusal_row(&self) -> Option<u64> {
        let mut g = lock(&self.refusal_rows);
        let (bucket, skipped) = &mut *g;
        match bucket.take(REFUSAL_ROWS_PER_MINUTE, Instant::now()) {
            Ok(()) => Some(std::mem::take(skipped)),
            Err(_) => {
                *skipped += 1;
                None
            }
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The stored row for `id`, from the cache when fresh. Returns whether it came from the
    /// store just now.
    /// An error (the store failed, or the lookup task died) refuses the request: fail closed.
    async fn lookup(&self, id: &str) -> Result<(Option<KeyRow>, bool), String> {
        let now = Instant::now();
        if let Some(c) = lock(&self.cache).get(id)
            && now.duration_since(c.fetched) < KEY_CACHE_TTL
        {
            return Ok((c.row.clone(), false));
        }
        let store = self.store.clone();
        let key_id = id.to_string();
        // SQLite may wait for another process's write lock: not on an async worker.
        let row = tokio::task::spawn_blocking(move || store.key(&key_id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut cache = lock(&self.cache);
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, c| now.duration_since(c.fetched) < KEY_CACHE_TTL);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            id.to_string(),
            CachedKey {
                row: row.clone(),
                fetched: now,
            },
        );
        Ok((row, true))
    }

    /// The principal for the presented headers, or why not.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Principal, Option<u32>), (Refusal, Option<String>)> {
        let presented = presented_key(headers).map_err(|r| (r, None))?;
        let (id, secret) = parse_key(presented).ok_or((Refusal::Malformed, None))?;
        let claimed = Some(id.to_string());
        let (row, fresh) = self.lookup(id).await.map_err(|e| {
            eprintln!("warning: looking up an API key failed: {e}");
            (Refusal::StoreFailed, claimed.clone())
        })?;
        let Some(row) = row else {
            verify_unknown(secret);
            return Err((Refusal::UnknownKey, claimed));
        };
        if !row.matches(secret) {
            let why = if row.revoked() {
                Refusal::Revoked
            } else {
                Refusal::WrongSecret
            };
            return Err((why, claimed));
        }
        if fresh {
            // At most once per cache period per key; a failure only loses the timestamp.
            let store = self.store.clone();
            let id = row.id.clone();
            tokio::task::spawn_blocking(move || {
                let _ = store.touch_key(&id);
            });
        }
        Ok((Principal::of_key(&row), row.limits.requests_per_minute))
    }

    /// Takes one request from the key's bucket.
    fn rate_limit(&self, key_id: &str, rpm: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        buckets
            .entry(key_id.to_string())
            .or_insert_with(|| Bucket::full(rpm, now))
            .take(rpm, now)
    }

    async fn record(&self, entry: AuditEntry) {
        let store = self.store.clone();
        let action = entry.action.clone();
        let done = tokio::task::spawn_blocking(move || store.append_audit(&entry)).await;
        if !matches!(done, Ok(Ok(_))) {
            // The request itself is answered; losing its audit row must at least be visible.
            eprintln!("warning: could not write the audit row for {action}");
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Result<&str, Refusal> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| Refusal::Malformed)?;
        let (scheme, token) = v.trim().split_once(' ').ok_or(Refusal::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::Malformed);
        }
        return Ok(token.trim());
    }
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().map(str::trim).map_err(|_| Refusal::Malformed);
    }
    Err(Refusal::Missing)
}

fn unauthorized() -> Response {
    let mut resp = ApiError::Unauthorized(UNAUTHORIZED_MESSAGE.into()).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn outcome(status: u16) -> &'static str {
    match status {
        401 | 403 | 429 => "refused",
        s if s >= 400 => "error",
        _ => "ok",
    }
}

/// The middleware (see the module docs): authentication, scopes, rate limits, audit.
pub async fn guard(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(scope) = required_scope(&path) else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    let action = format!("{method} {path}");
    let mutating = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let mut detail = json!({});
    if let Some(p) = &peer {
        detail["peer"] = Value::String(p.clone());
    }

    let (principal, rpm) = match auth.mode {
        // One already there was put by the process itself (tests acting as other tenants):
        // clients cannot set extensions.
        AuthMode::None => (
            req.extensions()
                .get::<Principal>()
                .cloned()
                .unwrap_or_else(Principal::local),
            None,
        ),
        AuthMode::Keys => match auth.authenticate(req.headers()).await {
            Ok(found) => found,
            Err((why, claimed)) => {
                // A store outage is not the caller's fault: 503, so nobody rotates good keys.
                let (status, resp) = if why == Refusal::StoreFailed {
                    let e = ApiError::Unavailable("cannot check API keys right now".into());
                    (503, e.into_response())
                } else {
                    (401, unauthorized())
                };
                let Some(skipped) = auth.admit_refusal_row() else {
                    return resp;
                };
                detail["reason"] = why.reason().into();
                if let Some(id) = claimed {
                    // Only a well-formed id (16 hex digits) ever gets here: safe to record.
                    detail["presented_key_id"] = id.into();
                }
                if skipped > 0 {
                    detail["suppressed_before"] = skipped.into();
                }
                auth.record(AuditEntry {
                    tenant: None,
                    key_id: None,
                    action,
                    target: None,
                    status: Some(status),
                    outcome: outcome(status).into(),
                    detail,
                })
                .await;
                return resp;
            }
        },
    };
    let entry = |status: u16, detail: Value| AuditEntry {
        tenant: Some(principal.tenant.clone()),
        key_id: principal.key_id.clone(),
        action: action.clone(),
        target: None,
        status: Some(status),
        outcome: outcome(status).into(),
        detail,
    };
    if let Err(e) = principal.require(scope) {
        detail["reason"] = format!("lacks scope {}", scope.name()).into();
        auth.record(entry(403, detail)).await;
        return e.into_response();
    }
    if let (Some(rpm), Some(id)) = (rpm, principal.key_id.as_deref())
        && let Err(wait) = auth.rate_limit(id, rpm)
    {
        let resp = ApiError::Overloaded {
            message: format!("rate limit of {rpm} requests per minute reached for this key"),
            retry_after_s: wait.as_secs_f64().ceil() as u64,
        }
        .into_response();
        if mutating {
            detail["reason"] = "rate limit".into();
            auth.record(entry(429, detail)).await;
        }
        return resp;
    }
    req.extensions_mut().insert(principal.clone());
    let resp = next.run(req).await;
    if mutating {
        auth.record(entry(resp.status().as_u16(), detail)).await;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_scopes_by_whole_segments() {
        let cases = [
            ("/health", None),
            ("/openapi.json", None),
            ("/openapi.json/x", Some(Scope::Admin)),
            ("/health/x", Some(Scope::Admin)),
            ("/v1/models", Some(Scope::Models)),
            ("/v1/models/smollm2-135m", Some(Scope::Models)),
            ("/v1/chat/completions", Some(Scope::Models)),
            ("/v1/completions", Some(Scope::Models)),
            ("/v1/tasks", Some(Scope::Tasks)),
            ("/v1/tasks/abc/events", Some(Scope::Tasks)),
            ("/v1/tasksx", Some(Scope::Admin)),
            ("/v1/memories", Some(Scope::Tasks)),
            ("/metrics", Some(Scope::Admin)),
            ("/v1/admin/audit", Some(Scope::Admin)),
            ("/v1/unlisted", Some(Scope::Admin)),
            ("/v1/engine", Some(Scope::Models)),
            ("/v1/tools", Some(Scope::Tasks)),
            ("/", None),
            ("/ui", None),
            ("/ui/", None),
            ("/ui/app.js", None),
            ("/uix", Some(Scope::Admin)),
            ("/ui.js", Some(Scope::Admin)),
            ("//ui/", Some(Scope::Admin)),
            ("/v1/ui/", Some(Scope::Admin)),
        ];
        for (path, want) in cases {
            assert_eq!(required_scope(path), want, "{path}");
        }
    }

    #[test]
    fn the_bucket_allows_rpm_then_refills_evenly() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert!(b.take(3, t0).is_ok());
        }
        let wait = b.take(3, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 20.0).abs() < 0.01, "{wait:?}");
        // Ten seconds later half a token has come back: still refused, ten seconds to go.
        let wait = b.take(3, t0 + Duration::from_secs(10)).unwrap_err();
        assert!((wait.as_secs_f64() - 10.0).abs() < 0.01, "{wait:?}");
        assert!(b.take(3, t0 + Duration::from_secs(20)).is_ok());
        // A long pause refills to the bucket's size, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(3, later).is_ok());
        }
        assert!(b.take(3, later).is_err());
    }

    /// The guard over stand-in routes that echo the principal: each key is its own tenant,
    /// and what the guard inserts is exactly the key's tenant, id, scopes and task limit.
    #[tokio::test]
    async fn the_guard_inserts_the_keys_principal() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::{get, post};
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        let store = Arc::new(Store::in_memory().unwrap());
        let limits = autoglm_store::KeyLimits {
            requests_per_minute: None,
            max_running_tasks: Some(3),
        };
        let a = store.create_key("acme", "", &["tasks"], limits).unwrap();
        let b = store
            .create_key("globex", "", &["tasks", "models"], Default::default())
            .unwrap();
        async fn echo(p: Principal) -> axum::Json<Value> {
            axum::Json(json!({"tenant": p.tenant, "key_id": p.key_id,
                "models": p.scopes.models, "max": p.max_running_tasks}))
        }
        let router = |mode| {
            Router::new()
                .route("/v1/tasks", post(echo))
                .route("/v1/models", get(echo))
                .route("/health", get(|| async { "ok" }))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::new(Auth::new(mode, store.clone())),
                    guard,
                ))
        };
        let call = |mode, method: &str, uri: &str, key: Option<&str>| {
            let mut req = Request::builder().method(method).uri(uri);
            if let Some(k) = key {
                req = req.header("authorization", format!("Bearer {k}"));
            }
            let app = router(mode);
            let req = req.body(Body::empty()).unwrap();
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                )
            }
        };
        let (s, v) = call(AuthMode::Keys, "POST", "/v1/tasks", Some(&a.key)).await;
        assert_eq!(s, 200);
        assert_eq!(
            v,
            json!({"tenant": "acme", "key_id": a.row.id, "models": false, "max": 3})
        );
        let (s, v) = call(AuthMode::Keys, "POST", "/v1/tasks", Some(&b.key)).await;
        assert_eq!((s, v["tenant"].as_str()), (200, Some("globex")));
        assert_eq!(v["max"], Value::Null);
        // Tenant a's key lacks models; b's has it.
        assert_eq!(
            call(AuthMode::Keys, "GET", "/v1/models", Some(&a.key))
                .await
                .0,
            403
        );
        assert_eq!(
            call(AuthMode::Keys, "GET", "/v1/models", Some(&b.key))
                .await
                .0,
            200
        );
        assert_eq!(call(AuthMode::Keys, "GET", "/v1/models", None).await.0, 401);
        assert_eq!(call(AuthMode::Keys, "GET", "/health", None).await.0, 200);
        // Without keys every request is the local user, whatever it presents.
        let (s, v) = call(AuthMode::None, "POST", "/v1/tasks", Some("agk_junk")).await;
        assert_eq!(
            (s, v["tenant"].as_str(), v["key_id"].is_null()),
            (200, Some("default"), true)
        );
        // x-api-key works as well as Authorization.
        let app = router(AuthMode::Keys);
        let req = Request::builder()
            .uri("/v1/models")
            .header("x-api-key", &b.key)
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
        // Audit: the two POSTs (ok) and the refusals (403, 401) were recorded; GETs that
        // succeeded were not.
        let rows = store.audit(&Default::default()).unwrap();
        let seen: Vec<(Option<&str>, &str, Option<u16>)> = rows
            .iter()
            .rev()
            .map(|r| {
                (
                    r.entry.tenant.as_deref(),
                    r.entry.action.as_str(),
                    r.entry.status,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("acme"), "POST /v1/tasks", Some(200)),
                (Some("globex"), "POST /v1/tasks", Some(200)),
                (Some("acme"), "GET /v1/models", Some(403)),
                (None, "GET /v1/models", Some(401)),
                (Some("default"), "POST /v1/tasks", Some(200)),
            ]
        );
    }

    /// A flood of bad keys writes a bounded number of audit rows, and the next row written
    /// says how many were skipped.
    #[tokio::test]
    async fn refusals_cannot_flood_the_audit_log() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt;

        let store = Arc::new(Store::in_memory().unwrap());
        let auth = Arc::new(Auth::new(AuthMode::Keys, store.clone()));
        let app = Router::new()
            .route("/v1/models", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(auth, guard));
        let n = REFUSAL_ROWS_PER_MINUTE as usize + 100;
        for _ in 0..n {
            let req = Request::builder()
                .uri("/v1/models")
                .body(Body::empty())
                .unwrap();
            assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 401);
        }
        let count = |store: &Store| {
            store
                .audit(&autoglm_store::AuditFilter {
                    limit: 100_000,
                    ..Default::default()
                })
                .unwrap()
        };
        let rows = count(&store);
        assert!(
            rows.len() >= REFUSAL_ROWS_PER_MINUTE as usize,
            "{}",
            rows.len()
        );
        assert!(rows.len() < n, "{} rows for {n} refusals", rows.len());
        // A token comes back every 100 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let req = Request::builder()
            .uri("/v1/models")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 401);
        let last = &count(&store)[0];
        let skipped = last.entry.detail["suppressed_before"].as_u64().unwrap_or(0);
        assert!(skipped > 0, "{:?}", last.entry.detail);
        // Every refusal is either a row or counted in one.
        let rows = count(&store);
        let counted: u64 = rows
            .iter()
            .filter_map(|r| r.entry.detail["suppressed_before"].as_u64())
            .sum();
        assert_eq!(rows.len() as u64 + counted, n as u64 + 1);
    }

    #[test]
    fn scope_lists_are_checked() {
        assert_eq!(
            Scopes::parse_list("tasks, models").unwrap(),
            ["tasks", "models"]
        );
        assert!(Scopes::parse_list("tasks,root").is_err());
        assert!(Scopes::parse_list(" , ").is_err());
        let s = Scopes::from_names(&["models", "future"]);
        assert_eq!(
            s,
            Scopes {
                models: true,
                ..Scopes::default()
            }
        );
    }
}
