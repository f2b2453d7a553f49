//! Scalar conversions between f32 and the little-endian half/bfloat16 fields stored in blocks.

use half::{bf16, f16};

/// The f32 value of a little-endian IEEE half.
#[inline]
pub fn f16_to_f32(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

/// `x` rounded to the nearest IEEE half (ties to even, like ggml's F16C path), little-endian.
#[inline]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The f32 value of a little-endian bfloat16.
#[inline]
pub fn bf16_to_f32(bytes: [u8; 2]) -> f32 {
    bf16::from_le_bytes(bytes).to_f32()
}

/// `x` rounded to the nearest bfloat16 (ties to even, like ggml's `GGML_FP32_TO_BF16`), little-endian.
#[inline]
pub fn f32_to_bf16(x: f32) -> [u8; 2] {
    bf16::from_f32(x).to_le_bytes()
}

/// The value with the largest magnitude in `x` (first one wins on ties), with its sign; 0 for an empty slice.
///
/// ggml's symmetric quantizers (Q4_0, Q5_0, Q8_K) scale by this signed value so that it maps to the extreme code.
#[inline]
pub fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}
