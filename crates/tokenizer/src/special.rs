//! Finding special tokens in text before tokenisation: llama.cpp's `tokenizer_st_partition`.
//!
//! llama.cpp walks its special tokens longest first and, for each, splits every remaining text
//! fragment at each occurrence. That order matters (a long token found later in the text wins
//! over a shorter one overlapping it earlier), so we keep the exact algorithm, but only for the
//! tokens that actually occur: one pass over the text with a sorted table of special texts
//! (narrowed byte by byte with binary search) finds those, instead of searching the text once
//! for each of Gemma's ~6400 special tokens.

use crate::vocab::Vocab;

/// A piece of the text to tokenise: raw text (byte range) or an already-recognised token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(usize, usize),
    Token(u32),
}

pub(crate) struct SpecialMatcher {
    /// Special token ids sorted by their text's bytes.
    sorted: Vec<u32>,
    /// Which bytes can start a special token.
    first: [bool; 256],
}

impl SpecialMatcher {
    pub fn new(vocab: &Vocab, ids: Vec<u32>) -> SpecialMatcher {
        let mut sorted = ids;
        sorted.sort_unstable_by(|&a, &b| vocab.text(a).cmp(vocab.text(b)));
        let mut first = [false; 256];
        for &id in &sorted {
            if let Some(&b) = vocab.text(id).as_bytes().first() {
                first[b as usize] = true;
            }
        }
        SpecialMatcher { sorted, first }
    }

    /// Distinct special ids accepted by `keep` that occur anywhere in `text`.
    fn present(&self, vocab: &Vocab, text: &str, keep: impl Fn(u32) -> bool) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut found = Vec::new();
        for p in 0..bytes.len() {
            if !self.first[bytes[p] as usize] {
                continue;
            }
            // All entries in [lo, hi) start with bytes[p..p + k].
            let (mut lo, mut hi, mut k) = (0usize, self.sorted.len(), 0usize);
            loop {
                if lo < hi && k > 0 {
                    // An entry equal to the prefix sorts first among those sharing it.
                    let id = self.sorted[lo];
                    if vocab.text(id).len() == k {
                        if keep(id) {
                            found.push(id);
                        }
                        lo += 1;
                    }
                }
                if lo >= hi || p + k >= bytes.len() {
                    break;
                }
                // Every entry left is longer than k, so byte k exists.
                let c = bytes[p + k];
                let range = &self.sorted[lo..hi];
                let a = range.partition_point(|&id| vocab.text(id).as_bytes()[k] < c);
                let b = range.partition_point(|&id| vocab.text(id).as_bytes()[k] <= c);
                (lo, hi) = (lo + a, lo + b);
                k += 1;
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Splits `text` into raw fragments and special tokens exactly as llama.cpp does.
    pub fn partition(
        &self,
        vocab: &Vocab,
        text: &str,
        keep: impl Fn(u32) -> bool,
    ) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        let mut cands = self.present(vocab, text, keep);
        // Longest first; llama.cpp's sort leaves equal lengths in unspecified order, we use
        // ascending id.
        cands.sort_by(|&a, &b| {
            vocab
                .text(b)
                .len()
                .cmp(&vocab.text(a).len())
                .then(a.cmp(&b))
        });
        for id in cands {
            let tok = vocab.text(id);
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(start, end) = f else {
                    next.push(f);
                    continue;
                };
                let mut cur = start;
                while let Some(p) = text[cur..end].find(tok) {
                    let m = cur + p;
                    if m > cur {
                        next.push(Fragment::Text(cur, m));
                    }
                    next.push(Fragment::Token(id));
                    cur = m + tok.len();
                }
                if cur < end {
                    next.push(Fragment::Text(cur, end));
                }
            }
            frags = next;
        }
        frags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Fragment::{Text, Token};

    fn setup(specials: &[&str]) -> (Vocab, SpecialMatcher) {
        let toks: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        let vocab = Vocab::new(&toks).expect("valid");
        let ids = (0..toks.len() as u32).collect();
        let m = SpecialMatcher::new(&vocab, ids);
        (vocab, m)
    }

    #[test]
    fn longest_token_first_even_when_later() {
        // "bcd" is processed before "ab" although "ab" occurs first.
        let (v, m) = setup(&["ab", "bcd"]);
        assert_eq!(
            m.partition(&v, "abcd", |_| true),
            vec![Text(0, 1), Token(1)]
        );
    }

    #[test]
    fn repeated_and_adjacent() {
        let (v, m) = setup(&["<s>", "\n", "\n\n"]);
        assert_eq!(
            m.partition(&v, "<s>x\n\n\n<s>", |_| true),
            vec![Token(0), Text(3, 4), Token(2), Token(1), Token(0)]
        );
        assert_eq!(m.partition(&v, "<s>x", |id| id != 0), vec![Text(0, 4)]);
        assert_eq!(m.partition(&v, "", |_| true), vec![]);
    }
}
