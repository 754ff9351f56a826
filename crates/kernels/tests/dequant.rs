//! dequantize_row against independent per-element formulas, and the reference quantisers.

mod common;

use autoglm_kernels::quantize::quantize_row;
use autoglm_kernels::{DType, KernelError, QMatrix, dequantize_row};
use common::*;

#[test]
fn dequantize_matches_layout_formulas_on_random_blocks() {
    let mut rng = Rng::new(10);
    for dtype in SUPPORTED {
        let cols = dtype.block_len().max(1) * 4 + if dtype.block_len() == 1 { 3 } else { 0 };
        for _ in 0..20 {
            let data = random_matrix(&mut rng, dtype, 1, cols);
            let mut got = vec![0f32; cols];
            dequantize_row(dtype, &data, &mut got).unwrap();
            let want = ref_dequant(dtype, &data, cols);
            for c in 0..cols {
                assert!(
                    (got[c] - want[c]).abs() <= 1e-6 * want[c].abs().max(1e-3),
                    "{dtype} elem {c}: got {} want {}",
                    got[c],
                    want[c]
                );
            }
        }
    }
}

#[test]
fn qmatrix_dequantize_row_selects_the_row() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (5, 64);
    let data = random_matrix(&mut rng, DType::Q8_0, rows, cols);
    let w = QMatrix::new(DType::Q8_0, rows, cols, &data).unwrap();
    let mut out = vec![0f32; cols];
    for r in 0..rows {
        w.dequantize_row(r, &mut out);
        assert_eq!(out, ref_dequant(DType::Q8_0, w.row(r), cols));
    }
}

/// Quantise then dequantise: the error per element stays within the format's step.
#[test]
fn quantize_round_trip_error_is_bounded() {
    let mut rng = Rng::new(12);
    for dtype in SUPPORTED {
        let cols = 512;
        let x = rng.vec(cols, 1.0);
        let q = quantize_row(dtype, &x).unwrap();
        assert_eq!(q.len(), dtype.row_bytes(cols).unwrap());
        let mut y = vec![0f32; cols];
        dequantize_row(dtype, &q, &mut y).unwrap();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        // Relative to the block range: ~1/15 for 4-bit, 1/31 for 5-bit, 1/63 for 6-bit, 1/127 for 8.
        let rel = match dtype {
            DType::F32 => 0.0,
            DType::F16 => 1e-3,
            DType::BF16 => 8e-3,
            DType::Q8_0 => 0.01,
            DType::Q6_K => 0.05,
            DType::Q5_0 | DType::Q5_K => 0.07,
            _ => 0.15,
        };
        for c in 0..cols {
            assert!(
                (x[c] - y[c]).abs() <= rel * amax + 1e-7,
                "{dtype} elem {c}: {} -> {}",
                x[c],
                y[c]
            );
        }
    }
}

/// Known bytes from ggml's reference quantisers.
#[test]
fn legacy_reference_quantisers_known_blocks() {
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    // Q8_0: amax 16 -> d = 16/127, q = round(x * 127/16).
    let q = quantize_row(DType::Q8_0, &x).unwrap();
    assert_eq!(q[2] as i8, -127);
    assert_eq!(q[2 + 8] as i8, (-8.0f32 * 127.0 / 16.0).round() as i8);
    // Q4_0: max = -16 -> d = 2, values (x / 2 + 8.5) truncated.
    let q = quantize_row(DType::Q4_0, &x).unwrap();
    assert_eq!(
        autoglm_kernels::f16::f16_to_f32(u16::from_le_bytes([q[0], q[1]])),
        2.0
    );
    assert_eq!(q[2] & 15, 0); // -16 -> 0
    assert_eq!(q[2] >> 4, 8); // element 16 = 0 -> 8
    // Q4_1: min -16, d = 31/15.
    let q = quantize_row(DType::Q4_1, &x).unwrap();
    assert_eq!(
        autoglm_kernels::f16::f16_to_f32(u16::from_le_bytes([q[2], q[3]])),
        -16.0
    );
    assert_eq!(q[4] & 15, 0);
    assert_eq!(q[4 + 15] >> 4, 15);
}

#[test]
fn dequantize_row_rejects_bad_input() {
    let mut out = vec![0f32; 32];
    assert!(matches!(
        dequantize_row(DType::Q4_1, &[0u8; 19], &mut out),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(
        dequantize_row(DType::Q5_1, &[0u8; 24], &mut out),
        Err(KernelError::UnsupportedType(_))
    ));
    let mut out = vec![0f32; 33];
    assert!(dequantize_row(DType::Q8_0, &[0u8; 34], &mut out).is_err());
    assert!(quantize_row(DType::Q4_K, &[0.0; 100]).is_err());
}
