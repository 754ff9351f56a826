//! `matmul`: quantised weight matrix times a batch of f32 activation rows.
//!
//! One call (1) quantises the activations once into the caller's [`MatmulScratch`] in the
//! format ggml pairs with the weight type, (2) splits the output rows into contiguous chunks
//! that the pool's threads take from a shared counter, and (3) in each chunk walks blocks of
//! [`ROW_BLOCK`] weight rows, running
//! every tile of up to 4 activation rows against a row block before moving on, so each weight
//! block decoded in registers serves up to 4 activation rows and the row block stays in L1 while
//! the activations stream past.

use crate::cpu::Backend;
use crate::kernels_scalar as scalar;
use crate::quant::{self, ActBuf, ActKind, QAct};
use crate::{DType, QMatrix, ThreadPool};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Weight rows per inner block.
pub(crate) const ROW_BLOCK: usize = 16;
/// Per-kernel-call output tile: `ROW_BLOCK` weight rows x 4 activation rows (`out[r * 4 + k]`).
pub(crate) const TILE_OUT: usize = ROW_BLOCK * 4;

/// A row kernel: dot products of `nrows` weight rows (`w`, `row_bytes` apart) with activation
/// rows `i0..i0 + cnt` (`cnt` in 1..=4) into `out[r * 4 + k]`. Unsafe because the SIMD versions
/// require their CPU features; all of them bounds-check their slices.
pub(crate) type RowsFn =
    unsafe fn(&[u8], usize, usize, &QAct<'_>, usize, usize, &mut [f32; TILE_OUT]);

/// Below this many multiply-adds per thread, splitting a matmul costs more in synchronisation
/// than it saves.
const MIN_MACS_PER_THREAD: usize = 48 * 1024;

/// Reusable buffers for [`matmul`]: the quantised activations. Keep one per caller; after the
/// largest shape has been seen once, calls do not allocate.
#[derive(Default)]
pub struct MatmulScratch {
    act: ActBuf,
}

impl MatmulScratch {
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MatmulScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatmulScratch")
            .field("qs_capacity", &self.act.qs.len())
            .finish()
    }
}

/// `out[i * w.rows + r] = sum_c W[r][c] * x[i * w.cols + c]` for `i in 0..n`, on the best SIMD
/// path for this CPU (see [`Backend::active`]).
///
/// Panics if `x.len() != n * w.cols` or `out.len() != n * w.rows` (caller bugs; the weight
/// side was validated by [`QMatrix::new`]).
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_with(Backend::active(), pool, w, x, n, out, scratch)
}

/// [`matmul`] on an explicit backend (an unavailable one falls back to `Scalar`).
pub fn matmul_with(
    backend: Backend,
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    let backend = backend.or_scalar();
    assert!(
        n.checked_mul(w.cols) == Some(x.len()),
        "matmul: x has {} values, expected n={n} x cols={}",
        x.len(),
        w.cols
    );
    assert!(
        n.checked_mul(w.rows) == Some(out.len()),
        "matmul: out has {} values, expected n={n} x rows={}",
        out.len(),
        w.rows
    );
    if n == 0 || w.rows == 0 {
        return;
    }
    if w.cols == 0 {
        out.fill(0.0);
        return;
    }
    let kind = ActKind::for_weights(w.dtype);
    scratch.act.reserve(kind, n, w.cols);
    quantize_acts(backend, kind, x, n, w.cols, &mut scratch.act);
    let act = scratch.act.view(kind, x, n, w.cols);
    let kernel = rows_fn(backend, w.dtype);
    let rows = w.rows;
    let row_bytes = w.row_bytes();
    let data = w.data;
    let outp = OutPtr {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };

    let macs = rows.saturating_mul(w.cols).saturating_mul(n);
    let threads = if macs >= 2 * MIN_MACS_PER_THREAD {
        pool.n_threads()
    } else {
        1
    };
    // Rows are handed out in chunks from a shared counter rather than split statically, so a
    // thread that is descheduled (the machine may be shared) holds up at most one chunk while
    // the others take the rest. Four chunks per thread keeps the atomic traffic negligible.
    let row_blocks = rows.div_ceil(ROW_BLOCK);
    let chunk_blocks = row_blocks.div_ceil(threads * 4).max(1);
    let n_chunks = row_blocks.div_ceil(chunk_blocks);
    let next = AtomicUsize::new(0);

    let job = |_t: usize, _nt: usize| {
        let mut tile = [0f32; TILE_OUT];
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let r0 = c * chunk_blocks * ROW_BLOCK;
            let r1 = rows.min(r0 + chunk_blocks * ROW_BLOCK);
            let mut rb0 = r0;
            while rb0 < r1 {
                let nr = ROW_BLOCK.min(r1 - rb0);
                let wblk = &data[rb0 * row_bytes..(rb0 + nr) * row_bytes];
                let mut i0 = 0;
                while i0 < n {
                    let cnt = 4.min(n - i0);
                    // SAFETY: `rows_fn` only returns SIMD kernels for a backend whose features
                    // `or_scalar` confirmed; the kernel bounds-checks its slices.
                    unsafe { kernel(wblk, row_bytes, nr, &act, i0, cnt, &mut tile) };
                    for r in 0..nr {
                        for k in 0..cnt {
                            // SAFETY: chunk c (rows r0..r1) is processed by exactly one thread,
                            // and `out` is not read until all chunks are done.
                            unsafe { outp.write((i0 + k) * rows + rb0 + r, tile[r * 4 + k]) };
                        }
                    }
                    i0 += cnt;
                }
                rb0 += nr;
            }
        }
    };
    if threads > 1 {
        pool.run(&job);
    } else {
        job(0, 1);
    }
}

