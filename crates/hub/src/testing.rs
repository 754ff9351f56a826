//! Helpers for tests elsewhere in the workspace. Not for production code: they panic.

use std::path::PathBuf;

use crate::hub::Hub;

/// Path of a model for use in tests, pulling it into the user's cache (`$AUTOGLM_MODELS`, default
/// `~/.cache/autoglm/models`) if needed; progress goes to stderr.
///
/// **For tests only**: panics with a readable message (including the hub's error) if the model
/// cannot be obtained, which is the right outcome for a test that needs the model. Safe to call
/// from many test threads and processes at once; the first one pulls, the others wait.
pub fn test_model_path(name: &str) -> PathBuf {
    let hub = match Hub::from_env() {
        Ok(hub) => hub,
        Err(e) => panic!("test_model_path({name:?}): cannot open the model cache: {e}"),
    };
    let mut progress = |line: &str| eprintln!("[autoglm-hub] {line}");
    match hub.resolve(name, &mut progress) {
        Ok(path) => path,
        Err(e) => panic!(
            "test_model_path({name:?}): cannot get the model into {}: {e}",
            hub.models_dir().display()
        ),
    }
}
