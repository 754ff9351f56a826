//! Hyper-parameters of a model, read from GGUF metadata, and the per-architecture facts that
//! the metadata leaves implicit (what llama.cpp hard-codes for each architecture).

use autoglm_gguf::GgufFile;

use crate::ModelError;

/// The architectures this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }

    pub const SUPPORTED: &'static [&'static str] = &["llama", "gemma3"];
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x0, x1), (x2, x3)…: llama.cpp's "norm" RoPE (GGUF llama weights are permuted for it).
    Interleaved,
    /// First half with second half: llama.cpp's "neox" RoPE (Gemma, Qwen).
    Halves,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// silu(gate) * up
    SiluGlu,
    /// gelu_tanh(gate) * up
    GeluGlu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
    pub rope_dims: usize,
    pub rope_freq_base: f32,
    /// RoPE base for sliding-window layers, where it differs (Gemma 3 uses 10 000 there).
    pub rope_freq_base_swa: f32,
    /// Sliding-window length for the layers that use one.
    pub sliding_window: Option<usize>,
    /// Every `swa_pattern`-th layer is global; the others use the sliding window (0 = none).
    pub swa_pattern: usize,
    /// Multiplier applied to token embeddings (Gemma scales by sqrt(n_embd)).
    pub embed_scale: f32,
    /// Multiplier applied to queries before attention.
    pub attn_scale: f32,
    pub activation: Activation,
    /// Per-head RMS norm on Q and K (Gemma 3).
    pub qk_norm: bool,
    /// Extra RMS norms after attention and after the FFN (Gemma 2/3).
    pub post_norms: bool,
    /// tanh soft-capping of the final logits, when the model asks for it.
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether layer `il` attends through the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some()
            && self.swa_pattern > 0
            && il % self.swa_pattern < self.swa_pattern - 1
    }

    /// Reads the hyper-parameters every architecture shares into a llama-style baseline, then
    /// lets the architecture's own module (`arch/`) adjust what differs.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = file.architecture()?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(ModelError::UnsupportedArchitecture(other.to_string()));
            }
        };
        let meta = Meta {
            file,
            prefix: arch_name,
        };
        let base = Self::baseline(arch, &meta)?;
        let cfg = match arch {
            Arch::Llama => crate::arch::llama::config(base, &meta)?,
            Arch::Gemma3 => crate::arch::gemma3::config(base, &meta)?,
        };
        if cfg.n_layers == 0 || cfg.n_embd == 0 || cfg.n_ff == 0 || cfg.head_dim == 0 {
            return Err(ModelError::BadConfig("zero-sized model dimension".into()));
        }
        Ok(cfg)
    }

    fn baseline(arch: Arch, meta: &Meta) -> Result<ModelConfig, ModelError> {
        let n_layers = meta.usize("block_count")?;
        let n_embd = meta.usize("embedding_length")?;
        let n_ff = meta.usize("feed_forward_length")?;
        let n_head = meta.usize("attention.head_count")?;
        let n_head_kv = meta.usize_opt("attention.head_count_kv")?.unwrap_or(n_head);
        let context_length = meta.usize("context_length")?;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::BadConfig(format!(
                "head_count {n_head} must be a positive multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match meta.usize_opt("attention.key_length")? {
            Some(d) => d,
            None => {
                if n_embd % n_head != 0 {
                    return Err(ModelError::BadConfig(format!(
                        "embedding_length {n_embd} is not divisible by head_count {n_head}"
                    )));
                }
                n_embd / n_head
            }
        };
        if let Some(vd) = meta.usize_opt("attention.value_length")?
            && vd != head_dim
        {
            return Err(ModelError::BadConfig(format!(
                "value_length {vd} differs from key_length {head_dim}: not supported"
            )));
        }
        let rope_dims = meta.usize_opt("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ModelError::BadConfig(format!(
                "rope.dimension_count {rope_dims} must be even and at most the head size {head_dim}"
            )));
        }
        if meta
            .file
            .get(&meta.key("rope.scaling.type"))
            .is_some_and(|v| v.as_str().is_some_and(|s| s != "none"))
        {
            return Err(ModelError::BadConfig(
                "RoPE scaling is not supported yet".into(),
            ));
        }
        // The vocabulary size is the embedding matrix's row count; the metadata key is optional.
        let vocab_size = match meta.file.tensor("token_embd.weight") {
            Some(t) => t.as_matrix().0,
            None => return Err(ModelError::MissingTensor("token_embd.weight".into())),
        };
        let rope_freq_base = meta.f32_opt("rope.freq_base")?.unwrap_or(10_000.0);
        Ok(ModelConfig {
            arch,
            n_layers,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size,
            context_length,
            rms_eps: meta
                .f32_opt("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope_style: RopeStyle::Interleaved,
            rope_dims,
            rope_freq_base,
            rope_freq_base_swa: rope_freq_base,
            sliding_window: None,
            swa_pattern: 0,
            embed_scale: 1.0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            activation: Activation::SiluGlu,
            qk_norm: false,
            post_norms: false,
            final_logit_softcap: meta
                .f32_opt("final_logit_softcapping")?
                .filter(|&c| c > 0.0),
        })
    }
}

/// Typed access to the `<arch>.*` metadata keys.
pub(crate) struct Meta<'a> {
    pub file: &'a GgufFile,
    pub prefix: &'a str,
}

impl Meta<'_> {
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    pub fn usize(&self, k: &str) -> Result<usize, ModelError> {
        let key = self.key(k);
        let v = self.file.get_u64(&key)?;
        usize::try_from(v).map_err(|_| ModelError::BadConfig(format!("{key} = {v} is too large")))
    }

    pub fn usize_opt(&self, k: &str) -> Result<Option<usize>, ModelError> {
        Ok(self
            .file
            .get_u64_opt(&self.key(k))?
            .and_then(|v| usize::try_from(v).ok()))
    }

    pub fn f32_opt(&self, k: &str) -> Result<Option<f32>, ModelError> {
        Ok(self.file.get_f32_opt(&self.key(k))?)
    }
}
