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
use crate::packed::{self, PackedMatrix};
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

/// Activation rows and values from which quantising them is split across the pool.
const PAR_QUANT_ROWS: usize = 8;
const PAR_QUANT_VALUES: usize = 16 * 1024;

/// Matrices per pool run in [`matmul_many`] (longer lists run in batches).
const MAX_MANY: usize = 8;

/// A weight matrix in either layout, for [`matmul_many`].
#[derive(Clone, Copy, Debug)]
pub enum MatRef<'a> {
    /// As stored in the file.
    Plain(QMatrix<'a>),
    /// Repacked by [`PackedMatrix::pack`].
    Packed(&'a PackedMatrix),
}

impl MatRef<'_> {
    pub fn rows(&self) -> usize {
        match self {
            MatRef::Plain(w) => w.rows,
            MatRef::Packed(p) => p.rows(),
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            MatRef::Plain(w) => w.cols,
            MatRef::Packed(p) => p.cols(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            MatRef::Plain(w) => w.dtype,
            MatRef::Packed(p) => p.dtype(),
        }
    }
}

impl<'a> From<QMatrix<'a>> for MatRef<'a> {
    fn from(w: QMatrix<'a>) -> Self {
        MatRef::Plain(w)
    }
}

impl<'a> From<&'a PackedMatrix> for MatRef<'a> {
    fn from(p: &'a PackedMatrix) -> Self {
        MatRef::Packed(p)
    }
}

/// Reusable buffers for [`matmul`]: the quantised activations (one buffer per activation
/// format, so [`matmul_many`] over matrices of different types quantises each format once).
/// Keep one per caller; after the largest shape has been seen once, calls do not allocate.
#[derive(Default)]
pub struct MatmulScratch {
    acts: [ActBuf; 3],
}

impl MatmulScratch {
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MatmulScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatmulScratch")
            .field(
                "qs_capacity",
                &self.acts.iter().map(|a| a.qs.len()).sum::<usize>(),
            )
            .finish()
    }
}

