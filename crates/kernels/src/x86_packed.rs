//! AVX-512 VNNI kernels over [`PackedMatrix`] (see `packed.rs` for the layout).
//!
//! One zmm lane per weight row: a block's quants for 16 rows are eight 64-byte vectors
//! ("positions" 0..8), each multiplied with one broadcast activation dword by `vpdpbusd`, so a
//! block of 16 rows costs 8 `vpdpbusd` per activation row and no horizontal sums. `vpdpbusd`
//! multiplies unsigned by signed bytes, so signed weights are used as `w + off`
//! (Q4_0: raw nibbles, off 8; Q5_0: 5-bit values, off 16; Q8_0: bytes xor 0x80, off 128) and
//! the integer sum is started at `-off * sum(a)`, from the activation block sums the quantiser
//! records: the integer result is exact, as in ggml. Then per block
//! `acc = fma(d_w * d_a, isum, acc)` (and `acc = fma(m, s, acc)` for Q4_1), the same
//! sequence as the scalar twin, so the two agree bit for bit.
//!
//! Each call handles a range of row groups for all activation rows, in tiles of up to
//! [`TILE_N`] activation rows that share each unpacked weight block; while it works on a group
//! it prefetches the next one (a whole group ahead, spread over the blocks), which matters when
//! the weights stream from memory (decoding: with this the packed kernels read SmolLM2's
//! weights at about 40 GB/s on 2 threads, against 12 GB/s for the plain layout before).
//!
//! The K-quants (Q4_K, Q6_K) follow ggml's integer structure per super-block: sub-block dot
//! products by `vpdpbusd`, multiplied by the sub-block scales and summed in 32-bit integers
//! (`vpmulld`), the Q4_K mins term (`sum m_j * bsum_j`) and the Q6_K offset term
//! (`32 * sum sc_s * bsum_s`, its quants being used as unsigned `q + 32`) from the activation's
//! 16-element sums by `vpdpwssd`; then one or two FMAs per super-block, as the scalar twin.

use std::arch::x86_64::*;

use crate::DType;
use crate::packed::{GROUP, PackedMatrix};
use crate::quant::QAct;

/// Activation rows per register tile. 16 accumulators plus the 8 unpacked weight vectors
/// nearly fill the 32 zmm registers, but a 16-sequence decode step then unpacks (and reads
/// from memory) each weight block once instead of twice: 15 % more tokens/s than tiles of 8.
pub(crate) const TILE_N: usize = 16;

pub(crate) const K_Q4_0: u8 = 0;
pub(crate) const K_Q4_1: u8 = 1;
pub(crate) const K_Q5_0: u8 = 2;
pub(crate) const K_Q8_0: u8 = 3;

pub(crate) fn kind(dtype: DType) -> u8 {
    match dtype {
        DType::Q4_0 => K_Q4_0,
        DType::Q4_1 => K_Q4_1,
        DType::Q5_0 => K_Q5_0,
        DType::Q8_0 => K_Q8_0,
        _ => unreachable!("no packed layout for {dtype}"),
    }
}

/// log2 of the offset added to signed weights (0: unsigned type, no offset).
#[inline(always)]
const fn off_shift(k: u8) -> i64 {
    match k {
        K_Q4_0 => 3,
        K_Q5_0 => 4,
        K_Q8_0 => 7,
        _ => 0,
    }
}

/// Raw pointers to one activation row's quants, scales, Q8_1 sums and Q8_0 block sums.
#[derive(Clone, Copy)]
pub(crate) struct Tok {
    q: *const u8,
    d: *const f32,
    s: *const f32,
    ns: *const i32,
}

impl Tok {
    /// Row `i` of `act`, whose slices are bounds-checked here (the kernels then index blocks
    /// `< act.nb` only).
    #[inline(always)]
    pub(crate) fn new(act: &QAct, i: usize, with_s: bool, with_ns: bool) -> Tok {
        Tok {
            q: act.qs_row(i).as_ptr() as *const u8,
            d: act.d_row(i).as_ptr(),
            s: if with_s {
                act.s_row(i).as_ptr()
            } else {
                std::ptr::null()
            },
            ns: if with_ns {
                act.nsum_row(i).as_ptr()
            } else {
                std::ptr::null()
            },
        }
    }
}

