//! The serving scheduler: which sequences run in each forward step, which KV cache blocks they
//! own, which prompt prefixes are already cached, who waits, who is refused and who is evicted.
//!
//! This crate is plain logic — no tensors, no async runtime, no clock, no IO — so every decision
//! is a deterministic function of the calls made on it and can be tested from traces. Time comes
//! in as a millisecond tick chosen by the caller.
//!
//! # The contract
//!
//! One call in, one plain struct out, one call back with the results (the shape of vLLM's
//! scheduler):
//!
//! 1. [`Scheduler::add`] queues a request, or refuses it at once: [`SchedError::Overloaded`] when
//!    the waiting queue is full (a fast 429 upstream, with a retry estimate), or
//!    [`SchedError::PromptTooLong`] when it could not fit the KV pool even alone.
//! 2. [`Scheduler::schedule`] returns a [`SchedulerOutput`]: the batch for one forward pass (each
//!    [`ScheduledSeq`] carries exactly what `autoglm_model::SeqInput` needs — new tokens, start
//!    position, block table, whether logits are wanted), the sequences preempted this step and
//!    the requests aborted (cancelled or past their deadline) that the engine must report.
//! 3. The engine runs the forward pass and samples one token for every sequence with
//!    `wants_logits`, then calls [`Scheduler::update`] with that output, the sampled tokens and
//!    the requests it ended itself (end-of-generation token, stop string, client gone).
//!
//! Rules the engine must keep:
//!
//! - Every `schedule` is followed by exactly one `update` with its output before the next
//!   `schedule`. A step whose `update` never comes counts as not having run: nothing of it is
//!   committed and the next `schedule` hands out the same work again (only its preemptions and
//!   aborts, already reported, stand). An `update` with a stale output is ignored (and asserted
//!   against in debug builds).
//! - Every sequence with `wants_logits` appears in `sampled` or in `finished`. One that appears in
//!   neither is ended as if finished (and asserted against in debug builds), so an engine bug
//!   cannot leak its blocks.
//! - A sequence also ends in `update` when it has produced `max_new_tokens` tokens, whether or
//!   not the engine reports it; [`Scheduler::update`] returns every request it ended.
//! - Requests the caller cannot serve for its own reasons (the model's context length) are
//!   refused before `add`: the scheduler only knows the pool.
//!
//! # Policy in brief
//!
//! Each step first gives every running decode its one token, then prompt chunks to running
//! sequences still prefilling, then admits waiting requests, all within `max_step_tokens` and
//! `max_running`; a long prompt is cut into chunks so it never stalls decoding users. Requests are
//! ordered by effective class, then arrival: the effective class is the priority class improved
//! by one per `aging_ms_per_class` of waiting, so an interactive request beats a background one
//! that arrived at the same time, but a background request that has waited two ageing periods
//! competes as interactive — and, being older, goes first. Nothing starves. Memory short, the
//! worst-standing running sequence is preempted and later recomputed. See [`scheduler`] for the
//! step in detail and [`blocks`] for the block manager and prefix cache.

pub mod blocks;
pub mod scheduler;

#[cfg(test)]
mod tests;

pub use scheduler::Scheduler;

/// A request's identity, chosen by the caller and unique among live requests.
pub type RequestId = u64;

/// Service classes, best first (the derived order is the ranking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A user is waiting on the answer.
    Interactive,
    /// Wanted soon, nobody watching tokens arrive.
    Batch,
    /// Whenever there is room.
    Background,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Batch, Priority::Background];

    /// 0 for the best class: how many ageing periods a request of this class waits before it
    /// competes as interactive.
    pub fn rank(self) -> u64 {
        self as u64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
            Priority::Background => "background",
        }
    }
}

/// Scheduler settings. `new` clamps `block_size`, `max_running` and `max_step_tokens` to at least
/// 1 and `num_blocks` to the `u32` block id range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per KV block (the engine uses 16).
    pub block_size: usize,
    /// KV pool size in blocks (the caller derives it from `--kv-cache-mb`).
    pub num_blocks: usize,
    /// Most sequences in one step (the batch size cap); also the most sequences holding blocks.
    pub max_running: usize,
    /// Token budget per step: decodes (1 each) plus prefill chunks.
    pub max_step_tokens: usize,
    /// Admission control: `add` refuses a request when this many are already waiting (0 refuses
    /// everything).
    pub max_queue: usize,
    /// Share full KV blocks between requests with the same prompt prefix.
    pub prefix_caching: bool,
    /// A waiting request gains one priority class per this many milliseconds since its arrival.
    /// 0 ignores classes (pure arrival order); `u64::MAX` is strict priority, which can starve
    /// the lower classes.
    pub aging_ms_per_class: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            block_size: 16,
            num_blocks: 512,
            max_running: 16,
            max_step_tokens: 512,
            max_queue: 256,
            prefix_caching: true,
            aging_ms_per_class: 10_000,
        }
    }
}

