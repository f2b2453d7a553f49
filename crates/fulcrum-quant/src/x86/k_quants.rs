//! AVX2 dot products for the K-quants against Q8_K: per super-block, codes are unpacked 32 at a time, multiplied
//! with `maddubs`, weighted by their sub-block scale with `madd`, and summed exactly in i32 before one float FMA.
//! The minimum terms of Q4_K/Q5_K use the activation's `bsums`, as in ggml.

use super::helpers::{dot_i8_i8, half, hsum_f32};
use crate::block::cast;
use crate::formats::{k_scales, q4_k::BlockQ4K, q5_k::BlockQ5K, q6_k::BlockQ6K, q8_k::BlockQ8K};
use std::arch::x86_64::*;

/// min\[s\] · (sum of the activation codes in sub-block s), from the 16-code `bsums`.
#[inline]
pub(super) fn min_sub(mins: &[u8; 8], y: &BlockQ8K, s: usize) -> i32 {
    mins[s] as i32 * (y.bsum(2 * s) as i32 + y.bsum(2 * s + 1) as i32)
}

/// Σ over sub-blocks of [`min_sub`].
#[inline]
pub(super) fn min_term(mins: &[u8; 8], y: &BlockQ8K) -> i32 {
    (0..8).map(|s| min_sub(mins, y, s)).sum()
}

/// i32 lanes of Σ scale · (u8 code × i8 activation) for 32 codes and 32 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_dot(codes: __m256i, q8: *const i8, scale: i16) -> __m256i {
    let products = _mm256_maddubs_epi16(codes, _mm256_loadu_si256(q8.cast()));
    _mm256_madd_epi16(_mm256_set1_epi16(scale), products)
}

/// i32 lanes of the scaled code sums of Q4_K sub-blocks `2j` (low nibbles) and `2j + 1` (high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_pair(x: &BlockQ4K, y: &BlockQ8K, scales: &[u8; 8], j: usize) -> __m256i {
    let low4 = _mm256_set1_epi8(0x0F);
    let bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast());
    let low = _mm256_and_si256(bits, low4);
    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
    let q8 = y.qs.as_ptr().add(64 * j);
    _mm256_add_epi32(
        scaled_dot(low, q8, scales[2 * j] as i16),
        scaled_dot(high, q8.add(32), scales[2 * j + 1] as i16),
    )
}

/// Q4_K × Q8_K, in the arithmetic of llama.cpp's repacked Q4_K kernels (which it uses for every Q4_K matrix whose
/// row count is a multiple of 8 on AVX2): per super-block, the scaled code sum and the minimum term are exact integers,
/// each converted to f32 and accumulated by its own fused multiply-add chain; the two chains are subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (x, y) in cast::<BlockQ4K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let (scales, mins) = k_scales::unpack(&x.scales);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            sumi = _mm256_add_epi32(sumi, q4_k_pair(x, y, &scales, j));
        }
        acc = (hsum_i32(sumi) as f32).mul_add(half(x.d) * y.scale(), acc);
        acc_min = (min_term(&mins, y) as f32).mul_add(half(x.dmin) * y.scale(), acc_min);
    }
    acc - acc_min
}

/// Q4_K × Q8_K as llama.cpp's repacked kernel computes activation rows that it takes four at a time (its gemm):
/// the same exact integer sums, but converted and accumulated once per pair of sub-blocks rather than once per
/// super-block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_grouped(w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (x, y) in cast::<BlockQ4K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let (scales, mins) = k_scales::unpack(&x.scales);
        let (d, dmin) = (half(x.d) * y.scale(), half(x.dmin) * y.scale());
        for j in 0..4 {
            acc = (hsum_i32(q4_k_pair(x, y, &scales, j)) as f32).mul_add(d, acc);
            let min_sum = min_sub(&mins, y, 2 * j) + min_sub(&mins, y, 2 * j + 1);
            acc_min = (min_sum as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Q6_K × Q8_K as llama.cpp's tiled K-quant matmul computes it (used for batches of 8 or more activation rows): per
/// super-block the exact integer sum is scaled by the weight's `d`, then accumulated with the activation's `d` by a
/// fused multiply-add.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_tiled(w: &[u8], a: &[u8]) -> f32 {
    let bias = _mm256_set1_epi8(32);
    let mut acc = 0.0f32;
    for (x, y) in cast::<BlockQ6K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let codes = q6_codes(x, n);
            for (k, &code) in codes.iter().enumerate() {
                let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(128 * n + 32 * k).cast());
                let products = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(code, q8),
                    _mm256_maddubs_epi16(bias, q8),
                );
                let sub = 8 * n + 2 * k;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[sub + 1] as i16),
                    _mm_set1_epi16(x.scales[sub] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, products));
            }
        }
        acc = (half(x.d) * hsum_i32(sumi) as f32).mul_add(y.scale(), acc);
    }
    acc
}

