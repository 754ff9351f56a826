//! The scheduler: request queues, the step loop and preemption, over a [`BlockManager`].
//!
//! # Order
//!
//! A request's *standing* is `(effective class, arrival order)`, smaller first. The effective
//! class starts at its priority class (interactive 0, batch 1, background 2) and improves by one
//! per `aging_ms_per_class` spent since arrival, down to 0. So an interactive request beats a
//! background one that arrived at the same time, but a background request that has waited two
//! ageing periods competes as interactive, and being older than everything that arrived since,
//! goes first. Each class is a FIFO queue whose head is its best request (the oldest is the most
//! aged), and admission always takes the best head: strictly in standing order, never skipping
//! ahead to a smaller request that would fit. Preemption victims are taken from the other end of
//! the same order among running sequences (lowest effective class, most recent arrival — which,
//! admission following arrival within a class, is the most recently admitted).
//!
//! Standings only improve with time, and once a request's effective class is 0 only the finitely
//! many requests that arrived before it can stand ahead of it, so every request eventually stands
//! first. The best-standing running sequence is never preempted in favour of another (see below)
//! and fits the pool alone (`add` checks), so it finishes: nothing starves, nothing livelocks.
//!
//! # One step
//!
//! 1. Cancellations and passed deadlines are applied: their blocks are freed and they are
//!    reported in `aborted`.
//! 2. **Decodes**: every running sequence past its prompt gets its one token, best-standing
//!    first, within the token budget. A decode crossing a block boundary needs a new block: a
//!    free one, else the least recently used cached one; when there is none, the worst-standing
//!    running sequence not yet scheduled this step is preempted (possibly the one asking, which
//!    then simply waits again).
//! 3. **Prompt chunks** of running sequences still prefilling, best-standing first, each as
//!    large as the remaining budget allows — so a long prompt advances a chunk per step beside
//!    the decodes instead of stalling them. Short of memory, a chunk shrinks to the blocks there
//!    are; only when not a single token fits does it preempt worse-standing unscheduled
//!    sequences (never itself: something else made progress this step).
//! 4. **Admission**, in standing order while budget, `max_running` slots and blocks last (and not
//!    in a step that had to preempt, so a victim is not readmitted at once): the prefix cache is
//!    consulted, the hit becomes the first chunk's `start_pos`, and the first chunk's blocks must
//!    all be available — admission never preempts, so running work is not displaced by arrivals.
//!
//! Preemption is by recompute: the victim drops its blocks (its full ones stay in the prefix
//! cache, so a prompt recomputed soon is mostly a cache hit) and goes back to waiting with its
//! prompt and generated tokens as the new prompt. It keeps its arrival order, so it returns to
//! the front of its class, ahead of everything that arrived after it.

use std::collections::{BTreeMap, HashMap};

use crate::blocks::{BlockHash, BlockId, BlockManager, BlockState, PrefixHasher};
use crate::{
    AbortReason, Priority, Request, RequestId, SchedError, SchedStats, ScheduledSeq,
    SchedulerConfig, SchedulerOutput, StepKind,
};

/// `retry_after_ms` before any admission has been seen.
const DEFAULT_RETRY_MS: u64 = 1_000;
/// Bounds on `retry_after_ms`: not so soon that refused clients hammer us, not so late that they
/// give up on a queue that drains quickly.
const MIN_RETRY_MS: u64 = 100;
const MAX_RETRY_MS: u64 = 60_000;

#[derive(Debug)]
struct Seq {
    id: RequestId,
    class: Priority,
    arrival_ms: u64,
    /// Arrival order: the tie-break between equal effective classes, and the key in the queues.
    order: u64,
    deadline_ms: Option<u64>,
    max_new_tokens: usize,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens to prefill since the last admission: the prompt, or after preemption prompt and
    /// generated tokens. Positions past it are decodes.
    prefill_len: usize,
    /// Positions `0..num_computed` are in the KV cache.
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Chain hashes of the full blocks of `tokens`, extended lazily (prefix caching only).
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the prefix cache (or found there).
    num_registered: usize,
    running: bool,
    /// The step this sequence was last given work in (victims are chosen among the others).
    scheduled_step: u64,
}

