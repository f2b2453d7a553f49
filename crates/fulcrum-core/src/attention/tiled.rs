//! Attention for batches of 64 queries or more, in the arithmetic of llama.cpp's tiled CPU flash attention: queries
//! stay f32, keys and values are widened from f16 one tile of 64 positions at a time, each score is one chain of fused
//! multiply-adds over the head dimension, the softmax of a tile uses ggml's polynomial exp and sums in f64, and the
//! weighted values accumulate in f32 by fused multiply-adds in position order.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod block;

pub use block::TILE;

use super::shape::AttentionShape;
use crate::kv::KvView;
use crate::ops::SharedMut;
use crate::threads::{split_range, ThreadPool};
use block::Block;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCache, KvView};

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
