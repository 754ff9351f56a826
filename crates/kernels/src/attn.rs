//! Attention's two inner products over cached K/V rows, read in their storage format (f16, or
//! 8-bit blocks with one f16 scale per 32 values) where they lie in the paged cache, without
//! widening each row into a copy first.
//!
//! - [`scores`]: every query row's dot product with every listed cache row.
//! - [`weighted_sum`]: every query row's sum of the listed cache rows, weighted by its row of
//!   probabilities.
//!
//! The caller lists the cache rows by element offset (a sequence's positions are scattered
//! over blocks), so one call covers a whole (sequence, KV head) unit of attention.
//!
//! On AVX-512 the score kernel works on 4 positions x up to 4 query rows at a time (16
//! accumulators, each cache row chunk widened once for all query rows), reduces each
//! accumulator's 16 lanes only part way, and finishes 16 positions' sums together with one
//! in-lane transpose: about 3 instructions of horizontal summing per score instead of 8. The
//! portable path is plain loops; the two agree within float summation order (tested).

use crate::Backend;
use crate::f16::f16_to_f32;

/// Values per scale in [`KvRows::Q8`].
pub const Q8_BLOCK: usize = 32;

/// A K or V plane of the cache: one value per element, rows at the offsets the caller lists.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    /// Raw f16 bits.
    F16(&'a [u16]),
    /// Signed bytes, with one f16 scale (raw bits) per [`Q8_BLOCK`] elements: element `i` is
    /// `q[i] * d[i / 32]`. Row offsets and the row length must be multiples of 32.
    Q8 { q: &'a [i8], d: &'a [u16] },
}

impl KvRows<'_> {
    fn len(&self) -> usize {
        match self {
            KvRows::F16(h) => h.len(),
            KvRows::Q8 { q, d } => q.len().min(d.len() * Q8_BLOCK),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            KvRows::F16(h) => f16_to_f32(h[i]),
            KvRows::Q8 { q, d } => f32::from(q[i]) * f16_to_f32(d[i / Q8_BLOCK]),
        }
    }

    /// Panics unless every row `offs[i]..offs[i] + hd` is inside the plane (and, for Q8,
    /// block aligned): after this the SIMD kernels index rows freely.
    fn check(&self, offs: &[usize], hd: usize) {
        let end = offs.iter().max().map_or(0, |&o| o + hd);
        assert!(end <= self.len(), "attention row past the end of the cache");
        if let KvRows::Q8 { .. } = self {
            assert!(
                hd.is_multiple_of(Q8_BLOCK) && offs.iter().all(|o| o.is_multiple_of(Q8_BLOCK)),
                "8-bit cache rows must be whole blocks"
            );
        }
    }
}

fn avx512(be: Backend, hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        be.or_scalar() == Backend::Avx512Vnni && hd.is_multiple_of(16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (be, hd);
        false
    }
}

/// `out[r * offs.len() + i] = q[r] · row(offs[i])` for the `rows` query rows of `hd` values
/// in `q`. Panics on inconsistent lengths or rows outside the plane.
pub fn scores(q: &[f32], rows: usize, hd: usize, kv: KvRows, offs: &[usize], out: &mut [f32]) {
    scores_with(crate::ops::default_backend(), q, rows, hd, kv, offs, out)
}

pub fn scores_with(
    be: Backend,
    q: &[f32],
    rows: usize,
    hd: usize,
    kv: KvRows,
    offs: &[usize],
    out: &mut [f32],
) {
    let n = offs.len();
    assert!(
        q.len() >= rows * hd && out.len() >= rows * n,
        "scores: short buffers"
    );
    kv.check(offs, hd);
    if n == 0 || rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512(be, hd) {
        // SAFETY: the CPU has AVX-512 (checked by `avx512`); every row is in bounds and the
        // buffers are long enough (checked above).
        unsafe { x86::scores(q, rows, hd, kv, offs, out) };
        return;
    }
    let _ = be;
    for r in 0..rows {
        let qr = &q[r * hd..(r + 1) * hd];
        for (i, &o) in offs.iter().enumerate() {
            out[r * n + i] = qr.iter().enumerate().map(|(j, &x)| x * kv.get(o + j)).sum();
        }
    }
}

/// `out[r * hd..][..hd] = Σ_i w[r * offs.len() + i] * row(offs[i])` for `rows` rows of
/// weights. Panics on inconsistent lengths or rows outside the plane.
pub fn weighted_sum(
    w: &[f32],
    rows: usize,
    hd: usize,
    kv: KvRows,
    offs: &[usize],
    out: &mut [f32],
) {
    weighted_sum_with(crate::ops::default_backend(), w, rows, hd, kv, offs, out)
}

