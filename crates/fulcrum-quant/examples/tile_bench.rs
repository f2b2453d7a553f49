//! Tile-kernel workbench (llm.c style): a `rows × cols` weight matrix against `tokens` activation rows, in tiles of
//! 16 weight rows × 64 tokens, one thread. Checks every output
//! against the single dot product it must equal bit for bit, then prints the median time and the achieved integer
//! multiply-accumulates per second (GMAC/s) and weight GB/s.
//!
//! Usage: `cargo run --release -p fulcrum-quant --example tile_bench [rows] [cols] [tokens] [reps] [batch]`
//! (default 896 896 64 7: one Qwen2.5-0.5B projection against a prefill chunk; `tokens` = 1 is decode). `batch` is
//! the batch whose rounding the tokens take (default `tokens`; 1 is serving's batch-invariant rounding).

mod common;

use common::{median_time, quantized, uniform};
use fulcrum_quant::{
    dot_tile, row_bytes, simd_level, vec_dot_in_batch, vec_dot_type, GgmlType, Order,
};
use std::time::Duration;

const ROW_BLOCK: usize = 16;
const TOKEN_BLOCK: usize = 64;

/// `out[t * rows + r] = W[r] · x[t]` in matmul's tiles, each tile in the order of its batch.
#[allow(clippy::too_many_arguments)]
fn tiled(
    ty: GgmlType,
    cols: usize,
    w: &[u8],
    rows: usize,
    acts: &[u8],
    tokens: usize,
    batch: usize,
    out: &mut [f32],
) {
    let (w_bytes, a_bytes) = (row_bytes(ty, cols), row_bytes(vec_dot_type(ty), cols));
    let mut tile = [0.0f32; ROW_BLOCK * TOKEN_BLOCK];
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let nr = ROW_BLOCK.min(rows - r0);
        for t0 in (0..tokens).step_by(TOKEN_BLOCK) {
            let nt = TOKEN_BLOCK.min(tokens - t0);
            for (run, order) in Order::runs(ty, batch, t0..t0 + nt) {
                dot_tile(
                    ty,
                    cols,
                    &w[r0 * w_bytes..(r0 + nr) * w_bytes],
                    nr,
                    &acts[run.start * a_bytes..],
                    run.len(),
                    order,
                    &mut tile[(run.start - t0) * ROW_BLOCK..],
                    ROW_BLOCK,
                );
            }
            for t in 0..nt {
                out[(t0 + t) * rows + r0..][..nr].copy_from_slice(&tile[t * ROW_BLOCK..][..nr]);
            }
        }
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(896);
    let cols = args.get(1).copied().unwrap_or(896);
    let tokens = args.get(2).copied().unwrap_or(64);
    let reps = args.get(3).copied().unwrap_or(7);
    let batch = args.get(4).copied().unwrap_or(tokens);
    println!(
        "tiles {rows} x {cols} against {tokens} tokens, one thread, kernels: {}",
        simd_level()
    );
    println!("{:<6} {:>10} {:>10} {:>10}", "type", "ms", "GMAC/s", "GB/s");
    let mut next = uniform();
    let weights_f32: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let x: Vec<f32> = (0..tokens * cols).map(|_| next()).collect();
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        if cols % ty.block_size() != 0 {
            continue;
        }
        let w = quantized(ty, &weights_f32, cols);
        let acts = quantized(vec_dot_type(ty), &x, cols);
        let (w_bytes, a_bytes) = (row_bytes(ty, cols), row_bytes(vec_dot_type(ty), cols));
        let mut out = vec![0.0f32; rows * tokens];
        tiled(ty, cols, &w, rows, &acts, tokens, batch, &mut out);
        for t in 0..tokens {
            for r in 0..rows {
                let single =
                    vec_dot_in_batch(ty, cols, &w[r * w_bytes..], &acts[t * a_bytes..], batch, t);
                assert_eq!(
                    out[t * rows + r].to_bits(),
                    single.to_bits(),
                    "{ty}: out[{t}][{r}] differs from its single dot product"
                );
            }
        }
        let secs = median_time(reps, Duration::from_millis(200), || {
            tiled(ty, cols, &w, rows, &acts, tokens, batch, &mut out)
        });
        println!(
            "{:<6} {:>10.3} {:>10.2} {:>10.2}",
            ty.name(),
            secs * 1e3,
            (rows * cols * tokens) as f64 / secs / 1e9,
            w.len() as f64 / secs / 1e9
        );
    }
}
