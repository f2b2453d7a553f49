//! Kernel workbench for the matrix–vector product `y = W·x` (llm.c style): the scalar reference, then the
//! dispatched kernels, a correctness check between them, and the achieved bandwidth in GB/s of weight bytes.
//!
//! Usage: `cargo run --release -p fulcrum-quant --example kernel_bench [rows] [cols]` (default 4096 × 4096).

mod common;

use fulcrum_quant::{quantize_row, row_bytes, scalar, simd_level, vec_dot, vec_dot_type, GgmlType};
use std::time::Duration;

const TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

type Dot = fn(GgmlType, usize, &[u8], &[u8]) -> f32;

/// One matrix–vector product with `dot`, row by row.
fn matvec(dot: Dot, ty: GgmlType, cols: usize, weights: &[u8], act: &[u8], out: &mut [f32]) {
    let stride = row_bytes(ty, cols);
    for (y, row) in out.iter_mut().zip(weights.chunks_exact(stride)) {
        *y = dot(ty, cols, row, act);
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(4096);
    let cols = args.get(1).copied().unwrap_or(4096);
    assert!(cols % 256 == 0, "cols must be a multiple of 256");
    println!(
        "matvec {rows} x {cols}, one thread, kernels: {simd_level}",
        simd_level = simd_level()
    );
    println!(
        "{:<6} {:>10} {:>12} {:>12} {:>10} {:>10} {:>8} {:>11}",
        "type", "MiB", "scalar ms", "fast ms", "scalar GB/s", "fast GB/s", "speedup", "max rel err"
    );

    let mut next = common::uniform();
    let weights_f32: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let x: Vec<f32> = (0..cols).map(|_| next()).collect();

    for ty in TYPES {
        let stride = row_bytes(ty, cols);
        let mut weights = vec![0u8; rows * stride];
        for (src, dst) in weights_f32
            .chunks_exact(cols)
            .zip(weights.chunks_exact_mut(stride))
        {
            quantize_row(ty, src, dst);
        }
        let act_ty = vec_dot_type(ty);
        let mut act = vec![0u8; row_bytes(act_ty, cols)];
        quantize_row(act_ty, &x, &mut act);

        let mut reference = vec![0.0f32; rows];
        let mut fast = vec![0.0f32; rows];
        let budget = Duration::from_millis(300);
        let t_scalar = common::median_time(1, budget, || {
            matvec(scalar::vec_dot, ty, cols, &weights, &act, &mut reference)
        });
        let t_fast = common::median_time(1, budget, || {
            matvec(vec_dot, ty, cols, &weights, &act, &mut fast)
        });

        let scale = reference
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let max_err = reference
            .iter()
            .zip(&fast)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0.0f32, f32::max);
        let gigabytes = weights.len() as f64 / 1e9;
        println!(
            "{:<6} {:>10.1} {:>12.2} {:>12.2} {:>10.2} {:>10.2} {:>7.1}x {:>11.2e}",
            ty.name(),
            weights.len() as f64 / (1 << 20) as f64,
            t_scalar * 1e3,
            t_fast * 1e3,
            gigabytes / t_scalar,
            gigabytes / t_fast,
            t_scalar / t_fast,
            max_err
        );
        assert!(
            max_err < 1e-4,
            "{ty}: dispatched kernels disagree with the scalar reference"
        );
    }
}
