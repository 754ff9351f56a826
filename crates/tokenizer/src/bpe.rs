//! Byte-level BPE merging (GPT-2 style), a port of llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-tokenised word is byte-encoded (every UTF-8 byte -> its printable stand-in), split
//! into characters, and adjacent pairs are merged lowest merge-rank first (leftmost on ties)
//! until no listed merge applies. A final symbol that is not a token falls back to the tokens
//! of its single bytes, as llama.cpp does. We write this ourselves rather than use the
//! `tokenizers` crate so that these edge rules, Llama-3's "whole word first" shortcut and the
//! load time (ranks keyed by token-id pairs, no per-merge string allocation) match exactly.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::vocab::{Vocab, fmix64};

/// Hasher for the packed (left id, right id) keys: one multiply-xorshift finaliser.
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fmix64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = fmix64(self.0 ^ v);
    }
}

/// Merge ranks from `tokenizer.ggml.merges`.
pub(crate) struct Merges {
    /// (left id << 32 | right id) -> rank, for merges whose halves are both tokens (all of
    /// them, in practice).
    by_ids: HashMap<u64, u32, BuildHasherDefault<PairHasher>>,
    /// Merges with a half that is not a token, keyed by text; only consulted for symbols
    /// that are not tokens themselves.
    by_text: HashMap<(Box<str>, Box<str>), u32>,
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

impl Merges {
    pub fn new(merges: &[String], vocab: &Vocab) -> Merges {
        let mut by_ids =
            HashMap::with_capacity_and_hasher(merges.len(), BuildHasherDefault::default());
        let mut by_text = HashMap::new();
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, so a merge whose left
            // half is a literal space still parses.
            let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ') else {
                continue;
            };
            let (left, right) = (&m[..pos + 1], &m[pos + 2..]);
            let rank = rank as u32;
            // First occurrence wins, like llama.cpp's `emplace`.
            match (vocab.get(left), vocab.get(right)) {
                (Some(l), Some(r)) => {
                    by_ids.entry(pair_key(l, r)).or_insert(rank);
                }
                _ => {
                    by_text.entry((left.into(), right.into())).or_insert(rank);
                }
            }
        }
        Merges { by_ids, by_text }
    }

    #[inline]
    fn rank(&self, left: &str, left_id: u32, right: &str, right_id: u32) -> Option<u32> {
        if left_id != NONE && right_id != NONE {
            return self.by_ids.get(&pair_key(left_id, right_id)).copied();
        }
        if self.by_text.is_empty() {
            return None;
        }
        self.by_text
            .get(&(Box::<str>::from(left), Box::<str>::from(right)))
            .copied()
    }
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
    /// Token id of the symbol's text, NONE if it is not a token.
    id: u32,
}

#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap pops the greatest: make that the lowest rank, then the leftmost.
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Reusable buffers for tokenising many words.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    queue: BinaryHeap<Bigram>,
}

fn sym_text<'w>(word: &'w str, s: &Sym) -> &'w str {
    &word[s.start as usize..(s.start + s.len) as usize]
}

fn add_bigram(
    word: &str,
    vocab_merges: (&Vocab, &Merges),
    scratch: &mut Scratch,
    left: i32,
    right: i32,
) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (scratch.syms[left as usize], scratch.syms[right as usize]);
    let Some(rank) = vocab_merges
        .1
        .rank(sym_text(word, &l), l.id, sym_text(word, &r), r.id)
    else {
        return;
    };
    scratch.queue.push(Bigram {
        rank,
        left: left as u32,
        right: right as u32,
        size: l.len + r.len,
    });
}

/// Tokenises one byte-encoded word, appending ids to `out`.
pub(crate) fn tokenize_word(
    word: &str,
    vocab: &Vocab,
    merges: &Merges,
    ignore_merges: bool,
    scratch: &mut Scratch,
    out: &mut Vec<u32>,
) {
    if word.is_empty() {
        return;
    }
    if ignore_merges && let Some(id) = vocab.get(word) {
        out.push(id);
        return;
    }
    scratch.syms.clear();
    scratch.queue.clear();
    let n = word.chars().count();
    for (i, (start, c)) in word.char_indices().enumerate() {
        let len = c.len_utf8();
        scratch.syms.push(Sym {
            start: start as u32,
            len: len as u32,
            prev: i as i32 - 1,
            next: if i + 1 == n { -1 } else { i as i32 + 1 },
            id: vocab.get(&word[start..start + len]).unwrap_or(NONE),
        });
    }
    for i in 1..n {
        add_bigram(word, (vocab, merges), scratch, i as i32 - 1, i as i32);
    }

    while let Some(b) = scratch.queue.pop() {
        let (li, ri) = (b.left as usize, b.right as usize);
        let (l, r) = (scratch.syms[li], scratch.syms[ri]);
        // Outdated: one side was merged away or grew since the pair was queued. Symbols only
        // grow by absorbing their right neighbour, so unchanged lengths mean unchanged text.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        let merged_len = l.len + r.len;
        let merged_id = vocab
            .get(&word[l.start as usize..(l.start + merged_len) as usize])
            .unwrap_or(NONE);
        {
            let left = &mut scratch.syms[li];
            left.len = merged_len;
            left.next = r.next;
            left.id = merged_id;
        }
        scratch.syms[ri].len = 0;
        if r.next >= 0 {
            scratch.syms[r.next as usize].prev = b.left as i32;
        }
        add_bigram(word, (vocab, merges), scratch, l.prev, b.left as i32);
        add_bigram(word, (vocab, merges), scratch, b.left as i32, r.next);
    }

    let mut i = 0i32;
    while i >= 0 {
        let s = scratch.syms[i as usize];
        if s.len > 0 {
            if s.id != NONE {
                out.push(s.id);
            } else {
                // llama.cpp looks up each raw byte of the symbol's text as a one-byte token;
                // only ASCII bytes can be (tokens are valid UTF-8).
                for &byte in sym_text(word, &s).as_bytes() {
                    if byte.is_ascii() {
                        let buf = [byte];
                        if let Some(id) = std::str::from_utf8(&buf).ok().and_then(|t| vocab.get(t))
                        {
                            out.push(id);
                        }
                    }
                }
            }
        }
        i = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_by_rank_then_leftmost() {
        let toks: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab = Vocab::new(&toks).expect("valid");
        let mut scratch = Scratch::default();
        let run = |merges: &[&str], word: &str, scratch: &mut Scratch| {
            let m: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
            let merges = Merges::new(&m, &vocab);
            let mut out = Vec::new();
            tokenize_word(word, &vocab, &merges, false, scratch, &mut out);
            out
        };
        assert_eq!(run(&["a b", "ab c"], "abc", &mut scratch), vec![5]);
        assert_eq!(run(&["b c", "a b"], "abc", &mut scratch), vec![0, 4]);
        assert_eq!(run(&[], "abc", &mut scratch), vec![0, 1, 2]);
        // "x" is not a token and has no byte token: dropped, as in llama.cpp.
        assert_eq!(run(&["a b"], "abx", &mut scratch), vec![3]);
    }
}