/// Which of the scratch's buffers holds activations of `kind` (`None`: plain f32).
fn act_slot(kind: ActKind) -> Option<usize> {
    match kind {
        ActKind::F32 => None,
        ActKind::Q8_0 => Some(0),
        ActKind::Q8_1 => Some(1),
        ActKind::Q8K => Some(2),
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
    matmul_many_with(
        backend,
        pool,
        &[MatRef::Plain(*w)],
        x,
        n,
        &mut [out],
        scratch,
    )
}

/// [`matmul`] for a packed matrix.
pub fn matmul_packed(
    pool: &ThreadPool,
    w: &PackedMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_many_with(
        Backend::active(),
        pool,
        &[MatRef::Packed(w)],
        x,
        n,
        &mut [out],
        scratch,
    )
}

/// Several products of the same activations, `outs[j] = ws[j] · x` (each laid out as
/// [`matmul`]'s `out`), sharing one activation quantisation per format and one pool run: the
/// query/key/value projections, or the gate and up projections of a feed-forward block.
/// Results are those of separate [`matmul`] calls, bit for bit.
///
/// Panics if the matrices' `cols` differ, or on the length mismatches `matmul` panics on.
pub fn matmul_many(
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    matmul_many_with(Backend::active(), pool, ws, x, n, outs, scratch)
}

/// [`matmul_many`] on an explicit backend (an unavailable one falls back to `Scalar`).
///
/// Packed matrices run on the AVX-512 kernels for every non-scalar backend if the CPU has
/// AVX-512 VNNI (and on AMX for [`AMX_MIN_ROWS`] or more activation rows, if it has AMX), else
/// on their scalar twin; all three give the same bits.
pub fn matmul_many_with(
    backend: Backend,
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    matmul_many_impl(backend, true, pool, ws, x, n, outs, scratch)
}

/// From this many activation rows, packed products use AMX where available (below, the tile
/// would be mostly padding and the AVX-512 kernels are faster).
pub const AMX_MIN_ROWS: usize = 16;

/// [`matmul_many_with`], optionally never using AMX (for tests comparing paths).
// The public signature plus the AMX switch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_many_impl(
    backend: Backend,
    allow_amx: bool,
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    let backend = backend.or_scalar();
    assert_eq!(ws.len(), outs.len(), "matmul_many: one output per matrix");
    let Some(cols) = ws.first().map(|w| w.cols()) else {
        return;
    };
    assert!(
        ws.iter().all(|w| w.cols() == cols),
        "matmul_many: matrices differ in cols"
    );
    assert!(
        n.checked_mul(cols) == Some(x.len()),
        "matmul: x has {} values, expected n={n} x cols={cols}",
        x.len(),
    );
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert!(
            n.checked_mul(w.rows()) == Some(out.len()),
            "matmul: out has {} values, expected n={n} x rows={}",
            out.len(),
            w.rows()
        );
    }
    if n == 0 {
        return;
    }
    if cols == 0 {
        for out in outs.iter_mut() {
            out.fill(0.0);
        }
        return;
    }
    let macs: usize = ws
        .iter()
        .map(|w| w.rows().saturating_mul(cols).saturating_mul(n))
        .fold(0, usize::saturating_add);
    let threads = if macs >= 2 * MIN_MACS_PER_THREAD {
        pool.n_threads()
    } else {
        1
    };
    // Quantise the activations once per format. From AMX_MIN_ROWS rows on, the buffer gets
    // zero rows up to a whole number of AMX tiles (the AMX kernels read whole tiles; no kernel
    // writes results for those rows).
    let n_pad = if n >= AMX_MIN_ROWS {
        n.next_multiple_of(packed::GROUP)
    } else {
        n
    };
    let mut done = [false; 3];
    for w in ws {
        let kind = ActKind::for_weights(w.dtype());
        if let Some(slot) = act_slot(kind)
            && !done[slot]
        {
            done[slot] = true;
            let buf = &mut scratch.acts[slot];
            buf.reserve(kind, n_pad, cols);
            quantize_acts(backend, pool, threads, kind, x, n, cols, buf);
            buf.zero_rows(kind, n, n_pad, cols);
            // Only the AMX kernels read the transposed scales.
            if n >= AMX_MIN_ROWS && allow_amx && crate::amx::available() {
                buf.transpose_scales(kind, n_pad, cols);
            }
        }
    }
    let acts = &scratch.acts;
    let view = |w: &MatRef| {
        let kind = ActKind::for_weights(w.dtype());
        match act_slot(kind) {
            Some(slot) => acts[slot].view(kind, x, n_pad, cols),
            None => quant::EMPTY_ACT.view(kind, x, n, cols),
        }
    };
    for (ws, outs) in ws.chunks(MAX_MANY).zip(outs.chunks_mut(MAX_MANY)) {
        let m = ws.len();
        let act: [Option<QAct>; MAX_MANY] = std::array::from_fn(|i| ws.get(i).map(view));
        let outp: [OutPtr; MAX_MANY] = std::array::from_fn(|i| match outs.get_mut(i) {
            Some(o) => OutPtr {
                ptr: o.as_mut_ptr(),
                len: o.len(),
            },
            None => OutPtr {
                ptr: std::ptr::null_mut(),
                len: 0,
            },
        });
        let kernels: [Option<RowsFn>; MAX_MANY] = std::array::from_fn(|i| match ws.get(i) {
            Some(MatRef::Plain(w)) => Some(rows_fn(backend, w.dtype)),
            _ => None,
        });
        // Rows are handed out in chunks of 16-row blocks from a shared counter rather than
        // split statically, so a thread that is descheduled (the machine may be shared) holds
        // up at most one chunk while the others take the rest. Four chunks per thread and
        // matrix keeps the atomic traffic negligible.
        let mut chunk = [0usize; MAX_MANY];
        let mut ends = [0usize; MAX_MANY];
        let mut total = 0;
        for (i, w) in ws.iter().enumerate() {
            let blocks = w.rows().div_ceil(ROW_BLOCK);
            chunk[i] = blocks.div_ceil(threads * 4).max(1);
            total += blocks.div_ceil(chunk[i]);
            ends[i] = total;
        }
        let next = AtomicUsize::new(0);
        let job = |_t: usize, _nt: usize| {
            let mut tile = [0f32; TILE_OUT];
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= total {
                    break;
                }
                let i = ends[..m].iter().position(|&e| u < e).unwrap_or(m - 1);
                let start = if i == 0 { 0 } else { ends[i - 1] };
                let b0 = (u - start) * chunk[i];
                let rows = ws[i].rows();
                let b1 = rows.div_ceil(ROW_BLOCK).min(b0 + chunk[i]);
                let act = act[i].as_ref().expect("a view per matrix");
                match ws[i] {
                    MatRef::Plain(w) => {
                        let kernel = kernels[i].expect("a kernel per plain matrix");
                        plain_chunk(kernel, &w, b0, b1, act, n, &outp[i], &mut tile);
                    }
                    MatRef::Packed(pm) => {
                        packed_chunk(backend, allow_amx, pm, b0, b1, act, n, &outp[i])
                    }
                }
            }
        };
        if threads > 1 {
            pool.run(&job);
        } else {
            job(0, 1);
        }
    }
}

