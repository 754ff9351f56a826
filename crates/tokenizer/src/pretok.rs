//! Pre-tokenisation for byte-level BPE: splitting text into words the way llama.cpp's
//! `unicode_regex_split` does, for the pre-tokenizer a GGUF names in `tokenizer.ggml.pre`.
//!
//! llama.cpp applies a *list* of regexes in sequence: each one re-splits every piece produced
//! by the previous ones, and both the matches and the gaps between them become pieces. Two
//! common regexes (GPT-2's and Llama 3's) are hand-written state machines in llama.cpp whose
//! behaviour differs subtly from a real regex engine (e.g. `\s+(?!\S)` at a piece boundary);
//! those are ported line for line. The others run through llama.cpp's "collapsed" scheme: every
//! non-ASCII codepoint is replaced by one stand-in per Unicode category and `\p{..}` classes are
//! rewritten to match the stand-ins; we reproduce that with private-use characters and
//! fancy-regex (backtracking, ordered alternation, like the ECMAScript engine llama.cpp uses).

use crate::unicode::{self, IN_RANGE, LETTER, MARK, NUMBER, PUNCT, SYMBOL, WHITESPACE};

/// GPT-2's pattern, which llama.cpp implements by hand.
const GPT2: &str = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
/// Llama 3's pattern (ECMAScript-adapted form), which llama.cpp implements by hand.
const LLAMA3: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const TEKKEN: &str = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT4O: &str = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const SEED_CODER: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const BAILINGMOE: &str = "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";
const UFAKZEKA: &str = "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const MINICPM5: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const DEEPSEEK3_MAIN: &str = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

/// How a GGUF's `tokenizer.ggml.pre` configures the BPE tokenizer (llama.cpp's
/// `LLAMA_VOCAB_PRE_TYPE_*` plus the flags its loader sets alongside).
pub(crate) struct PreConfig {
    pub regexes: &'static [&'static str],
    /// Look a whole word up in the vocabulary before merging (Llama 3 style).
    pub ignore_merges: bool,
    /// llama.cpp's `clean_up_tokenization_spaces` in `llama_detokenize`.
    pub clean_spaces: bool,
    /// Default for `add_bos` when the file does not say.
    pub add_bos: bool,
    /// The family has no BOS by default (ChatGLM).
    pub no_default_bos: bool,
}

const fn cfg(regexes: &'static [&'static str], clean_spaces: bool) -> PreConfig {
    PreConfig {
        regexes,
        ignore_merges: false,
        clean_spaces,
        add_bos: false,
        no_default_bos: false,
    }
}

/// Pre-tokenizer names this crate supports (for error messages).
pub(crate) const SUPPORTED: &[&str] = &[
    "default",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "exaone4",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
    "qwen35",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "falcon",
    "deepseek-coder",
    "deepseek-v3",
    "hunyuan-dense",
    "glm4",
    "chatglm-bpe",
    "tekken",
    "gpt-4o",
    "llama4",
    "minimax-m2",
    "seed-coder",
    "grok-2",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "ufakzeka",
    "minicpm5",
    "bloom",
    "gpt3-finnish",
    "poro-chat",
];

