//! Tensor lookup: finds each weight the architecture needs by its GGUF name, checks its shape
//! and type once at load time, and keeps only its location so that the forward pass can view it
//! in the memory map without copying. Small F32 vectors (norm weights) are copied out, and on
//! CPUs whose kernels profit from it (AVX-512 VNNI) the matrices of the forward pass get a
//! repacked copy (`Mat::packed`, about their size again in memory).

use std::sync::Arc;

use autoglm_gguf::{DType, GgufFile, TensorInfo};
use autoglm_kernels::{MatRef, PackedMatrix, QMatrix, ThreadPool};

use crate::{ModelConfig, ModelError};

/// A weight matrix: `rows` outputs of `cols` inputs, viewed in the map on use.
#[derive(Debug, Clone)]
pub(crate) struct Mat {
    pub info: TensorInfo,
    pub rows: usize,
    pub cols: usize,
    /// A copy repacked for the CPU's fastest kernels, when the type has a packed layout and
    /// this CPU profits from it (built once at load, see [`Weights::pack`]).
    pub packed: Option<Arc<PackedMatrix>>,
}

impl Mat {
    pub fn view<'a>(&self, file: &'a GgufFile) -> QMatrix<'a> {
        QMatrix {
            dtype: self.info.dtype,
            rows: self.rows,
            cols: self.cols,
            data: file.tensor_data(&self.info),
        }
    }

    /// The matrix for a product: the packed copy if there is one, else the mapped bytes.
    pub fn mref<'a>(&'a self, file: &'a GgufFile) -> MatRef<'a> {
        match &self.packed {
            Some(p) => MatRef::Packed(p),
            None => MatRef::Plain(self.view(file)),
        }
    }
}

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub wo: Mat,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub(crate) struct Weights {
    pub tok_embd: Mat,
    pub output: Mat,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
}

fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// A matrix with `cols` inputs and `rows` outputs (GGUF dims `[cols, rows]`).
fn mat(file: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<Mat, ModelError> {
    let t = tensor(file, name)?;
    let expect = [cols as u64, rows as u64];
    if t.dims != expect {
        return Err(ModelError::BadTensor {
            name: name.into(),
            what: format!("shape {:?}, expected {expect:?}", t.dims),
        });
    }
    if !t.dtype.is_supported() {
        return Err(ModelError::BadTensor {
            name: name.into(),
            what: format!("type {} is not supported yet", t.dtype.name()),
        });
    }
    // Validates byte size and type once, so `view` can be infallible.
    QMatrix::new(t.dtype, rows, cols, file.tensor_data(t))?;
    Ok(Mat {
        info: t.clone(),
        rows,
        cols,
        packed: None,
    })
}

fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = tensor(file, name)?;
    if t.dims != [len as u64] {
        return Err(ModelError::BadTensor {
            name: name.into(),
            what: format!("shape {:?}, expected [{len}]", t.dims),
        });
    }
    let data = file.tensor_data(t);
    match t.dtype {
        DType::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        other => {
            let mut out = vec![0.0; len];
            autoglm_kernels::dequantize_row(other, data, &mut out)?;
            Ok(out)
        }
    }
}

fn opt_vector(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
    if file.tensor(name).is_some() {
        vector(file, name, len).map(Some)
    } else {
        Ok(None)
    }
}

/// The largest output projection worth a packed copy. Only the rows that want logits (usually
/// one per sequence) multiply it, where the plain kernels stream it almost as fast, so for a
/// large vocabulary (Gemma 3: 168 MiB) the copy would cost more load time and memory than it
/// saves.
const MAX_PACKED_OUTPUT_BYTES: usize = 64 << 20;

impl Weights {
    pub fn load(file: &GgufFile, c: &ModelConfig) -> Result<Weights, ModelError> {
        let (e, q, kv, f) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let tok_embd = mat(file, "token_embd.weight", e, c.vocab_size)?;
        // Most small models tie the output projection to the embedding matrix.
        let output = if file.tensor("output.weight").is_some() {
            mat(file, "output.weight", e, c.vocab_size)?
        } else {
            tok_embd.clone()
        };
        let output_norm = vector(file, "output_norm.weight", e)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for il in 0..c.n_layers {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            let need = |s: &str, len| -> Result<Option<Vec<f32>>, ModelError> {
                vector(file, &n(s), len).map(Some)
            };
            layers.push(Layer {
                attn_norm: vector(file, &n("attn_norm"), e)?,
                wq: mat(file, &n("attn_q"), e, q)?,
                wk: mat(file, &n("attn_k"), e, kv)?,
                wv: mat(file, &n("attn_v"), e, kv)?,
                wo: mat(file, &n("attn_output"), q, e)?,
                q_norm: if c.qk_norm {
                    need("attn_q_norm", c.head_dim)?
                } else {
                    None
                },
                k_norm: if c.qk_norm {
                    need("attn_k_norm", c.head_dim)?
                } else {
                    None
                },
                post_attn_norm: if c.post_norms {
                    need("post_attention_norm", e)?
                } else {
                    opt_vector(file, &n("post_attention_norm"), e)?
                },
                ffn_norm: vector(file, &n("ffn_norm"), e)?,
                gate: mat(file, &n("ffn_gate"), e, f)?,
                up: mat(file, &n("ffn_up"), e, f)?,
                down: mat(file, &n("ffn_down"), f, e)?,
                post_ffn_norm: if c.post_norms {
                    need("post_ffw_norm", e)?
                } else {
                    None
                },
            });
        }
        let mut w = Weights {
            tok_embd,
            output,
            output_norm,
            layers,
        };
        w.pack(file)?;
        Ok(w)
    }

    /// Repacks every matrix multiplied in the forward pass whose type has a packed layout, if
    /// this CPU runs packed matrices faster (the embedding table keeps only its mapped bytes:
    /// it is only read a row at a time; a tied output projection gets its own packed copy,
    /// unless it is larger than [`MAX_PACKED_OUTPUT_BYTES`]). Packed copies add about the
    /// matrices' size in memory.
    fn pack(&mut self, file: &GgufFile) -> Result<(), ModelError> {
        if !PackedMatrix::pays_off() {
            return Ok(());
        }
        let pool = ThreadPool::default();
        let mut mats: Vec<&mut Mat> = Vec::new();
        if file.tensor_data(&self.output.info).len() <= MAX_PACKED_OUTPUT_BYTES {
            mats.push(&mut self.output);
        }
        for l in &mut self.layers {
            mats.extend([
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        mats.retain(|m| PackedMatrix::supports(m.info.dtype));
        let views: Vec<_> = mats.iter().map(|m| m.view(file)).collect();
        let packed = PackedMatrix::pack_many(&pool, &views)?;
        for (m, p) in mats.into_iter().zip(packed) {
            m.packed = Some(Arc::new(p));
        }
        Ok(())
    }
}
