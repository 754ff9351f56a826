//! Where the cache lives and which Python runs pip, taken from the environment.
//!
//! The environment lookup is split from the decision ([`HubConfig::from_vars`]) so the defaulting
//! rules can be tested without mutating the process environment (which is `unsafe` and racy in
//! multi-threaded tests).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::HubError;

/// Environment variable naming the model cache directory.
pub const MODELS_ENV: &str = "AUTOGLM_MODELS";
/// Environment variable naming the Python interpreter used for `pip download`.
pub const PYTHON_ENV: &str = "AUTOGLM_PYTHON";
/// Interpreter used when [`PYTHON_ENV`] is unset.
pub const DEFAULT_PYTHON: &str = "python3";

/// Settings of a [`crate::Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Root of the model cache (`$AUTOGLM_MODELS`, default `~/.cache/autoglm/models`).
    pub models_dir: PathBuf,
    /// Python interpreter used to run pip (`$AUTOGLM_PYTHON`, default `python3`).
    pub python: String,
}

impl HubConfig {
    /// A config with the given cache directory and the default interpreter.
    pub fn new(models_dir: impl Into<PathBuf>) -> HubConfig {
        HubConfig {
            models_dir: models_dir.into(),
            python: DEFAULT_PYTHON.to_string(),
        }
    }

    /// Read `$AUTOGLM_MODELS`, `$HOME` and `$AUTOGLM_PYTHON`.
    pub fn from_env() -> Result<HubConfig, HubError> {
        HubConfig::from_vars(
            std::env::var_os(MODELS_ENV),
            std::env::var_os("HOME"),
            std::env::var_os(PYTHON_ENV),
        )
    }

    /// The defaulting rules of [`HubConfig::from_env`] applied to explicit values.
    /// Empty values count as unset, as shells make it easy to export an empty variable.
    pub fn from_vars(
        models: Option<OsString>,
        home: Option<OsString>,
        python: Option<OsString>,
    ) -> Result<HubConfig, HubError> {
        let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        let models_dir = match (non_empty(models), non_empty(home)) {
            (Some(m), _) => PathBuf::from(m),
            (None, Some(h)) => PathBuf::from(h)
                .join(".cache")
                .join("autoglm")
                .join("models"),
            (None, None) => return Err(HubError::NoModelsDir),
        };
        let python = non_empty(python)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| DEFAULT_PYTHON.to_string());
        Ok(HubConfig { models_dir, python })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (AUTOGLM_MODELS, HOME, AUTOGLM_PYTHON, expected models_dir, expected python)
    type Case = (
        Option<OsString>,
        Option<OsString>,
        Option<OsString>,
        &'static str,
        &'static str,
    );

    #[test]
    fn defaulting_rules() {
        let s = |v: &str| Some(OsString::from(v));
        let cases: &[Case] = &[
            (
                None,
                s("/home/u"),
                None,
                "/home/u/.cache/autoglm/models",
                "python3",
            ),
            (s("/m"), s("/home/u"), None, "/m", "python3"),
            (
                s("/m"),
                None,
                s("/usr/bin/python3.12"),
                "/m",
                "/usr/bin/python3.12",
            ),
            (s(""), s("/h"), s(""), "/h/.cache/autoglm/models", "python3"),
        ];
        for (m, h, p, want_dir, want_py) in cases {
            let cfg = HubConfig::from_vars(m.clone(), h.clone(), p.clone()).expect("config");
            assert_eq!(cfg.models_dir, PathBuf::from(want_dir));
            assert_eq!(cfg.python, *want_py);
        }
        let err = HubConfig::from_vars(None, s(""), None).expect_err("no home");
        assert!(err.to_string().contains("AUTOGLM_MODELS"), "{err}");
    }
}
