//! Request handlers: parse and validate the wire request into an engine request (TGI's
//! validated-request boundary), submit it, and answer as JSON or as a server-sent event stream.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use autoglm_engine::{
    ChatTurn, Constraint, EngineError, GenRequest, GenStream, Grammar, HistogramSnapshot, Priority,
    SamplingParams, SubmitError, ToolChoice, ToolSpec, prepare_chat, validate_tools,
};
use autoglm_tokenizer::ChatMessage;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::answer::{AnswerSpec, respond};
use crate::error::ApiError;
#[allow(unused_imports)] // named by the `utoipa::path` attributes
use crate::schemas::{ChatCompletion, Health, ModelList, TextCompletion};
use crate::wire::{ChatRequest, CompletionRequest, Content, Sampling};

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
    constraint: Option<Constraint>,
    /// Tool calls are to be read out of the answer.
    tool_calls: bool,
}

impl AppState {
    pub(crate) fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None | Some("") | Some("default") => Ok(()),
            Some(m) if m == self.model_name => Ok(()),
            Some(m) => Err(ApiError::UnknownModel(m.to_string())),
        }
    }

    fn job(&self, prompt: Vec<u32>, s: &Sampling, chat: bool) -> Result<Job, ApiError> {
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
        let logprobs = logprobs(s, chat)?;
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
            logprobs,
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
            constraint: None,
            tool_calls: false,
        })
    }

    fn submit(&self, job: &mut Job) -> Result<GenStream, ApiError> {
        self.engine
            .submit(GenRequest {
                prompt: std::mem::take(&mut job.prompt),
                params: job.params.clone(),
                priority: job.priority,
                timeout: None,
                constraint: job.constraint.take(),
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
        msg.tool_calls = match &m.tool_calls {
            None | Some(Value::Null) => None,
            Some(v @ Value::Array(_)) => Some(v.clone()),
            Some(_) => {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].tool_calls"),
                    "tool_calls must be a list",
                ));
            }
        };
        out.push(msg);
    }
    Ok(out)
}

/// OpenAI's chat completions: streamed as server-sent events with `"stream": true`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    operation_id = "createChatCompletion",
    request_body = ChatRequest,
    responses((status = 200, description = "The answer (a JSON object, or with `stream` an \
        event stream of `chat.completion.chunk` objects ending in `data: [DONE]`)",
        content((ChatCompletion = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    st.check_model(req.model.as_deref())?;
    let tools = tool_specs(req.tools.as_ref())?;
    let choice = tool_choice(req.tool_choice.as_ref(), !tools.is_empty())?;
    validate_tools(&tools, &choice).map_err(|e| {
        let param = if e.to_string().contains("tool_choice") {
            "tool_choice"
        } else {
            "tools"
        };
        ApiError::bad_param(param, e.to_string().replace("invalid constraint: ", ""))
    })?;
    let answer_schema = response_schema(req.response_format.as_ref())?;
    let msgs = messages(&req)?;
    let prepared = prepare_chat(
        &st.template,
        &st.tokenizer,
        ChatTurn {
            messages: &msgs,
            tools: &tools,
            tool_choice: &choice,
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            answer_schema: answer_schema.as_ref(),
        },
    )
    .map_err(|e| match e {
        EngineError::Tokenizer(e) => ApiError::bad_param(
            "messages",
            format!("the chat template refused these messages: {e}"),
        ),
        e => ApiError::bad_param("tools", e.to_string()),
    })?;
    let mut job = st.job(prepared.prompt, &req.sampling, true)?;
    if let Some(grammar) = prepared.grammar {
        let param = if tools.is_empty() || choice == ToolChoice::None {
            "response_format"
        } else {
            "tools"
        };
        job.constraint = Some(compile(&st, grammar, param).await?);
    }
    job.tool_calls = prepared.expects_tool_calls;
    let stream = st.submit(&mut job)?;
    respond(answer_spec(&st, &job, &stream, true), stream).await
}

/// Compiles off the async runtime: a large schema, or the first grammar (which builds the
/// token trie), takes milliseconds.
async fn compile(st: &Arc<AppState>, g: Grammar, param: &str) -> Result<Constraint, ApiError> {
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || st2.engine.compile(&g))
        .await
        .map_err(|e| ApiError::Internal(format!("grammar compilation failed: {e}")))?
        .map_err(|e| ApiError::bad_param(param, e.to_string()))
}

fn answer_spec(st: &AppState, job: &Job, stream: &GenStream, chat: bool) -> AnswerSpec {
    AnswerSpec {
        id: format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, stream.id()),
        created: unix_now(),
        model: st.model_name.clone(),
        chat,
        stream: job.stream,
        include_usage: job.include_usage,
        tool_calls: job.tool_calls,
        logprobs: job.params.logprobs.is_some(),
        tokenizer: st.tokenizer.clone(),
    }
}

/// `logprobs`/`top_logprobs` into the number of alternatives to report (None = no logprobs).
/// Chat: `logprobs: true` with `top_logprobs` 0..=20; completions: `logprobs` 0..=20.
fn logprobs(s: &Sampling, chat: bool) -> Result<Option<usize>, ApiError> {
    let top = match &s.top_logprobs {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n <= 20 => Some(n as usize),
            _ => {
                return Err(ApiError::bad_param(
                    "top_logprobs",
                    format!("top_logprobs must be an integer from 0 to 20, got {v}"),
                ));
            }
        },
    };
    let lp = match (&s.logprobs, chat) {
        (None | Some(Value::Null), _) => None,
        (Some(Value::Bool(b)), true) => b.then_some(top.unwrap_or(0)),
        (Some(v), false) if v.as_u64().is_some_and(|n| n <= 20) => v.as_u64().map(|n| n as usize),
        (Some(v), true) => {
            return Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be true or false, got {v}"),
            ));
        }
        (Some(v), false) => {
            return Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be an integer from 0 to 20, got {v}"),
            ));
        }
    };
    if chat && top.is_some() && lp.is_none() {
        return Err(ApiError::bad_param(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        ));
    }
    Ok(lp)
}

