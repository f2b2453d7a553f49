//! AVX2 kernels of [`crate::f16vec`]; see there for the arithmetic they reproduce.

use half::f16;
use std::arch::x86_64::*;

/// Safe entry: only handed out after `available()` confirmed AVX2, FMA and F16C.
pub fn dot(x: &[f16], y: &[f16]) -> f32 {
    // SAFETY: see above; lengths are checked by the caller.
    unsafe { dot_avx2(x, y) }
}

/// Safe entry (see [`dot`]).
pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
    // SAFETY: see [`dot`].
    unsafe { mad_avx2(y, x, v) }
}

/// Safe entry (see [`dot`]).
pub fn scale(y: &mut [f16], v: f32) {
    // SAFETY: see [`dot`].
    unsafe { scale_avx2(y, v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store(p: *mut f16, v: __m256) {
    _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(x: &[f16], y: &[f16]) -> f32 {
    let n = x.len().min(y.len());
    let whole = n / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let (px, py) = (x.as_ptr(), y.as_ptr());
    for base in (0..whole).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            let o = base + 8 * j;
            *a = _mm256_fmadd_ps(load(px.add(o)), load(py.add(o)), *a);
        }
    }
    let s0 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps::<1>(s0));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for i in whole..n {
        sum += (x[i].to_f32() * y[i].to_f32()) as f64;
    }
    sum as f32
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mad_avx2(y: &mut [f16], x: &[f16], v: f32) {
    let n = x.len().min(y.len());
    let whole = n / 8 * 8;
    let vv = _mm256_set1_ps(v);
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    for o in (0..whole).step_by(8) {
        store(
            py.add(o),
            _mm256_fmadd_ps(load(px.add(o)), vv, load(py.add(o))),
        );
    }
    for i in whole..n {
        y[i] = f16::from_f32(x[i].to_f32().mul_add(v, y[i].to_f32()));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_avx2(y: &mut [f16], v: f32) {
    let n = y.len();
    let whole = n / 8 * 8;
    let vv = _mm256_set1_ps(v);
    let py = y.as_mut_ptr();
    for o in (0..whole).step_by(8) {
        store(py.add(o), _mm256_mul_ps(load(py.add(o)), vv));
    }
    for a in &mut y[whole..] {
        *a = f16::from_f32(a.to_f32() * v);
    }
}
