//! Small AVX2 building blocks shared by the kernels.

use std::arch::x86_64::*;

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn hsum_f32(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f32 value of a little-endian IEEE half, via F16C.
///
/// The half is broadcast rather than inserted into lane 0: an insert lets LLVM merge into whatever register is
/// free — often the loop's accumulator — which chains every block to the previous one's FMA.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn half(bytes: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(
        u16::from_le_bytes(bytes) as i16
    )))
}

/// The product of two little-endian IEEE halves (one conversion for both; broadcast for the reason in [`half`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn half_product(a: [u8; 2], b: [u8; 2]) -> f32 {
    let pair = u16::from_le_bytes(a) as u32 | ((u16::from_le_bytes(b) as u32) << 16);
    let v = _mm_cvtph_ps(_mm_set1_epi32(pair as i32));
    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

/// 16 bytes of packed nibbles as 32 bytes: the low nibbles first (elements 0..16), then the high ones (16..32),
/// which is the element order of Q4_0/Q4_1/Q5_0/Q5_1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte j is 0xFF where bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    // Byte j takes byte j/8 of `bits`, then everything but bit j%8 is forced to 1: all ones iff that bit was set.
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// Σ of adjacent pairs of u8 × i8 products, widened to 8 i32 sums of 4 products each.
/// `u` must be ≤ 127 or `s` small enough that pair sums fit in i16 (true for all codes here).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// As [`dot_u8_i8`] for two signed vectors, moving the sign of `x` onto `y`. `y` must not hold −128 (quantizers
/// here produce codes in [−127, 127]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}
