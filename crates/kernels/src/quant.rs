//! Block layouts, scalar dequantisation, and activation quantisation.
//!
//! Layouts follow ggml-common.h exactly (all multi-byte fields little-endian):
//!
//! | type | bytes | layout |
//! |------|-------|--------|
//! | Q4_0 | 18  | `f16 d; u8 qs[16]` — element j is the low nibble of qs[j], j+16 the high nibble; x = (q-8)·d |
//! | Q4_1 | 20  | `f16 d, m; u8 qs[16]` — x = q·d + m |
//! | Q5_0 | 22  | `f16 d; u8 qh[4]; u8 qs[16]` — bit j of qh (u32) is the 5th bit of element j; x = (q-16)·d |
//! | Q8_0 | 34  | `f16 d; i8 qs[32]` |
//! | Q4_K | 144 | `f16 d, dmin; u8 scales[12]; u8 qs[128]` — 8 sub-blocks of 32 with 6-bit scale/min |
//! | Q5_K | 176 | `f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]` |
//! | Q6_K | 210 | `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` — 16 sub-blocks of 16 |
//!
//! Activations are quantised into [`ActBuf`], an internal layout (not ggml's bytes): each row's
//! quants are contiguous and scales are already widened to f32, so kernels never convert f16
//! on the activation side. The *values* are exactly ggml's: Q8_0/Q8_1 follow the x86 AVX2
//! `quantize_row_q8_0`/`quantize_row_q8_1` (scale `127/amax`, round-half-even), Q8_K follows
//! `quantize_row_q8_K_ref`.

use crate::DType;
use crate::dtype::{QK, QK_K};
use crate::f16::{bf16_to_f32, f16_to_f32, round_f16};

