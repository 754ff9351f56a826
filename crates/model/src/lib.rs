//! Model architectures with a batched forward pass over a paged KV cache.
//!
//! A [`Model`] is loaded from a GGUF file: its weights stay in the file's memory map and are
//! multiplied in their stored quantised formats by `autoglm-kernels`. One call to
//! [`Model::forward`] advances a whole batch of sequences, each contributing some new tokens
//! (a prompt chunk or one decoded token) at its own position, with its own block table into the
//! shared [`KvCache`]. A single sequence is a batch of one. Which sequences run together, and
//! which cache blocks they own, is the caller's business (the engine, later the scheduler).
//!
//! Architectures differ only in configuration ([`ModelConfig`]): which norms exist, the RoPE
//! pairing, the activation, the sliding window. Adding a llama-like architecture means teaching
//! [`ModelConfig::from_gguf`] its metadata and, if it has new tensors, [`weights`] their names.

mod arch;
mod attention;
mod config;
mod forward;
mod kv;
mod rope;
mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeStyle};
pub use forward::{ForwardScratch, LogitsWanted, SeqInput};
pub use kv::{KvCache, KvDtype, KvLayout, Q8_BLOCK};

use std::path::Path;

use autoglm_gguf::GgufFile;

use weights::Weights;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] autoglm_gguf::GgufError),
    #[error("unsupported architecture '{0}' (supported: llama, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("tensor '{0}' is missing from the model file")]
    MissingTensor(String),
    #[error("tensor '{name}': {what}")]
    BadTensor { name: String, what: String },
    #[error("bad model configuration: {0}")]
    BadConfig(String),
    #[error("bad batch: {0}")]
    BadBatch(String),
    #[error(transparent)]
    Kernel(#[from] autoglm_kernels::KernelError),
}

/// A loaded model: configuration, the mapped file, and views of its weights.
pub struct Model {
    config: ModelConfig,
    weights: Weights,
    file: GgufFile,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

impl Model {
    /// Maps the file and checks every tensor the architecture needs (presence, shape, type).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    pub fn from_gguf(file: GgufFile) -> Result<Model, ModelError> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = Weights::load(&file, &config)?;
        Ok(Model {
            config,
            weights,
            file,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The underlying file, for the tokenizer and chat template that live in its metadata.
    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }

    /// A KV cache layout for this model holding `n_blocks` blocks of `block_size` tokens, in
    /// f16 (`.with_dtype` for 8-bit blocks).
    pub fn kv_layout(&self, block_size: usize, n_blocks: usize) -> KvLayout {
        KvLayout {
            n_layers: self.config.n_layers,
            kv_dim: self.config.kv_dim(),
            block_size,
            n_blocks,
            dtype: KvDtype::F16,
        }
    }
}

#[cfg(test)]
mod tests;
