//! The serving engine: one thread owns the model, the KV cache and the scheduler, and runs a
//! continuous-batching loop; any number of [`EngineHandle`] clones submit requests from other
//! threads (the HTTP server, in-process agents) and read each request's [`GenStream`].
//!
//! Each loop turn: take new submissions and aborts, ask the scheduler for a step (decodes plus
//! prompt chunks within a token budget, blocks from the paged cache with prefix reuse), run one
//! forward pass for the whole batch, sample a token for every sequence that produced logits,
//! stream its text, and report the results back to the scheduler. Dropping a stream aborts its
//! request, so a client that goes away frees its blocks at the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use autoglm_kernels::ThreadPool;
use autoglm_model::{ForwardScratch, KvCache, KvDtype, LogitsWanted, Model, Q8_BLOCK, SeqInput};
use autoglm_sched::{AbortReason, Priority, Request, RequestId, Scheduler, SchedulerConfig};
use autoglm_tokenizer::{ChatTemplate, OwnedStreamDecoder, Tokenizer};

use crate::metrics::{Histogram, RateWindow};
use crate::{
    Constraint, ConstraintCompiler, EngineError, FinishReason, Grammar, Sampler, SamplingParams,
    StopMatcher, StopOutcome,
};

/// Settings of the serving engine.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub threads: usize,
    /// KV cache budget; the block count follows from the model's per-token size.
    pub kv_cache_mb: usize,
    /// How cached K/V values are stored: f16, or 8-bit blocks holding nearly twice the tokens.
    pub kv_dtype: KvDtype,
    pub block_size: usize,
    /// Most sequences decoding together.
    pub max_running: usize,
    /// Token budget of one step (decodes + prompt chunks): bounds how long a step can stall
    /// streaming users.
    pub max_step_tokens: usize,
    /// Requests allowed to wait; past it, submissions are refused at once.
    pub max_queue: usize,
    pub prefix_caching: bool,
    /// While sequences are streaming, size each step so it takes about this long (prompt
    /// chunks shrink to fit); 0 keeps `max_step_tokens` always. See [`StepSizer`]. The default,
    /// 100 ms, was chosen with `examples/step_policy.rs` (docs/performance.md): under a stream
    /// of long prompts it cut streaming users' inter-token p50 from 1.5 s to 0.13 s for 7 % less
    /// prompt throughput, and raised total throughput.
    pub step_target_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kv_cache_mb: 512,
            kv_dtype: KvDtype::F16,
            block_size: 16,
            max_running: 16,
            max_step_tokens: 512,
            max_queue: 64,
            prefix_caching: true,
            step_target_ms: 100,
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub priority: Priority,
    /// Abort if not finished within this time.
    pub timeout: Option<Duration>,
    /// Output must match this compiled grammar; the request ends when the grammar is complete.
    pub constraint: Option<Constraint>,
}

impl GenRequest {
    /// An interactive request without deadline or constraint.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> GenRequest {
        GenRequest {
            prompt,
            params,
            priority: Priority::Interactive,
            timeout: None,
            constraint: None,
        }
    }
}

/// The model's log-probability of a generated token and of the most likely alternatives
/// (taken from the model's distribution, before penalties and constraints).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// Best first; as many as `SamplingParams::logprobs` asked for.
    pub top: Vec<(u32, f32)>,
}

/// What a stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// Newly final text and the token that completed it (text may be empty mid-character);
    /// `logprob` when the request asked for log-probabilities.
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end; no event follows.
    Done(GenSummary),
    /// Refused after submission (e.g. it can never fit the cache); no event follows.
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefix cache, not computed again.
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Submission to first token.
    pub time_to_first_token: Duration,
    pub total_time: Duration,
}

/// Why a submission was refused at once.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("overloaded: {in_flight} requests in flight; retry in about {retry_after_ms} ms")]
    Overloaded {
        in_flight: usize,
        retry_after_ms: u64,
    },
    #[error(transparent)]
    Invalid(#[from] EngineError),
    #[error("the engine has stopped")]
    Stopped,
}

/// The receiving end of one request. Dropping it aborts the request.
pub struct GenStream {
    id: RequestId,
    rx: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    commands: mpsc::Sender<Command>,
}