#[inline(always)]
pub(crate) fn rd_f16(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// ggml's `get_scale_min_k4`: the 6-bit (scale, min) of sub-block `j` (0..8) of a Q4_K/Q5_K
/// super-block from its 12 packed bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantises whole blocks. `data.len()` must equal `dtype.row_bytes(out.len())` and the type
/// must be supported; callers check.
pub(crate) fn dequantize(dtype: DType, data: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => crate::f16::f16_bytes_to_f32(data, out),
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::Q4_0 => {
            for (b, y) in data.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        DType::Q4_1 => {
            for (b, y) in data.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                let m = rd_f16(b, 2);
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        DType::Q5_0 => {
            for (b, y) in data.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    y[j] = (((b[6 + j] & 0xF) | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        DType::Q8_0 => {
            for (b, y) in data.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                let d = rd_f16(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        DType::Q4_K => {
            for (b, y) in data.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 0);
                let min = rd_f16(b, 2);
                let scales = &b[4..16];
                for j in 0..4 {
                    let q = &b[16 + 32 * j..16 + 32 * j + 32];
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    for l in 0..32 {
                        y[64 * j + l] = d1 * (q[l] & 0xF) as f32 - m1;
                        y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        DType::Q5_K => {
            for (b, y) in data.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 0);
                let min = rd_f16(b, 2);
                let scales = &b[4..16];
                let qh = &b[16..48];
                for j in 0..4 {
                    let ql = &b[48 + 32 * j..48 + 32 * j + 32];
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[64 * j + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                        y[64 * j + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                    }
                }
            }
        }
        DType::Q6_K => {
            for (b, y) in data.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
                let d = rd_f16(b, 208);
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let y = &mut y[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        // QMatrix::new / dequantize_row reject these before we get here.
        DType::Q5_1 | DType::Q8_1 | DType::Q2_K | DType::Q3_K | DType::Q8_K => {
            unreachable!("dequantize called for unsupported type {dtype}")
        }
    }
}

/// Which activation format a weight type's dot product consumes (ggml's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActKind {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActKind {
    pub(crate) fn for_weights(dtype: DType) -> ActKind {
        match dtype {
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => ActKind::Q8_0,
            DType::Q4_1 | DType::Q5_1 => ActKind::Q8_1,
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q2_K | DType::Q3_K => ActKind::Q8K,
            _ => ActKind::F32,
        }
    }

    pub(crate) fn block(self) -> usize {
        match self {
            ActKind::F32 => 1,
            ActKind::Q8_0 | ActKind::Q8_1 => QK,
            ActKind::Q8K => QK_K,
        }
    }
}

/// Quantised activations for one matmul call. Grows to the largest call seen, never shrinks,
/// so steady-state calls do not allocate.
#[derive(Default)]
pub(crate) struct ActBuf {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub bsums: Vec<i16>,
    /// Q8_0 only: minus the sum of each block's quants (exact), which the packed kernels use to
    /// undo the offset they add to signed weights (see `packed.rs`).
    pub nsum: Vec<i32>,
    /// `d` (and for Q8_1 `s`) transposed, block-major (`[b * rows + i]`), for the AMX kernels,
    /// which scale 16 rows of one block at a time. Filled by `transpose_scales`.
    pub dt: Vec<f32>,
    pub st: Vec<f32>,
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// An empty buffer, for views of f32 activations.
pub(crate) static EMPTY_ACT: ActBuf = ActBuf {
    qs: Vec::new(),
    d: Vec::new(),
    s: Vec::new(),
    bsums: Vec::new(),
    nsum: Vec::new(),
    dt: Vec::new(),
    st: Vec::new(),
};

impl ActBuf {
    /// Makes room for `n` rows of `cols` activations of `kind`.
    pub(crate) fn reserve(&mut self, kind: ActKind, n: usize, cols: usize) {
        if kind == ActKind::F32 {
            return;
        }
        let nb = cols / kind.block();
        grow(&mut self.qs, n * cols);
        grow(&mut self.d, n * nb);
        if kind == ActKind::Q8_0 {
            grow(&mut self.nsum, n * nb);
        }
        if kind == ActKind::Q8_1 {
            grow(&mut self.s, n * nb);
        }
        if kind == ActKind::Q8K {
            grow(&mut self.bsums, n * nb * 16);
        }
    }

    /// Zeroes rows `n0..n1` (already reserved), so that kernels working on whole tiles of
    /// rows can read past the last real row.
    pub(crate) fn zero_rows(&mut self, kind: ActKind, n0: usize, n1: usize, cols: usize) {
        if kind == ActKind::F32 || n0 >= n1 {
            return;
        }
        let nb = cols / kind.block();
        self.qs[n0 * cols..n1 * cols].fill(0);
        self.d[n0 * nb..n1 * nb].fill(0.0);
        match kind {
            ActKind::Q8_0 => self.nsum[n0 * nb..n1 * nb].fill(0),
            ActKind::Q8_1 => self.s[n0 * nb..n1 * nb].fill(0.0),
            ActKind::Q8K => self.bsums[n0 * nb * 16..n1 * nb * 16].fill(0),
            ActKind::F32 => {}
        }
    }

    /// Fills `dt`/`st` from the first `n` rows' `d`/`s` (Q8_0 and Q8_1 only).
    pub(crate) fn transpose_scales(&mut self, kind: ActKind, n: usize, cols: usize) {
        if !matches!(kind, ActKind::Q8_0 | ActKind::Q8_1) {
            return;
        }
        let nb = cols / QK;
        let transpose = |src: &[f32], dst: &mut Vec<f32>| {
            grow(dst, n * nb);
            for (i, row) in src[..n * nb].chunks_exact(nb).enumerate() {
                for (col, &v) in dst[..n * nb].chunks_exact_mut(n).zip(row) {
                    col[i] = v;
                }
            }
        };
        transpose(&self.d, &mut self.dt);
        if kind == ActKind::Q8_1 {
            transpose(&self.s, &mut self.st);
        }
    }

    pub(crate) fn view<'a>(
        &'a self,
        kind: ActKind,
        x: &'a [f32],
        n: usize,
        cols: usize,
    ) -> QAct<'a> {
        let nb = cols / kind.block();
        QAct {
            qs: &self.qs[..if kind == ActKind::F32 { 0 } else { n * cols }],
            d: &self.d[..if kind == ActKind::F32 { 0 } else { n * nb }],
            s: &self.s[..if kind == ActKind::Q8_1 { n * nb } else { 0 }],
            bsums: &self.bsums[..if kind == ActKind::Q8K { n * nb * 16 } else { 0 }],
            nsum: &self.nsum[..if kind == ActKind::Q8_0 { n * nb } else { 0 }],
            dt: &self.dt[..self.dt.len().min(n * nb)],
            st: &self.st[..self.st.len().min(n * nb)],
            rows: n,
            f: x,
            cols,
            nb,
        }
    }
}

/// A read-only view of a batch of activations, quantised (or not, for float weights).
#[derive(Clone, Copy)]
pub(crate) struct QAct<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub bsums: &'a [i16],
    pub nsum: &'a [i32],
    /// Transposed scales (see `ActBuf::dt`); empty unless prepared for AMX.
    pub dt: &'a [f32],
    pub st: &'a [f32],
    /// Rows in the view (including zero padding rows).
    pub rows: usize,
    pub f: &'a [f32],
    pub cols: usize,
    /// Scale blocks per row (32 for Q8_0/Q8_1, 256 for Q8_K, 1 element for F32).
    pub nb: usize,
}

impl<'a> QAct<'a> {
    #[inline]
    pub fn qs_row(&self, i: usize) -> &'a [i8] {
        &self.qs[i * self.cols..(i + 1) * self.cols]
    }
    #[inline]
    pub fn d_row(&self, i: usize) -> &'a [f32] {
        &self.d[i * self.nb..(i + 1) * self.nb]
    }
    #[inline]
    pub fn s_row(&self, i: usize) -> &'a [f32] {
        &self.s[i * self.nb..(i + 1) * self.nb]
    }
    #[inline]
    pub fn bsums_row(&self, i: usize) -> &'a [i16] {
        &self.bsums[i * self.nb * 16..(i + 1) * self.nb * 16]
    }
    #[inline]
    pub fn nsum_row(&self, i: usize) -> &'a [i32] {
        &self.nsum[i * self.nb..(i + 1) * self.nb]
    }
    #[inline]
    pub fn f_row(&self, i: usize) -> &'a [f32] {
        &self.f[i * self.cols..(i + 1) * self.cols]
    }
}

/// One 32-element block of ggml's x86 `quantize_row_q8_0`/`q8_1`: returns (d as stored, i.e.
/// f16-rounded; the unrounded d used for Q8_1's sum).
#[inline(always)]
fn q8_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let mut amax = 0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (qj, &v) in q.iter_mut().zip(x) {
        // Saturating like `_mm256_packs_epi32/epi16`; |v*id| <= 127 + ulp so it never triggers.
        *qj = (v * id).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    (round_f16(d), d)
}

/// Scalar Q8_0 quantisation of one row (`x.len()` a multiple of 32), with minus each block's
/// quant sum into `nsum` (as long as `d`).
pub(crate) fn quantize_q8_0_row(x: &[f32], qs: &mut [i8], d: &mut [f32], nsum: &mut [i32]) {
    for (((xb, qb), db), ns) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(nsum.iter_mut())
    {
        *db = q8_block(xb, qb).0;
        *ns = -qb.iter().map(|&q| q as i32).sum::<i32>();
    }
}

/// Scalar Q8_1 quantisation of one row: like Q8_0 plus `s = fp16(d * sum(q))`.
pub(crate) fn quantize_q8_1_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((xb, qb), db), sb) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
    {
        let (dr, dfull) = q8_block(xb, qb);
        let sum: i32 = qb.iter().map(|&q| q as i32).sum();
        *db = dr;
        *sb = round_f16(dfull * sum as f32);
    }
}

