//! `test_model_path` against the user's real cache (what other crates' tests use): the first
//! call may pull or hash the model once, later calls are instant.

use autoglm_hub::{DEFAULT_MODEL, find_entry, sidecar_path, test_model_path};

#[test]
fn test_model_path_gives_the_verified_default_model() -> Result<(), Box<dyn std::error::Error>> {
    let entry = find_entry(DEFAULT_MODEL).ok_or("default model not in catalogue")?;
    let path = test_model_path(DEFAULT_MODEL);
    assert!(
        path.ends_with(format!("{DEFAULT_MODEL}/{}", entry.file_name)),
        "{path:?}"
    );
    assert_eq!(std::fs::metadata(&path)?.len(), entry.size_bytes);
    // The verified marker is there, so the next caller skips hashing.
    let marker = std::fs::read_to_string(sidecar_path(&path))?;
    assert!(marker.starts_with(entry.sha256), "{marker}");
    let start = std::time::Instant::now();
    assert_eq!(test_model_path(DEFAULT_MODEL), path);
    assert!(start.elapsed() < std::time::Duration::from_millis(500));
    Ok(())
}

#[test]
#[should_panic(expected = "test_model_path(\"no-such-model\")")]
fn test_model_path_panics_clearly() {
    test_model_path("no-such-model");
}
