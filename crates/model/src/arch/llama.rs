//! Llama and the models that reuse its GGUF layout (SmolLM2, TinyLlama, Mistral-style dense
//! models): RMSNorm, adjacent-pair RoPE (GGUF llama weights are permuted for it), grouped-query
//! attention, SiLU-gated FFN, optionally tied output. The baseline needs no change.

use crate::config::Meta;
use crate::{ModelConfig, ModelError};

pub(crate) fn config(base: ModelConfig, _meta: &Meta) -> Result<ModelConfig, ModelError> {
    Ok(base)
}
