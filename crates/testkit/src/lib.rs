//! Test support shared by the workspace's crates (a dev-dependency only): the catalogue models,
//! pulled on first use, and the llama.cpp recordings in `shared/reference` that serve as the
//! oracle for tokenisation, chat templates and greedy generation.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Local path of a catalogue model, pulled and verified on first use (panics with a clear
/// message if that fails: tests cannot go on without it).
pub fn model_path(name: &str) -> PathBuf {
    autoglm_hub::test_model_path(name)
}

/// `$AUTOGLM_REFERENCE`, or `shared/reference` beside the repository checkout.
pub fn reference_dir() -> PathBuf {
    match std::env::var_os("AUTOGLM_REFERENCE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"),
    }
}

/// Every line of `reference/<model>/<file>` (JSON Lines), parsed.
pub fn reference(model: &str, file: &str) -> Vec<Value> {
    let path = reference_dir().join(model).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading reference {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array of token ids, got {v}"))
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("not a token id: {x}"))
        })
        .collect()
}
