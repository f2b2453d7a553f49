//! Q5_0: 32 weights per block as 5-bit codes centred on 16, one f16 scale (ggml-common.h `block_q5_0`).
//! Dots against Q8_0 activations.

use super::q8_0::BlockQ8_0;
use crate::block::{cast, cast_mut, ByteBlock};
use crate::fp::{f16_to_f32, f32_to_f16, signed_absmax};

/// Values per block.
pub const QK: usize = 32;

/// `block_q5_0`: `d` (f16), `qh` (u32 LE; bit j is the 5th bit of element j), then 16 bytes of low nibbles
/// (element j low, element j+16 high, as in Q4_0); value = (code − 16) · d.
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 1);
// SAFETY: repr(C), byte arrays only.
unsafe impl ByteBlock for BlockQ5_0 {}

/// The 5-bit code (0..=31) of element `j` of `block`.
#[inline]
pub fn code(block: &BlockQ5_0, j: usize) -> u8 {
    let qh = u32::from_le_bytes(block.qh);
    let nibble = if j < QK / 2 {
        block.qs[j] & 0x0F
    } else {
        block.qs[j - QK / 2] >> 4
    };
    nibble | ((((qh >> j) & 1) as u8) << 4)
}

/// Reference quantizer (`quantize_row_q5_0_ref`): d = max/−16, codes truncate x/d + 16.5 and clamp to 31.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(QK).zip(cast_mut::<BlockQ5_0>(dst)) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f32_to_f16(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let lo = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let hi = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            block.qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
            qh |= ((lo as u32 >> 4) & 1) << j;
            qh |= ((hi as u32 >> 4) & 1) << (j + QK / 2);
        }
        block.qh = qh.to_le_bytes();
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (block, y) in cast::<BlockQ5_0>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(block.d);
        for (j, out) in y.iter_mut().enumerate() {
            *out = (code(block, j) as i32 - 16) as f32 * d;
        }
    }
}

/// Dot product with a Q8_0 activation row: exact int32 per block, scaled by d_w·d_a.
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in cast::<BlockQ5_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let sumi: i32 = (0..QK)
            .map(|j| (code(x, j) as i32 - 16) * y.qs[j] as i32)
            .sum();
        sum += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sum
}
