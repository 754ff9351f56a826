//! The block manager: a fixed pool of KV cache blocks with reference counts, and the prefix cache
//! built on it.
//!
//! Every block is in exactly one of three states:
//!
//! - **free**: no content worth keeping; handed out lowest id first (deterministic and compact);
//! - **cached-free**: no sequence holds it, but it is a full block registered in the prefix cache,
//!   kept on an LRU list until its space is needed;
//! - **in use**: held by `refs >= 1` block tables (more than one only for shared prefix blocks).
//!
//! # Prefix cache
//!
//! A *full* block is identified by a hash chain: the hash of its parent block's hash and its own
//! tokens, so equal hashes mean equal whole prefixes, not just equal blocks. Once a block's
//! positions are all computed it is registered under that hash; when its last holder lets go it
//! stays cached. A new request walks its prompt's chain from the first block and takes every
//! block found (shared, `refs += 1`), so those positions are not prefilled again. Only the first
//! holder of some content registers it: a second sequence that computed the same block
//! concurrently keeps its copy private, and that copy returns to the free list when released.
//!
//! Hashes are 128 bits from two SipHash instances with random keys per block manager, so prompts
//! cannot be crafted to collide with another user's cached prefix (a collision would let one
//! request attend over another's text); they are never persisted, so their instability across
//! builds does not matter.
//!
//! # Why there is no copy-on-write
//!
//! Shared blocks are immutable: only full blocks are shared, and a sequence only ever writes
//! positions at or past its computed length, which lie beyond its shared prefix because a hit is
//! capped to leave at least the last prompt token to compute (so the logits exist) — when the
//! whole prompt is cached, its last block is recomputed into a private block rather than
//! rewritten in place. Nothing forks a sequence mid-block (no beam search, no parallel sampling),
//! which is what copy-on-write exists for elsewhere. A full block's contents are a pure function
//! of its prefix, so whoever holds it reads the same values.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

/// A physical block in the KV pool (an index into the engine's `KvCache`).
pub type BlockId = u32;

/// The hash chain value of a full block: it stands for the whole prefix up to the block's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(u128);

/// Computes chained block hashes; keyed at random per instance.
#[derive(Clone, Debug)]
pub struct PrefixHasher {
    lo: RandomState,
    hi: RandomState,
}

impl Default for PrefixHasher {
    fn default() -> Self {
        PrefixHasher {
            lo: RandomState::new(),
            hi: RandomState::new(),
        }
    }
}

impl PrefixHasher {
    /// The hash of the block holding `tokens` after the block hashed `parent` (None: the first).
    pub fn chain(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let half = |s: &RandomState| {
            let mut h = s.build_hasher();
            parent.map(|p| p.0).hash(&mut h);
            tokens.hash(&mut h);
            h.finish()
        };
        BlockHash(u128::from(half(&self.hi)) << 64 | u128::from(half(&self.lo)))
    }

