//! AMX-INT8 kernels for [`PackedMatrix`] products with many activation rows (prefill, batched
//! decoding), on CPUs that have Intel AMX (Sapphire Rapids and later).
//!
//! A tile multiply `C[16 x 16] += A[M x 32] · B[32 x 16]` computes the integer dot products of
//! one 32-element block for up to 16 activation rows (A, straight from the quantised
//! activations with the row stride) and the 16 weight rows of a packed group (B: the packed
//! `qs` of a block are already AMX's "VNNI" layout, four bytes per weight row per tile row;
//! 4-bit types are widened to bytes first, once per group). Each block has its own scales, so
//! the tile is stored after every block and scaled on AVX-512 with exactly the scalar twin's
//! sequence, `acc = fma(d_w * d_a, isum, acc)` (then `acc = fma(m, s, acc)` for Q4_1), so
//! results equal the AVX-512 and scalar paths bit for bit. Signed weights (Q4_0, Q5_0, Q8_0)
//! use `tdpbssd`, Q4_1's unsigned nibbles `tdpbsud`: no offset correction is needed here.
//!
//! Loop order: with many activation rows, a slice of groups (up to 256 KiB) is widened once and
//! then every 16-row tile of activations (which stays in L1) runs through every group of the
//! slice; with a single tile, groups are widened one ahead into a two-group ring and the next
//! group's packed bytes are prefetched (the weights stream from memory, as in decoding). Per
//! group and tile the blocks go through a software pipeline: the tile product of block
//! `b + DEPTH - 1` is issued before block `b`'s tile is stored, and a stored tile is read back
//! `LAG` blocks later (vector loads cannot take data forwarded from a tile store). On the
//! machines measured the tile unit and the vector scaling barely overlap, so the scaling
//! (three or four vector operations per row and block) bounds the speed: AMX is 10-30 % faster
//! than the AVX-512 kernels from 16 activation rows on, and slower below (a tile is 16 rows).
//! The activation buffer is zero-padded to whole tiles of rows and its scales are also kept
//! block-major (`QAct::dt`), so each block's 16 row scales sit in one cache line.
//!
//! The AMX instructions are written as inline assembly (Rust's AMX intrinsics are unstable).
//! Linux hands out the tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), made
//! once per process by [`available`]; any failure just leaves AMX unused, as does
//! [`set_amx_enabled(false)`](set_amx_enabled). K-quant matrices do not use AMX (yet).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::packed::{GROUP, PackedMatrix};
use crate::quant::QAct;
use crate::x86_packed::{K_Q4_0, K_Q4_1, K_Q5_0, K_Q8_0, Out, kind};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Whether this CPU and OS let us use AMX-INT8 (checked, and permission requested, once) and
/// [`set_amx_enabled`] has not turned it off.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    !DISABLED.load(Ordering::Relaxed) && *OK.get_or_init(detect)
}

/// Lets the packed kernels use AMX where the CPU has it (the default), or not (process-wide;
/// for benchmarks and for ruling AMX out when debugging: both paths give the same bits).
pub fn set_amx_enabled(enabled: bool) {
    DISABLED.store(!enabled, Ordering::Relaxed);
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 24 = AMX-TILE, bit 25 = AMX-INT8.
    let l7 = __cpuid_count(7, 0);
    if l7.edx & (3 << 24) != 3 << 24 {
        return false;
    }
    if !crate::Backend::Avx512Vnni.is_available() {
        return false;
    }
    // XCR0 bits 17 and 18 (XTILECFG, XTILEDATA) must be enabled by the OS.
    if __cpuid(1).ecx & (1 << 27) == 0 {
        return false;
    }
    // SAFETY: OSXSAVE is set (checked just above), so XGETBV is available.
    let xcr0 = unsafe { xgetbv0() };
    if xcr0 & (3 << 17) != 3 << 17 {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with ARCH_REQ_XCOMP_PERM only asks the kernel to
    // enable a register state component for this process; it reads no memory of ours. The
    // syscall instruction clobbers rcx and r11, declared below.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// # Safety
/// The CPU must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller checked OSXSAVE.
    unsafe { _xgetbv(0) }
}

/// A tile configuration (palette 1): tmm0..tmm3 = C (`m` rows of 16 i32), tmm4/tmm6 = A (`m`
/// rows of 32 bytes), tmm5/tmm7 = B (8 rows of 64 bytes).
#[repr(C, align(64))]
struct TileCfg([u8; 64]);

impl TileCfg {
    fn new(m: usize) -> TileCfg {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |t: usize, rows: usize, colsb: u16| {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            c[48 + t] = rows as u8;
        };
        for t in 0..4 {
            set(t, m, 64);
        }
        set(4, m, 32);
        set(6, m, 32);
        set(5, 8, 64);
        set(7, 8, 64);
        TileCfg(c)
    }
}

/// Loads a tile configuration; tiles stay configured until `release`.
///
/// # Safety
/// AMX must be [`available`].
unsafe fn load_cfg(cfg: &TileCfg) {
    // SAFETY: reads the 64-byte configuration; AMX is available (caller).
    unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg as *const TileCfg, options(nostack, readonly)) };
}

