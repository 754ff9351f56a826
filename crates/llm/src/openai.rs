//! Any OpenAI-compatible chat endpoint over HTTP: our own `autoglm serve`, vLLM, llama.cpp's
//! server, Ollama, hosted APIs. Streams when the caller wants text as it comes; retries 429, 5xx
//! and connection failures with exponential backoff (honouring `Retry-After`), never a 4xx.
//!
//! Replies are read tolerantly: tool-call arguments that are not JSON are kept as a string for
//! the agent to reject and ask again, and a server that does not parse tool calls itself (a
//! model writing `<tool_call>` blocks into its text) still yields calls.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{
    BoxFuture, Capabilities, ChatRequest, ChatResponse, DeltaSink, Finish, LlmClient, LlmError,
    Message, Role, ToolCall, ToolChoice, Usage,
};

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// The `model` field sent.
    pub model: String,
    /// Whole-request limit (a long generation must fit).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts after the first, for 429, 5xx and connection failures.
    pub max_retries: usize,
    /// First backoff; doubled each retry, at most 30 s.
    pub backoff: Duration,
    /// The server guarantees tool calls and JSON answers match their schemas (ours does).
    pub constrained: bool,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:8080/v1".into(),
            api_key: None,
            model: "default".into(),
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_retries: 4,
            backoff: Duration::from_millis(500),
            constrained: false,
        }
    }
}

pub struct OpenAiClient {
    cfg: OpenAiConfig,
    http: reqwest::Client,
}

impl OpenAiClient {
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAiClient, LlmError> {
        // reqwest is built without a bundled crypto provider (the tree already has ring for
        // TLS); install it once, ignoring "already installed".
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .build()
            .map_err(|e| LlmError::Transport {
                attempts: 0,
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(OpenAiClient { cfg, http })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        )
    }
}

fn wire_messages(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": m.role.as_str(), "content": m.content});
            if m.role == Role::Assistant && !m.tool_calls.is_empty() {
                if m.content.is_empty() {
                    v["content"] = Value::Null;
                }
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|t| {
                        json!({"id": t.id, "type": "function", "function": {
                            "name": t.name, "arguments": arguments_text(&t.arguments)}})
                    })
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            v
        })
        .collect()
}

/// Arguments as the JSON text OpenAI's wire format carries (a malformed reply kept as a string
/// goes back verbatim).
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

pub(crate) fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": wire_messages(&req.messages),
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(seed) = req.seed {
        body["seed"] = json!(seed);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
        body["tool_choice"] = match &req.tool_choice {
            ToolChoice::None => json!("none"),
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(n) => json!({"type": "function", "function": {"name": n}}),
        };
    }
    if let Some(schema) = &req.json_schema {
        body["response_format"] =
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}});
    }
    body
}

fn finish_of(reason: Option<&str>, calls: bool) -> Finish {
    match reason {
        Some("length") => Finish::Length,
        _ if calls => Finish::ToolCalls,
        _ => Finish::Stop,
    }
}

fn usage_of(v: &Value) -> Usage {
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0) as usize;
    Usage {
        prompt_tokens: n("/prompt_tokens"),
        completion_tokens: n("/completion_tokens"),
        cached_tokens: n("/prompt_tokens_details/cached_tokens"),
    }
}

/// Tool-call arguments: JSON text parsed, anything else kept as the string it was.
fn parse_arguments(text: &str) -> Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Content and calls of a reply; calls written into the text are read out of it when the
/// server did not.
fn finish_reply(
    content: String,
    calls: Vec<ToolCall>,
    reason: Option<&str>,
    usage: Usage,
) -> ChatResponse {
    let (content, calls) = if calls.is_empty() && content.contains(autoglm_engine::TOOL_CALL_OPEN) {
        let (text, found) = autoglm_engine::parse_tool_calls(&content);
        let calls = found
            .into_iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: format!("call_text_{i}"),
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        (text, calls)
    } else {
        (content, calls)
    };
    ChatResponse {
        finish: finish_of(reason, !calls.is_empty()),
        content,
        tool_calls: calls,
        usage,
    }
}

