//! Data-driven checks against llama.cpp's recordings on the two real models: tokenisation
//! with and without special-token parsing, full prompts with BOS, decoding of generated ids,
//! streaming decoding, and load time.

mod common;

use std::time::Instant;

use autoglm_gguf::GgufFile;
use autoglm_tokenizer::{OwnedStreamDecoder, StreamDecoder, Tokenizer};
use common::*;

/// Every line of `tokenize.jsonl`, both modes; all mismatches are reported together.
fn check_tokenize(model: &str, tok: &Tokenizer) {
    let mut failures = Vec::new();
    let lines = reference(model, "tokenize.jsonl");
    assert!(!lines.is_empty());
    for line in &lines {
        let text = line["text"].as_str().expect("text");
        for (parse_special, key) in [(false, "ids"), (true, "ids_parse_special")] {
            let want = ids(&line[key]);
            let got = tok.encode(text, parse_special);
            if got != want {
                failures.push(format!(
                    "{text:?} parse_special={parse_special}\n  want {want:?}\n  got  {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{model}: {} tokenize lines x 2 modes match", lines.len());
}

#[test]
fn smollm_tokenize_matches_llama_cpp() {
    check_tokenize("smollm2-135m", &smollm().tok);
}

#[test]
fn gemma_tokenize_matches_llama_cpp() {
    check_tokenize("gemma3-270m", &gemma().tok);
}

/// `prompt_text` -> `prompt_ids` (BOS added when the model asks for it, special text parsed).
fn check_prompts(model: &str, tok: &Tokenizer) {
    let mut failures = Vec::new();
    let lines = reference(model, "greedy.jsonl");
    for line in &lines {
        let text = line["prompt_text"].as_str().expect("prompt_text");
        let want = ids(&line["prompt_ids"]);
        let mut got = Vec::new();
        if tok.add_bos() {
            got.extend(tok.bos_id());
        }
        got.extend(tok.encode(text, true));
        // The same through llama.cpp's add_special path.
        assert_eq!(got, tok.tokenize(text, true, true));
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
    eprintln!("{model}: {} prompts match", lines.len());
}

#[test]
fn smollm_prompts_match_llama_cpp() {
    check_prompts("smollm2-135m", &smollm().tok);
}

#[test]
fn gemma_prompts_match_llama_cpp() {
    check_prompts("gemma3-270m", &gemma().tok);
}

/// `generated_ids` decode to `generated_text` (control tokens such as `<|im_end|>` render as
/// nothing), and streaming them gives the same text in valid pieces.
fn check_generated(model: &str, tok: &Tokenizer) {
    let mut failures = Vec::new();
    let lines = reference(model, "greedy.jsonl");
    for line in &lines {
        let gen_ids = ids(&line["generated_ids"]);
        let want = line["generated_text"].as_str().expect("generated_text");
        let got = tok.decode(&gen_ids, false);
        if got != want {
            failures.push(format!("{gen_ids:?}\n  want {want:?}\n  got  {got:?}"));
        }
        let mut stream = StreamDecoder::new(tok, false);
        let mut streamed = String::new();
        for &id in &gen_ids {
            let piece = stream.push(id);
            assert!(
                !piece.contains('\u{FFFD}'),
                "{model}: partial character streamed"
            );
            streamed.push_str(&piece);
        }
        streamed.push_str(&stream.flush());
        assert_eq!(streamed, got, "{model}: stream differs from decode");
    }
    assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
}

#[test]
fn smollm_generated_text_matches() {
    check_generated("smollm2-135m", &smollm().tok);
}

#[test]
fn gemma_generated_text_matches() {
    check_generated("gemma3-270m", &gemma().tok);
}

/// Multi-byte characters split across tokens come out whole, and the concatenation equals
/// `decode`, for both tokenizers.
#[test]
fn streaming_never_splits_characters() {
    let texts = [
        "naïve café résumé coöperate",
        "emoji 🤖🚀 and symbols ∑∫√ ≤ ≥ 👩‍👩‍👧‍👦",
        "你好，世界！这是一个测试。日本語のテキスト",
        "Ελληνικά, русский, العربية, हिन्दी, 한국어",
        "<|im_start|>user\nhi<|im_end|> <start_of_turn>",
    ];
    for loaded in [smollm(), gemma()] {
        let tok = &loaded.tok;
        for text in texts {
            let ids = tok.encode(text, true);
            let whole = tok.decode(&ids, true);
            let mut split_somewhere = false;
            let mut borrowed = StreamDecoder::new(tok, true);
            let mut owned = OwnedStreamDecoder::new(loaded.tok.clone(), true);
            let (mut a, mut b) = (String::new(), String::new());
            for &id in &ids {
                split_somewhere |= std::str::from_utf8(&tok.token_bytes(id, true)).is_err();
                let piece = borrowed.push(id);
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "partial character in {piece:?}"
                );
                a.push_str(&piece);
                b.push_str(&owned.push(id));
            }
            a.push_str(&borrowed.flush());
            b.push_str(&owned.flush());
            assert_eq!(a, whole);
            assert_eq!(b, whole);
            // Round trip: these texts contain nothing that tokenising loses.
            assert_eq!(whole, text, "{}: round trip", tok.model_name());
            if text.starts_with("你好") {
                assert!(
                    split_somewhere || tok.model_name() == "llama",
                    "expected byte-level BPE to split a CJK character across tokens"
                );
            }
        }
    }
}

#[test]
fn special_tokens_and_stop_ids() {
    let s = &smollm().tok;
    assert_eq!(s.model_name(), "gpt2");
    assert_eq!(s.pre_tokenizer_name(), "smollm");
    assert_eq!(s.vocab_size(), 49152);
    assert_eq!((s.bos_id(), s.eos_id()), (Some(1), Some(2)));
    assert!(!s.add_bos());
    // eos / <|im_end|>, <|endoftext|>, and <reponame> (llama.cpp's FIM-repo guess) end a turn.
    assert_eq!(s.stop_ids(), &[0, 2, 4]);
    assert!(s.is_control(1) && !s.is_control(260));
    assert_eq!(s.token_text(1), Some("<|im_start|>"));
    assert_eq!(s.token_id("<|im_end|>"), Some(2));
    assert_eq!(&*s.token_bytes(2, true), b"<|im_end|>");
    assert!(s.token_bytes(2, false).is_empty());
    assert_eq!(s.token_text(99_999_999), None);
    assert!(s.token_bytes(99_999_999, true).is_empty());

    let g = &gemma().tok;
    assert_eq!(g.model_name(), "llama");
    assert_eq!(g.vocab_size(), 262_144);
    assert_eq!((g.bos_id(), g.eos_id()), (Some(2), Some(1)));
    assert!(g.add_bos());
    let eot = g
        .token_id("<end_of_turn>")
        .expect("gemma has <end_of_turn>");
    assert!(g.stop_ids().contains(&1) && g.stop_ids().contains(&eot));
    assert!(!g.stop_ids().contains(&2));
    // Gemma's chat markers are control tokens: recognised only with parse_special.
    let sot = g
        .token_id("<start_of_turn>")
        .expect("gemma has <start_of_turn>");
    assert_eq!(g.encode("<start_of_turn>", true), vec![sot]);
    assert_ne!(g.encode("<start_of_turn>", false), vec![sot]);
    // Its whitespace runs are user-defined tokens: recognised either way, rendered always.
    let nl = g.token_id("\n").expect("newline token");
    assert!(g.is_user_defined(nl));
    assert_eq!(g.encode("\n", false), vec![nl]);
    assert_eq!(&*g.token_bytes(nl, false), b"\n");
    // Byte tokens decode to their byte.
    let b = g.token_id("<0xE4>").expect("byte token");
    assert_eq!(&*g.token_bytes(b, false), &[0xE4]);
}

#[test]
fn detokenize_follows_llama_cpp() {
    let g = &gemma().tok;
    let ids = g.tokenize("Hello world", true, false);
    assert_eq!(ids[0], 2);
    assert_eq!(g.detokenize(&ids, true, false), "Hello world");
    assert_eq!(g.detokenize(&ids, false, true), "<bos>Hello world");
    let s = &smollm().tok;
    let ids = s.encode("Hi , there !", false);
    // SmolLM does not clean up tokenization spaces.
    assert_eq!(s.detokenize(&ids, false, false), "Hi , there !");
}

#[test]
fn from_gguf_is_fast() {
    for model in [SMOLLM, GEMMA] {
        let file = GgufFile::open(model_path(model.0, model.1)).expect("open");
        // Best of a few runs, to keep a busy machine from making this flaky.
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            assert!(tok.vocab_size() > 0);
        }
        eprintln!("{}: from_gguf best of 3 = {best:.2} ms", model.0);
        assert!(best < 150.0, "{}: from_gguf took {best:.1} ms", model.0);
    }
}

/// Long inputs tokenise in linear-ish time (no quadratic special-token scan or merging), and
/// splitting a text at a newline does not change the ids of a line-oriented prompt much.
#[test]
fn encode_throughput() {
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "Line {i}: the quick brown fox — naïve café 你好 🤖 <b>{i}</b>\n    indented   code(x, y);\n"
        ));
    }
    for loaded in [smollm(), gemma()] {
        let tok = &loaded.tok;
        let t = Instant::now();
        let ids = tok.encode(&text, true);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "{}: encoded {} bytes into {} tokens in {ms:.2} ms",
            tok.model_name(),
            text.len(),
            ids.len()
        );
        assert_eq!(tok.decode(&ids, true), text);
        assert!(ms < 2000.0, "encoding took {ms:.0} ms");
    }
}