/// A raw view of the output that pool threads write disjoint elements of.
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `OutPtr` is only used inside `matmul_with`, where each thread writes a disjoint set of
// indices while the `&mut [f32]` it came from is not otherwise accessed.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// No other thread may access index `idx` concurrently.
    #[inline(always)]
    unsafe fn write(&self, idx: usize, v: f32) {
        assert!(idx < self.len);
        // SAFETY: in bounds (checked) and unaliased (caller's contract).
        unsafe { *self.ptr.add(idx) = v };
    }
}

fn quantize_acts(
    backend: Backend,
    kind: ActKind,
    x: &[f32],
    n: usize,
    cols: usize,
    buf: &mut ActBuf,
) {
    #[cfg(target_arch = "x86_64")]
    if backend != Backend::Scalar && matches!(kind, ActKind::Q8_0 | ActKind::Q8_1) {
        let nb = cols / 32;
        for i in 0..n {
            let xr = &x[i * cols..(i + 1) * cols];
            let qs = &mut buf.qs[i * cols..(i + 1) * cols];
            let d = &mut buf.d[i * nb..(i + 1) * nb];
            let s = if kind == ActKind::Q8_1 {
                Some(&mut buf.s[i * nb..(i + 1) * nb])
            } else {
                None
            };
            // SAFETY: non-scalar backends imply AVX2+FMA+F16C (checked by `or_scalar`).
            unsafe { crate::x86::avx2::quantize_q8_row(xr, qs, d, s) };
        }
        return;
    }
    let _ = backend;
    quant::quantize_acts_scalar(kind, x, n, cols, buf);
}

fn rows_fn(backend: Backend, dtype: DType) -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::x86::{avx2, avx512vnni, avxvnni};
        let legacy =
            |dtype: DType, q4_0: RowsFn, q4_1: RowsFn, q5_0: RowsFn, q8_0: RowsFn| match dtype {
                DType::Q4_0 => Some(q4_0),
                DType::Q4_1 => Some(q4_1),
                DType::Q5_0 => Some(q5_0),
                DType::Q8_0 => Some(q8_0),
                _ => None,
            };
        let l = match backend {
            Backend::Scalar => None,
            Backend::Avx2 => legacy(dtype, avx2::q4_0, avx2::q4_1, avx2::q5_0, avx2::q8_0),
            Backend::AvxVnni => legacy(
                dtype,
                avxvnni::q4_0,
                avxvnni::q4_1,
                avxvnni::q5_0,
                avxvnni::q8_0,
            ),
            Backend::Avx512Vnni => legacy(
                dtype,
                avx512vnni::q4_0,
                avx512vnni::q4_1,
                avx512vnni::q5_0,
                avx512vnni::q8_0,
            ),
        };
        if let Some(f) = l {
            return f;
        }
        if backend != Backend::Scalar {
            match dtype {
                DType::Q4_K => return avx2::q4_k,
                DType::Q5_K => return avx2::q5_k,
                DType::Q6_K => return avx2::q6_k,
                DType::F32 => return avx2::f32_rows,
                DType::F16 => return avx2::f16_rows,
                DType::BF16 => return avx2::bf16_rows,
                _ => {}
            }
        }
    }
    let _ = backend;
    match dtype {
        DType::Q4_0 => scalar::q4_0,
        DType::Q4_1 => scalar::q4_1,
        DType::Q5_0 => scalar::q5_0,
        DType::Q8_0 => scalar::q8_0,
        DType::Q4_K => scalar::q4_k,
        DType::Q5_K => scalar::q5_k,
        DType::Q6_K => scalar::q6_k,
        DType::F32 => scalar::f32_rows,
        DType::F16 => scalar::f16_rows,
        DType::BF16 => scalar::bf16_rows,
        // QMatrix::new rejects unsupported types.
        _ => unreachable!("matmul on unsupported type {dtype}"),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 activation quantiser is only a faster spelling of the scalar one.
    #[test]
    fn simd_activation_quantiser_is_bit_identical() {
        if !Backend::Avx2.is_available() {
            return;
        }
        let cols = 32 * 7;
        let mut x: Vec<f32> = (0..cols)
            .map(|i| ((i as f32 * 0.7548776).fract() - 0.5) * (1.0 + (i % 13) as f32))
            .collect();
        // A zero block, a block of exact ties (amax 127 -> scale 1), and a negative extreme.
        x[32..64].fill(0.0);
        for (j, v) in x[64..96].iter_mut().enumerate() {
            *v = j as f32 - 15.5;
        }
        x[70] = 127.0;
        x[100] = -1e30;
        for kind in [ActKind::Q8_0, ActKind::Q8_1] {
            let mut a = ActBuf::default();
            let mut b = ActBuf::default();
            a.reserve(kind, 1, cols);
            b.reserve(kind, 1, cols);
            quant::quantize_acts_scalar(kind, &x, 1, cols, &mut a);
            quantize_acts(Backend::Avx2, kind, &x, 1, cols, &mut b);
            assert_eq!(a.qs, b.qs, "{kind:?}");
            assert_eq!(a.d, b.d, "{kind:?}");
            assert_eq!(a.s, b.s, "{kind:?}");
        }
    }
}
