//! Throughput measurement in llama-bench's terms: pp (prompt processing: one forward pass over N
//! prompt tokens), tg (generation: N single-token steps) and, beyond llama-bench, aggregate
//! generation speed of B sequences decoding together. Medians over repetitions, after a warm-up.
//!
//! The batched figure decodes after a prompt of `batch_prompt` tokens per sequence (prefilled
//! once, untimed), as llama-batched-bench's S_TG does with `-npp`, so the two compare the same
//! attention lengths.

use std::time::Instant;

use autoglm_model::{LogitsWanted, SeqInput};

use crate::{Engine, EngineError, Rng};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub pp_tokens: usize,
    pub tg_tokens: usize,
    /// Sequences decoding together for the batched figure (0 or 1: skip it).
    pub batch: usize,
    /// Prompt tokens each batched sequence holds before its timed decode steps.
    pub batch_prompt: usize,
    pub repetitions: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            pp_tokens: 512,
            tg_tokens: 128,
            batch: 0,
            batch_prompt: 128,
            repetitions: 5,
        }
    }
}

/// Medians in tokens per second; every sample is kept for whoever wants the spread.
#[derive(Debug, Clone, Default)]
pub struct BenchResult {
    pub pp_tok_s: Option<f64>,
    pub tg_tok_s: Option<f64>,
    pub batch_tg_tok_s: Option<f64>,
    pub pp_samples: Vec<f64>,
    pub tg_samples: Vec<f64>,
    pub batch_samples: Vec<f64>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

impl Engine {
    /// Runs the benchmark. Token ids are drawn at random (fixed seed) like llama-bench's.
    pub fn bench(
        &mut self,
        cfg: &BenchConfig,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BenchResult, EngineError> {
        let ctx = self.model.config().context_length;
        let vocab = self.model.config().vocab_size as u64;
        let batch = cfg.batch.max(1);
        let batch_prompt = if cfg.batch > 1 { cfg.batch_prompt } else { 0 };
        let need = cfg
            .pp_tokens
            .max(cfg.tg_tokens + 1)
            .max(batch_prompt + cfg.tg_tokens);
        if need > ctx {
            return Err(EngineError::PromptTooLong {
                prompt: need,
                context: ctx,
            });
        }
        let bs = self.kv.block_size();
        let per_seq = need.div_ceil(bs);
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|_| self.blocks.allocate(per_seq))
            .collect::<Option<_>>()
            .ok_or(EngineError::CacheFull {
                needed: per_seq * batch,
                free: self.blocks.free(),
            })?;
        let mut rng = Rng::new(42);
        let mut random_tokens =
            |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect() };
        let result = (|| {
            let mut r = BenchResult::default();
            let reps = cfg.repetitions.max(1);
            if cfg.pp_tokens > 0 {
                let toks = random_tokens(cfg.pp_tokens);
                let prompt = [SeqInput {
                    tokens: &toks,
                    start_pos: 0,
                    block_table: &tables[0],
                    logits: LogitsWanted::Last,
                }];
                r.pp_samples = rates(reps, cfg.pp_tokens, || {
                    self.model
                        .forward(&self.pool, &mut self.scratch, &mut self.kv, &prompt)
                        .map(drop)
                        .map_err(EngineError::from)
                })?;
                r.pp_tok_s = median(&r.pp_samples);
                progress(&format!(
                    "pp{}: {:.1} tok/s",
                    cfg.pp_tokens,
                    r.pp_tok_s.unwrap_or(0.0)
                ));
            }
            if cfg.tg_tokens > 0 {
                let steps: Vec<Vec<u32>> = (0..cfg.tg_tokens).map(|_| random_tokens(1)).collect();
                r.tg_samples = rates(reps, cfg.tg_tokens, || {
                    self.decode_steps(&tables[..1], 0, &steps)
                })?;
                r.tg_tok_s = median(&r.tg_samples);
                progress(&format!(
                    "tg{}: {:.1} tok/s",
                    cfg.tg_tokens,
                    r.tg_tok_s.unwrap_or(0.0)
                ));
            }
            if cfg.batch > 1 && cfg.tg_tokens > 0 {
                if batch_prompt > 0 {
                    let prompts: Vec<Vec<u32>> =
                        (0..batch).map(|_| random_tokens(batch_prompt)).collect();
                    let inputs: Vec<SeqInput> = prompts
                        .iter()
                        .zip(&tables)
                        .map(|(toks, table)| SeqInput {
                            tokens: toks,
                            start_pos: 0,
                            block_table: table,
                            logits: LogitsWanted::Last,
                        })
                        .collect();
                    self.model
                        .forward(&self.pool, &mut self.scratch, &mut self.kv, &inputs)?;
                }
                let steps: Vec<Vec<u32>> =
                    (0..cfg.tg_tokens).map(|_| random_tokens(batch)).collect();
                r.batch_samples = rates(reps, batch * cfg.tg_tokens, || {
                    self.decode_steps(&tables, batch_prompt, &steps)
                })?;
                r.batch_tg_tok_s = median(&r.batch_samples);
                progress(&format!(
                    "batch {batch} x tg{}: {:.1} tok/s aggregate",
                    cfg.tg_tokens,
                    r.batch_tg_tok_s.unwrap_or(0.0)
                ));
            }
            Ok(r)
        })();
        for t in &tables {
            self.blocks.release(t);
        }
        result
    }

    /// One forward step per row of `steps`, each row holding one new token per sequence, the
    /// sequences' positions advancing together from 0.
    /// One forward step per row of `steps` (a token for each sequence), from position `start`.
    fn decode_steps(
        &mut self,
        tables: &[Vec<u32>],
        start: usize,
        steps: &[Vec<u32>],
    ) -> Result<(), EngineError> {
        for (pos, row) in steps.iter().enumerate() {
            let inputs: Vec<SeqInput> = row
                .iter()
                .zip(tables)
                .map(|(tok, table)| SeqInput {
                    tokens: std::slice::from_ref(tok),
                    start_pos: start + pos,
                    block_table: table,
                    logits: LogitsWanted::Last,
                })
                .collect();
            self.model
                .forward(&self.pool, &mut self.scratch, &mut self.kv, &inputs)?;
        }
        Ok(())
    }
}

/// Runs `f` once to warm up, then `reps` times, returning the tokens/s of each timed run.
fn rates(
    reps: usize,
    tokens: usize,
    mut f: impl FnMut() -> Result<(), EngineError>,
) -> Result<Vec<f64>, EngineError> {
    let mut out = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let t0 = Instant::now();
        f()?;
        if rep > 0 {
            out.push(tokens as f64 / t0.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}