/// The unsigned quants (`w + off`) of block `b` of a group for 16 rows, by position.
///
/// # Safety
/// `qs` and `ex` must point at the group's sections with block `b` in range.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack<const K: u8>(qs: *const u8, ex: *const u8, b: usize) -> [__m512i; 8] {
    // SAFETY: the caller guarantees block b's 256/512 quant bytes and 64 Q5_0 bytes exist.
    unsafe {
        let mut w = [_mm512_setzero_si512(); 8];
        if K == K_Q8_0 {
            let q = qs.add(b * 512);
            let flip = _mm512_set1_epi8(0x80u8 as i8);
            for (p, wp) in w.iter_mut().enumerate() {
                *wp = _mm512_xor_si512(_mm512_loadu_si512(q.add(64 * p) as *const _), flip);
            }
            return w;
        }
        let q = qs.add(b * 256);
        let m4 = _mm512_set1_epi8(0xF);
        for j in 0..4 {
            let v = _mm512_loadu_si512(q.add(64 * j) as *const _);
            w[j] = _mm512_and_si512(v, m4);
            w[j + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
        }
        if K == K_Q5_0 {
            let qh = _mm512_loadu_si512(ex.add(b * 64) as *const _);
            let m = _mm512_set1_epi8(0x10);
            // Bit 8i+p of each row's u32 is the high bit of element 4p+i: bring it to bit 4 of
            // byte i and merge it above the nibble (`w | (h & 0x10)` is ternlog 0xF8).
            let h = [
                _mm512_slli_epi32::<4>(qh),
                _mm512_slli_epi32::<3>(qh),
                _mm512_slli_epi32::<2>(qh),
                _mm512_slli_epi32::<1>(qh),
                qh,
                _mm512_srli_epi32::<1>(qh),
                _mm512_srli_epi32::<2>(qh),
                _mm512_srli_epi32::<3>(qh),
            ];
            for p in 0..8 {
                w[p] = _mm512_ternarylogic_epi32::<0xF8>(w[p], h[p], m);
            }
        }
        w
    }
}

/// One block of 16 weight rows against `N` activation rows.
///
/// # Safety
/// Block `b` must exist in every `toks[k]` row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn step<const K: u8, const N: usize>(
    w: &[__m512i; 8],
    dw: __m512,
    mw: __m512,
    toks: &[Tok; N],
    b: usize,
    acc: &mut [__m512; N],
) {
    // SAFETY: the caller guarantees 32 quants, a scale and (as the type needs) a sum at block b.
    unsafe {
        let z = _mm512_setzero_si512();
        for k in 0..N {
            let t = toks[k];
            let a = t.q.add(32 * b) as *const i32;
            let bc = |p: usize| _mm512_set1_epi32(a.add(p).read_unaligned());
            let init = if off_shift(K) > 0 {
                _mm512_sll_epi32(
                    _mm512_set1_epi32(*t.ns.add(b)),
                    _mm_set_epi64x(0, off_shift(K)),
                )
            } else {
                z
            };
            let mut i0 = _mm512_dpbusd_epi32(init, w[0], bc(0));
            let mut i1 = _mm512_dpbusd_epi32(z, w[4], bc(4));
            i0 = _mm512_dpbusd_epi32(i0, w[1], bc(1));
            i1 = _mm512_dpbusd_epi32(i1, w[5], bc(5));
            i0 = _mm512_dpbusd_epi32(i0, w[2], bc(2));
            i1 = _mm512_dpbusd_epi32(i1, w[6], bc(6));
            i0 = _mm512_dpbusd_epi32(i0, w[3], bc(3));
            i1 = _mm512_dpbusd_epi32(i1, w[7], bc(7));
            let f = _mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1));
            let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*t.d.add(b)));
            acc[k] = _mm512_fmadd_ps(dd, f, acc[k]);
            if K == K_Q4_1 {
                acc[k] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*t.s.add(b)), acc[k]);
            }
        }
    }
}

/// Output pointers: activation row `t`'s results for weight rows `r0..r0 + 16` start at
/// `base + t * rows + r0`; `mask` keeps the rows that exist.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub base: *mut f32,
    pub rows: usize,
}

