//! Rotary position embeddings, computed the way ggml does (theta advanced by repeated
//! multiplication in f32) so that our rotations match llama.cpp's to the last bit that matters.

use crate::RopeStyle;

/// cos/sin pairs for one position: `cs[i] = (cos θ_i, sin θ_i)` for each rotated pair i.
pub(crate) fn angles(pos: usize, dims: usize, freq_base: f32, out: &mut Vec<(f32, f32)>) {
    out.clear();
    let theta_scale = freq_base.powf(-2.0 / dims as f32);
    let mut theta = pos as f32;
    for _ in 0..dims / 2 {
        out.push((theta.cos(), theta.sin()));
        theta *= theta_scale;
    }
}

/// Rotates the first `2 * cs.len()` dimensions of one head in place.
pub(crate) fn apply(x: &mut [f32], cs: &[(f32, f32)], style: RopeStyle) {
    let half = cs.len();
    match style {
        RopeStyle::Interleaved => {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = x0 * c - x1 * s;
                x[2 * i + 1] = x0 * s + x1 * c;
            }
        }
        RopeStyle::Halves => {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (x0, x1) = (x[i], x[i + half]);
                x[i] = x0 * c - x1 * s;
                x[i + half] = x0 * s + x1 * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_rotation_preserves_norm() {
        let mut cs = Vec::new();
        angles(0, 8, 10_000.0, &mut cs);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        apply(&mut x, &cs, RopeStyle::Interleaved);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);

        angles(37, 8, 10_000.0, &mut cs);
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let mut y = x;
            apply(&mut y, &cs, style);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3, "{style:?}");
            assert_ne!(x, y);
        }
    }

    #[test]
    fn first_pair_rotates_by_position() {
        let mut cs = Vec::new();
        angles(1, 4, 10_000.0, &mut cs);
        // Pair 0 always has frequency 1: theta = pos.
        let mut x = [1.0, 0.0, 0.0, 0.0];
        apply(&mut x, &cs, RopeStyle::Interleaved);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let mut y = [1.0, 0.0, 0.0, 0.0];
        apply(&mut y, &cs, RopeStyle::Halves);
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
    }
}
