//! The generation driver: owns a model, its tokenizer and chat template, the worker pool and the
//! KV cache, and turns prompts into tokens — prefill in chunks, then decode step by step with
//! sampling and stop conditions, for one sequence or several decoding together in one batch.
//!
//! This is the synchronous core. The serving engine (continuous batching across requests,
//! priorities, admission control, async token streams) is built on the same pieces.

mod bench;
mod blocks;
mod chat;
mod constraint;
mod metrics;
mod sampling;
mod serve;
mod stop;
mod tools;

pub use autoglm_sched::Priority;
pub use bench::{BenchConfig, BenchResult, median};
pub use blocks::BlockAllocator;
pub use chat::{ChatTurn, PreparedChat, prepare_chat};
pub use constraint::{Constraint, ConstraintCompiler, Grammar, compact_json};
pub use metrics::{HistogramSnapshot, LATENCY_BUCKETS};
pub use sampling::{Rng, Sampler, SamplingParams, argmax};
pub use serve::{
    EngineHandle, EngineStats, GenEvent, GenRequest, GenStream, GenSummary, ServeConfig,
    SubmitError, TokenLogprob,
};
pub use stop::{StopMatcher, StopOutcome};
pub use tools::{
    TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCall, ToolChoice, ToolSpec, answer_grammar, close_objects,
    format_call, messages_with_tools, parse_tool_calls, tools_prompt, validate_tools,
};

use std::path::Path;
use std::time::{Duration, Instant};

use autoglm_kernels::ThreadPool;
use autoglm_model::{ForwardScratch, KvCache, KvDtype, LogitsWanted, Model, ModelError, SeqInput};
use autoglm_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("invalid sampling parameter: {0}")]
    InvalidParameter(String),
    #[error(
        "prompt of {prompt} tokens leaves no room to generate in a context of {context} tokens"
    )]
    PromptTooLong { prompt: usize, context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid constraint: {0}")]
    Constraint(String),
    #[error("KV cache exhausted: {needed} blocks needed, {free} free (raise the cache size)")]
    CacheFull { needed: usize, free: usize },
}

/// The model's chat template, or a built-in one (by architecture) for files without.
pub fn model_template(model: &Model, tokenizer: &Tokenizer) -> Result<ChatTemplate, EngineError> {
    Ok(match ChatTemplate::from_gguf(model.gguf(), tokenizer)? {
        Some(t) => t,
        None => ChatTemplate::builtin(model.config().arch.name(), tokenizer)?,
    })
}