/// The configuration for `name`, or `None` when unsupported. A missing `tokenizer.ggml.pre`
/// is treated as "default", like llama.cpp (which warns that quality will suffer).
pub(crate) fn pre_config(name: &str) -> Option<PreConfig> {
    const DEFAULT: &[&str] = &[
        "[\\p{P}\\$\\+<=>\\^~\\|]+",
        GPT2,
        "\\p{N}+",
        "[0-9][0-9][0-9]",
    ];
    const DIGITS_THEN_GPT2: &[&str] = &["\\p{N}", GPT2];
    Some(match name {
        "" | "default" => cfg(DEFAULT, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => cfg(&[GPT2], true),
        "trillion" | "granite-docling" => cfg(&[GPT2], false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(&[LLAMA3], true)
        },
        "dbrx" | "smaug-bpe" => cfg(&[LLAMA3], true),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            cfg(&[QWEN2], false)
        }
        "megrez" | "stablelm2" => cfg(&[QWEN2], true),
        "grok-2" => cfg(&[QWEN2], false),
        "qwen35" => cfg(&[QWEN35], false),
        "smollm" | "command-r" => cfg(DIGITS_THEN_GPT2, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(DIGITS_THEN_GPT2, true)
        }
        "falcon" => cfg(
            &["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2, "[0-9][0-9][0-9]"],
            true,
        ),
        "deepseek-coder" => cfg(
            &[
                "[\r\n]",
                "\\s?\\p{L}+",
                "\\s?\\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                "\\p{N}",
            ],
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            cfg(&["\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_MAIN], false)
        }
        "glm4" | "chatglm-bpe" => PreConfig {
            no_default_bos: true,
            ..cfg(&[LLAMA3], true)
        },
        "tekken" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(&[TEKKEN], false)
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => cfg(&[GPT4O], false),
        "seed-coder" => cfg(&[SEED_CODER], false),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => cfg(&[BAILINGMOE], false),
        "ufakzeka" => cfg(&[UFAKZEKA], false),
        "minicpm5" => PreConfig {
            ignore_merges: true,
            ..cfg(&["\\p{N}{1,3}", MINICPM5], true)
        },
        "bloom" | "gpt3-finnish" => cfg(&[" ?[^(\\s|.,!?…。，、।۔،)]+"], true),
        "poro-chat" => cfg(&[" ?[^(\\s|.,!?…。，、।۔،)]+"], false),
        _ => return None,
    })
}

enum Split {
    Gpt2,
    Llama3,
    /// A general regex; `collapsed` says it runs on the category-collapsed text.
    Regex {
        re: fancy_regex::Regex,
        collapsed: bool,
    },
}

/// A compiled pre-tokenizer: the sequence of splits llama.cpp applies.
pub(crate) struct PreTokenizer {
    splits: Vec<Split>,
    needs_collapsed: bool,
    needs_plain: bool,
}

/// The stand-in for a codepoint of each category in collapsed text (llama.cpp uses bytes
/// 0xD0..0xD5; private-use characters keep the text valid UTF-8 for fancy-regex).
const COLLAPSED_OTHER: char = '\u{E0D0}';
const COLLAPSED_NUMBER: char = '\u{E0D1}';
const COLLAPSED_LETTER: char = '\u{E0D2}';
const COLLAPSED_PUNCT: char = '\u{E0D3}';
const COLLAPSED_MARK: char = '\u{E0D4}';
const COLLAPSED_SYMBOL: char = '\u{E0D5}';

/// Regex class body for a `\p{..}` category in collapsed text: the stand-in plus the ASCII
/// members of the category (llama.cpp's `k_ucat_map`).
fn category_class(pat: &str) -> Option<&'static str> {
    Some(match pat {
        "\\p{N}" => "\\x{E0D1}0-9",
        "\\p{L}" | "\\p{Lu}" | "\\p{Ll}" | "\\p{Lt}" | "\\p{Lm}" | "\\p{Lo}" => "\\x{E0D2}A-Za-z",
        "\\p{P}" => "\\x{E0D3}!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
        "\\p{M}" => "\\x{E0D4}",
        "\\p{S}" => "\\x{E0D5}\\$\\+<->^`\\|",
        _ => return None,
    })
}

fn uses_categories(expr: &str) -> bool {
    [
        "\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}",
        "\\p{Lm}", "\\p{Lo}",
    ]
    .iter()
    .any(|c| expr.contains(c))
}

/// llama.cpp's rewrite of a regex for collapsed text: each `\p{..}` becomes a class of its
/// stand-in and ASCII members (merged into an enclosing `[...]` when inside one).
fn collapse_regex(expr: &str) -> Result<String, String> {
    if !expr.is_ascii() {
        return Err(format!(
            "regex includes both unicode categories and non-ASCII characters: {expr}"
        ));
    }
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b[i] == b']' && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1] == b'p'
            && b[i + 2] == b'{'
            && let Some(close) = expr[i + 3..].find('}').map(|x| x + i + 3)
            && close <= i + 10
            && let Some(class) = category_class(&expr[i..=close])
        {
            if !inside {
                out.push('[');
            }
            out.push_str(class);
            if !inside {
                out.push(']');
            }
            i = close + 1;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    Ok(out)
}

impl PreTokenizer {
    pub fn new(exprs: &[&str]) -> Result<PreTokenizer, String> {
        let mut splits = Vec::with_capacity(exprs.len());
        let (mut needs_collapsed, mut needs_plain) = (false, false);
        for &expr in exprs {
            let split = if expr == GPT2 {
                Split::Gpt2
            } else if expr == LLAMA3 {
                Split::Llama3
            } else {
                let collapsed = uses_categories(expr);
                let source = if collapsed {
                    collapse_regex(expr)?
                } else {
                    expr.to_string()
                };
                let re = fancy_regex::Regex::new(&source)
                    .map_err(|e| format!("cannot compile pre-tokenizer regex {expr:?}: {e}"))?;
                needs_collapsed |= collapsed;
                needs_plain |= !collapsed;
                Split::Regex { re, collapsed }
            };
            splits.push(split);
        }
        Ok(PreTokenizer {
            splits,
            needs_collapsed,
            needs_plain,
        })
    }

    /// Split `text` into words, returned as byte ranges of `text` in order, covering it.
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let cpts: Vec<char> = text.chars().collect();
        let collapsed_text: Vec<char> = if self.needs_collapsed {
            cpts.iter().map(|&c| collapse_char(c)).collect()
        } else {
            Vec::new()
        };
        let plain_text: Vec<char> = if self.needs_plain {
            // std::wregex's \s does not know non-ASCII whitespace, so llama.cpp substitutes
            // a vertical tab for it.
            cpts.iter()
                .map(|&c| {
                    if (c as u32) > 0x7F && unicode::flags(c) & WHITESPACE != 0 {
                        '\u{0B}'
                    } else {
                        c
                    }
                })
                .collect()
        } else {
            Vec::new()
        };

        let mut offsets = vec![cpts.len()];
        for split in &self.splits {
            offsets = match split {
                Split::Gpt2 => split_gpt2(&cpts, &offsets),
                Split::Llama3 => split_llama3(&cpts, &offsets),
                Split::Regex { re, collapsed } => {
                    let chars = if *collapsed {
                        &collapsed_text
                    } else {
                        &plain_text
                    };
                    regex_split(re, chars, &offsets)
                }
            };
        }

        let mut out = Vec::with_capacity(offsets.len());
        let mut byte = 0;
        let mut chars = text.chars();
        for len in offsets {
            let start = byte;
            for _ in 0..len {
                byte += chars.next().map_or(0, char::len_utf8);
            }
            if byte > start {
                out.push((start, byte));
            }
        }
        out
    }
}

fn collapse_char(c: char) -> char {
    if (c as u32) < 128 {
        return c;
    }
    let f = unicode::flags(c);
    if f & WHITESPACE != 0 {
        '\u{0B}'
    } else if f & NUMBER != 0 {
        COLLAPSED_NUMBER
    } else if f & LETTER != 0 {
        COLLAPSED_LETTER
    } else if f & PUNCT != 0 {
        COLLAPSED_PUNCT
    } else if f & MARK != 0 {
        COLLAPSED_MARK
    } else if f & SYMBOL != 0 {
        COLLAPSED_SYMBOL
    } else {
        COLLAPSED_OTHER
    }
}

/// llama.cpp's `unicode_regex_split_stl`: within each piece, matches and the gaps between
/// them each become a piece. Lengths are in codepoints.
fn regex_split(re: &fancy_regex::Regex, chars: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    let mut frag = String::new();
    for &len in offsets {
        frag.clear();
        frag.extend(&chars[start..start + len]);
        // Match positions arrive in increasing order, so byte offsets convert to codepoint
        // counts incrementally.
        let (mut seen_byte, mut seen_cp) = (0usize, 0usize);
        let mut to_cp = |byte: usize| {
            seen_cp += frag[seen_byte..byte].chars().count();
            seen_byte = byte;
            seen_cp
        };
        let mut done = 0usize;
        for m in re.find_iter(&frag) {
            // A runtime error (backtracking limit) leaves the rest of the piece unsplit.
            let Ok(m) = m else { break };
            let (s, e) = (to_cp(m.start()), to_cp(m.end()));
            if s > done {
                out.push(s - done);
            }
            if e > s {
                out.push(e - s);
            }
            done = e;
        }
        if done < len {
            out.push(len - done);
        }
        start += len;
    }
    out
}

/// Splitter state shared by the hand-written GPT-2 and Llama 3 machines: one piece
/// `[ini, end)` of the codepoints, out-of-piece positions reading as "nothing".
struct Piece<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
    prev_end: usize,
}

