//! The dispatched (SIMD where available) dot products agree with the scalar reference, and the scalar reference
//! agrees with the f32 dot product of the dequantized rows — which ties the integer path to the block layout.

mod common;

use common::{
    activation_row, activation_values, dequantized, magnitude, weight_row, Rng, WEIGHT_TYPES,
};
use fulcrum_quant::{dot_tile, scalar, vec_dot, vec_dot_in_batch, vec_dot_type, GgmlType, Order};
use proptest::prelude::*;

/// Row length for `blocks` blocks of `ty`; plain types get odd lengths to exercise SIMD tails.
fn row_len(ty: GgmlType, blocks: usize) -> usize {
    match ty.block_size() {
        1 => blocks * 37 + blocks % 5,
        32 => blocks * 32,
        _ => blocks.div_ceil(4) * 256,
    }
}

/// Relative tolerance of the integer path against exact f32 math on the dequantized rows: Q8_1's `s` is d·Σq
/// rounded to f16 (as in ggml), which costs up to ~2⁻¹¹ of the offset term.
fn layout_tolerance(w: GgmlType) -> f64 {
    if vec_dot_type(w) == GgmlType::Q8_1 {
        2e-3
    } else {
        1e-4
    }
}

fn check_case(
    seed: u64,
    blocks: usize,
    weight_mode: u32,
    act_mode: u32,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    for ty in WEIGHT_TYPES {
        let n = row_len(ty, blocks);
        let w_row = weight_row(&mut rng, ty, n, weight_mode);
        let values = activation_values(&mut rng, n, act_mode);
        let a_row = activation_row(ty, &values);
        let w = dequantized(ty, &w_row, n);
        let a = dequantized(vec_dot_type(ty), &a_row, n);
        let bound = magnitude(&w, &a);

        let reference = scalar::vec_dot(ty, n, &w_row, &a_row) as f64;
        let fast = vec_dot(ty, n, &w_row, &a_row) as f64;
        prop_assert!(
            (fast - reference).abs() <= 1e-4 * bound + 1e-30,
            "{ty} n={n} modes=({weight_mode},{act_mode}): dispatched {fast} vs scalar {reference} (bound {bound})"
        );

        // The batch variants (llama.cpp's repacked and tiled rounding) sum the same products in another order.
        for (batch, t) in [(4, 0), (8, 7), (9, 8), (1, 0)] {
            let variant = vec_dot_in_batch(ty, n, &w_row, &a_row, batch, t) as f64;
            prop_assert!(
                (variant - reference).abs() <= 1e-4 * bound + 1e-30,
                "{ty} n={n} batch {batch} row {t}: {variant} vs scalar {reference} (bound {bound})"
            );
        }

        let exact: f64 = w.iter().zip(&a).map(|(&x, &y)| x as f64 * y as f64).sum();
        prop_assert!(
            (reference - exact).abs() <= layout_tolerance(ty) * bound + 1e-30,
            "{ty} n={n} modes=({weight_mode},{act_mode}): scalar {reference} vs dequantized dot {exact}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn dispatched_matches_scalar_and_layout(seed in any::<u64>(), blocks in 1usize..=24, weight_mode in 0u32..5,
                                            act_mode in 0u32..6) {
        check_case(seed, blocks, weight_mode, act_mode)?;
    }
}

/// Every combination of adversarial modes, at one block and at many.
#[test]
fn all_modes_one_and_many_blocks() {
    for blocks in [1, 4, 128] {
        for weight_mode in 0..5 {
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

/// A tile of `rows × tokens` dot products, taken as a matmul would (its tokens sit at `first..` of a batch of
/// `batch`, split into runs of one order), is bit-identical to each pair's single dot product.
fn check_tile(seed: u64, blocks: usize, rows: usize, tokens: usize) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    for ty in WEIGHT_TYPES {
        let n = row_len(ty, blocks);
        let w_rows: Vec<Vec<u8>> = (0..rows)
            .map(|r| weight_row(&mut rng, ty, n, r as u32 % 5))
            .collect();
        let acts: Vec<Vec<u8>> = (0..tokens)
            .map(|t| activation_row(ty, &activation_values(&mut rng, n, t as u32 % 6)))
            .collect();
        let (w_all, a_all) = (w_rows.concat(), acts.concat());
        let a_bytes = a_all.len() / tokens;
        let ld = rows + 3;
        // Batch 1: every token rounded as a batch of one, as serving and speculative verification take them.
        for (batch, first) in [(tokens, 0), (tokens + 5, 3), (tokens + 9, 9), (1, 0)] {
            let mut out = vec![f32::NAN; tokens * ld];
            for (run, order) in Order::runs(ty, batch, first..first + tokens) {
                let (t0, len) = (run.start - first, run.len());
                dot_tile(
                    ty,
                    n,
                    &w_all,
                    rows,
                    &a_all[t0 * a_bytes..],
                    len,
                    order,
                    &mut out[t0 * ld..],
                    ld,
                );
            }
            for (t, act) in acts.iter().enumerate() {
                for (r, w_row) in w_rows.iter().enumerate() {
                    let single = vec_dot_in_batch(ty, n, w_row, act, batch, first + t);
                    prop_assert_eq!(
                        out[t * ld + r].to_bits(),
                        single.to_bits(),
                        "{} n={} tile {}x{} (batch {}, first {}): out[{}][{}] = {} vs single {}",
                        ty,
                        n,
                        rows,
                        tokens,
                        batch,
                        first,
                        t,
                        r,
                        out[t * ld + r],
                        single
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The activation quantizers (compiled for SIMD where available) write exactly the scalar reference's bytes.
    #[test]
    fn activation_quantizers_match_scalar(seed in any::<u64>(), blocks in 1usize..=8, mode in 0u32..6) {
        let mut rng = Rng::new(seed);
        for ty in [GgmlType::Q8_0, GgmlType::Q8_K, GgmlType::Q8_1] {
            let n = blocks * ty.block_size();
            let values = activation_values(&mut rng, n, mode);
            let mut fast = vec![0u8; fulcrum_quant::row_bytes(ty, n)];
            let mut reference = fast.clone();
            fulcrum_quant::quantize_row(ty, &values, &mut fast);
            scalar::quantize_row(ty, &values, &mut reference);
            prop_assert_eq!(fast, reference, "{} mode {}", ty, mode);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tiles_match_single_dots(seed in any::<u64>(), blocks in 1usize..=9, rows in 1usize..=11,
                               tokens in 1usize..=13) {
        check_tile(seed, blocks, rows, tokens)?;
    }
}

#[test]
fn simd_is_used_where_available() {
    let forced = std::env::var("FULCRUM_FORCE_SCALAR").is_ok_and(|v| v == "1");
    #[cfg(target_arch = "x86_64")]
    if !forced
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        assert!(fulcrum_quant::simd_level().starts_with("avx2+fma"));
        return;
    }
    let _ = forced;
    assert_eq!(fulcrum_quant::simd_level(), "scalar");
}
