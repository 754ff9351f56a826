//! The tasks API in-process against a scripted model: submit, get, list and page, events
//! (replay, live follow, resume by Last-Event-ID with no gap and no duplicate), cancel (queued
//! and running), trace, approvals, metrics, a table of bad requests (4xx, never 5xx), a full
//! queue (429), tenants (another tenant's task is a 404), and a restart mid-way (the runtime
//! dropped with five tasks in flight, then a new server over the same database finishes them
//! without repeating a completed model or tool call), and webhooks (signed, retried, recorded)
//! against a receiver on loopback.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use autoglm_agent::AgentConfig;
use autoglm_engine::{EngineHandle, ServeConfig};
use autoglm_llm::{
    BoxFuture, Capabilities, ChatRequest, ChatResponse, DeltaSink, LlmClient, LlmError,
};
use autoglm_model::Model;
use autoglm_server::auth::{Principal, Scopes};
use autoglm_server::{AppState, AuthMode, TasksConfig, WebhookConfig, app};
use autoglm_store::Store;
use autoglm_tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One engine for every test (the OpenAI routes need it; task model calls here are scripted).
fn engine() -> EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let model =
                Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads");
            EngineHandle::start(
                model,
                ServeConfig {
                    threads: 1,
                    kv_cache_mb: 16,
                    ..Default::default()
                },
            )
            .expect("engine")
        })
        .clone()
}

/// A model that answers by what is asked: a plan of `steps` counter steps, a counter call in
/// a step's first round, the step's result after it, checks that pass, a composed answer.
/// Every call first takes a permit from `gate` (tests hold tasks mid-way by not adding any).
struct Scripted {
    steps: usize,
    delay: Duration,
    gate: Arc<tokio::sync::Semaphore>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(steps: usize, delay_ms: u64, permits: usize) -> Arc<Scripted> {
        Arc::new(Scripted {
            steps,
            delay: Duration::from_millis(delay_ms),
            gate: Arc::new(tokio::sync::Semaphore::new(permits)),
            calls: AtomicUsize::new(0),
        })
    }

    fn open(&self) {
        self.gate.add_permits(10_000);
    }

    fn reply(&self, req: &ChatRequest) -> ChatResponse {
        let system = &req.messages[0].content;
        if system.starts_with("You plan tasks") {
            let steps: Vec<Value> = (1..=self.steps)
                .map(|i| json!({"task": format!("count item {i}"), "depends_on": []}))
                .collect();
            return ChatResponse::text(json!({ "steps": steps }).to_string());
        }
        if system.starts_with("You check results") {
            return ChatResponse::text(r#"{"ok": true, "reason": "fine"}"#);
        }
        if system.starts_with("You write the final answer") {
            return ChatResponse::text("all counted");
        }
        let last = req
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if req
            .messages
            .last()
            .is_some_and(|m| m.role == autoglm_llm::Role::Tool)
        {
            return ChatResponse::text(format!("done: {last}"));
        }
        let item = req.messages[1]
            .content
            .split("count item ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("0")
            .trim_matches(|c: char| !c.is_ascii_digit())
            .to_string();
        ChatResponse::call("counter", json!({"x": item}))
    }
}

impl LlmClient for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { constrained: true }
    }
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        _d: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            if let Ok(p) = self.gate.acquire().await {
                p.forget();
            }
            tokio::time::sleep(self.delay).await;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut r = self.reply(req);
            r.usage.prompt_tokens = 10;
            r.usage.completion_tokens = 2;
            Ok(r)
        })
    }
}

/// Counts its calls.
struct Counter(Arc<AtomicUsize>);

impl Tool for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn description(&self) -> &str {
        "counts"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ToolOutput::text(format!("counted {}", args["x"])))
        })
    }
}

struct Setup {
    state: Arc<AppState>,
    llm: Arc<Scripted>,
    counted: Arc<AtomicUsize>,
    _dir: Arc<tempfile::TempDir>,
}

fn setup_in(
    dir: Arc<tempfile::TempDir>,
    counted: Arc<AtomicUsize>,
    llm: Arc<Scripted>,
    workers: usize,
    max_queued: usize,
) -> Setup {
    setup_with(
        dir,
        counted,
        llm,
        workers,
        max_queued,
        WebhookConfig::default(),
    )
}

