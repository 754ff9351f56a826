//! The vocabulary: token texts stored in one arena, a text -> id lookup table, and the
//! per-token attributes llama.cpp derives from `tokenizer.ggml.token_type`.
//!
//! Loading must be fast even for 262k-token vocabularies, so the texts are copied into a single
//! `String` (one allocation instead of one per token) and looked up through an open-addressing
//! table of ids that hashes `&str` directly: building it is one pass with no allocation per token.

use std::hash::BuildHasher;

/// llama.cpp's `LLAMA_TOKEN_ATTR_*` bits (the subset that affects tokenising and decoding).
pub(crate) mod attr {
    pub const UNKNOWN: u8 = 1;
    pub const UNUSED: u8 = 2;
    pub const NORMAL: u8 = 4;
    pub const CONTROL: u8 = 8;
    pub const USER_DEFINED: u8 = 16;
    pub const BYTE: u8 = 32;

    /// Attribute for a GGUF token type (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
    pub fn from_token_type(t: i64) -> u8 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            // 0 (undefined) and anything unknown: llama.cpp's LLAMA_TOKEN_ATTR_UNDEFINED.
            _ => 0,
        }
    }
}

const EMPTY: u32 = u32::MAX;

pub(crate) struct Vocab {
    arena: String,
    /// `offsets[id]..offsets[id + 1]` is token `id`'s text in `arena`.
    offsets: Vec<u32>,
    /// Open-addressing table of ids (EMPTY = free slot), length a power of two.
    table: Vec<u32>,
    /// High 32 bits of each occupied slot's hash, so probes rarely touch the arena.
    tags: Vec<u32>,
    seed: u64,
}

/// Mixes `bytes` into 64 bits (8 bytes per step, murmur3 finaliser). Seeded per process so
/// a hostile vocabulary cannot be built to collide.
#[inline]
fn hash_str(seed: u64, s: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = s.as_bytes();
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(v)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut v = [0u8; 8];
        v[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(v)).wrapping_mul(K);
    }
    fmix64(h)
}

#[inline]
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Vocab {
    /// Builds the vocabulary. Empty texts become `[EMPTY_<id>]` as in llama.cpp; a duplicate
    /// text is an error (llama.cpp refuses such files too).
    pub fn new(tokens: &[String]) -> Result<Vocab, String> {
        let n = tokens.len();
        if n >= EMPTY as usize {
            return Err(format!("vocabulary of {n} tokens is too large"));
        }
        let total: usize = tokens
            .iter()
            .map(|t| if t.is_empty() { 24 } else { t.len() })
            .sum();
        if total > u32::MAX as usize {
            return Err("vocabulary texts exceed 4 GiB".into());
        }
        let mut arena = String::with_capacity(total);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                arena.push_str(&format!("[EMPTY_{i}]"));
            } else {
                arena.push_str(t);
            }
            offsets.push(arena.len() as u32);
        }
        let cap = (n * 2).next_power_of_two().max(16);
        let mask = cap - 1;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        let mut vocab = Vocab {
            arena,
            offsets,
            table: vec![EMPTY; cap],
            tags: vec![0; cap],
            seed,
        };
        let hashes: Vec<u64> = (0..n as u32)
            .map(|id| hash_str(seed, vocab.text(id)))
            .collect();
        // Insert in order of home slot (counting sort on its top bits): the probes then sweep
        // the table nearly sequentially instead of missing the cache once per token, which is
        // most of the load time for a 262k vocabulary.
        let shift = cap.trailing_zeros().saturating_sub(11);
        let buckets = (cap >> shift) + 1;
        let mut starts = vec![0u32; buckets + 1];
        for &h in &hashes {
            starts[((h as usize & mask) >> shift) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; n];
        for (id, &h) in hashes.iter().enumerate() {
            let b = (h as usize & mask) >> shift;
            order[starts[b] as usize] = id as u32;
            starts[b] += 1;
        }
        for &id in &order {
            let h = hashes[id as usize];
            let tag = (h >> 32) as u32;
            let mut slot = h as usize & mask;
            loop {
                let cur = vocab.table[slot];
                if cur == EMPTY {
                    vocab.table[slot] = id;
                    vocab.tags[slot] = tag;
                    break;
                }
                if vocab.tags[slot] == tag && vocab.text(cur) == vocab.text(id) {
                    let (a, b) = (cur.min(id), cur.max(id));
                    return Err(format!(
                        "duplicate token in vocabulary: {:?} has ids {a} and {b}",
                        vocab.text(id)
                    ));
                }
                slot = (slot + 1) & mask;
            }
        }
        Ok(vocab)
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Text of `id`; callers guarantee `id < len()`.
    #[inline]
    pub fn text(&self, id: u32) -> &str {
        let i = id as usize;
        &self.arena[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Text of `id`, or `None` when out of range.
    pub fn get_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.text(id))
    }

    #[inline]
    pub fn get(&self, s: &str) -> Option<u32> {
        let mask = self.table.len() - 1;
        let h = hash_str(self.seed, s);
        let tag = (h >> 32) as u32;
        let mut slot = h as usize & mask;
        loop {
            let cur = self.table[slot];
            if cur == EMPTY {
                return None;
            }
            if self.tags[slot] == tag && self.text(cur) == s {
                return Some(cur);
            }
            slot = (slot + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_duplicates() {
        let toks: Vec<String> = ["a", "b", "", "hello world", "日本"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let v = Vocab::new(&toks).expect("valid");
        assert_eq!(v.len(), 5);
        assert_eq!(v.get("a"), Some(0));
        assert_eq!(v.get("hello world"), Some(3));
        assert_eq!(v.get("日本"), Some(4));
        assert_eq!(v.get("[EMPTY_2]"), Some(2));
        assert_eq!(v.get("nope"), None);
        assert_eq!(v.get_text(9), None);
        let dup: Vec<String> = vec!["x".into(), "x".into()];
        let err = Vocab::new(&dup).err().expect("duplicate rejected");
        assert!(err.contains("duplicate"), "{err}");
    }
}