pub(crate) fn parse_reply(v: &Value) -> Result<ChatResponse, LlmError> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| LlmError::InvalidReply(format!("no choices in {:.200}", v.to_string())))?;
    let msg = &choice["message"];
    let content = msg["content"].as_str().unwrap_or("").to_string();
    let calls = msg["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: c["id"]
                .as_str()
                .map_or_else(|| format!("call_{i}"), str::to_string),
            name: c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            arguments: match c.pointer("/function/arguments") {
                Some(Value::String(s)) => parse_arguments(s),
                Some(v) => v.clone(),
                None => json!({}),
            },
        })
        .collect();
    Ok(finish_reply(
        content,
        calls,
        choice["finish_reason"].as_str(),
        usage_of(&v["usage"]),
    ))
}

/// Accumulates a streamed reply chunk by chunk.
#[derive(Default)]
struct StreamState {
    content: String,
    /// index -> (id, name, arguments text)
    calls: BTreeMap<u64, (String, String, String)>,
    finish: Option<String>,
    usage: Usage,
}

impl StreamState {
    fn chunk(&mut self, v: &Value, deltas: &Option<DeltaSink>) {
        if v["usage"].is_object() {
            self.usage = usage_of(&v["usage"]);
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        let d = &choice["delta"];
        if let Some(t) = d["content"].as_str()
            && !t.is_empty()
        {
            self.content.push_str(t);
            if let Some(s) = deltas {
                let _ = s.send(t.to_string());
            }
        }
        for c in d["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0);
            let e = self.calls.entry(i).or_default();
            if let Some(id) = c["id"].as_str() {
                e.0 = id.to_string();
            }
            if let Some(n) = c.pointer("/function/name").and_then(Value::as_str) {
                e.1.push_str(n);
            }
            if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str) {
                e.2.push_str(a);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
    }

    fn into_reply(self) -> ChatResponse {
        let calls = self
            .calls
            .into_iter()
            .map(|(i, (id, name, args))| ToolCall {
                id: if id.is_empty() {
                    format!("call_{i}")
                } else {
                    id
                },
                name,
                arguments: parse_arguments(&args),
            })
            .collect();
        finish_reply(self.content, calls, self.finish.as_deref(), self.usage)
    }
}

/// One failed attempt: whether to try again, and how long the server asked us to wait.
struct Failure {
    error: LlmError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl OpenAiClient {
    async fn attempt(
        &self,
        req: &ChatRequest,
        deltas: &Option<DeltaSink>,
        attempts: usize,
    ) -> Result<ChatResponse, Failure> {
        let stream = deltas.is_some();
        let mut rb = self
            .http
            .post(self.url())
            .json(&request_body(&self.cfg.model, req, stream));
        if let Some(k) = &self.cfg.api_key {
            rb = rb.bearer_auth(k);
        }
        let transport = |e: reqwest::Error| Failure {
            error: LlmError::Transport {
                attempts,
                message: e.to_string(),
            },
            retry: true,
            retry_after: None,
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| body.chars().take(300).collect());
            let (error, retry) = match status.as_u16() {
                429 => (LlmError::Overloaded { attempts, message }, true),
                s @ 500..=599 => (
                    LlmError::Server {
                        status: s,
                        attempts,
                        message,
                    },
                    true,
                ),
                s => (LlmError::BadRequest(format!("HTTP {s}: {message}")), false),
            };
            return Err(Failure {
                error,
                retry,
                retry_after,
            });
        }
        if !stream {
            let v: Value = resp.json().await.map_err(|e| Failure {
                error: LlmError::InvalidReply(e.to_string()),
                retry: false,
                retry_after: None,
            })?;
            return parse_reply(&v).map_err(|error| Failure {
                error,
                retry: false,
                retry_after: None,
            });
        }
        let mut state = StreamState::default();
        let mut buf = String::new();
        let mut body = resp.bytes_stream();
        while let Some(part) = body.next().await {
            let part = part.map_err(|e| Failure {
                // Text may already have been shown: a retry would repeat it.
                retry: state.content.is_empty() && state.calls.is_empty(),
                ..transport(e)
            })?;
            buf.push_str(&String::from_utf8_lossy(&part));
            while let Some(end) = buf.find('\n') {
                let line = buf[..end].trim_end_matches('\r').to_string();
                buf.drain(..=end);
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(state.into_reply());
                }
                match serde_json::from_str::<Value>(data) {
                    Ok(v) if v.get("error").is_some() => {
                        return Err(Failure {
                            error: LlmError::Server {
                                status: 200,
                                attempts,
                                message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                            },
                            retry: false,
                            retry_after: None,
                        });
                    }
                    Ok(v) => state.chunk(&v, deltas),
                    Err(e) => {
                        return Err(Failure {
                            error: LlmError::InvalidReply(format!("bad event {data:.100}: {e}")),
                            retry: false,
                            retry_after: None,
                        });
                    }
                }
            }
        }
        // Some servers end the stream without [DONE].
        Ok(state.into_reply())
    }
}

impl LlmClient for OpenAiClient {
    fn describe(&self) -> String {
        format!("openai {} at {}", self.cfg.model, self.cfg.base_url)
    }