/// Prompt tokens for text: special-token text recognised, BOS added if the model wants it and
/// the text does not already start with it (templates often write it themselves).
pub fn prompt_tokens(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let body = tokenizer.encode(text, true);
    match tokenizer.bos_id() {
        Some(bos) if tokenizer.add_bos() && body.first() != Some(&bos) => {
            let mut ids = Vec::with_capacity(body.len() + 1);
            ids.push(bos);
            ids.extend(body);
            ids
        }
        _ => body,
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads (including the calling thread).
    pub threads: usize,
    /// Tokens per KV cache block.
    pub block_size: usize,
    /// Total KV cache capacity in tokens, shared by all sequences.
    pub kv_tokens: usize,
    /// Longest prompt piece processed in one forward step.
    pub prefill_chunk: usize,
    /// How cached K/V values are stored.
    pub kv_dtype: KvDtype,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            block_size: 16,
            kv_tokens: 8192,
            prefill_chunk: 512,
            kv_dtype: KvDtype::F16,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// A model ready to generate.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The file had no template; `template` is our per-architecture default.
    builtin_template: bool,
    pool: ThreadPool,
    kv: KvCache,
    scratch: ForwardScratch,
    blocks: BlockAllocator,
    config: EngineConfig,
}

impl Engine {
    pub fn load(path: impl AsRef<Path>, config: EngineConfig) -> Result<Engine, EngineError> {
        let model = Model::load(path)?;
        Self::new(model, config)
    }

    pub fn new(model: Model, config: EngineConfig) -> Result<Engine, EngineError> {
        let tokenizer = Tokenizer::from_gguf(model.gguf())?;
        let template = model_template(&model, &tokenizer)?;
        let builtin_template = model.gguf().get("tokenizer.chat_template").is_none();
        let block_size = config.block_size.max(1);
        let kv_tokens = config
            .kv_tokens
            .min(model.config().context_length.max(1) * 4)
            .max(block_size);
        let n_blocks = kv_tokens.div_ceil(block_size);
        let kv = KvCache::new(
            model
                .kv_layout(block_size, n_blocks)
                .with_dtype(config.kv_dtype),
        )?;
        Ok(Engine {
            pool: ThreadPool::new(config.threads.max(1)),
            blocks: BlockAllocator::new(n_blocks),
            kv,
            scratch: ForwardScratch::default(),
            template,
            builtin_template,
            tokenizer,
            model,
            config,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// True when the model file has no chat template of its own and a built-in default is used
    /// (base models are not trained to converse, so callers may want to say so).
    pub fn has_builtin_template(&self) -> bool {
        self.builtin_template
    }

    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Prompt tokens for a conversation, rendered with the model's chat template.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let text = self.template.render(messages, None, true)?;
        Ok(self.raw_prompt(&text))
    }

    /// Prompt tokens for raw text (see [`prompt_tokens`]).
    pub fn raw_prompt(&self, text: &str) -> Vec<u32> {
        prompt_tokens(&self.tokenizer, text)
    }

    /// Generates from one prompt. `on_text` receives text as it becomes final; returning false
    /// stops the generation.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, EngineError> {
        let mut out = self.generate_batch(&[prompt.to_vec()], params, &mut |_, t| on_text(t))?;
        Ok(out.remove(0))
    }

    /// Generates from several prompts at once: prompts are prefilled one after another, then all
    /// sequences decode together, one forward step per token for the whole batch. `on_text`
    /// receives (sequence index, text); returning false stops that sequence.
    pub fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<Generation>, EngineError> {
        params.validate()?;
        let ctx = self.model.config().context_length;
        let bs = self.kv.block_size();
        for p in prompts {
            if p.is_empty() {
                return Err(EngineError::EmptyPrompt);
            }
            if p.len() >= ctx {
                return Err(EngineError::PromptTooLong {
                    prompt: p.len(),
                    context: ctx,
                });
            }
        }
        // Reserve each sequence's whole block budget up front: simple, and it fails fast with a
        // clear error instead of mid-generation (the serving scheduler preempts instead).
        let mut seqs = Vec::with_capacity(prompts.len());
        let total: usize = prompts
            .iter()
            .map(|p| (p.len() + params.max_tokens).min(ctx).div_ceil(bs))
            .sum();
        if total > self.blocks.free() {
            return Err(EngineError::CacheFull {
                needed: total,
                free: self.blocks.free(),
            });
        }
        for (i, p) in prompts.iter().enumerate() {
            let limit = (p.len() + params.max_tokens).min(ctx);
            let table = self
                .blocks
                .allocate(limit.div_ceil(bs))
                .ok_or(EngineError::CacheFull {
                    needed: limit.div_ceil(bs),
                    free: self.blocks.free(),
                })?;
            let mut sp = params.clone();
            if let Some(seed) = sp.seed {
                // Distinct but reproducible streams per sequence.
                sp.seed = Some(seed.wrapping_add(i as u64));
            }
            seqs.push(SeqState {
                history: p.clone(),
                prompt_len: p.len(),
                limit,
                table,
                sampler: Sampler::new(sp),
                decoder: StreamDecoder::new(&self.tokenizer, false),
                stop: StopMatcher::new(params.stop.clone()),
                text: String::new(),
                finish: None,
                next: None,
                prefill_time: Duration::ZERO,
                decode_start: Instant::now(),
                decode_time: Duration::ZERO,
            });
        }
        let result = run(
            Parts {
                model: &self.model,
                pool: &self.pool,
                scratch: &mut self.scratch,
                kv: &mut self.kv,
                tokenizer: &self.tokenizer,
                prefill_chunk: self.config.prefill_chunk,
            },
            &mut seqs,
            params,
            on_text,
        );
        for s in &seqs {
            self.blocks.release(&s.table);
        }
        result?;
        Ok(seqs
            .into_iter()
            .map(|s| Generation {
                tokens: s.history[s.prompt_len..].to_vec(),
                text: s.text,
                finish: s.finish.unwrap_or(FinishReason::Length),
                prompt_tokens: s.prompt_len,
                prefill_time: s.prefill_time,
                decode_time: s.decode_time,
            })
            .collect())
    }
}

/// The engine's pieces a generation needs, borrowed separately so that sequence state can hold
/// the tokenizer while the cache is written.
struct Parts<'a> {
    model: &'a Model,
    pool: &'a ThreadPool,
    scratch: &'a mut ForwardScratch,
    kv: &'a mut KvCache,
    tokenizer: &'a Tokenizer,
    prefill_chunk: usize,
}

fn run(
    p: Parts,
    seqs: &mut [SeqState],
    params: &SamplingParams,
    on_text: &mut dyn FnMut(usize, &str) -> bool,
) -> Result<(), EngineError> {
    let vocab = p.model.config().vocab_size;
    let stop_ids = p.tokenizer.stop_ids().to_vec();
    // Prefill each prompt in chunks; the last chunk yields the first token's logits.
    for s in seqs.iter_mut() {
        let t0 = Instant::now();
        let chunk = p.prefill_chunk.max(1);
        let mut pos = 0;
        while pos < s.prompt_len {
            let end = (pos + chunk).min(s.prompt_len);
            let last = end == s.prompt_len;
            let input = SeqInput {
                tokens: &s.history[pos..end],
                start_pos: pos,
                block_table: &s.table,
                logits: if last {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            };
            let logits = p.model.forward(p.pool, p.scratch, p.kv, &[input])?;
            if last {
                let mut l = logits.to_vec();
                s.next = Some(s.sampler.sample(&mut l, &s.history));
            }
            pos = end;
        }
        s.prefill_time = t0.elapsed();
        s.decode_start = Instant::now();
    }

    let mut logits_buf = vec![0f32; vocab];
    loop {
        // Accept each live sequence's sampled token and decide whether it continues.
        for (i, s) in seqs.iter_mut().enumerate() {
            let Some(tok) = s.next.take() else { continue };
            if s.finish.is_some() {
                continue;
            }
            if !params.ignore_eos && stop_ids.contains(&tok) {
                s.finish_with(FinishReason::Stop, i, on_text);
                continue;
            }
            s.history.push(tok);
            let piece = s.decoder.push(tok);
            match s.stop.push(&piece) {
                StopOutcome::Stopped(t) => {
                    s.emit(i, &t, on_text);
                    s.finish = Some(FinishReason::Stop);
                    s.decode_time = s.decode_start.elapsed();
                    continue;
                }
                StopOutcome::Continue(t) => {
                    if !s.emit(i, &t, on_text) {
                        s.finish = Some(FinishReason::Cancelled);
                        s.decode_time = s.decode_start.elapsed();
                        continue;
                    }
                }
            }
            if s.history.len() - s.prompt_len >= params.max_tokens || s.history.len() >= s.limit {
                s.finish_with(FinishReason::Length, i, on_text);
            }
        }
        let live: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finish.is_none())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let inputs: Vec<SeqInput> = live
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                let pos = s.history.len() - 1;
                SeqInput {
                    tokens: &s.history[pos..],
                    start_pos: pos,
                    block_table: &s.table,
                    logits: LogitsWanted::Last,
                }
            })
            .collect();
        let logits = p.model.forward(p.pool, p.scratch, p.kv, &inputs)?;
        for (row, &i) in live.iter().enumerate() {
            logits_buf.copy_from_slice(&logits[row * vocab..(row + 1) * vocab]);
            let s = &mut seqs[i];
            s.next = Some(s.sampler.sample(&mut logits_buf, &s.history));
        }
    }
}

struct SeqState<'t> {
    history: Vec<u32>,
    prompt_len: usize,
    limit: usize,
    table: Vec<u32>,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    text: String,
    finish: Option<FinishReason>,
    next: Option<u32>,
    prefill_time: Duration,
    decode_start: Instant,
    decode_time: Duration,
}

impl SeqState<'_> {
    fn emit(&mut self, i: usize, t: &str, on_text: &mut dyn FnMut(usize, &str) -> bool) -> bool {
        if t.is_empty() {
            return true;
        }
        self.text.push_str(t);
        on_text(i, t)
    }

    fn finish_with(
        &mut self,
        reason: FinishReason,
        i: usize,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) {
        let rest = self.stop.close(&self.decoder.flush());
        self.emit(i, &rest, on_text);
        self.finish = Some(reason);
        self.decode_time = self.decode_start.elapsed();
    }
}

#[cfg(test)]
mod tests;
