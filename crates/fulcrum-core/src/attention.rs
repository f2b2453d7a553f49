//! Causal multi-head attention of a batch of query tokens over the KV cache, with optional sliding window.

mod dump;
mod shape;
mod tiled;

pub use dump::ScoreDump;
pub use shape::AttentionShape;

use crate::kv::KvView;
use crate::ops::SharedMut;
use crate::threads::{split_range, ThreadPool};
use fulcrum_quant::f16vec::{self, LANES};
use half::f16;
use std::ops::Range;

/// Work buffers of [`attention`]: per thread, up to [`LANES`] rounded query rows and f16 output accumulators, and the
/// f32 tiles of the path for large batches.
pub struct AttentionScratch {
    /// (n_threads, LANES · head_dim_v) the f16 output accumulators
    acc: Vec<f16>,
    /// (n_threads, LANES · head_dim) the query rows rounded to f16, as f32
    q_rounded: Vec<f32>,
    /// (n_threads, tiled::scratch_len)
    tiles: Vec<f32>,
    n_ctx: usize,
}

impl AttentionScratch {
    /// Positions the buffers were sized for.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Buffers for a context of `n_ctx` positions and `n_threads` threads.
    pub fn new(
        n_ctx: usize,
        _kv_dim: usize,
        kv_dim_v: usize,
        head_dim: usize,
        n_threads: usize,
    ) -> AttentionScratch {
        AttentionScratch {
            acc: vec![f16::ZERO; n_threads * LANES * kv_dim_v],
            q_rounded: vec![0.0; n_threads * LANES * head_dim],
            tiles: vec![0.0; n_threads * tiled::scratch_len(head_dim, kv_dim_v)],
            n_ctx,
        }
    }
}

/// `out[t][h] = softmax(q[t][h] · K[..=p_t] · scale) · V[..=p_t]` for tokens at positions `start_pos + t`.
///
/// `q` holds `n` rows of `n_heads · head_dim`; `out` receives `n` rows of `n_heads · head_dim_v`.
///
/// The arithmetic is that of llama.cpp's CPU flash attention, so that results agree bit for bit. For batches of fewer
/// than 64 queries (its online-softmax path) the query is rounded to f16 and dotted with the f16 keys, the running
/// maximum and sum are kept in f32, and the weighted values accumulate in an f16 row that is rescaled whenever the
/// maximum grows; larger batches take its tiled path (`attention/tiled.rs`) unless `online_only` asks for results that do not
/// depend on the batch size (serving).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    s: &AttentionShape,
    kv: KvView,
    q: &[f32],
    n: usize,
    start_pos: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
    online_only: bool,
) {
    let (hd, hdv) = (s.head_dim, s.head_dim_v);
    let kv_dim = s.n_kv_heads * hd;
    let kv_dim_v = s.n_kv_heads * hdv;
    let end = start_pos + n;
    // Checked always: the threads below write through raw pointers.
    assert!(
        end <= scratch.n_ctx
            && kv.slots.map_or(
                kv.kv.k.len() >= end * kv_dim && kv.kv.v.len() >= end * kv_dim_v,
                |s| s.len() >= end
            ),
        "attention: cache size"
    );
    check_buffers(pool, s, q, n, out, scratch);

    if n >= tiled::TILE && !online_only {
        return tiled::attention(pool, s, kv, q, n, start_pos, out, &mut scratch.tiles);
    }
    online(
        pool,
        s,
        q,
        n,
        out,
        scratch,
        &|t| (kv, s.visible(start_pos + t)),
        None,
    );
}

