//! NF4: each SIMD dot path agrees with its scalar reference on random and adversarial rows, the scalar references
//! agree with the dequantized row, dequantization is bit-exact with the formula, and corrupt rows are refused.

mod common;

use common::{activation_values, Rng};
use fulcrum_quant::formats::nf4::{Row, BLOCK, BLOCK_BYTES, CODES, DYNAMIC_MAP, GROUP, MIN_BLOCKS};
use fulcrum_quant::nf4::{branchy_dot, Nf4Dot};
use fulcrum_quant::{
    check_tensor, check_weights, dequantize_row, quantize_row, row_bytes, vec_dot, vec_dot_type,
    GgmlType, QuantError,
};
use proptest::prelude::*;

const NF4: GgmlType = GgmlType::NF4;

/// A row of `blocks` blocks for `mode` (0..4): quantized Gaussian weights at a random scale, random bytes under a
/// random finite header, all-ones code bytes with the largest dynamic-map codes, or all-zero codes.
fn weight_row(rng: &mut Rng, blocks: usize, mode: u32) -> Vec<u8> {
    let n = blocks * BLOCK;
    if mode == 0 {
        let scale = [1.0, 1e-3, 30.0][(rng.next_u64() % 3) as usize];
        let values: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
        let mut row = vec![0u8; row_bytes(NF4, n)];
        quantize_row(NF4, &values, &mut row);
        return row;
    }
    let mut row = match mode {
        1 => rng.bytes(row_bytes(NF4, n)),
        2 => vec![0xFF; row_bytes(NF4, n)],
        _ => vec![0x00; row_bytes(NF4, n)],
    };
    let groups = blocks.div_ceil(GROUP);
    row[..blocks].fill(0);
    let offset = rng.uniform() * 0.1;
    row[..4].copy_from_slice(&offset.to_le_bytes());
    for g in 0..groups {
        let scale = if mode == 2 { 1e3 } else { rng.uniform() * 0.05 };
        row[4 + 4 * g..8 + 4 * g].copy_from_slice(&f32::to_le_bytes(scale));
    }
    row
}

fn activation_row(path: Nf4Dot, values: &[f32]) -> Vec<u8> {
    let ty = path.activation_type();
    let mut row = vec![0u8; row_bytes(ty, values.len())];
    quantize_row(ty, values, &mut row);
    row
}

fn dequantized(ty: GgmlType, row: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dequantize_row(ty, row, &mut out);
    out
}

/// Σ|w·a|: the scale of the rounding errors of any summation order.
fn magnitude(w: &[f32], a: &[f32]) -> f64 {
    w.iter()
        .zip(a)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum()
}

fn check_case(
    seed: u64,
    blocks: usize,
    weight_mode: u32,
    act_mode: u32,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let n = blocks * BLOCK;
    let w_row = weight_row(&mut rng, blocks, weight_mode);
    let w = dequantized(NF4, &w_row, n);
    let values = activation_values(&mut rng, n, act_mode);
    for path in [Nf4Dot::Exact, Nf4Dot::Int8] {
        let a_row = activation_row(path, &values);
        let a = dequantized(path.activation_type(), &a_row, n);
        let bound = magnitude(&w, &a);
        let reference = path.scalar()(&w_row, &a_row) as f64;
        if let Some(simd) = path.simd() {
            let fast = simd(&w_row, &a_row) as f64;
            prop_assert!(
                (fast - reference).abs() <= 1e-5 * bound + 1e-30,
                "{path:?} blocks={blocks} modes=({weight_mode},{act_mode}): simd {fast} vs scalar {reference} (bound {bound})"
            );
        }
        // The reference against the dequantized row: exact for the exact path; for the int8 path the weights are
        // the table rounded to 1/127 of the absmax.
        let exact: f64 = w.iter().zip(&a).map(|(&x, &y)| x as f64 * y as f64).sum();
        let tolerance = match path {
            Nf4Dot::Exact => 1e-5 * bound,
            Nf4Dot::Int8 => 1e-5 * bound + 0.5 / 127.0 * absmax_weighted(&w_row, &a),
        };
        prop_assert!(
            (reference - exact).abs() <= tolerance + 1e-30,
            "{path:?} blocks={blocks} modes=({weight_mode},{act_mode}): scalar {reference} vs dequantized {exact}"
        );
    }
    let baseline = branchy_dot()(&w_row, &activation_row(Nf4Dot::Exact, &values)) as f64;
    let reference = Nf4Dot::Exact.scalar()(&w_row, &activation_row(Nf4Dot::Exact, &values)) as f64;
    prop_assert!((baseline - reference).abs() <= 1e-5 * magnitude(&w, &values) + 1e-30);
    Ok(())
}

