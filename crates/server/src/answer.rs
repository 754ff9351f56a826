//! Turning a generation stream into OpenAI's answer: one JSON body, or server-sent event chunks
//! ending with `data: [DONE]`. Tool calls are read out of the generated text (they are streamed
//! as one `tool_calls` delta once complete, since a half-written call is of no use to a client);
//! log-probabilities ride on the chunk that carries their text.

use std::collections::VecDeque;
use std::convert::Infallible;

use autoglm_engine::{
    FinishReason, GenEvent, GenStream, GenSummary, TokenLogprob, ToolCall, compact_json,
    parse_tool_calls,
};
use autoglm_tokenizer::Tokenizer;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

use crate::error::ApiError;
use crate::wire::{PromptTokensDetails, Usage};

/// How to answer one validated request.
pub(crate) struct AnswerSpec {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Read tool calls out of the answer.
    pub tool_calls: bool,
    /// Report log-probabilities (the count of alternatives is in the sampling parameters).
    pub logprobs: bool,
    pub tokenizer: Arc<Tokenizer>,
}

fn finish_reason(f: FinishReason, calls: bool) -> &'static str {
    match f {
        FinishReason::Stop if calls => "tool_calls",
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

fn tool_calls_json(id: &str, calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "id": format!("call_{id}_{i}"), "type": "function",
                   "function": {"name": c.name, "arguments": compact_json(&c.arguments)}})
        })
        .collect()
}

/// A token's text, its bytes (a token may end mid-character) and its log-probability.
struct Piece {
    text: String,
    bytes: Vec<u8>,
    logprob: f32,
}

impl Piece {
    fn chat_json(&self) -> Value {
        json!({"token": self.text, "logprob": self.logprob, "bytes": self.bytes})
    }
}

/// Log-probability entries of generated tokens, rendered for chat or text completions.
struct Logprobs {
    tokenizer: Arc<Tokenizer>,
    chat: bool,
    /// Each generated token and its best alternatives.
    items: Vec<(Piece, Vec<Piece>)>,
}

impl Logprobs {
    fn push(&mut self, id: u32, lp: &TokenLogprob) {
        let piece = |t: u32, logprob: f32| {
            let bytes = self.tokenizer.token_bytes(t, true).into_owned();
            Piece {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                bytes,
                logprob,
            }
        };
        let top = lp.top.iter().map(|&(t, l)| piece(t, l)).collect();
        self.items.push((piece(id, lp.logprob), top));
    }

    /// Renders and clears what has accumulated.
    fn take(&mut self) -> Value {
        let items = std::mem::take(&mut self.items);
        if self.chat {
            let content: Vec<Value> = items
                .into_iter()
                .map(|(p, top)| {
                    let mut e = p.chat_json();
                    e["top_logprobs"] = top.iter().map(Piece::chat_json).collect();
                    e
                })
                .collect();
            json!({"content": content})
        } else {
            let mut tokens = Vec::new();
            let mut lps = Vec::new();
            let mut tops = Vec::new();
            for (p, top) in items {
                tokens.push(json!(p.text));
                lps.push(json!(p.logprob));
                let m: serde_json::Map<String, Value> = top
                    .into_iter()
                    .map(|t| (t.text, json!(t.logprob)))
                    .collect();
                tops.push(Value::Object(m));
            }
            json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops})
        }
    }
}

pub(crate) async fn respond(spec: AnswerSpec, stream: GenStream) -> Result<Response, ApiError> {
    if spec.stream {
        return Ok(sse(spec, stream).into_response());
    }
    answer_json(spec, stream).await
}

