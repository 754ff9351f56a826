//! The paged KV cache: one pool of fixed-size blocks per layer, K and V stored as f16 (as
//! llama.cpp does by default). A sequence owns a *block table*, the list of physical blocks
//! holding its positions in order; which blocks belong to whom is decided outside this crate (the
//! engine's block allocator, later the scheduler's block manager). This type only stores data.

use autoglm_kernels::f16::{f16_to_f32, f32_to_f16};

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    /// K (and V) width of one token in one layer: n_head_kv * head_dim.
    pub kv_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub n_blocks: usize,
}

pub struct KvCache {
    layout: KvLayout,
    /// Per layer: n_blocks * block_size * kv_dim f16 values.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
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
        Ok(KvCache {
            layout,
            k: (0..layout.n_layers)
                .map(|_| vec![0u16; per_layer])
                .collect(),
            v: (0..layout.n_layers)
                .map(|_| vec![0u16; per_layer])
                .collect(),
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
        2 * 2
            * self.layout.n_layers
            * self.layout.n_blocks
            * self.layout.block_size
            * self.layout.kv_dim
    }

    /// Index of the first element of position `pos` in a layer buffer, given a block table.
    #[inline]
    pub(crate) fn slot(&self, table: &[u32], pos: usize) -> usize {
        let bs = self.layout.block_size;
        (table[pos / bs] as usize * bs + pos % bs) * self.layout.kv_dim
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
        for (dst, &x) in self.k[layer][slot..slot + d].iter_mut().zip(k) {
            *dst = f32_to_f16(x);
        }
        for (dst, &x) in self.v[layer][slot..slot + d].iter_mut().zip(v) {
            *dst = f32_to_f16(x);
        }
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[u16], &[u16]) {
        (&self.k[layer], &self.v[layer])
    }

    /// Copies one block's contents into another (copy-on-write of shared prefix blocks).
    pub fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.layout.block_size * self.layout.kv_dim;
        let (f, t) = (from as usize * n, to as usize * n);
        for l in 0..self.layout.n_layers {
            self.k[l].copy_within(f..f + n, t);
            self.v[l].copy_within(f..f + n, t);
        }
    }

    /// Reads back one position's K and V of a layer as f32 (tests and debugging).
    pub fn read(&self, layer: usize, table: &[u32], pos: usize) -> (Vec<f32>, Vec<f32>) {
        let s = self.slot(table, pos);
        let d = self.layout.kv_dim;
        (
            self.k[layer][s..s + d]
                .iter()
                .map(|&h| f16_to_f32(h))
                .collect(),
            self.v[layer][s..s + d]
                .iter()
                .map(|&h| f16_to_f32(h))
                .collect(),
        )
    }
}
