//! Causal attention over the paged KV cache, for a whole batch at once.
//!
//! Work is cut into *units*: one sequence, one KV head group (or a single head of it), and a tile
//! of up to [`TILE`] consecutive new tokens. Within a unit the kernels of `autoglm_kernels::attn`
//! read each cached K and V row once, in its storage format where it lies in its block, for all
//! the unit's query rows (tile tokens × heads sharing that KV head), so a prompt's attention
//! costs matrix-like work rather than one pass over the cache per query. The pool's threads take
//! units from a shared counter, which balances the causal triangle and a thread that starts
//! late; when there are too few (one decoding sequence of a model with one KV head), units split
//! the group into single heads so both threads work.
//!
//! Queries are rounded to f16 first, as llama.cpp converts them before its f16 dot products.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use autoglm_kernels::{ThreadPool, attn, ops};

use crate::{KvCache, SeqInput};

/// New tokens per unit: enough query rows to amortise reading each K/V row, few enough that
/// a unit's scores stay in cache.
const TILE: usize = 16;

/// The attention geometry of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Sliding window (the last `w` positions, the current one included), if the layer has one.
    pub window: Option<usize>,
}

impl Shape {
    /// The first position a token at `pos` attends to: its window's start, or 0.
    fn first_visible(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Unit {
    seq: usize,
    /// Token range in the batch's flattened token order.
    t0: usize,
    t1: usize,
    /// Head range, all within one KV group.
    h0: usize,
    h1: usize,
}

/// One thread's buffers, reused from step to step.
#[derive(Default)]
pub(crate) struct Scratch {
    q: Vec<f32>,
    /// Cache element offset of each position's K/V row for the unit's KV head.
    offs: Vec<usize>,
    /// The same for the thread's next unit.
    next_offs: Vec<usize>,
    scores: Vec<f32>,
    out: Vec<f32>,
    /// Where each finished output row goes in the attention output.
    dest: Vec<usize>,
    rows: Vec<f32>,
}

/// Cuts the batch into units (into `units`, reused).
pub(crate) fn plan(batch: &[SeqInput], shape: Shape, n_threads: usize, units: &mut Vec<Unit>) {
    units.clear();
    let group = shape.n_head / shape.n_head_kv;
    let tiles: usize = batch.iter().map(|s| s.tokens.len().div_ceil(TILE)).sum();
    let split_heads = group > 1 && tiles * shape.n_head_kv < 2 * n_threads;
    let mut offset = 0;
    for (si, seq) in batch.iter().enumerate() {
        let len = seq.tokens.len();
        for t0 in (0..len).step_by(TILE) {
            let t1 = (t0 + TILE).min(len);
            for g in 0..shape.n_head_kv {
                let heads = g * group..(g + 1) * group;
                if split_heads {
                    for h in heads {
                        units.push(Unit {
                            seq: si,
                            t0: offset + t0,
                            t1: offset + t1,
                            h0: h,
                            h1: h + 1,
                        });
                    }
                } else {
                    units.push(Unit {
                        seq: si,
                        t0: offset + t0,
                        t1: offset + t1,
                        h0: heads.start,
                        h1: heads.end,
                    });
                }
            }
        }
        offset += len;
    }
}

/// Attention output for every new token, `n_head * head_dim` per token, into `att`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    pool: &ThreadPool,
    kv: &KvCache,
    layer: usize,
    batch: &[SeqInput],
    tok_pos: &[(usize, usize)],
    q: &[f32],
    att: &mut [f32],
    units: &[Unit],
    scratch: &[Mutex<Scratch>],
    shape: Shape,
) {
    let nt = pool.n_threads();
    // Units are taken from a shared counter, so a thread that starts late (descheduled on a
    // shared machine) takes what is left instead of leaving a fixed half to the caller.
    let next = AtomicUsize::new(0);
    pool.run(&|tid, _| {
        let Some(Ok(mut guard)) = scratch.get(tid).map(|m| m.lock()) else {
            return;
        };
        let s = &mut *guard;
        s.rows.clear();
        s.dest.clear();
        // One unit of lookahead: while a unit computes, the next one's K rows are on their
        // way from memory (and its own V rows while its scores run), instead of each row
        // being waited for when a kernel reaches it.
        let (kc, vc) = kv.layer(layer);
        let claim = || units.get(next.fetch_add(1, Ordering::Relaxed));
        let mut cur = claim();
        if let Some(u) = cur {
            offsets(kv, batch, tok_pos, u, shape, &mut s.offs);
            attn::prefetch(kc.rows(), &s.offs, shape.head_dim);
        }
        while let Some(u) = cur {
            let nxt = claim();
            match nxt {
                Some(n) => offsets(kv, batch, tok_pos, n, shape, &mut s.next_offs),
                None => s.next_offs.clear(),
            }
            attn::prefetch(vc.rows(), &s.offs, shape.head_dim);
            unit(kv, layer, tok_pos, q, u, shape, s);
            std::mem::swap(&mut s.offs, &mut s.next_offs);
            cur = nxt;
        }
    });
    let hd = shape.head_dim;
    for m in scratch.iter().take(nt) {
        if let Ok(s) = m.lock() {
            for (&d, row) in s.dest.iter().zip(s.rows.chunks_exact(hd)) {
                att[d..d + hd].copy_from_slice(row);
            }
        }
    }
}

/// The cache offsets of unit `u`'s rows (positions from the first token's window start to the
/// last token), into `offs`.
fn offsets(
    kv: &KvCache,
    batch: &[SeqInput],
    tok_pos: &[(usize, usize)],
    u: &Unit,
    shape: Shape,
    offs: &mut Vec<usize>,
) {
    let hd = shape.head_dim;
    let g = u.h0 / (shape.n_head / shape.n_head_kv);
    let table = batch[u.seq].block_table;
    let p_lo = shape.first_visible(tok_pos[u.t0].0);
    let p_hi = tok_pos[u.t1 - 1].0;
    offs.clear();
    kv.slots_into(table, p_lo, p_hi + 1, offs);
    for o in offs.iter_mut() {
        *o += g * hd;
    }
}

/// Attention for unit `u`, whose row offsets are already in `s.offs`; once its scores are
/// done, it starts loading the K rows of the thread's next unit (`s.next_offs`).
fn unit(
    kv: &KvCache,
    layer: usize,
    tok_pos: &[(usize, usize)],
    q: &[f32],
    u: &Unit,
    shape: Shape,
    s: &mut Scratch,
) {
    let hd = shape.head_dim;
    let qd = shape.n_head * hd;
    let nh = u.h1 - u.h0;
    let (kc, vc) = kv.layer(layer);

    // Query rows: row (t - t0) * nh + (h - h0), rounded through f16.
    let n_rows = (u.t1 - u.t0) * nh;
    s.q.clear();
    for t in u.t0..u.t1 {
        for h in u.h0..u.h1 {
            s.q.extend_from_slice(&q[t * qd + h * hd..][..hd]);
        }
    }
    ops::round_f16_inplace(&mut s.q);
    let p_lo = shape.first_visible(tok_pos[u.t0].0);
    let npos = s.offs.len();

    // Every row against every position of the unit; a row then keeps only what it sees
    // (its causal and window range, contiguous), the rest weighing 0.
    s.scores.resize(n_rows * npos, 0.0);
    attn::scores(&s.q, n_rows, hd, kc.rows(), &s.offs, &mut s.scores);
    attn::prefetch(kc.rows(), &s.next_offs, hd);
    for (i, &(pos, _)) in tok_pos[u.t0..u.t1].iter().enumerate() {
        let (a, b) = (shape.first_visible(pos) - p_lo, pos + 1 - p_lo);
        for row in s.scores[i * nh * npos..(i + 1) * nh * npos].chunks_exact_mut(npos) {
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            ops::softmax_inplace(&mut row[a..b]);
        }
    }
    s.out.resize(n_rows * hd, 0.0);
    attn::weighted_sum(&s.scores, n_rows, hd, vc.rows(), &s.offs, &mut s.out);
    for t in u.t0..u.t1 {
        for h in u.h0..u.h1 {
            s.dest.push(t * qd + h * hd);
        }
    }
    s.rows.extend_from_slice(&s.out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvDtype, KvLayout, LogitsWanted};
    use autoglm_kernels::f16::round_f16;
    use autoglm_kernels::quantize::test_values as values;

    /// Straightforward attention for one (token, head) over positions [lo, pos].
    fn naive(
        kv: &KvCache,
        table: &[u32],
        q: &[f32],
        pos: usize,
        g: usize,
        shape: Shape,
    ) -> Vec<f32> {
        let hd = shape.head_dim;
        let lo = shape.first_visible(pos);
        let q16: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
        let scores: Vec<f32> = (lo..=pos)
            .map(|p| {
                let (k, _) = kv.read(0, table, p);
                q16.iter()
                    .zip(&k[g * hd..(g + 1) * hd])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        let mut out = vec![0.0; hd];
        for (i, p) in (lo..=pos).enumerate() {
            let (_, v) = kv.read(0, table, p);
            for (o, x) in out.iter_mut().zip(&v[g * hd..(g + 1) * hd]) {
                *o += e[i] / sum * x;
            }
        }
        out
    }

    fn check(
        n_head: usize,
        n_head_kv: usize,
        window: Option<usize>,
        threads: usize,
        dtype: KvDtype,
    ) {
        // 8-bit rows are quantised in blocks of 32 values, which must not straddle heads.
        let hd = if dtype == KvDtype::Q8 { 32 } else { 16 };
        let shape = Shape {
            n_head,
            n_head_kv,
            head_dim: hd,
            window,
        };
        let kvd = n_head_kv * hd;
        let layout = KvLayout {
            n_layers: 1,
            kv_dim: kvd,
            block_size: 4,
            n_blocks: 32,
            dtype,
        };
        let mut kv = KvCache::new(layout).unwrap();
        // Two sequences with scattered blocks: one decoding at position 40, one prefilling
        // positions 3..23 (41 and 23 cached positions in all).
        let tables: [Vec<u32>; 2] = [
            vec![9, 3, 30, 1, 7, 12, 0, 22, 5, 17, 25],
            vec![2, 31, 8, 14, 4, 19],
        ];
        let lens = [41usize, 23];
        for (s, table) in tables.iter().enumerate() {
            for p in 0..lens[s] {
                let k = values((s * 1000 + p) as u64, kvd);
                let v = values((s * 1000 + p + 500) as u64, kvd);
                kv.write(0, kv.slot(table, p), &k, &v);
            }
        }
        let toks_a = [0u32];
        let toks_b = [0u32; 20];
        let batch = [
            SeqInput {
                tokens: &toks_a,
                start_pos: 40,
                block_table: &tables[0],
                logits: LogitsWanted::Last,
            },
            SeqInput {
                tokens: &toks_b,
                start_pos: 3,
                block_table: &tables[1],
                logits: LogitsWanted::Last,
            },
        ];
        let tok_pos: Vec<(usize, usize)> = std::iter::once((40, 0))
            .chain((3..23).map(|p| (p, 1)))
            .collect();
        let qd = n_head * hd;
        let q = values(7, tok_pos.len() * qd);
        let mut att = vec![f32::NAN; tok_pos.len() * qd];
        let pool = ThreadPool::new(threads);
        let scratch: Vec<Mutex<Scratch>> = (0..threads).map(|_| Mutex::default()).collect();
        let mut units = Vec::new();
        plan(&batch, shape, threads, &mut units);
        run(
            &pool, &kv, 0, &batch, &tok_pos, &q, &mut att, &units, &scratch, shape,
        );
        let group = n_head / n_head_kv;
        for (t, &(pos, s)) in tok_pos.iter().enumerate() {
            for h in 0..n_head {
                let want = naive(
                    &kv,
                    &tables[s],
                    &q[t * qd + h * hd..][..hd],
                    pos,
                    h / group,
                    shape,
                );
                let got = &att[t * qd + h * hd..][..hd];
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "token {t} head {h}: {a} vs {b} ({n_head}/{n_head_kv} heads, window {window:?}, {dtype:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_attention_equals_naive_attention() {
        for dtype in [KvDtype::F16, KvDtype::Q8] {
            for threads in [1, 2] {
                check(4, 4, None, threads, dtype);
                check(6, 2, None, threads, dtype);
                check(4, 1, Some(5), threads, dtype);
                check(9, 3, Some(17), threads, dtype);
            }
        }
    }
}
