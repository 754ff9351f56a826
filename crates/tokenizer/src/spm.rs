//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`), a port of llama.cpp's
//! `llm_tokenizer_spm_session`.
//!
//! The text (spaces already escaped to "▁") is split into UTF-8 characters; every adjacent pair
//! whose concatenation is a vocabulary token is queued by that token's score, and the best pair
//! (highest score, leftmost on ties) is merged repeatedly. Stale queue entries are recognised by
//! their recorded size, so the whole run is O(n log n). Symbols left that are not tokens fall
//! back to `<0xNN>` byte tokens.

use std::collections::BinaryHeap;

use crate::vocab::Vocab;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Greatest = highest score, then lowest left index (llama.cpp's comparator).
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What the SPM tokenizer needs besides the vocabulary.
pub(crate) struct Spm<'a> {
    pub vocab: &'a Vocab,
    pub scores: &'a [f32],
    /// `<0xNN>` byte tokens (or a one-character fallback), per byte value.
    pub byte_tokens: &'a [Option<u32>; 256],
    pub unk: Option<u32>,
}

impl Spm<'_> {
    fn try_add(&self, text: &str, syms: &[Sym], queue: &mut BinaryHeap<Bigram>, l: i32, r: i32) {
        if l < 0 || r < 0 {
            return;
        }
        let (ls, rs) = (syms[l as usize], syms[r as usize]);
        let start = ls.start as usize;
        let end = (rs.start + rs.len) as usize;
        let Some(id) = self.vocab.get(&text[start..end]) else {
            return;
        };
        queue.push(Bigram {
            score: self.scores.get(id as usize).copied().unwrap_or(0.0),
            left: l as u32,
            right: r as u32,
            size: (end - start) as u32,
        });
    }

    /// Tokenises already-escaped `text`, appending ids to `out`.
    pub fn tokenize(&self, text: &str, out: &mut Vec<u32>) {
        let n = text.chars().count();
        if n == 0 {
            return;
        }
        let mut syms = Vec::with_capacity(n);
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: i as i32 - 1,
                next: if i + 1 == n { -1 } else { i as i32 + 1 },
            });
        }
        let mut queue = BinaryHeap::with_capacity(n);
        for i in 1..n {
            self.try_add(text, &syms, &mut queue, i as i32 - 1, i as i32);
        }
        while let Some(b) = queue.pop() {
            let (li, ri) = (b.left as usize, b.right as usize);
            let (l, r) = (syms[li], syms[ri]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            syms[li].len += r.len;
            syms[li].next = r.next;
            syms[ri].len = 0;
            if r.next >= 0 {
                syms[r.next as usize].prev = b.left as i32;
            }
            self.try_add(text, &syms, &mut queue, l.prev, b.left as i32);
            self.try_add(text, &syms, &mut queue, b.left as i32, r.next);
        }

        // llama.cpp's `resegment`: a merged symbol is always a token (pairs are queued only
        // when they are), so only unmerged characters can miss and fall back to bytes.
        let mut i = 0i32;
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &text[s.start as usize..(s.start + s.len) as usize];
            match self.vocab.get(piece) {
                Some(id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        // llama.cpp throws if a byte has no token; an unknown token is the
                        // graceful equivalent.
                        if let Some(id) = self.byte_tokens[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_score_wins_and_bytes_fall_back() {
        let toks: Vec<String> = ["▁", "a", "b", "ab", "▁a", "<0xE4>", "<0xBD>", "<0xA0>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -1.0, -2.0, -1.5, 0.0, 0.0, 0.0];
        let vocab = Vocab::new(&toks).expect("valid");
        let mut bytes = [None; 256];
        bytes[0xE4] = Some(5);
        bytes[0xBD] = Some(6);
        bytes[0xA0] = Some(7);
        let spm = Spm {
            vocab: &vocab,
            scores: &scores,
            byte_tokens: &bytes,
            unk: None,
        };
        let mut out = Vec::new();
        // "▁a" (-1.5) beats "ab" (-2.0).
        spm.tokenize("▁ab", &mut out);
        assert_eq!(out, vec![4, 2]);
        out.clear();
        spm.tokenize("a你", &mut out);
        assert_eq!(out, vec![1, 5, 6, 7]);
    }
}
