//! The shapes of the JSON answers that handlers build with `json!` (OpenAI's completions, the
//! task object, traces, the audit log), as schemas for the OpenAPI document ([`crate::openapi`]).
//! Nothing constructs these types; `tests/openapi.rs` checks real answers against the schemas
//! derived from them, so a handler that changes its answer without changing its schema here
//! fails there.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

use crate::wire::Usage;

/// `POST /v1/chat/completions` without `stream`.
#[derive(ToSchema)]
pub(crate) struct ChatCompletion {
    /// `chatcmpl-…`
    id: String,
    /// `chat.completion`
    object: String,
    /// Unix seconds.
    created: u64,
    model: String,
    /// Always one.
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(ToSchema)]
pub(crate) struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    /// `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` when asked for, else null.
    #[schema(value_type = Option<Object>)]
    logprobs: Value,
    /// `stop`, `length` or `tool_calls`.
    finish_reason: String,
}

#[derive(ToSchema)]
pub(crate) struct AssistantMessage {
    /// `assistant`
    role: String,
    /// Null when the answer is only tool calls.
    content: Option<String>,
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(ToSchema)]
pub(crate) struct ToolCall {
    index: u32,
    id: String,
    /// `function`
    #[schema(rename = "type")]
    kind: String,
    function: FunctionCall,
}

#[derive(ToSchema)]
pub(crate) struct FunctionCall {
    name: String,
    /// The arguments as a JSON string, matching the tool's `parameters`.
    arguments: String,
}

/// `POST /v1/completions` without `stream`.
#[derive(ToSchema)]
pub(crate) struct TextCompletion {
    /// `cmpl-…`
    id: String,
    /// `text_completion`
    object: String,
    created: u64,
    model: String,
    choices: Vec<TextChoice>,
    usage: Usage,
}

#[derive(ToSchema)]
pub(crate) struct TextChoice {
    index: u32,
    text: String,
    /// `{"tokens", "token_logprobs", "top_logprobs"}` when asked for, else null.
    #[schema(value_type = Option<Object>)]
    logprobs: Value,
    /// `stop` or `length`.
    finish_reason: String,
}

#[derive(ToSchema)]
pub(crate) struct ModelList {
    /// `list`
    object: String,
    data: Vec<ModelCard>,
}

#[derive(ToSchema)]
pub(crate) struct ModelCard {
    id: String,
    /// `model`
    object: String,
    created: u64,
    owned_by: String,
    /// Tokens.
    context_length: u64,
}

#[derive(ToSchema)]
pub(crate) struct Health {
    /// `ok`
    status: String,
}

/// An agent task.
#[derive(ToSchema)]
pub(crate) struct Task {
    id: String,
    /// `task`
    object: String,
    /// `queued`, `running`, `waiting_approval`, `succeeded`, `failed`, `budget_exhausted` or
    /// `cancelled`.
    status: String,
    goal: String,
    /// Unix seconds.
    created_at: i64,
    updated_at: i64,
    /// `interactive`, `batch` or `background`.
    priority: String,
    /// The tools offered (null: all).
    #[schema(value_type = Option<Vec<String>>)]
    tools: Value,
    /// The tools that wait for approval.
    #[schema(value_type = Option<Vec<String>>)]
    ask: Value,
    #[schema(value_type = Option<u64>)]
    max_steps: Value,
    /// The latest plan: `[{"id", "task", "depends_on"}]`.
    #[schema(value_type = Vec<Object>)]
    plan: Value,
    answer: Option<String>,
    usage: TaskUsage,
    /// Model calls so far.
    steps: u64,
    tool_calls: u64,
    pending_approvals: Vec<PendingApproval>,
    /// Why a failed or budget-exhausted task ended.
    error: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct TaskUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    total_tokens: u64,
}

/// A tool call waiting for a person's decision (`POST /v1/tasks/{id}/approvals/{n}`).
#[derive(ToSchema)]
pub(crate) struct PendingApproval {
    n: u64,
    tool: String,
    #[schema(value_type = Object)]
    arguments: Value,
}

#[derive(ToSchema)]
pub(crate) struct TaskList {
    /// `list`
    object: String,
    /// Newest first.
    data: Vec<Task>,
    /// The `before` cursor of the next page; null on the last.
    next: Option<String>,
}

/// The trace of a task, as `autoglm trace --json` prints it.
#[derive(ToSchema)]
pub(crate) struct Trace {
    task_id: String,
    status: String,
    reason: Option<String>,
    answer: Option<String>,
    /// The journal's records.
    #[schema(value_type = Vec<Object>)]
    steps: Value,
    #[schema(value_type = Object)]
    usage: Value,
    /// Records nested by their place in the task: `{"name", "records", "children"}`.
    #[schema(value_type = Object)]
    tree: Value,
}

#[derive(ToSchema)]
pub(crate) struct AuditList {
    /// `list`
    object: String,
    /// Newest first.
    data: Vec<AuditRow>,
}

/// Who did what, when.
#[derive(ToSchema)]
pub(crate) struct AuditRow {
    id: i64,
    /// Unix milliseconds.
    at_ms: i64,
    /// Null for a caller that could not be identified.
    tenant: Option<String>,
    key_id: Option<String>,
    /// `POST /v1/tasks`, `keys.create`, ...
    action: String,
    target: Option<String>,
    status: Option<u16>,
    /// `ok`, `refused` or `error`.
    outcome: String,
    #[schema(value_type = Object)]
    detail: Value,
}

/// `GET /v1/engine`.
#[derive(ToSchema)]
pub(crate) struct EngineLoad {
    /// `engine`
    object: String,
    model: String,
    context_length: u64,
    requests_in_flight: u64,
    queue_depth: u64,
    running_sequences: u64,
    /// Sequences in the last step.
    batch_size: u64,
    /// `{"total", "used", "cached"}` blocks.
    #[schema(value_type = Object)]
    kv_blocks: Value,
    /// Used blocks over total, 0..1.
    kv_cache_use: f64,
    /// `{"lookup_tokens", "hit_tokens", "hit_rate"}`.
    #[schema(value_type = Object)]
    prefix_cache: Value,
    tokens_per_second: f64,
    generated_tokens: u64,
    prompt_tokens: u64,
    engine_steps: u64,
    preemptions: u64,
    requests_refused: u64,
    /// `{"queued", "running"}` tasks.
    #[schema(value_type = Object)]
    tasks: Value,
    /// `{"interval_s", "points": [{"at", "tokens_per_second", "prompt_tokens_per_second",
    /// "prefix_cache_hit_rate", "running", "waiting", "kv_blocks_used"}]}`.
    #[schema(value_type = Object)]
    history: Value,
}

/// `GET /v1/tools`.
#[derive(ToSchema)]
pub(crate) struct ToolList {
    /// `list`
    object: String,
    data: Vec<ToolName>,
}

#[derive(ToSchema)]
pub(crate) struct ToolName {
    /// `tool`
    object: String,
    name: String,
}
