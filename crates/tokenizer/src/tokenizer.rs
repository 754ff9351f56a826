//! [`Tokenizer`]: building a tokenizer from GGUF metadata the way llama.cpp's `llama_vocab::load`
//! does (defaults, special-token ids, end-of-generation detection, attribute fix-ups), and
//! encoding / decoding text with it.

use std::borrow::Cow;

use autoglm_gguf::GgufFile;

use crate::TokenizerError;
use crate::bpe::{self, Merges};
use crate::pretok::{self, PreTokenizer};
use crate::special::{Fragment, SpecialMatcher};
use crate::spm::Spm;
use crate::unicode;
use crate::vocab::{Vocab, attr};

/// Tokenizer models (`tokenizer.ggml.model`) this crate implements.
pub const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama"];

enum Model {
    /// Byte-level BPE with a pre-tokenizer.
    Bpe {
        pre: PreTokenizer,
        merges: Merges,
        ignore_merges: bool,
    },
    /// SentencePiece-style BPE ranked by token scores.
    Spm {
        scores: Vec<f32>,
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A model's tokenizer. Immutable after loading, `Send + Sync`, cheap to share behind `Arc`.
pub struct Tokenizer {
    model: Model,
    model_name: String,
    pre_name: String,
    vocab: Vocab,
    attrs: Vec<u8>,
    special: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    warnings: Vec<String>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model_name)
            .field("pre", &self.pre_name)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.eog)
            .finish_non_exhaustive()
    }
}

/// Texts llama.cpp treats as end-of-turn when the file names no EOT token.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts llama.cpp treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// A single byte, borrowable as a slice (byte tokens decode without allocating).
static BYTE_VALUES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

fn gguf_err(e: autoglm_gguf::GgufError) -> TokenizerError {
    TokenizerError::Metadata(e.to_string())
}

