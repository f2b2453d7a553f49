//! [`Block`] with AVX2: eight query rows in the lanes of each vector. Every score is still one chain of fused
//! multiply-adds over the head dimension and every output one chain over the positions, in the scalar [`Block::run`]'s
//! order, and the softmax steps (the tile maximum, ggml's polynomial exp, the `hsum8` tree, the f64 tile sums) are
//! lane-wise copies of its scalar steps, so the result is bit-identical to it.

use super::block::{Block, TILE};
use fulcrum_quant::vecf32::exp_approx_x8;
use half::slice::HalfFloatSliceExt;
use std::arch::x86_64::*;

/// Query rows per vector.
const LANES: usize = 8;
/// Output dimensions per register block of the weighted sum of values (four vectors).
const DV: usize = 32;

/// f32 scratch per thread for head widths `hd` (keys) and `hdv` (values).
pub fn scratch_len(hd: usize, hdv: usize) -> usize {
    TILE * hd + TILE * hdv + hd * TILE + TILE * LANES + TILE * hdv + 2 * TILE
}

/// Whether [`Block::run_avx2`] handles these head widths.
pub fn handles(hdv: usize) -> bool {
    hdv.is_multiple_of(DV)
}

impl Block<'_> {
    /// [`Block::run`] with AVX2; `hdv` must satisfy [`handles`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run_avx2(&self, scratch: &mut [f32]) {
        let s = self.s;
        let (hd, hdv) = (s.head_dim, s.head_dim_v);
        let g = self.h / (s.n_heads / s.n_kv_heads);
        let (kv_dim, kv_dim_v) = (s.n_kv_heads * hd, s.n_kv_heads * hdv);
        let (keys, rest) = scratch.split_at_mut(TILE * hd); // (TILE, hd)
        let (values, rest) = rest.split_at_mut(TILE * hdv); // (TILE, hdv)
        let (queries, rest) = rest.split_at_mut(hd * TILE); // (groups, hd, LANES): each group's query rows, transposed
        let (probs, rest) = rest.split_at_mut(TILE * LANES); // (TILE, LANES): scores, then their exps
        let n_rows = self.rows.len();
        let (acc, rest) = rest.split_at_mut(TILE * hdv); // (rows, hdv)
        let (max, sum) = rest.split_at_mut(TILE);
        acc[..n_rows * hdv].fill(0.0);
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        // Each group of LANES query rows, transposed once for all tiles (absent rows as zeros).
        for r0 in (0..n_rows).step_by(LANES) {
            let group = &mut queries[r0 * hd..(r0 + LANES) * hd];
            for dk in 0..hd {
                for l in 0..LANES {
                    group[dk * LANES + l] = if r0 + l < n_rows {
                        let t = self.rows.start + r0 + l;
                        self.q[t * s.n_heads * hd + self.h * hd + dk]
                    } else {
                        0.0
                    };
                }
            }
        }

        let last_pos = self.start_pos + self.rows.end - 1;
        for tile in (0..=last_pos).step_by(TILE) {
            let len = TILE.min(self.end - tile);
            for j in 0..len {
                let k = self.kv.k(tile + j, g, hd, kv_dim);
                k.convert_to_f32_slice(&mut keys[j * hd..(j + 1) * hd]);
                let v = self.kv.v(tile + j, g, hdv, kv_dim_v);
                v.convert_to_f32_slice(&mut values[j * hdv..(j + 1) * hdv]);
            }
            for r0 in (0..n_rows).step_by(LANES) {
                let lanes = LANES.min(n_rows - r0);
                // Each lane's visible positions, and whether it sees this tile at all (the scalar path skips the
                // tile for a row that does not; here its state is left as it is).
                let (mut first, mut end, mut active) =
                    ([0i32; LANES], [0i32; LANES], [0i32; LANES]);
                for l in 0..lanes {
                    let seen = s.visible(self.start_pos + self.rows.start + r0 + l);
                    (first[l], end[l]) = (seen.start as i32, seen.end as i32);
                    active[l] = -((tile < seen.end && tile + TILE > seen.start) as i32);
                }
                if active.iter().all(|&a| a == 0) {
                    continue;
                }
                let (first, end) = (load_i32(&first), load_i32(&end));
                let active_mask = _mm256_castsi256_ps(load_i32(&active));
                self.scores(keys, &queries[r0 * hd..(r0 + LANES) * hd], probs, hd);

                // Mask and scale, then the tile maximum.
                let mut tile_max = neg_inf;
                let scale = _mm256_set1_ps(s.scale);
                for j in 0..TILE {
                    let p = _mm256_set1_epi32((tile + j) as i32);
                    let visible = _mm256_andnot_si256(
                        _mm256_cmpgt_epi32(first, p),
                        _mm256_cmpgt_epi32(end, p),
                    );
                    let keep = if j < len {
                        _mm256_and_ps(_mm256_castsi256_ps(visible), active_mask)
                    } else {
                        _mm256_setzero_ps()
                    };
                    let score = _mm256_mul_ps(_mm256_loadu_ps(probs[j * LANES..].as_ptr()), scale);
                    let score = _mm256_blendv_ps(neg_inf, score, keep);
                    _mm256_storeu_ps(probs[j * LANES..].as_mut_ptr(), score);
                    tile_max = _mm256_max_ps(tile_max, score);
                }
                let old_max = _mm256_loadu_ps(max[r0..].as_ptr());
                let new_max = _mm256_max_ps(old_max, tile_max);
                let mut grown = [0.0f32; LANES];
                _mm256_storeu_ps(
                    grown.as_mut_ptr(),
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(new_max, old_max), active_mask),
                );
                let mut new_max_lanes = [0.0f32; LANES];
                _mm256_storeu_ps(new_max_lanes.as_mut_ptr(), new_max);
                for l in 0..lanes {
                    let r = r0 + l;
                    if grown[l] != 0.0 {
                        let shrink = (max[r] - new_max_lanes[l]).exp();
                        acc[r * hdv..(r + 1) * hdv]
                            .iter_mut()
                            .for_each(|a| *a *= shrink);
                        sum[r] *= shrink;
                    }
                    if active[l] != 0 {
                        max[r] = new_max_lanes[l];
                    }
                }

                // exp(score − max) and the tile's sum, eight positions at a time as `hsum8` adds them.
                let (mut sum_lo, mut sum_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
                for j0 in (0..TILE).step_by(8) {
                    let e: [__m256; 8] = std::array::from_fn(|i| {
                        let at = probs[(j0 + i) * LANES..].as_mut_ptr();
                        let x = _mm256_and_ps(
                            exp_approx_x8(_mm256_sub_ps(_mm256_loadu_ps(at), new_max)),
                            active_mask,
                        );
                        _mm256_storeu_ps(at, x);
                        x
                    });
                    let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(e[i + 4], e[i]));
                    let h = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
                    sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(h)));
                    sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(h)));
                }
                let mut tile_sum = [0.0f64; LANES];
                _mm256_storeu_pd(tile_sum.as_mut_ptr(), sum_lo);
                _mm256_storeu_pd(tile_sum[4..].as_mut_ptr(), sum_hi);
                for l in 0..lanes {
                    if active[l] != 0 {
                        sum[r0 + l] = (sum[r0 + l] as f64 + tile_sum[l]) as f32;
                    }
                }

                // The weighted values, two rows at a time; a zero weight is skipped, as the scalar path skips it.
                for l in (0..lanes).step_by(2) {
                    let pair = l + 1 < lanes && active[l + 1] != 0;
                    if active[l] == 0 && !pair {
                        continue;
                    }
                    let (ra, rb) = (r0 + l, r0 + l + pair as usize);
                    for d0 in (0..hdv).step_by(DV) {
                        let pa = acc[ra * hdv + d0..].as_mut_ptr();
                        let pb = acc[rb * hdv + d0..].as_mut_ptr();
                        let mut a: [__m256; 4] =
                            std::array::from_fn(|k| _mm256_loadu_ps(pa.add(8 * k)));
                        let mut b: [__m256; 4] =
                            std::array::from_fn(|k| _mm256_loadu_ps(pb.add(8 * k)));
                        for j in 0..len {
                            let (wa, wb) = (
                                probs[j * LANES + l],
                                if pair { probs[j * LANES + l + 1] } else { 0.0 },
                            );
                            let v = values[j * hdv + d0..].as_ptr();
                            if wa != 0.0 {
                                let w = _mm256_set1_ps(wa);
                                for (k, a) in a.iter_mut().enumerate() {
                                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8 * k)), w, *a);
                                }
                            }
                            if wb != 0.0 {
                                let w = _mm256_set1_ps(wb);
                                for (k, b) in b.iter_mut().enumerate() {
                                    *b = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8 * k)), w, *b);
                                }
                            }
                        }
                        for k in 0..4 {
                            _mm256_storeu_ps(pa.add(8 * k), a[k]);
                            if pair {
                                _mm256_storeu_ps(pb.add(8 * k), b[k]);
                            }
                        }
                    }
                }
            }
        }
        self.finish(acc, sum);
    }

    /// `probs[j][l]` = Σ over the head dimension of key j × query lane l, one fused multiply-add chain per score in
    /// dimension order, eight positions at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores(&self, keys: &[f32], queries: &[f32], probs: &mut [f32], hd: usize) {
        for j0 in (0..TILE).step_by(8) {
            let mut score = [_mm256_setzero_ps(); 8];
            let k = keys[j0 * hd..].as_ptr();
            for dk in 0..hd {
                let q = _mm256_loadu_ps(queries[dk * LANES..].as_ptr());
                for (i, sc) in score.iter_mut().enumerate() {
                    *sc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*k.add(i * hd + dk)), q, *sc);
                }
            }
            for (i, sc) in score.iter().enumerate() {
                _mm256_storeu_ps(probs[(j0 + i) * LANES..].as_mut_ptr(), *sc);
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_i32(x: &[i32; LANES]) -> __m256i {
    _mm256_loadu_si256(x.as_ptr().cast())
}
