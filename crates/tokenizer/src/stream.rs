//! Incremental detokenisation: turning generated ids into text as they arrive without ever
//! emitting half of a multi-byte UTF-8 character (byte-level BPE and `<0xNN>` byte tokens
//! routinely split characters across tokens).

use std::sync::Arc;

use crate::Tokenizer;

/// Byte buffer that releases only complete UTF-8; shared by both decoder flavours.
#[derive(Default)]
struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// Appends `bytes` and returns the text that is now complete. An incomplete character at
    /// the end is held back; bytes that can never form a character become U+FFFD right away
    /// (as `String::from_utf8_lossy` would render them), so nothing is held forever.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The prefix was just validated, so this cannot fail.
                    out.push_str(std::str::from_utf8(&self.pending[start..valid]).unwrap_or(""));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid + bad;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Incremental detokenizer borrowing its [`Tokenizer`]: push ids, get text that never ends in a
/// split UTF-8 character; [`flush`](Self::flush) returns whatever is held back, lossily.
/// The concatenation of all outputs equals [`Tokenizer::decode`] of the same ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    special: bool,
    buf: Utf8Buffer,
}

impl<'a> StreamDecoder<'a> {
    /// `special`: render control tokens' text (as in [`Tokenizer::token_bytes`]).
    pub fn new(tok: &'a Tokenizer, special: bool) -> Self {
        StreamDecoder {
            tok,
            special,
            buf: Utf8Buffer::default(),
        }
    }

    pub fn push(&mut self, id: u32) -> String {
        let bytes = self.tok.token_bytes(id, self.special);
        self.buf.push(&bytes)
    }

    pub fn flush(&mut self) -> String {
        self.buf.flush()
    }
}

/// [`StreamDecoder`] owning a shared handle to its tokenizer, for engines that keep decoders
/// alongside the tokenizer in long-lived state.
pub struct OwnedStreamDecoder {
    tok: Arc<Tokenizer>,
    special: bool,
    buf: Utf8Buffer,
}

impl OwnedStreamDecoder {
    pub fn new(tok: Arc<Tokenizer>, special: bool) -> Self {
        OwnedStreamDecoder {
            tok,
            special,
            buf: Utf8Buffer::default(),
        }
    }

    pub fn push(&mut self, id: u32) -> String {
        let bytes = self.tok.token_bytes(id, self.special);
        self.buf.push(&bytes)
    }

    pub fn flush(&mut self) -> String {
        self.buf.flush()
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_characters() {
        let mut b = Utf8Buffer::default();
        let s = "a€😀b".as_bytes();
        let mut out = String::new();
        for &byte in s {
            let piece = b.push(&[byte]);
            // Only whole characters come out.
            assert!(std::str::from_utf8(piece.as_bytes()).is_ok());
            out.push_str(&piece);
        }
        out.push_str(&b.flush());
        assert_eq!(out, "a€😀b");
    }

    #[test]
    fn invalid_bytes_match_lossy_decoding() {
        let cases: [&[u8]; 4] = [
            b"\xff\xfeab",
            b"ab\xe2\x82",
            b"\xe2\x82x\xf0\x9f\x98\x80",
            b"\xc3",
        ];
        for bytes in cases {
            let mut b = Utf8Buffer::default();
            let mut out = String::new();
            for &byte in bytes {
                out.push_str(&b.push(&[byte]));
            }
            out.push_str(&b.flush());
            assert_eq!(out, String::from_utf8_lossy(bytes), "{bytes:?}");
        }
    }
}
