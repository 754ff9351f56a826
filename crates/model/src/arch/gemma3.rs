//! Gemma 3: embeddings scaled by sqrt(n_embd), per-head RMS norm on Q and K, extra norms after
//! attention and after the FFN, GELU-gated FFN, half-split ("neox") RoPE, and five of every six
//! layers attending through a sliding window with their own RoPE base. (GGUF conversion already
//! folds Gemma's `1 + w` norm weights, so plain RMSNorm applies.)

use crate::config::Meta;
use crate::{Activation, ModelConfig, ModelError, RopeStyle};

pub(crate) fn config(base: ModelConfig, meta: &Meta) -> Result<ModelConfig, ModelError> {
    let sliding_window = meta
        .usize_opt("attention.sliding_window")?
        .filter(|&w| w > 0);
    Ok(ModelConfig {
        rope_style: RopeStyle::Halves,
        // llama.cpp hard-codes these for Gemma 3's local layers.
        rope_freq_base_swa: 10_000.0,
        swa_pattern: if sliding_window.is_some() { 6 } else { 0 },
        sliding_window,
        embed_scale: (base.n_embd as f32).sqrt(),
        // Queries are scaled by 1/sqrt(query_pre_attn_scalar), which llama.cpp takes to be the
        // head size for every size but 27B (62 layers), where it is n_embd / n_head.
        attn_scale: if base.n_layers == 62 {
            1.0 / ((base.n_embd / base.n_head) as f32).sqrt()
        } else {
            1.0 / (base.head_dim as f32).sqrt()
        },
        activation: Activation::GeluGlu,
        qk_norm: true,
        post_norms: true,
        // Only the Gemma 3 variants without sliding windows cap their logits.
        final_logit_softcap: if sliding_window.is_some() {
            None
        } else {
            base.final_logit_softcap
        },
        ..base
    })
}
