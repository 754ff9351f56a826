//! `set_force_scalar` is process-wide, so it gets its own test binary.

mod common;

use autoglm_kernels::{
    Backend, DType, MatmulScratch, QMatrix, ThreadPool, matmul, matmul_with, set_force_scalar,
};
use common::*;

#[test]
fn forcing_scalar_switches_the_default_path() {
    let mut rng = Rng::new(30);
    let (rows, cols, n) = (33, 256, 3);
    let data = random_matrix(&mut rng, DType::Q4_K, rows, cols);
    let w = QMatrix::new(DType::Q4_K, rows, cols, &data).unwrap();
    let x = rng.vec(n * cols, 1.0);
    let pool = ThreadPool::new(2);
    let mut scratch = MatmulScratch::default();
    let mut want = vec![0f32; n * rows];
    matmul_with(Backend::Scalar, &pool, &w, &x, n, &mut want, &mut scratch);

    set_force_scalar(true);
    assert_eq!(Backend::active(), Backend::Scalar);
    let mut got = vec![0f32; n * rows];
    matmul(&pool, &w, &x, n, &mut got, &mut scratch);
    assert_eq!(got, want);

    set_force_scalar(false);
    assert_eq!(Backend::active(), Backend::detect());
    assert!(Backend::detect().is_available());
}
