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

/// Floats of per-thread scratch that [`attention`] needs for a context of `n_ctx` positions.
pub fn scratch_per_thread(n_ctx: usize, head_dim: usize, head_dim_v: usize) -> usize {
    n_ctx + 2 * head_dim + 2 * head_dim_v
}

/// `out[t][h] = softmax(q[t][h] · K[..=p_t] · scale) · V[..=p_t]` for tokens at positions `start_pos + t`.
///
/// `q` holds `n` rows of `n_heads · head_dim`; `out` receives `n` rows of `n_heads · head_dim_v`. `scratch` has
/// [`scratch_per_thread`] floats for each pool thread. Queries are rounded to f16 before the dot product because
/// llama.cpp multiplies them against the f16 keys that way.
#[allow(clippy::too_many_arguments)]
pub fn attention(pool: &ThreadPool, s: &AttentionShape, kv: &LayerKv, q: &[f32], n: usize, start_pos: usize, out: &mut [f32], scratch: &mut [f32]) {
    let (hd, hdv) = (s.head_dim, s.head_dim_v);
    let group = s.n_heads / s.n_kv_heads;
    let per_thread = scratch.len() / pool.n_threads();
    let out_ptr = SharedMut(out.as_mut_ptr());
    let scratch_ptr = SharedMut(scratch.as_mut_ptr());
    let kv_dim = s.n_kv_heads * hd;
    let kv_dim_v = s.n_kv_heads * hdv;
    pool.run(|index, n_threads| {
        let (out_ptr, scratch_ptr) = (out_ptr, scratch_ptr);
        // SAFETY: each thread uses its own scratch slice.
        let mine = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.0.add(index * per_thread), per_thread) };
        let (scores, rest) = mine.split_at_mut(per_thread - 2 * hd - 2 * hdv);
        let (q_head, rest) = rest.split_at_mut(hd);
        let (k_row, rest) = rest.split_at_mut(hd);
        let (v_buf, acc) = rest.split_at_mut(hdv);
        for item in split_range(n * s.n_heads, index, n_threads) {
            let (t, h) = (item / s.n_heads, item % s.n_heads);
            let pos = start_pos + t;
            let first = match s.window {
                Some(w) if pos + 1 > w => pos + 1 - w,
                _ => 0,
            };
            let g = h / group;
            for (dst, &v) in q_head.iter_mut().zip(&q[t * s.n_heads * hd + h * hd..][..hd]) {
                *dst = f16::from_f32(v).to_f32();
            }
            let mut max = f32::NEG_INFINITY;
            for (j, p) in (first..=pos).enumerate() {
                kv.k[p * kv_dim + g * hd..][..hd].convert_to_f32_slice(k_row);
                let dot: f32 = q_head.iter().zip(k_row.iter()).map(|(a, b)| a * b).sum();
                let sc = dot * s.scale;
                scores[j] = sc;
                max = max.max(sc);
            }
            let len = pos + 1 - first;
            let mut sum = 0.0f64;
            for sc in &mut scores[..len] {
                *sc = (*sc - max).exp();
                sum += *sc as f64;
            }
            let inv = (1.0 / sum) as f32;
            acc.fill(0.0);
            for (j, p) in (first..=pos).enumerate() {
                let w = scores[j] * inv;
                kv.v[p * kv_dim_v + g * hdv..][..hdv].convert_to_f32_slice(v_buf);
                for (a, &v) in acc.iter_mut().zip(v_buf.iter()) {
                    *a += w * v;
                }
            }
            // SAFETY: (t, h) is written by this thread only.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(t * s.n_heads * hdv + h * hdv), hdv) };
            dst.copy_from_slice(acc);
        }
    });
}
