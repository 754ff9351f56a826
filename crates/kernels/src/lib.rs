//! Quantised tensor math for Open-AutoGLM: GGML block formats, SIMD dot products, f32 helper
//! ops and a worker pool. No IO.
//!
//! # What lives here
//! - [`DType`]: the GGML type table (ids, block sizes) the GGUF reader validates against.
//! - [`QMatrix`] + [`matmul`]: weight matrices borrowed straight from the file, multiplied by a
//!   batch of f32 activation rows; [`dequantize_row`] for embedding lookups.
//! - [`PackedMatrix`]: a copy repacked at load time (16 rows interleaved per group) for the
//!   AVX-512 VNNI and AMX kernels, several times faster where the CPU has them
//!   ([`PackedMatrix::pays_off`]); [`matmul_many`] multiplies one activation batch by several
//!   matrices (plain or packed, [`MatRef`]) with one quantisation and one pool run.
//! - [`attn`]: attention's score and weighted-sum products over cached K/V rows in their
//!   storage format (f16 or 8-bit blocks).
//! - [`ops`]: norms, activations, softmax and BLAS-1 helpers for the forward pass.
//! - [`ThreadPool`]: persistent fork-join workers that `matmul` splits rows across.
//! - [`quantize`]: reference quantisers, so tests anywhere can build valid tensors.
//! - [`f16`](mod@f16): half/bfloat16 conversions.
//!
//! # Numerics: llama.cpp's, on purpose
//! Weights stay in their GGUF block format; activations are quantised once per [`matmul`] to
//! the format ggml pairs with each weight type (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 with block sums
//! for Q4_1, Q8_K for the K-quants, plain f32 for float weights), with ggml's x86 rounding. The
//! AVX2/VNNI dot products keep ggml's 8-lane accumulation order and final horizontal sum, so for
//! every (weight row, activation row) pair they produce the same f32 as llama.cpp's
//! `ggml_vec_dot_*` AVX2 kernels, independent of batch size and thread count. (llama.cpp itself
//! uses other kernels in some cases, e.g. repacked Q4_0/Q4_K GEMMs, so bit-identity with a given
//! llama.cpp run is only expected for types it runs through `vec_dot`, such as Q4_1, Q5_0,
//! Q8_0 and Q6_K.)
//!
//! Packed matrices keep those integer results but sum the per-block products in one f32 per
//! (row, activation row) instead of eight lanes, so they differ from the plain kernels (and
//! from llama.cpp) only in float summation order; see `packed.rs`.
//!
//! # SIMD selection
//! [`Backend::detect`] picks the best kernel family once per process (AVX-VNNI, AVX-512 VNNI,
//! AVX2, or scalar). Packed matrices run on AVX-512 VNNI (and AMX for 16 or more activation
//! rows) whenever the CPU has it and the backend is not scalar, else on their scalar twin. Every family has a portable scalar twin that agrees within float
//! rounding. [`set_force_scalar`] moves the whole process to the scalar path; [`matmul_with`]
//! and the `ops::*_with` functions take a backend per call, which is what the tests use to
//! compare paths.
//!
//! # `unsafe`
//! Used for SIMD intrinsics (plus one two-instruction `asm!` f16 conversion, see `x86.rs`, and
//! the AMX instructions and one system call in `amx.rs`), for handing a borrowed job to the
//! pool's workers, for the pool threads' disjoint writes into the matmul output, the
//! activation buffer and a packed matrix being built, and for that matrix's aligned
//! allocation; each site carries a SAFETY comment. The SIMD kernels
//! assert every slice length they rely on before using raw pointers.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attn;
mod cpu;
pub mod dtype;
mod error;
pub mod f16;
mod kernels_scalar;
mod matmul;
pub mod ops;
mod packed;
mod pool;
mod quant;
pub mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_packed;

#[cfg(target_arch = "x86_64")]
pub use amx::set_amx_enabled;
pub use cpu::{Backend, force_scalar, set_force_scalar};
pub use dtype::DType;
pub use error::KernelError;
pub use matmul::{
    AMX_MIN_ROWS, MatRef, MatmulScratch, matmul, matmul_many, matmul_many_with, matmul_packed,
    matmul_with,
};
pub use packed::PackedMatrix;
pub use pool::{DEFAULT_SPIN, ThreadPool};

/// A weight matrix as stored in GGUF: `rows` output features, each row `cols` contiguous
/// elements in `dtype` blocks (GGUF `ne0 = cols`, `ne1 = rows`).
///
/// Construction validates the byte size, so code holding a `QMatrix` may index its rows freely.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `dtype` is supported, `cols` is a whole number of blocks and `data` is
    /// exactly `rows` rows long.
    pub fn new(
        dtype: DType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        if !dtype.is_supported() {
            return Err(KernelError::UnsupportedType(dtype));
        }
        let row_bytes = dtype.row_bytes(cols).ok_or_else(|| {
            KernelError::shape(format!(
                "{cols} columns is not a multiple of the {dtype} block length {}",
                dtype.block_len()
            ))
        })?;
        let total = row_bytes.checked_mul(rows).ok_or_else(|| {
            KernelError::shape(format!("{rows} x {cols} {dtype} matrix overflows usize"))
        })?;
        if data.len() != total {
            return Err(KernelError::shape(format!(
                "{rows} x {cols} {dtype} matrix needs {total} bytes, got {}",
                data.len()
            )));
        }
        Ok(QMatrix {
            dtype,
            rows,
            cols,
            data,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        // Validated in `new`; fields are public, so a hand-built value falls back to 0 rather
        // than panicking here (and then fails the length checks where it is used).
        self.dtype.row_bytes(self.cols).unwrap_or(0)
    }

    /// The raw bytes of row `r`. Panics if `r >= rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantises row `r` into `out` (used for embedding lookup). Panics if `r >= rows` or
    /// `out.len() != cols`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        assert_eq!(
            out.len(),
            self.cols,
            "dequantize_row: out.len() must equal cols"
        );
        quant::dequantize(self.dtype, self.row(r), out);
    }
}

/// Dequantises one row of `out.len()` elements stored as `dtype` in `data`.
pub fn dequantize_row(dtype: DType, data: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    if !dtype.is_supported() {
        return Err(KernelError::UnsupportedType(dtype));
    }
    match dtype.row_bytes(out.len()) {
        Some(n) if n == data.len() => {
            quant::dequantize(dtype, data, out);
            Ok(())
        }
        _ => Err(KernelError::shape(format!(
            "{} bytes of {dtype} do not hold exactly {} elements",
            data.len(),
            out.len()
        ))),
    }
}
