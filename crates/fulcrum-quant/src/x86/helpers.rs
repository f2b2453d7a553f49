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

/// The low 32 bits of `bits` as two IEEE halves widened to f32 (lanes 0 and 1; lanes 2 and 3 are zero).
///
/// Written in assembly because LLVM, seeing that only the low lanes are used, turns any intrinsic version into an
/// insert into whatever register is free — often a loop's accumulator — which chains every block to the previous
/// block's FMA and serializes the loop.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(bits: u32) -> __m128 {
    let x: __m128;
    std::arch::asm!(
        "vmovd {x}, {bits:e}",
        "vcvtph2ps {x}, {x}",
        bits = in(reg) bits,
        x = out(xmm_reg) x,
        options(pure, nomem, nostack, preserves_flags)
    );
    x
}

/// The f32 value of a little-endian IEEE half, via F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn half(bytes: [u8; 2]) -> f32 {
    _mm_cvtss_f32(halves(u16::from_le_bytes(bytes) as u32))
}

/// The product of two little-endian IEEE halves (one conversion for both).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn half_product(a: [u8; 2], b: [u8; 2]) -> f32 {
    let v = halves(u16::from_le_bytes(a) as u32 | ((u16::from_le_bytes(b) as u32) << 16));
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
