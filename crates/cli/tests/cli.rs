//! End-to-end tests of the `autoglm` binary: the command-line contract (exact output forms and
//! exit codes) on the real catalogue models, and clear errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn autoglm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reference(model: &str, file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../../shared/reference/{model}/{file}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Makes sure the catalogue models are in the cache before the binary needs them.
fn ensure(name: &str) {
    autoglm_hub::test_model_path(name);
}

#[test]
fn tokenize_prints_a_json_array() {
    ensure("smollm2-135m");
    for line in reference("smollm2-135m", "tokenize.jsonl").iter().take(6) {
        let text = line["text"].as_str().unwrap();
        let o = autoglm(&["tokenize", text]);
        assert!(o.status.success(), "{}", stderr(&o));
        let got: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(got, line["ids"], "text {text:?}");
        let o = autoglm(&["tokenize", "--special", text]);
        let got: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(
            got, line["ids_parse_special"],
            "text {text:?} with --special"
        );
    }
}

#[test]
fn generate_greedy_matches_llama_cpp_text() {
    ensure("smollm2-135m");
    // Line 4 has no near-tie in its greedy run, so the text must match llama.cpp's exactly.
    let line = &reference("smollm2-135m", "greedy.jsonl")[4];
    let prompt = line["prompt"].as_str().unwrap();
    let o = autoglm(&[
        "generate",
        "--temperature",
        "0",
        "--max-tokens",
        "48",
        prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = line["generated_text"].as_str().unwrap();
    assert_eq!(stdout(&o).trim_end_matches('\n'), want);
}

#[test]
fn generate_raw_on_gemma() {
    ensure("gemma3-270m");
    let line = &reference("gemma3-270m", "greedy.jsonl")[0];
    let prompt = line["prompt_text"].as_str().unwrap();
    let o = autoglm(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--raw",
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn same_seed_same_text() {
    ensure("smollm2-135m");
    let args = [
        "generate",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--max-tokens",
        "24",
        "Tell me a story.",
    ];
    let a = autoglm(&args);
    let b = autoglm(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn model_info_json_names_the_file() {
    ensure("smollm2-135m");
    let o = autoglm(&["model", "info", "smollm2-135m", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["quantization"], "Q4_1");
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["chat_template"], true);
    let path = v["path"].as_str().unwrap();
    assert!(std::path::Path::new(path).is_file(), "{path}");
    let params = v["parameters"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&params), "{params}");
}

#[test]
fn bench_json_has_the_contract_keys() {
    ensure("smollm2-135m");
    let o = autoglm(&[
        "bench", "-p", "32", "-n", "8", "--batch", "2", "-r", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in [
        "model",
        "threads",
        "pp_tokens",
        "pp_tok_s",
        "tg_tokens",
        "tg_tok_s",
        "batch",
        "batch_tg_tok_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["tg_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch"], 2);
}

#[test]
fn bad_input_gets_clear_errors_and_status() {
    // Usage errors exit 2.
    let o = autoglm(&["generate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = autoglm(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));

    // Invalid sampling parameters, missing and corrupt model files exit 1 with a message.
    let check = |args: &[&str], expect: &str| {
        let o = autoglm(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(expect),
            "{args:?}: {:?} should mention {expect:?}",
            stderr(&o)
        );
    };
    check(&["generate", "--temperature", "-1", "hi"], "temperature");
    check(&["generate", "--top-p", "0", "hi"], "top_p");
    check(
        &["generate", "--model", "/nonexistent/model.gguf", "hi"],
        "/nonexistent/model.gguf",
    );
    check(
        &["generate", "--model", "no-such-model", "hi"],
        "no-such-model",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    check(
        &["generate", "--model", bad.to_str().unwrap(), "hi"],
        "truncated",
    );
    let notgguf = dir.path().join("text.gguf");
    std::fs::write(&notgguf, b"hello world, not a model").unwrap();
    check(
        &["tokenize", "--model", notgguf.to_str().unwrap(), "hi"],
        "not a GGUF file",
    );

    // A prompt longer than the context.
    ensure("smollm2-135m");
    let long = "word ".repeat(9000);
    check(&["generate", "--raw", &long], "context");
}
