//! Request handlers: parse and validate the wire request into an engine request (TGI's
//! validated-request boundary), submit it, and answer as JSON or as a server-sent event stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use autoglm_engine::{
    FinishReason, GenEvent, GenRequest, GenStream, GenSummary, Priority, SamplingParams,
    SubmitError,
};
use autoglm_tokenizer::ChatMessage;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::wire::{ChatRequest, CompletionRequest, Content, PromptTokensDetails, Sampling, Usage};

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A validated generation: everything the engine needs, plus how to answer.
struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    priority: Priority,
    stream: bool,
    include_usage: bool,
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None | Some("") | Some("default") => Ok(()),
            Some(m) if m == self.model_name => Ok(()),
            Some(m) => Err(ApiError::UnknownModel(m.to_string())),
        }
    }

    fn job(&self, prompt: Vec<u32>, s: &Sampling) -> Result<Job, ApiError> {
        if prompt.len() >= self.context_length {
            return Err(ApiError::bad_param(
                "messages",
                format!(
                    "the prompt is {} tokens, but this model's context is {} tokens",
                    prompt.len(),
                    self.context_length
                ),
            ));
        }
        if let Some(n) = s.n
            && n != 1
        {
            return Err(ApiError::bad_param(
                "n",
                format!("only n = 1 is supported, got {n}"),
            ));
        }
        if s.logprobs
            .as_ref()
            .is_some_and(|v| v != &Value::Bool(false) && !v.is_null())
            || s.top_logprobs.is_some()
        {
            return Err(ApiError::bad_param(
                "logprobs",
                "logprobs are not supported yet",
            ));
        }
        let room = self.context_length - prompt.len();
        let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
            None => room.min(self.default_max_tokens),
            Some(n) if n < 1 => {
                return Err(ApiError::bad_param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {n}"),
                ));
            }
            Some(n) => (n as usize).min(room),
        };
        let top_k = match s.top_k {
            None => 0,
            Some(k) if k < 0 => {
                return Err(ApiError::bad_param(
                    "top_k",
                    format!("top_k must be >= 0, got {k}"),
                ));
            }
            Some(k) => k as usize,
        };
        // OpenAI's defaults: temperature 1, top_p 1, nothing else.
        let params = SamplingParams {
            temperature: s.temperature.unwrap_or(1.0),
            top_k,
            top_p: s.top_p.unwrap_or(1.0),
            min_p: s.min_p.unwrap_or(0.0),
            repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
            presence_penalty: s.presence_penalty.unwrap_or(0.0),
            frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
            seed: s.seed,
            max_tokens,
            stop: s.stop.clone().map(|x| x.into_vec()).unwrap_or_default(),
            ..SamplingParams::default()
        };
        params.validate().map_err(|e| {
            let msg = e.to_string();
            let param = msg
                .strip_prefix("invalid sampling parameter: ")
                .and_then(|m| m.split_whitespace().next())
                .map(str::to_string);
            ApiError::BadRequest {
                message: msg,
                param,
            }
        })?;
        let priority = match s.priority.as_deref() {
            None | Some("interactive") => Priority::Interactive,
            Some("batch") => Priority::Batch,
            Some("background") => Priority::Background,
            Some(other) => {
                return Err(ApiError::bad_param(
                    "priority",
                    format!("priority must be interactive, batch or background, got {other:?}"),
                ));
            }
        };
        Ok(Job {
            prompt,
            params,
            priority,
            stream: s.stream.unwrap_or(false),
            include_usage: s.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }

    fn submit(&self, job: &Job) -> Result<GenStream, ApiError> {
        self.engine
            .submit(GenRequest {
                prompt: job.prompt.clone(),
                params: job.params.clone(),
                priority: job.priority,
                timeout: None,
            })
            .map_err(|e| match e {
                SubmitError::Overloaded { retry_after_ms, .. } => ApiError::Overloaded {
                    message: e.to_string(),
                    retry_after_s: retry_after_ms.div_ceil(1000),
                },
                SubmitError::Invalid(e) => ApiError::bad(e.to_string()),
                SubmitError::Stopped => ApiError::Unavailable(e.to_string()),
            })
    }
}

