//! One block of tiled attention: one head's run of up to [`TILE`] query rows over every visible position, computed
//! tile by tile. This is the scalar reference; `avx2.rs` adds the AVX2 twin of [`Block::run`].

use crate::attention::shape::AttentionShape;
use crate::kv::KvView;
use crate::ops::SharedMut;
use fulcrum_quant::vecf32::{exp_approx, hsum8};
use half::slice::HalfFloatSliceExt;

/// Positions per key/value tile, and queries per block of work (llama.cpp's tile sizes).
pub const TILE: usize = 64;

/// One head's queries `rows` (batch indices), all positions in `0..end` visible to them.
pub(super) struct Block<'a> {
    pub(super) s: &'a AttentionShape,
    pub(super) kv: KvView<'a>,
    pub(super) q: &'a [f32],
    pub(super) start_pos: usize,
    pub(super) end: usize,
    pub(super) h: usize,
    pub(super) rows: std::ops::Range<usize>,
    pub(super) out: SharedMut<f32>,
}

impl Block<'_> {
    /// The scalar reference: one query row at a time.
    pub(super) fn run(&self, scratch: &mut [f32]) {
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
    pub(super) fn finish(&self, acc: &[f32], sum: &[f32]) {
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
