//! Causal multi-head attention of a batch of query tokens over the KV cache, with optional sliding window.

use crate::kv::LayerKv;
use crate::ops::SharedMut;
use crate::threads::{split_range, ThreadPool};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Shapes and arithmetic of one attention call.
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
    /// Multiplier of q·k.
    pub scale: f32,
    /// Keys at distance ≥ window from the query are masked (sliding-window layers).
    pub window: Option<usize>,
}

/// Work buffers of [`attention`]: the cache widened to f32 once per call, and per-thread score rows.
pub struct AttentionScratch {
    /// (n_ctx, kv_dim)
    k: Vec<f32>,
    /// (n_ctx, kv_dim_v)
    v: Vec<f32>,
    /// (n_threads, n_ctx + head_dim)
    per_thread: Vec<f32>,
    n_ctx: usize,
}

impl AttentionScratch {
    /// Buffers for a context of `n_ctx` positions and `n_threads` threads.
    pub fn new(
        n_ctx: usize,
        kv_dim: usize,
        kv_dim_v: usize,
        head_dim: usize,
        n_threads: usize,
    ) -> AttentionScratch {
        AttentionScratch {
            k: vec![0.0; n_ctx * kv_dim],
            v: vec![0.0; n_ctx * kv_dim_v],
            per_thread: vec![0.0; n_threads * (n_ctx + head_dim)],
            n_ctx,
        }
    }
}

/// `out[t][h] = softmax(q[t][h] · K[..=p_t] · scale) · V[..=p_t]` for tokens at positions `start_pos + t`.
///
/// `q` holds `n` rows of `n_heads · head_dim`; `out` receives `n` rows of `n_heads · head_dim_v`. Queries are
/// rounded to f16 before the dot product because llama.cpp multiplies them against the f16 keys that way.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    s: &AttentionShape,
    kv: &LayerKv,
    q: &[f32],
    n: usize,
    start_pos: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
) {
    let (hd, hdv) = (s.head_dim, s.head_dim_v);
    let group = s.n_heads / s.n_kv_heads;
    let kv_dim = s.n_kv_heads * hd;
    let kv_dim_v = s.n_kv_heads * hdv;
    let end = start_pos + n;
    // Checked always: the threads below write through raw pointers.
    assert!(
        end <= scratch.n_ctx && kv.k.len() >= end * kv_dim && kv.v.len() >= end * kv_dim_v,
        "attention: cache size"
    );
    assert!(
        scratch.per_thread.len() >= pool.n_threads() * (scratch.n_ctx + hd),
        "attention: scratch threads"
    );
    assert!(
        q.len() >= n * s.n_heads * hd && out.len() >= n * s.n_heads * hdv,
        "attention: batch size"
    );

    // Widen the cached keys and values once, not once per query head.
    let (k32, v32) = (
        SharedMut(scratch.k.as_mut_ptr()),
        SharedMut(scratch.v.as_mut_ptr()),
    );
    pool.run(|index, n_threads| {
        let range = split_range(end, index, n_threads);
        // SAFETY: each thread widens its own range of positions.
        let k_dst = unsafe {
            std::slice::from_raw_parts_mut(
                k32.ptr().add(range.start * kv_dim),
                range.len() * kv_dim,
            )
        };
        let v_dst = unsafe {
            std::slice::from_raw_parts_mut(
                v32.ptr().add(range.start * kv_dim_v),
                range.len() * kv_dim_v,
            )
        };
        kv.k[range.start * kv_dim..range.end * kv_dim].convert_to_f32_slice(k_dst);
        kv.v[range.start * kv_dim_v..range.end * kv_dim_v].convert_to_f32_slice(v_dst);
    });

    let (k32, v32) = (&scratch.k[..end * kv_dim], &scratch.v[..end * kv_dim_v]);
    let per_thread = scratch.n_ctx + hd;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let thread_ptr = SharedMut(scratch.per_thread.as_mut_ptr());
    pool.run(|index, n_threads| {
        // SAFETY: each thread uses its own scratch slice.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(thread_ptr.ptr().add(index * per_thread), per_thread)
        };
        let (q_head, scores) = mine.split_at_mut(hd);
        for item in split_range(n * s.n_heads, index, n_threads) {
            let (t, h) = (item / s.n_heads, item % s.n_heads);
            let pos = start_pos + t;
            let first = match s.window {
                Some(w) if pos + 1 > w => pos + 1 - w,
                _ => 0,
            };
            let g = h / group;
            for (dst, &v) in q_head
                .iter_mut()
                .zip(&q[t * s.n_heads * hd + h * hd..][..hd])
            {
                *dst = f16::from_f32(v).to_f32();
            }
            let scores = &mut scores[..pos + 1 - first];
            let mut max = f32::NEG_INFINITY;
            for (sc, p) in scores.iter_mut().zip(first..=pos) {
                *sc = dot(q_head, &k32[p * kv_dim + g * hd..][..hd]) * s.scale;
                max = max.max(*sc);
            }
            let mut sum = 0.0f64;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc as f64;
            }
            let inv = (1.0 / sum) as f32;
            // SAFETY: (t, h) is written by this thread only.
            let acc = unsafe {
                std::slice::from_raw_parts_mut(
                    out_ptr.ptr().add(t * s.n_heads * hdv + h * hdv),
                    hdv,
                )
            };
            acc.fill(0.0);
            for (&w, p) in scores.iter().zip(first..=pos) {
                let w = w * inv;
                for (a, &v) in acc.iter_mut().zip(&v32[p * kv_dim_v + g * hdv..][..hdv]) {
                    *a += w * v;
                }
            }
        }
    });
}

/// Dot product with eight independent partial sums, so the compiler can keep them in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            partial[i] += x[i] * y[i];
        }
    }
    partial.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCache;

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
        let (n_heads, n_kv, hd) = (4, 2, 16);
        let n_ctx = 12;
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
        for window in [None, Some(5)] {
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
                &kv.layers[0],
                &q,
                n_ctx,
                0,
                &mut out,
                &mut scratch,
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
                        assert!(
                            (a - b).abs() < 1e-5,
                            "t={t} h={h} window={window:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