/// Attention of `n` query rows where row `t` attends to the positions `keys(t).1` of the view `keys(t).0` (DELTA's
/// sparse rows read a gathered slot list), always in the online-softmax arithmetic of [`attention`]'s small batches.
/// With a `dump`, every score and each query head's log-sum-exp are kept there for page scoring.
///
/// # Panics
/// If `q`, `out` or the scratch are too small for `n` rows, or a view's rows are outside its cache.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows<'a>(
    pool: &ThreadPool,
    s: &AttentionShape,
    q: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
    keys: &(dyn Fn(usize) -> (KvView<'a>, Range<usize>) + Sync),
    dump: Option<&mut ScoreDump>,
) {
    check_buffers(pool, s, q, n, out, scratch);
    online(pool, s, q, n, out, scratch, keys, dump);
}

/// Checked always: the threads of the online path write through raw pointers into these.
fn check_buffers(
    pool: &ThreadPool,
    s: &AttentionShape,
    q: &[f32],
    n: usize,
    out: &[f32],
    scratch: &AttentionScratch,
) {
    let (hd, hdv) = (s.head_dim, s.head_dim_v);
    assert!(
        scratch.acc.len() >= pool.n_threads() * LANES * hdv
            && scratch.q_rounded.len() >= pool.n_threads() * LANES * hd,
        "attention: scratch threads"
    );
    assert!(
        q.len() >= n * s.n_heads * hd && out.len() >= n * s.n_heads * hdv,
        "attention: batch size"
    );
}

/// The online-softmax path shared by [`attention`] and [`attention_rows`]; shapes are checked by the callers.
#[allow(clippy::too_many_arguments)]
fn online<'a>(
    pool: &ThreadPool,
    s: &AttentionShape,
    q: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
    keys: &(dyn Fn(usize) -> (KvView<'a>, Range<usize>) + Sync),
    dump: Option<&mut ScoreDump>,
) {
    let (hd, hdv) = (s.head_dim, s.head_dim_v);
    let group = s.n_heads / s.n_kv_heads;
    let kv_dim = s.n_kv_heads * hd;
    let kv_dim_v = s.n_kv_heads * hdv;
    // Work items: a token's query heads that share a kv head, up to LANES at a time, in more chunks where there are
    // fewer items than threads (a decoded token of a model with one kv head).
    let min_chunks = group.div_ceil(LANES);
    let wanted = pool.n_threads().div_ceil(n * s.n_kv_heads);
    let lanes = group.div_ceil(wanted.clamp(min_chunks, group));
    let chunks = group.div_ceil(lanes);
    let dump_ptrs = dump.map(|d| {
        let stride = (0..n).map(|t| keys(t).1.len()).max().unwrap_or(0);
        d.prepare(n, s.n_kv_heads, group, (chunks, lanes), stride);
        (
            SharedMut(d.scores.as_mut_ptr()),
            SharedMut(d.lse.as_mut_ptr()),
            d.stride,
        )
    });
    let out_ptr = SharedMut(out.as_mut_ptr());
    let acc_ptr = SharedMut(scratch.acc.as_mut_ptr());
    let qf_ptr = SharedMut(scratch.q_rounded.as_mut_ptr());
    pool.run(|index, n_threads| {
        // SAFETY: each thread uses its own scratch slices.
        let (acc, qf) = unsafe {
            (
                std::slice::from_raw_parts_mut(acc_ptr.ptr().add(index * LANES * hdv), LANES * hdv),
                std::slice::from_raw_parts_mut(qf_ptr.ptr().add(index * LANES * hd), LANES * hd),
            )
        };
        let mut sums = [0f32; LANES];
        let mut maxes = [0f32; LANES];
        for item in split_range(n * s.n_kv_heads * chunks, index, n_threads) {
            let (t, g, c) = (
                item / (s.n_kv_heads * chunks),
                item / chunks % s.n_kv_heads,
                item % chunks,
            );
            let first_head = g * group + c * lanes;
            let count = lanes.min((g + 1) * group - first_head);
            let (kv, positions) = keys(t);
            let queries = &q[t * s.n_heads * hd + first_head * hd..][..count * hd];
            // Rounded to f16 as llama.cpp rounds the query, and kept as f32 (exactly the same values).
            for (r, &x) in qf.iter_mut().zip(queries) {
                *r = f16::from_f32(x).to_f32();
            }
            acc[..count * hdv].fill(f16::ZERO);
            let head = f16vec::Head {
                keys: &kv.kv.k,
                values: &kv.kv.v,
                k_stride: kv_dim,
                k_off: g * hd,
                v_stride: kv_dim_v,
                v_off: g * hdv,
                slots: kv.slots,
            };
            let qs = f16vec::Queries {
                q: &qf[..count * hd],
                lanes: count,
                scale: s.scale,
                hdv,
            };
            match &dump_ptrs {
                None => f16vec::attend(&qs, &head, positions, acc, &mut sums, None),
                Some((scores, lse, stride)) => {
                    // SAFETY: item `item` owns its region of the dump, sized by `prepare`.
                    let (scores, lse) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(
                                scores.ptr().add(item * stride * LANES),
                                stride * LANES,
                            ),
                            std::slice::from_raw_parts_mut(lse.ptr().add(item * LANES), LANES),
                        )
                    };
                    let mut d = f16vec::Dump {
                        scores,
                        maxes: &mut maxes,
                    };
                    f16vec::attend(&qs, &head, positions, acc, &mut sums, Some(&mut d));
                    for l in 0..count {
                        lse[l] = maxes[l] + sums[l].ln();
                    }
                }
            }
            for (l, &sum) in sums.iter().enumerate().take(count) {
                let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
                // SAFETY: (t, head) is written by this thread only.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr
                            .ptr()
                            .add(t * s.n_heads * hdv + (first_head + l) * hdv),
                        hdv,
                    )
                };
                for (d, a) in dst.iter_mut().zip(&acc[l * hdv..][..hdv]) {
                    *d = a.to_f32() * inv;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCache, KvView};

    /// Plain softmax attention for one query head, in f64.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                q.iter()
                    .zip(k)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        (0..values[0].len())
            .map(|i| {
                (w.iter()
                    .zip(values)
                    .map(|(w, v)| w * v[i] as f64)
                    .sum::<f64>()
                    / sum) as f32
            })
            .collect()
    }

    #[test]
    fn matches_reference_with_gqa_and_window() {
        // 12 queries take the online-softmax path, 80 the tiled one.
        for n_ctx in [12, 80] {
            check_against_reference(n_ctx);
        }
    }

    fn check_against_reference(n_ctx: usize) {
        let (n_heads, n_kv, hd) = (4, 2, 16);
        let mut kv = KvCache::new(1, n_ctx, n_kv * hd, n_kv * hd);
        let val = |i: usize| (i * 7919 % 1000) as f32 / 500.0 - 1.0;
        let k: Vec<f32> = (0..n_ctx * n_kv * hd)
            .map(|i| f16::from_f32(val(i)).to_f32())
            .collect();
        let v: Vec<f32> = (0..n_ctx * n_kv * hd)
            .map(|i| f16::from_f32(val(i + 77)).to_f32())
            .collect();
        kv.store(0, 0, &k, &v);
        let q: Vec<f32> = (0..n_ctx * n_heads * hd)
            .map(|i| f16::from_f32(val(i + 13)).to_f32())
            .collect();
        let pool = ThreadPool::new(2);
        for window in [None, Some(5), Some(70)] {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                head_dim_v: hd,
                scale: 0.25,
                window,
            };
            let mut out = vec![0.0; n_ctx * n_heads * hd];
            let mut scratch = AttentionScratch::new(n_ctx, n_kv * hd, n_kv * hd, hd, 2);
            attention(
                &pool,
                &shape,
                KvView {
                    kv: &kv.layers[0],
                    slots: None,
                },
                &q,
                n_ctx,
                0,
                &mut out,
                &mut scratch,
                false,
            );
            for t in 0..n_ctx {
                for h in 0..n_heads {
                    let g = h / 2;
                    let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
                    let keys: Vec<Vec<f32>> = (first..=t)
                        .map(|p| k[p * n_kv * hd + g * hd..][..hd].to_vec())
                        .collect();
                    let values: Vec<Vec<f32>> = (first..=t)
                        .map(|p| v[p * n_kv * hd + g * hd..][..hd].to_vec())
                        .collect();
                    let want =
                        reference(&q[t * n_heads * hd + h * hd..][..hd], &keys, &values, 0.25);
                    let got = &out[t * n_heads * hd + h * hd..][..hd];
                    for (a, b) in got.iter().zip(&want) {
                        // The values accumulate in f16 (relative step 2^-11), as llama.cpp's do.
                        assert!(
                            (a - b).abs() < 2e-3,
                            "n={n_ctx} t={t} h={h} window={window:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
