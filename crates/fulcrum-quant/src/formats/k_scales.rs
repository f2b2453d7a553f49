//! The 12-byte packing of eight 6-bit scales and eight 6-bit minimums shared by Q4_K and Q5_K
//! (ggml-quants.c `get_scale_min_k4`).
//!
//! Bytes 0..4 hold scales 0..3 in their low 6 bits, bytes 4..8 hold minimums 0..3 likewise; for sub-blocks 4..7,
//! byte j+4 holds the scale's low 4 bits (low nibble) and the minimum's low 4 bits (high nibble), while their top
//! 2 bits sit in the spare top bits of bytes j−4 (scale) and j (minimum).

use super::q8_k::BlockQ8K;
use crate::block::{cast, ByteBlock};
use crate::fp::f16_to_f32;

/// A 256-value block with f16 `d` and `dmin`, packed 6-bit scales and minimums, and per-element codes
/// (Q4_K and Q5_K, which differ only in how codes are stored).
pub trait ScaleMinBlock: ByteBlock {
    /// The f16 super-scale `d`, the f16 super-minimum `dmin` and the packed scales.
    fn header(&self) -> (&[u8; 2], &[u8; 2], &[u8; 12]);
    /// The code of element `e`.
    fn code(&self, e: usize) -> u8;
}

/// Expands blocks to f32: value e = d·scale\[e/32\]·code − dmin·min\[e/32\].
pub fn dequantize<B: ScaleMinBlock>(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<B>(src).iter().zip(dst.chunks_exact_mut(256)) {
        let (d, dmin, packed) = block.header();
        let (d, dmin) = (f16_to_f32(*d), f16_to_f32(*dmin));
        let (scales, mins) = unpack(packed);
        for (e, out) in y.iter_mut().enumerate() {
            let (step, offset) = (d * scales[e / 32] as f32, dmin * mins[e / 32] as f32);
            *out = step * block.code(e) as f32 - offset;
        }
    }
}

/// Dot product with a Q8_K activation row: d·d'·Σ scale·Σqp − dmin·d'·Σ min·bsum, with exact integer inner sums.
pub fn vec_dot<B: ScaleMinBlock>(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<B>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let (d, dmin, packed) = x.header();
        let (scales, mins) = unpack(packed);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let dot: i32 = (32 * s..32 * (s + 1))
                .map(|e| x.code(e) as i32 * y.qs[e] as i32)
                .sum();
            sumi += scales[s] as i32 * dot;
            summ += mins[s] as i32 * (y.bsum(2 * s) as i32 + y.bsum(2 * s + 1) as i32);
        }
        let (d, dmin) = (f16_to_f32(*d) * y.scale(), f16_to_f32(*dmin) * y.scale());
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

/// Scale and minimum (each 0..=63) of sub-block `j` (0..8).
#[inline]
pub fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight scales and minimums.
#[inline]
pub fn unpack(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = scale_min(j, q);
    }
    (scales, mins)
}

/// Inverse of [`unpack`]; values above 63 are truncated to 6 bits.
pub fn pack(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (sc, m) = (scales[j] & 63, mins[j] & 63);
        if j < 4 {
            q[j] |= sc;
            q[j + 4] |= m;
        } else {
            q[j + 4] = (sc & 0x0F) | ((m & 0x0F) << 4);
            q[j - 4] |= (sc >> 4) << 6;
            q[j] |= (m >> 4) << 6;
        }
    }
    q
}

/// Simple asymmetric quantizer for one 256-value block as 8 sub-blocks of 32 with `levels` codes (16 or 32).
///
/// Returns (d, dmin, packed scales, codes): value ≈ d·sc·code − dmin·m. Each sub-block maps its [min(0, lo), hi]
/// range onto the codes; the sub-block scales and minimums are then quantized to 6 bits against the largest ones.
/// This is a plain min/max fit, not llama.cpp's iterative search, so its error is somewhat larger.
pub fn quantize_asymmetric(x: &[f32], levels: u8) -> (f32, f32, [u8; 12], [u8; 256]) {
    let top = (levels - 1) as f32;
    let mut sub_scale = [0.0f32; 8];
    let mut sub_min = [0.0f32; 8];
    for (s, chunk) in x.chunks_exact(32).enumerate() {
        let lo = chunk.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = chunk.iter().fold(lo, |m, &v| m.max(v));
        sub_scale[s] = (hi - lo) / top;
        sub_min[s] = -lo;
    }
    let max_scale = sub_scale.iter().fold(0.0f32, |m, &v| m.max(v));
    let max_min = sub_min.iter().fold(0.0f32, |m, &v| m.max(v));
    let d = crate::fp::f16_to_f32(crate::fp::f32_to_f16(max_scale / 63.0));
    let dmin = crate::fp::f16_to_f32(crate::fp::f32_to_f16(max_min / 63.0));
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for s in 0..8 {
        scales[s] = if d > 0.0 {
            (sub_scale[s] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        mins[s] = if dmin > 0.0 {
            (sub_min[s] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    let mut codes = [0u8; 256];
    for (e, code) in codes.iter_mut().enumerate() {
        let step = d * scales[e / 32] as f32;
        let offset = dmin * mins[e / 32] as f32;
        if step > 0.0 {
            *code = ((x[e] + offset) / step).round().clamp(0.0, top) as u8;
        }
    }
    (d, dmin, pack(&scales, &mins), codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_inverts_unpack() {
        let scales = [0, 1, 17, 63, 32, 45, 2, 63];
        let mins = [63, 0, 5, 40, 63, 1, 33, 16];
        assert_eq!(unpack(&pack(&scales, &mins)), (scales, mins));
    }
}