/// Groups `g0..g1` against activation rows `t0..t0 + N`.
///
/// # Safety
/// As for [`groups`], with `t0 + N <= n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const K: u8, const N: usize>(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    t0: usize,
    out: Out,
    prefetch: bool,
) {
    let mut toks = [Tok::new(act, t0, false, false); N];
    for (k, t) in toks.iter_mut().enumerate() {
        *t = Tok::new(act, t0 + k, K == K_Q4_1, off_shift(K) > 0);
    }
    let nb = pm.nb();
    let gb = pm.group_bytes();
    let data = pm.data();
    // Prefetch the next group's bytes, an equal share per block.
    let per_b = (gb / nb.max(1)).div_ceil(64);
    for g in g0..g1 {
        let (qs, d, ex) = pm.sections(g);
        let (qs, d, ex) = (qs.as_ptr(), d.as_ptr(), ex.as_ptr());
        let next = data.as_ptr().wrapping_add((g + 1) * gb);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: b < nb, the group's block count; every token row has nb blocks
            // (`Tok::new` took rows of `act`, whose `nb` equals the matrix's).
            unsafe {
                if prefetch {
                    for l in 0..per_b {
                        let p = next.wrapping_add((b * per_b + l) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
                let w = unpack::<K>(qs, ex, b);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(32 * b) as *const _));
                let mw = if K == K_Q4_1 {
                    _mm512_cvtph_ps(_mm256_loadu_si256(ex.add(32 * b) as *const _))
                } else {
                    _mm512_setzero_ps()
                };
                step::<K, N>(&w, dw, mw, &toks, b, &mut acc);
            }
        }
        let r0 = g * GROUP;
        let live = GROUP.min(pm.rows() - r0);
        let mask: __mmask16 = if live == GROUP {
            0xFFFF
        } else {
            (1u16 << live) - 1
        };
        for (k, a) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees `out` holds (t0 + N) * rows floats and no other
            // thread writes these; lanes past `rows` are masked off.
            unsafe { _mm512_mask_storeu_ps(out.base.add((t0 + k) * out.rows + r0), mask, *a) };
        }
    }
}

