//! Plain float rows: F32, F16 and BF16 (little-endian, one value per element).
//! Each dots against activations of its own type, as in ggml (`vec_dot_type` of F16 is F16, and so on).

use crate::fp::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// Little-endian f32 at element `i`.
#[inline]
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ])
}

/// Writes `src` as little-endian f32.
pub fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (v, out) in src.iter().zip(dst.chunks_exact_mut(4)) {
        out.copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads little-endian f32.
pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *out = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
}

/// f32 dot product, summed in f64 like ggml's scalar `ggml_vec_dot_f32`.
pub fn vec_dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let n = w.len() / 4;
    let sum: f64 = (0..n).map(|i| (f32_at(w, i) * f32_at(a, i)) as f64).sum();
    sum as f32
}

/// Rounds `src` to IEEE half, ties to even.
pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (v, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_f16(*v));
    }
}

/// Widens IEEE half to f32.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = f16_to_f32([bytes[0], bytes[1]]);
    }
}

/// Half-precision dot product: f32 products summed in f64 (ggml's scalar `ggml_vec_dot_f16`).
pub fn vec_dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let sum: f64 = w
        .chunks_exact(2)
        .zip(a.chunks_exact(2))
        .map(|(x, y)| (f16_to_f32([x[0], x[1]]) * f16_to_f32([y[0], y[1]])) as f64)
        .sum();
    sum as f32
}

/// Rounds `src` to bfloat16, ties to even.
pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (v, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_bf16(*v));
    }
}

/// Widens bfloat16 to f32.
pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = bf16_to_f32([bytes[0], bytes[1]]);
    }
}

/// bfloat16 dot product: f32 products summed in f64 (ggml's scalar `ggml_vec_dot_bf16`).
pub fn vec_dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let sum: f64 = w
        .chunks_exact(2)
        .zip(a.chunks_exact(2))
        .map(|(x, y)| (bf16_to_f32([x[0], x[1]]) * bf16_to_f32([y[0], y[1]])) as f64)
        .sum();
    sum as f32
}
