//! One small module per architecture: what it changes relative to the llama-style baseline that
//! [`crate::ModelConfig::from_gguf`] reads. The forward pass is shared; an architecture is a set
//! of switches (norms, RoPE pairing, activation, attention window) plus the facts llama.cpp
//! hard-codes for it. Adding a llama-like architecture (qwen2, mistral…) means adding a file here
//! and a name in `ModelConfig::from_gguf`.

pub(crate) mod gemma3;
pub(crate) mod llama;
