//! Packed matrices and `matmul_many`: packed against an exact model of ggml's arithmetic and
//! against the plain layout; every SIMD path against the scalar twin (bit for bit, they share
//! one operation sequence); `matmul_many` against separate calls; odd shapes, batch sizes and
//! pool sizes.

mod common;

use autoglm_kernels::{
    Backend, DType, MatRef, MatmulScratch, PackedMatrix, QMatrix, ThreadPool, matmul_many_with,
    matmul_packed, matmul_with,
};
use common::*;

const PACKABLE: [DType; 6] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q6_K,
];

/// Shapes for a type: columns must be whole blocks.
fn shapes(dtype: DType) -> Vec<(usize, usize)> {
    if dtype.block_len() == 256 {
        vec![(1, 256), (15, 512), (17, 256), (37, 768), (40, 2048)]
    } else {
        vec![
            (1, 32),
            (15, 64),
            (16, 96),
            (17, 576),
            (37, 160),
            (100, 1536),
        ]
    }
}

fn run_many(
    backend: Backend,
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    n: usize,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows()]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    matmul_many_with(
        backend,
        pool,
        ws,
        x,
        n,
        &mut refs,
        &mut MatmulScratch::default(),
    );
    outs
}

fn run_plain(backend: Backend, pool: &ThreadPool, w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * w.rows];
    matmul_with(
        backend,
        pool,
        w,
        x,
        n,
        &mut out,
        &mut MatmulScratch::default(),
    );
    out
}

/// Within float-summation tolerance of the exact model, and equal to the scalar twin.
#[test]
fn packed_matches_exact_model_and_scalar_twin() {
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut rng = Rng::new(11);
    for dtype in PACKABLE {
        for (rows, cols) in shapes(dtype) {
            let data = random_matrix(&mut rng, dtype, rows, cols);
            let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
            let pm = PackedMatrix::pack(&pools[1], &w).unwrap();
            assert_eq!((pm.rows(), pm.cols(), pm.dtype()), (rows, cols, dtype));
            for n in [1, 2, 3, 5, 8, 9, 16, 17] {
                if rows * cols * n > 40_000 && n > 5 && n != 16 && n != 17 {
                    continue;
                }
                let x = rng.vec(n * cols, 1.0);
                let (exact, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
                let scalar =
                    &run_many(Backend::Scalar, &pools[0], &[MatRef::Packed(&pm)], &x, n)[0];
                for j in 0..n * rows {
                    let tol = 2e-6 * mag[j] + 1e-6;
                    assert!(
                        (scalar[j] as f64 - exact[j]).abs() <= tol,
                        "{dtype} {rows}x{cols} n={n} scalar out[{j}]: {} exact {}",
                        scalar[j],
                        exact[j]
                    );
                }
                for backend in Backend::available() {
                    for pool in &pools {
                        let got = &run_many(backend, pool, &[MatRef::Packed(&pm)], &x, n)[0];
                        assert_eq!(
                            got,
                            scalar,
                            "{dtype} {rows}x{cols} n={n} {backend:?} threads={}",
                            pool.n_threads()
                        );
                    }
                }
            }
        }
    }
}

/// Large batches (the prefill path) and large matrices on both pool sizes.
#[test]
fn packed_large_batches() {
    let mut rng = Rng::new(12);
    for dtype in PACKABLE {
        let (rows, cols) = (77, if dtype.block_len() == 256 { 512 } else { 576 });
        let data = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads);
            let pm = PackedMatrix::pack(&pool, &w).unwrap();
            for n in [64, 512] {
                let x = rng.vec(n * cols, 1.0);
                let scalar = &run_many(Backend::Scalar, &pool, &[MatRef::Packed(&pm)], &x, n)[0];
                let plain = run_plain(Backend::Scalar, &pool, &w, &x, n);
                let (_, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
                for j in 0..n * rows {
                    assert!(
                        ((scalar[j] - plain[j]) as f64).abs() <= 4e-6 * mag[j] + 1e-6,
                        "{dtype} n={n} out[{j}]: packed {} plain {}",
                        scalar[j],
                        plain[j]
                    );
                }
                for backend in Backend::available() {
                    let got = &run_many(backend, &pool, &[MatRef::Packed(&pm)], &x, n)[0];
                    assert_eq!(got, scalar, "{dtype} n={n} {backend:?} threads={threads}");
                }
            }
        }
    }
}