/// Returns the tile state to its initial (unused) state.
///
/// # Safety
/// AMX must be [`available`].
unsafe fn release() {
    // SAFETY: AMX is available (caller); no memory access.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `tmm{c} = A · B` for one block: A from `a` with row stride `lda`, B the 512 bytes at `b`;
/// C tiles 0 and 2 load A and B into tmm4/tmm5, C tiles 1 and 3 into tmm6/tmm7.
macro_rules! tile_product {
    ($op:literal, "0", $a:expr, $lda:expr, $b:expr) => { tile_product!(@ $op, "0", "4", "5", $a, $lda, $b) };
    ($op:literal, "1", $a:expr, $lda:expr, $b:expr) => { tile_product!(@ $op, "1", "6", "7", $a, $lda, $b) };
    ($op:literal, "2", $a:expr, $lda:expr, $b:expr) => { tile_product!(@ $op, "2", "4", "5", $a, $lda, $b) };
    ($op:literal, "3", $a:expr, $lda:expr, $b:expr) => { tile_product!(@ $op, "3", "6", "7", $a, $lda, $b) };
    (@ $op:literal, $c:literal, $ta:literal, $tb:literal, $a:expr, $lda:expr, $b:expr) => {
        asm!(
            concat!("tileloadd tmm", $ta, ", [{a} + {lda}*1]"),
            concat!("tileloadd tmm", $tb, ", [{b} + {ldb}*1]"),
            concat!("tilezero tmm", $c),
            concat!($op, " tmm", $c, ", tmm", $ta, ", tmm", $tb),
            a = in(reg) $a, lda = in(reg) $lda, b = in(reg) $b,
            ldb = in(reg) 64usize, options(nostack, readonly)
        )
    };
}

/// Stores C tile `tmm{c}` to `p` (16 rows of 64 bytes).
macro_rules! tile_store {
    ($c:literal, $p:expr) => {
        asm!(
            concat!("tilestored [{p} + {ldb}*1], tmm", $c),
            p = in(reg) $p, ldb = in(reg) 64usize, options(nostack)
        )
    };
}

/// Blocks in flight: the tile product of block `b + DEPTH - 1` is issued before block `b`'s
/// tile is stored and scaled, so AMX latency overlaps the vector work.
const DEPTH: usize = 4;

/// One block's product into C tile `slot` (0..4).
///
/// # Safety
/// Tiles configured by [`load_cfg`]; `a` must have 16 readable rows of 32 bytes `lda` apart
/// and `b` 512 readable bytes.
#[inline(always)]
unsafe fn tile_product(signed_b: bool, slot: usize, a: *const i8, lda: usize, b: *const u8) {
    // SAFETY: the caller guarantees the memory ranges; the instructions read only those and
    // write only tile registers, which no other code uses.
    unsafe {
        match (signed_b, slot) {
            (true, 0) => tile_product!("tdpbssd", "0", a, lda, b),
            (true, 1) => tile_product!("tdpbssd", "1", a, lda, b),
            (true, 2) => tile_product!("tdpbssd", "2", a, lda, b),
            (true, _) => tile_product!("tdpbssd", "3", a, lda, b),
            (false, 0) => tile_product!("tdpbsud", "0", a, lda, b),
            (false, 1) => tile_product!("tdpbsud", "1", a, lda, b),
            (false, 2) => tile_product!("tdpbsud", "2", a, lda, b),
            (false, _) => tile_product!("tdpbsud", "3", a, lda, b),
        }
    }
}

/// Blocks between storing a tile and scaling it.
const LAG: usize = 2;
/// Stored tiles kept at once.
const CSLOTS: usize = 8;

#[repr(C, align(64))]
struct Cbuf([[i32; 256]; CSLOTS]);

/// Widens the `nb` blocks of a 4/5-bit group into AMX B tiles in `dst` (512 bytes per block:
/// position `p` of the 16 rows at `64 p`), signed for Q4_0/Q5_0, unsigned for Q4_1.
///
/// # Safety
/// `qs` (and `ex` for Q5_0) must point at a group's sections with `nb` blocks, and
/// `dst.len() >= nb * 512`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn widen<const K: u8>(qs: *const u8, ex: *const u8, nb: usize, dst: &mut [u8]) {
    assert!(dst.len() >= nb * 512);
    let m4 = _mm512_set1_epi8(0xF);
    let m10 = _mm512_set1_epi8(0x10);
    for b in 0..nb {
        // SAFETY: block b < nb exists in the group's sections (caller), and the stores stay
        // inside `dst` (asserted).
        unsafe {
            let q = qs.add(b * 256);
            let o = dst.as_mut_ptr().add(b * 512);
            let mut w = [_mm512_setzero_si512(); 8];
            for j in 0..4 {
                let v = _mm512_loadu_si512(q.add(64 * j) as *const _);
                w[j] = _mm512_and_si512(v, m4);
                w[j + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
            }
            if K == K_Q5_0 {
                let qh = _mm512_loadu_si512(ex.add(b * 64) as *const _);
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
                    w[p] = _mm512_ternarylogic_epi32::<0xF8>(w[p], h[p], m10);
                }
            }
            let off = match K {
                K_Q4_0 => 8,
                K_Q5_0 => 16,
                _ => 0,
            };
            for (p, wp) in w.iter().enumerate() {
                let v = _mm512_sub_epi8(*wp, _mm512_set1_epi8(off));
                _mm512_storeu_si512(o.add(64 * p) as *mut _, v);
            }
        }
    }
}

