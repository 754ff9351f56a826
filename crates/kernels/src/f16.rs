//! IEEE half (f16) and bfloat16 conversions, scalar and slice forms.
//!
//! Rounding is round-to-nearest-even, the same as ggml's `GGML_FP32_TO_FP16` (F16C `vcvtps2ph`
//! with rounding mode 0), so values we round-trip agree with llama.cpp bit for bit.

/// f16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 to f16 bits, round-to-nearest-even; overflow goes to ±inf, NaN stays NaN.
#[inline]
pub fn f32_to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// bf16 bits to f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bf16 bits, round-to-nearest-even, as ggml's `GGML_FP32_TO_BF16` (NaNs are kept quiet).
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Rounds an f32 to the nearest f16 and back (what storing a scale as `ggml_fp16_t` does).
#[inline]
pub fn round_f16(v: f32) -> f32 {
    f16_to_f32(f32_to_f16(v))
}

/// Converts f16 bits to f32. Panics if the lengths differ.
pub fn f16_slice_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_slice_to_f32: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(s);
    }
}

/// Converts f32 to f16 bits. Panics if the lengths differ.
pub fn f32_slice_to_f16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_slice_to_f16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(s);
    }
}

/// Converts little-endian f16 bytes (as stored in GGUF) to f32. Panics unless
/// `src.len() == 2 * dst.len()`.
pub fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        2 * dst.len(),
        "f16_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// Converts little-endian bf16 bytes to f32. Panics unless `src.len() == 2 * dst.len()`.
pub fn bf16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        2 * dst.len(),
        "bf16_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        // Ties go to even: 1 + 2^-11 is halfway between 1 and the next f16.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn every_f16_round_trips() {
        for bits in 0..=u16::MAX {
            let v = f16_to_f32(bits);
            if v.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(v), bits, "bits {bits:#06x}");
        }
    }

    #[test]
    fn slices() {
        let src = [1.0f32, -0.5, 3.25];
        let mut h = [0u16; 3];
        f32_slice_to_f16(&src, &mut h);
        let mut back = [0f32; 3];
        f16_slice_to_f32(&h, &mut back);
        assert_eq!(back, src);
        let bytes: Vec<u8> = h.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut back2 = [0f32; 3];
        f16_bytes_to_f32(&bytes, &mut back2);
        assert_eq!(back2, src);
    }
}
