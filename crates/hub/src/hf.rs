//! `hf:OWNER/REPO/FILE.gguf[@REVISION]` references, fetched with the `hf-hub` crate.
//!
//! The files live in hf-hub's own cache layout under `<models>/hf` (blobs named by etag,
//! `snapshots/<commit>/<file>` symlinks, `refs/<revision>` files), so they can be shared with
//! other tools pointed at the same directory. Lookups of already-downloaded files are done
//! offline through `hf_hub::Cache`, so a pulled model works without the network.

use std::fs;
use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::HubError;
use crate::hub::ListedModel;
use crate::store::{self, DirLock, HF_DIR};

const DEFAULT_REVISION: &str = "main";

/// `<models>/hf`.
pub(crate) fn hf_dir(models_dir: &Path) -> PathBuf {
    models_dir.join(HF_DIR)
}

fn repo_handle(repo: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or(DEFAULT_REVISION).to_string(),
    )
}

/// The cached file for this reference, if it was downloaded before (no network access).
pub(crate) fn local(
    models_dir: &Path,
    repo: &str,
    file: &str,
    revision: Option<&str>,
) -> Option<PathBuf> {
    Cache::new(hf_dir(models_dir))
        .repo(repo_handle(repo, revision))
        .get(file)
}

/// Forwards hf-hub's byte counts to the caller's progress callback every 10 %.
struct Reporter<'a> {
    progress: &'a mut dyn FnMut(&str),
    total: usize,
    done: usize,
    next_pct: usize,
}

impl Progress for Reporter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.total = size;
        (self.progress)(&format!(
            "downloading {filename} ({:.1} MB)…",
            size as f64 / 1e6
        ));
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        if self.total == 0 {
            return;
        }
        let pct = self.done.saturating_mul(100) / self.total;
        if pct >= self.next_pct && pct < 100 {
            (self.progress)(&format!("{pct}%"));
            self.next_pct = pct / 10 * 10 + 10;
        }
    }

    fn finish(&mut self) {}
}

/// Download `file` from `repo` (the caller checked it is not cached yet).
///
/// hf-hub's sync API has no timeout setting: its HTTP agent uses a 30 s connect timeout and no
/// read timeout, so an unreachable hub fails within about half a minute rather than hanging.
pub(crate) fn pull(
    models_dir: &Path,
    endpoint: Option<&str>,
    reference: &str,
    repo: &str,
    file: &str,
    revision: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, HubError> {
    let dir = hf_dir(models_dir);
    // One lock for the whole hf cache: hf-hub's own per-blob lock gives up after 5 s instead of
    // waiting, which would make a second concurrent pull fail instead of reusing the first.
    let _lock = DirLock::acquire(&dir, reference, progress)?;
    if let Some(p) = local(models_dir, repo, file, revision) {
        return Ok(p);
    }
    progress(&format!("pulling {reference} from the Hugging Face hub…"));
    let hf_err = |e| HubError::Hf {
        reference: reference.to_string(),
        source: Box::new(e),
    };
    // from_env honours HF_ENDPOINT and the token file under HF_HOME; HF_TOKEN wins over both.
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(dir.clone())
        .with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.to_string());
    }
    let api = builder.build().map_err(hf_err)?;
    let reporter = Reporter {
        progress,
        total: 0,
        done: 0,
        next_pct: 10,
    };
    let path = api
        .repo(repo_handle(repo, revision))
        .download_with_progress(file, reporter)
        .map_err(hf_err)?;
    verify_lfs_blob(reference, file, &path, progress)?;
    progress(&format!("stored at {}", path.display()));
    Ok(path)
}

/// LFS files (all GGUFs in practice) are stored under a blob named by their SHA-256, so we can
/// check the download end to end even though hf-hub itself does not.
fn verify_lfs_blob(
    reference: &str,
    file: &str,
    pointer: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), HubError> {
    let blob = fs::canonicalize(pointer).map_err(HubError::io("resolving", pointer))?;
    let Some(expected) = blob.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    progress("verifying sha256…");
    let actual = store::sha256_file(&blob)?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    // Best effort: the error below is what matters; a leftover would be re-checked next time.
    let _ = fs::remove_file(pointer);
    let _ = fs::remove_file(&blob);
    Err(HubError::HashMismatch {
        model: reference.to_string(),
        file_name: file.to_string(),
        expected: expected.to_string(),
        actual,
    })
}

