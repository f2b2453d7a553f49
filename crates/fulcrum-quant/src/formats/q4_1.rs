//! Q4_1: 32 weights per block as 4-bit codes with an f16 scale and an f16 offset (ggml-common.h `block_q4_1`).
//! Dots against Q8_1 activations, whose `s` field carries the offset term.

use super::q8_1::BlockQ8_1;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 32;

/// `block_q4_1`: `d` (f16), `m` (f16), then 16 bytes with element j in the low nibble of byte j and element j+16 in
/// the high nibble; value = nibble · d + m.
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ4_1 {}

/// Reference quantizer (`quantize_row_q4_1_ref`): m = min, d = (max − min)/15, codes truncate (x − m)/d + 0.5.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ4_1>(dst)) {
        let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f32_to_f16(d);
        block.m = f32_to_f16(min);
        for j in 0..QK / 2 {
            let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let hi = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            block.qs[j] = lo | (hi << 4);
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ4_1>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        let m = f16_to_f32(block.m);
        for (j, &byte) in block.qs.iter().enumerate() {
            y[j] = (byte & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (byte >> 4) as f32 * d + m;
        }
    }
}

/// Dot product with a Q8_1 activation row: Σ (q·d + m)(p·d') = d·d'·Σqp + m·s'.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ4_1>(w).iter().zip(cast::<BlockQ8_1>(a)) {
        let mut sumi = 0i32;
        for (j, &byte) in x.qs.iter().enumerate() {
            sumi += (byte & 0x0F) as i32 * y.qs[j] as i32;
            sumi += (byte >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum +=
            (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sum
}