impl Seq {
    fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    fn is_decoding(&self) -> bool {
        self.num_computed >= self.prefill_len
    }
}

/// The serving scheduler. See the crate docs for the contract and the module docs for the policy.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    hasher: PrefixHasher,
    seqs: HashMap<RequestId, Seq>,
    /// One FIFO queue per class, keyed by arrival order.
    waiting: [BTreeMap<u64, RequestId>; 3],
    /// In admission order.
    running: Vec<RequestId>,
    /// The time of the current (or last) `schedule`.
    now_ms: u64,
    /// `abort` calls not yet applied (at the next `schedule`), in call order.
    pending_aborts: Vec<RequestId>,
    next_order: u64,
    step: u64,
    committed_step: u64,
    last_admit_ms: Option<u64>,
    /// Moving average of the time between admissions, for `retry_after_ms`.
    admit_interval_ms: Option<u64>,
    /// Step budget while some sequence is decoding (see [`Scheduler::set_decoding_budget`]).
    decoding_budget: usize,
    stats: SchedStats,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let cfg = SchedulerConfig {
            block_size: cfg.block_size.max(1),
            num_blocks: cfg.num_blocks.min(BlockId::MAX as usize),
            max_running: cfg.max_running.max(1),
            max_step_tokens: cfg.max_step_tokens.max(1),
            ..cfg
        };
        Scheduler {
            blocks: BlockManager::new(cfg.num_blocks, cfg.prefix_caching),
            hasher: PrefixHasher::default(),
            seqs: HashMap::new(),
            waiting: Default::default(),
            running: Vec::new(),
            now_ms: 0,
            pending_aborts: Vec::new(),
            next_order: 0,
            step: 0,
            committed_step: 0,
            last_admit_ms: None,
            admit_interval_ms: None,
            decoding_budget: cfg.max_step_tokens,
            stats: SchedStats::default(),
            cfg,
        }
    }

    /// Sets the token budget of steps in which some sequence is decoding (clamped to
    /// `1..=max_step_tokens`); steps with only prompts to process keep `max_step_tokens`. Every
    /// decoding user waits for the whole step, so the caller lowers this to hold inter-token
    /// latency while prompts are being processed, and raises it when prompts queue up.
    pub fn set_decoding_budget(&mut self, tokens: usize) {
        self.decoding_budget = tokens.clamp(1, self.cfg.max_step_tokens);
    }

    /// The settings in force (after clamping).
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The block pool, read-only (for metrics and debugging).
    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// True while the request is waiting or running (including an abort not yet applied).
    pub fn contains(&self, id: RequestId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// True when nothing is waiting or running: `schedule` would return an empty batch.
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Queues a request, or refuses it at once (see [`SchedError`]).
    pub fn add(&mut self, req: Request) -> Result<(), SchedError> {
        let r = self.check_new(&req);
        if r.is_err() {
            self.stats.refused += 1;
            return r;
        }
        let order = self.next_order;
        self.next_order += 1;
        let len = req.prompt.len();
        self.seqs.insert(
            req.id,
            Seq {
                id: req.id,
                class: req.priority,
                arrival_ms: req.arrival_ms,
                order,
                deadline_ms: req.deadline_ms,
                max_new_tokens: req.max_new_tokens,
                tokens: req.prompt,
                prompt_len: len,
                prefill_len: len,
                num_computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                num_registered: 0,
                running: false,
                scheduled_step: 0,
            },
        );
        self.waiting[req.priority as usize].insert(order, req.id);
        Ok(())
    }

    fn num_waiting(&self) -> usize {
        self.waiting.iter().map(BTreeMap::len).sum()
    }

    /// A sequence's standing at the current time; smaller is better.
    fn standing(&self, s: &Seq) -> (u64, u64) {
        let aged = match self.cfg.aging_ms_per_class {
            // Classes ignored: pure arrival order.
            0 => u64::MAX,
            per => self.now_ms.saturating_sub(s.arrival_ms) / per,
        };
        (s.class.rank().saturating_sub(aged), s.order)
    }

    /// The best waiting request: the best of the class queues' heads.
    fn best_waiting(&self) -> Option<RequestId> {
        self.waiting
            .iter()
            .filter_map(|q| q.first_key_value().map(|(_, &id)| id))
            .min_by_key(|id| self.standing(&self.seqs[id]))
    }

    fn check_new(&self, req: &Request) -> Result<(), SchedError> {
        if req.prompt.is_empty() {
            return Err(SchedError::Empty);
        }
        if req.max_new_tokens == 0 {
            return Err(SchedError::NothingToGenerate);
        }
        if self.seqs.contains_key(&req.id) {
            return Err(SchedError::DuplicateId(req.id));
        }
        // The last generated token is never fed back, so it needs no KV slot.
        let positions = req
            .prompt
            .len()
            .saturating_add(req.max_new_tokens)
            .saturating_sub(1);
        let needed_blocks = positions.div_ceil(self.cfg.block_size);
        if needed_blocks > self.cfg.num_blocks {
            return Err(SchedError::PromptTooLong {
                prompt_tokens: req.prompt.len(),
                max_new_tokens: req.max_new_tokens,
                needed_blocks,
                num_blocks: self.cfg.num_blocks,
            });
        }
        // Waiting requests already cancelled leave at the next step; don't count them.
        let cancelled = self
            .pending_aborts
            .iter()
            .filter(|id| self.seqs.get(id).is_some_and(|s| !s.running))
            .count();
        let queue_len = self.num_waiting() - cancelled;
        if queue_len >= self.cfg.max_queue {
            return Err(SchedError::Overloaded {
                queue_len,
                retry_after_ms: self.retry_after_ms(queue_len),
            });
        }
        Ok(())
    }

    /// About how long until a queue slot frees: the recent mean time between admissions, times
    /// how many must leave before one slot is below the bound.
    fn retry_after_ms(&self, queue_len: usize) -> u64 {
        let per = self.admit_interval_ms.unwrap_or(DEFAULT_RETRY_MS);
        let must_leave = (queue_len + 1).saturating_sub(self.cfg.max_queue).max(1) as u64;
        per.saturating_mul(must_leave)
            .clamp(MIN_RETRY_MS, MAX_RETRY_MS)
    }

    /// Cancels a waiting or running request: it is removed, its blocks freed and it is reported in
    /// `aborted` at the next `schedule`. Unknown ids (already ended) are ignored.
    pub fn abort(&mut self, id: RequestId) {
        if self.seqs.contains_key(&id) && !self.pending_aborts.contains(&id) {
            self.pending_aborts.push(id);
        }
    }

    /// Plans one forward step at time `now_ms`. See the module docs for the policy.
    pub fn schedule(&mut self, now_ms: u64) -> SchedulerOutput {
        self.step += 1;
        self.now_ms = now_ms;
        let mut out = SchedulerOutput {
            step: self.step,
            ..SchedulerOutput::default()
        };

        for id in std::mem::take(&mut self.pending_aborts) {
            if self.remove(id) {
                self.stats.aborted += 1;
                out.aborted.push((id, AbortReason::Cancelled));
            }
        }
        let mut expired: Vec<(u64, RequestId)> = self
            .seqs
            .values()
            .filter(|s| s.deadline_ms.is_some_and(|d| now_ms > d))
            .map(|s| (s.order, s.id))
            .collect();
        expired.sort_unstable();
        for (_, id) in expired {
            self.remove(id);
            self.stats.aborted += 1;
            out.aborted.push((id, AbortReason::DeadlineExceeded));
        }

        let mut order = self.running.clone();
        order.sort_by_key(|id| self.standing(&self.seqs[id]));
        let decoding = order.iter().any(|id| {
            self.seqs
                .get(id)
                .is_some_and(|s| s.running && s.is_decoding() && s.remaining() > 0)
        });
        let mut budget = if decoding {
            self.decoding_budget
        } else {
            self.cfg.max_step_tokens
        };

        // Decodes first: one token each for users already receiving a stream.
        for &id in &order {
            if budget == 0 {
                break;
            }
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            if !s.running || !s.is_decoding() || s.remaining() == 0 {
                continue;
            }
            if self.make_room(id, 1, true, &mut out) == 1 {
                self.push_scheduled(id, 1, 0, &mut out);
                budget -= 1;
            }
        }

        // Then prompt chunks of sequences already admitted.
        for &id in &order {
            if budget == 0 {
                break;
            }
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            if !s.running || s.is_decoding() {
                continue;
            }
            let want = s.remaining().min(budget);
            let n = self.make_room(id, want, false, &mut out);
            if n > 0 {
                self.push_scheduled(id, n, 0, &mut out);
                budget -= n;
            }
        }

        // Then newcomers, strictly in standing order.
        if out.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.cfg.max_running {
                let Some(id) = self.best_waiting() else {
                    break;
                };
                match self.try_admit(id, budget, now_ms, &mut out) {
                    Some(n) => budget -= n,
                    None => break,
                }
            }
        }

        debug_assert!(out.num_tokens() <= self.cfg.max_step_tokens);
        debug_assert!(out.scheduled.len() <= self.cfg.max_running);
        self.debug_check();
        out
    }

    /// Makes room for up to `want` new tokens of running sequence `id` and returns how many fit
    /// (blocks allocated). Preempts worse-standing sequences not yet scheduled this step when not a
    /// single token fits; `id` itself only if `may_preempt_self` (decodes: vLLM's rule).
    fn make_room(
        &mut self,
        id: RequestId,
        want: usize,
        may_preempt_self: bool,
        out: &mut SchedulerOutput,
    ) -> usize {
        let bs = self.cfg.block_size;
        loop {
            let s = &self.seqs[&id];
            let have = s.blocks.len();
            let fits = (have + self.blocks.available()) * bs - s.num_computed;
            if fits > 0 {
                let n = want.min(fits);
                let target = (s.num_computed + n).div_ceil(bs);
                for _ in have..target {
                    let b = self.blocks.allocate().expect("blocks counted as available");
                    self.seqs.get_mut(&id).expect("running").blocks.push(b);
                }
                return n;
            }
            let victim = self
                .running
                .iter()
                .copied()
                .filter(|v| self.seqs[v].scheduled_step != self.step)
                .max_by_key(|v| self.standing(&self.seqs[v]));
            match victim {
                Some(v) if v != id => self.preempt(v, out),
                Some(_) if may_preempt_self => {
                    self.preempt(id, out);
                    return 0;
                }
                _ => return 0,
            }
        }
    }

    /// Admits the best-standing waiting request with a first chunk of at most `budget` tokens, if
    /// the chunk's blocks are available; returns the chunk's length.
    fn try_admit(
        &mut self,
        id: RequestId,
        budget: usize,
        now_ms: u64,
        out: &mut SchedulerOutput,
    ) -> Option<usize> {
        let bs = self.cfg.block_size;
        let s = self.seqs.get_mut(&id).expect("waiting request");
        let len = s.tokens.len();
        let matched = if self.blocks.caching() {
            self.hasher.extend(&mut s.hashes, &s.tokens, bs);
            // Leave at least the last token to compute, so the chunk yields logits; hits are
            // whole blocks, so a fully cached prompt recomputes its last block.
            let max_hit_blocks = (len - 1) / bs;
            self.blocks.lookup(&s.hashes[..max_hit_blocks])
        } else {
            Vec::new()
        };
        let hit = matched.len() * bs;
        let n = (len - hit).min(budget);
        let new_blocks = (hit + n).div_ceil(bs) - matched.len();
        // Taking cached-free hits removes them from what allocation could reclaim.
        let available = self.blocks.available() - self.blocks.count_cached_free(&matched);
        if new_blocks > available {
            return None;
        }

        for &b in &matched {
            self.blocks.acquire(b);
        }
        let mut table = matched;
        for _ in 0..new_blocks {
            table.push(self.blocks.allocate().expect("blocks counted as available"));
        }
        if self.blocks.caching() {
            self.stats.prefix_lookups += 1;
            self.stats.prefix_lookup_tokens += len as u64;
            self.stats.prefix_hit_tokens += hit as u64;
        }
        s.num_registered = table.len().min(hit / bs);
        s.blocks = table;
        s.num_computed = hit;
        s.running = true;
        let (class, order) = (s.class, s.order);
        self.waiting[class as usize].remove(&order);
        self.running.push(id);

        if let Some(last) = self.last_admit_ms {
            let gap = now_ms.saturating_sub(last);
            self.admit_interval_ms = Some(match self.admit_interval_ms {
                None => gap,
                Some(avg) => (avg.saturating_mul(3).saturating_add(gap)) / 4,
            });
        }
        self.last_admit_ms = Some(now_ms);

        self.push_scheduled(id, n, hit, out);
        Some(n)
    }

    fn push_scheduled(
        &mut self,
        id: RequestId,
        n: usize,
        cached: usize,
        out: &mut SchedulerOutput,
    ) {
        let s = self.seqs.get_mut(&id).expect("scheduled sequence");
        s.scheduled_step = self.step;
        let start = s.num_computed;
        let end = start + n;
        out.scheduled.push(ScheduledSeq {
            id,
            kind: if start >= s.prefill_len {
                StepKind::Decode
            } else {
                StepKind::Prefill
            },
            tokens: s.tokens[start..end].to_vec(),
            start_pos: start,
            block_table: s.blocks.clone(),
            wants_logits: end == s.tokens.len(),
            cached_prompt_tokens: cached,
        });
    }

    /// Recompute-mode preemption: drop the blocks, wait again with everything as the prompt.
    fn preempt(&mut self, id: RequestId, out: &mut SchedulerOutput) {
        let s = self.seqs.get_mut(&id).expect("running sequence");
        // Tail first, so that its prefix blocks are the last of them to be evicted.
        for b in s.blocks.drain(..).rev() {
            self.blocks.release(b);
        }
        s.num_computed = 0;
        s.num_registered = 0;
        s.prefill_len = s.tokens.len();
        s.running = false;
        let (class, order) = (s.class, s.order);
        self.running.retain(|&r| r != id);
        self.waiting[class as usize].insert(order, id);
        self.stats.preemptions += 1;
        out.preempted.push(id);
    }

    /// Forgets a request and frees its blocks; false if unknown.
    fn remove(&mut self, id: RequestId) -> bool {
        let Some(s) = self.seqs.remove(&id) else {
            return false;
        };
        if s.running {
            self.running.retain(|&r| r != id);
        } else {
            self.waiting[s.class as usize].remove(&s.order);
        }
        for &b in s.blocks.iter().rev() {
            self.blocks.release(b);
        }
        true
    }

    /// Commits a step: the scheduled positions are now in the cache (newly full blocks join the
    /// prefix cache), `sampled` tokens are appended, and sequences in `finished` — or that reached
    /// `max_new_tokens` — end and free their blocks. Returns the requests that ended.
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(RequestId, u32)],
        finished: &[RequestId],
    ) -> Vec<RequestId> {
        if out.step != self.step || out.step == self.committed_step {
            debug_assert!(
                false,
                "update with the output of step {} (current step {}, last committed {})",
                out.step, self.step, self.committed_step
            );
            return Vec::new();
        }
        self.committed_step = out.step;
        let bs = self.cfg.block_size;

        for sch in &out.scheduled {
            let Some(s) = self.seqs.get_mut(&sch.id) else {
                continue;
            };
            debug_assert!(s.running && sch.start_pos == s.num_computed);
            s.num_computed = (sch.start_pos + sch.tokens.len()).min(s.tokens.len());
            // Register only now, once the forward pass has written the blocks: a sequence admitted
            // in the same step must not find a block still being filled.
            let full = s.num_computed / bs;
            if self.blocks.caching() && full > s.num_registered {
                self.hasher.extend(&mut s.hashes, &s.tokens, bs);
                for i in s.num_registered..full {
                    self.blocks.register(s.blocks[i], s.hashes[i]);
                }
                s.num_registered = full;
            }
        }

        let mut ending: Vec<RequestId> = Vec::new();
        for &(id, tok) in sampled {
            let Some(s) = self.seqs.get_mut(&id) else {
                debug_assert!(false, "token sampled for unknown request {id}");
                continue;
            };
            if !s.running || s.num_computed != s.tokens.len() {
                debug_assert!(
                    false,
                    "token sampled for request {id}, which wanted no logits"
                );
                continue;
            }
            s.tokens.push(tok);
            if s.tokens.len() - s.prompt_len >= s.max_new_tokens {
                ending.push(id);
            }
        }
        ending.extend_from_slice(finished);
        for sch in out.scheduled.iter().filter(|s| s.wants_logits) {
            let starved = self
                .seqs
                .get(&sch.id)
                .is_some_and(|s| s.running && s.num_computed == s.tokens.len());
            if starved && !finished.contains(&sch.id) {
                debug_assert!(false, "no token sampled for request {}", sch.id);
                ending.push(sch.id);
            }
        }

        let mut ended = Vec::new();
        for id in ending {
            if self.remove(id) {
                self.stats.finished += 1;
                ended.push(id);
            }
        }
        self.debug_check();
        ended
    }

    /// Gauges and counters.
    pub fn stats(&self) -> SchedStats {
        SchedStats {
            waiting: self.num_waiting(),
            running: self.running.len(),
            blocks_total: self.blocks.total(),
            blocks_used: self.blocks.num_in_use(),
            blocks_cached_free: self.blocks.num_cached_free(),
            blocks_free: self.blocks.num_free(),
            evictions: self.blocks.evictions(),
            ..self.stats.clone()
        }
    }

    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!("scheduler invariant broken: {e}");
        }
    }

    /// Checks every invariant (run after each call in debug builds): each block is exactly one of
    /// free / cached-free / in use; reference counts equal the number of block tables holding the
    /// block; no table holds a block twice or a block not in use; tables cover the computed
    /// positions; prefix-cache entries held by a sequence are the ones its own tokens hash to;
    /// queues and the request table agree; at most `max_running` sequences run.
    pub fn check_invariants(&self) -> Result<(), String> {
        let bs = self.cfg.block_size;
        let mut holders = vec![0u32; self.blocks.total()];
        // Per block, the last sequence seen holding it (index + 1), to find a block held twice.
        let mut last_holder = vec![0usize; self.blocks.total()];
        for (n, s) in self.seqs.values().enumerate() {
            let id = s.id;
            let queued = if s.running {
                self.running.iter().filter(|&&r| r == id).count() == 1
            } else {
                self.waiting[s.class as usize].get(&s.order) == Some(&id)
            };
            if !queued {
                return Err(format!("request {id} is not in its queue"));
            }
            if s.tokens.len() < s.prompt_len
                || s.tokens.len() - s.prompt_len >= s.max_new_tokens
                || s.prefill_len > s.tokens.len()
                || s.num_computed > s.tokens.len()
            {
                return Err(format!("request {id} has inconsistent token counts"));
            }
            if !s.running && (!s.blocks.is_empty() || s.num_computed != 0) {
                return Err(format!(
                    "waiting request {id} holds blocks or computed tokens"
                ));
            }
            if s.blocks.len() * bs < s.num_computed || s.blocks.len() > s.tokens.len().div_ceil(bs)
            {
                return Err(format!(
                    "request {id}: {} blocks for {} computed of {} tokens",
                    s.blocks.len(),
                    s.num_computed,
                    s.tokens.len()
                ));
            }
            if s.num_registered > s.num_computed / bs {
                return Err(format!(
                    "request {id} registered blocks it has not computed"
                ));
            }
            for &b in &s.blocks {
                let Some(h) = holders.get_mut(b as usize) else {
                    return Err(format!("request {id} holds block {b}, outside the pool"));
                };
                *h += 1;
                if last_holder[b as usize] == n + 1 {
                    return Err(format!("request {id} holds block {b} twice"));
                }
                last_holder[b as usize] = n + 1;
                if !matches!(self.blocks.state(b), BlockState::InUse { .. }) {
                    return Err(format!("request {id} holds block {b}, which is not in use"));
                }
            }
            // A block a sequence registered (or found) holds exactly the prefix its own tokens
            // hash to, unless another block won the registration race and this one stayed private.
            for i in 0..s.num_registered {
                let b = s.blocks[i];
                if let Some(h) = self.blocks.hash_of(b)
                    && s.hashes.get(i) != Some(&h)
                {
                    return Err(format!(
                        "request {id}: block {b} at {i} is cached under another prefix"
                    ));
                }
            }
        }
        if self.running.len() + self.num_waiting() != self.seqs.len() {
            return Err("queues and request table disagree".into());
        }
        if self.running.len() > self.cfg.max_running {
            return Err(format!(
                "{} running, more than max_running {}",
                self.running.len(),
                self.cfg.max_running
            ));
        }
        self.blocks.check(&holders)
    }
}
