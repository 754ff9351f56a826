//! x86-64 SIMD kernels (AVX2 + FMA + F16C, optionally VNNI), selected at run time.
//!
//! The integer dot products mirror ggml-cpu/arch/x86/quants.c: the same widening scheme
//! (`maddubs`/`madd`, or `vpdpbusd` which yields the same 32-bit lane sums), the same 8-lane
//! f32 accumulator updated per block with `fmadd(d_w * d_a, lanes, acc)`, and the same final
//! horizontal sum. Each (weight row, activation row) pair therefore rounds exactly like
//! llama.cpp's `ggml_vec_dot_*` on AVX2, and tiling over activation rows does not change any
//! result: tiles only share the weight decoding.
//!
//! Every function here is `#[target_feature]`; callers must have checked the features (the
//! matmul dispatcher only hands out these kernels for an available [`Backend`](crate::Backend)).
//! Kernels assert the slice lengths they rely on once per call, then use raw-pointer loads.

use std::arch::x86_64::*;

use crate::matmul::TILE_OUT;
use crate::quant::QAct;

/// How far ahead of the rows in use the small-batch kernels prefetch weights, in bytes.
const PF_DIST: usize = 4096;

/// Instantiates a kernel generic over the activation tile height for `cnt` in 1..=4.
macro_rules! dispatch_n {
    ($f:ident, $cnt:expr, $($arg:expr),*) => {
        match $cnt {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            _ => $f::<4>($($arg),*),
        }
    };
}

/// Runs a legacy row kernel over all `nrows`: two weight rows at a time for 1-2 activation
/// rows (where FMA latency would otherwise bound the loop), one at a time for 3-4.
macro_rules! rows_by_tile {
    ($f:ident, $cnt:expr, $w:expr, $rb:expr, $nrows:expr, $act:expr, $i0:expr, $out:expr) => {{
        let (nrows, even) = ($nrows, $nrows & !1);
        match $cnt {
            1 => {
                $f::<2, 1>($w, $rb, (0, even), $act, $i0, $out);
                $f::<1, 1>($w, $rb, (even, nrows), $act, $i0, $out);
            }
            2 => {
                $f::<2, 2>($w, $rb, (0, even), $act, $i0, $out);
                $f::<1, 2>($w, $rb, (even, nrows), $act, $i0, $out);
            }
            3 => $f::<1, 3>($w, $rb, (0, nrows), $act, $i0, $out),
            _ => $f::<1, 4>($w, $rb, (0, nrows), $act, $i0, $out),
        }
    }};
}

