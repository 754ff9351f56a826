//! One interface to language models, [`LlmClient`], with three backends:
//!
//! - [`EmbeddedClient`]: the in-process serving engine. Every client clone shares the engine,
//!   so concurrent agents batch together; tool calls and JSON answers are constrained by
//!   grammar and always parse.
//! - [`OpenAiClient`]: any OpenAI-compatible server (ours, vLLM, llama.cpp's, Ollama, hosted
//!   APIs) over HTTP, streaming, with timeouts and retries with backoff on 429 and 5xx.
//! - [`ScriptedClient`]: replays recorded replies in order and records the requests it got —
//!   for tests, and for replaying a past run.
//!
//! The agent depends on this trait, never on the engine or on HTTP.

mod embedded;
mod openai;
mod scripted;
mod types;

use std::future::Future;
use std::pin::Pin;

pub use embedded::EmbeddedClient;
pub use openai::{OpenAiClient, OpenAiConfig};
pub use scripted::ScriptedClient;
pub use types::{
    ChatRequest, ChatResponse, Finish, Message, Role, ToolCall, ToolChoice, ToolDef, Usage,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the request was refused: {0}")]
    BadRequest(String),
    #[error("the backend is overloaded (HTTP 429) after {attempts} attempts: {message}")]
    Overloaded { attempts: usize, message: String },
    #[error("HTTP {status} from the backend after {attempts} attempts: {message}")]
    Server {
        status: u16,
        attempts: usize,
        message: String,
    },
    #[error("cannot reach the backend after {attempts} attempts: {message}")]
    Transport { attempts: usize, message: String },
    #[error("the backend's reply makes no sense: {0}")]
    InvalidReply(String),
    #[error("engine: {0}")]
    Engine(String),
    #[error("the script has no reply left for request {0}")]
    ScriptExhausted(usize),
}

impl LlmError {
    /// Worth trying the same request again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LlmError::Overloaded { .. } | LlmError::Server { .. } | LlmError::Transport { .. }
        )
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives text as it is generated (for live views); may be ignored by a backend.
pub type DeltaSink = tokio::sync::mpsc::UnboundedSender<String>;

/// What a backend can promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Tool calls and JSON answers are guaranteed to match their schemas.
    pub constrained: bool,
}

pub trait LlmClient: Send + Sync {
    /// For traces and logs, e.g. "embedded smollm2-135m".
    fn describe(&self) -> String;

    /// The model's name as traces report it (`gen_ai.request.model`).
    fn model(&self) -> String {
        self.describe()
    }

    /// Who serves the model, as traces report it (`gen_ai.provider.name`).
    fn provider(&self) -> &'static str {
        "unknown"
    }

    fn capabilities(&self) -> Capabilities;

    /// Completes one chat turn. Text is sent to `deltas` as it arrives when given.
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
}
