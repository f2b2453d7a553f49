//! Attention for batches of 64 queries or more, in the arithmetic of llama.cpp's tiled CPU flash attention: queries
//! stay f32, keys and values are widened from f16 one tile of 64 positions at a time, each score is one chain of fused
//! multiply-adds over the head dimension, the softmax of a tile uses ggml's polynomial exp and sums in f64, and the
//! weighted values accumulate in f32 by fused multiply-adds in position order.

#[cfg(target_arch = "x86_64")]
mod avx2;

use super::{AttentionShape, KvView};
use crate::ops::SharedMut;
use crate::threads::{split_range, ThreadPool};
use fulcrum_quant::vecf32::{exp_approx, hsum8};
use half::slice::HalfFloatSliceExt;

/// Positions per key/value tile, and queries per block of work (llama.cpp's tile sizes).
pub const TILE: usize = 64;

/// f32 scratch per thread for head widths `hd` (keys) and `hdv` (values).
pub fn scratch_len(hd: usize, hdv: usize) -> usize {
    let scalar = hd * TILE + TILE * hdv + TILE + TILE * (hdv + 2);
    #[cfg(target_arch = "x86_64")]
    let scalar = scalar.max(avx2::scratch_len(hd, hdv));
    scalar
}

/// See [`super::attention`]; `scratch` holds `scratch_len` floats per pool thread.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    s: &AttentionShape,
    kv: KvView,
    q: &[f32],
    n: usize,
    start_pos: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let per_thread = scratch_len(s.head_dim, s.head_dim_v);
    assert!(
        scratch.len() >= pool.n_threads() * per_thread,
        "attention: tiled scratch"
    );
    let blocks = n.div_ceil(TILE);
    #[cfg(target_arch = "x86_64")]
    let simd = fulcrum_quant::simd_level() != "scalar" && avx2::handles(s.head_dim_v);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let scratch_ptr = SharedMut(scratch.as_mut_ptr());
    pool.run(|index, n_threads| {
        // SAFETY: each thread uses its own scratch slice.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(scratch_ptr.ptr().add(index * per_thread), per_thread)
        };
        for item in split_range(s.n_heads * blocks, index, n_threads) {
            let (h, b) = (item / blocks, item % blocks);
            let rows = b * TILE..((b + 1) * TILE).min(n);
            let job = Block {
                s,
                kv,
                q,
                start_pos,
                end: start_pos + n,
                h,
                rows,
                out: out_ptr,
            };
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: a non-scalar kernel level means AVX2, FMA and F16C were detected.
                unsafe { job.run_avx2(mine) };
                continue;
            }
            let _ = simd;
            job.run(mine);
        }
    });
}

/// One head's queries `rows` (batch indices), all positions in `0..end` visible to them.
struct Block<'a> {
    s: &'a AttentionShape,
    kv: KvView<'a>,
    q: &'a [f32],
    start_pos: usize,
    end: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    out: SharedMut<f32>,
}