/// Row blocks `b0..b1` of a plain matrix: walks blocks of [`ROW_BLOCK`] weight rows, running
/// every tile of up to 4 activation rows against a row block before moving on, so each weight
/// block decoded in registers serves up to 4 activation rows and the row block stays in L1
/// while the activations stream past.
// The chunk's coordinates plus the kernel and its buffers.
#[allow(clippy::too_many_arguments)]
fn plain_chunk(
    kernel: RowsFn,
    w: &QMatrix,
    b0: usize,
    b1: usize,
    act: &QAct,
    n: usize,
    outp: &OutPtr,
    tile: &mut [f32; TILE_OUT],
) {
    let rows = w.rows;
    let row_bytes = w.row_bytes();
    let r1 = rows.min(b1 * ROW_BLOCK);
    let mut rb0 = b0 * ROW_BLOCK;
    while rb0 < r1 {
        let nr = ROW_BLOCK.min(r1 - rb0);
        let wblk = &w.data[rb0 * row_bytes..(rb0 + nr) * row_bytes];
        let mut i0 = 0;
        while i0 < n {
            let cnt = 4.min(n - i0);
            // SAFETY: `rows_fn` only returns SIMD kernels for a backend whose features
            // `or_scalar` confirmed; the kernel bounds-checks its slices.
            unsafe { kernel(wblk, row_bytes, nr, act, i0, cnt, tile) };
            for r in 0..nr {
                for k in 0..cnt {
                    // SAFETY: each chunk of rows is processed by exactly one thread, and the
                    // output is not read until all chunks are done.
                    unsafe { outp.write((i0 + k) * rows + rb0 + r, tile[r * 4 + k]) };
                }
            }
            i0 += cnt;
        }
        rb0 += nr;
    }
}

/// Row groups `g0..g1` of a packed matrix, for all `n` activation rows.
// The chunk's coordinates plus the path choice.
#[allow(clippy::too_many_arguments)]
fn packed_chunk(
    backend: Backend,
    allow_amx: bool,
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    n: usize,
    outp: &OutPtr,
) {
    let rows = pm.rows();
    assert!(outp.len >= n * rows);
    #[cfg(target_arch = "x86_64")]
    if backend != Backend::Scalar && Backend::Avx512Vnni.is_available() {
        let out = crate::x86_packed::Out {
            base: outp.ptr,
            rows,
        };
        let k_quant = matches!(pm.dtype(), DType::Q4_K | DType::Q6_K);
        if allow_amx && !k_quant && n >= AMX_MIN_ROWS && crate::amx::available() {
            // SAFETY: AMX and AVX-512 confirmed; `outp` holds n * rows floats (asserted) and
            // this thread alone writes the rows of groups g0..g1.
            unsafe { crate::amx::groups(pm, g0, g1, act, n, out) };
        } else {
            // SAFETY: AVX-512 VNNI (+ AVX2/FMA/F16C) confirmed just above; otherwise as above.
            unsafe { crate::x86_packed::groups(pm, g0, g1, act, n, out) };
        }
        return;
    }
    let _ = (backend, allow_amx);
    packed::scalar_groups(pm, g0, g1, act, n, &mut |t, r, v| {
        // SAFETY: as in `plain_chunk`.
        unsafe { outp.write(t * rows + r, v) }
    });
}

/// A raw view of the output that pool threads write disjoint elements of.
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `OutPtr` is only used inside `matmul_many_with`, where each thread writes a disjoint
// set of indices while the `&mut [f32]` it came from is not otherwise accessed.
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

/// Raw pointers to an [`ActBuf`]'s vectors, for pool threads that fill disjoint rows.
struct ActPtrs {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    nsum: *mut i32,
    bsums: *mut i16,
}