/// OpenAI's `tools`: a list of `{"type": "function", "function": {name, description,
/// parameters}}`.
fn tool_specs(v: Option<&Value>) -> Result<Vec<ToolSpec>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad_param("tools", "tools must be a list")),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let bad = |m: &str| ApiError::bad_param(&format!("tools[{i}]"), m.to_string());
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad("only tools of type \"function\" are supported"));
            }
            let f = t
                .get("function")
                .ok_or_else(|| bad("a function tool needs a \"function\" object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("function.name is required"))?;
            Ok(ToolSpec {
                name: name.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters: f.get("parameters").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

fn tool_choice(v: Option<&Value>, have_tools: bool) -> Result<ToolChoice, ApiError> {
    let bad = |v: &Value| {
        ApiError::bad_param(
            "tool_choice",
            format!(
                "tool_choice must be \"none\", \"auto\", \"required\" or \
                 {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {v}"
            ),
        )
    };
    Ok(match v {
        None | Some(Value::Null) if have_tools => ToolChoice::Auto,
        None | Some(Value::Null) => ToolChoice::None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad(v.unwrap_or(&Value::Null))),
        },
        Some(o @ Value::Object(_)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(n) if o.get("type").and_then(Value::as_str) == Some("function") => {
                ToolChoice::Named(n.to_string())
            }
            _ => return Err(bad(o)),
        },
        Some(other) => return Err(bad(other)),
    })
}

/// `response_format` into the schema a JSON answer must match (None = free text).
fn response_schema(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(rf) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |m: String| ApiError::bad_param("response_format", m);
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad("json_schema.schema is required".into()))?;
            if !schema.is_object() {
                return Err(bad("json_schema.schema must be a JSON Schema object".into()));
            }
            Ok(Some(schema.clone()))
        }
        other => Err(bad(format!(
            "response_format.type must be text, json_object or json_schema, got {}",
            other.map_or("nothing".to_string(), |t| format!("{t:?}"))
        ))),
    }
}

/// OpenAI's (legacy) text completions: streamed as server-sent events with `"stream": true`.
#[utoipa::path(post, path = "/v1/completions", tag = "openai", operation_id = "createCompletion",
    request_body = CompletionRequest,
    responses((status = 200, description = "The completion (a JSON object, or with `stream` an \
        event stream ending in `data: [DONE]`)",
        content((TextCompletion = "application/json"), (String = "text/event-stream")))))]
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
    let mut job = st.job(prompt, &req.sampling, false)?;
    let stream = st.submit(&mut job)?;
    respond(answer_spec(&st, &job, &stream, false), stream).await
}

/// The one model served.
#[utoipa::path(get, path = "/v1/models", tag = "openai", operation_id = "listModels",
    responses((status = 200, description = "The model list", body = ModelList)))]
pub(crate) async fn models(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": st.model_name, "object": "model", "created": st.started, "owned_by": "autoglm",
                  "context_length": st.context_length}],
    }))
}

/// Liveness; needs no key.
#[utoipa::path(get, path = "/health", tag = "service", operation_id = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub(crate) async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Prometheus metrics of the engine and the tasks.
#[utoipa::path(get, path = "/metrics", tag = "service", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain", body = String)))]
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
    metric(
        "generation_tokens_per_second",
        "gauge",
        "Tokens generated per second over the last five seconds.",
        format!("{:.1}", s.tokens_per_second),
    );
    metric(
        "constrained_tokens_total",
        "counter",
        "Tokens generated under a grammar (JSON schema, tool calls).",
        s.masked_tokens.to_string(),
    );
    metric(
        "grammar_mask_seconds_total",
        "counter",
        "Time spent computing grammar masks.",
        format!("{:.6}", s.mask_seconds),
    );
    histogram(
        &mut out,
        "time_to_first_token_seconds",
        "Submission to first generated token.",
        &s.ttft,
    );
    histogram(
        &mut out,
        "inter_token_latency_seconds",
        "Time between consecutive tokens of one sequence.",
        &s.itl,
    );
    st.tasks.metrics.render(&mut out, st.tasks.queued());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP autoglm_{name} {help}\n# TYPE autoglm_{name} histogram"
    );
    for (b, c) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "autoglm_{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "autoglm_{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "autoglm_{name}_sum {:.6}", h.sum_seconds);
    let _ = writeln!(out, "autoglm_{name}_count {}", h.count());
}
