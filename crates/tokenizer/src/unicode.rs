//! Unicode facts the llama.cpp tokenizers depend on: per-codepoint category flags (letter,
//! number, punctuation, symbol, mark, whitespace) and GPT-2's byte <-> printable-char mapping.
//!
//! llama.cpp classifies codepoints with its own generated tables; we derive the same general
//! categories from regex-syntax's Unicode tables (already in the dependency tree) once per
//! process. Whitespace is the Unicode `White_Space` property, which is exactly llama.cpp's
//! `unicode_set_whitespace` and Rust's `char::is_whitespace`.

use std::sync::OnceLock;

/// `\p{L}`
pub(crate) const LETTER: u8 = 1;
/// `\p{N}`
pub(crate) const NUMBER: u8 = 2;
/// `\p{P}`
pub(crate) const PUNCT: u8 = 4;
/// `\p{S}`
pub(crate) const SYMBOL: u8 = 8;
/// `\p{M}`
pub(crate) const MARK: u8 = 16;
/// `White_Space`
pub(crate) const WHITESPACE: u8 = 32;
/// Set for every real codepoint. llama.cpp's splitters test `flags.as_uint() != 0` to tell
/// "inside the fragment" from "past its end" (where flags are all zero), and every in-range
/// codepoint has at least its category bit (or UNDEFINED) set.
pub(crate) const IN_RANGE: u8 = 128;

struct Tables {
    /// Flags of every BMP codepoint, indexed directly.
    bmp: Box<[u8]>,
    /// (first, last, flags) for astral codepoints, sorted and non-overlapping.
    astral: Vec<(u32, u32, u8)>,
}

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    match regex_syntax::Parser::new().parse(pattern) {
        Ok(hir) => match hir.kind() {
            HirKind::Class(Class::Unicode(c)) => c
                .ranges()
                .iter()
                .map(|r| (r.start() as u32, r.end() as u32))
                .collect(),
            _ => Vec::new(),
        },
        // Cannot happen with regex-syntax's default (unicode) features; an empty class only
        // degrades tokenisation of non-ASCII text, it never breaks it.
        Err(_) => Vec::new(),
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut bmp = vec![IN_RANGE; 0x1_0000].into_boxed_slice();
        let mut astral = Vec::new();
        for (pattern, flag) in [
            (r"\p{L}", LETTER),
            (r"\p{N}", NUMBER),
            (r"\p{P}", PUNCT),
            (r"\p{S}", SYMBOL),
            (r"\p{M}", MARK),
        ] {
            for (lo, hi) in class_ranges(pattern) {
                if lo <= 0xFFFF {
                    for cp in lo..=hi.min(0xFFFF) {
                        bmp[cp as usize] |= flag;
                    }
                }
                if hi > 0xFFFF {
                    astral.push((lo.max(0x1_0000), hi, flag));
                }
            }
        }
        for cp in 0..=0xFFFFu32 {
            if char::from_u32(cp).is_some_and(char::is_whitespace) {
                bmp[cp as usize] |= WHITESPACE;
            }
        }
        astral.sort_unstable();
        Tables { bmp, astral }
    })
}

/// Category flags of `c` (always including [`IN_RANGE`]).
#[inline]
pub(crate) fn flags(c: char) -> u8 {
    let cp = c as u32;
    let t = tables();
    if cp <= 0xFFFF {
        return t.bmp[cp as usize];
    }
    let i = t.astral.partition_point(|&(lo, _, _)| lo <= cp);
    if i > 0 {
        let (lo, hi, f) = t.astral[i - 1];
        if lo <= cp && cp <= hi {
            return f | IN_RANGE;
        }
    }
    IN_RANGE
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the rest to
/// U+0100 onwards in byte order, so every byte has a visible, non-space stand-in.
const BYTE_TO_CP: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut n = 0u16;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if printable {
            t[b] = b as u16;
        } else {
            t[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    t
};

/// Inverse of [`BYTE_TO_CP`]; -1 for codepoints that stand for no byte.
const CP_TO_BYTE: [i16; 0x144] = {
    let mut t = [-1i16; 0x144];
    let mut b = 0usize;
    while b < 256 {
        t[BYTE_TO_CP[b] as usize] = b as i16;
        b += 1;
    }
    t
};

/// The printable character GPT-2 byte-level BPE uses for `b`.
#[inline]
pub(crate) fn byte_to_char(b: u8) -> char {
    // Every entry is below U+0144, a valid scalar value.
    char::from_u32(u32::from(BYTE_TO_CP[b as usize])).unwrap_or('\u{FFFD}')
}

/// The byte a byte-level BPE character stands for, if any.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < CP_TO_BYTE.len() {
        let b = CP_TO_BYTE[cp];
        if b >= 0 {
            return Some(b as u8);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(flags('a') & LETTER, LETTER);
        assert_eq!(flags('é') & LETTER, LETTER);
        assert_eq!(flags('你') & LETTER, LETTER);
        assert_eq!(flags('7') & NUMBER, NUMBER);
        assert_eq!(flags('½') & NUMBER, NUMBER);
        assert_eq!(flags(',') & PUNCT, PUNCT);
        assert_eq!(flags('+') & SYMBOL, SYMBOL);
        assert_eq!(flags('🤖') & SYMBOL, SYMBOL);
        assert_eq!(flags('\u{301}') & MARK, MARK);
        assert_eq!(flags('\u{3000}') & WHITESPACE, WHITESPACE);
        assert_eq!(flags('\n') & WHITESPACE, WHITESPACE);
        assert_eq!(flags('𝐀') & LETTER, LETTER);
        assert_eq!(flags('\u{E000}') & !IN_RANGE, 0);
    }

    #[test]
    fn byte_mapping_round_trips() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('你'), None);
    }
}