pub fn weighted_sum_with(
    be: Backend,
    w: &[f32],
    rows: usize,
    hd: usize,
    kv: KvRows,
    offs: &[usize],
    out: &mut [f32],
) {
    let n = offs.len();
    assert!(
        w.len() >= rows * n && out.len() >= rows * hd,
        "weighted_sum: short buffers"
    );
    kv.check(offs, hd);
    #[cfg(target_arch = "x86_64")]
    if n > 0 && avx512(be, hd) {
        // SAFETY: as in `scores_with`.
        unsafe { x86::weighted_sum(w, rows, hd, kv, offs, out) };
        return;
    }
    let _ = be;
    out[..rows * hd].fill(0.0);
    for r in 0..rows {
        let o = &mut out[r * hd..(r + 1) * hd];
        for (i, &off) in offs.iter().enumerate() {
            let wi = w[r * n + i];
            for (j, y) in o.iter_mut().enumerate() {
                *y += wi * kv.get(off + j);
            }
        }
    }
}

/// Asks the CPU to start loading the listed cache rows (`hd` elements each) into cache, so that
/// a later [`scores`] or [`weighted_sum`] over them finds them there instead of waiting on
/// memory one row at a time. A hint only: out-of-range rows are skipped, nothing is read.
pub fn prefetch(kv: KvRows, offs: &[usize], hd: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let len = kv.len();
        // Every 64-byte line the row touches (a row need not start on a line).
        let lines = |base: *const u8, bytes: usize| {
            let first = base as usize & !63;
            let last = (base as usize + bytes - 1) & !63;
            for a in (first..=last).step_by(64) {
                // SAFETY: a prefetch never faults and reads nothing.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(a as *const i8) };
            }
        };
        for &o in offs {
            if hd == 0 || o.checked_add(hd).is_none_or(|end| end > len) {
                continue;
            }
            match kv {
                KvRows::F16(h) => lines(h[o..].as_ptr() as *const u8, 2 * hd),
                KvRows::Q8 { q, d } => {
                    lines(q[o..].as_ptr() as *const u8, hd);
                    lines(d[o / Q8_BLOCK..].as_ptr() as *const u8, 2 * hd / Q8_BLOCK);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (kv, offs, hd);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{KvRows, Q8_BLOCK};

    /// Query rows per pass (with 4 positions: 16 accumulators).
    const R: usize = 4;

    /// Raw pointers to a plane: f16 bits (`h`), or 8-bit values (`q`) with their scales (`d`).
    #[derive(Clone, Copy)]
    struct Plane {
        h: *const u16,
        q: *const i8,
        d: *const u16,
    }

    impl Plane {
        fn of(kv: KvRows) -> (Plane, bool) {
            match kv {
                KvRows::F16(h) => (
                    Plane {
                        h: h.as_ptr(),
                        q: std::ptr::null(),
                        d: std::ptr::null(),
                    },
                    false,
                ),
                KvRows::Q8 { q, d } => (
                    Plane {
                        h: std::ptr::null(),
                        q: q.as_ptr(),
                        d: d.as_ptr(),
                    },
                    true,
                ),
            }
        }
    }

    /// 16 values of a cache row from element `at` (a multiple of 16) as f32; `Q8` says which
    /// storage `p` has, as a constant so that the kernels' loops carry no branch on it.
    ///
    /// # Safety
    /// `at + 16` must be inside the plane; AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    unsafe fn load<const Q8: bool>(p: Plane, at: usize) -> __m512 {
        // SAFETY: forwarded caller contract (rows were bounds-checked by `KvRows::check`).
        unsafe {
            if Q8 {
                let v = _mm_loadu_si128(p.q.add(at) as *const __m128i);
                let s = crate::f16::f16_to_f32(*p.d.add(at / Q8_BLOCK));
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)),
                    _mm512_set1_ps(s),
                )
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.h.add(at) as *const __m256i))
            }
        }
    }

    /// Four accumulators' lanes folded to four partial sums each: quad `j` of the result
    /// holds position `j`'s.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    fn fold4(a: [__m512; 4]) -> __m512 {
        {
            let x = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[0], a[1]),
                _mm512_shuffle_f32x4::<0xEE>(a[0], a[1]),
            );
            let y = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[2], a[3]),
                _mm512_shuffle_f32x4::<0xEE>(a[2], a[3]),
            );
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            )
        }
    }

    /// Four [`fold4`] results (positions `4i + j` in quad `j` of `z[i]`) to the 16 sums in
    /// position order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    fn finish16(z: [__m512; 4]) -> __m512 {
        {
            let t0 = _mm512_add_ps(
                _mm512_unpacklo_ps(z[0], z[1]),
                _mm512_unpackhi_ps(z[0], z[1]),
            );
            let t1 = _mm512_add_ps(
                _mm512_unpacklo_ps(z[2], z[3]),
                _mm512_unpackhi_ps(z[2], z[3]),
            );
            let u = _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(t0, t1),
                _mm512_shuffle_ps::<0xEE>(t0, t1),
            );
            // u[4j + i] is position 4i + j.
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_permutexvar_ps(idx, u)
        }
    }

    /// # Safety
    /// AVX-512F; buffers and rows as checked by `scores_with`; `hd % 16 == 0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    pub(super) unsafe fn scores(
        q: &[f32],
        rows: usize,
        hd: usize,
        kv: KvRows,
        offs: &[usize],
        out: &mut [f32],
    ) {
        // SAFETY: forwarded caller contract.
        unsafe {
            match Plane::of(kv) {
                (p, false) => scores_rows::<false>(q, rows, hd, p, offs, out),
                (p, true) => scores_rows::<true>(q, rows, hd, p, offs, out),
            }
        }
    }

    /// [`scores`] for one storage format, in passes of up to [`R`] query rows.
    ///
    /// # Safety
    /// As for [`scores`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    unsafe fn scores_rows<const Q8: bool>(
        q: &[f32],
        rows: usize,
        hd: usize,
        p: Plane,
        offs: &[usize],
        out: &mut [f32],
    ) {
        let mut r0 = 0;
        while r0 < rows {
            let nr = R.min(rows - r0);
            // SAFETY: forwarded caller contract; r0 + nr <= rows.
            unsafe {
                match nr {
                    1 => scores_pass::<Q8, 1>(q, r0, hd, p, offs, out),
                    2 => scores_pass::<Q8, 2>(q, r0, hd, p, offs, out),
                    3 => scores_pass::<Q8, 3>(q, r0, hd, p, offs, out),
                    _ => scores_pass::<Q8, 4>(q, r0, hd, p, offs, out),
                }
            }
            r0 += nr;
        }
    }

    /// Query rows `r0..r0 + NR` against every position. The row count is a constant so that
    /// the accumulators stay in registers (with a run-time count the compiler kept them, and
    /// the loaded rows, on the stack: twice the time).
    ///
    /// # Safety
    /// As for [`scores`], with `r0 + NR <= rows`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    unsafe fn scores_pass<const Q8: bool, const NR: usize>(
        q: &[f32],
        r0: usize,
        hd: usize,
        p: Plane,
        offs: &[usize],
        out: &mut [f32],
    ) {
        let n = offs.len();
        let chunks = hd / 16;
        // Past the last position, blocks of 16 repeat the last row; those sums are not stored.
        let off = |i: usize| offs[i.min(n - 1)];
        for p0 in (0..n).step_by(16) {
            let mut z = [[_mm512_setzero_ps(); 4]; NR];
            for quad in 0..4 {
                let base = p0 + 4 * quad;
                if base >= n {
                    break;
                }
                let o = [off(base), off(base + 1), off(base + 2), off(base + 3)];
                let mut acc = [[_mm512_setzero_ps(); 4]; NR];
                for c in 0..chunks {
                    // SAFETY: rows are in bounds (checked) and c * 16 + 16 <= hd.
                    let k = unsafe {
                        [
                            load::<Q8>(p, o[0] + 16 * c),
                            load::<Q8>(p, o[1] + 16 * c),
                            load::<Q8>(p, o[2] + 16 * c),
                            load::<Q8>(p, o[3] + 16 * c),
                        ]
                    };
                    for (r, a) in acc.iter_mut().enumerate() {
                        // SAFETY: r0 + r < rows and q holds rows * hd values.
                        let qv = unsafe { _mm512_loadu_ps(q.as_ptr().add((r0 + r) * hd + 16 * c)) };
                        for j in 0..4 {
                            a[j] = _mm512_fmadd_ps(qv, k[j], a[j]);
                        }
                    }
                }
                for (zr, a) in z.iter_mut().zip(&acc) {
                    zr[quad] = fold4(*a);
                }
            }
            let live = (n - p0).min(16);
            let mask: __mmask16 = if live == 16 { 0xFFFF } else { (1 << live) - 1 };
            for (r, zr) in z.iter().enumerate() {
                let s = finish16(*zr);
                // SAFETY: out holds rows * n values; lanes past n are masked off.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add((r0 + r) * n + p0), mask, s) };
            }
        }
    }

    /// # Safety
    /// AVX-512F; buffers and rows as checked by `weighted_sum_with`; `hd % 16 == 0`. Every
    /// one of the `rows * hd` outputs is stored, so `out` need not be zeroed first.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    pub(super) unsafe fn weighted_sum(
        w: &[f32],
        rows: usize,
        hd: usize,
        kv: KvRows,
        offs: &[usize],
        out: &mut [f32],
    ) {
        // SAFETY: forwarded caller contract.
        unsafe {
            match Plane::of(kv) {
                (p, false) => ws_rows::<false>(w, rows, hd, p, offs, out),
                (p, true) => ws_rows::<true>(w, rows, hd, p, offs, out),
            }
        }
    }

    /// [`weighted_sum`] for one storage format, in passes of up to [`R`] rows and 64 output
    /// values (4 registers a row).
    ///
    /// # Safety
    /// As for [`weighted_sum`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    unsafe fn ws_rows<const Q8: bool>(
        w: &[f32],
        rows: usize,
        hd: usize,
        p: Plane,
        offs: &[usize],
        out: &mut [f32],
    ) {
        let mut r0 = 0;
        while r0 < rows {
            let nr = R.min(rows - r0);
            let mut c0 = 0;
            while c0 < hd / 16 {
                let nc = 4.min(hd / 16 - c0);
                macro_rules! pass {
                    ($($nr:literal),*) => {
                        match (nr, nc) {
                            $(
                                ($nr, 1) => ws_pass::<Q8, $nr, 1>(w, r0, c0, hd, p, offs, out),
                                ($nr, 2) => ws_pass::<Q8, $nr, 2>(w, r0, c0, hd, p, offs, out),
                                ($nr, 3) => ws_pass::<Q8, $nr, 3>(w, r0, c0, hd, p, offs, out),
                                ($nr, _) => ws_pass::<Q8, $nr, 4>(w, r0, c0, hd, p, offs, out),
                            )*
                            _ => unreachable!("1 to {R} rows a pass"),
                        }
                    };
                }
                // SAFETY: forwarded caller contract; r0 + nr <= rows, (c0 + nc) * 16 <= hd.
                unsafe { pass!(1, 2, 3, 4) };
                c0 += nc;
            }
            r0 += nr;
        }
    }

    /// Rows `r0..r0 + NR`, output chunks `c0..c0 + NC` of 16 values, over every position; the
    /// counts are constants for the same reason as in [`scores_pass`].
    ///
    /// # Safety
    /// As for [`weighted_sum`], with `r0 + NR <= rows` and `(c0 + NC) * 16 <= hd`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma,avx2")]
    unsafe fn ws_pass<const Q8: bool, const NR: usize, const NC: usize>(
        w: &[f32],
        r0: usize,
        c0: usize,
        hd: usize,
        p: Plane,
        offs: &[usize],
        out: &mut [f32],
    ) {
        let n = offs.len();
        let mut acc = [[_mm512_setzero_ps(); NC]; NR];
        for (i, &o) in offs.iter().enumerate() {
            // SAFETY: the row is in bounds and (c0 + c) * 16 + 16 <= hd.
            let v: [__m512; NC] =
                std::array::from_fn(|c| unsafe { load::<Q8>(p, o + 16 * (c0 + c)) });
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: w holds rows * n values.
                let wr = _mm512_set1_ps(unsafe { *w.get_unchecked((r0 + r) * n + i) });
                for c in 0..NC {
                    a[c] = _mm512_fmadd_ps(wr, v[c], a[c]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, ac) in a.iter().enumerate() {
                // SAFETY: out holds rows * hd values.
                unsafe {
                    _mm512_storeu_ps(out.as_mut_ptr().add((r0 + r) * hd + 16 * (c0 + c)), *ac)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f16::f32_to_f16;
    use crate::quantize::test_values as values;

    /// Planes of both formats holding (nearly) the same values, `n` elements.
    fn planes(seed: u64, n: usize) -> (Vec<u16>, Vec<i8>, Vec<u16>) {
        let v = values(seed, n);
        let h = v.iter().map(|&x| f32_to_f16(x)).collect();
        let q = v.iter().map(|&x| (x * 127.0).round() as i8).collect();
        let d = vec![f32_to_f16(1.0 / 127.0); n / Q8_BLOCK];
        (h, q, d)
    }

    /// A prefetch is only a hint: rows past the plane (including an offset whose end
    /// overflows), an empty list or an empty row are skipped rather than indexed, which would
    /// panic; the rows themselves are left as they were.
    #[test]
    fn prefetch_skips_what_is_not_there() {
        let (h, q, d) = planes(3, 256);
        let before = (h.clone(), q.clone());
        prefetch(KvRows::F16(&h), &[0, 64, 192, 250, usize::MAX - 8], 64);
        prefetch(KvRows::Q8 { q: &q, d: &d }, &[0, 224, 256], 32);
        prefetch(KvRows::F16(&h), &[], 64);
        prefetch(KvRows::F16(&h), &[5], 0);
        assert_eq!((h, q), before);
    }

    /// Every SIMD result against the portable loops, over shapes that exercise the tails
    /// (positions not a multiple of 4 or 16, rows not a multiple of 4, several 64-value
    /// chunks) and scattered row offsets.
    #[test]
    fn simd_matches_portable() {
        let backends: Vec<Backend> = Backend::available();
        for (rows, hd, npos) in [
            (1, 64, 1),
            (3, 64, 5),
            (3, 64, 16),
            (3, 64, 37),
            (4, 256, 19),
            (5, 96, 33),
            (9, 64, 200),
            (2, 32, 3),
        ] {
            let slots = npos + 7;
            let (h, q8, d) = planes(rows as u64 * 31 + npos as u64, slots * hd);
            let offs: Vec<usize> = (0..npos).map(|p| ((p * 5) % slots) * hd).collect();
            let q = values(7 + hd as u64, rows * hd);
            let w = values(11 + npos as u64, rows * npos);
            for kv in [KvRows::F16(&h), KvRows::Q8 { q: &q8, d: &d }] {
                let mut want_s = vec![0.0; rows * npos];
                let mut want_o = vec![0.0; rows * hd];
                scores_with(Backend::Scalar, &q, rows, hd, kv, &offs, &mut want_s);
                weighted_sum_with(Backend::Scalar, &w, rows, hd, kv, &offs, &mut want_o);
                for &be in &backends {
                    let mut s = vec![f32::NAN; rows * npos];
                    let mut o = vec![f32::NAN; rows * hd];
                    scores_with(be, &q, rows, hd, kv, &offs, &mut s);
                    weighted_sum_with(be, &w, rows, hd, kv, &offs, &mut o);
                    for (got, want) in s.iter().zip(&want_s).chain(o.iter().zip(&want_o)) {
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{be:?} rows {rows} hd {hd} npos {npos}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A query row's results do not depend on the rows computed beside it (the engine's
    /// batched decoding equals decoding alone only if this holds bit for bit).
    #[test]
    fn a_rows_results_do_not_depend_on_its_neighbours() {
        let (hd, npos) = (64, 150);
        let (h, _, _) = planes(3, npos * hd);
        let offs: Vec<usize> = (0..npos).map(|p| p * hd).collect();
        let q = values(5, 3 * hd);
        let w = values(9, 3 * npos);
        let kv = KvRows::F16(&h);
        let (mut s3, mut s1) = (vec![0.0; 3 * npos], vec![0.0; npos]);
        scores(&q, 3, hd, kv, &offs, &mut s3);
        scores(&q[hd..2 * hd], 1, hd, kv, &offs, &mut s1);
        let (mut o3, mut o1) = (vec![0.0; 3 * hd], vec![0.0; hd]);
        weighted_sum(&w, 3, hd, kv, &offs, &mut o3);
        weighted_sum(&w[npos..2 * npos], 1, hd, kv, &offs, &mut o1);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&s1), bits(&s3[npos..2 * npos]));
        assert_eq!(bits(&o1), bits(&o3[hd..2 * hd]));
    }

    #[test]
    fn scores_agree_with_a_direct_dot_product() {
        // A hand-checkable case: one query row of ones against rows 0..4 of a plane whose
        // row p holds the value p + 1 everywhere.
        let hd = 16;
        let h: Vec<u16> = (0..4 * hd)
            .map(|i| f32_to_f16((i / hd + 1) as f32))
            .collect();
        let offs = [3 * hd, 0, hd];
        let mut s = [0.0; 3];
        scores(&[1.0; 16], 1, hd, KvRows::F16(&h), &offs, &mut s);
        assert_eq!(s, [64.0, 16.0, 32.0]);
        let mut o = [0.0; 16];
        weighted_sum(&[0.5, 1.0, 0.25], 1, hd, KvRows::F16(&h), &offs, &mut o);
        assert_eq!(o, [0.5 * 4.0 + 1.0 + 0.5; 16]);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn rows_outside_the_plane_are_refused() {
        let h = vec![0u16; 64];
        let mut s = [0.0; 1];
        scores(&[0.0; 64], 1, 64, KvRows::F16(&h), &[16], &mut s);
    }
}