macro_rules! by_n {
    ($k:ident, $n:expr, $($arg:expr),*) => {
        match $n {
            1 => tile::<$k, 1>($($arg),*),
            2 => tile::<$k, 2>($($arg),*),
            3 => tile::<$k, 3>($($arg),*),
            4 => tile::<$k, 4>($($arg),*),
            5 => tile::<$k, 5>($($arg),*),
            6 => tile::<$k, 6>($($arg),*),
            7 => tile::<$k, 7>($($arg),*),
            8 => tile::<$k, 8>($($arg),*),
            9 => tile::<$k, 9>($($arg),*),
            10 => tile::<$k, 10>($($arg),*),
            11 => tile::<$k, 11>($($arg),*),
            12 => tile::<$k, 12>($($arg),*),
            13 => tile::<$k, 13>($($arg),*),
            14 => tile::<$k, 14>($($arg),*),
            15 => tile::<$k, 15>($($arg),*),
            _ => tile::<$k, 16>($($arg),*),
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_k<const K: u8>(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    n: usize,
    out: Out,
) {
    let mut t0 = 0;
    while t0 < n {
        let cnt = TILE_N.min(n - t0);
        // SAFETY: forwarded caller contract; the features are enabled on this function.
        unsafe { by_n!(K, cnt, pm, g0, g1, act, t0, out, t0 == 0 && n <= TILE_N) };
        t0 += cnt;
    }
}

/// Groups `g0..g1` of `pm` against activation rows `0..n`, results to
/// `out[t * pm.rows() + row]`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C. `out` must point at
/// `n * pm.rows()` floats that no other thread accesses in the rows of these groups.
/// `act` must be quantised for `pm`'s type with `act.cols == pm.cols()` and hold `n` rows.
pub(crate) unsafe fn groups(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    n: usize,
    out: Out,
) {
    assert!(g1 <= pm.groups() && act.cols == pm.cols() && act.nb == pm.nb());
    assert!(act.qs.len() >= n * pm.cols() && out.rows == pm.rows());
    if matches!(pm.dtype(), DType::Q4_K | DType::Q6_K) {
        assert!(act.bsums.len() >= n * act.nb * 16);
        // SAFETY: forwarded caller contract.
        unsafe { groups_kq(pm, g0, g1, act, n, out) };
        return;
    }
    // SAFETY: forwarded caller contract.
    unsafe {
        match kind(pm.dtype()) {
            K_Q4_0 => groups_k::<K_Q4_0>(pm, g0, g1, act, n, out),
            K_Q4_1 => groups_k::<K_Q4_1>(pm, g0, g1, act, n, out),
            K_Q5_0 => groups_k::<K_Q5_0>(pm, g0, g1, act, n, out),
            _ => groups_k::<K_Q8_0>(pm, g0, g1, act, n, out),
        }
    }
}

/// Activation rows per register tile for the K-quant kernels (more state per row).
pub(crate) const TILE_N_K: usize = 4;

/// Raw pointers to one Q8_K activation row: quants, per-super-block scales, 16-element sums.
#[derive(Clone, Copy)]
struct TokK {
    q: *const u8,
    d: *const f32,
    bs: *const i16,
}

impl TokK {
    fn new(act: &QAct, i: usize) -> TokK {
        TokK {
            q: act.qs_row(i).as_ptr() as *const u8,
            d: act.d_row(i).as_ptr(),
            bs: act.bsums_row(i).as_ptr(),
        }
    }
}

/// Q4_K groups `g0..g1` against activation rows `t0..t0 + N` (layout: `packed::pack_q4_k`).
/// Per super-block and row: the 8 sub-block dot products (`vpdpbusd`), scaled and summed in
/// integers (`vpmulld`), the mins term from the activation block sums (`vpdpwssd`), then
/// `acc = fma(d * d_a, sumi, acc)` and `acc = fma(-(dmin * d_a), summ, acc)` as the scalar
/// twin.
///
/// # Safety
/// As for [`groups`], with `t0 + N <= n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q4k<const N: usize>(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    t0: usize,
    out: Out,
    prefetch: bool,
) {
    use crate::packed::{K4_QS, K4_SC};
    let toks: [TokK; N] = std::array::from_fn(|k| TokK::new(act, t0 + k));
    let nsb = pm.nb();
    let gb = pm.group_bytes();
    let qsb = gb / nsb.max(1);
    let data = pm.data();
    let per_b = qsb.div_ceil(64);
    let m4 = _mm512_set1_epi8(0xF);
    for g in g0..g1 {
        let (qs, d, ex) = pm.sections(g);
        let (qs, d, ex) = (qs.as_ptr(), d.as_ptr(), ex.as_ptr());
        let next = data.as_ptr().wrapping_add((g + 1) * gb);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nsb {
            // SAFETY: b < nsb super-blocks exist in the group's sections (sizes from
            // `packed::spec`), and in every activation row (256 quants, a scale and 16 sums
            // per super-block; rows bounds-checked by `TokK::new`).
            unsafe {
                if prefetch {
                    for l in 0..per_b {
                        let p = next.wrapping_add((b * per_b + l) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
                let t = qs.add(b * (K4_QS + 256));
                let mut sumi = [_mm512_setzero_si512(); N];
                for s in 0..8 {
                    let q = t.add(512 * (s / 2));
                    let mut w = [_mm512_setzero_si512(); 8];
                    for (p, wp) in w.iter_mut().enumerate() {
                        let v = _mm512_loadu_si512(q.add(64 * p) as *const _);
                        let v = if s % 2 == 1 {
                            _mm512_srli_epi16::<4>(v)
                        } else {
                            v
                        };
                        *wp = _mm512_and_si512(v, m4);
                    }
                    let sc =
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(t.add(K4_QS + 16 * s) as *const _));
                    for k in 0..N {
                        let a = toks[k].q.add(256 * b + 32 * s) as *const i32;
                        let mut i = _mm512_setzero_si512();
                        for (p, wp) in w.iter().enumerate() {
                            i = _mm512_dpbusd_epi32(
                                i,
                                *wp,
                                _mm512_set1_epi32(a.add(p).read_unaligned()),
                            );
                        }
                        sumi[k] = _mm512_add_epi32(sumi[k], _mm512_mullo_epi32(i, sc));
                    }
                }
                let mut summ = [_mm512_setzero_si512(); N];
                for j in 0..8 {
                    let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        t.add(K4_QS + K4_SC + 16 * j) as *const _
                    ));
                    let m2 = _mm512_or_si512(m, _mm512_slli_epi32::<16>(m));
                    for k in 0..N {
                        let bs = (toks[k].bs.add(16 * b + 2 * j) as *const i32).read_unaligned();
                        summ[k] = _mm512_dpwssd_epi32(summ[k], m2, _mm512_set1_epi32(bs));
                    }
                }
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(32 * b) as *const _));
                let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(ex.add(32 * b) as *const _));
                for k in 0..N {
                    let da = _mm512_set1_ps(*toks[k].d.add(b));
                    acc[k] =
                        _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(sumi[k]), acc[k]);
                    acc[k] = _mm512_fnmadd_ps(
                        _mm512_mul_ps(dmw, da),
                        _mm512_cvtepi32_ps(summ[k]),
                        acc[k],
                    );
                }
            }
        }
        // SAFETY: forwarded caller contract (`out` holds these rows).
        unsafe { store_acc(pm, g, &acc, t0, out) };
    }
}