impl GenStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Next event, waiting for it (async).
    pub async fn next(&mut self) -> Option<GenEvent> {
        self.rx.recv().await
    }

    /// Next event, blocking the calling thread (not for use inside an async runtime).
    pub fn next_blocking(&mut self) -> Option<GenEvent> {
        self.rx.blocking_recv()
    }

    /// Collects the whole generation: its text and summary.
    pub fn collect_blocking(mut self) -> Result<(String, GenSummary), String> {
        let mut text = String::new();
        while let Some(ev) = self.next_blocking() {
            match ev {
                GenEvent::Token { text: t, .. } => text.push_str(&t),
                GenEvent::Done(s) => return Ok((text, s)),
                GenEvent::Error(e) => return Err(e),
            }
        }
        Err("the engine stopped".into())
    }
}

impl Drop for GenStream {
    fn drop(&mut self) {
        // Harmless if the request already ended.
        let _ = self.commands.send(Command::Abort(self.id));
    }
}

enum Command {
    Submit {
        id: RequestId,
        req: Box<GenRequest>,
        events: tokio::sync::mpsc::UnboundedSender<GenEvent>,
        at: Instant,
    },
    Abort(RequestId),
}

/// Counters shared between the handle and the engine thread.
#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    next_id: AtomicU64,
    refused: AtomicU64,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    steps: AtomicU64,
    /// Gauges copied from the scheduler after every step.
    waiting: AtomicUsize,
    running: AtomicUsize,
    last_batch: AtomicUsize,
    blocks_total: AtomicUsize,
    blocks_used: AtomicUsize,
    blocks_cached: AtomicUsize,
    prefix_lookup_tokens: AtomicU64,
    prefix_hit_tokens: AtomicU64,
    preemptions: AtomicU64,
    /// Submission to first token, and between consecutive tokens of a sequence.
    ttft: Histogram,
    itl: Histogram,
    /// f64 bits: generated tokens per second over the last few seconds.
    tokens_per_second: AtomicU64,
    /// Time spent computing grammar masks, and how many tokens were masked.
    mask_us: AtomicU64,
    masked_tokens: AtomicU64,
}

/// A snapshot of the engine's counters and gauges, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub in_flight: usize,
    pub waiting: usize,
    pub running: usize,
    /// Sequences in the last forward step.
    pub last_batch: usize,
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub blocks_cached: usize,
    pub refused: u64,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub steps: u64,
    pub prefix_lookup_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub ttft: crate::metrics::HistogramSnapshot,
    pub itl: crate::metrics::HistogramSnapshot,
    /// Generated tokens per second over the last few seconds.
    pub tokens_per_second: f64,
    /// Tokens generated under a grammar, and the time their masks took.
    pub masked_tokens: u64,
    pub mask_seconds: f64,
}

