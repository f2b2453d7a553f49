//! Q4_0: 32 weights per block as 4-bit codes centred on 8, one f16 scale (ggml-common.h `block_q4_0`).
//! Dots against Q8_0 activations.

use super::q8_0::BlockQ8_0;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16, signed_absmax};

/// Values per block.
pub const QK: usize = 32;

/// `block_q4_0`: `d` (f16), then 16 bytes; byte j holds element j in its low nibble and element j+16 in its high
/// nibble; value = (nibble − 8) · d.
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ4_0 {}

/// Reference quantizer (`quantize_row_q4_0_ref`): d = max/−8 for the signed value of largest magnitude, codes
/// truncate x/d + 8.5 and clamp to 15.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ4_0>(dst)) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f32_to_f16(d);
        for j in 0..QK / 2 {
            let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let hi = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            block.qs[j] = lo | (hi << 4);
        }
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ4_0>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (j, &byte) in block.qs.iter().enumerate() {
            y[j] = ((byte & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((byte >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Dot product with a Q8_0 activation row: exact int32 per block, scaled by d_w·d_a.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ4_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let mut sumi = 0i32;
        for (j, &byte) in x.qs.iter().enumerate() {
            sumi += ((byte & 0x0F) as i32 - 8) * y.qs[j] as i32;
            sumi += ((byte >> 4) as i32 - 8) * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sum
}
