//! Test helpers: a small deterministic PRNG, random valid GGML blocks, and independent
//! (element-indexed) reference formulas for dequantisation and activation quantisation.
#![allow(dead_code)]

use autoglm_kernels::DType;
use autoglm_kernels::f16::{f16_to_f32, f32_to_f16, round_f16};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    /// Roughly normal (sum of uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.f32()).sum::<f32>() - 2.0;
        s * scale * 1.7
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    pub fn usize(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// All types `matmul` supports.
pub const SUPPORTED: [DType; 10] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// Random but valid bytes for `rows` rows of `cols` elements: random quants, and scales drawn
/// from sane ranges so that values stay finite and comparable.
pub fn random_matrix(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = dtype.row_bytes(cols).unwrap();
    let mut data = rng.bytes(rb * rows);
    let bb = dtype.block_bytes();
    match dtype {
        DType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.normal(1.0).to_le_bytes());
            }
        }
        DType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(rng.normal(1.0)).to_le_bytes());
            }
        }
        DType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(
                    &autoglm_kernels::f16::f32_to_bf16(rng.normal(1.0)).to_le_bytes(),
                );
            }
        }
        _ => {
            for b in data.chunks_exact_mut(bb) {
                match dtype {
                    DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => put_f16(b, 0, rng.range(-0.1, 0.1)),
                    DType::Q4_1 => {
                        put_f16(b, 0, rng.range(0.0, 0.1));
                        put_f16(b, 2, rng.range(-0.8, 0.2));
                    }
                    DType::Q4_K | DType::Q5_K => {
                        put_f16(b, 0, rng.range(0.0, 0.01));
                        put_f16(b, 2, rng.range(-0.01, 0.02));
                    }
                    DType::Q6_K => put_f16(b, 208, rng.range(-0.003, 0.003)),
                    _ => unreachable!(),
                }
            }
        }
    }
    data
}

