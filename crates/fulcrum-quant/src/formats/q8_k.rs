//! Q8_K: 256 values per block as int8 codes with an f32 scale and per-16 sums (ggml-common.h `block_q8_K`).
//! The activation format for all K-quants; `bsums` lets them apply their per-sub-block minimums cheaply.

use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::signed_absmax;

/// Values per block (ggml's `QK_K`).
pub const QK: usize = 256;

/// `block_q8_K`: `d` (f32 LE), 256 signed codes, then 16 `bsums` (i16 LE, the sum of each run of 16 codes).
#[repr(C)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK],
    pub bsums: [u8; 2 * QK / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292 && align_of::<BlockQ8K>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ8K {}

impl BlockQ8K {
    /// The f32 scale.
    #[inline]
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// Sum of codes 16·i .. 16·i+15.
    #[inline]
    pub fn bsum(&self, i: usize) -> i16 {
        i16::from_le_bytes([self.bsums[2 * i], self.bsums[2 * i + 1]])
    }
}

/// Reference quantizer (`quantize_row_q8_K_ref`): scale −127/max for the signed value of largest magnitude, codes
/// rounded half-to-even (ggml's `nearest_int`), d = 1/scale; an all-zero block gets d = 0.
#[inline]
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ8K>(dst)) {
        let max = signed_absmax(x);
        if max == 0.0 {
            block.d = 0.0f32.to_le_bytes();
            block.qs = [0; QK];
            block.bsums = [0; 2 * QK / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in block.qs.iter_mut().zip(x) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for i in 0..QK / 16 {
            let sum: i32 = block.qs[16 * i..16 * (i + 1)]
                .iter()
                .map(|&q| q as i32)
                .sum();
            block.bsums[2 * i..2 * i + 2].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        block.d = (1.0 / iscale).to_le_bytes();
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ8K>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = block.scale();
        for (out, &q) in y.iter_mut().zip(&block.qs) {
            *out = q as f32 * d;
        }
    }
}

/// Dot product of two Q8_K rows (ggml's `ggml_vec_dot_q8_K_q8_K`, not used by real weights).
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ8K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += x.scale() * y.scale() * sumi as f32;
    }
    sum
}
