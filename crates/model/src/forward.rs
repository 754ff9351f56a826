//! The batched forward pass. All new tokens of all sequences in a batch are stacked into one
//! activation matrix, so every weight matrix is streamed from memory once per step whatever the
//! batch size; only attention is per sequence, reading each sequence's own blocks of the paged
//! cache in place (no gathering into a contiguous copy).

use std::sync::Mutex;

use autoglm_kernels::{MatmulScratch, ThreadPool, matmul_many, ops};

use crate::weights::Mat;
use crate::{Activation, KvCache, Model, ModelError, attention, rope};

/// Which logits a sequence wants back from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last new token's (prefill's end, or decoding).
    Last,
    /// Every new token's (scoring, tests).
    All,
}

/// One sequence's share of a batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// The new tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Positions before this are already in the cache.
    pub start_pos: usize,
    /// Physical cache blocks holding positions 0.., in order; must cover every new position.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
}

/// Buffers reused from step to step so that decoding does not allocate.
#[derive(Default)]
pub struct ForwardScratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits_in: Vec<f32>,
    logits: Vec<f32>,
    /// Per token: position, sequence index.
    tok_pos: Vec<(usize, usize)>,
    /// Per token, cos/sin tables for the global and the sliding-window RoPE base.
    rope_global: Vec<Vec<(f32, f32)>>,
    rope_local: Vec<Vec<(f32, f32)>>,
    /// Per thread: attention scores, the f16-rounded query and the thread's output rows.
    att_scratch: Vec<Mutex<attention::Scratch>>,
    att_units: Vec<attention::Unit>,
    matmul: MatmulScratch,
}

fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