/// Helpers and the kernels for the legacy 32-element block types, whose inner product is the
/// only place where VNNI changes the instruction sequence. Instantiated once per feature set.
macro_rules! legacy_kernels {
    ($feat:literal, |$x:ident, $y:ident| $mul_us:expr) => {
        /// u8 x i8 products summed in groups of four into eight i32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn mul_us($x: __m256i, $y: __m256i) -> __m256i {
            $mul_us
        }

        /// i8 x i8 through the sign trick (ggml's `mul_sum_i8_pairs_float` before the cvt);
        /// `ax` is `|x|`, precomputed once per weight block.
        #[inline]
        #[target_feature(enable = $feat)]
        fn mul_ss(ax: __m256i, x: __m256i, y: __m256i) -> __m256i {
            mul_us(ax, _mm256_sign_epi8(y, x))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum8(v: __m256) -> f32 {
            let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            _mm_cvtss_f32(r)
        }

        /// 16 bytes of nibbles to 32 bytes: low nibbles first, then high (ggml's layout).
        /// A broadcast load plus a per-lane variable shift instead of ggml's insert: same bytes,
        /// but no trip through the shuffle port, which the scale broadcasts already keep busy.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles32(p: *const u8) -> __m256i {
            // SAFETY: caller guarantees 16 readable bytes at p.
            let t = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)) };
            let t = _mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
            _mm256_and_si256(t, _mm256_set1_epi8(0xF))
        }

        /// The two f16 values at `p` (a legacy block's d, and m for Q4_1) as lanes 0 and 1.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16_pair(p: *const u8) -> __m128 {
            let r: __m128;
            // SAFETY: caller guarantees 4 readable bytes at p; F16C is enabled for this function.
            // Inline asm because with only lane 0 used LLVM rewrites `cvtsi32_si128` into a
            // `vpinsrw` that merges into an arbitrary live register (often an accumulator),
            // chaining every block on the previous block's FMA; `vmovd` writes the whole register.
            unsafe {
                std::arch::asm!(
                    "vmovd {t}, dword ptr [{p}]",
                    "vcvtph2ps {t}, {t}",
                    p = in(reg) p,
                    t = out(xmm_reg) r,
                    options(pure, readonly, nostack, preserves_flags)
                );
            }
            r
        }

        /// 32 bits to 32 bytes of 0x00 / 0xFF (ggml's `bytes_from_bits_32`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bits32(p: *const u8) -> __m256i {
            // SAFETY: caller guarantees 4 readable bytes at p.
            let x32 = unsafe { (p as *const i32).read_unaligned() };
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
            let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn loadu(p: *const i8) -> __m256i {
            // SAFETY: caller guarantees 32 readable bytes at p.
            unsafe { _mm256_loadu_si256(p as *const __m256i) }
        }

        /// Activation-row pointers for a tile, after checking the rows exist in full.
        #[inline(always)]
        fn act_ptrs<const N: usize>(act: &QAct, i0: usize, with_s: bool) -> ([*const i8; N], [*const f32; N], [*const f32; N]) {
            let mut q = [std::ptr::null(); N];
            let mut d = [std::ptr::null(); N];
            let mut s = [std::ptr::null(); N];
            for k in 0..N {
                q[k] = act.qs_row(i0 + k).as_ptr();
                d[k] = act.d_row(i0 + k).as_ptr();
                if with_s {
                    s[k] = act.s_row(i0 + k).as_ptr();
                }
            }
            (q, d, s)
        }

        /// Symmetric legacy types (Q4_0, Q5_0, Q8_0) against Q8_0 for weight rows
        /// `r0..r1` (a multiple of `R` rows) and `N` activation rows. `decode` yields the signed
        /// quants of a block; `BB` is the block size in bytes (d is its first field).
        ///
        /// `R` weight rows run side by side because each (row, activation) pair is one serial
        /// FMA chain (ggml's accumulation order, kept for bit-exactness): with a single pair
        /// the loop would wait on FMA latency.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn sym_rows<const R: usize, const N: usize, const BB: usize>(
            w: &[u8],
            rb: usize,
            (r0, r1): (usize, usize),
            act: &QAct,
            i0: usize,
            out: &mut [f32; TILE_OUT],
            decode: impl Fn(*const u8) -> __m256i,
        ) {
            let nb = act.cols / 32;
            assert!(rb >= nb * BB && w.len() >= r1 * rb && (r1 - r0) % R == 0);
            let (yq, yd, _) = act_ptrs::<N>(act, i0, false);
            let mut r = r0;
            while r < r1 {
                // SAFETY: the asserts above and in `act_ptrs` bound every pointer below: each
                // weight row holds nb blocks of BB bytes, each activation row nb*32 quants and
                // nb scales.
                unsafe {
                    let row = w.as_ptr().add(r * rb);
                    let mut acc = [[_mm256_setzero_ps(); N]; R];
                    for b in 0..nb {
                        if N <= 2 {
                            let pf = row.wrapping_add(PF_DIST + b * R * BB);
                            _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
                            if R * BB > 64 {
                                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64) as *const i8);
                            }
                        }
                        let mut d0 = [_mm256_setzero_ps(); R];
                        let mut qx = [_mm256_setzero_si256(); R];
                        let mut ax = [_mm256_setzero_si256(); R];
                        for rr in 0..R {
                            let blk = row.add(rr * rb + b * BB);
                            d0[rr] = _mm256_broadcastss_ps(f16_pair(blk));
                            qx[rr] = decode(blk);
                            ax[rr] = _mm256_sign_epi8(qx[rr], qx[rr]);
                        }
                        for k in 0..N {
                            let qy = loadu(yq[k].add(b * 32));
                            let d1 = _mm256_broadcast_ss(&*yd[k].add(b));
                            for rr in 0..R {
                                let d = _mm256_mul_ps(d0[rr], d1);
                                let p = _mm256_cvtepi32_ps(mul_ss(ax[rr], qx[rr], qy));
                                acc[rr][k] = _mm256_fmadd_ps(d, p, acc[rr][k]);
                            }
                        }
                    }
                    for rr in 0..R {
                        for k in 0..N {
                            out[(r + rr) * 4 + k] = hsum8(acc[rr][k]);
                        }
                    }
                }
                r += R;
            }
        }

        /// Q4_1 against Q8_1, shaped like [`sym_rows`]. The `m * s` term accumulates in lane 1
        /// of an xmm register (lane 0 collects a product nobody reads), which is exactly ggml's
        /// scalar `summs = fma(m, s, summs)` without extracting m from the converted pair.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q4_1_rows<const R: usize, const N: usize>(
            w: &[u8],
            rb: usize,
            (r0, r1): (usize, usize),
            act: &QAct,
            i0: usize,
            out: &mut [f32; TILE_OUT],
        ) {
            let nb = act.cols / 32;
            assert!(rb >= nb * 20 && w.len() >= r1 * rb && (r1 - r0) % R == 0);
            let (yq, yd, ys) = act_ptrs::<N>(act, i0, true);
            let mut r = r0;
            while r < r1 {
                // SAFETY: as in sym_rows, with 20-byte blocks.
                unsafe {
                    let row = w.as_ptr().add(r * rb);
                    let mut acc = [[_mm256_setzero_ps(); N]; R];
                    let mut summs = [[_mm_setzero_ps(); N]; R];
                    for b in 0..nb {
                        if N <= 2 {
                            let pf = row.wrapping_add(PF_DIST + b * R * 20);
                            _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
                        }
                        let mut dm = [_mm_setzero_ps(); R];
                        let mut d0 = [_mm256_setzero_ps(); R];
                        let mut qx = [_mm256_setzero_si256(); R];
                        for rr in 0..R {
                            let blk = row.add(rr * rb + b * 20);
                            dm[rr] = f16_pair(blk);
                            d0[rr] = _mm256_broadcastss_ps(dm[rr]);
                            qx[rr] = nibbles32(blk.add(4));
                        }
                        for k in 0..N {
                            let qy = loadu(yq[k].add(b * 32));
                            let d1 = _mm256_broadcast_ss(&*yd[k].add(b));
                            let s1 = _mm_broadcast_ss(&*ys[k].add(b));
                            for rr in 0..R {
                                let dd = _mm256_mul_ps(d0[rr], d1);
                                let p = _mm256_cvtepi32_ps(mul_us(qx[rr], qy));
                                acc[rr][k] = _mm256_fmadd_ps(dd, p, acc[rr][k]);
                                // ggml's `summs += m * s`, which C compilers contract to an FMA.
                                summs[rr][k] = _mm_fmadd_ps(dm[rr], s1, summs[rr][k]);
                            }
                        }
                    }
                    for rr in 0..R {
                        for k in 0..N {
                            let m = _mm_cvtss_f32(_mm_movehdup_ps(summs[rr][k]));
                            out[(r + rr) * 4 + k] = hsum8(acc[rr][k]) + m;
                        }
                    }
                }
                r += R;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q4_0_rows<const R: usize, const N: usize>(w: &[u8], rb: usize, rows: (usize, usize), act: &QAct, i0: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: sym_rows passes pointers to whole 18-byte blocks.
            unsafe {
                sym_rows::<R, N, 18>(w, rb, rows, act, i0, out, |blk| {
                    _mm256_sub_epi8(nibbles32(blk.add(2)), _mm256_set1_epi8(8))
                })
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q5_0_rows<const R: usize, const N: usize>(w: &[u8], rb: usize, rows: (usize, usize), act: &QAct, i0: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: sym_rows passes pointers to whole 22-byte blocks.
            unsafe {
                sym_rows::<R, N, 22>(w, rb, rows, act, i0, out, |blk| {
                    let hi = _mm256_andnot_si256(bits32(blk.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
                    _mm256_or_si256(nibbles32(blk.add(6)), hi)
                })
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q8_0_rows<const R: usize, const N: usize>(w: &[u8], rb: usize, rows: (usize, usize), act: &QAct, i0: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: sym_rows passes pointers to whole 34-byte blocks.
            unsafe { sym_rows::<R, N, 34>(w, rb, rows, act, i0, out, |blk| loadu(blk.add(2) as *const i8)) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn q4_0(w: &[u8], rb: usize, nrows: usize, act: &QAct, i0: usize, cnt: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: same features as this function.
            unsafe { rows_by_tile!(q4_0_rows, cnt, w, rb, nrows, act, i0, out) }
        }
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn q4_1(w: &[u8], rb: usize, nrows: usize, act: &QAct, i0: usize, cnt: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: same features as this function.
            unsafe { rows_by_tile!(q4_1_rows, cnt, w, rb, nrows, act, i0, out) }
        }
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn q5_0(w: &[u8], rb: usize, nrows: usize, act: &QAct, i0: usize, cnt: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: same features as this function.
            unsafe { rows_by_tile!(q5_0_rows, cnt, w, rb, nrows, act, i0, out) }
        }
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn q8_0(w: &[u8], rb: usize, nrows: usize, act: &QAct, i0: usize, cnt: usize, out: &mut [f32; TILE_OUT]) {
            // SAFETY: same features as this function.
            unsafe { rows_by_tile!(q8_0_rows, cnt, w, rb, nrows, act, i0, out) }
        }
    };
}

/// AVX2 + FMA + F16C: all kernels, plus activation quantisation.
pub(crate) mod avx2 {
    use super::*;

    legacy_kernels!("avx2,fma,f16c", |x, y| _mm256_madd_epi16(
        _mm256_maddubs_epi16(x, y),
        _mm256_set1_epi16(1)
    ));

    /// One f16 at `p` (reads exactly 2 bytes, unlike `f16_pair`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn h2f(p: *const u8) -> f32 {
        // SAFETY: caller guarantees 2 readable bytes at p.
        let bits = unsafe { (p as *const u16).read_unaligned() } as u32;
        // Not `_mm_cvtph_ps(_mm_cvtsi32_si128(..))`: LLVM sees that only lane 0 matters and
        // emits `vpinsrw` into an arbitrary live register (often an accumulator), chaining
        // every block on the previous block's FMA. `vmovd` writes the whole register.
        let r: f32;
        // SAFETY: F16C is enabled for this function; the asm reads `bits` and writes only
        // the named output register.
        unsafe {
            std::arch::asm!(
                "vmovd {t}, {b:e}",
                "vcvtph2ps {t}, {t}",
                b = in(reg) bits,
                t = out(xmm_reg) r,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        r
    }

    /// ggml's `get_scale_shuffle_k4`: broadcasts 16-bit scale i to all lanes.
    static SHUF_K4: [[u8; 32]; 8] = {
        let mut t = [[0u8; 32]; 8];
        let mut i = 0;
        while i < 8 {
            let mut j = 0;
            while j < 16 {
                t[i][2 * j] = 2 * i as u8;
                t[i][2 * j + 1] = 2 * i as u8 + 1;
                j += 1;
            }
            i += 1;
        }
        t
    };

    /// ggml's `get_scale_shuffle`: 8 copies of byte 2i then 8 of byte 2i+1.
    static SHUF_Q6: [[u8; 16]; 8] = {
        let mut t = [[0u8; 16]; 8];
        let mut i = 0;
        while i < 8 {
            let mut j = 0;
            while j < 8 {
                t[i][j] = 2 * i as u8;
                t[i][8 + j] = 2 * i as u8 + 1;
                j += 1;
            }
            i += 1;
        }
        t
    };

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn shuf_k4(i: usize) -> __m256i {
        // SAFETY: SHUF_K4[i] is 32 bytes.
        unsafe { _mm256_loadu_si256(SHUF_K4[i].as_ptr() as *const __m256i) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn shuf_q6(i: usize) -> __m128i {
        // SAFETY: SHUF_Q6[i] is 16 bytes.
        unsafe { _mm_loadu_si128(SHUF_Q6[i].as_ptr() as *const __m128i) }
    }

    /// Activation pointers for K-quant tiles: quants, f32 scales, block sums.
    #[inline(always)]
    fn k_ptrs<const N: usize>(
        act: &QAct,
        i0: usize,
    ) -> ([*const i8; N], [*const f32; N], [*const i16; N]) {
        let mut q = [std::ptr::null(); N];
        let mut d = [std::ptr::null(); N];
        let mut s = [std::ptr::null(); N];
        for k in 0..N {
            q[k] = act.qs_row(i0 + k).as_ptr();
            d[k] = act.d_row(i0 + k).as_ptr();
            s[k] = act.bsums_row(i0 + k).as_ptr();
        }
        (q, d, s)
    }

    /// Unpacks the 12 scale bytes of a Q4_K/Q5_K super-block into 16-bit (scales, mins).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn k4_scales(p: *const u8) -> (__m256i, __m128i) {
        const KM1: u32 = 0x3f3f3f3f;
        const KM2: u32 = 0x0f0f0f0f;
        const KM3: u32 = 0x03030303;
        // SAFETY: caller guarantees 12 readable bytes at p.
        let (u0, u1, u2) = unsafe {
            let p = p as *const u32;
            (
                p.read_unaligned(),
                p.add(1).read_unaligned(),
                p.add(2).read_unaligned(),
            )
        };
        let t3 = ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4);
        let t2 = u1 & KM1;
        let t1 = (u2 & KM2) | (((u0 >> 6) & KM3) << 4);
        let t0 = u0 & KM1;
        let ms = _mm256_cvtepu8_epi16(_mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32));
        let sc = _mm256_extracti128_si256::<0>(ms);
        (_mm256_set_m128i(sc, sc), _mm256_extracti128_si256::<1>(ms))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        let nsb = act.cols / 256;
        assert!(rb >= nsb * 144 && w.len() >= nrows * rb);
        let (yq, yd, ybs) = k_ptrs::<N>(act, i0);
        let m4 = _mm256_set1_epi8(0xF);
        for r in 0..nrows {
            // SAFETY: weight rows hold nsb 144-byte blocks; activation rows nsb*256 quants,
            // nsb scales and nsb*16 sums (checked above and in `k_ptrs`).
            unsafe {
                let row = w.as_ptr().add(r * rb);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut acc_m = [_mm_setzero_ps(); N];
                for b in 0..nsb {
                    let blk = row.add(b * 144);
                    let dx = h2f(blk);
                    let dminx = h2f(blk.add(2));
                    let (scales, mins) = k4_scales(blk.add(4));
                    let mut dv = [0f32; N];
                    for k in 0..N {
                        let dy = *yd[k].add(b);
                        dv[k] = dy * dx;
                        let dmin = -dy * dminx;
                        let q8sums = _mm256_loadu_si256(ybs[k].add(b * 16) as *const __m256i);
                        let q8s = _mm_hadd_epi16(
                            _mm256_extracti128_si256::<0>(q8sums),
                            _mm256_extracti128_si256::<1>(q8sums),
                        );
                        let prod = _mm_madd_epi16(mins, q8s);
                        acc_m[k] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[k]);
                    }
                    let mut sumi = [_mm256_setzero_si256(); N];
                    let q4 = blk.add(16);
                    for j in 0..4 {
                        let scale_l = _mm256_shuffle_epi8(scales, shuf_k4(2 * j));
                        let scale_h = _mm256_shuffle_epi8(scales, shuf_k4(2 * j + 1));
                        let bits = _mm256_loadu_si256(q4.add(32 * j) as *const __m256i);
                        let q4l = _mm256_and_si256(bits, m4);
                        let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                        for k in 0..N {
                            let y = yq[k].add(b * 256 + 64 * j);
                            let pl =
                                _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, loadu(y)));
                            let ph = _mm256_madd_epi16(
                                scale_h,
                                _mm256_maddubs_epi16(q4h, loadu(y.add(32))),
                            );
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(pl, ph));
                        }
                    }
                    for k in 0..N {
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dv[k]),
                            _mm256_cvtepi32_ps(sumi[k]),
                            acc[k],
                        );
                    }
                }
                for k in 0..N {
                    let mut m = _mm_add_ps(acc_m[k], _mm_movehl_ps(acc_m[k], acc_m[k]));
                    m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    out[r * 4 + k] = hsum8(acc[k]) + _mm_cvtss_f32(m);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_k_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        let nsb = act.cols / 256;
        assert!(rb >= nsb * 176 && w.len() >= nrows * rb);
        let (yq, yd, ybs) = k_ptrs::<N>(act, i0);
        let m4 = _mm256_set1_epi8(0xF);
        let sixteen = _mm256_set1_epi8(16);
        for r in 0..nrows {
            // SAFETY: as in q4_k_n, with 176-byte blocks.
            unsafe {
                let row = w.as_ptr().add(r * rb);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut summs = [0f32; N];
                for b in 0..nsb {
                    let blk = row.add(b * 176);
                    let dx = h2f(blk);
                    let dminx = h2f(blk.add(2));
                    let (scales, mins) = k4_scales(blk.add(4));
                    let mut dv = [0f32; N];
                    for k in 0..N {
                        let dy = *yd[k].add(b);
                        dv[k] = dy * dx;
                        let dmin = -dy * dminx;
                        let q8sums = _mm256_loadu_si256(ybs[k].add(b * 16) as *const __m256i);
                        let q8s = _mm_hadd_epi16(
                            _mm256_extracti128_si256::<0>(q8sums),
                            _mm256_extracti128_si256::<1>(q8sums),
                        );
                        let prod = _mm_madd_epi16(mins, q8s);
                        let z = _mm_setzero_si128();
                        let hs = _mm_hadd_epi32(_mm_hadd_epi32(prod, z), z);
                        summs[k] = dmin.mul_add(_mm_cvtsi128_si32(hs) as f32, summs[k]);
                    }
                    let hbits = _mm256_loadu_si256(blk.add(16) as *const __m256i);
                    let mut hmask = _mm256_set1_epi8(1);
                    let mut sumi = [_mm256_setzero_si256(); N];
                    let q5 = blk.add(48);
                    for j in 0..4 {
                        let scale_0 = _mm256_shuffle_epi8(scales, shuf_k4(2 * j));
                        let scale_1 = _mm256_shuffle_epi8(scales, shuf_k4(2 * j + 1));
                        let bits = _mm256_loadu_si256(q5.add(32 * j) as *const __m256i);
                        // The 5th bit as 16 or 0 (ggml shifts it into place; same values).
                        let h0 = _mm256_and_si256(
                            _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                            sixteen,
                        );
                        hmask = _mm256_slli_epi16::<1>(hmask);
                        let h1 = _mm256_and_si256(
                            _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                            sixteen,
                        );
                        hmask = _mm256_slli_epi16::<1>(hmask);
                        let q5_0 = _mm256_add_epi8(_mm256_and_si256(bits, m4), h0);
                        let q5_1 =
                            _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), h1);
                        for k in 0..N {
                            let y = yq[k].add(b * 256 + 64 * j);
                            let p0 =
                                _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q5_0, loadu(y)));
                            let p1 = _mm256_madd_epi16(
                                scale_1,
                                _mm256_maddubs_epi16(q5_1, loadu(y.add(32))),
                            );
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p0, p1));
                        }
                    }
                    for k in 0..N {
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dv[k]),
                            _mm256_cvtepi32_ps(sumi[k]),
                            acc[k],
                        );
                    }
                }
                for k in 0..N {
                    out[r * 4 + k] = hsum8(acc[k]) + summs[k];
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        let nsb = act.cols / 256;
        assert!(rb >= nsb * 210 && w.len() >= nrows * rb);
        let (yq, yd, _) = k_ptrs::<N>(act, i0);
        let m4 = _mm256_set1_epi8(0xF);
        let m3 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        for r in 0..nrows {
            // SAFETY: as in q4_k_n, with 210-byte blocks.
            unsafe {
                let row = w.as_ptr().add(r * rb);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nsb {
                    let blk = row.add(b * 210);
                    let dx = h2f(blk.add(208));
                    let scales = _mm_loadu_si128(blk.add(192) as *const __m128i);
                    let mut sumi = [_mm256_setzero_si256(); N];
                    for j in 0..2 {
                        let sc = [
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf_q6(4 * j))),
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf_q6(4 * j + 1))),
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf_q6(4 * j + 2))),
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf_q6(4 * j + 3))),
                        ];
                        let b1 = _mm256_loadu_si256(blk.add(64 * j) as *const __m256i);
                        let b2 = _mm256_loadu_si256(blk.add(64 * j + 32) as *const __m256i);
                        let bh = _mm256_loadu_si256(blk.add(128 + 32 * j) as *const __m256i);
                        let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(bh, m3));
                        let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(
                            _mm256_srli_epi16::<2>(bh),
                            m3,
                        ));
                        let h2 = _mm256_slli_epi16::<4>(_mm256_and_si256(
                            _mm256_srli_epi16::<4>(bh),
                            m3,
                        ));
                        let h3 = _mm256_slli_epi16::<4>(_mm256_and_si256(
                            _mm256_srli_epi16::<6>(bh),
                            m3,
                        ));
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(b1, m4), h0),
                            _mm256_or_si256(_mm256_and_si256(b2, m4), h1),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b1), m4), h2),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b2), m4), h3),
                        ];
                        for k in 0..N {
                            let y = yq[k].add(b * 256 + 128 * j);
                            let mut p = [_mm256_setzero_si256(); 4];
                            for t in 0..4 {
                                let q8 = loadu(y.add(32 * t));
                                let q8s = _mm256_maddubs_epi16(m32s, q8);
                                let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q[t], q8), q8s);
                                p[t] = _mm256_madd_epi16(sc[t], p16);
                            }
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p[0], p[1]));
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p[2], p[3]));
                        }
                    }
                    for k in 0..N {
                        let d = *yd[k].add(b) * dx;
                        acc[k] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
                    }
                }
                for k in 0..N {
                    out[r * 4 + k] = hsum8(acc[k]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q4_k(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features as this function.
        unsafe { dispatch_n!(q4_k_n, cnt, w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q5_k(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features as this function.
        unsafe { dispatch_n!(q5_k_n, cnt, w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q6_k(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features as this function.
        unsafe { dispatch_n!(q6_k_n, cnt, w, rb, nrows, act, i0, out) }
    }

    /// Float weights (F32 = 0, F16 = 1, BF16 = 2) against f32 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn float_n<const N: usize, const KIND: u8>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        let cols = act.cols;
        let eb = if KIND == 0 { 4 } else { 2 };
        assert!(rb >= cols * eb && w.len() >= nrows * rb);
        let mut xs = [std::ptr::null::<f32>(); N];
        for (k, x) in xs.iter_mut().enumerate() {
            *x = act.f_row(i0 + k).as_ptr();
        }
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8<const KIND: u8>(p: *const u8) -> __m256 {
            // SAFETY: caller guarantees 8 elements readable at p.
            unsafe {
                match KIND {
                    0 => _mm256_loadu_ps(p as *const f32),
                    1 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                    _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                        _mm_loadu_si128(p as *const __m128i),
                    ))),
                }
            }
        }
        for r in 0..nrows {
            // SAFETY: each weight row has `cols` elements of `eb` bytes, each activation row
            // `cols` floats; the loops stay below `cols`.
            unsafe {
                let row = w.as_ptr().add(r * rb);
                let mut a0 = [_mm256_setzero_ps(); N];
                let mut a1 = [_mm256_setzero_ps(); N];
                let mut c = 0;
                while c + 16 <= cols {
                    let w0 = load8::<KIND>(row.add(c * eb));
                    let w1 = load8::<KIND>(row.add((c + 8) * eb));
                    for k in 0..N {
                        a0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[k].add(c)), a0[k]);
                        a1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[k].add(c + 8)), a1[k]);
                    }
                    c += 16;
                }
                if c + 8 <= cols {
                    let w0 = load8::<KIND>(row.add(c * eb));
                    for k in 0..N {
                        a0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[k].add(c)), a0[k]);
                    }
                    c += 8;
                }
                let mut tail = [0f32; 8];
                let t = cols - c;
                if t > 0 {
                    let mut wt = [0f32; 8];
                    let rest = std::slice::from_raw_parts(row.add(c * eb), t * eb);
                    match KIND {
                        0 => crate::quant::dequantize(crate::DType::F32, rest, &mut wt[..t]),
                        1 => crate::f16::f16_bytes_to_f32(rest, &mut wt[..t]),
                        _ => crate::f16::bf16_bytes_to_f32(rest, &mut wt[..t]),
                    }
                    for k in 0..N {
                        for (e, &wv) in wt[..t].iter().enumerate() {
                            tail[k] += wv * *xs[k].add(c + e);
                        }
                    }
                }
                for k in 0..N {
                    out[r * 4 + k] = hsum8(_mm256_add_ps(a0[k], a1[k])) + tail[k];
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f32_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { float_n::<N, 0>(w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { float_n::<N, 1>(w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bf16_n<const N: usize>(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { float_n::<N, 2>(w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f32_rows(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { dispatch_n!(f32_n, cnt, w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f16_rows(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { dispatch_n!(f16_n, cnt, w, rb, nrows, act, i0, out) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn bf16_rows(
        w: &[u8],
        rb: usize,
        nrows: usize,
        act: &QAct,
        i0: usize,
        cnt: usize,
        out: &mut [f32; TILE_OUT],
    ) {
        // SAFETY: same features.
        unsafe { dispatch_n!(bf16_n, cnt, w, rb, nrows, act, i0, out) }
    }

    /// `f16::round_f16` in two F16C instructions (both round to nearest even).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_f16_f16c(v: f32) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
            _mm_set_ss(v),
        )))
    }

    /// `quant::quantize_q8_k_row` (ggml's `quantize_row_q8_K_ref`) with AVX2, bit-identical:
    /// the scale comes from the first element of largest magnitude, `nearest_int` is
    /// `cvtps2dq` under the default round-to-nearest-even mode (exact for |v| <= 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn quantize_q8_k_row(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
        let nb = x.len() / 256;
        assert!(qs.len() >= nb * 256 && d.len() >= nb && bsums.len() >= nb * 16);
        let sign = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            let xb = &x[256 * b..256 * b + 256];
            // SAFETY: xb has 256 floats, so 32 vectors of 8.
            let v: [__m256; 32] =
                std::array::from_fn(|j| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * j)) });
            let mut m = _mm256_setzero_ps();
            for vj in &v {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vj));
            }
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let qb = &mut qs[256 * b..256 * b + 256];
            let bs = &mut bsums[16 * b..16 * b + 16];
            if amax == 0.0 {
                d[b] = 0.0;
                qb.fill(0);
                bs.fill(0);
                continue;
            }
            // The first element whose magnitude is amax gives the sign.
            let am = _mm256_set1_ps(amax);
            let mut max = amax;
            for (j, vj) in v.iter().enumerate() {
                let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, *vj), am);
                let bits = _mm256_movemask_ps(eq);
                if bits != 0 {
                    max = xb[8 * j + bits.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            let lim = _mm256_set1_epi32(127);
            let shuf = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for c in 0..8 {
                // 32 values: four vectors of 8.
                let q: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, v[4 * c + k])), lim)
                });
                let s0 = _mm256_add_epi32(q[0], q[1]);
                let s1 = _mm256_add_epi32(q[2], q[3]);
                // Horizontal sums of 16 values each: after two hadds lanes 0/4 hold halves of
                // s0's sum and lanes 1/5 halves of s1's.
                let h = _mm256_hadd_epi32(s0, s1);
                let h = _mm256_hadd_epi32(h, h);
                let lo = _mm256_castsi256_si128(h);
                let hi = _mm256_extracti128_si256::<1>(h);
                let t = _mm_add_epi32(lo, hi);
                bs[2 * c] = _mm_cvtsi128_si32(t) as i16;
                bs[2 * c + 1] = _mm_extract_epi32::<1>(t) as i16;
                let a = _mm256_packs_epi32(q[0], q[1]);
                let bb = _mm256_packs_epi32(q[2], q[3]);
                let p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, bb), shuf);
                // SAFETY: 32 bytes at 32c inside the block's 256 quants.
                unsafe { _mm256_storeu_si256(qb.as_mut_ptr().add(32 * c) as *mut __m256i, p) };
            }
            d[b] = 1.0 / iscale;
        }
    }

    /// ggml's AVX2 `quantize_row_q8_0` / `quantize_row_q8_1` for one row (`x.len()` a multiple
    /// of 32; `qs` as long, `d` (and `s` if given) one entry per block). Bit-identical to
    /// `quant::quantize_q8_0_row` / `quantize_q8_1_row`, only faster.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn quantize_q8_row(
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        mut s: Option<&mut [f32]>,
        mut nsum: Option<&mut [i32]>,
    ) {
        let nb = x.len() / 32;
        assert!(qs.len() >= nb * 32 && d.len() >= nb);
        if let Some(s) = s.as_deref() {
            assert!(s.len() >= nb);
        }
        if let Some(ns) = nsum.as_deref() {
            assert!(ns.len() >= nb);
        }
        let sign = _mm256_set1_ps(-0.0);
        for i in 0..nb {
            // SAFETY: block i covers x[32i..32i+32] and qs[32i..32i+32], checked above.
            let (v, p) = unsafe {
                let p = x.as_ptr().add(32 * i);
                (
                    [
                        _mm256_loadu_ps(p),
                        _mm256_loadu_ps(p.add(8)),
                        _mm256_loadu_ps(p.add(16)),
                        _mm256_loadu_ps(p.add(24)),
                    ],
                    qs.as_mut_ptr().add(32 * i),
                )
            };
            let mut m = _mm256_andnot_ps(sign, v[0]);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[1]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[2]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[3]));
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let dd = amax / 127.0;
            d[i] = round_f16_f16c(dd);
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            const RN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v[0], id)));
            let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v[1], id)));
            let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v[2], id)));
            let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v[3], id)));
            if s.is_some() || nsum.is_some() {
                let t = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
                let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
                let t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
                let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0b10_11_00_01>(t));
                let sum = _mm_cvtsi128_si32(t);
                if let Some(s) = s.as_deref_mut() {
                    s[i] = round_f16_f16c(dd * sum as f32);
                }
                if let Some(ns) = nsum.as_deref_mut() {
                    ns[i] = -sum;
                }
            }
            let a = _mm256_packs_epi32(i0, i1);
            let b = _mm256_packs_epi32(i2, i3);
            let q = _mm256_packs_epi16(a, b);
            let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: p points at 32 writable bytes (checked above).
            unsafe { _mm256_storeu_si256(p as *mut __m256i, q) };
        }
    }
}

/// AVX-VNNI (VEX `vpdpbusd`) variant of the legacy-type kernels.
pub(crate) mod avxvnni {
    use super::*;
    legacy_kernels!("avx2,fma,f16c,avxvnni", |x, y| _mm256_dpbusd_avx_epi32(
        _mm256_setzero_si256(),
        x,
        y
    ));
}

/// AVX-512 VNNI (EVEX `vpdpbusd` on 256-bit registers) variant of the legacy-type kernels.
pub(crate) mod avx512vnni {
    use super::*;
    legacy_kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        |x, y| _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    );
}