/// A cheap, cloneable way to submit work to the serving engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    model_name: Arc<str>,
    context_length: usize,
    limit: usize,
    /// Built on first use: most servers never see a constrained request.
    compiler: Arc<OnceLock<Result<ConstraintCompiler, String>>>,
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Model, cfg: ServeConfig) -> Result<EngineHandle, EngineError> {
        let tokenizer = Arc::new(Tokenizer::from_gguf(model.gguf())?);
        let template = Arc::new(crate::model_template(&model, &tokenizer)?);
        let model_name: Arc<str> = model
            .gguf()
            .get_str_opt("general.name")
            .ok()
            .flatten()
            .unwrap_or(model.config().arch.name())
            .into();
        let block_size = cfg.block_size.max(1);
        let head_dim = model.config().head_dim;
        if cfg.kv_dtype == KvDtype::Q8 && !head_dim.is_multiple_of(Q8_BLOCK) {
            return Err(EngineError::InvalidParameter(format!(
                "an 8-bit KV cache needs a head size that is a multiple of {Q8_BLOCK}; this model's is {head_dim}"
            )));
        }
        let bytes_per_block = model
            .kv_layout(block_size, 1)
            .with_dtype(cfg.kv_dtype)
            .bytes_per_token()
            * block_size;
        let num_blocks = (cfg.kv_cache_mb << 20) / bytes_per_block.max(1);
        if num_blocks < 2 {
            return Err(EngineError::InvalidParameter(format!(
                "kv_cache_mb {} holds fewer than two {}-token blocks of this model",
                cfg.kv_cache_mb, cfg.block_size
            )));
        }
        let mut kv = KvCache::new(
            model
                .kv_layout(block_size, num_blocks)
                .with_dtype(cfg.kv_dtype),
        )?;
        // A server's memory should not grow with use: hold the configured budget from the start.
        kv.prefault();
        let sched = Scheduler::new(SchedulerConfig {
            block_size: cfg.block_size.max(1),
            num_blocks,
            max_running: cfg.max_running,
            max_step_tokens: cfg.max_step_tokens,
            // The handle is the admission gate (waiting + running <= max_queue + max_running,
            // refused without a round trip); until a step admits them, every request in flight
            // sits in the scheduler's queue, so that queue must hold the whole bound.
            max_queue: cfg.max_queue + cfg.max_running,
            prefix_caching: cfg.prefix_caching,
            ..SchedulerConfig::default()
        });
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        // Known before the first step, so /metrics is right from the start.
        shared.blocks_total.store(num_blocks, Ordering::Relaxed);
        let context_length = model.config().context_length;
        let worker = Worker {
            pool: ThreadPool::new(cfg.threads.max(1)),
            scratch: ForwardScratch::default(),
            kv,
            sched,
            seqs: HashMap::new(),
            tokenizer: tokenizer.clone(),
            stop_ids: tokenizer.stop_ids().to_vec(),
            shared: shared.clone(),
            epoch: Instant::now(),
            rate: RateWindow::new(Duration::from_secs(5)),
            sizer: StepSizer::new(cfg.step_target_ms, cfg.max_step_tokens),
            model,
        };
        std::thread::Builder::new()
            .name("autoglm-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| {
                EngineError::InvalidParameter(format!("cannot start the engine thread: {e}"))
            })?;
        Ok(EngineHandle {
            commands: tx,
            shared,
            tokenizer,
            template,
            model_name,
            context_length,
            limit: cfg.max_queue + cfg.max_running,
            compiler: Arc::new(OnceLock::new()),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The model's chat template (its own, or a built-in one for files without).
    pub fn template(&self) -> &Arc<ChatTemplate> {
        &self.template
    }

    /// The model's `general.name` (or its architecture).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Builds the grammar compiler in the background (about a second for a 262k-token
    /// vocabulary), so the first constrained request does not wait for it.
    pub fn prepare_constraints(&self) {
        let h = self.clone();
        let _ = std::thread::Builder::new()
            .name("autoglm-grammar".into())
            .spawn(move || {
                let _ = h.compiler.get_or_init(|| {
                    ConstraintCompiler::new(h.tokenizer.clone()).map_err(|e| e.to_string())
                });
            });
    }

    /// Compiles a grammar for this model's tokenizer, on the calling thread (milliseconds for
    /// a typical schema; the first call also builds the token trie).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        self.compiler
            .get_or_init(|| {
                ConstraintCompiler::new(self.tokenizer.clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::Constraint(e.clone()))?
            .compile(grammar)
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        let r = Ordering::Relaxed;
        EngineStats {
            in_flight: s.in_flight.load(r),
            waiting: s.waiting.load(r),
            running: s.running.load(r),
            last_batch: s.last_batch.load(r),
            blocks_total: s.blocks_total.load(r),
            blocks_used: s.blocks_used.load(r),
            blocks_cached: s.blocks_cached.load(r),
            refused: s.refused.load(r),
            generated_tokens: s.generated_tokens.load(r),
            prompt_tokens: s.prompt_tokens.load(r),
            steps: s.steps.load(r),
            prefix_lookup_tokens: s.prefix_lookup_tokens.load(r),
            prefix_hit_tokens: s.prefix_hit_tokens.load(r),
            preemptions: s.preemptions.load(r),
            ttft: s.ttft.snapshot(),
            itl: s.itl.snapshot(),
            tokens_per_second: f64::from_bits(s.tokens_per_second.load(r)),
            masked_tokens: s.masked_tokens.load(r),
            mask_seconds: s.mask_us.load(r) as f64 / 1e6,
        }
    }

    /// Requests submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Queues a request. Refuses at once, without waiting for the engine, when too many requests
    /// are in flight or the request is invalid.
    pub fn submit(&self, req: GenRequest) -> Result<GenStream, SubmitError> {
        req.params.validate()?;
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if req.prompt.len() >= self.context_length {
            return Err(EngineError::PromptTooLong {
                prompt: req.prompt.len(),
                context: self.context_length,
            }
            .into());
        }
        let in_flight = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= self.limit {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                in_flight,
                retry_after_ms: 1000,
            });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        let cmd = Command::Submit {
            id,
            req: Box::new(req),
            events: etx,
            at: Instant::now(),
        };
        if self.commands.send(cmd).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(GenStream {
            id,
            rx: erx,
            commands: self.commands.clone(),
        })
    }

    /// Aborts a request (its stream gets a `Done` with `Cancelled`).
    pub fn abort(&self, id: RequestId) {
        let _ = self.commands.send(Command::Abort(id));
    }
}

/// Per-request state on the engine thread.
struct SeqCtx {
    events: tokio::sync::mpsc::UnboundedSender<GenEvent>,
    sampler: Sampler,
    decoder: OwnedStreamDecoder,
    stop: StopMatcher,
    /// Prompt and generated tokens (for penalties).
    history: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    ignore_eos: bool,
    cached_prompt_tokens: usize,
    constraint: Option<Constraint>,
    submitted: Instant,
    first_token: Option<Duration>,
    last_token: Option<Instant>,
}

impl SeqCtx {
    fn generated(&self) -> usize {
        self.history.len() - self.prompt_len
    }

    fn finish(&mut self, reason: FinishReason) {
        let rest = self.stop.close(&self.decoder.flush());
        if !rest.is_empty() {
            let _ = self.events.send(GenEvent::Token {
                id: u32::MAX,
                text: rest,
                logprob: None,
            });
        }
        let _ = self.events.send(GenEvent::Done(GenSummary {
            finish: reason,
            prompt_tokens: self.prompt_len,
            cached_prompt_tokens: self.cached_prompt_tokens,
            completion_tokens: self.generated(),
            time_to_first_token: self.first_token.unwrap_or_default(),
            total_time: self.submitted.elapsed(),
        }));
    }
}

struct Worker {
    model: Model,
    pool: ThreadPool,
    scratch: ForwardScratch,
    kv: KvCache,
    sched: Scheduler,
    seqs: HashMap<RequestId, SeqCtx>,
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    shared: Arc<Shared>,
    epoch: Instant,
    rate: RateWindow,
    sizer: StepSizer,
}

impl Worker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            // Block only when there is nothing to do; otherwise take what has arrived.
            if self.sched.is_idle() {
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            self.step();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                id,
                req,
                events,
                at,
            } => {
                let now = self.now_ms();
                let sreq = Request {
                    id,
                    prompt: req.prompt.clone(),
                    max_new_tokens: req.params.max_tokens,
                    priority: req.priority,
                    deadline_ms: req.timeout.map(|t| now + t.as_millis() as u64),
                    arrival_ms: now,
                };
                if let Err(e) = self.sched.add(sreq) {
                    self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let _ = events.send(GenEvent::Error(e.to_string()));
                    return;
                }
                let mut params = req.params.clone();
                if params.seed.is_none() {
                    params.seed = Some(id.wrapping_mul(0x9E37_79B9));
                }
                self.seqs.insert(
                    id,
                    SeqCtx {
                        events,
                        sampler: Sampler::new(params),
                        decoder: OwnedStreamDecoder::new(self.tokenizer.clone(), false),
                        stop: StopMatcher::new(req.params.stop.clone()),
                        prompt_len: req.prompt.len(),
                        history: req.prompt,
                        max_tokens: req.params.max_tokens,
                        ignore_eos: req.params.ignore_eos,
                        cached_prompt_tokens: 0,
                        constraint: req.constraint,
                        submitted: at,
                        first_token: None,
                        last_token: None,
                    },
                );
            }
            Command::Abort(id) => {
                if self.seqs.contains_key(&id) {
                    self.sched.abort(id);
                }
            }
        }
    }

    fn end(&mut self, id: RequestId, reason: FinishReason) {
        if let Some(mut ctx) = self.seqs.remove(&id) {
            ctx.finish(reason);
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn step(&mut self) {
        self.sched.set_decoding_budget(self.sizer.budget());
        let out = self.sched.schedule(self.now_ms());
        for &(id, reason) in &out.aborted {
            let r = match reason {
                AbortReason::Cancelled | AbortReason::DeadlineExceeded => FinishReason::Cancelled,
            };
            self.end(id, r);
        }
        if out.scheduled.is_empty() {
            // Nothing runnable (all ended or waiting for memory): commit the empty step.
            self.sched.update(&out, &[], &[]);
            return;
        }
        for s in &out.scheduled {
            if s.cached_prompt_tokens > 0
                && let Some(ctx) = self.seqs.get_mut(&s.id)
            {
                ctx.cached_prompt_tokens = s.cached_prompt_tokens;
            }
        }
        let inputs: Vec<SeqInput> = out
            .scheduled
            .iter()
            .map(|s| SeqInput {
                tokens: &s.tokens,
                start_pos: s.start_pos,
                block_table: &s.block_table,
                logits: if s.wants_logits {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            })
            .collect();
        let vocab = self.model.config().vocab_size;
        let t_forward = Instant::now();
        let forward = self
            .model
            .forward(&self.pool, &mut self.scratch, &mut self.kv, &inputs);
        let decodes = out
            .scheduled
            .iter()
            .filter(|s| s.kind == autoglm_sched::StepKind::Decode)
            .count();
        self.sizer
            .observe(decodes, out.num_tokens() - decodes, t_forward.elapsed());
        let logits = match forward {
            Ok(l) => l.to_vec(),
            Err(e) => {
                // A batch the model refuses is a bug upstream; fail its requests, keep serving.
                let ids: Vec<RequestId> = out.scheduled.iter().map(|s| s.id).collect();
                for &id in &ids {
                    if let Some(ctx) = self.seqs.remove(&id) {
                        let _ = ctx
                            .events
                            .send(GenEvent::Error(format!("forward pass failed: {e}")));
                        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                self.sched.update(&out, &[], &ids);
                return;
            }
        };
        let mut sampled = Vec::new();
        let mut finished = Vec::new();
        let mut ended = Vec::new();
        let mut failed: Vec<(RequestId, String)> = Vec::new();
        for (row, s) in out.scheduled.iter().filter(|s| s.wants_logits).enumerate() {
            let mut l = logits[row * vocab..(row + 1) * vocab].to_vec();
            let Some(ctx) = self.seqs.get_mut(&s.id) else {
                finished.push(s.id);
                continue;
            };
            // Log-probabilities describe the model, so they are taken before any masking.
            let raw = ctx.sampler.params().logprobs.map(|k| (l.clone(), k));
            // The last eighth of the budget (at most 24 tokens) is spent closing structures.
            let left = ctx.max_tokens.saturating_sub(ctx.generated());
            let wrap_up = left <= (ctx.max_tokens / 8).clamp(1, 24);
            let t_mask = Instant::now();
            let masked = ctx.constraint.as_mut().map(|c| c.apply(&mut l, wrap_up));
            if masked.is_some() {
                self.shared
                    .mask_us
                    .fetch_add(t_mask.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.shared.masked_tokens.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(Err(e)) = masked {
                failed.push((s.id, e.to_string()));
                finished.push(s.id);
                continue;
            }
            let tok = ctx.sampler.sample(&mut l, &ctx.history);
            let now = Instant::now();
            match ctx.last_token {
                None => {
                    let ttft = now - ctx.submitted;
                    ctx.first_token = Some(ttft);
                    self.shared.ttft.observe(ttft);
                }
                Some(prev) => self.shared.itl.observe(now - prev),
            }
            ctx.last_token = Some(now);
            let logprob = raw.map(|(raw, k)| crate::sampling::logprobs_of(&raw, tok, k));
            if let Some(c) = ctx.constraint.as_mut()
                && let Err(e) = c.commit(tok)
            {
                failed.push((s.id, e.to_string()));
                finished.push(s.id);
                continue;
            }
            if !ctx.ignore_eos && self.stop_ids.contains(&tok) {
                finished.push(s.id);
                ended.push((s.id, FinishReason::Stop));
                continue;
            }
            ctx.history.push(tok);
            let piece = ctx.decoder.push(tok);
            let (text, stopped) = match ctx.stop.push(&piece) {
                StopOutcome::Stopped(t) => (t, true),
                StopOutcome::Continue(t) => (t, false),
            };
            let alive = ctx
                .events
                .send(GenEvent::Token {
                    id: tok,
                    text,
                    logprob,
                })
                .is_ok();
            sampled.push((s.id, tok));
            let complete = ctx.constraint.as_ref().is_some_and(Constraint::is_complete);
            if stopped || complete {
                finished.push(s.id);
                ended.push((s.id, FinishReason::Stop));
            } else if !alive {
                finished.push(s.id);
                ended.push((s.id, FinishReason::Cancelled));
            } else if ctx.generated() >= ctx.max_tokens
                || ctx.history.len() >= self.model.config().context_length
            {
                finished.push(s.id);
                ended.push((s.id, FinishReason::Length));
            }
        }
        let ended_by_sched = self.sched.update(&out, &sampled, &finished);
        let r = Ordering::Relaxed;
        let sh = &self.shared;
        sh.steps.fetch_add(1, r);
        sh.last_batch.store(out.scheduled.len(), r);
        sh.generated_tokens.fetch_add(sampled.len() as u64, r);
        sh.prompt_tokens.fetch_add(
            out.scheduled
                .iter()
                .filter(|s| s.kind == autoglm_sched::StepKind::Prefill)
                .map(|s| s.tokens.len() as u64)
                .sum(),
            r,
        );
        let st = self.sched.stats();
        sh.waiting.store(st.waiting, r);
        sh.running.store(st.running, r);
        sh.blocks_total.store(st.blocks_total, r);
        sh.blocks_used.store(st.blocks_used, r);
        sh.blocks_cached.store(st.blocks_cached_free, r);
        sh.prefix_lookup_tokens.store(st.prefix_lookup_tokens, r);
        sh.prefix_hit_tokens.store(st.prefix_hit_tokens, r);
        sh.preemptions.store(st.preemptions, r);
        let now = Instant::now();
        self.rate.record(now, sampled.len() as u64);
        sh.tokens_per_second
            .store(self.rate.per_second(now).to_bits(), r);
        for (id, reason) in ended {
            self.end(id, reason);
        }
        for (id, message) in failed {
            if let Some(ctx) = self.seqs.remove(&id) {
                let _ = ctx.events.send(GenEvent::Error(message));
                self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // Anything the scheduler ended on its own (its max_new_tokens bound) ends here too.
        for id in ended_by_sched {
            self.end(id, FinishReason::Length);
        }
    }
}

/// Chooses the step budget while sequences are streaming, from the measured cost of decode rows
/// and of prompt tokens: every streaming user waits for the whole step, so a step that also
/// carries a prompt chunk should stay near the target; without streaming users there is no one
/// to stall, and the scheduler uses its full budget.
#[derive(Debug)]
pub(crate) struct StepSizer {
    target: Option<Duration>,
    max_tokens: usize,
    /// Moving averages, seconds: one decode row, one prompt token.
    decode_cost: f64,
    prompt_cost: f64,
    decodes_seen: usize,
}

impl StepSizer {
    /// Smallest prompt chunk beside decodes, so a long prompt still advances.
    const MIN_CHUNK: usize = 32;

    fn new(target_ms: u64, max_tokens: usize) -> StepSizer {
        StepSizer {
            target: (target_ms > 0).then(|| Duration::from_millis(target_ms)),
            max_tokens: max_tokens.max(1),
            decode_cost: 0.0,
            prompt_cost: 0.0,
            decodes_seen: 0,
        }
    }

    fn observe(&mut self, decodes: usize, prompt_tokens: usize, took: Duration) {
        let t = took.as_secs_f64();
        let ema = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                0.8 * old + 0.2 * new
            }
        };
        if decodes > 0 {
            self.decodes_seen = decodes;
        }
        if prompt_tokens == 0 && decodes > 0 {
            self.decode_cost = ema(self.decode_cost, t / decodes as f64);
        } else if prompt_tokens >= Self::MIN_CHUNK {
            let rest = (t - decodes as f64 * self.decode_cost).max(t * 0.1);
            self.prompt_cost = ema(self.prompt_cost, rest / prompt_tokens as f64);
        }
    }

    /// Token budget for the next step that has decodes in it.
    fn budget(&self) -> usize {
        let Some(target) = self.target else {
            return self.max_tokens;
        };
        if self.prompt_cost == 0.0 {
            return self.max_tokens;
        }
        let decodes = self.decodes_seen;
        let left = target.as_secs_f64() - decodes as f64 * self.decode_cost;
        let chunk = (left / self.prompt_cost).max(0.0) as usize;
        (decodes + chunk.max(Self::MIN_CHUNK)).min(self.max_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_sizer_fits_prompt_chunks_into_the_target() {
        let ms = Duration::from_millis;
        let mut s = StepSizer::new(100, 512);
        // Unmeasured: the full budget.
        assert_eq!(s.budget(), 512);
        // 8 decodes take 40 ms (5 ms each); 200 prompt tokens beside them take 140 ms more
        // (0.7 ms each): 60 ms of room is 85 prompt tokens.
        s.observe(8, 0, ms(40));
        s.observe(8, 200, ms(180));
        assert_eq!(s.budget(), 8 + 85);
        // Decodes alone fill the target: the minimum chunk still goes through.
        s.observe(30, 0, ms(150));
        s.observe(30, 0, ms(150));
        assert!(s.budget() >= 30 + StepSizer::MIN_CHUNK);
        // Off: always the configured budget.
        let mut off = StepSizer::new(0, 512);
        off.observe(8, 200, ms(180));
        assert_eq!(off.budget(), 512);
    }
}
