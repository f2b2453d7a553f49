//! Helpers shared by the kernel workbenches.
#![allow(dead_code)]

use fulcrum_quant::{quantize_row, row_bytes, GgmlType};
use std::time::{Duration, Instant};

/// Seconds per call: the median of `reps` runs of repeated calls lasting at least `budget` each (after a warm-up).
pub fn median_time(reps: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while calls == 0 || start.elapsed() < budget {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

/// `values` (rows of `cols`) encoded as `ty`.
pub fn quantized(ty: GgmlType, values: &[f32], cols: usize) -> Vec<u8> {
    let stride = row_bytes(ty, cols);
    let mut out = vec![0u8; values.len() / cols * stride];
    for (src, dst) in values.chunks_exact(cols).zip(out.chunks_exact_mut(stride)) {
        quantize_row(ty, src, dst);
    }
    out
}

/// Deterministic uniform values in [−1, 1) (an LCG is enough for a benchmark).
pub fn uniform() -> impl FnMut() -> f32 {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
    }
}