/// [`setup_in`] with webhooks configured.
fn setup_with(
    dir: Arc<tempfile::TempDir>,
    counted: Arc<AtomicUsize>,
    llm: Arc<Scripted>,
    workers: usize,
    max_queued: usize,
    webhooks: WebhookConfig,
) -> Setup {
    let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("store"));
    let mut tools = ToolRegistry::new();
    tools.add(Arc::new(autoglm_tools::Calculator));
    tools.add(Arc::new(Counter(counted.clone())));
    let state = AppState::with_engine(
        engine(),
        "smollm2-135m",
        store,
        AuthMode::None,
        TasksConfig {
            workers,
            max_queued,
            llm: Some(llm.clone()),
            tools: Some(tools),
            agent: AgentConfig {
                workspaces: dir.path().join("ws"),
                ..AgentConfig::default()
            },
            webhooks,
            ..TasksConfig::default()
        },
    );
    Setup {
        state,
        llm,
        counted,
        _dir: dir,
    }
}

fn setup(llm: Arc<Scripted>, workers: usize, max_queued: usize) -> Setup {
    setup_in(
        Arc::new(tempfile::tempdir().expect("tempdir")),
        Arc::default(),
        llm,
        workers,
        max_queued,
    )
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn send(st: &Arc<AppState>, req: Request<Body>) -> Reply {
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: &str, uri: &str, body: Option<&str>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn call(st: &Arc<AppState>, method: &str, uri: &str, body: Option<Value>) -> Reply {
    let b = body.map(|b| b.to_string());
    send(st, request(method, uri, b.as_deref())).await
}

async fn submit(st: &Arc<AppState>, body: Value) -> String {
    let r = call(st, "POST", "/v1/tasks", Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers.get("location").unwrap().to_str().unwrap(),
        format!("/v1/tasks/{id}")
    );
    id
}

async fn task(st: &Arc<AppState>, id: &str) -> Value {
    let r = call(st, "GET", &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()
}

async fn wait_status(st: &Arc<AppState>, id: &str, want: &[&str]) -> Value {
    let t0 = Instant::now();
    loop {
        let t = task(st, id).await;
        if want.contains(&t["status"].as_str().unwrap_or("")) {
            return t;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "stuck: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Reads events from an SSE body until `event: end` (or `max` events).
async fn read_events(body: &mut Body, max: usize) -> Vec<Sse> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < max {
        if let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut e = Sse {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    e.id = v.trim().parse().ok();
                    any = true;
                } else if let Some(v) = line.strip_prefix("event:") {
                    e.event = v.trim().to_string();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    e.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                    any = true;
                }
            }
            if !any {
                continue; // a keep-alive comment
            }
            let end = e.event == "end";
            out.push(e);
            if end {
                break;
            }
            continue;
        }
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an event within 30 s");
        match frame {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.push_str(&String::from_utf8_lossy(&d));
                }
            }
            _ => break,
        }
    }
    out
}

async fn open_events(
    st: &Arc<AppState>,
    id: &str,
    last_event_id: Option<i64>,
    query: &str,
) -> Body {
    let mut req = Request::builder()
        .method("GET")
        .uri(format!("/v1/tasks/{id}/events{query}"));
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l.to_string());
    }
    let resp = app(st.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    resp.into_body()
}