fn rd16(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

fn k4(j: usize, q: &[u8]) -> (f32, f32) {
    // ggml get_scale_min_k4, written out bit by bit.
    let (sc, m) = if j < 4 {
        (q[j] & 0x3F, q[j + 4] & 0x3F)
    } else {
        let lo_sc = q[j + 4] & 0x0F;
        let lo_m = q[j + 4] >> 4;
        let hi_sc = q[j - 4] >> 6;
        let hi_m = q[j] >> 6;
        (lo_sc | (hi_sc << 4), lo_m | (hi_m << 4))
    };
    (sc as f32, m as f32)
}

/// Element `i` of one block, from the ggml-common.h description, independent of the crate.
pub fn ref_elem(dtype: DType, b: &[u8], i: usize) -> f32 {
    match dtype {
        DType::Q4_0 => {
            let nib = if i < 16 {
                b[2 + i] & 15
            } else {
                b[2 + i - 16] >> 4
            };
            (nib as f32 - 8.0) * rd16(b, 0)
        }
        DType::Q4_1 => {
            let nib = if i < 16 {
                b[4 + i] & 15
            } else {
                b[4 + i - 16] >> 4
            };
            nib as f32 * rd16(b, 0) + rd16(b, 2)
        }
        DType::Q5_0 => {
            let nib = if i < 16 {
                b[6 + i] & 15
            } else {
                b[6 + i - 16] >> 4
            };
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let h = ((qh >> i) & 1) as u8;
            ((nib | (h << 4)) as f32 - 16.0) * rd16(b, 0)
        }
        DType::Q8_0 => (b[2 + i] as i8) as f32 * rd16(b, 0),
        DType::Q4_K | DType::Q5_K => {
            let (d, dmin) = (rd16(b, 0), rd16(b, 2));
            let (sc, m) = k4(i / 32, &b[4..16]);
            let chunk = i / 64;
            let l = i % 32;
            let hi = (i % 64) >= 32;
            let qs_off = if dtype == DType::Q4_K { 16 } else { 48 };
            let byte = b[qs_off + 32 * chunk + l];
            let mut q = if hi { byte >> 4 } else { byte & 15 };
            if dtype == DType::Q5_K {
                q |= ((b[16 + l] >> (i / 32)) & 1) << 4;
            }
            (d * sc) * q as f32 - dmin * m
        }
        DType::Q6_K => {
            let n = i / 128;
            let w = i % 128;
            let t = w / 32;
            let l = w % 32;
            let ql = match t {
                0 => b[64 * n + l] & 15,
                1 => b[64 * n + 32 + l] & 15,
                2 => b[64 * n + l] >> 4,
                _ => b[64 * n + 32 + l] >> 4,
            };
            let qh = (b[128 + 32 * n + l] >> (2 * t)) & 3;
            let q = (ql | (qh << 4)) as i32 - 32;
            let sc = b[192 + i / 16] as i8;
            rd16(b, 208) * sc as f32 * q as f32
        }
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F16 => rd16(b, 0),
        DType::BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        _ => unreachable!(),
    }
}

/// Dequantises a row with [`ref_elem`].
pub fn ref_dequant(dtype: DType, row: &[u8], cols: usize) -> Vec<f32> {
    let bl = dtype.block_len();
    let bb = dtype.block_bytes();
    (0..cols)
        .map(|c| ref_elem(dtype, &row[(c / bl) * bb..(c / bl + 1) * bb], c % bl))
        .collect()
}

/// What the activations look like after ggml's quantisation for `dtype`'s `vec_dot_type`:
/// per element the dequantised value, plus for Q8_1 the stored block sums `s`.
pub struct QuantAct {
    pub vals: Vec<f32>,
    pub s: Vec<f32>,
    /// Per block of the activation format, the largest |x| (for error bounds).
    pub amax: Vec<f32>,
    pub block: usize,
}

pub fn ref_quant_act(dtype: DType, x: &[f32]) -> QuantAct {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => QuantAct {
            vals: x.to_vec(),
            s: vec![],
            amax: vec![0.0; x.len()],
            block: 1,
        },
        DType::Q4_K | DType::Q5_K | DType::Q6_K => {
            let mut vals = vec![];
            let mut amaxv = vec![];
            for b in x.chunks(256) {
                let mut amax = 0f32;
                let mut max = 0f32;
                for &v in b {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                amaxv.push(amax);
                if amax == 0.0 {
                    vals.extend(std::iter::repeat_n(0.0, 256));
                    continue;
                }
                let iscale = -127.0 / max;
                let d = 1.0 / iscale;
                for &v in b {
                    let q = ((iscale * v).round_ties_even() as i32).min(127);
                    vals.push(d * q as f32);
                }
            }
            QuantAct {
                vals,
                s: vec![],
                amax: amaxv,
                block: 256,
            }
        }
        _ => {
            let mut vals = vec![];
            let mut s = vec![];
            let mut amaxv = vec![];
            for b in x.chunks(32) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                amaxv.push(amax);
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let q: Vec<i32> = b
                    .iter()
                    .map(|&v| (v * id).round_ties_even() as i32)
                    .collect();
                let dr = round_f16(d);
                vals.extend(q.iter().map(|&q| dr * q as f32));
                s.push(round_f16(d * q.iter().sum::<i32>() as f32));
            }
            QuantAct {
                vals,
                s,
                amax: amaxv,
                block: 32,
            }
        }
    }
}

/// Expected matmul output computed in f64 from the reference dequantisation and the reference
/// activation quantisation (the exact quantities the kernels combine), plus sum |terms| for
/// a rounding tolerance. For Q4_1 the min term uses the stored `s`, as ggml does.
pub fn ref_matmul_exact(
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let rb = dtype.row_bytes(cols).unwrap();
    let mut out = vec![0f64; n * rows];
    let mut mag = vec![0f64; n * rows];
    for i in 0..n {
        let qa = ref_quant_act(dtype, &x[i * cols..(i + 1) * cols]);
        for r in 0..rows {
            let row = &w[r * rb..(r + 1) * rb];
            let mut s = 0f64;
            let mut m = 0f64;
            if dtype == DType::Q4_1 {
                for (b, blk) in row.chunks_exact(20).enumerate() {
                    let (d, mn) = (rd16(blk, 0) as f64, rd16(blk, 2) as f64);
                    for j in 0..32 {
                        let nib = if j < 16 {
                            blk[4 + j] & 15
                        } else {
                            blk[4 + j - 16] >> 4
                        };
                        let t = d * nib as f64 * qa.vals[b * 32 + j] as f64;
                        s += t;
                        m += t.abs();
                    }
                    s += mn * qa.s[b] as f64;
                    m += (mn * qa.s[b] as f64).abs();
                }
            } else {
                let wr = ref_dequant(dtype, row, cols);
                for (&wv, &av) in wr.iter().zip(&qa.vals) {
                    let t = wv as f64 * av as f64;
                    s += t;
                    m += t.abs();
                }
            }
            out[i * rows + r] = s;
            mag[i * rows + r] = m;
        }
    }
    (out, mag)
}
