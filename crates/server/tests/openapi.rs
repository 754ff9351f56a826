//! The API as its OpenAPI document describes it, driven in-process (`app()` with `oneshot`) over
//! the real engine on the default model, and generated from the document so that a new route is
//! covered without writing its tests here:
//!
//! - the document at `/openapi.json` (served without a key) is valid OpenAPI 3.1 — checked
//!   against the specification's own JSON Schema (`tests/data/openapi-3.1.schema.json`,
//!   published by the OpenAPI Initiative under Apache-2.0) — its schemas are valid JSON Schema
//!   and every reference resolves, operation ids are unique, path parameters are declared, and
//!   what it says about keys is what the server does;
//! - the router serves exactly the documented operations (every route is registered from its
//!   documentation, and nothing registers one another way);
//! - a negative test: for every operation, malformed bodies, a wrong type for every property of
//!   the request schema (nested ones too), every required field missing, unknown fields, values
//!   past documented bounds, unknown ids in path parameters, bad query and header values and an
//!   oversized body each get a 4xx in the documented error shape — never a 5xx; the documented
//!   examples (completions with `max_tokens: 1`) get answers matching their documented schemas;
//! - tenant isolation across every operation: tenant B, given tenant A's ids and search words,
//!   gets 404s identical to those for unknown ids and empty lists, never A's data, and changes
//!   nothing of A's.
//!
//! No task runs (the workers are not started), so nothing here waits for a generation longer
//! than one token.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use autoglm_agent::AgentConfig;
use autoglm_engine::{EngineHandle, ServeConfig};
use autoglm_model::Model;
use autoglm_server::{AppState, AuthMode, BODY_LIMIT, TasksConfig, app};
use autoglm_store::Store;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn engine() -> EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let model =
                Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads");
            let cfg = ServeConfig {
                threads: 1,
                kv_cache_mb: 16,
                ..Default::default()
            };
            let engine = EngineHandle::start(model, cfg).expect("engine");
            engine.prepare_constraints();
            engine
        })
        .clone()
}

/// A server of its own (store, workspaces) over the shared engine. Its task workers are never
/// started: submitted tasks stay queued.
struct Server {
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

fn server(mode: AuthMode) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("store"));
    let tasks = TasksConfig {
        agent: AgentConfig {
            workspaces: dir.path().join("ws"),
            ..AgentConfig::default()
        },
        ..TasksConfig::default()
    };
    let state = AppState::with_engine(engine(), "smollm2-135m", store, mode, tasks);
    Server { state, _dir: dir }
}

#[derive(Debug, Clone, Default)]
struct Call {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// What the call tries, for failure messages.
    what: String,
}

impl Call {
    fn new(method: &str, uri: &str) -> Call {
        Call {
            method: method.to_uppercase(),
            uri: uri.to_string(),
            ..Call::default()
        }
    }

    fn json(mut self, v: &Value) -> Call {
        self.body = Some(v.to_string().into_bytes());
        self
    }

    fn key(mut self, key: &str) -> Call {
        self.headers
            .push(("authorization".into(), format!("Bearer {key}")));
        self
    }

