//! AVX2 activation quantizers: the bytes of the scalar references in `formats::q8_0` and `formats::q8_k` (the
//! same maxima, scales, round-to-nearest-even and saturation, NaN codes as 0), eight values per instruction.

use crate::block::cast_mut;
use crate::formats::{q8_0::BlockQ8_0, q8_k::BlockQ8K};
use crate::fp::f32_to_f16;
use std::arch::x86_64::*;

/// Largest |x| over `v` (NaN ignored, as `f32::max` ignores it).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_max(v: &[__m256]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    // max_ps(a, b) returns b when a is NaN: the running maximum survives.
    let m = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
        _mm256_max_ps(_mm256_andnot_ps(sign, x), m)
    });
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `round_ties_even(x · scale)` as i32 per lane, NaN as 0 (Rust's saturating float-to-int cast; the values here
/// are within ±127.5, where no other saturation happens).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn codes(x: __m256, scale: __m256) -> __m256i {
    let y = _mm256_mul_ps(x, scale);
    let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
    _mm256_cvtps_epi32(_mm256_round_ps::<
        { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
    >(y))
}

/// Four vectors of i32 codes as 32 saturated i8 codes, in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack(q: [__m256i; 4]) -> __m256i {
    let lo = _mm256_packs_epi32(q[0], q[1]);
    let hi = _mm256_packs_epi32(q[2], q[3]);
    // packs works within 128-bit lanes: the dwords come out as 0 2 4 6 1 3 5 7 (in 4-byte groups).
    let bytes = _mm256_packs_epi16(lo, hi);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Q8_0 blocks of `src`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `src` is a whole number of blocks and `dst` holds as many.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(32).zip(cast_mut::<BlockQ8_0>(dst)) {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let amax = abs_max(&v);
        block.d = f32_to_f16(amax / 127.0);
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = pack(v.map(|x| codes(x, id)));
        _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), q);
    }
}

/// Q8_K blocks of `src`.
///
/// # Safety
/// As [`quantize_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, block) in src.chunks_exact(256).zip(cast_mut::<BlockQ8K>(dst)) {
        let v: [__m256; 32] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let amax = abs_max(&v);
        // The first value of the largest magnitude, with its sign (`fp::signed_absmax`).
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        if max == 0.0 || amax == 0.0 {
            block.d = 0.0f32.to_le_bytes();
            block.qs = [0; 256];
            block.bsums = [0; 32];
            continue;
        }
        let iscale = -127.0 / max;
        let scale = _mm256_set1_ps(iscale);
        let top = _mm256_set1_epi32(127);
        for g in 0..8 {
            let q: [__m256i; 4] =
                std::array::from_fn(|i| _mm256_min_epi32(codes(v[4 * g + i], scale), top));
            _mm256_storeu_si256(block.qs.as_mut_ptr().add(32 * g).cast(), pack(q));
            for half in 0..2 {
                let s = _mm256_add_epi32(q[2 * half], q[2 * half + 1]);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
                let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)));
                let at = 2 * (2 * g + half);
                block.bsums[at..at + 2].copy_from_slice(&(sum as i16).to_le_bytes());
            }
        }
        block.d = (1.0 / iscale).to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{q8_0, q8_k};

    /// Both quantizers write the scalar references' bytes on special values: NaN, infinities, signed zeros,
    /// subnormals, values landing exactly on .5 after scaling, and a negative maximum before an equal positive one.
    #[test]
    fn quantizers_match_scalar_on_special_values() {
        if !crate::x86::available() {
            return;
        }
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e-40,
            -1e-45,
            127.0,
            -127.0,
            63.5,
            -0.5,
            2.5,
            f32::MAX,
        ];
        let mut state = 7u64;
        let mut cases: Vec<Vec<f32>> = Vec::new();
        for k in 0..64 {
            let v: Vec<f32> = (0..256)
                .map(|i| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                    match (k + i) % 9 {
                        0 => specials[(state >> 20) as usize % specials.len()],
                        1 => (r * 254.0).round() / 2.0, // halves: ties after scaling by 127/127
                        _ => r * (1 << (k % 12)) as f32,
                    }
                })
                .collect();
            cases.push(v);
        }
        let mut tied = vec![1.0f32; 256];
        tied[3] = -127.0;
        tied[9] = 127.0;
        cases.push(tied);
        for x in &cases {
            let (mut fast, mut want) = (vec![0u8; 8 * 34], vec![0u8; 8 * 34]);
            // SAFETY: AVX2, FMA and F16C were detected; 256 values are 8 Q8_0 blocks.
            unsafe { quantize_q8_0(x, &mut fast) };
            q8_0::quantize(x, &mut want);
            assert_eq!(fast, want, "Q8_0 of {x:?}");
            let (mut fast, mut want) = (vec![0u8; 292], vec![0u8; 292]);
            // SAFETY: as above; 256 values are one Q8_K block (292 bytes).
            unsafe { quantize_q8_k(x, &mut fast) };
            q8_k::quantize(x, &mut want);
            assert_eq!(fast, want, "Q8_K of {x:?}");
        }
    }
}
