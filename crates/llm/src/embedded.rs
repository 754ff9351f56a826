//! The in-process engine as an [`LlmClient`]. Clones share one serving engine, so agents
//! running side by side are batched into the same forward steps, and their shared prompt
//! prefixes (system prompt, tool list) come from the prefix cache.

use autoglm_engine::{
    ChatTurn, EngineHandle, FinishReason, GenEvent, GenRequest, Priority, SamplingParams,
    ToolChoice as EngineChoice, ToolSpec, parse_tool_calls, prepare_chat,
};
use autoglm_tokenizer::ChatMessage;
use serde_json::{Value, json};

use crate::{
    BoxFuture, Capabilities, ChatRequest, ChatResponse, DeltaSink, Finish, LlmClient, LlmError,
    Message, Role, ToolCall, ToolChoice, Usage,
};

#[derive(Clone)]
pub struct EmbeddedClient {
    engine: EngineHandle,
    priority: Priority,
}

impl EmbeddedClient {
    pub fn new(engine: EngineHandle) -> EmbeddedClient {
        EmbeddedClient {
            engine,
            priority: Priority::Interactive,
        }
    }

    /// Requests from this client are scheduled in this class (background agents, say).
    pub fn with_priority(mut self, priority: Priority) -> EmbeddedClient {
        self.priority = priority;
        self
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

/// Our messages in the template's terms; assistant calls in OpenAI's shape, which
/// `messages_with_tools` writes back in the model's call format.
fn template_messages(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| {
            let mut c = ChatMessage::new(m.role.as_str(), m.content.clone());
            if m.role == Role::Assistant && !m.tool_calls.is_empty() {
                c.tool_calls = Some(Value::Array(
                    m.tool_calls
                        .iter()
                        .map(|t| {
                            json!({"id": t.id, "type": "function", "function": {
                                "name": t.name, "arguments": t.arguments.to_string()}})
                        })
                        .collect(),
                ));
            }
            c.tool_call_id = m.tool_call_id.clone();
            c
        })
        .collect()
}

fn engine_error(e: impl std::fmt::Display) -> LlmError {
    LlmError::Engine(e.to_string())
}

impl LlmClient for EmbeddedClient {
    fn describe(&self) -> String {
        format!("embedded {}", self.engine.model_name())
    }

    fn model(&self) -> String {
        self.engine.model_name().to_string()
    }

    /// The engine in this process.
    fn provider(&self) -> &'static str {
        "autoglm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { constrained: true }
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let tools: Vec<ToolSpec> = req
                .tools
                .iter()
                .map(|t| ToolSpec {
                    name: t.name.clone(),
                    description: Some(t.description.clone()),
                    parameters: t.parameters.clone(),
                })
                .collect();
            let choice = match &req.tool_choice {
                _ if tools.is_empty() => EngineChoice::None,
                ToolChoice::None => EngineChoice::None,
                ToolChoice::Auto => EngineChoice::Auto,
                ToolChoice::Required => EngineChoice::Required,
                ToolChoice::Function(n) => EngineChoice::Named(n.clone()),
            };
            let messages = template_messages(&req.messages);
            let prepared = prepare_chat(
                self.engine.template(),
                self.engine.tokenizer(),
                ChatTurn {
                    messages: &messages,
                    tools: &tools,
                    tool_choice: &choice,
                    parallel_tool_calls: true,
                    answer_schema: req.json_schema.as_ref(),
                },
            )
            .map_err(|e| LlmError::BadRequest(e.to_string()))?;
            let room = self
                .engine
                .context_length()
                .saturating_sub(prepared.prompt.len());
            if room == 0 {
                return Err(LlmError::BadRequest(format!(
                    "the prompt is {} tokens, the whole context of the model",
                    prepared.prompt.len()
                )));
            }
            let constraint = match prepared.grammar {
                None => None,
                Some(g) => {
                    // Compiling is CPU work of milliseconds; keep it off the async workers.
                    let engine = self.engine.clone();
                    let c = tokio::task::spawn_blocking(move || engine.compile(&g))
                        .await
                        .map_err(engine_error)?
                        .map_err(|e| LlmError::BadRequest(e.to_string()))?;
                    Some(c)
                }
            };
            let mut params = if req.temperature <= 0.0 {
                SamplingParams::greedy(req.max_tokens.clamp(1, room))
            } else {
                SamplingParams {
                    temperature: req.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    max_tokens: req.max_tokens.clamp(1, room),
                    ..SamplingParams::default()
                }
            };
            params.seed = req.seed;
            params.stop = req.stop.clone();
            let mut stream = self
                .engine
                .submit(GenRequest {
                    prompt: prepared.prompt,
                    params,
                    priority: self.priority,
                    timeout: None,
                    constraint,
                })
                .map_err(|e| match e {
                    autoglm_engine::SubmitError::Overloaded { .. } => LlmError::Overloaded {
                        attempts: 1,
                        message: e.to_string(),
                    },
                    e => LlmError::BadRequest(e.to_string()),
                })?;
            let mut text = String::new();
            loop {
                match stream.next().await {
                    Some(GenEvent::Token { text: t, .. }) => {
                        if let Some(d) = &deltas
                            && !t.is_empty()
                        {
                            let _ = d.send(t.clone());
                        }
                        text.push_str(&t);
                    }
                    Some(GenEvent::Done(s)) => {
                        let (content, calls) = if prepared.expects_tool_calls {
                            parse_tool_calls(&text)
                        } else {
                            (text, Vec::new())
                        };
                        let tool_calls: Vec<ToolCall> = calls
                            .into_iter()
                            .enumerate()
                            .map(|(i, c)| ToolCall {
                                id: format!("call_{}_{i}", stream.id()),
                                name: c.name,
                                arguments: c.arguments,
                            })
                            .collect();
                        let finish = match s.finish {
                            FinishReason::Stop if !tool_calls.is_empty() => Finish::ToolCalls,
                            FinishReason::Stop => Finish::Stop,
                            FinishReason::Length => Finish::Length,
                            FinishReason::Cancelled => Finish::Cancelled,
                        };
                        return Ok(ChatResponse {
                            content,
                            tool_calls,
                            finish,
                            usage: Usage {
                                prompt_tokens: s.prompt_tokens,
                                completion_tokens: s.completion_tokens,
                                cached_tokens: s.cached_prompt_tokens,
                            },
                        });
                    }
                    Some(GenEvent::Error(e)) => return Err(LlmError::Engine(e)),
                    None => return Err(LlmError::Engine("the engine stopped".into())),
                }
            }
        })
    }
}
