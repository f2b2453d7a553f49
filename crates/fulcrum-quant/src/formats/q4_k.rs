//! Q4_K: 256 weights per super-block in 8 sub-blocks of 32; 4-bit codes, 6-bit sub-block scales and minimums
//! under f16 super-scales (ggml-common.h `block_q4_K`). Dots against Q8_K activations.

use super::k_scales;
use super::q8_k::BlockQ8K;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 256;

/// `block_q4_K`: `d`, `dmin` (f16), 12 bytes of packed scales/minimums ([`k_scales`]), then 128 bytes of codes.
/// Element 64·j + l (l < 32) is the low nibble of qs\[32·j + l\], element 64·j + 32 + l its high nibble;
/// value e = d·scale\[e/32\]·code − dmin·min\[e/32\].
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144 && align_of::<BlockQ4K>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ4K {}

/// The 4-bit code of element `e`.
#[inline]
pub fn code(block: &BlockQ4K, e: usize) -> u8 {
    let byte = block.qs[32 * (e / 64) + e % 32];
    if e % 64 < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// Simple quantizer (min/max fit per sub-block; not llama.cpp's search, see [`k_scales::quantize_asymmetric`]).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ4K>(dst)) {
        let (d, dmin, scales, codes) = k_scales::quantize_asymmetric(x, 16);
        block.d = f32_to_f16(d);
        block.dmin = f32_to_f16(dmin);
        block.scales = scales;
        for (i, byte) in block.qs.iter_mut().enumerate() {
            let e = 64 * (i / 32) + i % 32;
            *byte = codes[e] | (codes[e + 32] << 4);
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ4K>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        let dmin = f16_to_f32(block.dmin);
        let (scales, mins) = k_scales::unpack(&block.scales);
        for (e, out) in y.iter_mut().enumerate() {
            let (step, offset) = (d * scales[e / 32] as f32, dmin * mins[e / 32] as f32);
            *out = step * code(block, e) as f32 - offset;
        }
    }
}

/// Dot product with a Q8_K activation row: d·d'·Σ scale·Σqp − dmin·d'·Σ min·bsum, with exact integer inner sums.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ4K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let (scales, mins) = k_scales::unpack(&x.scales);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let dot: i32 = (32 * s..32 * (s + 1))
                .map(|e| code(x, e) as i32 * y.qs[e] as i32)
                .sum();
            sumi += scales[s] as i32 * dot;
            summ += mins[s] as i32 * (y.bsum(2 * s) as i32 + y.bsum(2 * s + 1) as i32);
        }
        let d = f16_to_f32(x.d) * y.scale();
        let dmin = f16_to_f32(x.dmin) * y.scale();
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}