impl Model {
    /// Runs one step for a batch of sequences: writes their new tokens' K/V into the cache and
    /// returns the requested logits, `vocab_size` per row, rows in batch order (for each
    /// sequence: none, its last token, or all its tokens).
    pub fn forward<'s>(
        &self,
        pool: &ThreadPool,
        scratch: &'s mut ForwardScratch,
        kv: &mut KvCache,
        batch: &[SeqInput],
    ) -> Result<&'s [f32], ModelError> {
        let c = &self.config;
        let w = &self.weights;
        let file = &self.file;
        let (e, qd, kvd, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim);
        let kvl = kv.layout();
        if kvl.kv_dim != kvd || kvl.n_layers != c.n_layers {
            return Err(ModelError::BadBatch(
                "KV cache was made for another model".into(),
            ));
        }
        // Attention reads one head's row at a time, so 8-bit blocks must not straddle heads.
        if kvl.dtype == crate::KvDtype::Q8 && !hd.is_multiple_of(crate::Q8_BLOCK) {
            return Err(ModelError::BadConfig(format!(
                "an 8-bit KV cache needs a head size that is a multiple of {}, this model's is {hd}",
                crate::Q8_BLOCK
            )));
        }

        // Validate the batch and lay out tokens.
        let s = scratch;
        s.tok_pos.clear();
        let mut n_out = 0;
        for (si, seq) in batch.iter().enumerate() {
            let end = seq.start_pos + seq.tokens.len();
            if end > c.context_length {
                return Err(ModelError::BadBatch(format!(
                    "sequence {si} reaches position {end}, past the model's context of {}",
                    c.context_length
                )));
            }
            kv.check_table(seq.block_table, end)?;
            if let Some(&t) = seq.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::BadBatch(format!(
                    "token id {t} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            for i in 0..seq.tokens.len() {
                s.tok_pos.push((seq.start_pos + i, si));
            }
            n_out += match seq.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => usize::from(!seq.tokens.is_empty()),
                LogitsWanted::All => seq.tokens.len(),
            };
        }
        let n = s.tok_pos.len();
        if n == 0 {
            s.logits.clear();
            return Ok(&s.logits);
        }

        // Embeddings.
        resize(&mut s.x, n * e);
        let embd = w.tok_embd.view(file);
        let mut t = 0;
        for seq in batch {
            for &tok in seq.tokens {
                let row = &mut s.x[t * e..(t + 1) * e];
                embd.dequantize_row(tok as usize, row);
                if c.embed_scale != 1.0 {
                    ops::scale_inplace(row, c.embed_scale);
                }
                t += 1;
            }
        }

        // RoPE tables, once per token for the whole step.
        let need_local = c.sliding_window.is_some() && c.rope_freq_base_swa != c.rope_freq_base;
        s.rope_global.resize_with(n, Vec::new);
        s.rope_local.resize_with(n, Vec::new);
        for (i, &(pos, _)) in s.tok_pos.iter().enumerate() {
            rope::angles(pos, c.rope_dims, c.rope_freq_base, &mut s.rope_global[i]);
            if need_local {
                rope::angles(pos, c.rope_dims, c.rope_freq_base_swa, &mut s.rope_local[i]);
            }
        }

        let nt = pool.n_threads();
        if s.att_scratch.len() != nt {
            s.att_scratch = (0..nt).map(|_| Mutex::default()).collect();
        }

        resize(&mut s.xn, n * e);
        resize(&mut s.q, n * qd);
        resize(&mut s.k, n * kvd);
        resize(&mut s.v, n * kvd);
        resize(&mut s.att, n * qd);
        resize(&mut s.o, n * e);
        resize(&mut s.gate, n * c.n_ff);
        resize(&mut s.up, n * c.n_ff);

        let mm = |m: &Mat, x: &[f32], out: &mut [f32], ms: &mut MatmulScratch| {
            matmul_many(pool, &[m.mref(file)], x, n, &mut [out], ms);
        };

        for (il, layer) in w.layers.iter().enumerate() {
            let swa = c.is_swa_layer(il);
            // Attention block.
            for (x, xn) in s.x.chunks_exact(e).zip(s.xn.chunks_exact_mut(e)) {
                ops::rms_norm(x, &layer.attn_norm, c.rms_eps, xn);
            }
            // Q, K and V share one activation quantisation and one pool run.
            matmul_many(
                pool,
                &[
                    layer.wq.mref(file),
                    layer.wk.mref(file),
                    layer.wv.mref(file),
                ],
                &s.xn,
                n,
                &mut [&mut s.q, &mut s.k, &mut s.v],
                &mut s.matmul,
            );
            let tables = if swa && need_local {
                &s.rope_local
            } else {
                &s.rope_global
            };
            let per_token = s.q.chunks_exact_mut(qd).zip(s.k.chunks_exact_mut(kvd));
            for ((q, k), cs) in per_token.zip(tables.iter()) {
                for head in q.chunks_exact_mut(hd) {
                    if let Some(qn) = &layer.q_norm {
                        ops::rms_norm_inplace(head, qn, c.rms_eps);
                    }
                    rope::apply(head, cs, c.rope_style);
                    ops::scale_inplace(head, c.attn_scale);
                }
                for head in k.chunks_exact_mut(hd) {
                    if let Some(kn) = &layer.k_norm {
                        ops::rms_norm_inplace(head, kn, c.rms_eps);
                    }
                    rope::apply(head, cs, c.rope_style);
                }
            }
            for (ti, &(pos, si)) in s.tok_pos.iter().enumerate() {
                let slot = kv.slot(batch[si].block_table, pos);
                kv.write(
                    il,
                    slot,
                    &s.k[ti * kvd..(ti + 1) * kvd],
                    &s.v[ti * kvd..(ti + 1) * kvd],
                );
            }
            let window = if swa { c.sliding_window } else { None };
            let shape = attention::Shape {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                window,
            };
            attention::plan(batch, shape, nt, &mut s.att_units);
            attention::run(
                pool,
                kv,
                il,
                batch,
                &s.tok_pos,
                &s.q,
                &mut s.att,
                &s.att_units,
                &s.att_scratch,
                shape,
            );
            mm(&layer.wo, &s.att, &mut s.o, &mut s.matmul);
            if let Some(pn) = &layer.post_attn_norm {
                for o in s.o.chunks_exact_mut(e) {
                    ops::rms_norm_inplace(o, pn, c.rms_eps);
                }
            }
            ops::add_inplace(&mut s.x, &s.o);

            // Feed-forward block.
            for (x, xn) in s.x.chunks_exact(e).zip(s.xn.chunks_exact_mut(e)) {
                ops::rms_norm(x, &layer.ffn_norm, c.rms_eps, xn);
            }
            // Gate and up share one activation quantisation and one pool run.
            matmul_many(
                pool,
                &[layer.gate.mref(file), layer.up.mref(file)],
                &s.xn,
                n,
                &mut [&mut s.gate, &mut s.up],
                &mut s.matmul,
            );
            match c.activation {
                Activation::SiluGlu => ops::silu_mul_inplace(&mut s.gate, &s.up),
                Activation::GeluGlu => ops::gelu_tanh_mul_inplace(&mut s.gate, &s.up),
            }
            mm(&layer.down, &s.gate, &mut s.o, &mut s.matmul);
            if let Some(pn) = &layer.post_ffn_norm {
                for o in s.o.chunks_exact_mut(e) {
                    ops::rms_norm_inplace(o, pn, c.rms_eps);
                }
            }
            ops::add_inplace(&mut s.x, &s.o);
        }

        // Final norm and output projection, only for the rows that want logits.
        resize(&mut s.logits_in, n_out * e);
        let mut r = 0;
        let mut t = 0;
        for seq in batch {
            let len = seq.tokens.len();
            let rows = match seq.logits {
                LogitsWanted::None => 0..0,
                LogitsWanted::Last => len.saturating_sub(1)..len,
                LogitsWanted::All => 0..len,
            };
            for i in rows {
                let x = &s.x[(t + i) * e..(t + i + 1) * e];
                ops::rms_norm(
                    x,
                    &w.output_norm,
                    c.rms_eps,
                    &mut s.logits_in[r * e..(r + 1) * e],
                );
                r += 1;
            }
            t += len;
        }
        resize(&mut s.logits, n_out * c.vocab_size);
        if n_out > 0 {
            matmul_many(
                pool,
                &[w.output.mref(file)],
                &s.logits_in,
                n_out,
                &mut [&mut s.logits],
                &mut s.matmul,
            );
        }
        if let Some(cap) = c.final_logit_softcap {
            for l in s.logits.iter_mut() {
                *l = (*l / cap).tanh() * cap;
            }
        }
        Ok(&s.logits)
    }
}
