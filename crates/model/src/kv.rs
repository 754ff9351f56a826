//! The paged KV cache: one pool of fixed-size blocks per layer. A sequence owns a *block
//! table*, the list of physical blocks holding its positions in order; which blocks belong to
//! whom is decided outside this crate (the engine's block allocator, or the scheduler's block
//! manager). This type only stores data.
//!
//! K and V are stored as f16 by default (as llama.cpp does), or as 8-bit blocks
//! ([`KvDtype::Q8`]: llama.cpp's `q8_0` cache type, 32 values sharing one f16 scale) which holds
//! nearly twice the tokens in the same memory. Attention reads either format in place through
//! the kernels' [`KvRows`] view.

use autoglm_kernels::attn::KvRows;
use autoglm_kernels::f16::{f16_to_f32, f32_to_f16};
use autoglm_kernels::ops;

use crate::ModelError;

/// Values per scale in [`KvDtype::Q8`] storage.
pub const Q8_BLOCK: usize = autoglm_kernels::attn::Q8_BLOCK;

/// How cached K and V values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// 2 bytes a value.
    #[default]
    F16,
    /// Blocks of 32 signed bytes with one f16 scale: 1.0625 bytes a value.
    Q8,
}

impl KvDtype {
    /// Bytes that `n` values take (`n` a multiple of [`Q8_BLOCK`] for Q8).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => 2 * n,
            KvDtype::Q8 => n + 2 * n.div_ceil(Q8_BLOCK),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::Q8 => "q8_0",
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<KvDtype, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvDtype::F16),
            "q8" | "q8_0" => Ok(KvDtype::Q8),
            _ => Err(format!(
                "unknown KV cache type {s:?} (expected f16 or q8_0)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    /// K (and V) width of one token in one layer: n_head_kv * head_dim.
    pub kv_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub n_blocks: usize,
    pub dtype: KvDtype,
}

impl KvLayout {
    /// The same layout storing values as `dtype`.
    pub fn with_dtype(self, dtype: KvDtype) -> KvLayout {
        KvLayout { dtype, ..self }
    }

    /// Bytes one token occupies across all layers, K and V.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.dtype.bytes(self.kv_dim)
    }
}

/// One layer's K or V values for every slot of the pool.
pub(crate) enum Plane {
    F16(Vec<u16>),
    Q8 {
        /// One signed byte a value.
        q: Vec<i8>,
        /// One f16 scale per [`Q8_BLOCK`] values.
        d: Vec<u16>,
    },
}

impl Plane {
    fn new(dtype: KvDtype, n: usize) -> Plane {
        match dtype {
            KvDtype::F16 => Plane::F16(vec![0; n]),
            KvDtype::Q8 => Plane::Q8 {
                q: vec![0; n],
                d: vec![0; n / Q8_BLOCK],
            },
        }
    }

    /// Writes every page of the plane once (see [`KvCache::prefault`]).
    fn prefault(&mut self) {
        fn touch<T: Copy + Default>(v: &mut [T]) {
            // black_box: the allocation is already zero (calloc), so a plain fill may be
            // removed as a no-op, and the point is the page faults.
            std::hint::black_box(&mut *v).fill(T::default());
        }
        match self {
            Plane::F16(h) => touch(h),
            Plane::Q8 { q, d } => {
                touch(q);
                touch(d);
            }
        }
    }

    /// Stores `x` at element `at` (a row start, so Q8 blocks are aligned).
    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Plane::F16(h) => ops::f32_to_f16_row(x, &mut h[at..at + x.len()]),
            Plane::Q8 { q, d } => {
                // ggml's quantize_row_q8_0: the scale maps the block's largest magnitude to 127.
                for (b, xs) in x.chunks_exact(Q8_BLOCK).enumerate() {
                    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let scale = amax / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    let o = at + b * Q8_BLOCK;
                    for (dst, &v) in q[o..o + Q8_BLOCK].iter_mut().zip(xs) {
                        *dst = (v * inv).round() as i8;
                    }
                    d[o / Q8_BLOCK] = f32_to_f16(scale);
                }
            }
        }
    }

    /// The whole plane as the attention kernels read it.
    pub(crate) fn rows(&self) -> KvRows<'_> {
        match self {
            Plane::F16(h) => KvRows::F16(h),
            Plane::Q8 { q, d } => KvRows::Q8 { q, d },
        }
    }

    /// Widens `out.len()` values from element `at` to f32.
    #[inline]
    pub(crate) fn widen(&self, at: usize, out: &mut [f32]) {
        match self {
            Plane::F16(h) => ops::f16_to_f32_row(&h[at..at + out.len()], out),
            Plane::Q8 { q, d } => {
                let qs = &q[at..at + out.len()];
                for ((o, qb), &s) in out
                    .chunks_exact_mut(Q8_BLOCK)
                    .zip(qs.chunks_exact(Q8_BLOCK))
                    .zip(&d[at / Q8_BLOCK..])
                {
                    let s = f16_to_f32(s);
                    for (y, &v) in o.iter_mut().zip(qb) {
                        *y = f32::from(v) * s;
                    }
                }
            }
        }
    }

    fn copy_within(&mut self, from: usize, to: usize, n: usize) {
        match self {
            Plane::F16(h) => h.copy_within(from..from + n, to),
            Plane::Q8 { q, d } => {
                q.copy_within(from..from + n, to);
                let (f, t, m) = (from / Q8_BLOCK, to / Q8_BLOCK, n / Q8_BLOCK);
                d.copy_within(f..f + m, t);
            }
        }
    }
}