/// Scales one block's integer tile (16 rows) into the accumulators; `d` and `s` point at the
/// block's transposed activation scales of the tile's first row.
///
/// # Safety
/// `c` must hold 16 rows of 16 i32, `d` (and `s` for Q4_1) 16 floats.
#[inline(always)]
unsafe fn scale<const K: u8>(
    c: *const i32,
    dw: __m512,
    mw: __m512,
    d: *const f32,
    s: *const f32,
    acc: &mut [__m512; 16],
) {
    for (t, a) in acc.iter_mut().enumerate() {
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            let isum = _mm512_cvtepi32_ps(_mm512_loadu_si512(c.add(16 * t) as *const _));
            let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*d.add(t)));
            *a = _mm512_fmadd_ps(dd, isum, *a);
            if K == K_Q4_1 {
                *a = _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(t)), *a);
            }
        }
    }
}

thread_local! {
    /// Widened B tiles of a few groups, reused for every tile of activation rows (per thread,
    /// kept between calls).
    static WIDE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Bytes of widened B tiles processed at once (stays in L2 while the activation tiles pass).
const WIDE_BYTES: usize = 256 * 1024;

/// Groups `g0..g1` against activation rows `0..n` with type `K`.
///
/// Loop order: a slice of groups is widened once; then for each tile of 16 activation rows
/// (which stays in L1) every group of the slice runs all its blocks through a software
/// pipeline (tile products issued `DEPTH - 1` blocks ahead, tiles scaled `LAG` blocks after
/// they are stored, so that the tile unit and the vector units overlap).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_k<const K: u8>(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    n: usize,
    out: Out,
) {
    let nb = pm.nb();
    let cols = pm.cols();
    let rows = pm.rows();
    let wb = nb * 512;
    let gb = pm.group_bytes();
    let per_b = (gb / nb.max(1)).div_ceil(64);
    // With one tile of activation rows each widened tile is used once: widen one group ahead
    // into a two-group ring that stays in L1 (so the tile loads never wait for the widening
    // stores). With more, widen a slice of groups once for all tiles of rows.
    let single = n <= GROUP;
    let per_slice = if single {
        g1 - g0
    } else {
        (WIDE_BYTES / wb).max(1)
    };
    let wide_len = if single { 2 } else { per_slice.min(g1 - g0) } * wb;
    let mut wide = WIDE.take();
    if K != K_Q8_0 && wide.len() < wide_len {
        wide.resize(wide_len, 0);
    }
    let widen_into = |wide: &mut [u8], g: usize, slot: usize| {
        let (qs, _, ex) = pm.sections(g);
        let dst = &mut wide[slot * wb..(slot + 1) * wb];
        // SAFETY: all nb blocks exist in the group's sections; dst holds nb tiles.
        unsafe { widen::<K>(qs.as_ptr(), ex.as_ptr(), nb, dst) };
    };
    let mut cbuf = Cbuf([[0; 256]; CSLOTS]);
    // SAFETY: AMX is available (checked by the caller).
    unsafe { load_cfg(&TileCfg::new(GROUP)) };
    let mut s0 = g0;
    while s0 < g1 {
        let s1 = g1.min(s0 + per_slice);
        if K != K_Q8_0 {
            if single {
                widen_into(&mut wide, s0, 0);
            } else {
                for g in s0..s1 {
                    widen_into(&mut wide, g, g - s0);
                }
            }
        }
        let mut t0 = 0;
        while t0 < n {
            let m = GROUP.min(n - t0);
            for g in s0..s1 {
                let slot = if single { (g - s0) % 2 } else { g - s0 };
                if K != K_Q8_0 && single && g + 1 < s1 {
                    widen_into(&mut wide, g + 1, 1 - slot);
                }
                let (qs, d, ex) = pm.sections(g);
                let (d, ex) = (d.as_ptr(), ex.as_ptr());
                // The B tiles: Q8_0's packed quants are used in place.
                let bsrc: *const u8 = if K == K_Q8_0 {
                    qs.as_ptr()
                } else {
                    wide[slot * wb..].as_ptr()
                };
                let r0 = g * GROUP;
                let live = GROUP.min(rows - r0);
                let mask: __mmask16 = if live == GROUP {
                    0xFFFF
                } else {
                    (1u16 << live) - 1
                };
                let mut acc = [_mm512_setzero_ps(); 16];
                // SAFETY: rows t0..t0 + 16 of the activations exist (the buffer is padded to
                // whole tiles, asserted in `groups`); each A tile reads 16 rows of 32 bytes at
                // block b < nb, each B tile the 512 bytes of block b, each C tile 1 KiB of
                // `cbuf`; the scale loads index blocks < nb of those rows.
                unsafe {
                    let a0 = act.qs.as_ptr().add(t0 * cols);
                    let cb = cbuf.0.as_mut_ptr() as *mut i32;
                    let signed = K != K_Q4_1;
                    let prod = |b: usize| {
                        tile_product(signed, b % DEPTH, a0.add(32 * b), cols, bsrc.add(b * 512));
                    };
                    // Block b's tile is scaled LAG blocks after it was stored: vector loads
                    // cannot take data forwarded from a tile store, so reading it at once
                    // would stall until the store has reached the cache.
                    // With a single tile of activation rows the weights stream from memory
                    // once: prefetch the next group, an equal share per block.
                    let next = pm.data().as_ptr().wrapping_add((g + 1) * gb);
                    let prefetch = |b: usize| {
                        if n <= GROUP {
                            for l in 0..per_b {
                                let p = next.wrapping_add((b * per_b + l) * 64);
                                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                            }
                        }
                    };
                    let scale_block = |b: usize, acc: &mut [__m512; 16]| {
                        let c = cb.add(256 * (b % CSLOTS));
                        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(32 * b) as *const _));
                        let mw = if K == K_Q4_1 {
                            _mm512_cvtph_ps(_mm256_loadu_si256(ex.add(32 * b) as *const _))
                        } else {
                            _mm512_setzero_ps()
                        };
                        let o = b * act.rows + t0;
                        let (d, s) = (act.dt.as_ptr().add(o), act.st.as_ptr().wrapping_add(o));
                        scale::<K>(c, dw, mw, d, s, acc);
                    };
                    // One pipeline step for block b whose tile sits in C tile `slot`
                    // (b % DEPTH; a literal in the unrolled loop below, so the tile
                    // instructions need no dispatch).
                    macro_rules! step {
                        ($b:expr, $slot:tt, $next:tt) => {{
                            let b = $b;
                            if b + DEPTH - 1 < nb {
                                let nx = b + DEPTH - 1;
                                let (a, w) = (a0.add(32 * nx), bsrc.add(nx * 512));
                                match signed {
                                    true => tile_product!("tdpbssd", $next, a, cols, w),
                                    false => tile_product!("tdpbsud", $next, a, cols, w),
                                }
                            }
                            tile_store!($slot, cb.add(256 * (b % CSLOTS)));
                            prefetch(b);
                            if b >= LAG {
                                scale_block(b - LAG, &mut acc);
                            }
                        }};
                    }
                    for b in 0..nb.min(DEPTH - 1) {
                        prod(b);
                    }
                    let mut b = 0;
                    while b + DEPTH <= nb {
                        step!(b, "0", "3");
                        step!(b + 1, "1", "0");
                        step!(b + 2, "2", "1");
                        step!(b + 3, "3", "2");
                        b += DEPTH;
                    }
                    while b < nb {
                        match b % DEPTH {
                            0 => step!(b, "0", "3"),
                            1 => step!(b, "1", "0"),
                            2 => step!(b, "2", "1"),
                            _ => step!(b, "3", "2"),
                        }
                        b += 1;
                    }
                    for b in nb.saturating_sub(LAG)..nb {
                        scale_block(b, &mut acc);
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    if t < m {
                        // SAFETY: out holds n * rows floats (caller) and this thread alone
                        // writes these rows; lanes past `rows` are masked off.
                        unsafe {
                            _mm512_mask_storeu_ps(out.base.add((t0 + t) * rows + r0), mask, *a)
                        };
                    }
                }
            }
            t0 += m;
        }
        s0 = s1;
    }
    // SAFETY: AMX is available.
    unsafe { release() };
    WIDE.set(wide);
}