async fn answer_json(spec: AnswerSpec, mut stream: GenStream) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut lps = Logprobs {
        tokenizer: spec.tokenizer.clone(),
        chat: spec.chat,
        items: Vec::new(),
    };
    loop {
        match stream.next().await {
            Some(GenEvent::Token {
                id,
                text: t,
                logprob,
            }) => {
                text.push_str(&t);
                if let Some(lp) = &logprob {
                    lps.push(id, lp);
                }
            }
            Some(GenEvent::Done(s)) => {
                let logprobs = if spec.logprobs {
                    lps.take()
                } else {
                    Value::Null
                };
                let choice = if spec.chat {
                    let (content, calls) = if spec.tool_calls {
                        parse_tool_calls(&text)
                    } else {
                        (text, Vec::new())
                    };
                    let mut message = json!({"role": "assistant", "content": content});
                    if !calls.is_empty() {
                        if content.is_empty() {
                            message["content"] = Value::Null;
                        }
                        message["tool_calls"] = tool_calls_json(&spec.id, &calls);
                    }
                    json!({"index": 0, "message": message, "logprobs": logprobs,
                           "finish_reason": finish_reason(s.finish, !calls.is_empty())})
                } else {
                    json!({"index": 0, "text": text, "logprobs": logprobs,
                           "finish_reason": finish_reason(s.finish, false)})
                };
                let body = json!({
                    "id": spec.id,
                    "object": if spec.chat { "chat.completion" } else { "text_completion" },
                    "created": spec.created,
                    "model": spec.model,
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

/// Whether streamed text is plain content or (possibly) a tool call being written.
#[derive(PartialEq)]
enum Mode {
    /// Nothing but whitespace seen yet, and tool calls are possible.
    Undecided,
    Text,
    /// Began with `<`: held back until the end, then parsed.
    Calls,
}

struct SseState {
    spec: AnswerSpec,
    gen_stream: GenStream,
    mode: Mode,
    held: String,
    lps: Logprobs,
    out: VecDeque<Event>,
    done: bool,
}

impl SseState {
    fn chunk(&self, choice: Value, usage: Option<&Usage>) -> Event {
        let object = if self.spec.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({"id": self.spec.id, "object": object, "created": self.spec.created,
                           "model": self.spec.model, "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = json!(u);
        }
        Event::default().data(v.to_string())
    }

    /// A chunk carrying `delta` (chat) or text (completions), with any logprobs gathered.
    fn delta(&mut self, delta: Value, finish: Option<&str>) -> Event {
        let logprobs = if self.spec.logprobs && !self.lps.items.is_empty() {
            self.lps.take()
        } else {
            Value::Null
        };
        let choice = if self.spec.chat {
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        } else {
            let text = delta.get("content").cloned().unwrap_or(json!(""));
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
        };
        self.chunk(choice, None)
    }

    fn text(&mut self, t: &str) {
        if !t.is_empty() {
            let e = self.delta(json!({"content": t}), None);
            self.out.push_back(e);
        }
    }

    /// Handles one engine event, queueing the chunks it produces.
    fn on_event(&mut self, ev: Option<GenEvent>) {
        match ev {
            Some(GenEvent::Token { id, text, logprob }) => {
                if let Some(lp) = &logprob {
                    self.lps.push(id, lp);
                }
                match self.mode {
                    Mode::Text => self.text(&text),
                    Mode::Calls => self.held.push_str(&text),
                    Mode::Undecided => {
                        self.held.push_str(&text);
                        let t = self.held.trim_start();
                        if t.starts_with('<') {
                            self.mode = Mode::Calls;
                        } else if !t.is_empty() {
                            self.mode = Mode::Text;
                            let held = std::mem::take(&mut self.held);
                            self.text(&held);
                        }
                    }
                }
            }
            Some(GenEvent::Done(sum)) => {
                let held = std::mem::take(&mut self.held);
                let (content, calls) = if self.mode == Mode::Text {
                    (held, Vec::new())
                } else {
                    parse_tool_calls(&held)
                };
                if calls.is_empty() {
                    self.text(&content);
                } else {
                    let mut d = json!({"tool_calls": tool_calls_json(&self.spec.id, &calls)});
                    if !content.is_empty() {
                        d["content"] = json!(content);
                    }
                    let e = self.delta(d, None);
                    self.out.push_back(e);
                }
                let fin = finish_reason(sum.finish, !calls.is_empty());
                let e = self.delta(json!({}), Some(fin));
                self.out.push_back(e);
                if self.spec.include_usage {
                    let e = self.chunk(Value::Null, Some(&usage(&sum)));
                    self.out.push_back(e);
                }
                self.finish();
            }
            Some(GenEvent::Error(e)) => {
                let body = json!({"error": {"message": e, "type": "invalid_request_error",
                                            "param": null, "code": null}});
                self.out.push_back(Event::default().data(body.to_string()));
                self.finish();
            }
            None => self.finish(),
        }
    }

    fn finish(&mut self) {
        self.out.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

/// Server-sent events in OpenAI's chunk format. If the client goes away, the stream (and with it
/// the request) is dropped and the engine frees its blocks.
fn sse(
    spec: AnswerSpec,
    gen_stream: GenStream,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut st = SseState {
        mode: if spec.tool_calls && spec.chat {
            Mode::Undecided
        } else {
            Mode::Text
        },
        lps: Logprobs {
            tokenizer: spec.tokenizer.clone(),
            chat: spec.chat,
            items: Vec::new(),
        },
        spec,
        gen_stream,
        held: String::new(),
        out: VecDeque::new(),
        done: false,
    };
    if st.spec.chat {
        let e = st.chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                   "finish_reason": null}),
            None,
        );
        st.out.push_back(e);
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok(e), st));
            }
            if st.done {
                return None;
            }
            let ev = st.gen_stream.next().await;
            st.on_event(ev);
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