    fn what(mut self, what: impl Into<String>) -> Call {
        self.what = what.into();
        self
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(st: &Arc<AppState>, c: &Call) -> Reply {
    let mut req = Request::builder()
        .method(c.method.as_str())
        .uri(&c.uri)
        .header("content-type", "application/json");
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(c.body.clone().map_or_else(Body::empty, Body::from))
        .unwrap_or_else(|e| panic!("{}: cannot build {} {}: {e}", c.what, c.method, c.uri));
    let resp = app(st.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // An event stream follows a live task to its end: never read here.
    let body = if content_type.starts_with("text/event-stream") {
        String::new()
    } else {
        let bytes = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{}: no answer within 120 s", c.what))
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Reply {
        status,
        headers,
        content_type,
        body,
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The document.

/// The OpenAPI document and what the tests read from it.
struct Doc(Value, Mutex<HashMap<String, Arc<jsonschema::Validator>>>);

#[derive(Debug, Clone)]
struct Op {
    method: String,
    path: String,
    spec: Value,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn params(&self, doc: &Doc, location: &str) -> Vec<Value> {
        self.spec["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| doc.resolve(p).clone())
            .filter(|p| p["in"] == location)
            .collect()
    }

    /// The JSON request body's schema, if the operation takes one.
    fn body_schema(&self, doc: &Doc) -> Option<Value> {
        let body = doc.resolve(&self.spec["requestBody"]);
        let schema = &body["content"]["application/json"]["schema"];
        (!schema.is_null()).then(|| schema.clone())
    }

    fn example(&self, doc: &Doc) -> Option<Value> {
        let schema = self.body_schema(doc)?;
        let s = doc.resolve(&schema);
        let ex = s
            .get("example")
            .cloned()
            .or_else(|| s["examples"].get(0).cloned());
        Some(ex.unwrap_or_else(|| panic!("{}: the request schema has no example", self.name())))
    }

    fn open(&self) -> bool {
        self.spec["security"] == json!([])
    }
}

impl Doc {
    async fn fetch(st: &Arc<AppState>) -> Doc {
        let r = send(st, &Call::new("GET", "/openapi.json").what("the document")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        Doc(
            serde_json::from_str(&r.body).expect("the document is JSON"),
            Mutex::default(),
        )
    }

    /// Follows `$ref`s within the document.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let ptr = r
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("a reference outside the document: {r}"));
                    v = self
                        .0
                        .pointer(ptr)
                        .unwrap_or_else(|| panic!("a dangling reference: {r}"));
                }
                None => return v,
            }
        }
        panic!("a reference cycle")
    }

    fn ops(&self) -> Vec<Op> {
        let mut out = Vec::new();
        for (path, item) in self.0["paths"].as_object().expect("paths") {
            for (method, spec) in item.as_object().expect("a path item") {
                if [
                    "get", "put", "post", "delete", "patch", "head", "options", "trace",
                ]
                .contains(&method.as_str())
                {
                    out.push(Op {
                        method: method.clone(),
                        path: path.clone(),
                        spec: spec.clone(),
                    });
                }
            }
        }
        assert!(!out.is_empty());
        out
    }

    /// A validator for a schema of the document (its references resolved in the document).
    fn validator(&self, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let key = schema.to_string();
        if let Some(v) = self.1.lock().expect("cache").get(&key) {
            return Ok(v.clone());
        }
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.0["components"],
        });
        let v = Arc::new(jsonschema::validator_for(&root).map_err(|e| e.to_string())?);
        self.1.lock().expect("cache").insert(key, v.clone());
        Ok(v)
    }

    /// Validates `instance` against a schema of the document.
    fn check(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let v = self
            .validator(schema)
            .map_err(|e| format!("bad schema: {e}"))?;
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn error_schema(&self) -> Value {
        json!({"$ref": "#/components/schemas/ErrorBody"})
    }

    /// The JSON types a schema admits; `None` for any value.
    fn types(&self, schema: &Value) -> Option<BTreeSet<String>> {
        let s = self.resolve(schema);
        if let Some(t) = s.get("type") {
            return Some(match t {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Value::String(x) => BTreeSet::from([x.clone()]),
                _ => return None,
            });
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                let mut all = BTreeSet::new();
                for a in alts {
                    all.extend(self.types(a)?);
                }
                return Some(all);
            }
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            return parts.iter().find_map(|p| self.types(p));
        }
        None
    }

    /// An object schema's properties, required names and whether others are refused, over
    /// `allOf` parts.
    fn object_parts(&self, schema: &Value) -> (Vec<(String, Value)>, Vec<String>, bool) {
        let s = self.resolve(schema);
        let mut props: Vec<(String, Value)> = s["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut required: Vec<String> = s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        let mut closed = s["additionalProperties"] == json!(false);
        for part in s["allOf"].as_array().into_iter().flatten() {
            let (p, r, c) = self.object_parts(part);
            props.extend(p);
            required.extend(r);
            closed |= c;
        }
        (props, required, closed)
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn admits(types: &BTreeSet<String>, v: &Value) -> bool {
    let t = json_type(v);
    types.contains(t) || (t == "integer" && types.contains("number"))
}

/// One value of every JSON type.
fn samples() -> [Value; 7] {
    [
        json!("wrong"),
        json!(12345),
        json!(1.5),
        json!(true),
        json!([1]),
        json!({"wrong": 1}),
        Value::Null,
    ]
}

/// Sets (or with `None` removes) the value at a JSON pointer whose parent exists.
fn with(v: &Value, ptr: &str, new: Option<Value>) -> Value {
    let mut out = v.clone();
    let (parent, key) = ptr.rsplit_once('/').expect("a pointer");
    match out.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            match new {
                Some(n) => m.insert(key.to_string(), n),
                None => m.remove(key),
            };
        }
        Some(Value::Array(a)) => {
            let i: usize = key.parse().expect("an index");
            match new {
                Some(n) => a[i] = n,
                None => {
                    a.remove(i);
                }
            }
        }
        _ => panic!("no parent for {ptr}"),
    }
    out
}

/// Request bodies each wrong in one place, with what is wrong: every property of `schema` (and
/// of the objects nested in `valid`) given each value of a type it does not admit and values
/// past its bounds, every required field missing, an unknown field where they are refused.
fn wrong_bodies(doc: &Doc, schema: &Value, valid: &Value) -> Vec<(String, Value)> {
    fn walk(
        doc: &Doc,
        schema: &Value,
        at: &Value,
        ptr: &str,
        root: &Value,
        out: &mut Vec<(String, Value)>,
    ) {
        let (props, required, closed) = doc.object_parts(schema);
        if at.is_object() && !props.is_empty() {
            for r in &required {
                let p = format!("{ptr}/{r}");
                out.push((format!("{p} missing"), with(root, &p, None)));
            }
            if closed {
                let p = format!("{ptr}/unexpected_field");
                out.push((format!("{p} given"), with(root, &p, Some(json!(1)))));
            }
            for (name, ps) in &props {
                let p = format!("{ptr}/{name}");
                if let Some(types) = doc.types(ps) {
                    for v in samples().into_iter().filter(|v| !admits(&types, v)) {
                        out.push((format!("{p} = {v}"), with(root, &p, Some(v))));
                    }
                }
                let s = doc.resolve(ps);
                if let Some(min) = s["minimum"].as_f64() {
                    out.push((
                        format!("{p} below its minimum"),
                        with(root, &p, Some(json!(min as i64 - 1))),
                    ));
                }
                if let Some(max) = s["maximum"].as_f64() {
                    out.push((
                        format!("{p} above its maximum"),
                        with(root, &p, Some(json!(max as i64 + 1))),
                    ));
                }
                if let Some(child) = at.get(name) {
                    walk(doc, ps, child, &p, root, out);
                }
            }
        }
        let s = doc.resolve(schema);
        if let (Some(items), Some(first)) = (s.get("items"), at.as_array().and_then(|a| a.first()))
        {
            walk(doc, items, first, &format!("{ptr}/0"), root, out);
        }
        for alt in ["oneOf", "anyOf"]
            .iter()
            .filter_map(|k| s[*k].as_array())
            .flatten()
        {
            if doc.types(alt).is_some_and(|t| admits(&t, at)) {
                walk(doc, alt, at, ptr, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, schema, valid, "", valid, &mut out);
    out
}

/// Bodies that are not the JSON of any request.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("an empty body", Vec::new()),
        ("an unclosed object", b"{".to_vec()),
        ("a cut-off member", br#"{"a":"#.to_vec()),
        ("not JSON", b"not json".to_vec()),
        ("trailing garbage", b"{} x".to_vec()),
        ("invalid UTF-8", b"\xff\xfe{}".to_vec()),
        ("a lone surrogate", br#"{"x": "\ud800"}"#.to_vec()),
        ("null", b"null".to_vec()),
        ("a number", b"123".to_vec()),
        ("a string", br#""hello""#.to_vec()),
        ("an empty list", b"[]".to_vec()),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
    ]
}

/// Path parameter values that name nothing, for a parameter of these types.
fn unknown_ids(types: &BTreeSet<String>) -> Vec<String> {
    if types.contains("integer") {
        [
            "999999999",
            "0",
            "-1",
            "abc",
            "1.5",
            "99999999999999999999999",
        ]
        .map(String::from)
        .to_vec()
    } else {
        vec![
            "t-unknown-0000".into(),
            "%FF%FE".into(),
            "%2E%2E".into(),
            "%00".into(),
            "x".repeat(3000),
        ]
    }
}

fn fill(path: &str, values: &[(String, String)]) -> String {
    let mut out = path.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A task and a memory that exist, made through the API.
struct Fixtures {
    task: String,
    memory: i64,
}

impl Fixtures {
    /// Values that exist for the path parameters of `op`, by name. A new route with a path
    /// parameter fails here until it is given one. `true`: the value names a tenant's resource
    /// (compared with an unknown one in the isolation test); `false`: an ordinal within it.
    fn path_values(&self, doc: &Doc, op: &Op) -> Vec<(String, String, bool)> {
        let path = op.path.as_str();
        op.params(doc, "path")
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_string();
                let (v, is_id) = match name.as_str() {
                    "id" if path.starts_with("/v1/tasks/") => (self.task.clone(), true),
                    "id" if path.starts_with("/v1/memories/") => (self.memory.to_string(), true),
                    "n" if path.starts_with("/v1/tasks/{id}/approvals/") => ("1".into(), false),
                    _ => {
                        panic!("no known value for {{{name}}} of {path}: add one to `path_values`")
                    }
                };
                (name, v, is_id)
            })
            .collect()
    }

    /// `op`'s path with existing values in it.
    fn path(&self, doc: &Doc, op: &Op) -> String {
        let values: Vec<(String, String)> = self
            .path_values(doc, op)
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        fill(&op.path, &values)
    }
}

async fn fixtures(st: &Arc<AppState>, key: Option<&str>, goal: &str, fact: &str) -> Fixtures {
    let with_key = |c: Call| match key {
        Some(k) => c.key(k),
        None => c,
    };
    let r = send(
        st,
        &with_key(Call::new("POST", "/v1/tasks").json(&json!({"goal": goal}))),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let task = r.json()["id"].as_str().expect("a task id").to_string();
    let r = send(
        st,
        &with_key(Call::new("POST", "/v1/memories").json(&json!({"text": fact}))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let memory = r.json()["id"].as_i64().expect("a memory id");
    Fixtures { task, memory }
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.to_string());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_document_is_valid_openapi_and_true_about_keys() {
    let s = server(AuthMode::Keys);
    // Served without a key.
    let doc = Doc::fetch(&s.state).await;
    assert!(
        doc.0["openapi"].as_str().unwrap_or("").starts_with("3.1."),
        "{}",
        doc.0["openapi"]
    );

    let spec: Value = serde_json::from_str(include_str!("data/openapi-3.1.schema.json"))
        .expect("the specification's schema");
    let v = jsonschema::validator_for(&spec).expect("the specification's schema compiles");
    let errors: Vec<String> = v
        .iter_errors(&doc.0)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not valid OpenAPI 3.1: {errors:#?}");
    // (and the check can fail)
    assert!(!v.is_valid(&json!({"openapi": "3.1.0", "paths": {"/x": {"get": {"responses": 1}}}})));

    // That schema leaves the schemas themselves alone: each must be valid JSON Schema, and
    // every reference anywhere must resolve.
    let schemas = doc.0["components"]["schemas"].as_object().expect("schemas");
    for (name, schema) in schemas {
        if let Err(e) = jsonschema::meta::validate(schema) {
            panic!("schema {name} is not valid JSON Schema: {e}");
        }
        if let Err(e) = doc.validator(&json!({"$ref": format!("#/components/schemas/{name}")})) {
            panic!("schema {name} does not compile: {e}");
        }
    }
    let mut all = Vec::new();
    refs(&doc.0, &mut all);
    assert!(all.len() > 20, "{all:?}");
    for r in &all {
        doc.resolve(&json!({ "$ref": r }));
    }

    let mut ids = BTreeSet::new();
    for op in doc.ops() {
        let id = op.spec["operationId"].as_str().unwrap_or("");
        assert!(
            !id.is_empty() && ids.insert(id.to_string()),
            "{}: operationId {id:?}",
            op.name()
        );
        assert!(
            op.spec["responses"].get("default").is_some(),
            "{}",
            op.name()
        );
        // Path parameters: the template's and the declared ones are the same, all required.
        let in_template: BTreeSet<String> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}').map(String::from))
            .collect();
        let declared: BTreeSet<String> = op
            .params(&doc, "path")
            .iter()
            .inspect(|p| assert_eq!(p["required"], true, "{}: {p}", op.name()))
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect();
        assert_eq!(in_template, declared, "{}", op.name());
        if let Some(schema) = op.body_schema(&doc) {
            let example = op.example(&doc).unwrap_or_default();
            doc.check(&schema, &example)
                .unwrap_or_else(|e| panic!("{}: the example is not valid: {e}", op.name()));
        }

        // What it says about keys is what the server does: an open operation answers without
        // a key, any other is a 401 in the error shape.
        let path = fill(
            &op.path,
            &declared
                .iter()
                .map(|p| (p.clone(), "x".into()))
                .collect::<Vec<_>>(),
        );
        let r = send(&s.state, &Call::new(&op.method, &path).what(op.name())).await;
        if op.open() {
            assert_ne!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} is documented open",
                op.name()
            );
        } else {
            assert!(
                op.spec["security"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!({"bearer": []}))),
                "{}: {}",
                op.name(),
                op.spec["security"]
            );
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} without a key",
                op.name()
            );
            doc.check(&doc.error_schema(), &r.json())
                .unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        }
    }
    for (path, tag) in [
        ("/health", "service"),
        ("/v1/memories", "memories"),
        ("/v1/tasks", "tasks"),
    ] {
        assert!(
            doc.ops()
                .iter()
                .any(|o| o.path == path && o.spec["tags"][0] == tag),
            "{path} tagged {tag}"
        );
    }
}

/// The source files of this crate's library, without their test modules.
fn library_sources() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("src") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("source");
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            out.push((p.display().to_string(), code));
        }
    }
    assert!(out.len() > 5, "{out:?}");
    out
}