    /// Extends `hashes` (the chain for the first `hashes.len()` full blocks of `tokens`) to every
    /// full block of `tokens`. Tokens only grow, so earlier hashes stay valid.
    pub fn extend(&self, hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize) {
        let full = tokens.len() / block_size;
        while hashes.len() < full {
            let i = hashes.len();
            let h = self.chain(
                hashes.last().copied(),
                &tokens[i * block_size..(i + 1) * block_size],
            );
            hashes.push(h);
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Block {
    refs: u32,
    /// Set while the block is registered in the prefix cache.
    hash: Option<BlockHash>,
    /// Position on the LRU list while cached-free.
    lru_tick: u64,
}

/// What one block is doing (for tests, metrics and debugging).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    Free,
    CachedFree,
    InUse { refs: u32 },
}

/// The pool of KV blocks.
#[derive(Clone, Debug)]
pub struct BlockManager {
    blocks: Vec<Block>,
    /// Lowest id first, so traces are readable and early sequences compact.
    free: BTreeSet<BlockId>,
    /// Cached-free blocks by the tick they were released at: the first entry is the least
    /// recently used.
    lru: BTreeMap<u64, BlockId>,
    /// Registered full blocks (cached-free or in use).
    cached: HashMap<BlockHash, BlockId>,
    tick: u64,
    caching: bool,
    evictions: u64,
}

impl BlockManager {
    pub fn new(num_blocks: usize, prefix_caching: bool) -> Self {
        let n = num_blocks.min(BlockId::MAX as usize);
        BlockManager {
            blocks: vec![Block::default(); n],
            free: (0..n as BlockId).collect(),
            lru: BTreeMap::new(),
            cached: HashMap::new(),
            tick: 0,
            caching: prefix_caching,
            evictions: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_cached_free(&self) -> usize {
        self.lru.len()
    }

    pub fn num_in_use(&self) -> usize {
        self.total() - self.num_free() - self.num_cached_free()
    }

    /// Blocks an allocation can get: free ones, then cached ones reclaimed.
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    pub fn state(&self, b: BlockId) -> BlockState {
        let blk = &self.blocks[b as usize];
        match (blk.refs, blk.hash) {
            (0, None) => BlockState::Free,
            (0, Some(_)) => BlockState::CachedFree,
            (refs, _) => BlockState::InUse { refs },
        }
    }

    /// The prefix hash `b` is registered under, if any.
    pub fn hash_of(&self, b: BlockId) -> Option<BlockHash> {
        self.blocks[b as usize].hash
    }

    /// Cached-free blocks, least recently used first (the eviction order).
    pub fn lru_order(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.lru.values().copied()
    }

    /// A block for new data, with one reference: a free one, else the least recently used
    /// cached one (dropping its cache entry). None when neither exists.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = match self.free.pop_first() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                let h = self.blocks[b as usize].hash.take();
                if let Some(h) = h {
                    self.cached.remove(&h);
                }
                self.evictions += 1;
                b
            }
        };
        self.blocks[b as usize].refs = 1;
        Some(b)
    }

    /// One more table holds `b` (a prefix cache hit); a cached-free block leaves the LRU list.
    pub fn acquire(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        if blk.refs == 0 {
            debug_assert!(blk.hash.is_some(), "acquiring free block {b}");
            self.lru.remove(&blk.lru_tick);
        }
        blk.refs += 1;
    }

    /// One table lets go of `b`. At zero references a registered block becomes cached-free (most
    /// recently used), any other block free.
    pub fn release(&mut self, b: BlockId) {
        let blk = &mut self.blocks[b as usize];
        debug_assert!(blk.refs > 0, "releasing unreferenced block {b}");
        blk.refs = blk.refs.saturating_sub(1);
        if blk.refs > 0 {
            return;
        }
        if blk.hash.is_some() {
            self.tick += 1;
            blk.lru_tick = self.tick;
            self.lru.insert(self.tick, b);
        } else {
            self.free.insert(b);
        }
    }

    /// Registers the in-use full block `b` as holding the prefix `hash`. Does nothing (false) when
    /// caching is off, `b` is already registered, or another block already holds that prefix.
    pub fn register(&mut self, b: BlockId, hash: BlockHash) -> bool {
        if !self.caching || self.blocks[b as usize].hash.is_some() {
            return false;
        }
        debug_assert!(self.blocks[b as usize].refs > 0);
        if self.cached.contains_key(&hash) {
            return false;
        }
        self.cached.insert(hash, b);
        self.blocks[b as usize].hash = Some(hash);
        true
    }

    /// The blocks holding the longest cached prefix of a chain (without taking them).
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        if !self.caching {
            return Vec::new();
        }
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// How many of `blocks` are cached-free (acquiring them takes them out of `available`).
    pub fn count_cached_free(&self, blocks: &[BlockId]) -> usize {
        blocks
            .iter()
            .filter(|&&b| self.blocks[b as usize].refs == 0)
            .count()
    }

    /// Checks the block states against the free list, LRU list and cache map, and the reference
    /// counts against `holders` (how many tables hold each block).
    pub fn check(&self, holders: &[u32]) -> Result<(), String> {
        if holders.len() != self.blocks.len() {
            return Err("holder count per block has the wrong length".into());
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            let b = i as BlockId;
            if blk.refs != holders[i] {
                return Err(format!(
                    "block {b}: ref count {} but held by {} tables",
                    blk.refs, holders[i]
                ));
            }
            let in_free = self.free.contains(&b);
            let in_lru =
                blk.refs == 0 && blk.hash.is_some() && self.lru.get(&blk.lru_tick) == Some(&b);
            let states = [in_free, in_lru, blk.refs > 0];
            if states.iter().filter(|&&s| s).count() != 1 {
                return Err(format!(
                    "block {b} is not in exactly one state (free {in_free}, cached-free {in_lru}, \
                     refs {})",
                    blk.refs
                ));
            }
            if in_free && blk.hash.is_some() {
                return Err(format!("free block {b} is still registered"));
            }
            if let Some(h) = blk.hash
                && self.cached.get(&h) != Some(&b)
            {
                return Err(format!("block {b} has a hash the cache maps elsewhere"));
            }
        }
        if self.free.len() + self.lru.len() + self.num_in_use_slow() != self.blocks.len() {
            return Err("free / cached-free / in-use counts do not add up".into());
        }
        for (h, &b) in &self.cached {
            if self.blocks.get(b as usize).and_then(|blk| blk.hash) != Some(*h) {
                return Err(format!(
                    "cache entry points at block {b}, which has another hash"
                ));
            }
        }
        if !self.caching && !self.cached.is_empty() {
            return Err("blocks registered with prefix caching off".into());
        }
        Ok(())
    }

    fn num_in_use_slow(&self) -> usize {
        self.blocks.iter().filter(|b| b.refs > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_chain_depends_on_the_whole_prefix() {
        let h = PrefixHasher::default();
        let a = h.chain(None, &[1, 2]);
        let b = h.chain(None, &[1, 3]);
        assert_ne!(a, b);
        assert_ne!(h.chain(Some(a), &[5, 6]), h.chain(Some(b), &[5, 6]));
        assert_eq!(h.chain(Some(a), &[5, 6]), h.chain(Some(a), &[5, 6]));
        let mut chain = Vec::new();
        h.extend(&mut chain, &[1, 2, 5, 6, 7], 2);
        assert_eq!(chain, [a, h.chain(Some(a), &[5, 6])]);
    }

    #[test]
    fn release_caches_registered_blocks_and_evicts_lru_first() {
        let h = PrefixHasher::default();
        let mut m = BlockManager::new(3, true);
        let (x, y, z) = (
            m.allocate().unwrap(),
            m.allocate().unwrap(),
            m.allocate().unwrap(),
        );
        assert_eq!((x, y, z), (0, 1, 2));
        let (hx, hy) = (h.chain(None, &[1]), h.chain(None, &[2]));
        assert!(m.register(x, hx));
        assert!(m.register(y, hy));
        assert!(!m.register(z, hx), "a prefix is registered once");
        m.release(y);
        m.release(x);
        m.release(z);
        assert_eq!(m.state(z), BlockState::Free);
        assert_eq!(m.lru_order().collect::<Vec<_>>(), [y, x]);
        assert_eq!(m.lookup(&[hx, h.chain(Some(hx), &[9])]), [x]);
        m.check(&[0, 0, 0]).unwrap();
        // Free blocks go first, then the least recently released cached block.
        assert_eq!(m.allocate(), Some(z));
        assert_eq!(m.allocate(), Some(y));
        assert_eq!(m.evictions(), 1);
        assert!(m.lookup(&[hy]).is_empty());
        m.acquire(x);
        assert_eq!(m.state(x), BlockState::InUse { refs: 1 });
        assert_eq!(m.allocate(), None);
        m.check(&[1, 1, 1]).unwrap();
    }
}
