//! Constrained decoding: JSON Schema, regex and Lark grammars compiled by `llguidance` against
//! our tokenizer, and the per-sequence state that masks each step's logits so only tokens that
//! keep the output inside the grammar can be sampled.
//!
//! [`ConstraintCompiler`] is built once per tokenizer (the token trie costs tens of
//! milliseconds for a large vocabulary) and compiles grammars on the caller's thread, so a bad
//! schema is refused before a request reaches the engine. [`Constraint`] moves into the engine
//! with its request: each step it yields a mask, each sampled token advances it, and it says when
//! the grammar is complete so the sequence can end without another forward pass.

use std::sync::Arc;

use autoglm_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::EngineError;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema (draft 2020-12 subset as llguidance supports it); `{"type": "object"}`
    /// is OpenAI's `json_object` mode.
    JsonSchema(serde_json::Value),
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
    /// A Lark-like grammar (llguidance's syntax: `%json {...}` inlines a schema).
    Lark(String),
}

impl Grammar {
    /// OpenAI's `json_object`: any JSON object.
    pub fn json_object() -> Grammar {
        Grammar::JsonSchema(serde_json::json!({"type": "object"}))
    }
}

/// JSON layout for schemas: one space after `:` and `,` and no other whitespace. Flexible
/// whitespace lets a small model loop on newlines forever; a fixed layout keeps every token
/// meaningful. `oneOf` is approximated by `anyOf` rather than refused.
fn json_options() -> serde_json::Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "coerce_one_of": true,
    })
}

/// Adds our JSON layout to a schema unless it sets its own `x-guidance` options.
pub(crate) fn with_json_options(schema: &serde_json::Value) -> serde_json::Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(json_options);
    }
    s
}

/// Our tokenizer seen through toktrie's interface. Control tokens are spelled with toktrie's
/// special-token marker so they never match grammar text; end-of-generation is allowed by the
/// grammar only where it may end.
struct TokenizerView {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenizerView {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        // Grammar literals are text; bytes that are not UTF-8 cannot come from a grammar
        // string, so replacing them cannot change what a valid grammar means.
        self.tokenizer.encode(&String::from_utf8_lossy(s), false)
    }
}

fn token_words(tok: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tok.vocab_size() as u32)
        .map(|id| {
            let bytes = tok.token_bytes(id, false);
            if tok.is_control(id) || bytes.is_empty() {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(tok.token_text(id).unwrap_or("").as_bytes());
                w
            } else {
                bytes.into_owned()
            }
        })
        .collect()
}

/// A token made only of closing punctuation (`"`, `}`, `]`, spaces), at least one of them not a
/// space: what finishes a JSON value fastest.
fn is_closer(word: &[u8]) -> bool {
    word.iter().any(|&b| matches!(b, b'"' | b'}' | b']'))
        && word.iter().all(|&b| matches!(b, b'"' | b'}' | b']' | b' '))
}

/// Compiles grammars for one tokenizer. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct ConstraintCompiler {
    factory: Arc<ParserFactory>,
    eos: u32,
    stop_ids: Arc<[u32]>,
    closers: Arc<[u32]>,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl ConstraintCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<ConstraintCompiler, EngineError> {
        let stop_ids: Arc<[u32]> = tokenizer.stop_ids().into();
        // The grammar's "end" token: the end-of-turn token when there is one (chat output ends
        // there), else end-of-sequence; every other stop token follows it in the mask.
        let eos = tokenizer
            .eot_id()
            .or(tokenizer.eos_id())
            .or(stop_ids.first().copied())
            .ok_or_else(|| {
                EngineError::Constraint("the tokenizer has no end-of-generation token".into())
            })?;
        let mut info = TokRxInfo::new(tokenizer.vocab_size() as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let words = token_words(&tokenizer);
        let closers: Arc<[u32]> = words
            .iter()
            .enumerate()
            .filter(|(_, w)| is_closer(w))
            .map(|(i, _)| i as u32)
            .collect();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(TokenizerView { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Constraint(format!("cannot build the token trie: {e}")))?;
        factory.quiet();
        Ok(ConstraintCompiler {
            factory: Arc::new(factory),
            eos,
            stop_ids,
            closers,
        })
    }

    /// Compiles `grammar`; errors name what is wrong with it (unsupported schema keyword,
    /// regex syntax, Lark syntax).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let top = match grammar {
            Grammar::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err(EngineError::Constraint(
                        "a JSON schema must be an object".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(with_json_options(s))
            }
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
            Grammar::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| EngineError::Constraint(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Constraint(e));
        }
        Ok(Constraint {
            matcher,
            eos: self.eos,
            stop_ids: self.stop_ids.clone(),
            closers: self.closers.clone(),
        })
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    eos: u32,
    stop_ids: Arc<[u32]>,
    closers: Arc<[u32]>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            eos: self.eos,
            stop_ids: self.stop_ids.clone(),
            closers: self.closers.clone(),
        }
    }
}

impl Constraint {
    /// The tokens allowed next.
    pub fn mask(&mut self) -> Result<SimpleVob, EngineError> {
        self.matcher
            .compute_mask()
            .map_err(|e| EngineError::Constraint(e.to_string()))
    }

    /// Sets every logit the grammar forbids to -inf. End-of-generation tokens are allowed
    /// exactly where the grammar may end.
    ///
    /// `wrap_up` is set when the token budget is nearly spent: then, wherever the grammar
    /// allows a closing token (`"`, `}`, `]` or the end), only closing tokens remain, so a
    /// structure cut off by `max_tokens` is rare instead of a matter of luck. Where nothing may
    /// close yet (a missing required key, a minimum length), the model chooses as usual.
    pub fn apply(&mut self, logits: &mut [f32], wrap_up: bool) -> Result<(), EngineError> {
        let mask = self.mask()?;
        let may_end = mask.is_allowed(self.eos);
        // Stop tokens are "special" to the trie, so the mask forbids them all but `eos`; keep
        // their model logits to restore where the grammar may end.
        let saved: Vec<(usize, f32)> = self
            .stop_ids
            .iter()
            .filter_map(|&s| logits.get(s as usize).map(|&l| (s as usize, l)))
            .collect();
        for (i, l) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        if may_end {
            for (i, l) in saved {
                logits[i] = l;
            }
        }
        if wrap_up {
            let closing: Vec<(usize, f32)> = self
                .closers
                .iter()
                .filter(|&&c| mask.is_allowed(c))
                .filter_map(|&c| logits.get(c as usize).map(|&l| (c as usize, l)))
                .chain(
                    self.stop_ids
                        .iter()
                        .filter(|_| may_end)
                        .filter_map(|&s| logits.get(s as usize).map(|&l| (s as usize, l))),
                )
                .collect();
            if !closing.is_empty() {
                logits.fill(f32::NEG_INFINITY);
                for (i, l) in closing {
                    logits[i] = l;
                }
            }
        }
        Ok(())
    }

    /// Advances past a sampled token (which must have been allowed).
    pub fn commit(&mut self, token: u32) -> Result<(), EngineError> {
        if self.stop_ids.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Constraint(e.to_string()))
    }

    /// True when the grammar cannot continue: the output is complete.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// True when the output so far may end here.
    pub fn may_end(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

/// JSON in the layout the grammar produces (`", "` and `": "`, nothing else), so text written
/// into a prompt looks like what the model is constrained to write.
pub fn compact_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(x, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
