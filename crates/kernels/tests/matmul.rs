//! matmul against the scalar path, an exact f64 model of ggml's arithmetic, and plain f32
//! math; for every supported type, backend, several shapes and pool sizes.

mod common;

use autoglm_kernels::{
    Backend, DType, KernelError, MatmulScratch, QMatrix, ThreadPool, matmul, matmul_with,
};
use common::*;

fn cols_for(dtype: DType) -> Vec<usize> {
    if dtype.block_len() == 256 {
        vec![256, 768]
    } else if dtype.block_len() == 32 {
        vec![32, 96, 576]
    } else {
        vec![7, 64, 100]
    }
}

const NS: [usize; 5] = [1, 3, 4, 5, 16];
const ROWS: [usize; 3] = [1, 19, 37];

fn run(backend: Backend, pool: &ThreadPool, w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * w.rows];
    let mut scratch = MatmulScratch::default();
    matmul_with(backend, pool, w, x, n, &mut out, &mut scratch);
    out
}

#[test]
fn every_backend_matches_exact_model_and_scalar() {
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut rng = Rng::new(1);
    let backends = Backend::available();
    assert!(backends.contains(&Backend::Scalar));
    for dtype in SUPPORTED {
        for cols in cols_for(dtype) {
            for rows in ROWS {
                let data = random_matrix(&mut rng, dtype, rows, cols);
                let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
                for n in NS {
                    let x = rng.vec(n * cols, 1.0);
                    let (exact, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
                    let scalar = run(Backend::Scalar, &pools[0], &w, &x, n);
                    for &backend in &backends {
                        for pool in &pools {
                            let got = run(backend, pool, &w, &x, n);
                            for j in 0..n * rows {
                                let tol = 2e-6 * mag[j] + 1e-6;
                                let ctx = format!(
                                    "{dtype} {rows}x{cols} n={n} {backend:?} threads={} out[{j}]",
                                    pool.n_threads()
                                );
                                assert!(
                                    (got[j] as f64 - exact[j]).abs() <= tol,
                                    "{ctx}: got {} exact {} (tol {tol})",
                                    got[j],
                                    exact[j]
                                );
                                assert!(
                                    ((got[j] - scalar[j]) as f64).abs() <= tol,
                                    "{ctx}: simd {} scalar {}",
                                    got[j],
                                    scalar[j]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Against plain f32 math on the dequantised weights and the original activations, within a
/// bound derived from the activation quantisation step (half a step per element, plus the
/// f16 rounding of the Q8 scale).
#[test]
fn close_to_unquantised_activations() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(2);
    for dtype in SUPPORTED {
        for cols in cols_for(dtype) {
            let rows = 23;
            let n = 5;
            let data = random_matrix(&mut rng, dtype, rows, cols);
            let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
            let x = rng.vec(n * cols, 1.0);
            let mut out = vec![0f32; n * rows];
            matmul(&pool, &w, &x, n, &mut out, &mut MatmulScratch::default());
            let rb = dtype.row_bytes(cols).unwrap();
            for i in 0..n {
                let xr = &x[i * cols..(i + 1) * cols];
                let qa = ref_quant_act(dtype, xr);
                for r in 0..rows {
                    let wr = ref_dequant(dtype, &data[r * rb..(r + 1) * rb], cols);
                    let mut want = 0f64;
                    let mut bound = 0f64;
                    let mut mag = 0f64;
                    for c in 0..cols {
                        want += wr[c] as f64 * xr[c] as f64;
                        mag += (wr[c] as f64 * xr[c] as f64).abs();
                        // |x - q*d| <= d/2 + |q|*|d - fp16(d)| <= amax/127 * (0.5 + 127 * 2^-11)
                        let step = qa.amax[c / qa.block] as f64 / 127.0;
                        bound += wr[c].abs() as f64 * step * 0.6;
                    }
                    if dtype == DType::Q4_1 {
                        // The stored block sum s = fp16(d * sum q) adds one f16 rounding per block.
                        for b in 0..cols / 32 {
                            let m = f16m(&data[r * rb + b * 20..]);
                            bound += (m * qa.s[b]).abs() as f64 * 1e-3;
                        }
                    }
                    let tol = bound + 1e-5 * mag + 1e-5;
                    let got = out[i * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= tol,
                        "{dtype} cols={cols} i={i} r={r}: got {got} want {want} tol {tol}"
                    );
                }
            }
        }
    }
}

fn f16m(b: &[u8]) -> f32 {
    autoglm_kernels::f16::f16_to_f32(u16::from_le_bytes([b[2], b[3]]))
}

/// Tiling only shares weight decoding: each output must be bit-identical whatever the batch.
#[test]
fn batching_does_not_change_results() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(3);
    for dtype in SUPPORTED {
        let cols = cols_for(dtype)[1];
        let rows = 21;
        let data = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let n = 7;
        let x = rng.vec(n * cols, 1.0);
        for backend in Backend::available() {
            let all = run(backend, &pool, &w, &x, n);
            for i in 0..n {
                let one = run(backend, &pool, &w, &x[i * cols..(i + 1) * cols], 1);
                assert_eq!(
                    &all[i * rows..(i + 1) * rows],
                    &one[..],
                    "{dtype} {backend:?} row {i}"
                );
            }
        }
    }
}

#[test]
fn scratch_is_reused_across_shapes() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(4);
    let mut scratch = MatmulScratch::default();
    for &(dtype, cols, n) in &[
        (DType::Q4_1, 576, 16),
        (DType::Q6_K, 256, 1),
        (DType::Q8_0, 64, 3),
        (DType::Q4_K, 512, 2),
    ] {
        let rows = 9;
        let data = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let x = rng.vec(n * cols, 1.0);
        let mut a = vec![0f32; n * rows];
        matmul(&pool, &w, &x, n, &mut a, &mut scratch);
        let b = run(Backend::active(), &pool, &w, &x, n);
        assert_eq!(a, b, "{dtype}");
    }
}

#[test]
fn large_shapes_split_across_threads() {
    // Big enough to take the multi-threaded path; rows not divisible by the thread count.
    let mut rng = Rng::new(5);
    let (rows, cols, n) = (301, 576, 3);
    for dtype in [DType::Q4_1, DType::Q8_0, DType::Q4_K] {
        let cols = if dtype == DType::Q4_K { 768 } else { cols };
        let data = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let x = rng.vec(n * cols, 1.0);
        let one = run(Backend::active(), &ThreadPool::new(1), &w, &x, n);
        for t in [2, 3, 5] {
            let got = run(Backend::active(), &ThreadPool::new(t), &w, &x, n);
            assert_eq!(got, one, "{dtype} threads={t}");
        }
    }
}

#[test]
fn zero_activations_and_edge_sizes() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(6);
    let data = random_matrix(&mut rng, DType::Q4_K, 3, 256);
    let w = QMatrix::new(DType::Q4_K, 3, 256, &data).unwrap();
    for backend in Backend::available() {
        let out = run(backend, &pool, &w, &[0.0; 256], 1);
        assert!(out.iter().all(|&v| v == 0.0), "{backend:?}: {out:?}");
        // n = 0 is a no-op.
        let mut empty: Vec<f32> = vec![];
        matmul_with(
            backend,
            &pool,
            &w,
            &[],
            0,
            &mut empty,
            &mut MatmulScratch::default(),
        );
    }
}

#[test]
#[should_panic(expected = "matmul: x has")]
fn wrong_activation_length_panics() {
    let data = vec![0u8; 20];
    let w = QMatrix::new(DType::Q4_1, 1, 32, &data).unwrap();
    let mut out = vec![0f32; 1];
    matmul(
        &ThreadPool::new(1),
        &w,
        &[0.0; 31],
        1,
        &mut out,
        &mut MatmulScratch::default(),
    );
}

#[test]
fn qmatrix_validation() {
    let data = vec![0u8; 2 * 20];
    assert!(QMatrix::new(DType::Q4_1, 2, 32, &data).is_ok());
    assert!(matches!(
        QMatrix::new(DType::Q4_1, 3, 32, &data),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(
        QMatrix::new(DType::Q4_1, 2, 48, &data),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(
        QMatrix::new(DType::Q3_K, 1, 256, &[0u8; 110]),
        Err(KernelError::UnsupportedType(DType::Q3_K))
    ));
    assert!(matches!(
        QMatrix::new(DType::Q4_0, usize::MAX / 4, 64, &data),
        Err(KernelError::Shape { .. })
    ));
    let e = QMatrix::new(DType::Q4_1, 3, 32, &data)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 60 bytes, got 40"), "{e}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn simd_equals_scalar_on_random_shapes(
            seed in any::<u64>(),
            t in 0usize..SUPPORTED.len(),
            rows in 1usize..40,
            blocks in 1usize..5,
            n in 1usize..10,
            threads in 1usize..4,
        ) {
            let dtype = SUPPORTED[t];
            let bl = if dtype.block_len() == 1 { 13 } else { dtype.block_len() };
            let cols = bl * blocks;
            let mut rng = common::Rng::new(seed);
            let data = random_matrix(&mut rng, dtype, rows, cols);
            let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
            let x = rng.vec(n * cols, 2.0);
            let pool = ThreadPool::new(threads);
            let scalar = run(Backend::Scalar, &pool, &w, &x, n);
            let (_, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
            for backend in Backend::available() {
                let got = run(backend, &pool, &w, &x, n);
                for j in 0..got.len() {
                    prop_assert!(((got[j] - scalar[j]) as f64).abs() <= 2e-6 * mag[j] + 1e-6,
                        "{} {:?} j={}: {} vs {}", dtype, backend, j, got[j], scalar[j]);
                }
            }
        }
    }
}
