//! OpenAI wire types: what clients send and what we answer. Only this crate knows them; requests
//! are validated here into engine types ([`crate::routes`]) so nothing past the boundary sees
//! JSON. Their `ToSchema` derives are the request schemas of the OpenAPI document
//! ([`crate::openapi`]); doc comments become its descriptions.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `stop` may be one string or a list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts of which we read the text ones.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct WireMessage {
    /// `system`, `developer` (read as system), `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An assistant turn's earlier tool calls, in OpenAI's shape.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by chat and text completions (OpenAI's plus a few common
/// extensions: top_k, min_p, repetition_penalty, priority).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Sampling {
    /// At least 1; capped by the room left in the context.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`; wins over it.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    /// Must be 1.
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Chat: `true` or `false`; completions: how many alternatives per token, 0 to 20.
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Chat: alternatives per token (0 to 20), with `logprobs: true`.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 20)]
    pub top_logprobs: Option<Value>,
    /// Extension: "interactive" (default), "batch" or "background".
    #[serde(default)]
    pub priority: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "default", "messages": [{"role": "user", "content": "Hi!"}],
                          "max_tokens": 1, "temperature": 0}))]
pub struct ChatRequest {
    /// The served model's name, or `default`.
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<WireMessage>,
    /// Function tools: `{"type": "function", "function": {"name", "description", "parameters"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "default", "prompt": "Once upon a time", "max_tokens": 1,
                          "temperature": 0}))]
pub struct CompletionRequest {
    /// The served model's name, or `default`.
    #[serde(default)]
    pub model: Option<String>,
    /// A string, or a list of one string.
    #[schema(schema_with = prompt_schema)]
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: Sampling,
}

fn prompt_schema() -> impl Into<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>> {
    use utoipa::PartialSchema;
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(String::schema())
        .item(<Vec<String>>::schema())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// OpenAI's error body: every 4xx and 5xx answer has this shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What is wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault (`messages[0].role`), if one is.
    pub param: Option<String>,
    /// For programs: `model_not_found`, `invalid_api_key`, `insufficient_scope`,
    /// `overloaded`, `body_too_large`, ...
    pub code: Option<&'static str>,
}
