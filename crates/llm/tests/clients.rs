//! Every backend through the one interface: the embedded engine, the OpenAI client against our
//! own server on loopback (the HTTP path for real), and the retry policy against a server that
//! refuses on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use autoglm_engine::{EngineHandle, ServeConfig};
use autoglm_llm::{
    ChatRequest, EmbeddedClient, Finish, LlmClient, LlmError, Message, OpenAiClient, OpenAiConfig,
    ToolChoice, ToolDef,
};
use autoglm_model::Model;
use serde_json::{Value, json};

fn engine() -> EngineHandle {
    let model = Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads");
    EngineHandle::start(
        model,
        ServeConfig {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("engine starts")
}

fn calculator() -> ToolDef {
    ToolDef {
        name: "calculator".into(),
        description: "Evaluate an arithmetic expression exactly".into(),
        parameters: json!({"type": "object", "properties": {
            "expression": {"type": "string", "maxLength": 80}}, "required": ["expression"]}),
    }
}

/// The same three turns on any backend: a required tool call, a JSON answer, streamed text.
async fn exercise(client: &dyn LlmClient) {
    let mut req = ChatRequest::new(vec![Message::user("What is 17 * 23?")]);
    req.tools = vec![calculator()];
    req.tool_choice = ToolChoice::Required;
    req.max_tokens = 60;
    let r = client.chat(&req, None).await.expect("tool call");
    assert_eq!(r.finish, Finish::ToolCalls, "{r:?}");
    assert_eq!(r.tool_calls[0].name, "calculator");
    assert!(r.tool_calls[0].arguments["expression"].is_string(), "{r:?}");
    assert!(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);

    // The call and its result in the history, then a text answer.
    let mut follow = req.clone();
    follow
        .messages
        .push(Message::assistant_calls("", r.tool_calls.clone()));
    follow
        .messages
        .push(Message::tool_result(r.tool_calls[0].id.clone(), "391"));
    follow.tool_choice = ToolChoice::None;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let answer = client.chat(&follow, Some(tx)).await.expect("answer");
    let mut streamed = String::new();
    while let Ok(t) = rx.try_recv() {
        streamed.push_str(&t);
    }
    assert_eq!(streamed, answer.content);
    assert!(!answer.content.is_empty());

    let mut json_req = ChatRequest::new(vec![Message::user("Give a city and its country.")]);
    json_req.json_schema = Some(json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
        "required": ["city", "country"], "additionalProperties": false}));
    json_req.max_tokens = 60;
    let r = client.chat(&json_req, None).await.expect("json");
    let v: Value = serde_json::from_str(&r.content).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert!(v["city"].is_string() && v["country"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_http_backends_behave_alike() {
    let h = engine();
    let embedded = EmbeddedClient::new(h.clone());
    assert!(embedded.capabilities().constrained);
    assert!(embedded.describe().starts_with("embedded "));
    exercise(&embedded).await;

    // Our own server on a free loopback port, in front of a second engine.
    let model = Model::load(autoglm_testkit::model_path("smollm2-135m")).unwrap();
    let state = autoglm_server::AppState::new(
        model,
        "smollm2-135m",
        ServeConfig {
            threads: 2,
            ..Default::default()
        },
        Arc::new(autoglm_store::Store::in_memory().expect("store")),
        autoglm_server::AuthMode::None,
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = autoglm_server::serve(state, "127.0.0.1:0".parse().unwrap(), move |a| {
            let _ = tx.send(a);
        })
        .await;
    });
    let addr: SocketAddr = rx.await.unwrap();
    let http = OpenAiClient::new(OpenAiConfig {
        base_url: format!("http://{addr}/v1"),
        model: "smollm2-135m".into(),
        constrained: true,
        ..Default::default()
    })
    .unwrap();
    exercise(&http).await;
}

/// A server that answers 429 (or 503, or 400) a set number of times, counting requests.
async fn refusing_server(status: u16, times: usize) -> (String, Arc<AtomicUsize>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst);
                if n < times {
                    let code = StatusCode::from_u16(status).unwrap();
                    let body = json!({"error": {"message": format!("refusal {n}")}});
                    (code, [("retry-after", "0")], axum::Json(body)).into_response()
                } else {
                    axum::Json(json!({"choices": [{"message": {"content": "fine"},
                        "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
                    .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_overload_and_server_errors_but_not_bad_requests() {
    let client = |base: String| {
        OpenAiClient::new(OpenAiConfig {
            base_url: base,
            max_retries: 3,
            backoff: Duration::from_millis(10),
            ..Default::default()
        })
        .unwrap()
    };
    let req = ChatRequest::new(vec![Message::user("hi")]);

    let (base, n) = refusing_server(429, 2).await;
    let r = client(base).chat(&req, None).await.unwrap();
    assert_eq!((r.content.as_str(), n.load(Ordering::SeqCst)), ("fine", 3));

    let (base, n) = refusing_server(503, 100).await;
    let e = client(base).chat(&req, None).await.unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Server {
                status: 503,
                attempts: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 4);

    let (base, n) = refusing_server(400, 100).await;
    let e = client(base).chat(&req, None).await.unwrap_err();
    assert!(
        matches!(&e, LlmError::BadRequest(m) if m.contains("refusal 0")),
        "{e}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 1);

    // Nothing listening: a transport error after the retries.
    let e = client("http://127.0.0.1:9/v1".into())
        .chat(&req, None)
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Transport { attempts: 4, .. }), "{e}");
}
