//! A free list of KV cache blocks. The engine reserves a sequence's blocks when it starts and
//! returns them when it ends; the serving scheduler replaces this with a block manager that
//! shares prefix blocks and preempts.

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(n_blocks: usize) -> Self {
        // Popped from the end: hand out low block ids first, which keeps early sequences compact.
        BlockAllocator {
            free: (0..n_blocks as u32).rev().collect(),
            total: n_blocks,
        }
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// `n` blocks, or None (and nothing taken) if fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let mut got = self.free.split_off(at);
        got.reverse();
        Some(got)
    }

    pub fn release(&mut self, blocks: &[u32]) {
        self.free.extend(blocks.iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_round_trip() {
        let mut a = BlockAllocator::new(4);
        let x = a.allocate(3).unwrap();
        assert_eq!(x, [0, 1, 2]);
        assert_eq!(a.free(), 1);
        assert!(a.allocate(2).is_none(), "all-or-nothing");
        assert_eq!(a.free(), 1);
        a.release(&x);
        assert_eq!(a.free(), 4);
        let mut all = a.allocate(4).unwrap();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3]);
    }
}
