//! AVX2 dot products for F32, F16 (via F16C) and BF16 rows: four 8-lane FMA accumulators, as ggml's `GGML_F32_STEP`.

use super::helpers::hsum_f32;
use crate::fp::{bf16_to_f32, f16_to_f32};
use std::arch::x86_64::*;

/// Runs `load(i)` (8 lanes from element i) over a row of `n` elements with four accumulators, then the scalar tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_with(
    n: usize,
    load_w: impl Fn(usize) -> __m256,
    load_a: impl Fn(usize) -> __m256,
    tail: impl Fn(usize) -> f32,
) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, lane) in acc.iter_mut().enumerate() {
            *lane = _mm256_fmadd_ps(load_w(i + 8 * k), load_a(i + 8 * k), *lane);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load_w(i), load_a(i), acc[0]);
        i += 8;
    }
    let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum_f32(total) + (i..n).map(tail).sum::<f32>()
}

/// F32 × F32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr().cast::<f32>(), a.as_ptr().cast::<f32>());
    let f32_at = |b: &[u8], i: usize| {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    };
    dot_with(
        w.len() / 4,
        |i| unsafe { _mm256_loadu_ps(pw.add(i)) },
        |i| unsafe { _mm256_loadu_ps(pa.add(i)) },
        |i| f32_at(w, i) * f32_at(a, i),
    )
}

/// F16 × F16, widened with `vcvtph2ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let at = |b: &[u8], i: usize| f16_to_f32([b[2 * i], b[2 * i + 1]]);
    dot_with(
        w.len() / 2,
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pw.add(2 * i).cast())) },
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pa.add(2 * i).cast())) },
        |i| at(w, i) * at(a, i),
    )
}

/// BF16 × BF16, widened by shifting each value into the top half of an f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(p: *const u8) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p.cast()),
        )))
    }
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let at = |b: &[u8], i: usize| bf16_to_f32([b[2 * i], b[2 * i + 1]]);
    dot_with(
        w.len() / 2,
        |i| unsafe { widen(pw.add(2 * i)) },
        |i| unsafe { widen(pa.add(2 * i)) },
        |i| at(w, i) * at(a, i),
    )
}