/// Delete a downloaded file (its snapshot link and the blob behind it).
pub(crate) fn remove(
    models_dir: &Path,
    reference: &str,
    repo: &str,
    file: &str,
    revision: Option<&str>,
) -> Result<bool, HubError> {
    let dir = hf_dir(models_dir);
    if !dir.exists() {
        return Ok(false);
    }
    let _lock = DirLock::acquire(&dir, reference, &mut |_| {})?;
    let Some(pointer) = local(models_dir, repo, file, revision) else {
        return Ok(false);
    };
    let blob = fs::canonicalize(&pointer).ok();
    crate::pip::remove_if_exists(&pointer)?;
    if let Some(blob) = blob
        && blob != pointer
    {
        crate::pip::remove_if_exists(&blob)?;
    }
    Ok(true)
}

/// Every `.gguf` in the hf cache, named as the `hf:` reference that resolves to it.
pub(crate) fn list(models_dir: &Path) -> Result<Vec<ListedModel>, HubError> {
    let dir = hf_dir(models_dir);
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries {
        let entry = entry.map_err(HubError::io("listing", &dir))?;
        let folder = entry.file_name().to_string_lossy().into_owned();
        // hf-hub names repo folders `models--OWNER--REPO`; `--` cannot occur in hub ids.
        let Some((owner, name)) = folder
            .strip_prefix("models--")
            .and_then(|r| r.split_once("--"))
        else {
            continue;
        };
        let repo = format!("{owner}/{name}");
        let repo_dir = entry.path();
        // revision name → commit
        let mut refs = files_under(&repo_dir.join("refs"))?;
        refs.sort_by_key(|(name, _)| name != DEFAULT_REVISION);
        let mut seen_commits = Vec::new();
        let listed = |commit: &str, suffix: &str, out: &mut Vec<ListedModel>| {
            let snap = repo_dir.join("snapshots").join(commit);
            let files = files_under(&snap)?;
            for (rel, path) in files {
                let is_gguf = rel.len() >= 5 && rel[rel.len() - 5..].eq_ignore_ascii_case(".gguf");
                let Ok(meta) = fs::metadata(&path) else {
                    continue; // dangling link left by a removed blob
                };
                if !is_gguf || !meta.is_file() {
                    continue;
                }
                out.push(ListedModel {
                    name: format!("hf:{repo}/{rel}{suffix}"),
                    pulled: true,
                    path: Some(path),
                    size_bytes: Some(meta.len()),
                    description: format!("downloaded from the Hugging Face hub ({repo})"),
                });
            }
            Ok::<(), HubError>(())
        };
        for (rev, ref_path) in &refs {
            let Ok(commit) = fs::read_to_string(ref_path) else {
                continue;
            };
            let commit = commit.trim().to_string();
            if seen_commits.contains(&commit) {
                continue;
            }
            let suffix = if rev == DEFAULT_REVISION {
                String::new()
            } else {
                format!("@{rev}")
            };
            listed(&commit, &suffix, &mut out)?;
            seen_commits.push(commit);
        }
        // Snapshots no ref points at any more are still usable by commit hash.
        let snaps = repo_dir.join("snapshots");
        if let Ok(snap_entries) = fs::read_dir(&snaps) {
            for snap in snap_entries.flatten() {
                let commit = snap.file_name().to_string_lossy().into_owned();
                if !seen_commits.contains(&commit) {
                    listed(&commit, &format!("@{commit}"), &mut out)?;
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Regular files (following symlinks) under `dir`, with `/`-separated relative names.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>, HubError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(HubError::io("listing", &d))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            // symlink_metadata would not follow the snapshot links; a real directory is never
            // a symlink in hf-hub's layout, so following links here cannot loop.
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push((rel, path)),
                _ => out.push((rel, path)),
            }
        }
    }
    out.sort();
    Ok(out)
}
