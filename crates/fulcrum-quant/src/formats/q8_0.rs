//! Q8_0: 32 values per block as int8 codes with one f16 scale (ggml-common.h `block_q8_0`).
//! The activation format for Q4_0, Q5_0 and Q8_0 weights.

use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 32;

/// `block_q8_0`: `d` (f16 scale), then 32 signed codes; value j = qs\[j\] · d.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ8_0 {}

/// Reference quantizer (`quantize_row_q8_0_ref`): d = amax/127, q = round-half-away(x/d), so codes lie in [-127, 127].
#[inline]
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ8_0>(dst)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // As ggml's AVX2 quantizer (the one llama.cpp runs on this class of CPU): x · 127/amax, ties to even.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        block.d = f32_to_f16(d);
        for (q, v) in block.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ8_0>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (out, &q) in y.iter_mut().zip(&block.qs) {
            *out = q as f32 * d;
        }
    }
}

/// Dot product of a Q8_0 weight row with a Q8_0 activation row: exact int32 per block, scaled by d_w·d_a.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ8_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sum
}
