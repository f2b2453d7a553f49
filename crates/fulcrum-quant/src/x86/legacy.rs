//! AVX2 dot products for the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): one block per step, codes unpacked
//! to 32 bytes, an exact i32 dot via `maddubs`/`madd`, then `acc += (d_w·d_a) · float(dot)`.

use super::helpers::{bits_to_bytes, dot_i8_i8, dot_u8_i8, half_product, hsum_f32, nibbles_32};
use crate::block::cast;
use crate::formats::{q4_0::BlockQ4_0, q4_1::BlockQ4_1, q5_0::BlockQ5_0, q5_1::BlockQ5_1};
use crate::formats::{q8_0::BlockQ8_0, q8_1::BlockQ8_1};
use std::arch::x86_64::*;

/// Q4_0 × Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in cast::<BlockQ4_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let d = _mm256_set1_ps(half_product(x.d, y.d));
        let qx = _mm256_sub_epi8(nibbles_32(x.qs.as_ptr()), _mm256_set1_epi8(8));
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8_i8(qx, qy)), acc);
    }
    hsum_f32(acc)
}

/// Q4_1 × Q8_1: unsigned codes, plus the offset term m·s per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0.0f32;
    for (x, y) in cast::<BlockQ4_1>(w).iter().zip(cast::<BlockQ8_1>(a)) {
        offsets += half_product(x.m, y.s);
        let d = _mm256_set1_ps(half_product(x.d, y.d));
        let qx = nibbles_32(x.qs.as_ptr());
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8(qx, qy)), acc);
    }
    hsum_f32(acc) + offsets
}

/// Q5_0 × Q8_0: code − 16 is the nibble when the fifth bit is set and the nibble with 0xF0 or-ed in (as i8,
/// nibble − 16) when it is clear.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in cast::<BlockQ5_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let d = _mm256_set1_ps(half_product(x.d, y.d));
        let high_clear = _mm256_andnot_si256(
            bits_to_bytes(u32::from_le_bytes(x.qh)),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        let qx = _mm256_or_si256(nibbles_32(x.qs.as_ptr()), high_clear);
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8_i8(qx, qy)), acc);
    }
    hsum_f32(acc)
}

/// Q5_1 × Q8_1: unsigned 5-bit codes, plus the offset term m·s per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0.0f32;
    for (x, y) in cast::<BlockQ5_1>(w).iter().zip(cast::<BlockQ8_1>(a)) {
        offsets += half_product(x.m, y.s);
        let d = _mm256_set1_ps(half_product(x.d, y.d));
        let high = _mm256_and_si256(
            bits_to_bytes(u32::from_le_bytes(x.qh)),
            _mm256_set1_epi8(0x10),
        );
        let qx = _mm256_or_si256(nibbles_32(x.qs.as_ptr()), high);
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8(qx, qy)), acc);
    }
    hsum_f32(acc) + offsets
}

/// Q8_0 × Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in cast::<BlockQ8_0>(w).iter().zip(cast::<BlockQ8_0>(a)) {
        let d = _mm256_set1_ps(half_product(x.d, y.d));
        let qx = _mm256_loadu_si256(x.qs.as_ptr().cast());
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8_i8(qx, qy)), acc);
    }
    hsum_f32(acc)
}
