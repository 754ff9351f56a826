//! [`PackedMatrix`]: a weight matrix repacked once (at model load) into the layout the AVX-512
//! and AMX kernels want, for the 32-element block types Q4_0, Q4_1, Q5_0 and Q8_0 and the
//! K-quants Q4_K and Q6_K.
//!
//! # Layout
//! Rows are taken in groups of [`GROUP`] = 16 (the last group padded with zero rows). A group
//! is stored as three sections, each holding its `nb` blocks in order:
//!
//! | section | bytes per block | content |
//! |---------|-----------------|---------|
//! | `qs` | 256 (4/5-bit) or 512 (Q8_0) | quants, *dword-interleaved*: dword `j` of row `r` at `64 j + 4 r` |
//! | `d`  | 32 | the 16 rows' f16 scales, row `r` at `2 r` |
//! | `ex` | 32 (Q4_1), 64 (Q5_0), 0 | Q4_1: the f16 mins; Q5_0: the high bits, transposed (below) |
//!
//! so one 64-byte load gives the same four quants of all 16 rows: one AVX-512 lane (or one AMX
//! tile column) per weight row, and the integer dot product of a block with an activation block
//! needs no horizontal sums. The quant bytes are the block's own (nibbles still packed,
//! Q8_0 bytes signed), so a packed matrix is exactly as large as the original, plus padding to
//! whole groups and 64 bytes.
//!
//! Element order: "position" `p` (0..8) of a block is its elements `4p..4p+4`, which meet
//! activation dword `p`. For the 4/5-bit types positions 0..4 are the low nibbles of `qs` dwords
//! 0..4 and positions 4..8 their high nibbles (ggml's element order); for Q8_0 position `p` is
//! `qs` dword `p`. Q5_0's fifth bits are stored per row as a u32 whose bit `8 i + p` is the high
//! bit of element `4 p + i`, so that shifting it by `4 - p` and masking `0x10101010` places the
//! bits of position `p` where the nibbles need them.
//!
//! The K-quants use the same three sections per 256-element super-block (`d` holds d, `ex`
//! Q4_K's dmin). Q4_K's `qs` section: the quants dword-interleaved per sub-block pair `j`
//! (`512 j + 64 p + 4 r`; low nibbles are sub-block `2j`, high nibbles `2j + 1`), then the
//! 6-bit scales and mins unpacked to bytes (`[s][r]`, 128 bytes each). Q6_K's: the low-nibble
//! bytes dword-interleaved per half `n` and byte range `h` (`1024 n + 512 h + 64 p + 4 r`), the
//! high-bit bytes per half (`2048 + 512 n + 64 p + 4 r`), then the 16 signed scales as
//! pairs (`3072 + 32 k + 2 r + e` holds sub-block `2k + e`). Both are as large as the original
//! but for Q4_K's unpacked scales (+3 %).
//!
//! # Numerics
//! Per (weight row, activation row) the kernels compute ggml's per-block integer dot products
//! exactly and scale each with the same f32 products as ggml, but accumulate across blocks in a
//! single f32 (one lane) instead of ggml's eight lanes and final horizontal sum: only the float
//! summation order differs from the unpacked kernels. The scalar twin here, the AVX-512 kernels
//! and the AMX kernels use the same operation sequence per block
//! (`acc = fma(d_w * d_a, isum, acc)`, then `acc = fma(m, s, acc)` for Q4_1; for the K-quants
//! ggml's exact integer sums per super-block, then `acc = fma(d * d_a, sumi, acc)` and for Q4_K
//! `acc = fma(-(dmin * d_a), summ, acc)`), so they agree bit for bit.

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::quant::{QAct, rd_f16, scale_min_k4};
use crate::{DType, KernelError, QMatrix, ThreadPool};

/// Weight rows per packed group (one AVX-512 lane each).
pub const GROUP: usize = 16;

/// Section sizes of one block of a group, per type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Quant bytes per block of a group.
    pub qsb: usize,
    /// Extra bytes per block of a group (Q4_1 mins, Q5_0 high bits).
    pub exb: usize,
}