#[tokio::test]
async fn the_router_serves_exactly_the_documented_operations() {
    // Routes are registered only from their documentation (`routes!`): any other way would
    // serve a route the document does not have.
    let mut handlers = 0;
    for (file, code) in library_sources() {
        // The web UI's files are not API operations: `ui.rs` owns their routes, merged in
        // `app()` beside the documented router, and they hold no data.
        if file.ends_with("/ui.rs") {
            continue;
        }
        let code = code.replace(".merge(ui::routes())", "");
        let plain_routers =
            code.matches("Router::new(").count() - code.matches("OpenApiRouter::new(").count();
        assert_eq!(plain_routers, 0, "{file} builds a router of its own");
        for forbidden in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !code.contains(forbidden),
                "{file} registers a route with `{forbidden}`: register it with \
                 `routes!(handler)` in lib.rs's `router()`, from its `#[utoipa::path]`"
            );
        }
        for call in code.split("routes!(").skip(1) {
            let list = call.split(')').next().unwrap_or("");
            handlers += list.split(',').filter(|h| !h.trim().is_empty()).count();
        }
    }
    let s = server(AuthMode::None);
    let doc = Doc::fetch(&s.state).await;
    let ops = doc.ops();
    assert_eq!(
        handlers,
        ops.len(),
        "each handler in `routes!` is one documented operation"
    );

    // Every documented operation is served, and no other method on its path.
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let fallback = send(&s.state, &Call::new("GET", "/v1/no-such-route")).await;
    assert_eq!(fallback.status, StatusCode::NOT_FOUND);
    doc.check(&doc.error_schema(), &fallback.json())
        .expect("the fallback's error shape");
    let paths: BTreeSet<&str> = ops.iter().map(|o| o.path.as_str()).collect();
    for path in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for m in methods {
            let documented = ops
                .iter()
                .any(|o| o.path == path && o.method.to_uppercase() == m);
            let r = send(
                &s.state,
                &Call::new(m, &concrete).what(format!("{m} {path}")),
            )
            .await;
            if documented {
                assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                assert_ne!(r.body, fallback.body, "{m} {path} is not routed");
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is served but not documented"
                );
                // The rewritten 405 keeps axum's `Allow`.
                assert!(
                    r.headers.contains_key("allow"),
                    "{m} {path}: {:?}",
                    r.headers
                );
                doc.check(&doc.error_schema(), &r.json())
                    .unwrap_or_else(|e| panic!("{m} {path}: {e}"));
            }
        }
    }
}