/// Packing is deterministic and independent of the pool; every byte is defined.
#[test]
fn packing_is_deterministic() {
    let mut rng = Rng::new(13);
    for dtype in PACKABLE {
        let (rows, cols) = (16 * 70 + 3, dtype.block_len() * 2);
        let data = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let a = PackedMatrix::pack(&ThreadPool::new(1), &w).unwrap();
        let b = PackedMatrix::pack(&ThreadPool::new(2), &w).unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert!(a.bytes() >= data.len());
        let x = rng.vec(2 * cols, 1.0);
        let pool = ThreadPool::new(2);
        let mut oa = vec![0f32; 2 * rows];
        let mut ob = vec![0f32; 2 * rows];
        let mut s = MatmulScratch::default();
        matmul_packed(&pool, &a, &x, 2, &mut oa, &mut s);
        matmul_packed(&pool, &b, &x, 2, &mut ob, &mut s);
        assert_eq!(oa, ob, "{dtype}");
    }
}

#[test]
fn unpackable_types_are_refused() {
    let mut rng = Rng::new(14);
    for dtype in [DType::Q5_K, DType::F32, DType::F16] {
        let cols = if dtype.block_len() == 256 { 256 } else { 64 };
        let data = random_matrix(&mut rng, dtype, 3, cols);
        let w = QMatrix::new(dtype, 3, cols, &data).unwrap();
        assert!(!PackedMatrix::supports(dtype));
        assert!(
            PackedMatrix::pack(&ThreadPool::new(1), &w).is_err(),
            "{dtype}"
        );
    }
    for dtype in PACKABLE {
        assert!(PackedMatrix::supports(dtype));
    }
}