pub struct KvCache {
    layout: KvLayout,
    k: Vec<Plane>,
    v: Vec<Plane>,
}

impl KvCache {
    pub fn new(layout: KvLayout) -> Result<KvCache, ModelError> {
        let per_layer = layout
            .n_blocks
            .checked_mul(layout.block_size)
            .and_then(|n| n.checked_mul(layout.kv_dim))
            .ok_or_else(|| ModelError::BadConfig("KV cache size overflows".into()))?;
        if layout.block_size == 0 {
            return Err(ModelError::BadConfig(
                "KV block size must be positive".into(),
            ));
        }
        if layout.dtype == KvDtype::Q8 && !layout.kv_dim.is_multiple_of(Q8_BLOCK) {
            return Err(ModelError::BadConfig(format!(
                "an 8-bit KV cache needs rows of a multiple of {Q8_BLOCK} values, this model's are {}",
                layout.kv_dim
            )));
        }
        let planes = || {
            (0..layout.n_layers)
                .map(|_| Plane::new(layout.dtype, per_layer))
                .collect()
        };
        Ok(KvCache {
            layout,
            k: planes(),
            v: planes(),
        })
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn block_size(&self) -> usize {
        self.layout.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.layout.n_blocks
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.layout.bytes_per_token() * self.layout.n_blocks * self.layout.block_size
    }

    /// Index of the first element of position `pos` in a layer buffer, given a block table.
    #[inline]
    pub(crate) fn slot(&self, table: &[u32], pos: usize) -> usize {
        let bs = self.layout.block_size;
        (table[pos / bs] as usize * bs + pos % bs) * self.layout.kv_dim
    }

    /// [`KvCache::slot`] of every position in `lo..hi`, in order, appended to `out`: one table
    /// lookup per block rather than a division per position (this runs for every attention
    /// unit of every layer).
    pub(crate) fn slots_into(&self, table: &[u32], lo: usize, hi: usize, out: &mut Vec<usize>) {
        let (bs, d) = (self.layout.block_size, self.layout.kv_dim);
        let mut pos = lo;
        while pos < hi {
            let (b, within) = (pos / bs, pos % bs);
            let run = (bs - within).min(hi - pos);
            let first = (table[b] as usize * bs + within) * d;
            out.extend((0..run).map(|i| first + i * d));
            pos += run;
        }
    }

    /// Checks that a block table can hold `n_positions` and names only existing blocks.
    pub(crate) fn check_table(&self, table: &[u32], n_positions: usize) -> Result<(), ModelError> {
        let need = n_positions.div_ceil(self.layout.block_size);
        if table.len() < need {
            return Err(ModelError::BadBatch(format!(
                "block table has {} blocks, {need} needed for {n_positions} positions",
                table.len()
            )));
        }
        if let Some(b) = table[..need]
            .iter()
            .find(|&&b| b as usize >= self.layout.n_blocks)
        {
            return Err(ModelError::BadBatch(format!(
                "block {b} is outside the cache's {} blocks",
                self.layout.n_blocks
            )));
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let d = self.layout.kv_dim;
        self.k[layer].write(slot, &k[..d]);
        self.v[layer].write(slot, &v[..d]);
    }

    pub(crate) fn layer(&self, layer: usize) -> (&Plane, &Plane) {
        (&self.k[layer], &self.v[layer])
    }

    /// Makes the whole pool resident now. The pool is zeroed memory the kernel maps on first
    /// write, so without this a server's resident size creeps up request after request as
    /// new blocks get used, which looks like a leak; with it the memory the configured budget
    /// takes is held from the start (as llama.cpp's preallocated KV buffer is) and stays flat.
    pub fn prefault(&mut self) {
        for p in self.k.iter_mut().chain(self.v.iter_mut()) {
            p.prefault();
        }
    }

    /// Copies one block's contents into another (copy-on-write of shared prefix blocks).
    pub fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.layout.block_size * self.layout.kv_dim;
        let (f, t) = (from as usize * n, to as usize * n);
        for p in self.k.iter_mut().chain(self.v.iter_mut()) {
            p.copy_within(f, t, n);
        }
    }

    /// Reads back one position's K and V of a layer as f32 (tests and debugging).
    pub fn read(&self, layer: usize, table: &[u32], pos: usize) -> (Vec<f32>, Vec<f32>) {
        let s = self.slot(table, pos);
        let d = self.layout.kv_dim;
        let (mut k, mut v) = (vec![0.0; d], vec![0.0; d]);
        self.k[layer].widen(s, &mut k);
        self.v[layer].widen(s, &mut v);
        (k, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dtype: KvDtype) -> KvLayout {
        KvLayout {
            n_layers: 2,
            kv_dim: 64,
            block_size: 4,
            n_blocks: 3,
            dtype,
        }
    }

    fn row(seed: usize) -> Vec<f32> {
        (0..64)
            .map(|i| ((i * 7 + seed * 13) % 23) as f32 * 0.37 - 4.0)
            .collect()
    }

    /// The block-wise offsets equal the per-position ones, for ranges that start and end
    /// inside blocks, span one block, or are empty.
    #[test]
    fn slots_into_equals_slot_for_every_position() {
        let kv = KvCache::new(KvLayout {
            n_blocks: 8,
            ..layout(KvDtype::F16)
        })
        .unwrap();
        let table = [5u32, 0, 7, 2, 6];
        for (lo, hi) in [
            (0, 20),
            (3, 17),
            (4, 8),
            (5, 6),
            (9, 9),
            (1, 2),
            (0, 1),
            (19, 20),
        ] {
            let mut got = vec![usize::MAX];
            kv.slots_into(&table, lo, hi, &mut got);
            let want: Vec<usize> = std::iter::once(usize::MAX)
                .chain((lo..hi).map(|p| kv.slot(&table, p)))
                .collect();
            assert_eq!(got, want, "{lo}..{hi}");
        }
    }

    #[test]
    fn values_round_trip_within_each_format_s_rounding() {
        for (dtype, bytes) in [(KvDtype::F16, 2 * 2 * 2 * 64), (KvDtype::Q8, 2 * 2 * 68)] {
            let mut kv = KvCache::new(layout(dtype)).unwrap();
            assert_eq!(kv.layout().bytes_per_token(), bytes, "{dtype:?}");
            assert_eq!(kv.bytes(), bytes * 12);
            let table = [2u32, 0];
            for p in 0..6 {
                kv.write(1, kv.slot(&table, p), &row(p), &row(p + 100));
            }
            for p in 0..6 {
                let (k, v) = kv.read(1, &table, p);
                for (got, want) in [(k, row(p)), (v, row(p + 100))] {
                    for (blk_g, blk_w) in got.chunks(Q8_BLOCK).zip(want.chunks(Q8_BLOCK)) {
                        let amax = blk_w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                        // f16 keeps 11 significant bits; Q8 is within half a step of amax/127
                        // (plus the scale's own f16 rounding).
                        let tol = match dtype {
                            KvDtype::F16 => amax / 1024.0,
                            KvDtype::Q8 => amax / 127.0 * 0.51 + amax / 1024.0,
                        };
                        for (g, w) in blk_g.iter().zip(blk_w) {
                            assert!((g - w).abs() <= tol, "{dtype:?} pos {p}: {g} vs {w}");
                        }
                    }
                }
            }
            // Copying a block moves its values and scales.
            kv.copy_block(2, 1);
            assert_eq!(kv.read(1, &[1], 3), kv.read(1, &table, 3));
        }
    }

    #[test]
    fn an_all_zero_block_stays_zero_and_odd_rows_are_refused() {
        let mut kv = KvCache::new(layout(KvDtype::Q8)).unwrap();
        kv.write(0, 0, &[0.0; 64], &[0.0; 64]);
        assert_eq!(kv.read(0, &[0], 0), (vec![0.0; 64], vec![0.0; 64]));
        let bad = KvLayout {
            kv_dim: 48,
            ..layout(KvDtype::Q8)
        };
        let e = KvCache::new(bad).err().unwrap().to_string();
        assert!(e.contains("multiple of 32"), "{e}");
        assert_eq!("q8_0".parse::<KvDtype>(), Ok(KvDtype::Q8));
        assert!("q4".parse::<KvDtype>().is_err());
    }
}