/// Special-token slots llama.cpp reads from the file, in its order.
#[derive(Default, Clone, Copy)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    sep: Option<u32>,
    pad: Option<u32>,
    mask: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model_name = file
            .get_str_opt("tokenizer.ggml.model")
            .map_err(gguf_err)?
            .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.model".into()))?
            .to_string();
        let pre_name = file
            .get_str_opt("tokenizer.ggml.pre")
            .map_err(gguf_err)?
            .unwrap_or("")
            .to_string();

        let tokens = file
            .get_array_opt("tokenizer.ggml.tokens")
            .map_err(gguf_err)?
            .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.tokens".into()))?;
        let tokens = tokens.as_strings().ok_or_else(|| {
            TokenizerError::Metadata(format!(
                "tokenizer.ggml.tokens must be an array of strings, found an array of {}",
                tokens.elem_type_name()
            ))
        })?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::Metadata(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        let vocab = Vocab::new(tokens).map_err(TokenizerError::Metadata)?;

        let mut attrs = match file
            .get_array_opt("tokenizer.ggml.token_type")
            .map_err(gguf_err)?
        {
            None => vec![attr::NORMAL; n],
            Some(a) => {
                let types = a.to_i64s().ok_or_else(|| {
                    TokenizerError::Metadata(format!(
                        "tokenizer.ggml.token_type must be an integer array, found {}",
                        a.elem_type_name()
                    ))
                })?;
                if types.len() < n {
                    return Err(TokenizerError::Metadata(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        types.len()
                    )));
                }
                types[..n]
                    .iter()
                    .map(|&t| attr::from_token_type(t))
                    .collect()
            }
        };

        let mut warnings = Vec::new();
        let mut ids = SpecialIds::default();
        let (model, mut add_bos, mut add_eos, mut add_space_prefix, clean_spaces);
        match model_name.as_str() {
            "gpt2" => {
                let Some(cfg) = pretok::pre_config(&pre_name) else {
                    return Err(TokenizerError::UnsupportedPreTokenizer {
                        name: pre_name,
                        supported: pretok::SUPPORTED.join(", "),
                    });
                };
                if pre_name.is_empty() {
                    warnings.push(
                        "missing tokenizer.ggml.pre, using 'default' (quality will suffer)".into(),
                    );
                }
                let merges = file
                    .get_array_opt("tokenizer.ggml.merges")
                    .map_err(gguf_err)?
                    .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.merges".into()))?;
                let merges = merges.as_strings().ok_or_else(|| {
                    TokenizerError::Metadata("tokenizer.ggml.merges must be strings".into())
                })?;
                let pre = PreTokenizer::new(cfg.regexes).map_err(TokenizerError::Metadata)?;
                model = Model::Bpe {
                    pre,
                    merges: Merges::new(merges, &vocab),
                    ignore_merges: cfg.ignore_merges,
                };
                // llama.cpp's BPE defaults (yes, 11 for both).
                ids.bos = if cfg.no_default_bos { None } else { Some(11) };
                ids.eos = Some(11);
                add_bos = cfg.add_bos;
                add_eos = false;
                add_space_prefix = false;
                clean_spaces = cfg.clean_spaces;
            }
            "llama" => {
                let scores = match file
                    .get_array_opt("tokenizer.ggml.scores")
                    .map_err(gguf_err)?
                {
                    None => vec![0.0; n],
                    Some(a) => {
                        let s: Vec<f32> = match a.as_f32s() {
                            Some(f) => f.to_vec(),
                            None => a
                                .to_i64s()
                                .ok_or_else(|| {
                                    TokenizerError::Metadata(format!(
                                        "tokenizer.ggml.scores must be f32 or i32, found {}",
                                        a.elem_type_name()
                                    ))
                                })?
                                .into_iter()
                                .map(|v| v as f32)
                                .collect(),
                        };
                        if s.len() < n {
                            return Err(TokenizerError::Metadata(format!(
                                "tokenizer.ggml.scores has {} entries for {n} tokens",
                                s.len()
                            )));
                        }
                        s
                    }
                };
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    let hex = format!("<0x{b:02X}>");
                    *slot = vocab.get(&hex).or_else(|| {
                        let one = [b as u8];
                        std::str::from_utf8(&one).ok().and_then(|s| vocab.get(s))
                    });
                }
                model = Model::Spm {
                    scores,
                    byte_tokens,
                };
                ids.bos = Some(1);
                ids.eos = Some(2);
                ids.unk = Some(0);
                add_bos = true;
                add_eos = false;
                add_space_prefix = true;
                clean_spaces = false;
            }
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    name: other.to_string(),
                    supported: SUPPORTED_MODELS.join(", "),
                });
            }
        }
        if let Some(v) = file
            .get_bool_opt("tokenizer.ggml.add_space_prefix")
            .map_err(gguf_err)?
        {
            add_space_prefix = v;
        }

        // Defaults outside the vocabulary are disabled; file values override them. The
        // deprecated prefix/suffix/middle keys fill the FIM slots last, as in llama.cpp.
        for (key, slot) in [
            ("tokenizer.ggml.bos_token_id", &mut ids.bos),
            ("tokenizer.ggml.eos_token_id", &mut ids.eos),
            ("tokenizer.ggml.eot_token_id", &mut ids.eot),
            ("tokenizer.ggml.eom_token_id", &mut ids.eom),
            ("tokenizer.ggml.unknown_token_id", &mut ids.unk),
            ("tokenizer.ggml.seperator_token_id", &mut ids.sep),
            ("tokenizer.ggml.padding_token_id", &mut ids.pad),
            ("tokenizer.ggml.mask_token_id", &mut ids.mask),
        ] {
            read_special(file, key, slot, n, &mut warnings)?;
        }
        for (key, slot) in [
            ("tokenizer.ggml.fim_pre_token_id", &mut ids.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", &mut ids.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", &mut ids.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", &mut ids.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", &mut ids.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", &mut ids.fim_sep),
        ] {
            read_special(file, key, slot, n, &mut warnings)?;
        }
        for (key, slot) in [
            ("tokenizer.ggml.prefix_token_id", &mut ids.fim_pre),
            ("tokenizer.ggml.suffix_token_id", &mut ids.fim_suf),
            ("tokenizer.ggml.middle_token_id", &mut ids.fim_mid),
        ] {
            read_special(file, key, slot, n, &mut warnings)?;
        }

        if let Some(v) = file
            .get_bool_opt("tokenizer.ggml.add_bos_token")
            .map_err(gguf_err)?
        {
            add_bos = v;
        }
        if let Some(v) = file
            .get_bool_opt("tokenizer.ggml.add_eos_token")
            .map_err(gguf_err)?
        {
            add_eos = v;
        }
        if add_bos && ids.bos.is_none() {
            return Err(TokenizerError::Metadata(
                "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set"
                    .into(),
            ));
        }
        if add_eos && ids.eos.is_none() {
            return Err(TokenizerError::Metadata(
                "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set"
                    .into(),
            ));
        }

        // Auto-detect special tokens by text (llama.cpp looks through the whole vocabulary;
        // looking the known texts up is equivalent, and when several texts of one kind are
        // present we take the lowest id where llama.cpp takes whichever its hash map yields).
        let find = |texts: &[&str]| texts.iter().filter_map(|t| vocab.get(t)).min();
        let mark_control = |id: u32, attrs: &mut Vec<u8>| {
            attrs[id as usize] |= attr::CONTROL;
        };
        for (slot, texts) in [
            (&mut ids.eot, EOT_TEXTS),
            (&mut ids.eom, &["<|eom_id|>"][..]),
            (&mut ids.fim_pre, FIM_PRE_TEXTS),
            (&mut ids.fim_suf, FIM_SUF_TEXTS),
            (&mut ids.fim_mid, FIM_MID_TEXTS),
            (&mut ids.fim_pad, FIM_PAD_TEXTS),
            (&mut ids.fim_rep, FIM_REP_TEXTS),
            (&mut ids.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none()
                && let Some(id) = find(texts)
            {
                *slot = Some(id);
                mark_control(id, &mut attrs);
            }
        }

        // Control tokens named "unused" are unused.
        for (id, a) in attrs.iter_mut().enumerate() {
            if *a & attr::CONTROL != 0 && vocab.text(id as u32).contains("unused") {
                *a |= attr::UNUSED;
            }
        }

        let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for t in EOG_TEXTS {
            if let Some(id) = vocab.get(t) {
                eog.push(id);
                mark_control(id, &mut attrs);
            }
        }
        // gpt-oss: these structure tokens are always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.get(t) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let has = |eog: &[u32], t: &str| vocab.get(t).is_some_and(|id| eog.contains(&id));
        // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
        let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
        if has_call
            && has(&eog, "<|end|>")
            && (has(&eog, "<|return|>") || has(&eog, "<|flush|>"))
            && let Some(id) = vocab.get("<|end|>")
        {
            eog.retain(|&e| e != id);
            attrs[id as usize] = attr::USER_DEFINED;
        }
        // gemma4 / paddleocr: "</s>" is not an end of generation there.
        if has(&eog, "<|tool_response>")
            && has(&eog, "</s>")
            && let Some(id) = vocab.get("</s>")
        {
            eog.retain(|&e| e != id);
            attrs[id as usize] = attr::NORMAL;
        }

        let special_ids: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        let special = SpecialMatcher::new(&vocab, special_ids);

        Ok(Tokenizer {
            model,
            model_name,
            pre_name,
            vocab,
            attrs,
            special,
            bos: ids.bos,
            eos: ids.eos,
            eot: ids.eot,
            unk: ids.unk,
            pad: ids.pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            warnings,
        })
    }

    /// Token ids of `text`, without BOS/EOS. With `parse_special`, the text of control tokens
    /// (e.g. "<|im_start|>") becomes those tokens; user-defined tokens are recognised either
    /// way, exactly like llama.cpp's `llama_tokenize(.., add_special = false, parse_special)`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.tokenize(text, false, parse_special)
    }

    /// llama.cpp's `llama_tokenize`: with `add_special`, BOS (and EOS) are added when the
    /// model asks for them ([`add_bos`](Self::add_bos) / [`add_eos`](Self::add_eos)).
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let attrs = &self.attrs;
        let frags = self.special.partition(&self.vocab, text, |id| {
            parse_special || attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) == 0
        });
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Spm {
                scores,
                byte_tokens,
            } => {
                let spm = Spm {
                    vocab: &self.vocab,
                    scores,
                    byte_tokens,
                    unk: self.unk,
                };
                // A leading space goes before the first fragment and after each special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm.tokenize(&buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe {
                pre,
                merges,
                ignore_merges,
            } => {
                let mut scratch = bpe::Scratch::default();
                let mut word = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            let piece = &text[a..b];
                            for (ws, we) in pre.split(piece) {
                                word.clear();
                                for &byte in &piece.as_bytes()[ws..we] {
                                    word.push(unicode::byte_to_char(byte));
                                }
                                bpe::tokenize_word(
                                    &word,
                                    &self.vocab,
                                    merges,
                                    *ignore_merges,
                                    &mut scratch,
                                    &mut out,
                                );
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token, if the file names one or one was recognised by its text.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`, else llama.cpp's
    /// default: true for SentencePiece and Llama-3-style BPE, false for other BPE).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether prompts end with EOS (`tokenizer.ggml.add_eos_token`, default false).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Tokens that end a generation (llama.cpp's EOG set), sorted: EOS, EOT/EOM, FIM
    /// pad/repo/separator tokens and the well-known end-of-turn texts present in the vocabulary.
    pub fn stop_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Control or unknown token: rendered as nothing unless special tokens are requested.
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0
    }

    /// User-defined token (always recognised in text, always rendered).
    pub fn is_user_defined(&self, id: u32) -> bool {
        self.attr(id) & attr::USER_DEFINED != 0
    }

    fn attr(&self, id: u32) -> u8 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// The vocabulary string as stored, or `None` when `id` is out of range.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.get_text(id)
    }

    /// The id of a token given its exact vocabulary string.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text)
    }

    /// `tokenizer.ggml.model` ("gpt2" or "llama").
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// `tokenizer.ggml.pre` ("" when absent).
    pub fn pre_tokenizer_name(&self) -> &str {
        &self.pre_name
    }

    /// Things llama.cpp would log as warnings while loading this tokenizer.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The exact bytes `id` contributes to decoded text (llama.cpp's `token_to_piece`):
    /// byte-level BPE characters mapped back to bytes, SentencePiece "▁" to spaces, `<0xNN>`
    /// byte tokens to their byte; control/unknown tokens give their text when `special`, else
    /// nothing. Out-of-range ids give nothing.
    pub fn token_bytes(&self, id: u32, special: bool) -> Cow<'_, [u8]> {
        let Some(text) = self.vocab.get_text(id) else {
            return Cow::Borrowed(&[]);
        };
        let a = self.attr(id);
        if a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return if special {
                Cow::Borrowed(text.as_bytes())
            } else {
                Cow::Borrowed(&[])
            };
        }
        if a & attr::USER_DEFINED != 0 {
            return Cow::Borrowed(text.as_bytes());
        }
        if a & attr::NORMAL != 0 {
            return match self.model {
                Model::Spm { .. } => {
                    if text.contains('▁') {
                        Cow::Owned(text.replace('▁', " ").into_bytes())
                    } else {
                        Cow::Borrowed(text.as_bytes())
                    }
                }
                Model::Bpe { .. } => decode_byte_level(text),
            };
        }
        if a & attr::BYTE != 0 {
            // llama.cpp reads the two hex digits of "<0xNN>" with strtol (0 if malformed).
            let b = text
                .get(3..5)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0) as usize;
            return Cow::Borrowed(&BYTE_VALUES[b..b + 1]);
        }
        // Unused / undefined types render as nothing, like control tokens.
        Cow::Borrowed(&[])
    }

    /// Decoded text of `ids`: the concatenation of [`token_bytes`](Self::token_bytes), made
    /// UTF-8 lossily at the end only. This is what streaming the same ids yields.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(&self.token_bytes(id, special));
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// llama.cpp's `llama_detokenize`: like [`decode`](Self::decode), but optionally drops a
    /// leading BOS / trailing EOS (`remove_special`), strips the space SentencePiece models
    /// put before the first word, and applies the model family's tokenization-space clean-up.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> String {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && ids.last().copied() == self.eos && self.eos.is_some() {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.token_bytes(id, unparse_special);
            let piece: &[u8] = if remove_space && piece.first() == Some(&b' ') {
                &piece[1..]
            } else {
                &piece
            };
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            text = clean_up_spaces(text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Reads one special-token id key: out-of-range defaults are disabled, out-of-range file
/// values are ignored (keeping the default), like llama.cpp.
fn read_special(
    file: &GgufFile,
    key: &str,
    slot: &mut Option<u32>,
    n: usize,
    warnings: &mut Vec<String>,
) -> Result<(), TokenizerError> {
    if slot.is_some_and(|id| id as usize >= n) {
        warnings.push(format!(
            "default special token {key} = {slot:?} out of vocab range, disabling"
        ));
        *slot = None;
    }
    if let Some(v) = file.get_u64_opt(key).map_err(gguf_err)? {
        if v >= n as u64 {
            warnings.push(format!(
                "bad special token {key} = {v}, using default {slot:?}"
            ));
        } else {
            *slot = Some(v as u32);
        }
    }
    Ok(())
}

/// Maps byte-level BPE characters back to bytes (llama.cpp's `llama_decode_text`); characters
/// that stand for no byte are rendered as llama.cpp does, "[UNK_BYTE_0x..]".
fn decode_byte_level(text: &str) -> Cow<'_, [u8]> {
    // Fast path: '!'..='~' stand for themselves.
    if text.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    Cow::Owned(out)
}

/// llama.cpp's `clean_up_tokenization_spaces` passes over detokenised bytes.
fn clean_up_spaces(mut text: Vec<u8>) -> Vec<u8> {
    // " ?", " !", " .", " ," lose the space.
    let total1 = text.len();
    let mut total = usize::from(total1 > 0);
    for i in 1..total1 {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // " ' " loses both spaces.
    let total2 = total;
    total = usize::from(total2 > 0);
    let mut i = 1;
    while i < total2 {
        let x = text[i];
        if x == b'\'' && i + 1 < total2 && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            text[i + 1] = 0;
            text[total] = x;
            total += 1;
            i += 2;
            continue;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // " 's", " 'm", " 're", " 've" lose the space.
    let total3 = total;
    total = usize::from(total3 > 0);
    for i in 1..total3 {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < total3 {
            let x1 = text[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < total3 {
                let x2 = text[i + 2];
                if x2 == b'e' && (x1 == b'r' || x1 == b'v') {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_llama_cpp() {
        let f = |s: &str| String::from_utf8(clean_up_spaces(s.as_bytes().to_vec())).unwrap();
        assert_eq!(f("Hello , world !"), "Hello, world!");
        assert_eq!(f("it 's a ' b"), "it's a'b");
        assert_eq!(f("we 're here 'd"), "we're here 'd");
        assert_eq!(f(""), "");
    }

    #[test]
    fn byte_level_decoding() {
        assert_eq!(&*decode_byte_level("ĠHello"), b" Hello");
        assert_eq!(&*decode_byte_level("abc"), b"abc");
        assert_eq!(&*decode_byte_level("Ċ"), b"\n");
        assert_eq!(
            &*decode_byte_level("你"),
            "[UNK_BYTE_0xe4bda0你]".as_bytes()
        );
    }
}
