//! AVX2 kernels of [`crate::f16vec`]; see there for the arithmetic they reproduce.

use crate::f16vec::operands::{Dump, Head, Queries};
use crate::f16vec::scalar;
use half::f16;
use std::arch::x86_64::*;
use std::ops::Range;

/// Safe entry: only handed out after `available()` confirmed AVX2, FMA and F16C; rows are bounds-checked as they are
/// read. Its weights come from [`crate::expf::expf_x8`], so it is only installed where [`crate::expf::matches_libm`]
/// holds.
pub fn attend(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
    dump: Option<&mut Dump>,
) {
    // SAFETY: see above; the shapes were checked by `f16vec::attend`.
    unsafe { attend_avx2::<true>(qs, head, positions, acc, sums, dump) }
}

/// [`attend`] with the C library's `expf` lane by lane, for C libraries whose `expf` the port does not match.
pub fn attend_libm_exp(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
    dump: Option<&mut Dump>,
) {
    // SAFETY: see [`attend`].
    unsafe { attend_avx2::<false>(qs, head, positions, acc, sums, dump) }
}

/// The C library's `expf` of each lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn libm_exp_x8(x: __m256) -> __m256 {
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), x);
    for l in &mut lanes {
        *l = l.exp();
    }
    _mm256_loadu_ps(lanes.as_ptr())
}

/// [`crate::f16vec::scalar::attend`] for up to eight queries side by side, one per lane of the softmax state: each
/// key's eight dot products are reduced together (a transposed form of ggml's lane order), their weights come from one
/// [`crate::expf::expf_x8`] (`PORT`) or eight C library calls, and each key's values are loaded once for all queries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<const PORT: bool>(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
    mut dump: Option<&mut Dump>,
) {
    let (q, lanes, scale_by, hdv) = (qs.q, qs.lanes, qs.scale, qs.hdv);
    let hd = q.len() / lanes;
    if !hd.is_multiple_of(32) || !hdv.is_multiple_of(8) {
        return scalar::attend(qs, head, positions, acc, sums, dump);
    }
    let first = positions.start;
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
        if let Some(d) = dump.as_deref_mut() {
            // Bounds checked by `f16vec::attend` (a whole LANES-wide row per position).
            _mm256_storeu_ps(d.scores[(p - first) * 8..][..8].as_mut_ptr(), score);
        } // A new maximum: weight 1, and what has accumulated shrinks by exp(old - new); otherwise the weight is
          // exp(score - max).
        let grows = _mm256_cmp_ps::<_CMP_GT_OQ>(score, max);
        let arg = _mm256_blendv_ps(_mm256_sub_ps(score, max), _mm256_sub_ps(max, score), grows);
        let e = if PORT {
            crate::expf::expf_x8(arg)
        } else {
            libm_exp_x8(arg)
        };
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
    if let Some(d) = dump {
        _mm256_storeu_ps(d.maxes.as_mut_ptr(), max);
    }
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