/// Sends `c` and checks that it is refused with a 4xx (`any_2xx`: or answered) in the documented
/// error shape — never a 5xx. Returns a description of what is wrong, if anything.
async fn refused(st: &Arc<AppState>, doc: &Doc, c: &Call, any_2xx: bool) -> Option<String> {
    let r = send(st, c).await;
    let s = r.status.as_u16();
    let fail = |why: String| {
        Some(format!(
            "{} {} ({}): {why}",
            c.method,
            c.uri.chars().take(120).collect::<String>(),
            c.what
        ))
    };
    if r.status.is_success() && any_2xx {
        return None;
    }
    if !(400..500).contains(&s) {
        return fail(format!(
            "status {s}: {}",
            r.body.chars().take(300).collect::<String>()
        ));
    }
    if !r.content_type.starts_with("application/json") {
        return fail(format!("content type {:?}", r.content_type));
    }
    let body: Value = match serde_json::from_str(&r.body) {
        Ok(v) => v,
        Err(_) => return fail(format!("not JSON: {}", r.body)),
    };
    doc.check(&doc.error_schema(), &body)
        .err()
        .map(|e| format!("{}: not the error shape: {e}", c.what))
}

#[tokio::test]
async fn no_malformed_request_to_any_operation_gets_a_5xx() {
    let s = server(AuthMode::None);
    let st = &s.state;
    let doc = Doc::fetch(st).await;
    let f = fixtures(st, None, "What is 2 + 2?", "The office plant is a fern").await;
    let mut failures = Vec::new();
    let mut sent = 0;
    for op in doc.ops() {
        let name = op.name();
        let path_params = op.params(&doc, "path");
        let known_values: Vec<(String, String)> = f
            .path_values(&doc, &op)
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        let path = fill(&op.path, &known_values);
        let example = op.example(&doc);
        let base = |what: String| {
            let c = Call::new(&op.method, &path).what(what);
            match &example {
                Some(e) => c.json(e),
                None => c,
            }
        };
        let mut calls: Vec<(Call, bool)> = Vec::new();

        if let (Some(schema), Some(valid)) = (op.body_schema(&doc), &example) {
            for (what, body) in malformed_bodies() {
                let mut c = base(format!("{name} with {what}"));
                c.body = Some(body);
                calls.push((c, false));
            }
            let wrong = wrong_bodies(&doc, &schema, valid);
            assert!(!wrong.is_empty(), "{name}: no property to get wrong");
            for (what, body) in wrong {
                calls.push((base(format!("{name} with {what}")).json(&body), false));
            }
            let mut huge = base(format!("{name} with a body over the limit"));
            let filler = "x".repeat(BODY_LIMIT + 1);
            huge.body = Some(format!(r#"{{"x": "{filler}"}}"#).into_bytes());
            calls.push((huge, false));
        }

        for p in &path_params {
            let pname = p["name"].as_str().unwrap_or("");
            let types = doc.types(&p["schema"]).unwrap_or_default();
            for bad in unknown_ids(&types) {
                let values: Vec<(String, String)> = known_values
                    .iter()
                    .map(|(k, v)| (k.clone(), if k == pname { bad.clone() } else { v.clone() }))
                    .collect();
                let mut c = base(format!(
                    "{name} with {{{pname}}} = {}",
                    bad.chars().take(20).collect::<String>()
                ));
                c.uri = fill(&op.path, &values);
                calls.push((c, false));
            }
        }

        for location in ["query", "header"] {
            for p in op.params(&doc, location) {
                let pname = p["name"].as_str().unwrap_or("").to_string();
                let schema = doc.resolve(&p["schema"]).clone();
                let types = doc.types(&schema).unwrap_or_default();
                // Bad values must be refused; for a free string nothing is bad, but nothing may
                // break the server either.
                let (values, any_2xx): (Vec<String>, bool) = if types.contains("integer") {
                    let mut v: Vec<String> = ["abc", "1.5", "", "99999999999999999999999", "0x10"]
                        .map(String::from)
                        .to_vec();
                    if let Some(min) = schema["minimum"].as_i64() {
                        v.push((min - 1).to_string());
                    }
                    if let Some(max) = schema["maximum"].as_i64() {
                        v.push((max + 1).to_string());
                    }
                    (v, false)
                } else {
                    (
                        vec![
                            "%FF%FE".into(),
                            "%00".into(),
                            "y".repeat(5000),
                            "a,b,,c".into(),
                        ],
                        true,
                    )
                };
                for v in values {
                    let mut c = base(format!(
                        "{name} with {location} {pname} = {}",
                        v.chars().take(20).collect::<String>()
                    ));
                    if location == "query" {
                        // Already encoded where it means to be (`%FF`).
                        let v = if v.contains('%') { v.clone() } else { enc(&v) };
                        c.uri = format!("{path}?{pname}={v}");
                    } else {
                        c.headers.push((pname.clone(), v.clone()));
                    }
                    calls.push((c, any_2xx));
                }
                let mut twice = base(format!("{name} with {pname} twice"));
                twice.uri = format!("{path}?{pname}=1&{pname}=2");
                if location == "query" {
                    calls.push((twice, true));
                }
            }
        }
        let mut unknown = base(format!("{name} with an unknown query parameter"));
        unknown.uri = format!("{path}?no_such_parameter=1");
        calls.push((unknown, true));

        for (c, any_2xx) in &calls {
            sent += 1;
            if let Some(why) = refused(st, &doc, c, *any_2xx).await {
                failures.push(why);
            }
        }
    }
    eprintln!("{sent} malformed requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(sent > 300, "only {sent} requests");

    // The documented examples are answered as documented (on fresh fixtures, deletions last).
    let f = fixtures(st, None, "What is 3 + 3?", "The office chair is blue").await;
    let mut ops = doc.ops();
    ops.sort_by_key(|o| o.method == "delete");
    for op in ops {
        let mut c = Call::new(&op.method, &f.path(&doc, &op)).what(op.name());
        if let Some(e) = op.example(&doc) {
            c = c.json(&e);
        }
        let r = send(st, &c).await;
        let status = r.status.as_u16().to_string();
        assert!(
            r.status.as_u16() < 500,
            "{}: {} {}",
            op.name(),
            r.status,
            r.body
        );
        let documented = op.spec["responses"]
            .get(&status)
            .or_else(|| op.spec["responses"].get("default"))
            .map(|resp| doc.resolve(resp).clone())
            .unwrap_or_else(|| panic!("{}: status {status} is not documented", op.name()));
        let ct = r
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let schema = &documented["content"][&ct]["schema"];
        assert!(
            !schema.is_null(),
            "{}: {status} {ct} is not documented: {documented}",
            op.name()
        );
        if ct == "application/json" {
            let body: Value = serde_json::from_str(&r.body).expect("JSON");
            doc.check(schema, &body).unwrap_or_else(|e| {
                panic!(
                    "{}: the {status} answer is not as documented: {e}\n{}",
                    op.name(),
                    r.body
                )
            });
        }
    }
}

#[tokio::test]
async fn a_tenant_reaches_nothing_of_another_through_any_operation() {
    let s = server(AuthMode::Keys);
    let st = &s.state;
    let doc = Doc::fetch(st).await;
    let new_key = |tenant: &str| {
        st.store()
            .create_key(tenant, "test", &["tasks", "models"], Default::default())
            .expect("key")
    };
    let (a, b) = (new_key("acme-7f3a"), new_key("globex-91c2"));
    let fa = fixtures(
        st,
        Some(&a.key),
        "Count the zebracorns",
        "zebracorns live in the barn",
    )
    .await;
    // What must never reach B.
    let markers = [
        fa.task.as_str(),
        "zebracorn",
        "acme-7f3a",
        a.row.id.as_str(),
    ];
    // A refusal may echo what B itself sent ("no task <id>"); nothing else has any of A's.
    let leaks = |c: &Call, r: &Reply| {
        markers
            .iter()
            .find(|m| r.body.contains(**m) && !(r.status.is_client_error() && c.uri.contains(**m)))
            .map(|m| m.to_string())
    };

    let mut ops = doc.ops();
    // Reads and id routes first, while B has nothing of its own; B's own creations last.
    ops.sort_by_key(|o| o.method == "post" && !o.path.contains('{'));
    let mut checked = 0;
    for op in &ops {
        let name = op.name();
        let params = op.params(&doc, "path");
        let mut theirs = Vec::new();
        let mut unknown = Vec::new();
        for ((n, v, is_id), p) in fa.path_values(&doc, op).into_iter().zip(&params) {
            let types = doc.types(&p["schema"]).unwrap_or_default();
            let u = if !is_id {
                v.clone()
            } else if types.contains("integer") {
                "999999999".to_string()
            } else {
                "t-unknown-0000".to_string()
            };
            theirs.push((n.clone(), v));
            unknown.push((n, u));
        }
        let call = |path: String, what: String| {
            let c = Call::new(&op.method, &path).key(&b.key).what(what);
            match op.example(&doc) {
                Some(e) => c.json(&e),
                None => c,
            }
        };
        let c = call(fill(&op.path, &theirs), format!("{name} by B with A's ids"));
        let r = send(st, &c).await;
        checked += 1;
        assert!(r.status.as_u16() < 500, "{name}: {} {}", r.status, r.body);
        assert_eq!(
            leaks(&c, &r),
            None,
            "{name} showed B something of A's: {}",
            r.body
        );
        if !params.is_empty() {
            // Exactly what an unknown id gets, but for the id itself.
            let u = send(
                st,
                &call(
                    fill(&op.path, &unknown),
                    format!("{name} by B, unknown ids"),
                ),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{name} with A's ids: {}",
                r.body
            );
            let mut body = r.body.clone();
            for ((_, mine), (_, other)) in theirs.iter().zip(&unknown) {
                body = body.replace(mine.as_str(), other);
            }
            assert_eq!(
                body, u.body,
                "{name}: A's ids answer differently from unknown ones"
            );
            continue;
        }
        if op.method != "get" {
            continue;
        }
        // Lists: empty for B whatever it asks, A's ids and words included.
        // `/v1/tools` lists the server's tools, the same for every tenant.
        let tenant_data = op.spec["x-required-scope"] == "tasks" && op.path != "/v1/tools";
        let mut queries = vec![String::new()];
        for p in op.params(&doc, "query") {
            let pname = p["name"].as_str().unwrap_or("");
            let probes: Vec<String> = if doc
                .types(&p["schema"])
                .unwrap_or_default()
                .contains("integer")
            {
                vec!["100".into()]
            } else {
                vec![
                    fa.task.clone(),
                    "zebracorns".into(),
                    "acme-7f3a".into(),
                    "queued".into(),
                ]
            };
            queries.extend(probes.iter().map(|v| format!("?{pname}={}", enc(v))));
        }
        for q in queries {
            let c = call(format!("{}{q}", op.path), format!("{name}{q} by B"));
            let r = send(st, &c).await;
            checked += 1;
            assert!(
                r.status.as_u16() < 500,
                "{name}{q}: {} {}",
                r.status,
                r.body
            );
            assert_eq!(
                leaks(&c, &r),
                None,
                "{name}{q} showed B something of A's: {}",
                r.body
            );
            // The `tasks` scope's lists are the tenant's own data (the models are everyone's).
            if let Some(data) = r.json().get("data").filter(|_| tenant_data) {
                assert_eq!(data, &json!([]), "{name}{q}: B has nothing of its own yet");
            }
        }
    }
    assert!(checked > 20, "{checked}");

    // B's own things are B's alone; A's are as A left them (B's cancel and delete did nothing).
    let fb = fixtures(
        st,
        Some(&b.key),
        "Count the unicorns",
        "unicorns live in the tower",
    )
    .await;
    let get = |key: &str, uri: &str| {
        let c = Call::new("GET", uri).key(key);
        async move { send(st, &c).await.json() }
    };
    let ids = |v: &Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x["id"].clone())
            .collect()
    };
    let b_tasks = ids(&get(&b.key, "/v1/tasks").await);
    assert!(
        b_tasks.contains(&json!(fb.task)) && !b_tasks.contains(&json!(fa.task)),
        "{b_tasks:?}"
    );
    assert_eq!(
        ids(&get(&b.key, "/v1/memories?q=zebracorns+unicorns").await),
        [json!(fb.memory)]
    );
    assert_eq!(
        get(&a.key, &format!("/v1/tasks/{}", fa.task)).await["status"],
        "queued"
    );
    assert_eq!(
        ids(&get(&a.key, "/v1/memories?q=zebracorns+unicorns").await),
        [json!(fa.memory)]
    );
    assert_eq!(ids(&get(&a.key, "/v1/tasks").await), [json!(fa.task)]);
}
