//! The `tracing` spans of a task run, named and attributed after OpenTelemetry's GenAI
//! semantic conventions: `invoke_agent autoglm` for the task, `step {kind}` for a plan, a
//! subtask or the final answer, `chat {model}` for a model call and `execute_tool {tool}` for
//! a tool call, each carrying the task id, the step number (the subtask's, 0 for planning and
//! the answer) and the journal key. Only `tracing` is used here: whoever runs the agent decides
//! whether and where spans go (the CLI exports them by OTLP); without a subscriber they cost
//! next to nothing.
//!
//! Replayed calls of a resumed task get no span: a trace shows the work this run did.
//! Numbers are recorded as `i64`: the OpenTelemetry bridge turns `u64` fields into strings.

use autoglm_llm::{ChatRequest, ChatResponse, Finish, LlmClient, ToolCall, Usage};
use tracing::Span;
use tracing::field::Empty;

/// `gen_ai.agent.name` of every task span.
pub(crate) const AGENT_NAME: &str = "autoglm";

pub(crate) fn task(id: &str, tenant: &str, llm: &dyn LlmClient) -> Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {AGENT_NAME}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = AGENT_NAME,
        gen_ai.conversation.id = id,
        gen_ai.provider.name = llm.provider(),
        gen_ai.request.model = %llm.model(),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        autoglm.task.id = id,
        autoglm.tenant = tenant,
        autoglm.task.status = Empty,
    )
}

/// How the task ended, on its span.
pub(crate) fn task_ended(span: &Span, status: Result<(&str, Usage), &str>) {
    match status {
        Ok((status, usage)) => {
            span.record("autoglm.task.status", status);
            span.record("gen_ai.usage.input_tokens", usage.prompt_tokens as i64);
            span.record("gen_ai.usage.output_tokens", usage.completion_tokens as i64);
            if status == "failed" {
                failed(span, "task_failed");
            }
        }
        Err(why) => failed(span, why),
    }
}

/// A plan, a subtask (`n` is its number) or the final answer (`kind`), keyed as in the journal.
pub(crate) fn step(task_id: &str, kind: &str, n: usize, key: &str) -> Span {
    tracing::info_span!(
        "step",
        otel.name = %format_args!("step {kind}"),
        autoglm.task.id = task_id,
        autoglm.step = n as i64,
        autoglm.step.kind = kind,
        autoglm.step.key = key,
    )
}

/// A model call about to be made; [`chat_ended`] adds the reply.
pub(crate) fn chat(
    task_id: &str,
    key: &str,
    purpose: &str,
    step: usize,
    llm: &dyn LlmClient,
    req: &ChatRequest,
) -> Span {
    let model = llm.model();
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = llm.provider(),
        gen_ai.request.model = %model,
        gen_ai.request.max_tokens = req.max_tokens as i64,
        gen_ai.request.temperature = f64::from(req.temperature),
        gen_ai.request.seed = req.seed.map(|s| s as i64),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        error.type = Empty,
        autoglm.task.id = task_id,
        autoglm.step = step as i64,
        autoglm.step.key = key,
        autoglm.purpose = purpose,
        autoglm.tool_calls = Empty,
    )
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::Cancelled => "cancelled",
    }
}

pub(crate) fn chat_ended(span: &Span, resp: &ChatResponse) {
    let u = resp.usage;
    span.record("gen_ai.usage.input_tokens", u.prompt_tokens as i64);
    span.record("gen_ai.usage.output_tokens", u.completion_tokens as i64);
    if u.cached_tokens > 0 {
        span.record(
            "gen_ai.usage.cache_read.input_tokens",
            u.cached_tokens as i64,
        );
    }
    // One reason per choice; the agent asks for one choice. A string array in OpenTelemetry,
    // which `tracing` fields cannot hold: exporters split this comma-separated form.
    span.record("gen_ai.response.finish_reasons", finish_reason(resp.finish));
    span.record("autoglm.tool_calls", resp.tool_calls.len() as i64);
}

pub(crate) fn tool(
    task_id: &str,
    key: &str,
    step: usize,
    call: &ToolCall,
    description: Option<&str>,
) -> Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {}", call.name),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %call.name,
        gen_ai.tool.call.id = %call.id,
        gen_ai.tool.type = "function",
        gen_ai.tool.description = description,
        error.type = Empty,
        autoglm.task.id = task_id,
        autoglm.step = step as i64,
        autoglm.step.key = key,
        autoglm.tool.denied = Empty,
    )
}

/// Marks the operation of `span` as failed with `error_type` (low-cardinality: "cancelled",
/// "model_error", "tool_error", ...).
pub(crate) fn failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}