pub(crate) fn spec(dtype: DType) -> Option<Spec> {
    match dtype {
        DType::Q4_0 => Some(Spec { qsb: 256, exb: 0 }),
        DType::Q4_1 => Some(Spec { qsb: 256, exb: 32 }),
        DType::Q5_0 => Some(Spec { qsb: 256, exb: 64 }),
        DType::Q8_0 => Some(Spec { qsb: 512, exb: 0 }),
        DType::Q4_K => Some(Spec {
            qsb: K4_QS + K4_SC + K4_MN,
            exb: 32,
        }),
        DType::Q6_K => Some(Spec {
            qsb: K6_QL + K6_QH + K6_SC,
            exb: 0,
        }),
        _ => None,
    }
}

// Offsets and sizes inside a K-quant super-block's `qs` section (16 rows).
pub(crate) const K4_QS: usize = 2048;
pub(crate) const K4_SC: usize = 128;
pub(crate) const K4_MN: usize = 128;
pub(crate) const K6_QL: usize = 2048;
pub(crate) const K6_QH: usize = 1024;
pub(crate) const K6_SC: usize = 256;

/// A 64-byte aligned byte buffer (uninitialised until written; see `PackedMatrix::pack`).
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`PackedMatrix::data`) once packing has finished.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Page alignment, so that whole pages of a buffer can be populated in one call (see
    /// [`populate`]).
    const ALIGN: usize = 4096;

    fn new_uninit(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf {
                ptr: NonNull::<[u8; 64]>::dangling().cast(),
                len,
            };
        }
        let layout = Layout::from_size_align(len, Self::ALIGN).expect("packed matrix too large");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }
}

/// Asks Linux to back `len` bytes at `p` (page-aligned) with memory now, in one system call
/// (`madvise(MADV_POPULATE_WRITE)`), instead of one page fault per 4 KiB page while the packed
/// bytes are written. Fresh memory is the main cost of packing: on the 2-vCPU virtual machine
/// measured, 92 MB took about 20 ms to populate this way and 30-45 ms page by page, with no gain
/// from more threads. Only a hint: errors (e.g. kernels older than 5.14) are ignored.
fn populate(p: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: i64 = 23;
    // `p` is page-aligned; round the length down to whole pages.
    madvise_hint(p as usize, len & !4095, MADV_POPULATE_WRITE);
}

/// Asks Linux to map the pages of `data` (a source matrix, usually in the model file's memory
/// map) in one call rather than fault them in while packing reads them.
fn prefault(data: &[u8]) {
    const MADV_POPULATE_READ: i64 = 22;
    let start = data.as_ptr() as usize;
    let first = start.next_multiple_of(4096);
    let end = (start + data.len()) & !4095;
    if end > first {
        madvise_hint(first, end - first, MADV_POPULATE_READ);
    }
}

/// `madvise(addr, len, advice)` for the populate hints above, on ranges of at least 16 KiB;
/// the result is ignored (they are only hints, and kernels before 5.14 reject them).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn madvise_hint(addr: usize, len: usize, advice: i64) {
    const MIN: usize = 16 << 10;
    const SYS_MADVISE: i64 = 28;
    if len < MIN {
        return;
    }
    // SAFETY: the populate advices only make the kernel back or map pages of a range of our
    // address space that the callers own or borrow (whole pages inside an allocation or a
    // mapped slice); they change neither the memory's contents nor its mapping. The syscall
    // instruction clobbers rcx and r11, declared below.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_MADVISE => _,
            in("rdi") addr,
            in("rsi") len,
            in("rdx") advice,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn madvise_hint(_addr: usize, _len: usize, _advice: i64) {}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `new_uninit` with this very layout.
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, Self::ALIGN),
                )
            };
        }
    }
}

/// A weight matrix in the packed layout of this module's docs, owning its bytes.
///
/// Build it once with [`PackedMatrix::pack`] and multiply with
/// [`matmul_packed`](crate::matmul_packed) or [`matmul_many`](crate::matmul_many) through
/// [`MatRef::Packed`](crate::MatRef). Results equal [`matmul`](crate::matmul)'s up to float
/// summation order.
pub struct PackedMatrix {
    dtype: DType,
    rows: usize,
    cols: usize,
    nb: usize,
    spec: Spec,
    group_bytes: usize,
    buf: AlignedBuf,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.buf.len)
            .finish()
    }
}

