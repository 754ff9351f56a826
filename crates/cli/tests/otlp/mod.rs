//! (Part of the `cli` test binary, for its server and HTTP helpers.) OTLP export end to end: the real binary runs a task on the embedded model with
//! `--otlp-endpoint` pointing at a fake collector on loopback (axum, decoding the protobuf with
//! OpenTelemetry's own message types), and the spans that arrive must form the task → step →
//! model call / tool call tree with the GenAI attributes, matching the task's journal record
//! for record. A collector that is down costs one warning, never the command.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;
use serde_json::{Map, Value, json};

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    /// OTLP's enum: 1 internal, 3 client.
    kind: i32,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    /// OTLP's status code: 2 is error.
    status: i32,
    attrs: Map<String, Value>,
}

impl Got {
    fn attr(&self, k: &str) -> &Value {
        self.attrs.get(k).unwrap_or(&Value::Null)
    }
}

fn any(v: &Option<AnyValue>) -> Value {
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any(&Some(v.clone()))).collect())
        }
        _ => Value::Null,
    }
}

/// A fake OTLP/HTTP collector on a loopback port: every span of every `POST /v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    /// Content types of the requests, to check the transport is protobuf.
    types: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let types: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, t) = (spans.clone(), types.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let (s, t) = (s.clone(), t.clone());
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    t.lock().unwrap().push(ct);
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut s = s.lock().unwrap();
                    for span in req
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|ss| &ss.spans)
                    {
                        s.push(Got {
                            name: span.name.clone(),
                            kind: span.kind,
                            trace: span.trace_id.clone(),
                            id: span.span_id.clone(),
                            parent: span.parent_span_id.clone(),
                            status: span.status.as_ref().map_or(0, |st| st.code),
                            attrs: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), any(&kv.value)))
                                .collect(),
                        });
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        Collector {
            url,
            spans,
            types,
            _rt: rt,
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

fn autoglm(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    super::ensure("smollm2-135m");
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .env("AUTOGLM_HOME", home)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The spans of one task as a tree, checked against its journal (`run --json`'s steps).
fn check_task_tree(spans: &[Got], task_id: &str, steps: &[Value]) {
    let tasks: Vec<&Got> = spans
        .iter()
        .filter(|s| s.attr("gen_ai.operation.name") == "invoke_agent")
        .filter(|s| s.attr("autoglm.task.id") == task_id)
        .collect();
    assert_eq!(tasks.len(), 1, "one task span for {task_id}: {spans:#?}");
    let task = tasks[0];
    assert_eq!(task.name, "invoke_agent autoglm");
    assert_eq!(task.kind, 1, "internal");
    assert_eq!(task.attr("gen_ai.agent.name"), "autoglm");
    assert_eq!(task.attr("gen_ai.conversation.id"), task_id);
    assert_eq!(task.attr("gen_ai.provider.name"), "autoglm");
    assert!(task.attr("autoglm.task.status").is_string(), "{task:?}");
    let model = task.attr("gen_ai.request.model").as_str().unwrap();
    let of_task: Vec<&Got> = spans
        .iter()
        .filter(|s| s.attr("autoglm.task.id") == task_id)
        .collect();
    for s in &of_task {
        assert_eq!(s.trace, task.trace, "one trace per task: {s:?}");
    }
    let steps_spans: Vec<&Got> = of_task
        .iter()
        .copied()
        .filter(|s| s.attrs.contains_key("autoglm.step.kind"))
        .collect();
    assert!(!steps_spans.is_empty());
    for s in &steps_spans {
        assert_eq!(s.parent, task.id, "a step is a child of its task: {s:?}");
        let kind = s.attr("autoglm.step.kind").as_str().unwrap();
        assert_eq!(s.name, format!("step {kind}"));
        assert!(s.attr("autoglm.step").is_i64(), "{s:?}");
    }
    let step_of = |s: &Got| -> &Got {
        steps_spans
            .iter()
            .copied()
            .find(|st| st.id == s.parent)
            .unwrap_or_else(|| panic!("{} has no step parent: {s:?}", s.name))
    };
    // Every journaled model call and tool call has its span, with the journal's figures.
    let mut chats = 0;
    let mut tools = 0;
    for r in steps {
        let key = r["key"].as_str().unwrap_or("");
        let with_key = |op: &str| -> &Got {
            of_task
                .iter()
                .copied()
                .find(|s| {
                    s.attr("gen_ai.operation.name") == op && s.attr("autoglm.step.key") == key
                })
                .unwrap_or_else(|| panic!("no {op} span for {key}: {of_task:#?}"))
        };
        match r["kind"].as_str() {
            Some("model_call") => {
                chats += 1;
                let s = with_key("chat");
                assert_eq!(s.name, format!("chat {model}"));
                assert_eq!(s.kind, 3, "client");
                assert_eq!(s.attr("gen_ai.request.model"), model);
                assert_eq!(
                    s.attr("gen_ai.usage.input_tokens"),
                    &r["usage"]["prompt_tokens"]
                );
                assert_eq!(
                    s.attr("gen_ai.usage.output_tokens"),
                    &r["usage"]["completion_tokens"]
                );
                let finish = r["response"]["finish"].as_str().unwrap();
                assert_eq!(s.attr("gen_ai.response.finish_reasons"), &json!([finish]));
                assert_eq!(s.attr("autoglm.step"), &r["subtask"]);
                assert!(key.starts_with(step_of(s).attr("autoglm.step.key").as_str().unwrap()));
            }
            Some("tool_result") => {
                tools += 1;
                let s = with_key("execute_tool");
                let tool = r["tool"].as_str().unwrap();
                assert_eq!(s.name, format!("execute_tool {tool}"));
                assert_eq!(s.attr("gen_ai.tool.name"), tool);
                assert_eq!(s.attr("gen_ai.tool.type"), "function");
                assert!(
                    s.attr("gen_ai.tool.call.id")
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
                );
                assert_eq!(s.attr("autoglm.step"), &r["subtask"]);
                assert_eq!(s.status == 2, r["ok"] == false, "{s:?}");
                step_of(s);
            }
            _ => {}
        }
    }
    let count = |op: &str| {
        of_task
            .iter()
            .filter(|s| s.attr("gen_ai.operation.name") == op)
            .count()
    };
    assert_eq!(count("chat"), chats, "a chat span per model call, no more");
    assert_eq!(count("execute_tool"), tools, "a tool span per tool call");
}

#[test]
fn run_exports_the_task_tree_to_an_otlp_collector() {
    let collector = Collector::start();
    let home = tempfile::tempdir().unwrap();
    let o = autoglm(
        home.path(),
        &[
            "run",
            "--json",
            "--otlp-endpoint",
            &collector.url,
            "What is 17 * 23? Use the calculator.",
        ],
        &[],
    );
    let v: Value = serde_json::from_str(text(&o.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o.stdout), text(&o.stderr)));
    assert!(
        !text(&o.stderr).contains("cannot export"),
        "{}",
        text(&o.stderr)
    );
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["kind"] == "tool_result"),
        "the calculator was called: {v}"
    );
    // Flushed before the answer was printed: all there once the command returned.
    let spans = collector.spans();
    check_task_tree(&spans, v["task_id"].as_str().unwrap(), steps);
    let types = collector.types.lock().unwrap().clone();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );
}

