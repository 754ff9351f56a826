//! f32 helper ops for the forward pass (norms, activations, softmax, BLAS-1), with ggml's
//! numerics where they are observable:
//!
//! - `rms_norm` sums squares in f64 and scales then multiplies by the weight in two roundings,
//!   as ggml's `rms_norm` followed by `mul` does.
//! - `softmax_inplace` and `silu_mul_inplace` use a port of ggml's vectorised `ggml_v_expf`
//!   (AVX2 variant) on the SIMD path and libm `expf` on the scalar path and for tails, like ggml;
//!   softmax sums in f64.
//! - `gelu_tanh_mul_inplace` reproduces ggml's default `GGML_GELU_FP16` path: the input is
//!   rounded to f16 and looked up in a 65536-entry table of f16 results (exact for |x| >= 10).
//!
//! The SIMD ops have a `*_with(Backend, ..)` form; the plain form uses [`default_backend`]
//! (AVX-512 variants on CPUs with AVX-512 F+DQ, like a native llama.cpp build).

use crate::Backend;
use crate::f16::{f16_to_f32, f32_to_f16};
use std::sync::OnceLock;

/// Which vector code an op runs: ggml picks its AVX-512 variants (`ggml_v_expf` etc.) when
/// built for a CPU with AVX-512 F+DQ, else AVX2, and so do we.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa(b: Backend) -> Isa {
    match b.or_scalar() {
        Backend::Scalar => Isa::Scalar,
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Vnni if std::arch::is_x86_feature_detected!("avx512dq") => Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        _ => Isa::Avx2,
        #[cfg(not(target_arch = "x86_64"))]
        _ => Isa::Scalar,
    }
}

/// The backend the plain (no `_with`) ops use: the widest vectors available, as a native
/// llama.cpp build on this CPU would, unless [`crate::set_force_scalar`] is on.
pub fn default_backend() -> Backend {
    // Probed once: these helpers are called per attention row, where four feature probes per
    // call cost more than the work (7 % of prompt processing before this cache).
    static DETECTED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    if crate::force_scalar() {
        Backend::Scalar
    } else {
        *DETECTED.get_or_init(|| {
            if Backend::Avx512Vnni.is_available() {
                Backend::Avx512Vnni
            } else {
                Backend::detect()
            }
        })
    }
}

#[inline]
fn simd(b: Backend) -> bool {
    isa(b) != Isa::Scalar
}

/// `out = x / sqrt(mean(x^2) + eps) * weight`. Panics unless all three have the same length.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: length mismatch"
    );
    let scale = rms_scale(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// In-place form of [`rms_norm`].
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len(), weight.len(), "rms_norm_inplace: length mismatch");
    let scale = rms_scale(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = (*v * scale) * w;
    }
}

/// ggml: `sum += (ggml_float)(x*x)` in f64, `mean = (float)(sum/n)`, `1.0f/sqrtf(mean+eps)`.
/// The SIMD path keeps eight f64 partial sums instead of one (the one chain of dependent f64
/// additions cost a third of all the serial work in a decoding step); with f64 accumulation
/// the order change is far below f32 resolution.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let mut sum = 0f64;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA.
        (sum, i) = unsafe { avx2::sum_squares_f64(x) };
    }
    for &v in &x[i..] {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// In-place softmax: `x = exp(x - max) / sum`. Empty input is left alone.
pub fn softmax_inplace(x: &mut [f32]) {
    softmax_inplace_with(default_backend(), x)
}

pub fn softmax_inplace_with(b: Backend, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut i = 0;
    let mut sum = 0f64;
    #[cfg(target_arch = "x86_64")]
    match isa(b) {
        // SAFETY (both arms): `isa` confirmed the features.
        Isa::Avx512 => (i, sum) = unsafe { avx512::exp_sub_sum(x, max) },
        Isa::Avx2 => (i, sum) = unsafe { avx2::exp_sub_sum(x, max) },
        Isa::Scalar => {}
    }
    let _ = b;
    for v in &mut x[i..] {
        let e = (*v - max).exp();
        sum += e as f64;
        *v = e;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, silu(x) = x / (1 + e^-x). Panics on length mismatch.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    silu_mul_inplace_with(default_backend(), gate, up)
}

pub fn silu_mul_inplace_with(b: Backend, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul_inplace: length mismatch");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    match isa(b) {
        // SAFETY (both arms): `isa` confirmed the features.
        Isa::Avx512 => i = unsafe { avx512::silu_mul(gate, up) },
        Isa::Avx2 => i = unsafe { avx2::silu_mul(gate, up) },
        Isa::Scalar => {}
    }
    let _ = b;
    for (g, &u) in gate[i..].iter_mut().zip(&up[i..]) {
        *g = silu(*g) * u;
    }
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// ggml's `ggml_gelu_f32`. GCC (ggml's usual compiler, `-ffp-contract=fast`) fuses
/// `1 + A*x*x` into an FMA; we do the same so the table matches a native llama.cpp build.
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

fn gelu_table() -> &'static [u16] {
    static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| f32_to_f16(gelu_tanh(f16_to_f32(h))))
            .collect()
    })
}

