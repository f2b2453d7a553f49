//! Q5_1: 32 weights per block as 5-bit codes with an f16 scale and an f16 offset (ggml-common.h `block_q5_1`).
//! Dots against Q8_1 activations.

use super::q8_1::BlockQ8_1;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16};

/// Values per block.
pub const QK: usize = 32;

/// `block_q5_1`: `d` (f16), `m` (f16), `qh` (u32 LE; bit j is the 5th bit of element j), then 16 bytes of low
/// nibbles laid out as in Q4_0; value = code · d + m.
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ5_1 {}

/// The 5-bit code (0..=31) of element `j` of `block`.
#[inline]
pub fn code(block: &BlockQ5_1, j: usize) -> u8 {
    let qh = u32::from_le_bytes(block.qh);
    let nibble = if j < QK / 2 {
        block.qs[j] & 0x0F
    } else {
        block.qs[j - QK / 2] >> 4
    };
    nibble | ((((qh >> j) & 1) as u8) << 4)
}

/// Reference quantizer (`quantize_row_q5_1_ref`): m = min, d = (max − min)/31, codes truncate (x − m)/d + 0.5.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ5_1>(dst)) {
        let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = x.iter().fold(-f32::MAX, |m, &v| m.max(v));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f32_to_f16(d);
        block.m = f32_to_f16(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let lo = (((x[j] - min) * id + 0.5) as u8).min(31);
            let hi = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(31);
            block.qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
            qh |= ((lo as u32 >> 4) & 1) << j;
            qh |= ((hi as u32 >> 4) & 1) << (j + QK / 2);
        }
        block.qh = qh.to_le_bytes();
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ5_1>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        let m = f16_to_f32(block.m);
        for (j, out) in y.iter_mut().enumerate() {
            *out = code(block, j) as f32 * d + m;
        }
    }
}

/// Dot product with a Q8_1 activation row: d·d'·Σqp + m·s'.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ5_1>(w).iter().zip(cast::<BlockQ8_1>(a)) {
        let sumi: i32 = (0..QK).map(|j| code(x, j) as i32 * y.qs[j] as i32).sum();
        sum +=
            (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sum
}
