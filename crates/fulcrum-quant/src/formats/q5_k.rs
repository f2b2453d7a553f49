//! Q5_K: as Q4_K with a fifth code bit per element (ggml-common.h `block_q5_K`). Dots against Q8_K activations.

use super::k_scales;
use crate::block::{cast_mut, ByteBlock};
use crate::fp::f32_to_f16;

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

impl k_scales::ScaleMinBlock for BlockQ5K {
    fn header(&self) -> (&[u8; 2], &[u8; 2], &[u8; 12]) {
        (&self.d, &self.dmin, &self.scales)
    }
    fn code(&self, e: usize) -> u8 {
        code(self, e)
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    k_scales::dequantize::<BlockQ5K>(src, dst)
}

/// Dot product with a Q8_K activation row (see [`k_scales::vec_dot`]).
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    k_scales::vec_dot::<BlockQ5K>(w, a)
}