/// ggml's `nearest_int`: round-half-even through the 1.5·2^23 trick (valid for |v| < 2^22).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12582912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `quantize_row_q8_K_ref` for one row (`x.len()` a multiple of 256).
pub(crate) fn quantize_q8_k_row(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for (((xb, qb), db), bs) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(d.iter_mut())
        .zip(bsums.chunks_exact_mut(16))
    {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *db = 0.0;
            qb.fill(0);
            bs.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (j, b) in bs.iter_mut().enumerate() {
            *b = qb[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        *db = 1.0 / iscale;
    }
}

/// Scalar activation quantisation of `n` rows into `buf` (the reference the SIMD quantiser is
/// tested against).
#[cfg(test)]
pub(crate) fn quantize_acts_scalar(
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
    for i in 0..n {
        let xr = &x[i * cols..(i + 1) * cols];
        let qs = &mut buf.qs[i * cols..(i + 1) * cols];
        let d = &mut buf.d[i * nb..(i + 1) * nb];
        match kind {
            ActKind::F32 => unreachable!(),
            ActKind::Q8_0 => quantize_q8_0_row(xr, qs, d, &mut buf.nsum[i * nb..(i + 1) * nb]),
            ActKind::Q8_1 => quantize_q8_1_row(xr, qs, d, &mut buf.s[i * nb..(i + 1) * nb]),
            ActKind::Q8K => {
                quantize_q8_k_row(xr, qs, d, &mut buf.bsums[i * nb * 16..(i + 1) * nb * 16])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even() {
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.49, 3.7, -3.7] {
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn q8_0_block_known() {
        let mut x = [0f32; 32];
        x[0] = 1.0;
        x[1] = -0.5;
        x[2] = 0.25;
        let mut q = [0i8; 32];
        let mut d = [0f32; 1];
        let mut ns = [0i32; 1];
        quantize_q8_0_row(&x, &mut q, &mut d, &mut ns);
        assert_eq!(ns[0], -(127 - 64 + 32));
        assert_eq!(q[0], 127);
        assert_eq!(q[1], -64); // -63.5 rounds to even
        assert_eq!(q[2], 32); // 31.75
        assert_eq!(d[0], round_f16(1.0 / 127.0));
    }

    #[test]
    fn q8_k_uses_signed_max() {
        let mut x = [0f32; 256];
        x[5] = -2.0;
        x[6] = 1.0;
        let mut q = [0i8; 256];
        let mut d = [0f32; 1];
        let mut bs = [0i16; 16];
        quantize_q8_k_row(&x, &mut q, &mut d, &mut bs);
        // iscale = -127 / -2 = 63.5; -2 -> -127, 1 -> 63.5 -> 64 (half to even).
        assert_eq!(q[5], -127);
        assert_eq!(q[6], 64);
        assert_eq!(bs[0], -63);
        assert_eq!(d[0], 1.0 / 63.5);
    }
}
