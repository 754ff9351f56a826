//! The OpenAI-compatible API driven in-process (`app()` with `oneshot`) on the default model:
//! responses in OpenAI's shapes, streaming equal to non-streaming, and precise 4xx errors for
//! bad input — never a 5xx.

use std::sync::{Arc, OnceLock};

use autoglm_engine::ServeConfig;
use autoglm_model::Model;
use autoglm_server::{AppState, app};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn state() -> Arc<AppState> {
    static STATE: OnceLock<Arc<AppState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let model =
                Model::load(autoglm_testkit::model_path("smollm2-135m")).expect("model loads");
            AppState::new(
                model,
                "smollm2-135m",
                ServeConfig {
                    threads: 2,
                    ..Default::default()
                },
                Arc::new(autoglm_store::Store::in_memory().expect("store")),
                // Authentication has its own tests (tests/auth.rs); these are about the API.
                autoglm_server::AuthMode::None,
            )
            .expect("state")
        })
        .clone()
}

async fn call(
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Vec<(String, String)>, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap();
    let resp = app(state()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn post(uri: &str, body: Value) -> (StatusCode, String) {
    let (s, _, b) = call("POST", uri, Some(body.to_string())).await;
    (s, b)
}

#[tokio::test]
async fn chat_completion_shape_and_usage() {
    let (status, body) = post(
        "/v1/chat/completions",
        json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is 2+2?"}],
               "temperature": 0, "max_tokens": 16}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test]
async fn streaming_equals_non_streaming() {
    let req = json!({"messages": [{"role": "user", "content": "Name three colours."}], "temperature": 0, "max_tokens": 24});
    let (_, plain) = post("/v1/chat/completions", req.clone()).await;
    let plain: Value = serde_json::from_str(&plain).unwrap();
    let mut sreq = req;
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (status, headers, body) =
        call("POST", "/v1/chat/completions", Some(sreq.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    );
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        if v.get("usage").is_some() {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(
        finish.as_deref(),
        plain["choices"][0]["finish_reason"].as_str()
    );
    assert_eq!(
        usage.unwrap()["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn text_completions_models_health_metrics() {
    let (status, body) = post(
        "/v1/completions",
        json!({"prompt": "The capital of France is", "temperature": 0, "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());

    let (status, _, body) = call("GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "smollm2-135m");

    let (status, _, body) = call("GET", "/health", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );

    let (status, _, body) = call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    for m in [
        "autoglm_queue_depth",
        "autoglm_batch_size",
        "autoglm_kv_blocks_used",
        "autoglm_prefix_cache_hit_rate",
        "autoglm_generated_tokens_total",
        "autoglm_generation_tokens_per_second",
        "autoglm_time_to_first_token_seconds_count",
        "autoglm_inter_token_latency_seconds_sum",
    ] {
        assert!(
            body.contains(&format!("\n{m} ")),
            "metrics lack {m}:\n{body}"
        );
    }
    // Histograms: cumulative buckets ending in +Inf equal to the count, which has seen the
    // completion above.
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}:\n{body}"))
    };
    let count = value("autoglm_time_to_first_token_seconds_count ");
    assert!(count >= 1.0);
    assert_eq!(
        value("autoglm_time_to_first_token_seconds_bucket{le=\"+Inf\"} "),
        count
    );
    assert!(value("autoglm_inter_token_latency_seconds_count ") >= 1.0);
}

/// (body, expected status, expected param (or null), text the message must contain)
#[tokio::test]
async fn bad_requests_get_precise_openai_errors() {
    let chat = "/v1/chat/completions";
    let msg = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, String, StatusCode, Value, &str)> = vec![
        (
            chat,
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            Value::Null,
            "invalid request body",
        ),
        (
            chat,
            json!({"messages": "hi"}).to_string(),
            StatusCode::BAD_REQUEST,
            Value::Null,
            "invalid request body",
        ),
        (
            chat,
            json!({"model": "gpt-9", "messages": msg}).to_string(),
            StatusCode::NOT_FOUND,
            json!("model"),
            "gpt-9",
        ),
        (
            chat,
            json!({"messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("messages"),
            "empty",
        ),
        (
            chat,
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("messages[0].role"),
            "wizard",
        ),
        (
            chat,
            json!({"messages": [{"role": "user"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("messages[0].content"),
            "required",
        ),
        (
            chat,
            json!({"messages": msg, "temperature": -1}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("temperature"),
            "temperature",
        ),
        (
            chat,
            json!({"messages": msg, "top_p": 0}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("top_p"),
            "top_p",
        ),
        (
            chat,
            json!({"messages": msg, "max_tokens": 0}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("max_tokens"),
            "at least 1",
        ),
        (
            chat,
            json!({"messages": msg, "n": 2}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("n"),
            "n = 1",
        ),
        (
            chat,
            json!({"messages": msg, "priority": "urgent"}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("priority"),
            "urgent",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "word ".repeat(9000)}]}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("messages"),
            "context",
        ),
        (
            chat,
            json!({"messages": msg, "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function", "function": {"name": "g"}}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            json!("tool_choice"),
            "not among the tools",
        ),
        (
            chat,
            json!({"messages": msg, "tools": [{"type": "retrieval"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("tools[0]"),
            "function",
        ),
        (
            chat,
            json!({"messages": msg, "tool_choice": "sometimes"}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("tool_choice"),
            "sometimes",
        ),
        (
            chat,
            json!({"messages": msg, "tool_choice": "required"}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("tool_choice"),
            "no tools",
        ),
        (
            chat,
            json!({"messages": msg, "response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            json!("response_format"),
            "frobnicate",
        ),
        (
            chat,
            json!({"messages": msg, "response_format": {"type": "yaml"}}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("response_format"),
            "yaml",
        ),
        (
            chat,
            json!({"messages": msg, "logprobs": true, "top_logprobs": 50}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("top_logprobs"),
            "0 to 20",
        ),
        (
            chat,
            json!({"messages": msg, "top_logprobs": 2}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("top_logprobs"),
            "requires logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": 5}).to_string(),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
            "string",
        ),
        (
            "/v1/nothing",
            "{}".into(),
            StatusCode::NOT_FOUND,
            Value::Null,
            "no such route",
        ),
    ];
    for (uri, body, status, param, text) in cases {
        let (s, _, b) = call("POST", uri, Some(body.clone())).await;
        assert_eq!(s, status, "{uri} {body:.80}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("not JSON: {b}"));
        assert_eq!(v["error"]["param"], param, "{body:.80}: {b}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{body:.80}: {b}"
        );
        assert!(v["error"]["type"].is_string());
    }
    // Oversized bodies are refused before parsing.
    let huge = "x".repeat(autoglm_server::BODY_LIMIT + 1);
    let (s, _, _) = call("POST", chat, Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time"}}])
}

#[tokio::test]
async fn tool_calls_streamed_and_not_are_valid_and_equal() {
    let body = json!({"messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": weather_tools(), "tool_choice": "required", "temperature": 0, "max_tokens": 80});
    let (s, b) = post("/v1/chat/completions", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{b}");
    assert_eq!(choice["message"]["content"], Value::Null, "{b}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let name = call["function"]["name"].as_str().unwrap();
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {b}"));
    match name {
        "get_weather" => {
            assert!(args["city"].is_string(), "{b}");
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
        }
        "get_time" => assert_eq!(args, json!({})),
        other => panic!("unknown tool {other}"),
    }

    // The same request streamed: the same calls, each in one delta.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (s, b) = post("/v1/chat/completions", sbody).await;
    assert_eq!(s, StatusCode::OK);
    let chunks: Vec<Value> = b
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(deltas.len(), calls.len(), "{b}");
    for (d, c) in deltas.iter().zip(calls) {
        assert_eq!(d["function"], c["function"]);
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // A named tool is the one called; a tool result in the history is accepted.
    let named = json!({"messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 3}"},
            {"role": "user", "content": "And the time?"}],
        "tools": weather_tools(), "max_tokens": 40, "seed": 1,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let (s, b) = post("/v1/chat/completions", named).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_time");
    assert_eq!(calls[0]["function"]["arguments"], "{}");
}

#[tokio::test]
async fn response_format_json_schema_is_obeyed() {
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"], "additionalProperties": false});
    for (i, rf) in [
        json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}),
        json!({"type": "json_object"}),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, b) = post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Name a big city and its population, as JSON."}],
                   "response_format": rf, "seed": 5, "max_tokens": 60}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let out: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(out.is_object(), "{content}");
        if i == 0 {
            assert!(
                out["city"].is_string() && out["population"].is_u64(),
                "{content}"
            );
            assert_eq!(out.as_object().unwrap().len(), 2, "{content}");
        }
    }
}

#[tokio::test]
async fn logprobs_for_chat_and_text_completions() {
    let (s, b) = post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0,
               "max_tokens": 6, "logprobs": true, "top_logprobs": 3}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    // Every generated token but an end-of-turn one has an entry.
    assert!(content.len() == n || content.len() + 1 == n, "{b}");
    let text: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!(
            (lp - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6,
            "{e}"
        );
        assert!(lp <= 0.0 && top[1]["logprob"].as_f64().unwrap() <= lp);
        assert_eq!(
            e["bytes"].as_array().unwrap().len(),
            e["token"].as_str().unwrap().len()
        );
    }
    let (s, b) = post(
        "/v1/completions",
        json!({"prompt": "The capital of France is", "temperature": 0, "max_tokens": 4, "logprobs": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4, "{b}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2, "{b}");
}
