//! Q8_1: Q8_0 plus a precomputed `s = d · Σq` per block (ggml-common.h `block_q8_1`).
//! The activation format for Q4_1 and Q5_1 weights, whose offset `m` multiplies Σ of the activation values.

use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 32;

/// `block_q8_1`: `d` (f16 scale), `s` (f16, d·Σqs), then 32 signed codes; value j = qs\[j\] · d.
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36 && align_of::<BlockQ8_1>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ8_1 {}

/// Reference quantizer (`quantize_row_q8_1_ref`): as Q8_0, plus s = f16(d · Σq) with the f32 d.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ8_1>(dst)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // As ggml's AVX2 quantizer (the one llama.cpp runs on this class of CPU): x · 127/amax, ties to even.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        block.d = f32_to_f16(d);
        block.s = f32_to_f16(sum as f32 * d);
    }
}

/// Expands blocks to f32 (`s` is redundant and ignored).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ8_1>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (out, &q) in y.iter_mut().zip(&block.qs) {
            *out = q as f32 * d;
        }
    }
}
