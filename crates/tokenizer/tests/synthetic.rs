//! Tokenizers built from small in-memory GGUF files: error messages for unsupported or broken
//! metadata, and llama.cpp's defaults for what a file leaves out.

use autoglm_gguf::{ArrayValue, GgufFile, GgufWriter, Value};
use autoglm_tokenizer::{Tokenizer, TokenizerError};

fn strings(items: &[&str]) -> Value {
    Value::Array(ArrayValue::String(
        items.iter().map(|s| s.to_string()).collect(),
    ))
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn build(w: GgufWriter) -> Result<Tokenizer, TokenizerError> {
    let file = GgufFile::from_bytes(w.finish()).expect("valid gguf");
    Tokenizer::from_gguf(&file)
}

/// A byte-level BPE vocabulary: the 256 byte characters plus a few merges.
fn bpe_writer(pre: &str) -> GgufWriter {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| {
            // GPT-2's printable stand-ins.
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
            if printable {
                char::from(b).to_string()
            } else {
                let n = (0..b)
                    .filter(|&x| {
                        !((0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE)
                    })
                    .count() as u32;
                char::from_u32(256 + n).expect("valid").to_string()
            }
        })
        .collect();
    tokens.extend(
        [
            "he",
            "ll",
            "hell",
            "hello",
            "Ġw",
            "Ġwor",
            "<|eot_id|>",
            "<|begin_of_text|>",
        ]
        .map(String::from),
    );
    let n = tokens.len();
    let mut types = vec![1i32; n];
    types[n - 1] = 3;
    types[n - 2] = 3;
    GgufWriter::new()
        .kv("tokenizer.ggml.model", string("gpt2"))
        .kv("tokenizer.ggml.pre", string(pre))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(ArrayValue::String(tokens)),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(ArrayValue::I32(types)),
        )
        .kv(
            "tokenizer.ggml.merges",
            strings(&["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r"]),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(n as u32 - 1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(n as u32 - 2))
}

#[test]
fn unsupported_model_lists_supported_ones() {
    let err = build(
        GgufWriter::new()
            .kv("tokenizer.ggml.model", string("t5"))
            .kv("tokenizer.ggml.tokens", strings(&["a"])),
    )
    .expect_err("t5 is not supported");
    assert_eq!(
        err.to_string(),
        "unsupported tokenizer model \"t5\" (supported: gpt2, llama)"
    );
}

#[test]
fn unsupported_pre_tokenizer_is_named() {
    let err = build(bpe_writer("kimi-k2")).expect_err("kimi-k2 is not supported");
    let text = err.to_string();
    assert!(
        text.starts_with("unsupported pre-tokenizer \"kimi-k2\" (supported: default, gpt-2,"),
        "{text}"
    );
    assert!(text.contains("smollm") && text.contains("qwen2") && text.contains("llama-bpe"));
}

#[test]
fn missing_keys_are_named() {
    let err = build(GgufWriter::new().kv("tokenizer.ggml.tokens", strings(&["a"])))
        .expect_err("no model key");
    assert_eq!(
        err.to_string(),
        "metadata key 'tokenizer.ggml.model' is missing (needed to build the tokenizer)"
    );
    let err = build(
        GgufWriter::new()
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.pre", string("gpt-2"))
            .kv("tokenizer.ggml.tokens", strings(&["a"])),
    )
    .expect_err("no merges");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
    let err = build(
        GgufWriter::new()
            .kv("tokenizer.ggml.model", string("llama"))
            .kv("tokenizer.ggml.tokens", Value::U32(3)),
    )
    .expect_err("tokens of the wrong type");
    assert!(matches!(err, TokenizerError::Metadata(_)), "{err:?}");
    let err = build(
        GgufWriter::new()
            .kv("tokenizer.ggml.model", string("llama"))
            .kv("tokenizer.ggml.tokens", strings(&["a", "b", "a"])),
    )
    .expect_err("duplicate token");
    assert!(err.to_string().contains("duplicate token"), "{err}");
}

#[test]
fn llama3_style_bpe() {
    let tok = build(bpe_writer("llama-bpe")).expect("builds");
    let n = tok.vocab_size() as u32;
    // llama-bpe defaults to adding BOS.
    assert!(tok.add_bos());
    assert_eq!(tok.bos_id(), Some(n - 1));
    // "<|eot_id|>" is recognised as an end of generation.
    assert_eq!(tok.stop_ids(), &[n - 2]);
    let hello = tok.token_id("hello").expect("token");
    let wor = tok.token_id("Ġwor").expect("token");
    let ids = tok.tokenize("hello world<|eot_id|>", true, true);
    let ld = [tok.token_id("l").expect("l"), tok.token_id("d").expect("d")];
    assert_eq!(ids, vec![n - 1, hello, wor, ld[0], ld[1], n - 2]);
    assert_eq!(tok.decode(&ids, false), "hello world");
    assert_eq!(
        tok.decode(&ids, true),
        "<|begin_of_text|>hello world<|eot_id|>"
    );
    // Without parse_special the marker is plain text.
    assert!(!tok.encode("<|eot_id|>", false).contains(&(n - 2)));
}

#[test]
fn spm_defaults_add_a_space_prefix() {
    let tokens = ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi", "<0x21>"];
    let scores = vec![0.0f32, 0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -1.0, 0.0];
    let types = vec![2i32, 3, 3, 1, 1, 1, 1, 1, 6];
    let tok = build(
        GgufWriter::new()
            .kv("tokenizer.ggml.model", string("llama"))
            .kv("tokenizer.ggml.tokens", strings(&tokens))
            .kv(
                "tokenizer.ggml.scores",
                Value::Array(ArrayValue::F32(scores)),
            )
            .kv(
                "tokenizer.ggml.token_type",
                Value::Array(ArrayValue::I32(types)),
            ),
    )
    .expect("builds");
    // llama.cpp's SPM defaults: BOS 1 added, EOS 2, UNK 0, leading space.
    assert!(tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.stop_ids(), &[2]);
    let ids = tok.tokenize("hi!", true, false);
    assert_eq!(ids, vec![1, 7, 8]);
    assert_eq!(tok.decode(&ids, false), " hi!");
    // llama_detokenize strips the implied leading space only when the text does not start
    // with a BOS it removed (llama.cpp's exact rule).
    assert_eq!(tok.detokenize(&ids, true, false), " hi!");
    assert_eq!(tok.detokenize(&ids[1..], true, false), "hi!");
    assert_eq!(tok.detokenize(&ids, false, true), "<s> hi!");
    // After a special token the space prefix is added again.
    assert_eq!(tok.encode("</s>hi", true), vec![2, 7]);
}