fn messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].role"),
                    format!("unknown role {other:?} (expected system, user, assistant or tool)"),
                ));
            }
        };
        let content = match &m.content {
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_param(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content part of type {kind:?} is not supported (text only)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
            None if role == "assistant" => String::new(),
            None => {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].content"),
                    "content is required",
                ));
            }
        };
        let mut msg = ChatMessage::new(role, content);
        msg.name = m.name.clone();
        msg.tool_call_id = m.tool_call_id.clone();
        msg.tool_calls = m.tool_calls.clone();
        out.push(msg);
    }
    Ok(out)
}

pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    st.check_model(req.model.as_deref())?;
    if req
        .tools
        .as_ref()
        .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_param(
            "tools",
            "tool calling is not supported by this server yet (it needs constrained decoding)",
        ));
    }
    if req
        .tool_choice
        .as_ref()
        .is_some_and(|c| !c.is_null() && c.as_str().is_none_or(|s| s != "none" && s != "auto"))
    {
        return Err(ApiError::bad_param(
            "tool_choice",
            "tool calling is not supported by this server yet (it needs constrained decoding)",
        ));
    }
    if let Some(rf) = &req.response_format
        && rf
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
    {
        return Err(ApiError::bad_param(
            "response_format",
            "response_format other than text is not supported yet",
        ));
    }
    let msgs = messages(&req)?;
    let text = st.template.render(&msgs, None, true).map_err(|e| {
        ApiError::bad_param(
            "messages",
            format!("the chat template refused these messages: {e}"),
        )
    })?;
    let prompt = autoglm_engine::prompt_tokens(&st.tokenizer, &text);
    let job = st.job(prompt, &req.sampling)?;
    let stream = st.submit(&job)?;
    respond(&st, job, stream, true).await
}

pub(crate) async fn completions(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    st.check_model(req.model.as_deref())?;
    let text = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(ApiError::bad_param(
                "prompt",
                "prompt must be a string (or a list of one string)",
            ));
        }
    };
    if text.is_empty() {
        return Err(ApiError::bad_param("prompt", "prompt must not be empty"));
    }
    let prompt = autoglm_engine::prompt_tokens(&st.tokenizer, &text);
    let job = st.job(prompt, &req.sampling)?;
    let stream = st.submit(&job)?;
    respond(&st, job, stream, false).await
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // A cancelled generation only reaches a client that is still there when a deadline
        // passed; OpenAI has no better word.
        FinishReason::Cancelled => "stop",
    }
}

fn usage(s: &GenSummary) -> Usage {
    Usage {
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.completion_tokens,
        total_tokens: s.prompt_tokens + s.completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: s.cached_prompt_tokens,
        },
    }
}