/// Σ_b absmax_b · Σ_{i in b} |a_i|: the most the int8 table's rounding can move the dot product (before the 0.5/127).
fn absmax_weighted(w_row: &[u8], a: &[f32]) -> f64 {
    let row = Row::new(w_row);
    a.chunks_exact(BLOCK)
        .enumerate()
        .map(|(b, x)| row.absmax(b).abs() as f64 * x.iter().map(|v| v.abs() as f64).sum::<f64>())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn simd_paths_match_scalar(seed in any::<u64>(), blocks in MIN_BLOCKS..=40, weight_mode in 0u32..4,
                               act_mode in 0u32..6) {
        check_case(seed, blocks, weight_mode, act_mode)?;
    }

    #[test]
    fn dequantize_is_the_formula(seed in any::<u64>(), blocks in MIN_BLOCKS..=24, weight_mode in 0u32..4) {
        let mut rng = Rng::new(seed);
        let row = weight_row(&mut rng, blocks, weight_mode);
        let w = dequantized(NF4, &row, blocks * BLOCK);
        let view = Row::new(&row);
        for (i, &v) in w.iter().enumerate() {
            let b = i / BLOCK;
            let byte = view.codes[i / 2];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
            let absmax = DYNAMIC_MAP[view.absmax_codes[b] as usize] * view.scale(b / GROUP) + view.offset;
            prop_assert_eq!(v.to_bits(), (CODES[code as usize] * absmax).to_bits());
        }
    }
}

/// Every adversarial mode, at the smallest row, a typical one and one with two absmax groups.
#[test]
fn all_modes_small_and_large_rows() {
    for blocks in [MIN_BLOCKS, 14, 300] {
        for weight_mode in 0..4 {
            for act_mode in 0..6 {
                check_case(
                    blocks as u64 * 31 + weight_mode as u64 * 7 + act_mode as u64,
                    blocks,
                    weight_mode,
                    act_mode,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn dispatched_dot_follows_the_selected_path() {
    let mut rng = Rng::new(5);
    let n = 640;
    let w_row = weight_row(&mut rng, n / BLOCK, 0);
    let values = activation_values(&mut rng, n, 0);
    let path = fulcrum_quant::nf4::selected();
    assert_eq!(vec_dot_type(NF4), path.activation_type());
    let a_row = activation_row(path, &values);
    let expected = path.simd().unwrap_or(path.scalar())(&w_row, &a_row);
    let forced = std::env::var("FULCRUM_FORCE_SCALAR").is_ok_and(|v| v == "1");
    let dispatched = vec_dot(NF4, n, &w_row, &a_row);
    if forced {
        assert_eq!(dispatched, path.scalar()(&w_row, &a_row));
    } else {
        assert_eq!(dispatched, expected);
    }
}

#[test]
fn quantization_error_is_nf4_sized() {
    let mut rng = Rng::new(9);
    let n = 64 * 1024;
    let values: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let mut row = vec![0u8; row_bytes(NF4, n)];
    quantize_row(NF4, &values, &mut row);
    let w = dequantized(NF4, &row, n);
    let mse: f64 = w
        .iter()
        .zip(&values)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / n as f64;
    // NF4 on Gaussian data: RMS error about 0.1 of the standard deviation (Q4_0 gets about 0.12).
    assert!(mse.sqrt() < 0.12, "rms error {}", mse.sqrt());
    assert!(
        mse.sqrt() > 0.05,
        "rms error {} is implausibly small",
        mse.sqrt()
    );
}

#[test]
fn short_rows_and_corrupt_headers_are_refused() {
    let too_short = check_weights(NF4, 448).unwrap_err();
    assert!(
        matches!(too_short, QuantError::Corrupt { .. }),
        "{too_short}"
    );
    assert!(too_short.to_string().contains("512"), "{too_short}");
    assert!(matches!(
        check_weights(NF4, 520),
        Err(QuantError::PartialBlock { .. })
    ));

    let n = 640;
    let mut rng = Rng::new(1);
    let mut data = [weight_row(&mut rng, 10, 0), weight_row(&mut rng, 10, 0)].concat();
    check_tensor(NF4, n, &data).unwrap();
    let bytes = row_bytes(NF4, n);
    let bad = |edit: &dyn Fn(&mut [u8]), needle: &str| {
        let mut copy = data.clone();
        edit(&mut copy[bytes..]);
        let err = check_tensor(NF4, n, &copy).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains(needle), "{err}");
    };
    bad(
        &|r| r[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
        "offset",
    );
    bad(
        &|r| r[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes()),
        "scale",
    );
    bad(&|r| r[9] = 1, "padding");
    data.truncate(bytes);
    check_tensor(NF4, n, &data).unwrap();
    assert!(BLOCK_BYTES * 10 == bytes);
}