/// Output bytes per unit of packing work handed to a pool thread (at least one group).
const PACK_CHUNK_BYTES: usize = 128 << 10;

impl PackedMatrix {
    /// Whether `dtype` has a packed layout.
    pub fn supports(dtype: DType) -> bool {
        spec(dtype).is_some()
    }

    /// Whether this CPU runs packed matrices faster than the plain layout (it has the AVX-512
    /// VNNI kernels, and the process is not forced onto the scalar path). Packing works
    /// everywhere (the scalar twin multiplies packed matrices anywhere), but only pays here.
    pub fn pays_off() -> bool {
        !crate::force_scalar() && crate::Backend::Avx512Vnni.is_available()
    }

    /// Repacks `w` (parallel over `pool`). Fails for types without a packed layout.
    pub fn pack(pool: &ThreadPool, w: &QMatrix) -> Result<PackedMatrix, KernelError> {
        let mut v = Self::pack_many(pool, &[*w])?;
        Ok(v.pop().expect("one matrix in, one out"))
    }

    /// Repacks several matrices in one parallel pass (a model's many small matrices would each
    /// be too small to split well on their own). Fails, packing nothing, if any type has no
    /// packed layout.
    pub fn pack_many(pool: &ThreadPool, ws: &[QMatrix]) -> Result<Vec<PackedMatrix>, KernelError> {
        let mut out = Vec::with_capacity(ws.len());
        for w in ws {
            out.push(Self::alloc(w)?);
        }
        for w in ws {
            prefault(w.data);
        }
        // Work units: chunks of at least PACK_CHUNK_BYTES of output, numbered across all
        // matrices. Each unit first has the kernel back its output pages in one call, so one
        // thread's page population overlaps the other's packing.
        let mut ends = Vec::with_capacity(ws.len());
        let mut chunk = Vec::with_capacity(ws.len());
        let mut total = 0;
        for p in &out {
            let c = PACK_CHUNK_BYTES.div_ceil(p.group_bytes).max(1);
            total += p.groups().div_ceil(c);
            ends.push(total);
            chunk.push(c);
        }
        let targets: Vec<(SyncPtr, usize)> = out
            .iter()
            .map(|p| (SyncPtr(p.buf.ptr.as_ptr()), p.group_bytes))
            .collect();
        let next = AtomicUsize::new(0);
        let job = |_t: usize, _nt: usize| {
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed);
                if u >= total {
                    break;
                }
                let i = ends.partition_point(|&e| e <= u);
                let c = u - if i == 0 { 0 } else { ends[i - 1] };
                let (w, (base, gb)) = (&ws[i], &targets[i]);
                let sp = out[i].spec;
                let groups = out[i].groups();
                let (g0, g1) = (c * chunk[i], groups.min((c + 1) * chunk[i]));
                let (a, z) = (base.0 as usize + g0 * gb, base.0 as usize + g1 * gb);
                let first = a.next_multiple_of(4096);
                if z > first {
                    populate(first as *mut u8, z - first);
                }
                for g in g0..g1 {
                    // SAFETY: group g's bytes [g * gb, (g + 1) * gb) lie in matrix i's
                    // allocation and are written by this thread only (each chunk is taken
                    // once from the counter); nothing reads them until `run` returns.
                    let dst = unsafe { std::slice::from_raw_parts_mut(base.0.add(g * gb), *gb) };
                    pack_group(w, sp, out[i].nb, g, dst);
                }
            }
        };
        if total > 1 && pool.n_threads() > 1 {
            pool.run(&job);
        } else {
            job(0, 1);
        }
        Ok(out)
    }

    /// Checks `w` and allocates (uninitialised) room for its packed copy.
    fn alloc(w: &QMatrix) -> Result<PackedMatrix, KernelError> {
        let sp = spec(w.dtype).ok_or(KernelError::UnsupportedType(w.dtype))?;
        let rb = w.row_bytes();
        let bl = w.dtype.block_len();
        if w.data.len() != rb * w.rows || !w.cols.is_multiple_of(bl) {
            return Err(KernelError::shape(format!(
                "{} x {} {} matrix with {} bytes",
                w.rows,
                w.cols,
                w.dtype,
                w.data.len()
            )));
        }
        let nb = w.cols / bl;
        let group_bytes = (nb * (sp.qsb + 32 + sp.exb)).next_multiple_of(64);
        let len = w
            .rows
            .div_ceil(GROUP)
            .checked_mul(group_bytes)
            .ok_or_else(|| KernelError::shape("packed matrix overflows usize"))?;
        Ok(PackedMatrix {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            nb,
            spec: sp,
            group_bytes,
            buf: AlignedBuf::new_uninit(len),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held (the original's size plus padding).
    pub fn bytes(&self) -> usize {
        self.buf.len
    }

    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }
    pub(crate) fn nb(&self) -> usize {
        self.nb
    }
    pub(crate) fn group_bytes(&self) -> usize {
        self.group_bytes
    }

    /// All packed bytes.
    pub(crate) fn data(&self) -> &[u8] {
        // SAFETY: every `PackedMatrix` outside `pack_many` has had every byte of its buffer
        // written (`alloc`'s uninitialised matrices are filled before `pack_many` returns them,
        // and nothing reads their bytes before).
        unsafe { std::slice::from_raw_parts(self.buf.ptr.as_ptr(), self.buf.len) }
    }

    /// Group `g`'s (qs, d, ex) sections.
    pub(crate) fn sections(&self, g: usize) -> (&[u8], &[u8], &[u8]) {
        let gb = &self.data()[g * self.group_bytes..(g + 1) * self.group_bytes];
        let (qs, rest) = gb.split_at(self.nb * self.spec.qsb);
        let (d, rest) = rest.split_at(self.nb * 32);
        (qs, d, &rest[..self.nb * self.spec.exb])
    }
}

struct SyncPtr(*mut u8);
// SAFETY: used only to hand disjoint regions of the buffers to pool threads (see
// `pack_many`).
unsafe impl Sync for SyncPtr {}

/// `(n * 0x204081) & 0x01010101` spreads bits 0..4 of a nibble to bit 0 of bytes 0..4.
#[inline(always)]
fn spread4(nib: u32) -> u32 {
    (nib * 0x0020_4081) & 0x0101_0101
}

/// Q5_0's high bits: bit `4p + i` of `qh` to bit `8i + p`.
#[inline(always)]
pub(crate) fn transpose_qh(qh: u32) -> u32 {
    let mut t = 0;
    for p in 0..8 {
        t |= spread4((qh >> (4 * p)) & 0xF) << p;
    }
    t
}

/// Writes group `g` of `w` into `dst` (exactly `group_bytes` long), every byte of it.
fn pack_group(w: &QMatrix, sp: Spec, nb: usize, g: usize, dst: &mut [u8]) {
    let rows = GROUP.min(w.rows - g * GROUP);
    let (qs, rest) = dst.split_at_mut(nb * sp.qsb);
    let (d, rest) = rest.split_at_mut(nb * 32);
    let (ex, pad) = rest.split_at_mut(nb * sp.exb);
    pad.fill(0);
    if rows < GROUP {
        qs.fill(0);
        d.fill(0);
        ex.fill(0);
    }
    let bb = w.dtype.block_bytes();
    // The quants of full groups are transposed 16 rows at a time with AVX-512 where available
    // (about 4x faster than the scalar copies); the rest goes byte by byte.
    let fast = rows == GROUP && simd_transpose(w, g, nb, sp, qs);
    if matches!(w.dtype, DType::Q4_K | DType::Q6_K) {
        for r in 0..rows {
            let row = w.row(g * GROUP + r);
            for b in 0..nb {
                let src = &row[b * bb..(b + 1) * bb];
                let t = &mut qs[b * sp.qsb..(b + 1) * sp.qsb];
                if w.dtype == DType::Q4_K {
                    pack_q4_k(
                        src,
                        r,
                        t,
                        &mut d[b * 32..b * 32 + 32],
                        &mut ex[b * 32..b * 32 + 32],
                        !fast,
                    );
                } else {
                    pack_q6_k(src, r, t, &mut d[b * 32..b * 32 + 32], !fast);
                }
            }
        }
        return;
    }
    for r in 0..rows {
        let row = w.row(g * GROUP + r);
        for b in 0..nb {
            let src = &row[b * bb..(b + 1) * bb];
            d[b * 32 + 2 * r..b * 32 + 2 * r + 2].copy_from_slice(&src[..2]);
            let q = &mut qs[b * sp.qsb..(b + 1) * sp.qsb];
            let quants = match w.dtype {
                DType::Q4_0 => &src[2..18],
                DType::Q4_1 => {
                    ex[b * 32 + 2 * r..b * 32 + 2 * r + 2].copy_from_slice(&src[2..4]);
                    &src[4..20]
                }
                DType::Q5_0 => {
                    let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
                    ex[b * 64 + 4 * r..b * 64 + 4 * r + 4]
                        .copy_from_slice(&transpose_qh(qh).to_le_bytes());
                    &src[6..22]
                }
                _ => &src[2..34],
            };
            if !fast {
                for (j, dw) in quants.chunks_exact(4).enumerate() {
                    q[64 * j + 4 * r..64 * j + 4 * r + 4].copy_from_slice(dw);
                }
            }
        }
    }
}

/// Row `r` of a Q4_K super-block into a group tile: quants dword-interleaved per sub-block
/// pair `j` (low nibbles: sub-block `2j`, high: `2j + 1`), then the 8 scales and 8 mins of each
/// row as bytes (`[s][r]`), d and dmin into their sections.
fn pack_q4_k(src: &[u8], r: usize, t: &mut [u8], d: &mut [u8], dmin: &mut [u8], quants: bool) {
    d[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    dmin[2 * r..2 * r + 2].copy_from_slice(&src[2..4]);
    for s in 0..8 {
        let (sc, mn) = scale_min_k4(s, &src[4..16]);
        t[K4_QS + 16 * s + r] = sc;
        t[K4_QS + K4_SC + 16 * s + r] = mn;
    }
    if !quants {
        return;
    }
    let q = &src[16..144];
    for j in 0..4 {
        for p in 0..8 {
            let o = 512 * j + 64 * p + 4 * r;
            t[o..o + 4].copy_from_slice(&q[32 * j + 4 * p..32 * j + 4 * p + 4]);
        }
    }
}

/// Row `r` of a Q6_K super-block into a group tile: the low-nibble bytes dword-interleaved per
/// half `n` and byte range `h` (`ql[64n + 32h..]`), the high-bit bytes per half, the 16 scales
/// as pairs (`[k][r][2]`: sub-blocks `2k`, `2k + 1`), d into its section.
fn pack_q6_k(src: &[u8], r: usize, t: &mut [u8], d: &mut [u8], quants: bool) {
    d[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
    let (ql, qh, sc) = (&src[0..128], &src[128..192], &src[192..208]);
    for k in 0..8 {
        let o = K6_QL + K6_QH + 32 * k + 2 * r;
        t[o..o + 2].copy_from_slice(&sc[2 * k..2 * k + 2]);
    }
    if !quants {
        return;
    }
    for n in 0..2 {
        for h in 0..2 {
            for p in 0..8 {
                let o = 1024 * n + 512 * h + 64 * p + 4 * r;
                let i = 64 * n + 32 * h + 4 * p;
                t[o..o + 4].copy_from_slice(&ql[i..i + 4]);
            }
        }
        for p in 0..8 {
            let o = K6_QL + 512 * n + 64 * p + 4 * r;
            t[o..o + 4].copy_from_slice(&qh[32 * n + 4 * p..32 * n + 4 * p + 4]);
        }
    }
}

/// The 16-byte chunks of a block's quants as (offset in the source block, offset in the
/// block's `qs` tile): each becomes four 64-byte position vectors (see `transpose16`).
fn quant_chunks(dtype: DType) -> &'static [(usize, usize)] {
    match dtype {
        DType::Q4_0 => &[(2, 0)],
        DType::Q4_1 => &[(4, 0)],
        DType::Q5_0 => &[(6, 0)],
        DType::Q8_0 => &[(2, 0), (18, 256)],
        DType::Q4_K => &[
            (16, 0),
            (32, 256),
            (48, 512),
            (64, 768),
            (80, 1024),
            (96, 1280),
            (112, 1536),
            (128, 1792),
        ],
        DType::Q6_K => &[
            (0, 0),
            (16, 256),
            (32, 512),
            (48, 768),
            (64, 1024),
            (80, 1280),
            (96, 1536),
            (112, 1792),
            (128, K6_QL),
            (144, K6_QL + 256),
            (160, K6_QL + 512),
            (176, K6_QL + 768),
        ],
        _ => &[],
    }
}

/// Writes the quants of full group `g` into its `qs` section with AVX-512 transposes; false
/// (nothing written) where the CPU lacks AVX-512.
fn simd_transpose(w: &QMatrix, g: usize, nb: usize, sp: Spec, qs: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::Backend::Avx512Vnni.is_available() {
        let rb = w.row_bytes();
        let bb = w.dtype.block_bytes();
        let rows = &w.data[g * GROUP * rb..(g + 1) * GROUP * rb];
        assert!(qs.len() >= nb * sp.qsb);
        for b in 0..nb {
            for &(so, d) in quant_chunks(w.dtype) {
                debug_assert!(so + 16 <= bb && d + 256 <= sp.qsb);
                // SAFETY: AVX-512 checked above. Row r's chunk lies at r * rb + b * bb + so,
                // 16 bytes inside the group's 16 rows (so + 16 <= bb); the destination's 256
                // bytes lie inside block b's tile (d + 256 <= qsb, asserted length).
                unsafe {
                    crate::x86_packed::transpose16(
                        rows.as_ptr().add(b * bb + so),
                        rb,
                        qs.as_mut_ptr().add(b * sp.qsb + d),
                    )
                };
            }
        }
        return true;
    }
    let _ = (w, g, nb, sp, qs);
    false
}

/// The value of element `e` (0..256) of super-block `b`, row `r` of a packed Q4_K group
/// (0..16, before scales) or Q6_K group (-32..32).
fn packed_quant_k(dtype: DType, qs: &[u8], b: usize, r: usize, e: usize) -> i32 {
    let t = &qs[b * spec(dtype).map_or(0, |s| s.qsb)..];
    if dtype == DType::Q4_K {
        let (j, hi, p, i) = (e / 64, (e / 32) % 2, (e % 32) / 4, e % 4);
        let byte = t[512 * j + 64 * p + 4 * r + i];
        (if hi == 1 { byte >> 4 } else { byte & 0xF }) as i32
    } else {
        let (n, k, p, i) = (e / 128, (e % 128) / 32, (e % 32) / 4, e % 4);
        let byte = t[1024 * n + 512 * (k % 2) + 64 * p + 4 * r + i];
        let lo = if k >= 2 { byte >> 4 } else { byte & 0xF };
        let hb = (t[K6_QL + 512 * n + 64 * p + 4 * r + i] >> (2 * k)) & 3;
        (lo | (hb << 4)) as i32 - 32
    }
}

/// The scalar twin for the K-quant groups: per super-block, ggml's integer sums
/// (`sumi = sum_j sc_j * isum_j`; Q4_K also `summ = sum_j m_j * bsum_j`), then
/// `acc = fma(d * d_a, sumi, acc)` and for Q4_K `acc = fma(-(dmin * d_a), summ, acc)`.
fn scalar_groups_k(
    pm: &PackedMatrix,
    g: usize,
    act: &QAct,
    act_rows: usize,
    put: &mut dyn FnMut(usize, usize, f32),
) {
    let (qs, d, ex) = pm.sections(g);
    let rows = GROUP.min(pm.rows - g * GROUP);
    for r in 0..rows {
        for t in 0..act_rows {
            let a = act.qs_row(t);
            let bs = act.bsums_row(t);
            let mut acc = 0f32;
            for b in 0..pm.nb {
                let tile = &qs[b * pm.spec.qsb..];
                let y = &a[256 * b..256 * b + 256];
                let da = act.d_row(t)[b];
                let dw = rd_f16(d, b * 32 + 2 * r);
                if pm.dtype == DType::Q4_K {
                    let (mut sumi, mut summ) = (0i32, 0i32);
                    for j in 0..8 {
                        let mut isum = 0i32;
                        for (e, &ye) in y.iter().enumerate().skip(32 * j).take(32) {
                            isum += packed_quant_k(pm.dtype, qs, b, r, e) * ye as i32;
                        }
                        sumi += tile[K4_QS + 16 * j + r] as i32 * isum;
                        let bsum = bs[16 * b + 2 * j] as i32 + bs[16 * b + 2 * j + 1] as i32;
                        summ += tile[K4_QS + K4_SC + 16 * j + r] as i32 * bsum;
                    }
                    let dmin = rd_f16(ex, b * 32 + 2 * r);
                    acc = (dw * da).mul_add(sumi as f32, acc);
                    acc = (-(dmin * da)).mul_add(summ as f32, acc);
                } else {
                    let mut sumi = 0i32;
                    for sb in 0..16 {
                        let mut isum = 0i32;
                        for (e, &ye) in y.iter().enumerate().skip(16 * sb).take(16) {
                            isum += packed_quant_k(pm.dtype, qs, b, r, e) * ye as i32;
                        }
                        let sc = tile[K6_QL + K6_QH + 32 * (sb / 2) + 2 * r + sb % 2] as i8;
                        sumi += sc as i32 * isum;
                    }
                    acc = (dw * da).mul_add(sumi as f32, acc);
                }
            }
            put(t, g * GROUP + r, acc);
        }
    }
}

/// The signed value of element `4p + i` of block `b`, row `r` of a packed group.
#[inline(always)]
fn packed_quant(dtype: DType, qs: &[u8], ex: &[u8], b: usize, r: usize, p: usize, i: usize) -> i32 {
    match dtype {
        DType::Q8_0 => qs[b * 512 + 64 * p + 4 * r + i] as i8 as i32,
        _ => {
            let byte = qs[b * 256 + 64 * (p % 4) + 4 * r + i];
            let nib = if p < 4 { byte & 0xF } else { byte >> 4 } as i32;
            match dtype {
                DType::Q4_0 => nib - 8,
                DType::Q4_1 => nib,
                _ => {
                    let o = b * 64 + 4 * r;
                    let qh = u32::from_le_bytes([ex[o], ex[o + 1], ex[o + 2], ex[o + 3]]);
                    (nib | ((((qh >> (8 * i + p)) & 1) as i32) << 4)) - 16
                }
            }
        }
    }
}

/// The scalar twin of the packed SIMD kernels: groups `g0..g1` against activation rows
/// `0..act_rows`, each result through `put(token, row, value)`.
pub(crate) fn scalar_groups(
    pm: &PackedMatrix,
    g0: usize,
    g1: usize,
    act: &QAct,
    act_rows: usize,
    put: &mut dyn FnMut(usize, usize, f32),
) {
    let nb = pm.nb;
    for g in g0..g1 {
        if matches!(pm.dtype, DType::Q4_K | DType::Q6_K) {
            scalar_groups_k(pm, g, act, act_rows, put);
            continue;
        }
        let (qs, d, ex) = pm.sections(g);
        let rows = GROUP.min(pm.rows - g * GROUP);
        for r in 0..rows {
            for t in 0..act_rows {
                let a = act.qs_row(t);
                let da = act.d_row(t);
                let mut acc = 0f32;
                for b in 0..nb {
                    let mut isum = 0i32;
                    for p in 0..8 {
                        for i in 0..4 {
                            let q = packed_quant(pm.dtype, qs, ex, b, r, p, i);
                            isum += q * a[32 * b + 4 * p + i] as i32;
                        }
                    }
                    let dw = rd_f16(d, b * 32 + 2 * r);
                    acc = (dw * da[b]).mul_add(isum as f32, acc);
                    if pm.dtype == DType::Q4_1 {
                        acc = rd_f16(ex, b * 32 + 2 * r).mul_add(act.s_row(t)[b], acc);
                    }
                }
                put(t, g * GROUP + r, acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qh_transpose_places_bits() {
        for j in 0..32 {
            let t = transpose_qh(1 << j);
            let (p, i) = (j / 4, j % 4);
            assert_eq!(t, 1 << (8 * i + p), "bit {j}");
        }
        assert_eq!(transpose_qh(u32::MAX), u32::MAX);
    }
}
