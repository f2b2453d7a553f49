//! Q6_K: 256 weights per super-block in 16 sub-blocks of 16; 6-bit codes centred on 32, int8 sub-block scales
//! under one f16 super-scale (ggml-common.h `block_q6_K`). Dots against Q8_K activations.

use super::q8_k::BlockQ8K;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16, signed_absmax};

/// Values per block.
pub const QK: usize = 256;

/// `block_q6_K`: `ql` (128 bytes, low 4 bits), `qh` (64 bytes, high 2 bits), `scales` (16 × i8), `d` (f16).
/// Element e = 128·n + 32·k + l (n < 2, k < 4, l < 32): low bits are nibble k/2 of ql\[64·n + 32·(k%2) + l\], high
/// bits are bits 2·k..2·k+1 of qh\[32·n + l\]; value = d·scales\[e/16\]·(code − 32).
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK / 2],
    pub qh: [u8; QK / 4],
    pub scales: [i8; QK / 16],
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210 && align_of::<BlockQ6K>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ6K {}

/// Byte indices (in `ql`, `qh`) and shifts of element `e`'s low 4 and high 2 bits.
#[inline]
fn position(e: usize) -> (usize, u32, usize, u32) {
    let (n, k, l) = (e / 128, (e / 32) % 4, e % 32);
    (
        64 * n + 32 * (k % 2) + l,
        4 * (k / 2) as u32,
        32 * n + l,
        2 * k as u32,
    )
}

/// The 6-bit code (0..=63) of element `e`.
#[inline]
pub fn code(block: &BlockQ6K, e: usize) -> u8 {
    let (low_at, low_shift, high_at, high_shift) = position(e);
    ((block.ql[low_at] >> low_shift) & 0x0F) | (((block.qh[high_at] >> high_shift) & 3) << 4)
}

/// Simple quantizer: each sub-block of 16 maps its value of largest magnitude to code −32 (as Q4_0 does), and the
/// sub-block scales are rounded to int8 against the largest one. Not llama.cpp's search, so error is a bit larger.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ6K>(dst)) {
        let mut sub_scale = [0.0f32; 16];
        for (s, chunk) in x.chunks_exact(16).enumerate() {
            sub_scale[s] = signed_absmax(chunk) / -32.0;
        }
        let max_scale = sub_scale.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16_to_f32(f32_to_f16(max_scale / 127.0));
        block.d = f32_to_f16(d);
        for (q, &s) in block.scales.iter_mut().zip(&sub_scale) {
            *q = if d > 0.0 {
                (s / d).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            };
        }
        block.ql = [0; QK / 2];
        block.qh = [0; QK / 4];
        for (e, &v) in x.iter().enumerate() {
            let step = d * block.scales[e / 16] as f32;
            let c = if step != 0.0 {
                ((v / step).round().clamp(-32.0, 31.0) as i32 + 32) as u8
            } else {
                32
            };
            let (low_at, low_shift, high_at, high_shift) = position(e);
            block.ql[low_at] |= (c & 0x0F) << low_shift;
            block.qh[high_at] |= (c >> 4) << high_shift;
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ6K>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (e, out) in y.iter_mut().enumerate() {
            *out = d * block.scales[e / 16] as f32 * (code(block, e) as i32 - 32) as f32;
        }
    }
}

/// Dot product with a Q8_K activation row: d·d'·Σ scale·Σ(code − 32)·q, with exact integer inner sums.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ6K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let mut sumi = 0i32;
        for s in 0..16 {
            let dot: i32 = (16 * s..16 * (s + 1))
                .map(|e| (code(x, e) as i32 - 32) * y.qs[e] as i32)
                .sum();
            sumi += x.scales[s] as i32 * dot;
        }
        sum += f16_to_f32(x.d) * y.scale() * sumi as f32;
    }
    sum
}
