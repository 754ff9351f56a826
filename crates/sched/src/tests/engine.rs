//! A fake engine that plays the forward pass against a fake KV cache, to check what the scheduler
//! hands out rather than trusting it.
//!
//! Each cache slot holds a fingerprint of the whole prefix ending at that position — what a real
//! K/V row depends on. Before a sequence's step every earlier position of its table must hold the
//! fingerprint of its own prefix, so a shared block with the wrong contents, a block reused while
//! still referenced, or a cache hit on a different prompt is caught by the data, not only by the
//! scheduler's own bookkeeping.

use std::collections::HashMap;

use crate::blocks::BlockManager;
use crate::{RequestId, SchedulerConfig, SchedulerOutput, StepKind};

/// What the fake sampler emits at position `pos`: a function of the position only, like greedy
/// decoding of identical prefixes, so equal prompts generate equal tokens.
pub fn sampled_token(pos: usize) -> u32 {
    100_000 + pos as u32
}

fn mix(h: u64, tok: u32) -> u64 {
    (h ^ u64::from(tok))
        .wrapping_mul(0x0100_0000_01b3)
        .rotate_left(29)
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
}

pub struct FakeEngine {
    block_size: usize,
    max_step_tokens: usize,
    max_running: usize,
    /// Per block and slot: the fingerprint of the prefix written there.
    kv: Vec<Vec<Option<u64>>>,
    /// Every live request's tokens as the engine knows them (prompt + sampled).
    tokens: HashMap<RequestId, Vec<u32>>,
}

impl FakeEngine {
    pub fn new(cfg: &SchedulerConfig) -> Self {
        FakeEngine {
            block_size: cfg.block_size.max(1),
            max_step_tokens: cfg.max_step_tokens.max(1),
            max_running: cfg.max_running.max(1),
            kv: vec![vec![None; cfg.block_size.max(1)]; cfg.num_blocks],
            tokens: HashMap::new(),
        }
    }

    pub fn add(&mut self, id: RequestId, prompt: &[u32]) {
        self.tokens.insert(id, prompt.to_vec());
    }

    pub fn forget(&mut self, id: RequestId) {
        self.tokens.remove(&id);
    }

    /// Takes back the token `run` sampled for `id` (the step was never reported to the scheduler).
    pub fn unsample(&mut self, id: RequestId) {
        if let Some(t) = self.tokens.get_mut(&id) {
            t.pop();
        }
    }

    /// Checks a step's batch against the engine's own view, "runs" it (writes the new positions)
    /// and returns a token for every sequence wanting logits, with `overrides` taking precedence.
    pub fn run(
        &mut self,
        out: &SchedulerOutput,
        blocks: &BlockManager,
        overrides: &HashMap<RequestId, u32>,
    ) -> Result<Vec<(RequestId, u32)>, String> {
        let bs = self.block_size;
        if out.num_tokens() > self.max_step_tokens {
            return Err(format!(
                "step {}: {} tokens, budget {}",
                out.step,
                out.num_tokens(),
                self.max_step_tokens
            ));
        }
        if out.scheduled.len() > self.max_running {
            return Err(format!(
                "step {}: more than max_running sequences",
                out.step
            ));
        }
        let mut seen = Vec::new();
        for s in &out.scheduled {
            if seen.contains(&s.id) {
                return Err(format!("step {}: request {} twice", out.step, s.id));
            }
            seen.push(s.id);
            if out.preempted.contains(&s.id) || out.aborted.iter().any(|a| a.0 == s.id) {
                return Err(format!("request {} scheduled and preempted/aborted", s.id));
            }
        }
        // Read everything before writing anything: sequences in one batch must not depend on
        // each other's writes of this step.
        for s in &out.scheduled {
            let toks = self
                .tokens
                .get(&s.id)
                .ok_or_else(|| format!("request {} unknown to the engine", s.id))?;
            let end = s.start_pos + s.tokens.len();
            if s.tokens.is_empty() || end > toks.len() || toks[s.start_pos..end] != s.tokens[..] {
                return Err(format!(
                    "request {}: scheduled tokens {}..{end} differ from its tokens",
                    s.id, s.start_pos
                ));
            }
            if s.wants_logits != (end == toks.len()) {
                return Err(format!("request {}: wants_logits is wrong", s.id));
            }
            if s.kind == StepKind::Decode && (s.tokens.len() != 1 || !s.wants_logits) {
                return Err(format!(
                    "request {}: a decode is one token wanting logits",
                    s.id
                ));
            }
            if s.block_table.len() * bs < end {
                return Err(format!("request {}: table too short for {end}", s.id));
            }
            // Shared (registered) blocks are immutable: no new position may land in one.
            for pos in s.start_pos..end {
                let b = s.block_table[pos / bs];
                if blocks.hash_of(b).is_some() {
                    return Err(format!(
                        "request {}: writes position {pos} into cached block {b}",
                        s.id
                    ));
                }
            }
            let mut h = 0;
            for (pos, &t) in toks[..s.start_pos].iter().enumerate() {
                h = mix(h, t);
                let b = s.block_table[pos / bs] as usize;
                if self.kv[b][pos % bs] != Some(h) {
                    return Err(format!(
                        "request {}: position {pos} (block {b}) holds another prefix",
                        s.id
                    ));
                }
            }
        }
        let mut sampled = Vec::new();
        for s in &out.scheduled {
            let toks = self.tokens.get_mut(&s.id).expect("checked above");
            let end = s.start_pos + s.tokens.len();
            let mut h = 0;
            for (pos, &t) in toks[..end].iter().enumerate() {
                h = mix(h, t);
                if pos >= s.start_pos {
                    self.kv[s.block_table[pos / bs] as usize][pos % bs] = Some(h);
                }
            }
            if s.wants_logits {
                let tok = overrides
                    .get(&s.id)
                    .copied()
                    .unwrap_or_else(|| sampled_token(end));
                toks.push(tok);
                sampled.push((s.id, tok));
            }
        }
        Ok(sampled)
    }
}