/// Groups `g0..g1` of `pm` against activation rows `0..n` on AMX, results as
/// [`x86_packed::groups`](crate::x86_packed::groups) writes them (bit-identical).
///
/// # Safety
/// [`available`] must have returned true; otherwise as for `x86_packed::groups`.
pub(crate) unsafe fn groups(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    n: usize,
    out: Out,
) {
    // Whole tiles of activation rows are read: the buffer is zero-padded to them.
    let n_pad = n.next_multiple_of(GROUP);
    assert!(g1 <= pm.groups() && act.cols == pm.cols() && act.nb == pm.nb());
    assert!(act.rows >= n_pad && act.qs.len() >= act.rows * pm.cols());
    assert!(act.dt.len() >= act.rows * act.nb);
    assert!(kind(pm.dtype()) != K_Q4_1 || act.st.len() >= act.rows * act.nb);
    assert!(out.rows == pm.rows());
    // SAFETY: forwarded caller contract (AMX and AVX-512 available).
    unsafe {
        match kind(pm.dtype()) {
            K_Q4_0 => groups_k::<K_Q4_0>(pm, g0, g1, act, n, out),
            K_Q4_1 => groups_k::<K_Q4_1>(pm, g0, g1, act, n, out),
            K_Q5_0 => groups_k::<K_Q5_0>(pm, g0, g1, act, n, out),
            _ => groups_k::<K_Q8_0>(pm, g0, g1, act, n, out),
        }
    }
}