/// ggml's `GGML_GELU_FP16` lookup of one value.
#[inline]
fn gelu_lut(t: &[u16], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16_to_f32(t[f32_to_f16(x) as usize])
    }
}

/// `gate = gelu(gate) * up` with ggml's tanh approximation through its f16 table (see module
/// docs). Panics on length mismatch.
pub fn gelu_tanh_mul_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "gelu_tanh_mul_inplace: length mismatch"
    );
    let t = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        // ggml: `x >= 10 ? x * g : table(x) * g`, i.e. the same product in every branch.
        *g = gelu_lut(t, *g) * u;
    }
}

/// In-place `x = gelu(x)` with the same table as [`gelu_tanh_mul_inplace`].
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    let t = gelu_table();
    for v in x.iter_mut() {
        *v = gelu_lut(t, *v);
    }
}

/// Dot product. Panics on length mismatch.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(default_backend(), a, b)
}

pub fn dot_with(be: Backend, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if simd(be) {
        // SAFETY: simd() confirmed AVX2+FMA.
        return unsafe { avx2::dot(a, b) };
    }
    let _ = be;
    let mut s = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            s[j] += x[j] * y[j];
        }
    }
    let mut t: f32 = s.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        t += x * y;
    }
    t
}

/// `out += a * x`. Panics on length mismatch.
pub fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(out.len(), x.len(), "axpy: length mismatch");
    // Plain loops: LLVM vectorises these to the baseline SIMD width, and they are
    // memory-bound anyway.
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// `x *= s`.
pub fn scale_inplace(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `x += y`. Panics on length mismatch.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_inplace: length mismatch");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `out = x * y` elementwise. Panics on length mismatch.
pub fn mul_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "mul_inplace: length mismatch");
    for (a, &b) in x.iter_mut().zip(y) {
        *a *= b;
    }
}

/// Dot product of two f16 vectors (raw bits, e.g. a query rounded to f16 against a row of
/// the f16 KV cache), as ggml's `ggml_vec_dot_f16`: f32 FMAs over 4 vector accumulators
/// (64 elements a step on AVX-512, 32 on AVX2), ggml's reduction, then the tail added in f64.
/// Panics on length mismatch.
pub fn dot_f16(a: &[u16], b: &[u16]) -> f32 {
    dot_f16_with(default_backend(), a, b)
}

pub fn dot_f16_with(be: Backend, a: &[u16], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: length mismatch");
    let (mut i, mut sum) = (0usize, 0f64);
    #[cfg(target_arch = "x86_64")]
    match isa(be) {
        // SAFETY (both arms): `isa` confirmed the features.
        Isa::Avx512 => (i, sum) = unsafe { avx512::dot_f16(a, b) },
        Isa::Avx2 => (i, sum) = unsafe { avx2::dot_f16(a, b) },
        Isa::Scalar => {}
    }
    let _ = be;
    for (&x, &y) in a[i..].iter().zip(&b[i..]) {
        sum += (f16_to_f32(x) * f16_to_f32(y)) as f64;
    }
    sum as f32
}

/// `y = f16(f32(y) + f32(x) * v)` elementwise on f16 bits, as ggml's `ggml_vec_mad_f16` (one
/// fused multiply-add per element, so the result does not depend on the vector width).
/// Panics on length mismatch.
pub fn mad_f16(y: &mut [u16], x: &[u16], v: f32) {
    assert_eq!(y.len(), x.len(), "mad_f16: length mismatch");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA+F16C.
        i = unsafe { avx2::mad_f16(y, x, v) };
    }
    for (o, &xv) in y[i..].iter_mut().zip(&x[i..]) {
        *o = f32_to_f16(f16_to_f32(xv).mul_add(v, f16_to_f32(*o)));
    }
}