#[test]
fn a_collector_that_is_down_costs_one_warning_and_no_time() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // Through the environment this time; one step keeps the task short (it ends at its budget).
    let o = autoglm(
        home.path(),
        &["run", "--json", "--max-steps", "1", "What is 2 + 2?"],
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        )],
    );
    let took = t0.elapsed();
    let err = text(&o.stderr);
    let v: Value = serde_json::from_str(text(&o.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{err}", text(&o.stdout)));
    assert_eq!(v["status"], "budget_exhausted", "{v}");
    assert_eq!(err.matches("cannot export traces").count(), 1, "{err}");
    assert!(took < Duration::from_secs(120), "took {took:?}");
}

/// `serve --otlp-endpoint`: a task's spans arrive by the time the server has stopped (Ctrl-C
/// flushes them).
#[test]
fn serve_flushes_task_spans_at_shutdown() {
    let collector = Collector::start();
    let home = tempfile::tempdir().unwrap();
    super::ensure("smollm2-135m");
    let (mut child, addr) = super::serve_with(
        home.path(),
        &["--no-auth", "--otlp-endpoint", collector.url.as_str()],
    );
    let request = |method: &str, path: &str, body: &str| -> Value {
        let (_, b) = super::http(&addr, method, path, Some(body));
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"))
    };
    let t = request(
        "POST",
        "/v1/tasks",
        r#"{"goal": "What is 2 + 2?", "max_steps": 1}"#,
    );
    let id = t["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let t = request("GET", &format!("/v1/tasks/{id}"), "");
        if t["status"] == "budget_exhausted" || t["status"] == "failed" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "{t}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t1 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t1.elapsed() < Duration::from_secs(30), "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let spans = collector.spans();
    let task = spans
        .iter()
        .find(|s| s.attr("autoglm.task.id") == id.as_str() && s.name == "invoke_agent autoglm")
        .unwrap_or_else(|| panic!("no task span: {spans:#?}"));
    assert_eq!(task.attr("autoglm.task.status"), "budget_exhausted");
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("chat ") && s.attr("autoglm.task.id") == id.as_str()),
        "{spans:#?}"
    );
}
