//! Q5_K: as Q4_K with a fifth code bit per element (ggml-common.h `block_q5_K`). Dots against Q8_K activations.

use super::k_scales;
use super::q8_k::BlockQ8K;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 256;

/// `block_q5_K`: `d`, `dmin` (f16), 12 bytes of packed scales/minimums, 32 bytes `qh`, 128 bytes `qs`.
/// Element e = 64·j + 32·h + l (h ∈ {0,1}, l < 32): low 4 bits in nibble h of qs\[32·j + l\], fifth bit is bit
/// 2·j + h of qh\[l\]; value = d·scale\[e/32\]·code − dmin·min\[e/32\].
#[repr(C)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK / 8],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176 && align_of::<BlockQ5K>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ5K {}

/// The 5-bit code of element `e`.
#[inline]
pub fn code(block: &BlockQ5K, e: usize) -> u8 {
    let (j, h, l) = (e / 64, (e / 32) % 2, e % 32);
    let low = (block.qs[32 * j + l] >> (4 * h)) & 0x0F;
    let high = (block.qh[l] >> (2 * j + h)) & 1;
    low | (high << 4)
}

/// Simple quantizer (min/max fit per sub-block; not llama.cpp's search, see [`k_scales::quantize_asymmetric`]).
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ5K>(dst)) {
        let (d, dmin, scales, codes) = k_scales::quantize_asymmetric(x, 32);
        block.d = f32_to_f16(d);
        block.dmin = f32_to_f16(dmin);
        block.scales = scales;
        block.qs = [0; QK / 2];
        block.qh = [0; QK / 8];
        for (e, &c) in codes.iter().enumerate() {
            let (j, h, l) = (e / 64, (e / 32) % 2, e % 32);
            block.qs[32 * j + l] |= (c & 0x0F) << (4 * h);
            block.qh[l] |= (c >> 4) << (2 * j + h);
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ5K>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        let dmin = f16_to_f32(block.dmin);
        let (scales, mins) = k_scales::unpack(&block.scales);
        for (e, out) in y.iter_mut().enumerate() {
            let (step, offset) = (d * scales[e / 32] as f32, dmin * mins[e / 32] as f32);
            *out = step * code(block, e) as f32 - offset;
        }
    }
}

/// Dot product with a Q8_K activation row, as for Q4_K.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ5K>(w).iter().zip(cast::<BlockQ8K>(a)) {
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