impl Piece<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.cpts[pos])
    }

    #[inline]
    fn flags(&self, pos: usize) -> u8 {
        self.cpt(pos).map_or(0, unicode::flags)
    }

    /// Ends the current word at `end`; returns its length.
    #[inline]
    fn add(&mut self, end: usize, out: &mut Vec<usize>) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            out.push(len);
        }
        self.prev_end = end;
        len
    }
}

const WLN: u8 = WHITESPACE | LETTER | NUMBER;

/// Port of llama.cpp's `unicode_regex_split_custom_gpt2`.
fn split_gpt2(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let mut p = Piece {
            cpts,
            ini: start,
            end: start + len,
            prev_end: start,
        };
        start += len;
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos).unwrap_or('\0');
            let flags = p.flags(pos);

            // 's|'t|'re|'ve|'m|'ll|'d
            if cpt == '\'' && pos + 1 < p.end {
                let next = p.cpt(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += p.add(pos + 2, &mut out);
                    continue;
                }
                if pos + 2 < p.end {
                    let next2 = p.cpt(pos + 2);
                    if matches!(
                        (next, next2),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += p.add(pos + 3, &mut out);
                        continue;
                    }
                }
            }

            let space = usize::from(cpt == ' ');
            let mut flags2 = if cpt == ' ' { p.flags(pos + 1) } else { flags };
            // <space>?\p{L}+
            if flags2 & LETTER != 0 {
                pos += space;
                while flags2 & LETTER != 0 {
                    pos += 1;
                    flags2 = p.flags(pos);
                }
                p.add(pos, &mut out);
                continue;
            }
            // <space>?\p{N}+
            if flags2 & NUMBER != 0 {
                pos += space;
                while flags2 & NUMBER != 0 {
                    pos += 1;
                    flags2 = p.flags(pos);
                }
                p.add(pos, &mut out);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+
            if flags2 & WLN == 0 && flags2 & IN_RANGE != 0 {
                pos += space;
                while flags2 & WLN == 0 && flags2 & IN_RANGE != 0 {
                    pos += 1;
                    flags2 = p.flags(pos);
                }
                p.add(pos, &mut out);
                continue;
            }

            let mut num_ws = 0;
            while p.flags(pos + num_ws) & WHITESPACE != 0 {
                num_ws += 1;
            }
            // \s+(?!\S)
            if num_ws > 1 && p.cpt(pos + num_ws).is_some() {
                pos += num_ws - 1;
                p.add(pos, &mut out);
                continue;
            }
            // \s+
            if num_ws > 0 {
                pos += num_ws;
                p.add(pos, &mut out);
                continue;
            }
            // no match
            pos += 1;
            p.add(pos, &mut out);
        }
    }
    out
}

