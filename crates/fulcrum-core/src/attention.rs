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

/// Floats of per-thread scratch that [`attention`] needs.
pub fn scratch_per_thread(head_dim: usize, head_dim_v: usize) -> usize {
    2 * head_dim + 2 * head_dim_v
}

/// `out[t][h] = softmax(q[t][h] · K[..=p_t] · scale) · V[..=p_t]` for tokens at positions `start_pos + t`.
///
/// `q` holds `n` rows of `n_heads · head_dim`; `out` receives `n` rows of `n_heads · head_dim_v`. `scratch` has
/// [`scratch_per_thread`] floats for each pool thread. Queries are rounded to f16 before the dot product because
/// llama.cpp multiplies them against the f16 keys that way.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    s: &AttentionShape,
    kv: &LayerKv,
    q: &[f32],
    n: usize,
    start_pos: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
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
        let mine = unsafe {
            std::slice::from_raw_parts_mut(scratch_ptr.0.add(index * per_thread), per_thread)
        };
        let (q_head, rest) = mine.split_at_mut(hd);
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
            for (dst, &v) in q_head
                .iter_mut()
                .zip(&q[t * s.n_heads * hd + h * hd..][..hd])
            {
                *dst = f16::from_f32(v).to_f32();
            }
            // Online softmax over the keys in order, accumulating values in f16 exactly as ggml's CPU
            // flash-attention kernel does for an f16 cache (the rounding is part of llama.cpp's results).
            let mut max = f32::NEG_INFINITY;
            let mut sum = 0.0f32;
            acc.fill(0.0);
            for p in first..=pos {
                kv.k[p * kv_dim + g * hd..][..hd].convert_to_f32_slice(k_row);
                let dot: f32 = q_head.iter().zip(k_row.iter()).map(|(a, b)| a * b).sum();
                let score = dot * s.scale;
                let (mut old_scale, mut weight) = (1.0f32, 1.0f32);
                if score > max {
                    old_scale = (max - score).exp();
                    max = score;
                    acc.iter_mut().for_each(|a| *a = round_f16(*a * old_scale));
                } else {
                    weight = (score - max).exp();
                }
                kv.v[p * kv_dim_v + g * hdv..][..hdv].convert_to_f32_slice(v_buf);
                for (a, &v) in acc.iter_mut().zip(v_buf.iter()) {
                    *a = round_f16(v.mul_add(weight, *a));
                }
                sum = sum * old_scale + weight;
            }
            let inv = 1.0 / sum;
            acc.iter_mut().for_each(|a| *a *= inv);
            // SAFETY: (t, h) is written by this thread only.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.0.add(t * s.n_heads * hdv + h * hdv), hdv)
            };
            dst.copy_from_slice(acc);
        }
    });
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}