/// A generation request as the scheduler sees it: tokens in, a bound on tokens out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// At least 1; the sequence ends when it has produced this many tokens.
    pub max_new_tokens: usize,
    pub priority: Priority,
    /// Aborted with [`AbortReason::DeadlineExceeded`] at the first `schedule` after this instant,
    /// waiting or running.
    pub deadline_ms: Option<u64>,
    /// The caller's clock at submission (the same clock as `schedule`'s), the start of ageing.
    /// Order within a class is the order of `add` calls.
    pub arrival_ms: u64,
}

/// Why a request was refused by [`Scheduler::add`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error(
        "overloaded: the waiting queue is full ({queue_len}); retry in about {retry_after_ms} ms"
    )]
    Overloaded {
        queue_len: usize,
        retry_after_ms: u64,
    },
    #[error("request id {0} is already waiting or running")]
    DuplicateId(RequestId),
    #[error(
        "a prompt of {prompt_tokens} tokens with {max_new_tokens} new tokens needs {needed_blocks} \
         KV blocks, more than the whole cache of {num_blocks}"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        max_new_tokens: usize,
        needed_blocks: usize,
        num_blocks: usize,
    },
    #[error("the prompt is empty")]
    Empty,
    #[error("max_new_tokens is 0: nothing to generate")]
    NothingToGenerate,
}

/// Why a request was aborted by the scheduler (reported in [`SchedulerOutput::aborted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// [`Scheduler::abort`] was called.
    Cancelled,
    /// Its deadline passed before it finished.
    DeadlineExceeded,
}

/// What a scheduled sequence does this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A chunk of the prompt (after preemption: of prompt and generated tokens), to fill the KV
    /// cache; logits only with the last chunk.
    Prefill,
    /// The last sampled token, for the next one.
    Decode,
}

/// One sequence's share of a step: exactly what the forward pass needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    pub kind: StepKind,
    /// New tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Positions before this are already in the cache (computed earlier or found in the prefix
    /// cache).
    pub start_pos: usize,
    /// The sequence's KV blocks, holding positions 0.. in order; covers every new position (it
    /// may hold more). A copy: a few bytes per 16 tokens, cheap next to the forward pass, and it
    /// keeps the output a plain value the engine can hold while the scheduler moves on.
    pub block_table: Vec<u32>,
    /// The last prompt chunk or a decode: the engine samples a token from these logits.
    pub wants_logits: bool,
    /// On the first chunk after admission, the prompt tokens found in the prefix cache (equal to
    /// `start_pos` then); 0 on later chunks.
    pub cached_prompt_tokens: usize,
}

/// The result of one [`Scheduler::schedule`] call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Which `schedule` call produced this (checked by `update`).
    pub step: u64,
    /// The batch, in order: decodes, then prompt chunks of running sequences, then newly
    /// admitted requests; each group best-standing first.
    pub scheduled: Vec<ScheduledSeq>,
    /// Lost their blocks this step; they wait again and recompute prompt + generated tokens
    /// (streams to clients simply pause).
    pub preempted: Vec<RequestId>,
    /// Ended by the scheduler this step; the engine reports them to their clients.
    pub aborted: Vec<(RequestId, AbortReason)>,
}

impl SchedulerOutput {
    /// Tokens in the batch (at most `max_step_tokens`).
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.tokens.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// Counters and gauges for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    pub waiting: usize,
    pub running: usize,
    pub blocks_total: usize,
    /// Held by at least one running sequence.
    pub blocks_used: usize,
    /// Unused but holding a cached prefix block; reclaimed least recently used first.
    pub blocks_cached_free: usize,
    pub blocks_free: usize,
    /// Admissions that looked up the prefix cache, the prompt tokens they looked up and the
    /// tokens found (hit rate = hit / lookup tokens).
    pub prefix_lookups: u64,
    pub prefix_lookup_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// Cached blocks reclaimed for new data.
    pub evictions: u64,
    pub preemptions: u64,
    pub finished: u64,
    pub aborted: u64,
    pub refused: u64,
}