    fn model(&self) -> String {
        self.cfg.model.clone()
    }

    fn provider(&self) -> &'static str {
        "openai"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            constrained: self.cfg.constrained,
        }
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let mut wait = self.cfg.backoff;
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.attempt(req, &deltas, attempts).await {
                    Ok(r) => return Ok(r),
                    Err(f) if f.retry && attempts <= self.cfg.max_retries => {
                        let pause = f.retry_after.unwrap_or(wait).min(Duration::from_secs(30));
                        tokio::time::sleep(pause).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                    Err(f) => return Err(f.error),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolDef;

    #[test]
    fn requests_carry_tools_choice_schema_and_history() {
        let mut req = ChatRequest::new(vec![
            Message::user("2+2?"),
            Message::assistant_calls(
                "",
                vec![ToolCall {
                    id: "c1".into(),
                    name: "calculator".into(),
                    arguments: json!({"expression": "2+2"}),
                }],
            ),
            Message::tool_result("c1", "4"),
        ]);
        req.tools = vec![ToolDef {
            name: "calculator".into(),
            description: "math".into(),
            parameters: json!({"type": "object"}),
        }];
        req.tool_choice = ToolChoice::Function("calculator".into());
        req.json_schema = Some(json!({"type": "object"}));
        req.seed = Some(7);
        let b = request_body("m", &req, true);
        assert_eq!(b["messages"][1]["content"], Value::Null);
        assert_eq!(
            b["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{\"expression\":\"2+2\"}"
        );
        assert_eq!(b["messages"][2]["tool_call_id"], "c1");
        assert_eq!(b["tool_choice"]["function"]["name"], "calculator");
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["seed"], 7);
    }

    #[test]
    fn replies_are_read_tolerantly() {
        let r = parse_reply(&json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
            {"id": "b", "function": {"name": "g", "arguments": "{broken"}}]},
            "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}}))
        .unwrap();
        assert_eq!(r.tool_calls[0].arguments, json!({"x": 1}));
        assert_eq!(r.tool_calls[1].arguments, json!("{broken"));
        assert_eq!(r.finish, Finish::ToolCalls);
        assert_eq!(r.usage.cached_tokens, 2);
        // Calls written into the text by a server that does not parse them.
        let r = parse_reply(&json!({"choices": [{"message": {"content":
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"}, "finish_reason": "stop"}]}))
        .unwrap();
        assert_eq!((r.content.as_str(), r.tool_calls.len()), ("", 1));
        assert_eq!(r.finish, Finish::ToolCalls);
        assert!(parse_reply(&json!({"error": "x"})).is_err());
    }

    #[test]
    fn streamed_chunks_add_up() {
        let mut s = StreamState::default();
        for c in [
            json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "x", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]}),
            json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ] {
            s.chunk(&c, &None);
        }
        let r = s.into_reply();
        assert_eq!(r.tool_calls[0].arguments, json!({"a": 1}));
        assert_eq!(r.tool_calls[0].id, "x");
        assert_eq!(r.usage.completion_tokens, 4);
    }
}