// SAFETY: only used by `quantize_acts`, whose threads write disjoint row ranges.
unsafe impl Sync for ActPtrs {}

/// Quantises activation rows `x` (`x.len() / cols` rows) into the given row slices.
// The activation buffer's vectors, split per row range.
#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    backend: Backend,
    kind: ActKind,
    x: &[f32],
    cols: usize,
    qs: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    nsum: &mut [i32],
    bsums: &mut [i16],
) {
    let nb = d.len() / (x.len() / cols).max(1);
    for (i, xr) in x.chunks_exact(cols).enumerate() {
        let qs = &mut qs[i * cols..(i + 1) * cols];
        let d = &mut d[i * nb..(i + 1) * nb];
        #[cfg(target_arch = "x86_64")]
        if backend != Backend::Scalar && matches!(kind, ActKind::Q8_0 | ActKind::Q8_1) {
            let (s, ns) = if kind == ActKind::Q8_1 {
                (Some(&mut s[i * nb..(i + 1) * nb]), None)
            } else {
                (None, Some(&mut nsum[i * nb..(i + 1) * nb]))
            };
            // SAFETY: non-scalar backends imply AVX2+FMA+F16C (checked by `or_scalar`).
            unsafe { crate::x86::avx2::quantize_q8_row(xr, qs, d, s, ns) };
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if backend != Backend::Scalar && kind == ActKind::Q8K {
            let bs = &mut bsums[i * nb * 16..(i + 1) * nb * 16];
            // SAFETY: as above.
            unsafe { crate::x86::avx2::quantize_q8_k_row(xr, qs, d, bs) };
            continue;
        }
        let _ = backend;
        match kind {
            ActKind::F32 => {}
            ActKind::Q8_0 => quant::quantize_q8_0_row(xr, qs, d, &mut nsum[i * nb..(i + 1) * nb]),
            ActKind::Q8_1 => quant::quantize_q8_1_row(xr, qs, d, &mut s[i * nb..(i + 1) * nb]),
            ActKind::Q8K => {
                quant::quantize_q8_k_row(xr, qs, d, &mut bsums[i * nb * 16..(i + 1) * nb * 16])
            }
        }
    }
}

/// Quantises `n` rows of `x` into `buf` (reserved for them), split across the pool when there
/// are many rows. Bit-identical to `quant::quantize_acts_scalar` on every backend.
// The matmul's shape and threading decision.
#[allow(clippy::too_many_arguments)]
fn quantize_acts(
    backend: Backend,
    pool: &ThreadPool,
    threads: usize,
    kind: ActKind,
    x: &[f32],
    n: usize,
    cols: usize,
    buf: &mut ActBuf,
) {
    if kind == ActKind::F32 {
        return;
    }
    let nb = cols / kind.block();
    let with_s = kind == ActKind::Q8_1;
    let with_ns = kind == ActKind::Q8_0;
    let with_bs = kind == ActKind::Q8K;
    if threads < 2 || n < PAR_QUANT_ROWS || n * cols < PAR_QUANT_VALUES {
        let (qs, d) = (&mut buf.qs[..n * cols], &mut buf.d[..n * nb]);
        let s = if with_s {
            &mut buf.s[..n * nb]
        } else {
            &mut [][..]
        };
        let ns = if with_ns {
            &mut buf.nsum[..n * nb]
        } else {
            &mut [][..]
        };
        let bs = if with_bs {
            &mut buf.bsums[..n * nb * 16]
        } else {
            &mut [][..]
        };
        quantize_rows(backend, kind, x, cols, qs, d, s, ns, bs);
        return;
    }
    assert!(buf.qs.len() >= n * cols && buf.d.len() >= n * nb);
    assert!(!with_s || buf.s.len() >= n * nb);
    assert!(!with_ns || buf.nsum.len() >= n * nb);
    assert!(!with_bs || buf.bsums.len() >= n * nb * 16);
    let p = ActPtrs {
        qs: buf.qs.as_mut_ptr(),
        d: buf.d.as_mut_ptr(),
        s: buf.s.as_mut_ptr(),
        nsum: buf.nsum.as_mut_ptr(),
        bsums: buf.bsums.as_mut_ptr(),
    };
    let per = n.div_ceil(threads * 4);
    let chunks = n.div_ceil(per);
    let next = AtomicUsize::new(0);
    pool.run(&|_, _| {
        let p = &p;
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            let (i0, i1) = (c * per, n.min((c + 1) * per));
            let rows = i1 - i0;
            // SAFETY: rows i0..i1 of every vector lie within the lengths asserted above, and
            // each chunk of rows is taken once from the counter, so the slices are disjoint
            // from other threads' and `buf` is not otherwise accessed during the run.
            let (qs, d, s, ns, bs) = unsafe {
                use std::slice::from_raw_parts_mut as part;
                (
                    part(p.qs.add(i0 * cols), rows * cols),
                    part(p.d.add(i0 * nb), rows * nb),
                    if with_s {
                        part(p.s.add(i0 * nb), rows * nb)
                    } else {
                        &mut [][..]
                    },
                    if with_ns {
                        part(p.nsum.add(i0 * nb), rows * nb)
                    } else {
                        &mut [][..]
                    },
                    if with_bs {
                        part(p.bsums.add(i0 * nb * 16), rows * nb * 16)
                    } else {
                        &mut [][..]
                    },
                )
            };
            quantize_rows(
                backend,
                kind,
                &x[i0 * cols..i1 * cols],
                cols,
                qs,
                d,
                s,
                ns,
                bs,
            );
        }
    });
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

    /// AMX and the AVX-512 kernels agree bit for bit (both equal the scalar twin, which the
    /// integration tests check; this pins AVX-512 at large batches, which AMX otherwise takes).
    #[test]
    fn amx_equals_avx512() {
        if !crate::amx::available() {
            return;
        }
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0] {
            for (rows, cols) in [(16, 32), (33, 96), (21, 32 * 70), (100, 576)] {
                let mut data = Vec::new();
                for _ in 0..rows {
                    let r: Vec<f32> = (0..cols).map(|_| rnd()).collect();
                    data.extend(crate::quantize::quantize_row(dtype, &r).unwrap());
                }
                let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
                for threads in [1, 2] {
                    let pool = ThreadPool::new(threads);
                    let pm = PackedMatrix::pack(&pool, &w).unwrap();
                    for n in [16, 17, 31, 40] {
                        let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
                        let mut a = vec![0f32; n * rows];
                        let mut b = vec![1f32; n * rows];
                        let mut s = MatmulScratch::default();
                        let ws = [MatRef::Packed(&pm)];
                        let be = Backend::Avx512Vnni;
                        matmul_many_impl(be, true, &pool, &ws, &x, n, &mut [&mut a], &mut s);
                        matmul_many_impl(be, false, &pool, &ws, &x, n, &mut [&mut b], &mut s);
                        assert_eq!(a, b, "{dtype} {rows}x{cols} n={n} threads={threads}");
                    }
                }
            }
        }
    }

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
        // Q8_K: a block with a huge negative extreme, one with a tie between -3 and +3 (the
        // first wins), one all zero.
        let mut xk: Vec<f32> = x.iter().copied().cycle().take(768).collect();
        for (j, v) in xk[256..512].iter_mut().enumerate() {
            *v = (j % 5) as f32 * 0.25 - 0.5;
        }
        xk[256 + 5] = -3.0;
        xk[256 + 200] = 3.0;
        xk[512..].fill(0.0);
        for kind in [ActKind::Q8_0, ActKind::Q8_1, ActKind::Q8K] {
            let (x, cols) = if kind == ActKind::Q8K {
                (&xk[..], 768)
            } else {
                (&x[..], cols)
            };
            let mut a = ActBuf::default();
            let mut b = ActBuf::default();
            a.reserve(kind, 1, cols);
            b.reserve(kind, 1, cols);
            quant::quantize_acts_scalar(kind, x, 1, cols, &mut a);
            let pool = ThreadPool::new(1);
            quantize_acts(Backend::Avx2, &pool, 1, kind, x, 1, cols, &mut b);
            assert_eq!(a.qs, b.qs, "{kind:?}");
            assert_eq!(a.d, b.d, "{kind:?}");
            assert_eq!(a.s, b.s, "{kind:?}");
            assert_eq!(a.nsum, b.nsum, "{kind:?}");
            assert_eq!(a.bsums, b.bsums, "{kind:?}");
        }
    }
}
