//! Reference quantisers: f32 rows to GGML block bytes.
//!
//! Inference never quantises weights; these exist so tests (here and in other crates) can build
//! valid tensors of every supported type. Q4_0, Q4_1, Q5_0 and Q8_0 follow ggml's
//! `quantize_row_*_ref` exactly, so their bytes match what `llama-quantize` would write for the
//! same row without an importance matrix. The K-quant quantisers here are simpler than ggml's
//! iterative search (plain min/max per sub-block): they produce valid blocks with somewhat larger
//! error, which is all a test needs.

use crate::dtype::{QK, QK_K};
use crate::f16::{f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::{DType, KernelError};

/// `n` deterministic pseudo-random values in [-1, 1) (xorshift), the test data of kernels that
/// take f32 or f16 input.
pub fn test_values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Quantises a row of `x.len()` values (a multiple of the type's block length) to `dtype`.
pub fn quantize_row(dtype: DType, x: &[f32]) -> Result<Vec<u8>, KernelError> {
    let bytes = dtype.row_bytes(x.len()).ok_or_else(|| {
        KernelError::shape(format!(
            "{} values is not a whole number of {dtype} blocks",
            x.len()
        ))
    })?;
    let mut out = vec![0u8; bytes];
    quantize_row_into(dtype, x, &mut out)?;
    Ok(out)
}

/// Like [`quantize_row`] into a caller buffer of exactly `dtype.row_bytes(x.len())` bytes.
pub fn quantize_row_into(dtype: DType, x: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
    if !dtype.is_supported() {
        return Err(KernelError::UnsupportedType(dtype));
    }
    if dtype.row_bytes(x.len()) != Some(out.len()) {
        return Err(KernelError::shape(format!(
            "{} values of {dtype} need {:?} bytes, buffer has {}",
            x.len(),
            dtype.row_bytes(x.len()),
            out.len()
        )));
    }
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        DType::Q4_0 => blocks(x, out, QK, 18, q4_0),
        DType::Q4_1 => blocks(x, out, QK, 20, q4_1),
        DType::Q5_0 => blocks(x, out, QK, 22, q5_0),
        DType::Q8_0 => blocks(x, out, QK, 34, q8_0),
        DType::Q4_K => blocks(x, out, QK_K, 144, q4_k),
        DType::Q5_K => blocks(x, out, QK_K, 176, q5_k),
        DType::Q6_K => blocks(x, out, QK_K, 210, q6_k),
        _ => return Err(KernelError::UnsupportedType(dtype)),
    }
    Ok(())
}

fn blocks(x: &[f32], out: &mut [u8], bl: usize, bb: usize, f: fn(&[f32], &mut [u8])) {
    for (xb, ob) in x.chunks_exact(bl).zip(out.chunks_exact_mut(bb)) {
        f(xb, ob);
    }
}

fn put_f16(out: &mut [u8], off: usize, v: f32) {
    out[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// The value of largest magnitude (first one on ties), as ggml's `_ref` quantisers pick it.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn q4_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    for j in 0..16 {
        // `(int8_t)(x + 8.5f)` truncates toward zero, then MIN(15, .).
        let a = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let b = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        out[2 + j] = a | (b << 4);
    }
}

fn q4_1(x: &[f32], out: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let b = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        out[4 + j] = a | (b << 4);
    }
}

fn q5_0(x: &[f32], out: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let a = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let b = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        out[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn q8_0(x: &[f32], out: &mut [u8]) {
    let (amax, _) = signed_absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, 0, d);
    for j in 0..32 {
        out[2 + j] = (x[j] * id).round() as i8 as u8;
    }
}

/// Packs eight 6-bit (scale, min) pairs the way `get_scale_min_k4` unpacks them.
fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
}

/// Shared Q4_K/Q5_K search: per 32-element sub-block an affine map `x ≈ d·sc·q - dmin·m` with
/// q in `0..=qmax`. Writes d/dmin/scales and returns the quants.
fn affine_k(x: &[f32], qmax: f32, out: &mut [u8]) -> [u8; 256] {
    let mut scale = [0f32; 8];
    let mut minv = [0f32; 8];
    for j in 0..8 {
        let s = &x[32 * j..32 * j + 32];
        let lo = s.iter().copied().fold(f32::MAX, f32::min).min(0.0);
        let hi = s.iter().copied().fold(-f32::MAX, f32::max);
        scale[j] = (hi - lo) / qmax;
        minv[j] = -lo;
    }
    let max_scale = scale.iter().copied().fold(0.0, f32::max);
    let max_min = minv.iter().copied().fold(0.0, f32::max);
    let d = f16_to_f32(f32_to_f16(max_scale / 63.0));
    let dmin = f16_to_f32(f32_to_f16(max_min / 63.0));
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = if d > 0.0 {
            (scale[j] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        m[j] = if dmin > 0.0 {
            (minv[j] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    pack_scales_k4(&sc, &m, &mut out[4..16]);
    let mut q = [0u8; 256];
    for j in 0..8 {
        let ds = d * sc[j] as f32;
        let dm = dmin * m[j] as f32;
        for l in 0..32 {
            let v = x[32 * j + l];
            q[32 * j + l] = if ds > 0.0 {
                ((v + dm) / ds).round().clamp(0.0, qmax) as u8
            } else {
                0
            };
        }
    }
    q
}

fn q4_k(x: &[f32], out: &mut [u8]) {
    let q = affine_k(x, 15.0, out);
    for j in 0..4 {
        for l in 0..32 {
            out[16 + 32 * j + l] = q[64 * j + l] | (q[64 * j + 32 + l] << 4);
        }
    }
}

fn q5_k(x: &[f32], out: &mut [u8]) {
    let q = affine_k(x, 31.0, out);
    out[16..48].fill(0);
    for j in 0..4 {
        for l in 0..32 {
            let (a, b) = (q[64 * j + l], q[64 * j + 32 + l]);
            out[48 + 32 * j + l] = (a & 0xF) | ((b & 0xF) << 4);
            out[16 + l] |= ((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1));
        }
    }
}

fn q6_k(x: &[f32], out: &mut [u8]) {
    // 16 sub-blocks of 16, signed 8-bit scales, q in -32..=31.
    let mut scale = [0f32; 16];
    for (j, s) in scale.iter_mut().enumerate() {
        let (_, max) = signed_absmax(&x[16 * j..16 * j + 16]);
        *s = max / -32.0;
    }
    let (amax, _) = signed_absmax(&scale);
    let d = f16_to_f32(f32_to_f16(amax / 127.0));
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = if d > 0.0 {
            (scale[j] / d).round().clamp(-128.0, 127.0) as i8
        } else {
            0
        };
    }
    let mut q = [0u8; 256];
    for j in 0..16 {
        let ds = d * sc[j] as f32;
        for l in 0..16 {
            let v = if ds != 0.0 {
                (x[16 * j + l] / ds).round().clamp(-32.0, 31.0) as i32
            } else {
                0
            };
            q[16 * j + l] = (v + 32) as u8;
        }
    }
    for n in 0..2 {
        for l in 0..32 {
            let (q1, q2, q3, q4) = (
                q[128 * n + l],
                q[128 * n + 32 + l],
                q[128 * n + 64 + l],
                q[128 * n + 96 + l],
            );
            out[64 * n + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            out[64 * n + 32 + l] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            out[128 + 32 * n + l] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for j in 0..16 {
        out[192 + j] = sc[j] as u8;
    }
    put_f16(out, 208, d);
}