/// Q6_K groups `g0..g1` against activation rows `t0..t0 + N` (layout: `packed::pack_q6_k`).
/// The 6-bit quants are used as unsigned `q + 32`, and `32 * sum_s sc_s * bsum_s` (from the
/// activation's 16-element sums, `vpdpwssd`) is taken off the integer sum, which is then
/// exactly ggml's; then `acc = fma(d * d_a, sumi, acc)`.
///
/// # Safety
/// As for [`groups`], with `t0 + N <= n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q6k<const N: usize>(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    t0: usize,
    out: Out,
    prefetch: bool,
) {
    use crate::packed::{K6_QH, K6_QL};
    let toks: [TokK; N] = std::array::from_fn(|k| TokK::new(act, t0 + k));
    let nsb = pm.nb();
    let gb = pm.group_bytes();
    let data = pm.data();
    let qsb = K6_QL + K6_QH + crate::packed::K6_SC;
    let per_b = (gb / nsb.max(1)).div_ceil(64);
    let m4 = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    for g in g0..g1 {
        let (qs, d, _) = pm.sections(g);
        let (qs, d) = (qs.as_ptr(), d.as_ptr());
        let next = data.as_ptr().wrapping_add((g + 1) * gb);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nsb {
            // SAFETY: as in `tile_q4k`.
            unsafe {
                if prefetch {
                    for l in 0..per_b {
                        let p = next.wrapping_add((b * per_b + l) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
                let t = qs.add(b * qsb);
                let mut sumi = [_mm512_setzero_si512(); N];
                for n in 0..2 {
                    for kq in 0..4 {
                        let mut w = [_mm512_setzero_si512(); 8];
                        for (p, wp) in w.iter_mut().enumerate() {
                            let v = _mm512_loadu_si512(
                                t.add(1024 * n + 512 * (kq % 2) + 64 * p) as *const _
                            );
                            let nib = if kq >= 2 {
                                _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4)
                            } else {
                                _mm512_and_si512(v, m4)
                            };
                            let h = _mm512_loadu_si512(t.add(K6_QL + 512 * n + 64 * p) as *const _);
                            let h = match kq {
                                0 => _mm512_slli_epi16::<4>(h),
                                1 => _mm512_slli_epi16::<2>(h),
                                2 => h,
                                _ => _mm512_srli_epi16::<2>(h),
                            };
                            *wp = _mm512_ternarylogic_epi32::<0xF8>(nib, h, m30);
                        }
                        let pair = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                            t.add(K6_QL + K6_QH + 32 * (4 * n + kq)) as *const _,
                        ));
                        let sc0 = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pair));
                        let sc1 = _mm512_srai_epi32::<16>(pair);
                        for k in 0..N {
                            let a = toks[k].q.add(256 * b + 128 * n + 32 * kq) as *const i32;
                            let bc = |p: usize| _mm512_set1_epi32(a.add(p).read_unaligned());
                            let mut i0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bc(0));
                            let mut i1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[4], bc(4));
                            for p in 1..4 {
                                i0 = _mm512_dpbusd_epi32(i0, w[p], bc(p));
                                i1 = _mm512_dpbusd_epi32(i1, w[p + 4], bc(p + 4));
                            }
                            let si = _mm512_add_epi32(
                                _mm512_mullo_epi32(i0, sc0),
                                _mm512_mullo_epi32(i1, sc1),
                            );
                            sumi[k] = _mm512_add_epi32(sumi[k], si);
                        }
                    }
                }
                let mut corr = [_mm512_setzero_si512(); N];
                for kk in 0..8 {
                    let pair = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                        t.add(K6_QL + K6_QH + 32 * kk) as *const _,
                    ));
                    for k in 0..N {
                        let bs = (toks[k].bs.add(16 * b + 2 * kk) as *const i32).read_unaligned();
                        corr[k] = _mm512_dpwssd_epi32(corr[k], pair, _mm512_set1_epi32(bs));
                    }
                }
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(32 * b) as *const _));
                for k in 0..N {
                    let s = _mm512_sub_epi32(sumi[k], _mm512_slli_epi32::<5>(corr[k]));
                    let da = _mm512_set1_ps(*toks[k].d.add(b));
                    acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(s), acc[k]);
                }
            }
        }
        // SAFETY: forwarded caller contract (`out` holds these rows).
        unsafe { store_acc(pm, g, &acc, t0, out) };
    }
}