/// Converts an f16 row (raw bits) to f32, with F16C where available.
/// Panics on length mismatch.
pub fn f16_to_f32_row(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32_row: length mismatch");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA+F16C.
        i = unsafe { avx2::f16_to_f32_row(src, dst) };
    }
    for (d, &x) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = f16_to_f32(x);
    }
}

/// Converts an f32 row to f16 bits (round to nearest even, as [`f32_to_f16`]), with F16C
/// where available. Panics on length mismatch.
pub fn f32_to_f16_row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_row: length mismatch");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA+F16C.
        i = unsafe { avx2::f32_to_f16_row(src, dst) };
    }
    for (d, &x) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = f32_to_f16(x);
    }
}

/// Rounds every value to the nearest f16 (as [`crate::f16::round_f16`]) in place.
pub fn round_f16_inplace(x: &mut [f32]) {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA+F16C.
        i = unsafe { avx2::round_f16_inplace(x) };
    }
    for v in &mut x[i..] {
        *v = crate::f16::round_f16(*v);
    }
}

/// `y += a * f32(x)` for an f16 row `x` (raw bits): attention's weighted sum of cached values
/// accumulated in f32. Panics on length mismatch.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) {
    assert_eq!(y.len(), x.len(), "axpy_f16: length mismatch");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if simd(default_backend()) {
        // SAFETY: simd() confirmed AVX2+FMA+F16C.
        i = unsafe { avx2::axpy_f16(y, a, x) };
    }
    for (o, &xv) in y[i..].iter_mut().zip(&x[i..]) {
        *o = f16_to_f32(xv).mul_add(a, *o);
    }
}

