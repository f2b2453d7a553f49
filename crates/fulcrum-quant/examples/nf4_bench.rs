//! NF4 kernel workbench: the matrix–vector product `y = W·x` through each NF4 path — the branchy per-element decode
//! (bitsandbytes before its table), the scalar table, the AVX2 exact path, the scalar and AVX2 int8 paths — and
//! through our Q4_0 and Q8_0 kernels, one thread. Prints the median time of several repetitions, GB/s of weight
//! bytes and the speed-up over the branchy decode, after checking each path against its scalar reference.
//!
//! Usage: `cargo run --release -p fulcrum-quant --example nf4_bench [rows] [cols] [reps]` (default 4096 4096 7).

mod common;

use common::{median_time, quantized};
use fulcrum_quant::nf4::{branchy_dot, Nf4Dot, Nf4DotFn};
use fulcrum_quant::{row_bytes, scalar, vec_dot, GgmlType};
use std::time::Duration;

/// One matrix–vector product, row by row.
fn matvec(dot: &dyn Fn(&[u8], &[u8]) -> f32, stride: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    for (y, row) in out.iter_mut().zip(w.chunks_exact(stride)) {
        *y = dot(row, act);
    }
}

fn max_rel_err(reference: &[f32], other: &[f32]) -> f32 {
    let scale = reference
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    reference
        .iter()
        .zip(other)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f32::max)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(4096);
    let cols = args.get(1).copied().unwrap_or(4096);
    let reps = args.get(2).copied().unwrap_or(7).max(1);
    assert!(
        cols % 512 == 0,
        "cols must be a multiple of 512 (NF4's shortest row)"
    );
    println!(
        "matvec {rows} x {cols}, one thread, median of {reps}, kernels: {}",
        fulcrum_quant::simd_level()
    );
    println!(
        "{:<22} {:>8} {:>10} {:>8} {:>9} {:>11}",
        "kernel", "MiB", "ms", "GB/s", "vs branchy", "max rel err"
    );

    // Deterministic Gaussian-ish data (sum of uniforms), like trained weights.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        let mut s = 0.0f32;
        for _ in 0..4 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        s
    };
    let weights: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let x: Vec<f32> = (0..cols).map(|_| next()).collect();
    let budget = Duration::from_millis(200);

    let nf4 = quantized(GgmlType::NF4, &weights, cols);
    let nf4_stride = row_bytes(GgmlType::NF4, cols);
    let act_f32 = quantized(GgmlType::F32, &x, cols);
    let act_q8 = quantized(GgmlType::Q8_0, &x, cols);
    // The error column is against the unquantized product, so it shows each format's rounding.
    let reference: Vec<f32> = weights
        .chunks_exact(cols)
        .map(|w| {
            w.iter()
                .zip(&x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32
        })
        .collect();

    let mut baseline = 0.0;
    let mut report = |label: &str, bytes: usize, seconds: f64, err: f32| {
        if baseline == 0.0 {
            baseline = seconds;
        }
        println!(
            "{label:<22} {:>8.1} {:>10.3} {:>8.2} {:>8.1}x {:>11.2e}",
            bytes as f64 / (1 << 20) as f64,
            seconds * 1e3,
            bytes as f64 / 1e9 / seconds,
            baseline / seconds,
            err
        );
    };

    let mut out = vec![0.0f32; rows];
    let nf4_paths: [(&str, Option<Nf4DotFn>, &[u8]); 5] = [
        ("nf4 branchy (f32)", Some(branchy_dot()), &act_f32),
        (
            "nf4 scalar table (f32)",
            Some(Nf4Dot::Exact.scalar()),
            &act_f32,
        ),
        ("nf4 avx2 exact (f32)", Nf4Dot::Exact.simd(), &act_f32),
        (
            "nf4 scalar int8 (q8_0)",
            Some(Nf4Dot::Int8.scalar()),
            &act_q8,
        ),
        ("nf4 avx2 int8 (q8_0)", Nf4Dot::Int8.simd(), &act_q8),
    ];
    for (label, dot, act) in nf4_paths {
        let Some(dot) = dot else {
            println!("{label:<22} (no AVX2 on this CPU)");
            continue;
        };
        let t = median_time(reps, budget, || {
            matvec(&dot, nf4_stride, &nf4, act, &mut out)
        });
        report(label, nf4.len(), t, max_rel_err(&reference, &out));
    }

    // Our ggml kernels on the same weights.
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        let w = quantized(ty, &weights, cols);
        let stride = row_bytes(ty, cols);
        for (label, simd) in [("scalar", false), ("dispatched", true)] {
            let dot = move |row: &[u8], act: &[u8]| {
                if simd {
                    vec_dot(ty, cols, row, act)
                } else {
                    scalar::vec_dot(ty, cols, row, act)
                }
            };
            let t = median_time(reps, budget, || matvec(&dot, stride, &w, &act_q8, &mut out));
            report(
                &format!("{} {label}", ty.name().to_lowercase()),
                w.len(),
                t,
                max_rel_err(&reference, &out),
            );
        }
    }
}