/// Stores a group's accumulators for activation rows `t0..t0 + N` (lanes past the matrix's
/// rows masked off).
///
/// # Safety
/// `out` must hold `(t0 + N) * rows` floats that no other thread writes in this group's rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn store_acc<const N: usize>(
    pm: &PackedMatrix,
    g: usize,
    acc: &[__m512; N],
    t0: usize,
    out: Out,
) {
    let r0 = g * GROUP;
    let live = GROUP.min(pm.rows() - r0);
    let mask: __mmask16 = if live == GROUP {
        0xFFFF
    } else {
        (1u16 << live) - 1
    };
    for (k, a) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees `out` holds (t0 + N) * rows floats and no other
        // thread writes these; lanes past `rows` are masked off.
        unsafe { _mm512_mask_storeu_ps(out.base.add((t0 + k) * out.rows + r0), mask, *a) };
    }
}

macro_rules! by_n_k {
    ($f:ident, $n:expr, $($arg:expr),*) => {
        match $n {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            _ => $f::<4>($($arg),*),
        }
    };
}

/// [`groups`] for the K-quant layouts (Q4_K, Q6_K).
///
/// # Safety
/// As for [`groups`]; `act` must be Q8_K activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_kq(pm: &PackedMatrix, g0: usize, g1: usize, act: &QAct, n: usize, out: Out) {
    let mut t0 = 0;
    while t0 < n {
        let cnt = TILE_N_K.min(n - t0);
        let pf = t0 == 0 && n <= TILE_N_K;
        // SAFETY: forwarded caller contract; the features are enabled on this function.
        unsafe {
            if pm.dtype() == DType::Q4_K {
                by_n_k!(tile_q4k, cnt, pm, g0, g1, act, t0, out, pf)
            } else {
                by_n_k!(tile_q6k, cnt, pm, g0, g1, act, t0, out, pf)
            }
        }
        t0 += cnt;
    }
}

/// The packing transpose: for rows `r` in 0..16, the 16 bytes at `src + r * stride` are four
/// dwords; dword `j` of row `r` goes to `dst + 64 j + 4 r`.
///
/// # Safety
/// The CPU must have AVX-512 F; 16 bytes must be readable at each `src + r * stride` and 256
/// bytes writable at `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn transpose16(src: *const u8, stride: usize, dst: *mut u8) {
    // SAFETY: the caller guarantees the ranges.
    unsafe {
        let ld = |r: usize| _mm_loadu_si128(src.add(r * stride) as *const __m128i);
        // Lane L of z(i) holds row 4L + i.
        let z = |i: usize| {
            let v = _mm512_castsi128_si512(ld(i));
            let v = _mm512_inserti32x4::<1>(v, ld(4 + i));
            let v = _mm512_inserti32x4::<2>(v, ld(8 + i));
            _mm512_inserti32x4::<3>(v, ld(12 + i))
        };
        let (a, b, c, d) = (z(0), z(1), z(2), z(3));
        let t0 = _mm512_unpacklo_epi32(a, b);
        let t1 = _mm512_unpackhi_epi32(a, b);
        let t2 = _mm512_unpacklo_epi32(c, d);
        let t3 = _mm512_unpackhi_epi32(c, d);
        _mm512_storeu_si512(dst as *mut _, _mm512_unpacklo_epi64(t0, t2));
        _mm512_storeu_si512(dst.add(64) as *mut _, _mm512_unpackhi_epi64(t0, t2));
        _mm512_storeu_si512(dst.add(128) as *mut _, _mm512_unpacklo_epi64(t1, t3));
        _mm512_storeu_si512(dst.add(192) as *mut _, _mm512_unpackhi_epi64(t1, t3));
    }
}
