//! Portable scalar dot-product kernels: the reference for the SIMD paths and the fallback on
//! CPUs without them. They follow ggml's `*_generic` dot products (integer sums per block, then
//! scaled), so they agree with the SIMD kernels to within float rounding, not bit for bit.
//!
//! All kernels share the [`RowsFn`](crate::matmul::RowsFn) contract: `w` holds `nrows`
//! consecutive weight rows of `row_bytes` bytes (validated by `QMatrix::new`), `act` holds at
//! least `i0 + cnt` activation rows of the matching kind, `cnt` is 1..=4, and the result for
//! weight row `r` and activation row `i0 + k` goes to `out[r * 4 + k]`.

use crate::matmul::TILE_OUT;
use crate::quant::{QAct, rd_f16, scale_min_k4};

#[inline(always)]
fn dot_i8(a: &[i8; 32], b: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += a[j] as i32 * b[j] as i32;
    }
    s
}

/// Legacy 32-element blocks against Q8_0/Q8_1 activations. `decode` unpacks a block into signed
/// quants and returns (d, m) with m = 0 for the symmetric types.
// The row-kernel arguments plus a description of the block type.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn legacy_rows(
    w: &[u8],
    row_bytes: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
    block_bytes: usize,
    with_min: bool,
    decode: impl Fn(&[u8], &mut [i8; 32]) -> (f32, f32),
) {
    let nb = act.cols / 32;
    let mut q = [0i8; 32];
    for r in 0..nrows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut sums = [0f32; 4];
        for b in 0..nb {
            let (dx, mx) = decode(&row[b * block_bytes..(b + 1) * block_bytes], &mut q);
            for (k, sum) in sums.iter_mut().enumerate().take(cnt) {
                let i = i0 + k;
                let y = &act.qs_row(i)[b * 32..b * 32 + 32];
                let sumi = dot_i8(&q, y);
                *sum += (dx * act.d_row(i)[b]) * sumi as f32;
                if with_min {
                    *sum += mx * act.s_row(i)[b];
                }
            }
        }
        out[r * 4..r * 4 + cnt].copy_from_slice(&sums[..cnt]);
    }
}

pub(crate) fn q4_0(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    legacy_rows(w, rb, nrows, act, i0, cnt, out, 18, false, |b, q| {
        for j in 0..16 {
            q[j] = (b[2 + j] & 0xF) as i8 - 8;
            q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
        }
        (rd_f16(b, 0), 0.0)
    })
}

pub(crate) fn q4_1(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    legacy_rows(w, rb, nrows, act, i0, cnt, out, 20, true, |b, q| {
        for j in 0..16 {
            q[j] = (b[4 + j] & 0xF) as i8;
            q[j + 16] = (b[4 + j] >> 4) as i8;
        }
        (rd_f16(b, 0), rd_f16(b, 2))
    })
}

pub(crate) fn q5_0(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    legacy_rows(w, rb, nrows, act, i0, cnt, out, 22, false, |b, q| {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((b[6 + j] & 0xF) | h0) as i8 - 16;
            q[j + 16] = ((b[6 + j] >> 4) | h1) as i8 - 16;
        }
        (rd_f16(b, 0), 0.0)
    })
}

pub(crate) fn q8_0(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    legacy_rows(w, rb, nrows, act, i0, cnt, out, 34, false, |b, q| {
        for j in 0..32 {
            q[j] = b[2 + j] as i8;
        }
        (rd_f16(b, 0), 0.0)
    })
}

/// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; the mins are applied through
/// the activation block sums, as ggml does.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn k45_rows(
    w: &[u8],
    row_bytes: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
    five_bit: bool,
) {
    let nsb = act.cols / 256;
    let bb = if five_bit { 176 } else { 144 };
    let mut q = [0i8; 256];
    for r in 0..nrows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut sums = [0f32; 4];
        for b in 0..nsb {
            let blk = &row[b * bb..(b + 1) * bb];
            let dx = rd_f16(blk, 0);
            let dminx = rd_f16(blk, 2);
            let scales = &blk[4..16];
            let (qh, qs) = if five_bit {
                (&blk[16..48], &blk[48..176])
            } else {
                (&blk[0..0], &blk[16..144])
            };
            for j in 0..4 {
                for l in 0..32 {
                    let (mut lo, mut hi) = (qs[32 * j + l] & 0xF, qs[32 * j + l] >> 4);
                    if five_bit {
                        lo |= ((qh[l] >> (2 * j)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
                    }
                    q[64 * j + l] = lo as i8;
                    q[64 * j + 32 + l] = hi as i8;
                }
            }
            let mut sc = [0i32; 8];
            let mut mn = [0i32; 8];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, scales);
                sc[j] = s as i32;
                mn[j] = m as i32;
            }
            for (k, sum) in sums.iter_mut().enumerate().take(cnt) {
                let i = i0 + k;
                let y = &act.qs_row(i)[b * 256..(b + 1) * 256];
                let bs = &act.bsums_row(i)[b * 16..(b + 1) * 16];
                let dy = act.d_row(i)[b];
                let mut sumi = 0i32;
                let mut summ = 0i32;
                for j in 0..8 {
                    let mut s = 0i32;
                    for l in 0..32 {
                        s += q[32 * j + l] as i32 * y[32 * j + l] as i32;
                    }
                    sumi += sc[j] * s;
                    summ += mn[j] * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                }
                *sum += dy * dx * sumi as f32 - dy * dminx * summ as f32;
            }
        }
        out[r * 4..r * 4 + cnt].copy_from_slice(&sums[..cnt]);
    }
}

pub(crate) fn q4_k(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    k45_rows(w, rb, nrows, act, i0, cnt, out, false)
}

pub(crate) fn q5_k(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    k45_rows(w, rb, nrows, act, i0, cnt, out, true)
}

pub(crate) fn q6_k(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    let nsb = act.cols / 256;
    let mut q = [0i8; 256];
    for r in 0..nrows {
        let row = &w[r * rb..(r + 1) * rb];
        let mut sums = [0f32; 4];
        for b in 0..nsb {
            let blk = &row[b * 210..(b + 1) * 210];
            let dx = rd_f16(blk, 208);
            for n in 0..2 {
                let ql = &blk[64 * n..64 * n + 64];
                let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
                for l in 0..32 {
                    q[128 * n + l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    q[128 * n + 32 + l] =
                        ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    q[128 * n + 64 + l] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    q[128 * n + 96 + l] =
                        ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
            let sc = &blk[192..208];
            for (k, sum) in sums.iter_mut().enumerate().take(cnt) {
                let i = i0 + k;
                let y = &act.qs_row(i)[b * 256..(b + 1) * 256];
                let mut sumi = 0i32;
                for s in 0..16 {
                    let mut t = 0i32;
                    for l in 0..16 {
                        t += q[16 * s + l] as i32 * y[16 * s + l] as i32;
                    }
                    sumi += (sc[s] as i8) as i32 * t;
                }
                *sum += act.d_row(i)[b] * dx * sumi as f32;
            }
        }
        out[r * 4..r * 4 + cnt].copy_from_slice(&sums[..cnt]);
    }
}

/// Float weights against f32 activations; `decode` converts a run of raw weights to f32.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn float_rows(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
    elem_bytes: usize,
    decode: impl Fn(&[u8], &mut [f32]),
) {
    const CH: usize = 64;
    let cols = act.cols;
    let mut buf = [0f32; CH];
    for r in 0..nrows {
        let row = &w[r * rb..(r + 1) * rb];
        let mut sums = [0f32; 4];
        let mut c = 0;
        while c < cols {
            let len = CH.min(cols - c);
            decode(
                &row[c * elem_bytes..(c + len) * elem_bytes],
                &mut buf[..len],
            );
            for (k, sum) in sums.iter_mut().enumerate().take(cnt) {
                let x = &act.f_row(i0 + k)[c..c + len];
                for (a, b) in buf[..len].iter().zip(x) {
                    *sum += a * b;
                }
            }
            c += len;
        }
        out[r * 4..r * 4 + cnt].copy_from_slice(&sums[..cnt]);
    }
}

pub(crate) fn f32_rows(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    float_rows(w, rb, nrows, act, i0, cnt, out, 4, |src, dst| {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        }
    })
}

pub(crate) fn f16_rows(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    float_rows(
        w,
        rb,
        nrows,
        act,
        i0,
        cnt,
        out,
        2,
        crate::f16::f16_bytes_to_f32,
    )
}

pub(crate) fn bf16_rows(
    w: &[u8],
    rb: usize,
    nrows: usize,
    act: &QAct,
    i0: usize,
    cnt: usize,
    out: &mut [f32; TILE_OUT],
) {
    float_rows(
        w,
        rb,
        nrows,
        act,
        i0,
        cnt,
        out,
        2,
        crate::f16::bf16_bytes_to_f32,
    )
}