async fn respond(
    st: &AppState,
    job: Job,
    mut stream: GenStream,
    chat: bool,
) -> Result<Response, ApiError> {
    let id = format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, stream.id());
    let created = unix_now();
    let model = st.model_name.clone();
    if job.stream {
        return Ok(sse(stream, id, created, model, chat, job.include_usage).into_response());
    }
    let mut text = String::new();
    loop {
        match stream.next().await {
            Some(GenEvent::Token { text: t, .. }) => text.push_str(&t),
            Some(GenEvent::Done(s)) => {
                let choice = if chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                           "finish_reason": finish_reason(s.finish)})
                } else {
                    json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(s.finish)})
                };
                let body = json!({
                    "id": id,
                    "object": if chat { "chat.completion" } else { "text_completion" },
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage(&s),
                });
                return Ok(axum::Json(body).into_response());
            }
            Some(GenEvent::Error(e)) => return Err(ApiError::bad(e)),
            None => return Err(ApiError::Unavailable("the engine stopped".into())),
        }
    }
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. If the client goes
/// away, the stream (and with it the request) is dropped and the engine frees its blocks.
fn sse(
    gen_stream: GenStream,
    id: String,
    created: u64,
    model: String,
    chat: bool,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    struct S {
        g: GenStream,
        phase: u8,
        usage: Option<Usage>,
    }
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choice: Value, usage: Option<&Usage>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = json!(u);
        }
        Event::default().data(v.to_string())
    };
    let delta = move |content: Option<&str>, role: bool, finish: Option<&str>| {
        if chat {
            let mut d = json!({});
            if role {
                d["role"] = json!("assistant");
                d["content"] = json!("");
            }
            if let Some(c) = content {
                d["content"] = json!(c);
            }
            json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        }
    };
    let state = S {
        g: gen_stream,
        phase: if chat { 0 } else { 1 },
        usage: None,
    };
    let events = futures_util::stream::unfold(state, move |mut s| {
        let chunk = chunk.clone();
        async move {
            loop {
                match s.phase {
                    0 => {
                        s.phase = 1;
                        return Some((Ok(chunk(delta(None, true, None), None)), s));
                    }
                    1 => match s.g.next().await {
                        Some(GenEvent::Token { text, .. }) if text.is_empty() => continue,
                        Some(GenEvent::Token { text, .. }) => {
                            return Some((Ok(chunk(delta(Some(&text), false, None), None)), s));
                        }
                        Some(GenEvent::Done(sum)) => {
                            s.usage = Some(usage(&sum));
                            s.phase = if include_usage { 2 } else { 3 };
                            let fin = finish_reason(sum.finish);
                            return Some((Ok(chunk(delta(None, false, Some(fin)), None)), s));
                        }
                        Some(GenEvent::Error(e)) => {
                            s.phase = 3;
                            let body = json!({"error": {"message": e, "type": "invalid_request_error", "param": null, "code": null}});
                            return Some((Ok(Event::default().data(body.to_string())), s));
                        }
                        None => s.phase = 3,
                    },
                    2 => {
                        s.phase = 3;
                        let u = s.usage.clone();
                        return Some((Ok(chunk(Value::Null, u.as_ref())), s));
                    }
                    3 => {
                        s.phase = 4;
                        return Some((Ok(Event::default().data("[DONE]")), s));
                    }
                    _ => return None,
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

pub(crate) async fn models(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": st.model_name, "object": "model", "created": st.started, "owned_by": "autoglm",
                  "context_length": st.context_length}],
    }))
}

pub(crate) async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let s = st.engine.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP autoglm_{name} {help}\n# TYPE autoglm_{name} {kind}\nautoglm_{name} {value}\n"
        ));
    };
    metric(
        "requests_in_flight",
        "gauge",
        "Requests accepted and not finished.",
        s.in_flight.to_string(),
    );
    metric(
        "queue_depth",
        "gauge",
        "Requests waiting to be scheduled.",
        s.waiting.to_string(),
    );
    metric(
        "running_sequences",
        "gauge",
        "Sequences holding KV blocks.",
        s.running.to_string(),
    );
    metric(
        "batch_size",
        "gauge",
        "Sequences in the last forward step.",
        s.last_batch.to_string(),
    );
    metric(
        "kv_blocks_total",
        "gauge",
        "KV cache blocks.",
        s.blocks_total.to_string(),
    );
    metric(
        "kv_blocks_used",
        "gauge",
        "KV cache blocks held by running sequences.",
        s.blocks_used.to_string(),
    );
    metric(
        "kv_blocks_cached",
        "gauge",
        "Free KV blocks still holding a cached prefix.",
        s.blocks_cached.to_string(),
    );
    metric(
        "prefix_cache_lookup_tokens_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        s.prefix_lookup_tokens.to_string(),
    );
    metric(
        "prefix_cache_hit_tokens_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        s.prefix_hit_tokens.to_string(),
    );
    let rate = if s.prefix_lookup_tokens == 0 {
        0.0
    } else {
        s.prefix_hit_tokens as f64 / s.prefix_lookup_tokens as f64
    };
    metric(
        "prefix_cache_hit_rate",
        "gauge",
        "Prefix-cache hit tokens over looked-up tokens.",
        format!("{rate:.4}"),
    );
    metric(
        "generated_tokens_total",
        "counter",
        "Tokens generated.",
        s.generated_tokens.to_string(),
    );
    metric(
        "prompt_tokens_computed_total",
        "counter",
        "Prompt tokens run through the model.",
        s.prompt_tokens.to_string(),
    );
    metric(
        "requests_refused_total",
        "counter",
        "Requests refused because the server was overloaded.",
        s.refused.to_string(),
    );
    metric(
        "engine_steps_total",
        "counter",
        "Forward steps run.",
        s.steps.to_string(),
    );
    metric(
        "preemptions_total",
        "counter",
        "Sequences preempted for lack of KV blocks.",
        s.preemptions.to_string(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