#[tokio::test]
async fn a_task_runs_to_its_answer_and_is_listed_and_traced() {
    let s = setup(Scripted::new(1, 0, 10_000), 2, 16);
    s.state.start_tasks().unwrap();
    let id = submit(
        &s.state,
        json!({"goal": "Count the item", "tools": ["counter"], "max_steps": 20,
               "priority": "batch"}),
    )
    .await;
    let t = wait_status(&s.state, &id, &["succeeded"]).await;
    assert_eq!(t["object"], "task");
    assert_eq!(t["goal"], "Count the item");
    assert_eq!(t["answer"], "done: counted \"1\"", "{t}");
    assert_eq!(t["plan"][0]["task"], "count item 1", "{t}");
    assert_eq!(t["priority"], "batch");
    assert_eq!(t["tools"], json!(["counter"]));
    assert_eq!(t["max_steps"], 20);
    assert_eq!(t["steps"], 4, "plan, call, answer, check: {t}");
    assert_eq!(t["tool_calls"], 1);
    assert_eq!(t["usage"]["prompt_tokens"], 40);
    assert_eq!(t["usage"]["completion_tokens"], 8);
    assert_eq!(t["usage"]["total_tokens"], 48);
    assert!(t["error"].is_null());
    assert!(t["created_at"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(s.counted.load(Ordering::SeqCst), 1);

    // The trace is the agent's trace, the same object `autoglm trace --json` prints.
    let r = call(&s.state, "GET", &format!("/v1/tasks/{id}/trace"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let tr = r.json();
    assert_eq!(tr, autoglm_agent::trace(s.state.store(), &id).unwrap());
    assert_eq!(tr["task_id"], id.as_str());
    assert_eq!(tr["tree"]["children"][0]["name"], "plan0");
    assert_eq!(
        tr["steps"].as_array().unwrap().last().unwrap()["kind"],
        "final"
    );

    let r = call(&s.state, "GET", "/v1/tasks?status=succeeded", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let l = r.json();
    assert_eq!(l["data"][0]["id"], id.as_str());
    assert!(l["next"].is_null());
    let r = call(&s.state, "GET", "/v1/tasks?status=queued,running", None).await;
    assert_eq!(r.json()["data"], json!([]));

    // Metrics count the task beside the engine's figures.
    let m = call(&s.state, "GET", "/metrics", None).await.body;
    assert!(
        m.contains("autoglm_tasks_finished_total{status=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(m.contains("autoglm_tasks_started_total 1"), "{m}");
    assert!(
        m.contains("autoglm_task_tool_calls_total{tool=\"counter\",outcome=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("autoglm_task_steps_bucket{le=\"5\"} 1"), "{m}");
    assert!(m.contains("autoglm_task_duration_seconds_count 1"), "{m}");
    assert!(m.contains("autoglm_kv_blocks_total"), "{m}");
}

#[tokio::test]
async fn lists_page_with_a_cursor_and_filter_by_status() {
    // No workers: every task stays queued.
    let s = setup(Scripted::new(1, 0, 0), 1, 64);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&s.state, json!({"goal": format!("goal {i}")})).await);
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/tasks?limit=2".to_string();
    let mut pages = 0;
    loop {
        let r = call(&s.state, "GET", &uri, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let v = r.json();
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        pages += 1;
        match v["next"].as_str() {
            Some(c) => uri = format!("/v1/tasks?limit=2&before={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut want = ids.clone();
    want.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, want, "every task exactly once: {seen:?}");
    let r = call(&s.state, "GET", "/v1/tasks?status=queued&limit=100", None).await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 5);
    let r = call(&s.state, "GET", "/v1/tasks?status=succeeded", None).await;
    assert_eq!(r.json()["data"], json!([]));
}

#[tokio::test]
async fn events_replay_then_follow_live_and_resume_without_gaps_or_duplicates() {
    // Two model calls are let through (the plan, the first tool call), then the task waits.
    let s = setup(Scripted::new(2, 0, 2), 1, 16);
    s.state.start_tasks().unwrap();
    let id = submit(&s.state, json!({"goal": "Count two items"})).await;
    let t0 = Instant::now();
    while s.state.store().records(&id).unwrap().len() < 5 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut body = open_events(&s.state, &id, None, "").await;
    // The replayed part: everything journaled so far.
    let replayed = read_events(&mut body, 5).await;
    assert_eq!(
        replayed.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(replayed[0].event, "model_call");
    assert_eq!(replayed[1].event, "plan");
    assert_eq!(replayed[1].data["steps"][1]["task"], "count item 2");
    assert_eq!(replayed[1].data["seq"], 2);
    // The live part: the rest, as the task goes on.
    s.llm.open();
    let live = read_events(&mut body, 1000).await;
    let end = live.last().unwrap();
    assert_eq!(end.event, "end");
    let all: Vec<Sse> = replayed.iter().chain(&live).cloned().collect();
    let seqs: Vec<i64> = all.iter().filter_map(|e| e.id).collect();
    let records = s.state.store().records(&id).unwrap();
    assert_eq!(
        seqs,
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        "every record once, in order"
    );
    for (e, r) in all.iter().zip(&records) {
        assert_eq!(e.event, r.kind);
        assert_eq!(e.data["key"], r.payload["key"]);
    }
    assert_eq!(all[all.len() - 2].event, "final");
    assert_eq!(all[all.len() - 2].data["status"], "succeeded");

    // Reconnecting with Last-Event-ID gets what follows, and the end.
    let mut body = open_events(&s.state, &id, Some(4), "").await;
    let rest = read_events(&mut body, 1000).await;
    let rest_seqs: Vec<i64> = rest.iter().filter_map(|e| e.id).collect();
    assert_eq!(rest_seqs, seqs[4..]);
    assert_eq!(rest.last().unwrap().event, "end");
    // ?after= does the same; the header wins over it.
    let mut body = open_events(&s.state, &id, None, "?after=7").await;
    let rest = read_events(&mut body, 1000).await;
    assert_eq!(
        rest.iter().filter_map(|e| e.id).collect::<Vec<_>>(),
        seqs[7..]
    );
    let mut body = open_events(&s.state, &id, Some(9), "?after=1").await;
    let rest = read_events(&mut body, 1000).await;
    assert_eq!(
        rest.iter().filter_map(|e| e.id).collect::<Vec<_>>(),
        seqs[9..]
    );
    // After the last record: only the end.
    let last = *seqs.last().unwrap();
    let mut body = open_events(&s.state, &id, Some(last), "").await;
    let rest = read_events(&mut body, 1000).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].event, "end");
}

#[tokio::test]
async fn cancel_ends_queued_and_running_tasks_cancelled_idempotently() {
    // One worker; the model never answers until the gate opens.
    let s = setup(Scripted::new(1, 0, 0), 1, 16);
    s.state.start_tasks().unwrap();
    let running = submit(&s.state, json!({"goal": "first"})).await;
    let queued = submit(&s.state, json!({"goal": "second"})).await;
    wait_status(&s.state, &running, &["running"]).await;
    assert_eq!(task(&s.state, &queued).await["status"], "queued");

    let r = call(
        &s.state,
        "POST",
        &format!("/v1/tasks/{queued}/cancel"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["status"], "cancelled");
    let r = call(
        &s.state,
        "POST",
        &format!("/v1/tasks/{running}/cancel"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t = wait_status(&s.state, &running, &["cancelled"]).await;
    assert!(t["answer"].is_null());
    // Again: nothing changes.
    for id in [&running, &queued] {
        let r = call(&s.state, "POST", &format!("/v1/tasks/{id}/cancel"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["status"], "cancelled");
        let recs = s.state.store().records(id).unwrap();
        assert_eq!(recs.iter().filter(|r| r.kind == "final").count(), 1);
        assert_eq!(recs.last().unwrap().payload["status"], "cancelled");
    }
    // The cancelled queued task never ran, even once the model answers.
    s.llm.open();
    let third = submit(&s.state, json!({"goal": "third"})).await;
    wait_status(&s.state, &third, &["succeeded"]).await;
    assert_eq!(s.state.store().records(&queued).unwrap().len(), 1);
    assert_eq!(task(&s.state, &queued).await["status"], "cancelled");
}

#[tokio::test]
async fn a_full_queue_is_a_429_with_retry_after() {
    let s = setup(Scripted::new(1, 0, 0), 1, 2);
    submit(&s.state, json!({"goal": "a"})).await;
    submit(&s.state, json!({"goal": "b"})).await;
    let r = call(&s.state, "POST", "/v1/tasks", Some(json!({"goal": "c"}))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    // Nothing was created for the refused submission.
    assert_eq!(s.state.store().tasks(None, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn bad_requests_get_precise_4xx_never_5xx() {
    let s = setup(Scripted::new(1, 0, 0), 1, 16);
    let id = submit(&s.state, json!({"goal": "exists"})).await;
    // (method, uri, body, status, the error's param)
    type Case<'a> = (&'a str, String, Option<&'a str>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/tasks".into(), Some("{not json"), 400, None),
        ("POST", "/v1/tasks".into(), Some(""), 400, None),
        ("POST", "/v1/tasks".into(), Some("[]"), 400, None),
        ("POST", "/v1/tasks".into(), Some(r#"{}"#), 400, None),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": 5}"#),
            400,
            None,
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "  "}"#),
            400,
            Some("goal"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "colour": "red"}"#),
            400,
            None,
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "tools": "counter"}"#),
            400,
            None,
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "tools": ["teleport"]}"#),
            400,
            Some("tools[0]"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "ask": ["teleport"]}"#),
            400,
            Some("ask[0]"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "tools": ["calculator"], "ask": ["counter"]}"#),
            400,
            Some("ask[0]"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_steps": 0}"#),
            400,
            Some("max_steps"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_steps": 100000}"#),
            400,
            Some("max_steps"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_steps": -1}"#),
            400,
            Some("max_steps"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_steps": 1.5}"#),
            400,
            None,
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_tokens": 0}"#),
            400,
            Some("max_tokens"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "max_duration_s": 0}"#),
            400,
            Some("max_duration_s"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "priority": "urgent"}"#),
            400,
            Some("priority"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "webhook": "http://example.invalid/"}"#),
            400,
            Some("webhook"),
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"goal": "x", "model": "gpt-9"}"#),
            404,
            Some("model"),
        ),
        ("GET", "/v1/tasks?limit=0".into(), None, 400, Some("limit")),
        (
            "GET",
            "/v1/tasks?limit=101".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/v1/tasks?limit=ten".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/v1/tasks?status=done".into(),
            None,
            400,
            Some("status"),
        ),
        (
            "GET",
            "/v1/tasks?before=nope".into(),
            None,
            400,
            Some("before"),
        ),
        ("GET", "/v1/tasks?sort=asc".into(), None, 400, None),
        ("GET", "/v1/tasks/nope".into(), None, 404, None),
        ("GET", "/v1/tasks/../../etc/passwd".into(), None, 404, None),
        ("GET", "/v1/tasks/%00".into(), None, 404, None),
        ("POST", "/v1/tasks/nope/cancel".into(), None, 404, None),
        ("GET", "/v1/tasks/nope/events".into(), None, 404, None),
        ("GET", "/v1/tasks/nope/trace".into(), None, 404, None),
        (
            "GET",
            format!("/v1/tasks/{id}/events?after=-1"),
            None,
            400,
            None,
        ),
        (
            "GET",
            format!("/v1/tasks/{id}/events?after=x"),
            None,
            400,
            None,
        ),
        (
            "GET",
            format!("/v1/tasks/{id}/events?from=1"),
            None,
            400,
            None,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/approvals/one"),
            Some(r#"{"approve": true}"#),
            400,
            None,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/approvals/1"),
            Some(r#"{"approve": "yes"}"#),
            400,
            None,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/approvals/1"),
            Some(r#"{"approve": true, "x": 1}"#),
            400,
            None,
        ),
        (
            "POST",
            format!("/v1/tasks/{id}/approvals/1"),
            Some(r#"{"approve": true}"#),
            404,
            None,
        ),
        ("DELETE", format!("/v1/tasks/{id}"), None, 405, None),
    ];
    for (method, uri, body, want, param) in cases {
        let r = send(&s.state, request(method, &uri, body)).await;
        assert_eq!(
            r.status.as_u16(),
            want,
            "{method} {uri} {body:?}: {}",
            r.body
        );
        if want != 405 {
            let v = r.json();
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
            if let Some(p) = param {
                assert_eq!(v["error"]["param"], p, "{method} {uri} {body:?}: {v}");
            }
        }
    }
    let r = send(
        &s.state,
        Request::builder()
            .uri(format!("/v1/tasks/{id}/events"))
            .header("last-event-id", "abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // None of it created a task.
    assert_eq!(s.state.store().tasks(None, 100).unwrap().len(), 1);
}

#[tokio::test]
async fn another_tenants_task_looks_unknown() {
    let s = setup(Scripted::new(1, 0, 0), 1, 16);
    let id = submit(&s.state, json!({"goal": "mine"})).await;
    let as_other = |method: &str, uri: &str, body: Option<&str>| {
        let mut r = request(method, uri, body);
        r.extensions_mut().insert(Principal {
            max_running_tasks: None,
            tenant: "other".into(),
            key_id: Some("k2".into()),
            scopes: Scopes::ALL,
        });
        r
    };
    let unknown = send(&s.state, request("GET", "/v1/tasks/t0000", None)).await;
    for (m, path, body) in [
        ("GET", format!("/v1/tasks/{id}"), None),
        ("POST", format!("/v1/tasks/{id}/cancel"), None),
        ("GET", format!("/v1/tasks/{id}/events"), None),
        ("GET", format!("/v1/tasks/{id}/trace"), None),
        (
            "POST",
            format!("/v1/tasks/{id}/approvals/1"),
            Some(r#"{"approve": true}"#),
        ),
    ] {
        let r = send(&s.state, as_other(m, &path, body)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {path}");
        // The same answer as an unknown id, but for the id itself.
        assert_eq!(r.body.replace(&id, "t0000"), unknown.body, "{m} {path}");
    }
    let r = send(&s.state, as_other("GET", "/v1/tasks", None)).await;
    assert_eq!(r.json()["data"], json!([]));
    let r = send(
        &s.state,
        as_other("GET", &format!("/v1/tasks?before={id}"), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The other tenant's own task is theirs alone.
    let r = send(
        &s.state,
        as_other("POST", "/v1/tasks", Some(r#"{"goal": "theirs"}"#)),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let theirs = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.state.store().task(&theirs).unwrap().tenant, "other");
    let r = call(&s.state, "GET", "/v1/tasks", None).await;
    let data = r.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1);
    assert_eq!(data[0]["id"], id.as_str());
    // A key without the tasks scope is refused.
    let mut r = request("GET", "/v1/tasks", None);
    r.extensions_mut().insert(Principal {
        max_running_tasks: None,
        tenant: "default".into(),
        key_id: Some("k3".into()),
        scopes: Scopes {
            models: true,
            ..Scopes::default()
        },
    });
    assert_eq!(send(&s.state, r).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_tool_marked_ask_waits_for_approval_granted_or_denied() {
    let s = setup(Scripted::new(1, 0, 10_000), 2, 16);
    s.state.start_tasks().unwrap();
    let granted = submit(&s.state, json!({"goal": "Count it", "ask": ["counter"]})).await;
    let t = wait_status(&s.state, &granted, &["waiting_approval"]).await;
    assert_eq!(t["pending_approvals"][0]["n"], 1, "{t}");
    assert_eq!(t["pending_approvals"][0]["tool"], "counter");
    assert_eq!(
        s.counted.load(Ordering::SeqCst),
        0,
        "nothing ran before approval"
    );
    let r = call(
        &s.state,
        "POST",
        &format!("/v1/tasks/{granted}/approvals/1"),
        Some(json!({"approve": true, "reason": "fine by me"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t = wait_status(&s.state, &granted, &["succeeded"]).await;
    assert_eq!(t["pending_approvals"], json!([]));
    assert_eq!(s.counted.load(Ordering::SeqCst), 1);
    // Deciding again is refused: there is no pending approval 1 any more.
    let r = call(
        &s.state,
        "POST",
        &format!("/v1/tasks/{granted}/approvals/1"),
        Some(json!({"approve": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let denied = submit(&s.state, json!({"goal": "Count it", "ask": ["counter"]})).await;
    wait_status(&s.state, &denied, &["waiting_approval"]).await;
    let r = call(
        &s.state,
        "POST",
        &format!("/v1/tasks/{denied}/approvals/1"),
        Some(json!({"approve": false, "reason": "not today"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_status(&s.state, &denied, &["succeeded", "failed"]).await;
    assert_eq!(
        s.counted.load(Ordering::SeqCst),
        1,
        "the denied call never ran"
    );
    let recs = s.state.store().records(&denied).unwrap();
    let kinds: Vec<&str> = recs.iter().map(|r| r.kind.as_str()).collect();
    let req = kinds
        .iter()
        .position(|k| *k == "approval_requested")
        .unwrap();
    assert_eq!(kinds[req + 1], "approval");
    let result = recs.iter().find(|r| r.kind == "tool_result").unwrap();
    assert_eq!(result.payload["denied"], true);
    assert!(
        result.payload["output"]
            .as_str()
            .unwrap()
            .contains("denied by a person: not today"),
        "{:?}",
        result.payload
    );
    assert!(!kinds.contains(&"tool_call"), "{kinds:?}");
    let m = call(&s.state, "GET", "/metrics", None).await.body;
    assert!(
        m.contains("autoglm_task_tool_calls_total{tool=\"counter\",outcome=\"denied\"} 1"),
        "{m}"
    );
}

/// Five tasks, the runtime (and every task with it) dropped mid-way, a new server over the
/// same database: all five finish, no completed model or tool call is made again, and each
/// task's events stream shows its whole history.
#[test]
fn tasks_survive_a_restart_mid_way() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // One counter for both lives of the server: it shows how often the tool really ran.
    let counted: Arc<AtomicUsize> = Arc::default();
    let first = rt();
    let (ids, before) = first.block_on(async {
        let s = setup_in(
            dir.clone(),
            counted.clone(),
            Scripted::new(2, 15, 10_000),
            2,
            16,
        );
        s.state.start_tasks().unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                submit(
                    &s.state,
                    json!({"goal": format!("Count two items, run {i}")}),
                )
                .await,
            );
        }
        // Stop once a few records are in, well before the end.
        let t0 = Instant::now();
        loop {
            let n: usize = ids
                .iter()
                .map(|id| s.state.store().records(id).unwrap().len())
                .sum();
            if n >= 8 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before: Vec<Vec<autoglm_store::Record>> = ids
            .iter()
            .map(|id| s.state.store().records(id).unwrap())
            .collect();
        (ids, before)
    });
    // The process "dies": every task future is dropped at the await it was in (waiting for a
    // model reply, mostly); the wait lets a poll in progress end before the next life starts.
    first.shutdown_timeout(Duration::from_secs(5));
    let finished_before = before
        .iter()
        .filter(|r| r.iter().any(|r| r.kind == "final"))
        .count();
    assert!(finished_before < 5, "the restart came mid-way");

    let second = rt();
    second.block_on(async {
        let s = setup_in(
            dir.clone(),
            counted.clone(),
            Scripted::new(2, 0, 10_000),
            2,
            16,
        );
        // Records may have been appended between the snapshot and the shutdown.
        let at_restart: Vec<Vec<autoglm_store::Record>> = ids
            .iter()
            .map(|id| s.state.store().records(id).unwrap())
            .collect();
        let unfinished = ids
            .iter()
            .filter(|id| {
                autoglm_agent::UNFINISHED
                    .contains(&s.state.store().task(id).unwrap().status.as_str())
            })
            .count();
        assert!(unfinished > 0);
        let resumed = s.state.start_tasks().unwrap();
        assert_eq!(resumed, unfinished);
        for id in &ids {
            wait_status(&s.state, id, &["succeeded"]).await;
        }
        let mut model_calls_after = 0;
        let mut model_calls_at_restart = 0;
        let mut tool_results = 0;
        for ((id, snap), restart) in ids.iter().zip(&before).zip(&at_restart) {
            let after = s.state.store().records(id).unwrap();
            assert_eq!(after[..snap.len()], snap[..], "history kept");
            assert_eq!(after[..restart.len()], restart[..], "history kept");
            let mut keys = HashSet::new();
            for r in &after {
                let key = r.payload["key"].as_str().unwrap().to_string();
                assert!(
                    keys.insert((r.kind.clone(), key)),
                    "repeated: {} {}",
                    r.kind,
                    r.payload
                );
            }
            model_calls_after += after.iter().filter(|r| r.kind == "model_call").count();
            model_calls_at_restart += restart.iter().filter(|r| r.kind == "model_call").count();
            tool_results += after.iter().filter(|r| r.kind == "tool_result").count();
            // The events stream shows the whole history, then ends.
            let mut body = open_events(&s.state, id, None, "").await;
            let events = read_events(&mut body, 10_000).await;
            assert_eq!(events.last().unwrap().event, "end");
            let seqs: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
            assert_eq!(seqs, after.iter().map(|r| r.seq).collect::<Vec<_>>());
        }
        // Only the calls not journaled before the restart were made after it.
        assert_eq!(
            s.llm.calls.load(Ordering::SeqCst),
            model_calls_after - model_calls_at_restart
        );
        // The counter ran exactly once per journaled result, across both lives.
        assert_eq!(tool_results, 10, "two counter steps per task");
        assert_eq!(counted.load(Ordering::SeqCst), tool_results);
    });
    let _ = &dir;
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    headers: axum::http::HeaderMap,
    body: String,
}

/// A webhook receiver on loopback answering by path: `/ok` 200, `/flaky` 500 twice then 200,
/// `/down` always 500, `/gone` 404, `/moved` a redirect to `/ok`.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<std::sync::Mutex<Vec<Hook>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<std::sync::Mutex<Vec<Hook>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let g = g.clone();
                async move {
                    let path = uri.path().to_string();
                    let mut all = g.lock().unwrap();
                    all.push(Hook {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    let seen = all.iter().filter(|h| h.path == path).count();
                    match path.as_str() {
                        "/ok" => StatusCode::OK.into_response(),
                        "/flaky" if seen > 2 => StatusCode::NO_CONTENT.into_response(),
                        "/gone" => StatusCode::NOT_FOUND.into_response(),
                        "/moved" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
                        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> Vec<Hook> {
        let all = self.got.lock().unwrap();
        all.iter().filter(|h| h.path == path).cloned().collect()
    }
}

const SECRET: &str = "test-secret";

fn hooks_setup(llm: Arc<Scripted>, workers: usize, rx: &Receiver, backoff_ms: u64) -> Setup {
    setup_with(
        Arc::new(tempfile::tempdir().expect("tempdir")),
        Arc::default(),
        llm,
        workers,
        16,
        WebhookConfig {
            secret: Some(SECRET.into()),
            allow_hosts: vec![rx.addr.to_string()],
            timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(backoff_ms),
        },
    )
}

/// The task's `webhook` record, once it is journaled.
async fn delivery(st: &Arc<AppState>, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let recs = st.store().records(id).unwrap();
        if let Some(r) = recs.iter().find(|r| r.kind == "webhook") {
            return r.payload.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no delivery for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_finished_task_posts_a_signed_webhook_retried_after_5xx_without_holding_workers() {
    let rx = Receiver::start().await;
    // One worker, and backoff long enough that a second task finishes mid-delivery.
    let s = hooks_setup(Scripted::new(1, 0, 10_000), 1, &rx, 400);
    s.state.start_tasks().unwrap();
    let id = submit(
        &s.state,
        json!({"goal": "first", "webhook": rx.url("/flaky")}),
    )
    .await;
    let t = wait_status(&s.state, &id, &["succeeded"]).await;
    assert_eq!(t["webhook"], rx.url("/flaky"));
    let second = submit(&s.state, json!({"goal": "second"})).await;
    wait_status(&s.state, &second, &["succeeded"]).await;
    assert!(
        rx.hits("/flaky").len() < 3,
        "the worker waited for the webhook's retries"
    );

    let d = delivery(&s.state, &id).await;
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["status"], 204, "{d}");
    let hits = rx.hits("/flaky");
    assert_eq!(hits.len(), 3);
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(h.body, hits[0].body, "every attempt sends the same body");
        assert_eq!(
            h.headers["x-autoglm-signature"],
            autoglm_server::signature(SECRET, h.body.as_bytes()).as_str()
        );
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["x-autoglm-task"], id.as_str());
        assert_eq!(
            h.headers["x-autoglm-delivery-attempt"],
            (i + 1).to_string().as_str()
        );
    }
    let body: Value = serde_json::from_str(&hits[0].body).unwrap();
    let t = task(&s.state, &id).await;
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["tenant"], "default");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["answer"], t["answer"]);
    assert!(body["answer"].is_string());
    assert_eq!(body["usage"], t["usage"]);
    let finished = body["finished_at"].as_i64().unwrap();
    assert!(
        (t["created_at"].as_i64().unwrap()..=t["updated_at"].as_i64().unwrap()).contains(&finished)
    );
    // A forged signature would not match: the receiver can tell.
    assert_ne!(
        autoglm_server::signature("other", hits[0].body.as_bytes()),
        autoglm_server::signature(SECRET, hits[0].body.as_bytes())
    );

    // The outcome is in the events (replayed after the end) and the metrics.
    let mut ev = open_events(&s.state, &id, None, "").await;
    let events = read_events(&mut ev, 100).await;
    let hook = events
        .iter()
        .find(|e| e.event == "webhook")
        .expect("a webhook event");
    assert_eq!(hook.data["ok"], true);
    let m = call(&s.state, "GET", "/metrics", None).await.body;
    assert!(
        m.contains("autoglm_task_webhooks_total{outcome=\"delivered\"} 1"),
        "{m}"
    );
    assert!(m.contains("autoglm_task_webhook_attempts_total 3"), "{m}");
    // Delivered once: a later cancel of the ended task sends nothing more.
    call(&s.state, "POST", &format!("/v1/tasks/{id}/cancel"), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.hits("/flaky").len(), 3);
}

#[tokio::test]
async fn webhook_failures_cancellations_and_refusals() {
    let rx = Receiver::start().await;
    let s = hooks_setup(Scripted::new(1, 0, 0), 1, &rx, 10);
    s.state.start_tasks().unwrap();
    // Refused at submission: not on the allowlist, not http, a host's other port.
    let other_port = format!("http://{}:1/x", rx.addr.ip());
    for bad in [
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        &other_port,
    ] {
        let r = call(
            &s.state,
            "POST",
            "/v1/tasks",
            Some(json!({"goal": "x", "webhook": bad})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["param"], "webhook", "{}", r.body);
    }
    // The model is held, so the first task runs and the others wait in the queue.
    let running = submit(&s.state, json!({"goal": "a", "webhook": rx.url("/down")})).await;
    wait_status(&s.state, &running, &["running"]).await;
    let cases = [("/gone", 404, 1), ("/moved", 302, 1)];
    let mut queued = Vec::new();
    for (path, _, _) in cases {
        queued.push(submit(&s.state, json!({"goal": "b", "webhook": rx.url(path)})).await);
    }
    for ((path, status, attempts), id) in cases.iter().zip(&queued) {
        call(&s.state, "POST", &format!("/v1/tasks/{id}/cancel"), None).await;
        let d = delivery(&s.state, id).await;
        assert_eq!(d["ok"], false, "{path}: {d}");
        assert_eq!(d["status"], *status, "{path}: {d}");
        assert_eq!(
            d["attempts"], *attempts,
            "{path}: no retry of a final answer: {d}"
        );
        let body: Value = serde_json::from_str(&rx.hits(path)[0].body).unwrap();
        assert_eq!(body["status"], "cancelled");
        assert!(body["answer"].is_null());
    }
    assert!(rx.hits("/ok").is_empty(), "the redirect was not followed");
    s.llm.open();
    wait_status(&s.state, &running, &["succeeded"]).await;
    let d = delivery(&s.state, &running).await;
    assert_eq!(d["ok"], false, "{d}");
    assert_eq!(d["attempts"], 3, "1 + 2 retries: {d}");
    assert_eq!(d["status"], 500, "{d}");
    assert_eq!(rx.hits("/down").len(), 3);
    let m = call(&s.state, "GET", "/metrics", None).await.body;
    assert!(
        m.contains("autoglm_task_webhooks_total{outcome=\"failed\"} 3"),
        "{m}"
    );
}