fn lower(c: Option<char>) -> Option<char> {
    c.map(|c| c.to_lowercase().next().unwrap_or(c))
}

/// Port of llama.cpp's `unicode_regex_split_custom_llama3`.
fn split_llama3(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let mut p = Piece {
            cpts,
            ini: start,
            end: start + len,
            prev_end: start,
        };
        start += len;
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos).unwrap_or('\0');
            let flags = p.flags(pos);

            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if cpt == '\'' && pos + 1 < p.end {
                let next = lower(p.cpt(pos + 1));
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += p.add(pos + 2, &mut out);
                    continue;
                }
                if pos + 2 < p.end {
                    let next2 = lower(p.cpt(pos + 2));
                    if matches!(
                        (next, next2),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += p.add(pos + 3, &mut out);
                        continue;
                    }
                }
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == '\r' || cpt == '\n' || flags & NUMBER != 0)
                && (flags & LETTER != 0 || p.flags(pos + 1) & LETTER != 0)
            {
                pos += 1;
                while p.flags(pos) & LETTER != 0 {
                    pos += 1;
                }
                p.add(pos, &mut out);
                continue;
            }

            // \p{N}{1,3}
            if flags & NUMBER != 0 {
                let mut ini = pos;
                while p.flags(pos) & NUMBER != 0 {
                    pos += 1;
                    if pos - ini >= 3 {
                        p.add(pos, &mut out);
                        ini = pos;
                    }
                }
                p.add(pos, &mut out);
                continue;
            }

            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let mut flags2 = if cpt == ' ' { p.flags(pos + 1) } else { flags };
            // llama.cpp tests the current codepoint's flags here, not flags2.
            if flags2 & WLN == 0 && flags != 0 {
                pos += usize::from(cpt == ' ');
                while flags2 & WLN == 0 && flags2 != 0 {
                    pos += 1;
                    flags2 = p.flags(pos);
                }
                while matches!(p.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                p.add(pos, &mut out);
                continue;
            }

            let mut num_ws = 0;
            let mut last_end_rn = 0;
            while p.flags(pos + num_ws) & WHITESPACE != 0 {
                if matches!(p.cpt(pos + num_ws), Some('\r' | '\n')) {
                    last_end_rn = pos + num_ws + 1;
                }
                num_ws += 1;
            }
            // \s*[\r\n]+
            if last_end_rn > 0 {
                pos = last_end_rn;
                p.add(pos, &mut out);
                continue;
            }
            // \s+(?!\S)
            if num_ws > 1 && p.cpt(pos + num_ws).is_some() {
                pos += num_ws - 1;
                p.add(pos, &mut out);
                continue;
            }
            // \s+
            if num_ws > 0 {
                pos += num_ws;
                p.add(pos, &mut out);
                continue;
            }
            pos += 1;
            p.add(pos, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let cfg = pre_config(pre).expect("known pre-tokenizer");
        let p = PreTokenizer::new(cfg.regexes).expect("compiles");
        p.split(text)
            .into_iter()
            .map(|(a, b)| text[a..b].to_string())
            .collect()
    }

    fn check(pre: &str, text: &str, expect: &[&str]) {
        assert_eq!(words(pre, text), expect, "pre-tokenizer {pre} on {text:?}");
    }

    #[test]
    fn gpt2_family() {
        check("gpt-2", "Hello world", &["Hello", " world"]);
        check("gpt-2", "it's  ok  ", &["it", "'s", " ", " ok", "  "]);
        check("gpt-2", "a\n\nb", &["a", "\n", "\n", "b"]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        check(
            "smollm",
            "The year 2024 had",
            &["The", " year", " ", "2", "0", "2", "4", " had"],
        );
    }

    #[test]
    fn llama3_groups_three_digits() {
        check(
            "llama3",
            "x 12345 \n\n  y",
            &["x", " ", "123", "45", " \n\n", " ", " y"],
        );
    }

    #[test]
    fn qwen2_single_digits() {
        check("qwen2", "ab 123!\n", &["ab", " ", "1", "2", "3", "!\n"]);
    }

    #[test]
    fn every_supported_pre_tokenizer_compiles_and_covers_text() {
        let text = "Hello, WORLD! it's 12345 — naïve 你好 🤖\n\n\tx  y ";
        for name in SUPPORTED {
            let cfg = pre_config(name).expect("listed names are known");
            let p = PreTokenizer::new(cfg.regexes)
                .unwrap_or_else(|e| panic!("pre-tokenizer {name}: {e}"));
            let joined: String = p.split(text).iter().map(|&(a, b)| &text[a..b]).collect();
            assert_eq!(joined, text, "pre-tokenizer {name} must cover the text");
        }
        assert!(pre_config("no-such-pre").is_none());
    }
}