impl Block<'_> {
    /// The scalar reference: one query row at a time.
    fn run(&self, scratch: &mut [f32]) {
        let s = self.s;
        let (hd, hdv) = (s.head_dim, s.head_dim_v);
        let g = self.h / (s.n_heads / s.n_kv_heads);
        let (kv_dim, kv_dim_v) = (s.n_kv_heads * hd, s.n_kv_heads * hdv);
        let (keys, rest) = scratch.split_at_mut(hd * TILE); // (hd, TILE): keys of the tile, transposed
        let (values, rest) = rest.split_at_mut(TILE * hdv); // (TILE, hdv)
        let (scores, rest) = rest.split_at_mut(TILE);
        let n_rows = self.rows.len();
        let (acc, rest) = rest.split_at_mut(TILE * hdv); // (rows, hdv)
        let (max, sum) = rest.split_at_mut(TILE);
        acc[..n_rows * hdv].fill(0.0);
        max[..n_rows].fill(f32::NEG_INFINITY);
        sum[..n_rows].fill(0.0);

        let last_pos = self.start_pos + self.rows.end - 1;
        for tile in (0..=last_pos).step_by(TILE) {
            let len = TILE.min(self.end - tile);
            for j in 0..len {
                let k = self.kv.k(tile + j, g, hd, kv_dim);
                for (dk, &x) in k.iter().enumerate() {
                    keys[dk * TILE + j] = x.to_f32();
                }
                self.kv
                    .v(tile + j, g, hdv, kv_dim_v)
                    .convert_to_f32_slice(&mut values[j * hdv..(j + 1) * hdv]);
            }
            for (r, t) in self.rows.clone().enumerate() {
                let seen = s.visible(self.start_pos + t);
                if tile >= seen.end || tile + TILE <= seen.start {
                    continue;
                }
                let qrow = &self.q[t * s.n_heads * hd + self.h * hd..][..hd];
                scores.fill(0.0);
                for (dk, &qv) in qrow.iter().enumerate() {
                    let kcol = &keys[dk * TILE..(dk + 1) * TILE];
                    for (sc, &kx) in scores.iter_mut().zip(kcol) {
                        *sc = kx.mul_add(qv, *sc);
                    }
                }
                let mut tile_max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let p = tile + j;
                    *sc = if j < len && seen.contains(&p) {
                        *sc * s.scale
                    } else {
                        f32::NEG_INFINITY
                    };
                    tile_max = tile_max.max(*sc);
                }
                let row_acc = &mut acc[r * hdv..(r + 1) * hdv];
                let new_max = max[r].max(tile_max);
                if new_max > max[r] {
                    let shrink = (max[r] - new_max).exp();
                    row_acc.iter_mut().for_each(|a| *a *= shrink);
                    sum[r] *= shrink;
                }
                max[r] = new_max;
                let mut tile_sum = 0.0f64;
                for chunk in scores.chunks_exact_mut(8) {
                    let mut e = [0.0f32; 8];
                    for (x, sc) in e.iter_mut().zip(chunk.iter_mut()) {
                        *x = exp_approx(*sc - new_max);
                        *sc = *x;
                    }
                    tile_sum += hsum8(&e) as f64;
                }
                sum[r] = (sum[r] as f64 + tile_sum) as f32;
                for (j, &p) in scores.iter().enumerate().take(len) {
                    if p == 0.0 {
                        continue;
                    }
                    let v = &values[j * hdv..(j + 1) * hdv];
                    for (a, &x) in row_acc.iter_mut().zip(v) {
                        *a = x.mul_add(p, *a);
                    }
                }
            }
        }
        self.finish(acc, sum);
    }

    /// Writes each row's accumulated values divided by its sum.
    fn finish(&self, acc: &[f32], sum: &[f32]) {
        let (s, hdv) = (self.s, self.s.head_dim_v);
        for (r, t) in self.rows.clone().enumerate() {
            let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
            // SAFETY: (t, h) is written by this block only.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.ptr().add(t * s.n_heads * hdv + self.h * hdv),
                    hdv,
                )
            };
            for (d, &a) in dst.iter_mut().zip(&acc[r * hdv..(r + 1) * hdv]) {
                *d = a * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCache;

    /// The AVX2 block kernel gives exactly the scalar block's outputs: several head widths, grouped-query heads,
    /// sliding windows, a batch that starts mid-context and blocks with a ragged last group of rows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_blocks_match_the_scalar_blocks_bit_for_bit() {
        if fulcrum_quant::simd_level() == "scalar" {
            return;
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (hd, start_pos, n, window, scale) in [
            (64, 0, 100, None, 0.125),
            (256, 37, 75, Some(50), 1.0),
            (32, 130, 64, Some(70), 0.3),
            (64, 0, 64, Some(5), 2.0),
        ] {
            let (n_heads, n_kv) = (4, 2);
            let n_ctx = start_pos + n;
            let mut kv = KvCache::new(1, n_ctx, n_kv * hd, n_kv * hd);
            let k: Vec<f32> = (0..n_ctx * n_kv * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..n_ctx * n_kv * hd).map(|_| next()).collect();
            kv.store(0, 0, &k, &v);
            // Queries large enough that some weights underflow to zero.
            let q: Vec<f32> = (0..n * n_heads * hd).map(|_| next() * 3.0).collect();
            let shape = AttentionShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                head_dim_v: hd,
                scale,
                window,
            };
            let view = KvView {
                kv: &kv.layers[0],
                slots: None,
            };
            let mut scratch = vec![0.0f32; scratch_len(hd, hd)];
            let (mut want, mut got) = (
                vec![f32::NAN; n * n_heads * hd],
                vec![f32::NAN; n * n_heads * hd],
            );
            for (out, simd) in [(&mut want, false), (&mut got, true)] {
                let out = SharedMut(out.as_mut_ptr());
                for h in 0..n_heads {
                    for b in 0..n.div_ceil(TILE) {
                        let job = Block {
                            s: &shape,
                            kv: view,
                            q: &q,
                            start_pos,
                            end: start_pos + n,
                            h,
                            rows: b * TILE..((b + 1) * TILE).min(n),
                            out,
                        };
                        scratch.iter_mut().for_each(|x| *x = f32::NAN);
                        if simd {
                            // SAFETY: the kernel level is not scalar, so AVX2, FMA and F16C were detected.
                            unsafe { job.run_avx2(&mut scratch) };
                        } else {
                            job.run(&mut scratch);
                        }
                    }
                }
            }
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "hd {hd} start {start_pos} n {n} window {window:?}: output {i}: {a} vs {b}"
                );
            }
        }
    }
}
