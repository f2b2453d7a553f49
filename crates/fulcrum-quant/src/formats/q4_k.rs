//! Q4_K: 256 weights per super-block in 8 sub-blocks of 32; 4-bit codes, 6-bit sub-block scales and minimums
//! under f16 super-scales (ggml-common.h `block_q4_K`). Dots against Q8_K activations.

use super::k_scales;
use crate::block::{cast_mut, ByteBlock};
use crate::fp::f32_to_f16;

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

impl k_scales::ScaleMinBlock for BlockQ4K {
    fn header(&self) -> (&[u8; 2], &[u8; 2], &[u8; 12]) {
        (&self.d, &self.dmin, &self.scales)
    }
    fn code(&self, e: usize) -> u8 {
        code(self, e)
    }
}

/// Expands blocks to f32.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    k_scales::dequantize::<BlockQ4K>(src, dst)
}

/// Dot product with a Q8_K activation row (see [`k_scales::vec_dot`]).
pub fn vec_dot(w: &[u8], a: &[u8]) -> f32 {
    k_scales::vec_dot::<BlockQ4K>(w, a)
}
