//! AVX2 kernels of [`crate::f16vec`]; see there for the arithmetic they reproduce.

use crate::f16vec::{Head, Queries};
use half::f16;
use std::arch::x86_64::*;
use std::ops::Range;

/// Safe entry (see [`dot`]); rows are bounds-checked as they are read. Only installed where
/// [`crate::expf::matches_libm`] holds.
pub fn attend(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
) {
    // SAFETY: see [`dot`]; the shapes were checked by `f16vec::attend`.
    unsafe { attend_avx2(qs, head, positions, acc, sums) }
}

/// [`crate::f16vec::scalar::attend`] for up to eight queries side by side, one per lane of the softmax state: each
/// key's eight dot products are reduced together (a transposed form of ggml's lane order), their weights come from one
/// [`crate::expf::expf_x8`], and each key's values are loaded once for all queries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
) {
    let (q, lanes, scale_by, hdv) = (qs.q, qs.lanes, qs.scale, qs.hdv);
    let hd = q.len() / lanes;
    if !hd.is_multiple_of(32) || !hdv.is_multiple_of(8) {
        return crate::f16vec::scalar::attend(qs, head, positions, acc, sums);
    }
    let (pq, pacc) = (q.as_ptr(), acc.as_mut_ptr());
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut sum = _mm256_setzero_ps();
    let one = _mm256_set1_ps(1.0);
    let scale = _mm256_set1_ps(scale_by);
    let mut w = [0f32; 8];
    let mut shrink = [0f32; 8];
    for p in positions {
        let k = head.k(p, hd).as_ptr();
        // Each query's four accumulators, folded as ggml folds them: (0 + 2) + (1 + 3).
        let mut folded = [_mm256_setzero_ps(); 8];
        for (l, f) in folded.iter_mut().enumerate().take(lanes) {
            let ql = pq.add(l * hd);
            let mut d = [_mm256_setzero_ps(); 4];
            for base in (0..hd).step_by(32) {
                for (j, a) in d.iter_mut().enumerate() {
                    let o = base + 8 * j;
                    *a = _mm256_fmadd_ps(load(k.add(o)), _mm256_loadu_ps(ql.add(o)), *a);
                }
            }
            *f = _mm256_add_ps(_mm256_add_ps(d[0], d[2]), _mm256_add_ps(d[1], d[3]));
        }
        // Lanes i and i + 4 of every query summed (lower half: queries 0-3, upper: 4-7), then pairwise, then again:
        // per query ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)), as ggml's horizontal sum.
        let mut u = [_mm256_setzero_ps(); 4];
        for (i, ui) in u.iter_mut().enumerate() {
            let (a, b) = (folded[i], folded[i + 4]);
            *ui = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
        }
        let dots = _mm256_hadd_ps(_mm256_hadd_ps(u[0], u[1]), _mm256_hadd_ps(u[2], u[3]));
        let score = _mm256_mul_ps(dots, scale);
        // A new maximum: weight 1, and what has accumulated shrinks by exp(old - new); otherwise the weight is
        // exp(score - max).
        let grows = _mm256_cmp_ps::<_CMP_GT_OQ>(score, max);
        let arg = _mm256_blendv_ps(_mm256_sub_ps(score, max), _mm256_sub_ps(max, score), grows);
        let e = crate::expf::expf_x8(arg);
        sum = _mm256_blendv_ps(_mm256_add_ps(sum, e), _mm256_fmadd_ps(sum, e, one), grows);
        max = _mm256_blendv_ps(max, score, grows);
        _mm256_storeu_ps(w.as_mut_ptr(), _mm256_blendv_ps(e, one, grows));
        let rescale = _mm256_movemask_ps(grows) & ((1 << lanes) - 1);
        if rescale != 0 {
            _mm256_storeu_ps(shrink.as_mut_ptr(), _mm256_blendv_ps(one, e, grows));
        }
        let v = head.v(p, hdv).as_ptr();
        for o in (0..hdv).step_by(8) {
            let vo = load(v.add(o));
            for l in 0..lanes {
                let a = pacc.add(l * hdv + o);
                let mut old = load(a);
                if rescale & (1 << l) != 0 {
                    // Stored and reloaded as f16 in between, as `vec_scale_f16` then `vec_mad_f16` do.
                    old = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
                        _mm256_mul_ps(old, _mm256_set1_ps(shrink[l])),
                    ));
                }
                store(a, _mm256_fmadd_ps(vo, _mm256_set1_ps(w[l]), old));
            }
        }
    }
    let mut all = [0f32; 8];
    _mm256_storeu_ps(all.as_mut_ptr(), sum);
    sums[..lanes].copy_from_slice(&all[..lanes]);
}

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