/// Index of the largest value (first on ties; NaNs ignored); `None` for an empty slice.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn c(bits: u32) -> __m256 {
        _mm256_set1_ps(f32::from_bits(bits))
    }

    /// Port of ggml's AVX2 `ggml_v_expf` (ARM optimized-routines algorithm, max error about
    /// 1.5 ulp), constant for constant.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn v_expf(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(12582912.0); // 0x1.8p23
        let z = _mm256_fmadd_ps(x, c(0x3fb8aa3b), r); // log2(e)
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, c(0x35bfbe8e), _mm256_fnmadd_ps(n, c(0x3f317200), x));
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let cm = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(126.0));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(0x3c072010), b, c(0x3d2b9f17)),
                u,
                _mm256_fmadd_ps(c(0x3e2aaf33), b, c(0x3efffedb)),
            ),
            u,
            _mm256_mul_ps(c(0x3f7ffff6), b),
        );
        if _mm256_movemask_ps(cm) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x82000000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(192.0));
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(cm, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(cm, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// ggml's AVX2 `ggml_vec_soft_max_f32` main loop: `x = exp(x - max)` for whole groups of
    /// 8, each group's sum (ggml's hsum order) added in f64. Returns (elements done, sum).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_sub_sum(x: &mut [f32], max: f32) -> (usize, f64) {
        let mut sum = 0f64;
        let mut i = 0;
        let vmax = _mm256_set1_ps(max);
        while i + 8 <= x.len() {
            // SAFETY: i + 8 <= len.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let v = v_expf(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
                _mm256_storeu_ps(p, v);
                let mut h = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_movehdup_ps(h));
                sum += _mm_cvtss_f32(h) as f64;
            }
            i += 8;
        }
        (i, sum)
    }

    /// `gate = silu(gate) * up` over whole groups of 8 (ggml's `ggml_vec_swiglu_f32`); returns
    /// the number of elements done. Lengths are equal (checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len().min(up.len());
        let mut i = 0;
        let one = _mm256_set1_ps(1.0);
        while i + 8 <= n {
            // SAFETY: i + 8 <= len of both.
            unsafe {
                let p = gate.as_mut_ptr().add(i);
                let x = _mm256_loadu_ps(p);
                let e = v_expf(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
                _mm256_storeu_ps(p, _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(i))));
            }
            i += 8;
        }
        i
    }

    /// ggml's F16C `ggml_vec_dot_f16` main loop: 4 accumulators of 8, `GGML_F32x8_REDUCE`.
    /// Returns (elements done, partial sum).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_f16(a: &[u16], b: &[u16]) -> (usize, f64) {
        let n = a.len().min(b.len());
        let np = n & !31;
        let mut s = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, acc) in s.iter_mut().enumerate() {
                // SAFETY: i + 32 <= n, so 8 elements at i + 8j are in bounds.
                unsafe {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(
                        a.as_ptr().add(i + 8 * j) as *const __m128i
                    ));
                    let y = _mm256_cvtph_ps(_mm_loadu_si128(
                        b.as_ptr().add(i + 8 * j) as *const __m128i
                    ));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
            }
            i += 32;
        }
        let s0 = _mm256_add_ps(s[0], s[2]);
        let s1 = _mm256_add_ps(s[1], s[3]);
        let s0 = _mm256_add_ps(s0, s1);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps::<1>(s0));
        let t1 = _mm_hadd_ps(t0, t0);
        (np, _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64)
    }

    /// f16 -> f32 over whole groups of 8; returns the number of elements done.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f16_to_f32_row(src: &[u16], dst: &mut [f32]) -> usize {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len of both.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            }
            i += 8;
        }
        i
    }

    /// f32 to f16 over whole groups of 8; returns the number of elements done.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn f32_to_f16_row(src: &[f32], dst: &mut [u16]) -> usize {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len of both.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        i
    }

    /// Rounds to f16 and back in place over whole groups of 8; returns the elements done.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn round_f16_inplace(x: &mut [f32]) -> usize {
        let n = x.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
                _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        i
    }

    /// `sum((x * x) as f64)` over whole groups of 8 (squares in f32, as ggml, summed in eight
    /// f64 lanes); returns the sum and the number of elements done.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum_squares_f64(x: &[f32]) -> (f64, usize) {
        let n = x.len();
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let sq = _mm256_mul_ps(v, v);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
            i += 8;
        }
        let mut lanes = [0f64; 4];
        // SAFETY: four f64 lanes into a four-element array.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(lo, hi)) };
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]), i)
    }

    /// f32 `y += a * x` over whole groups of 8 f16 inputs; returns the number of elements done.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) -> usize {
        let n = y.len().min(x.len());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len of both.
            unsafe {
                let py = y.as_mut_ptr().add(i);
                let ax = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
                _mm256_storeu_ps(py, _mm256_fmadd_ps(ax, va, _mm256_loadu_ps(py)));
            }
            i += 8;
        }
        i
    }

    /// `ggml_vec_mad_f16` over whole groups of 8; returns the number of elements done.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn mad_f16(y: &mut [u16], x: &[u16], v: f32) -> usize {
        let n = y.len().min(x.len());
        let vv = _mm256_set1_ps(v);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= len of both.
            unsafe {
                let py = y.as_mut_ptr().add(i) as *mut __m128i;
                let ay = _mm256_cvtph_ps(_mm_loadu_si128(py));
                let ax = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
                let r = _mm256_fmadd_ps(ax, vv, ay);
                _mm_storeu_si128(py, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r));
            }
            i += 8;
        }
        i
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load stays below n.
        unsafe {
            while i + 32 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *s = _mm256_fmadd_ps(
                        _mm256_loadu_ps(a.as_ptr().add(o)),
                        _mm256_loadu_ps(b.as_ptr().add(o)),
                        *s,
                    );
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc[0],
                );
                i += 8;
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut h = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        let mut s = _mm_cvtss_f32(h);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn c(bits: u32) -> __m512 {
        _mm512_set1_ps(f32::from_bits(bits))
    }

    /// Port of ggml's AVX-512 `ggml_v_expf` (same algorithm as the AVX2 one, but the final
    /// scaling is a `vscalefps`, so results can differ from it in the last bit).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn v_expf(x: __m512) -> __m512 {
        let r = _mm512_set1_ps(12582912.0);
        let z = _mm512_fmadd_ps(x, c(0x3fb8aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, c(0x35bfbe8e), _mm512_fnmadd_ps(n, c(0x3f317200), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3c072010), b, c(0x3d2b9f17)),
                u,
                _mm512_fmadd_ps(c(0x3e2aaf33), b, c(0x3efffedb)),
            ),
            u,
            _mm512_fmadd_ps(c(0x3f7ffff6), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
            _mm512_set1_ps(f32::INFINITY),
            zero,
        );
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// GCC's `_mm512_reduce_add_ps` order: halves, quarters, then two in-lane shuffles.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn reduce_add(v: __m512) -> f32 {
        let t = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
        let t = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
        let t = _mm_add_ps(t, _mm_shuffle_ps::<0b01_00_11_10>(t, t));
        let t = _mm_add_ps(t, _mm_shuffle_ps::<0b10_11_00_01>(t, t));
        _mm_cvtss_f32(t)
    }

    /// ggml's AVX-512 `ggml_vec_dot_f16` main loop: 4 accumulators of 16,
    /// `GGML_F32Cx16_REDUCE`. Returns (elements done, partial sum).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn dot_f16(a: &[u16], b: &[u16]) -> (usize, f64) {
        let n = a.len().min(b.len());
        let np = n & !63;
        let mut s = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, acc) in s.iter_mut().enumerate() {
                // SAFETY: i + 64 <= n, so 16 elements at i + 16j are in bounds.
                unsafe {
                    let x = _mm512_cvtph_ps(_mm256_loadu_si256(
                        a.as_ptr().add(i + 16 * j) as *const __m256i
                    ));
                    let y = _mm512_cvtph_ps(_mm256_loadu_si256(
                        b.as_ptr().add(i + 16 * j) as *const __m256i
                    ));
                    *acc = _mm512_fmadd_ps(x, y, *acc);
                }
            }
            i += 64;
        }
        let s0 = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
        (np, reduce_add(s0) as f64)
    }

    /// ggml's AVX-512 `ggml_vec_soft_max_f32` main loop (groups of 16).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn exp_sub_sum(x: &mut [f32], max: f32) -> (usize, f64) {
        let mut sum = 0f64;
        let mut i = 0;
        let vmax = _mm512_set1_ps(max);
        while i + 16 <= x.len() {
            // SAFETY: i + 16 <= len.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let v = v_expf(_mm512_sub_ps(_mm512_loadu_ps(p), vmax));
                _mm512_storeu_ps(p, v);
                sum += reduce_add(v) as f64;
            }
            i += 16;
        }
        (i, sum)
    }

    /// ggml's AVX-512 `ggml_vec_swiglu_f32` main loop (groups of 16).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len().min(up.len());
        let mut i = 0;
        let one = _mm512_set1_ps(1.0);
        while i + 16 <= n {
            // SAFETY: i + 16 <= len of both.
            unsafe {
                let p = gate.as_mut_ptr().add(i);
                let x = _mm512_loadu_ps(p);
                let e = v_expf(_mm512_sub_ps(_mm512_setzero_ps(), x));
                let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
                _mm512_storeu_ps(p, _mm512_mul_ps(s, _mm512_loadu_ps(up.as_ptr().add(i))));
            }
            i += 16;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_matches_formula_through_f16() {
        let t = gelu_table();
        for x in [-9.9f32, -3.0, -0.5, 0.0, 0.1, 1.0, 2.5, 9.99] {
            let want = f16_to_f32(f32_to_f16(gelu_tanh(f16_to_f32(f32_to_f16(x)))));
            assert_eq!(gelu_lut(t, x), want, "{x}");
        }
        assert_eq!(gelu_lut(t, -10.0), 0.0);
        assert_eq!(gelu_lut(t, 12.0), 12.0);
    }

    /// Every f16 rounding case (ties, subnormals, overflow, infinities, NaN) gives the scalar
    /// conversion's bits, for lengths with and without a SIMD tail.
    #[test]
    fn f16_rows_match_the_scalar_conversion_bit_for_bit() {
        let mut x: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            5.96e-8,
            2.98e-8,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            6.1e-5,
            -3.0e-6,
        ];
        x.extend(crate::quantize::test_values(5, 40));
        for len in [0, 3, 8, 17, x.len()] {
            let src = &x[..len];
            let mut got = vec![0u16; len];
            f32_to_f16_row(src, &mut got);
            let want: Vec<u16> = src.iter().map(|&v| f32_to_f16(v)).collect();
            assert_eq!(got, want, "len {len}");
            let mut r = src.to_vec();
            round_f16_inplace(&mut r);
            let want: Vec<u32> = src
                .iter()
                .map(|&v| crate::f16::round_f16(v).to_bits())
                .collect();
            assert_eq!(r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    /// The vector sum of squares agrees with ggml's sequential f64 sum to f32 resolution.
    #[test]
    fn rms_norm_matches_the_sequential_f64_sum() {
        for (len, seed) in [(1, 1), (7, 2), (64, 3), (576, 4), (1000, 5)] {
            let x = crate::quantize::test_values(seed, len);
            let w = crate::quantize::test_values(seed + 10, len);
            let mut got = vec![0.0; len];
            rms_norm(&x, &w, 1e-5, &mut got);
            let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
            let scale = 1.0 / ((sum / len as f64) as f32 + 1e-5).sqrt();
            for ((g, &v), &wi) in got.iter().zip(&x).zip(&w) {
                let want = (v * scale) * wi;
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "len {len}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn argmax_basics() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -1.0]), Some(1));
    }
}
