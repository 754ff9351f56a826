//! f32 ops against straightforward formulas, SIMD against scalar.

mod common;

use autoglm_kernels::Backend;
use autoglm_kernels::f16::{f16_to_f32, f32_to_f16};
use autoglm_kernels::ops::{self, *};
use common::Rng;

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-30
}

#[test]
fn rms_norm_formula() {
    let mut rng = Rng::new(20);
    for n in [1, 7, 64, 576, 1000] {
        let x = rng.vec(n, 3.0);
        let w = rng.vec(n, 1.0);
        let eps = 1e-6;
        let mean = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        let scale = 1.0 / (mean + eps as f64).sqrt();
        let mut out = vec![0f32; n];
        rms_norm(&x, &w, eps, &mut out);
        let mut inplace = x.clone();
        rms_norm_inplace(&mut inplace, &w, eps);
        assert_eq!(out, inplace);
        for i in 0..n {
            let want = (x[i] as f64 * scale * w[i] as f64) as f32;
            assert!(
                close(out[i], want, 1e-6),
                "n={n} i={i}: {} vs {want}",
                out[i]
            );
        }
    }
}

#[test]
fn softmax_simd_and_scalar_agree_with_formula() {
    let mut rng = Rng::new(21);
    for n in [1, 5, 8, 17, 100, 1024] {
        let x = rng.vec(n, 4.0);
        let max = x.iter().copied().fold(f32::MIN, f32::max) as f64;
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        for b in Backend::available() {
            let mut y = x.clone();
            ops::softmax_inplace_with(b, &mut y);
            let total: f32 = y.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "{b:?} n={n} sum {total}");
            for i in 0..n {
                let want = ((x[i] as f64 - max).exp() / sum) as f32;
                assert!(
                    close(y[i], want, 5e-6),
                    "{b:?} n={n} i={i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }
    let mut big = vec![-1000.0, 0.0, -f32::INFINITY];
    softmax_inplace(&mut big);
    assert_eq!(big, [0.0, 1.0, 0.0]);
}

#[test]
fn silu_mul_simd_and_scalar() {
    let mut rng = Rng::new(22);
    let n = 1537;
    let mut g = rng.vec(n, 6.0);
    g.extend([-100.0, 100.0, 0.0, -88.0, 90.0, -0.0, 1e-30, -30.0]);
    let u = rng.vec(g.len(), 1.0);
    for b in Backend::available() {
        let mut y = g.clone();
        ops::silu_mul_inplace_with(b, &mut y, &u);
        for i in 0..g.len() {
            let x = g[i] as f64;
            let want = (x / (1.0 + (-x).exp()) * u[i] as f64) as f32;
            assert!(
                close(y[i], want, 2e-6),
                "{b:?} i={i} x={x}: {} vs {want}",
                y[i]
            );
        }
    }
}

#[test]
fn gelu_follows_ggml_f16_table() {
    let mut rng = Rng::new(23);
    let mut g = rng.vec(999, 4.0);
    g.extend([-10.0, -9.99, 10.0, 12.5, -50.0, 0.0]);
    let u = rng.vec(g.len(), 1.0);
    let mut y = g.clone();
    gelu_tanh_mul_inplace(&mut y, &u);
    for i in 0..g.len() {
        let x = g[i];
        let want = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u[i]
        } else {
            let xh = f16_to_f32(f32_to_f16(x)) as f64;
            let gelu =
                0.5 * xh * (1.0 + (0.7978845608028654 * xh * (1.0 + 0.044715 * xh * xh)).tanh());
            f16_to_f32(f32_to_f16(gelu as f32)) * u[i]
        };
        // The f16 table entry can differ by one f16 ulp from an f64 evaluation.
        assert!(
            close(y[i], want, 2e-3) || (y[i] - want).abs() < 1e-6,
            "i={i} x={x}: {} vs {want}",
            y[i]
        );
    }
    let mut z = g.clone();
    gelu_tanh_inplace(&mut z);
    let ones = vec![1.0; g.len()];
    let mut w = g.clone();
    gelu_tanh_mul_inplace(&mut w, &ones);
    assert_eq!(z, w);
}

#[test]
fn blas1() {
    let mut rng = Rng::new(24);
    for n in [0, 1, 9, 33, 1000] {
        let a = rng.vec(n, 1.0);
        let b = rng.vec(n, 1.0);
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        for be in Backend::available() {
            let got = ops::dot_with(be, &a, &b) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * mag + 1e-7,
                "{be:?} n={n}: {got} vs {want}"
            );
        }
        let mut o = a.clone();
        axpy(&mut o, 0.5, &b);
        let mut s = a.clone();
        scale_inplace(&mut s, -2.0);
        let mut ad = a.clone();
        add_inplace(&mut ad, &b);
        let mut m = a.clone();
        mul_inplace(&mut m, &b);
        for i in 0..n {
            assert_eq!(o[i], a[i] + 0.5 * b[i]);
            assert_eq!(s[i], a[i] * -2.0);
            assert_eq!(ad[i], a[i] + b[i]);
            assert_eq!(m[i], a[i] * b[i]);
        }
    }
}

#[test]
fn f16_dot_and_mad() {
    let mut rng = Rng::new(25);
    for n in [0, 3, 31, 64, 100, 128, 333] {
        let a: Vec<u16> = rng.vec(n, 1.0).iter().map(|&v| f32_to_f16(v)).collect();
        let b: Vec<u16> = rng.vec(n, 1.0).iter().map(|&v| f32_to_f16(v)).collect();
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f16_to_f32(x) as f64 * f16_to_f32(y) as f64)
            .sum();
        let mag: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f16_to_f32(x) as f64 * f16_to_f32(y) as f64).abs())
            .sum();
        for be in Backend::available() {
            let got = ops::dot_f16_with(be, &a, &b) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * mag + 1e-7,
                "{be:?} n={n}: {got} vs {want}"
            );
        }
        let mut y = b.clone();
        ops::mad_f16(&mut y, &a, 0.37);
        for i in 0..n {
            let e = f32_to_f16(f16_to_f32(a[i]).mul_add(0.37, f16_to_f32(b[i])));
            assert_eq!(y[i], e, "n={n} i={i}");
        }
        let mut conv = vec![0.0; n];
        ops::f16_to_f32_row(&a, &mut conv);
        assert!(
            conv.iter().zip(&a).all(|(&c, &h)| c == f16_to_f32(h)),
            "n={n}"
        );
        // f32 accumulator plus an f16 row: one FMA per element, exact whatever the width.
        let acc = rng.vec(n, 1.0);
        let mut y = acc.clone();
        ops::axpy_f16(&mut y, -0.61, &a);
        for i in 0..n {
            assert_eq!(y[i], f16_to_f32(a[i]).mul_add(-0.61, acc[i]), "n={n} i={i}");
        }
    }
}
