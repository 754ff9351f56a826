//! Shared helpers for the tokenizer's integration tests: locating the real models and the
//! llama.cpp reference recordings.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use autoglm_gguf::GgufFile;
use autoglm_tokenizer::Tokenizer;

pub const SMOLLM: (&str, &str) = ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
pub const GEMMA: (&str, &str) = ("gemma3-270m", "gemma-3-270m-q4_k_m.gguf");

/// The catalogue model `name`, pulled and verified on first use; `_file` is kept for
/// readability at call sites.
pub fn model_path(name: &str, _file: &str) -> PathBuf {
    autoglm_testkit::model_path(name)
}

pub use autoglm_testkit::reference;

pub struct Loaded {
    pub file: GgufFile,
    pub tok: Arc<Tokenizer>,
}

fn load(model: (&str, &str)) -> Loaded {
    let file = GgufFile::open(model_path(model.0, model.1)).expect("open gguf");
    let t = Instant::now();
    let tok = Tokenizer::from_gguf(&file).expect("build tokenizer");
    eprintln!(
        "{}: Tokenizer::from_gguf took {:.2} ms ({} tokens)",
        model.0,
        t.elapsed().as_secs_f64() * 1e3,
        tok.vocab_size()
    );
    Loaded {
        file,
        tok: Arc::new(tok),
    }
}

pub fn smollm() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(SMOLLM))
}

pub fn gemma() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(GEMMA))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
