//! quantize → dequantize stays within each format's error bound on random data.

mod common;

use common::Rng;
use fulcrum_quant::{dequantize_row, quantize_row, row_bytes, GgmlType};

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut bytes = vec![0u8; row_bytes(ty, x.len())];
    quantize_row(ty, x, &mut bytes);
    let mut y = vec![0.0; x.len()];
    dequantize_row(ty, &bytes, &mut y);
    y
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() * 0.7 + 0.1).collect()
}

/// Per-element bound: |x − y| ≤ factor · (largest |x| in the block) for symmetric formats, or factor · (block range)
/// for the offset formats, plus f16 rounding of the stored scale and offset.
fn check_blockwise(ty: GgmlType, factor: f32, use_range: bool) {
    let block = ty.block_size();
    for seed in 0..8 {
        let x = gaussian(4096, seed);
        let y = round_trip(ty, &x);
        for (xs, ys) in x.chunks(block).zip(y.chunks(block)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let lo = xs.iter().fold(f32::MAX, |m, &v| m.min(v));
            let hi = xs.iter().fold(f32::MIN, |m, &v| m.max(v));
            let scale = if use_range { hi - lo } else { amax };
            let bound = factor * scale + 2e-3 * amax;
            for (a, b) in xs.iter().zip(ys) {
                assert!(
                    (a - b).abs() <= bound,
                    "{ty}: {a} came back as {b} (bound {bound})"
                );
            }
        }
    }
}

/// RMS error relative to the RMS of the data, for the K-quants' min/max quantizers.
fn relative_rms(ty: GgmlType) -> f32 {
    let x = gaussian(256 * 64, 99);
    let y = round_trip(ty, &x);
    let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
    let power: f32 = x.iter().map(|a| a * a).sum();
    (err / power).sqrt()
}

#[test]
fn float_formats() {
    let x = gaussian(1000, 1);
    assert_eq!(round_trip(GgmlType::F32, &x), x);
    for (a, b) in x.iter().zip(round_trip(GgmlType::F16, &x)) {
        assert!((a - b).abs() <= a.abs() * 4.9e-4 + 6e-8, "F16: {a} -> {b}");
    }
    for (a, b) in x.iter().zip(round_trip(GgmlType::BF16, &x)) {
        assert!((a - b).abs() <= a.abs() * 3.91e-3, "BF16: {a} -> {b}");
    }
}

#[test]
fn symmetric_block_formats() {
    // Step d = amax/levels; rounding costs d/2, except the end opposite the largest value, which is clamped one
    // step short (Q4_0, Q5_0) and costs up to d.
    check_blockwise(GgmlType::Q8_0, 0.5 / 127.0, false);
    check_blockwise(GgmlType::Q8_1, 0.5 / 127.0, false);
    check_blockwise(GgmlType::Q8_K, 0.5 / 127.0, false);
    check_blockwise(GgmlType::Q4_0, 1.0 / 8.0, false);
    check_blockwise(GgmlType::Q5_0, 1.0 / 16.0, false);
}

#[test]
fn offset_block_formats() {
    check_blockwise(GgmlType::Q4_1, 0.5 / 15.0, true);
    check_blockwise(GgmlType::Q5_1, 0.5 / 31.0, true);
}

#[test]
fn k_quant_formats() {
    for (ty, limit) in [
        (GgmlType::Q4_K, 0.12),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q6_K, 0.035),
    ] {
        let rms = relative_rms(ty);
        assert!(
            rms < limit,
            "{ty}: relative RMS error {rms} exceeds {limit}"
        );
    }
}

#[test]
fn zeros_stay_zero() {
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_K,
    ] {
        let n = ty.block_size() * 2;
        assert!(
            round_trip(ty, &vec![0.0; n]).iter().all(|&v| v == 0.0),
            "{ty}"
        );
    }
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        assert!(
            round_trip(ty, &[0.0; 512]).iter().all(|&v| v == 0.0),
            "{ty}"
        );
    }
}