/// `matmul_many` over mixed types and layouts equals separate calls, bit for bit.
#[test]
fn many_equals_separate_calls() {
    let mut rng = Rng::new(15);
    let cols = 256;
    let specs = [
        (DType::Q5_0, 40, true),
        (DType::Q5_0, 17, false),
        (DType::Q8_0, 33, true),
        (DType::Q4_K, 19, true),
        (DType::Q4_1, 16, true),
        (DType::Q6_K, 5, true),
        (DType::Q4_K, 21, false),
        (DType::F16, 7, false),
        (DType::Q4_0, 1, true),
        (DType::Q8_0, 64, false),
        (DType::Q4_1, 18, false),
    ];
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(t, rows, _)| random_matrix(&mut rng, t, rows, cols))
        .collect();
    let plains: Vec<QMatrix> = specs
        .iter()
        .zip(&datas)
        .map(|(&(t, rows, _), d)| QMatrix::new(t, rows, cols, d).unwrap())
        .collect();
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads);
        let packs: Vec<Option<PackedMatrix>> = specs
            .iter()
            .zip(&plains)
            .map(|(&(_, _, pack), w)| pack.then(|| PackedMatrix::pack(&pool, w).unwrap()))
            .collect();
        let ws: Vec<MatRef> = plains
            .iter()
            .zip(&packs)
            .map(|(w, p)| match p {
                Some(p) => MatRef::Packed(p),
                None => MatRef::Plain(*w),
            })
            .collect();
        for n in [1, 2, 3, 16, 17] {
            let x = rng.vec(n * cols, 1.0);
            for backend in Backend::available() {
                let many = run_many(backend, &pool, &ws, &x, n);
                for (j, w) in ws.iter().enumerate() {
                    let one = &run_many(backend, &pool, &[*w], &x, n)[0];
                    assert_eq!(
                        &many[j], one,
                        "matrix {j} n={n} {backend:?} threads={threads}"
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "matrices differ in cols")]
fn many_rejects_mixed_widths() {
    let a = vec![0u8; 20];
    let b = vec![0u8; 40];
    let wa = QMatrix::new(DType::Q4_1, 1, 32, &a).unwrap();
    let wb = QMatrix::new(DType::Q4_1, 1, 64, &b).unwrap();
    let mut oa = vec![0f32; 1];
    let mut ob = vec![0f32; 1];
    matmul_many_with(
        Backend::Scalar,
        &ThreadPool::new(1),
        &[MatRef::Plain(wa), MatRef::Plain(wb)],
        &[0.0; 32],
        1,
        &mut [&mut oa, &mut ob],
        &mut MatmulScratch::default(),
    );
}

/// Extreme activations and weights: the integer offset correction must stay exact.
#[test]
fn packed_extremes() {
    let pool = ThreadPool::new(2);
    for dtype in &PACKABLE[..4] {
        let dtype = *dtype;
        let (rows, cols) = (19, 128);
        let rb = dtype.row_bytes(cols).unwrap();
        let bb = dtype.block_bytes();
        // Every quant byte 0xFF or 0x00 alternating by row; scale 1.0, min -1.0.
        let mut data = vec![0u8; rows * rb];
        for r in 0..rows {
            for b in 0..cols / 32 {
                let blk = &mut data[r * rb + b * bb..r * rb + (b + 1) * bb];
                let fill = if r % 2 == 0 { 0xFF } else { 0x80 };
                blk.fill(fill);
                blk[0..2].copy_from_slice(&0x3C00u16.to_le_bytes());
                if dtype == DType::Q4_1 {
                    blk[2..4].copy_from_slice(&0xBC00u16.to_le_bytes());
                }
            }
        }
        let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
        let pm = PackedMatrix::pack(&pool, &w).unwrap();
        for sign in [1.0f32, -1.0] {
            let n = 3;
            let x: Vec<f32> = (0..n * cols)
                .map(|i| sign * (1.0 + (i % 7) as f32))
                .collect();
            let (exact, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
            for backend in Backend::available() {
                let got = &run_many(backend, &pool, &[MatRef::Packed(&pm)], &x, n)[0];
                for j in 0..n * rows {
                    assert!(
                        (got[j] as f64 - exact[j]).abs() <= 2e-6 * mag[j] + 1e-6,
                        "{dtype} {backend:?} sign {sign} out[{j}]: {} exact {}",
                        got[j],
                        exact[j]
                    );
                }
            }
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn packed_simd_equals_scalar_on_random_shapes(
            seed in any::<u64>(),
            t in 0usize..6,
            rows in 1usize..70,
            blocks in 1usize..7,
            n in 1usize..20,
            threads in 1usize..4,
        ) {
            let dtype = PACKABLE[t];
            let cols = dtype.block_len() * blocks;
            let mut rng = common::Rng::new(seed);
            let data = random_matrix(&mut rng, dtype, rows, cols);
            let w = QMatrix::new(dtype, rows, cols, &data).unwrap();
            let pool = ThreadPool::new(threads);
            let pm = PackedMatrix::pack(&pool, &w).unwrap();
            let x = rng.vec(n * cols, 2.0);
            let scalar = &run_many(Backend::Scalar, &pool, &[MatRef::Packed(&pm)], &x, n)[0];
            let plain = run_plain(Backend::Scalar, &pool, &w, &x, n);
            let (_, mag) = ref_matmul_exact(dtype, &data, rows, cols, &x, n);
            for j in 0..scalar.len() {
                prop_assert!(((scalar[j] - plain[j]) as f64).abs() <= 4e-6 * mag[j] + 1e-6);
            }
            for backend in Backend::available() {
                let got = &run_many(backend, &pool, &[MatRef::Packed(&pm)], &x, n)[0];
                prop_assert_eq!(got, scalar, "{} {:?}", dtype, backend);
            }
        }
    }
}