/// Exact sum of the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_i32(x: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Q5_K × Q8_K: as Q4_K, with bit 2·j (+1 for the high nibbles) of each `qh` byte as the code's fifth bit.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let low4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut minimums = 0.0f32;
    for (x, y) in cast::<BlockQ5K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let (scales, mins) = k_scales::unpack(&x.scales);
        minimums += half(x.dmin) * y.scale() * min_term(&mins, y) as f32;
        let mut high_bits = _mm256_loadu_si256(x.qh.as_ptr().cast());
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast());
            let fifth_low = _mm256_slli_epi16::<4>(_mm256_and_si256(high_bits, one));
            let fifth_high =
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(high_bits), one));
            high_bits = _mm256_srli_epi16::<2>(high_bits);
            let low = _mm256_or_si256(_mm256_and_si256(bits, low4), fifth_low);
            let high = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4),
                fifth_high,
            );
            let q8 = y.qs.as_ptr().add(64 * j);
            sumi = _mm256_add_epi32(sumi, scaled_dot(low, q8, scales[2 * j] as i16));
            sumi = _mm256_add_epi32(sumi, scaled_dot(high, q8.add(32), scales[2 * j + 1] as i16));
        }
        let d = _mm256_set1_ps(half(x.d) * y.scale());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_f32(acc) - minimums
}

/// Q6_K × Q8_K: unsigned codes (0..64) go through `maddubs`, and 32·Σq is subtracted (also via `maddubs`) to
/// centre them; each 32-code group spans two 16-element sub-blocks, so its scale vector has two halves.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in cast::<BlockQ6K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        // The codes are stored with a bias of 32, removed once per 32-element chunk from the activation sums, as
        // ggml does: lane k loses 32 · Σ scale · bsum over chunk k. (Removing it per product would give the same
        // total with different lane sums, and so a different float rounding.)
        let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr().cast()));
        let bias = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales16));
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let codes = q6_codes(x, n);
            let mut parts = [_mm256_setzero_si256(); 4];
            for (k, (&code, part)) in codes.iter().zip(parts.iter_mut()).enumerate() {
                let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(128 * n + 32 * k).cast());
                let sub = 8 * n + 2 * k;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[sub + 1] as i16),
                    _mm_set1_epi16(x.scales[sub] as i16),
                );
                *part = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(code, q8));
            }
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(parts[0], parts[1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(parts[2], parts[3]));
        }
        let sumi = _mm256_sub_epi32(sumi, bias);
        let d = _mm256_set1_ps(y.scale() * half(x.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_f32(acc)
}

/// The 6-bit codes (0..63) of elements `128·half .. 128·half + 128` of a Q6_K block, as four vectors of 32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_codes(x: &BlockQ6K, half: usize) -> [__m256i; 4] {
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let ql0 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half).cast());
    let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half + 32).cast());
    let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half).cast());
    let top = |shift: __m128i| {
        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, shift), low2))
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low4), top(_mm_cvtsi32_si128(0))),
        _mm256_or_si256(_mm256_and_si256(ql1, low4), top(_mm_cvtsi32_si128(2))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
            top(_mm_cvtsi32_si128(4)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
            top(_mm_cvtsi32_si128(6)),
        ),
    ]
}

/// Q8_K × Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in cast::<BlockQ8K>(w).iter().zip(cast::<BlockQ8K>(a)) {
        let mut sumi = _mm256_setzero_si256();
        for j in 0..8 {
            let qx = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast());
            let qy = _mm256_loadu_si256(y.qs.as_ptr().add(32 * j).cast());
            sumi = _mm256_add_epi32(sumi, dot_i8_i8(qx, qy));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(x.scale() * y.scale()),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_f32(acc)
}
