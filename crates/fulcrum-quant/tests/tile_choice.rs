//! A tile choice that differs by batch size (as `fulcrum` sets it from its measurement) still gives every output the
//! bits of its single dot product. Its own test binary: the choice must come before the kernel table is built.

use fulcrum_quant::{
    choose_tiles, dot_tile, quantize_row, row_bytes, tile_choice, tile_isas, vec_dot_in_batch,
    vec_dot_type, GgmlType, Order, CLASSES,
};

#[test]
fn a_choice_per_batch_size_gives_the_same_bits() {
    let isas = tile_isas();
    if isas.len() < 2 {
        return;
    }
    // Narrowest for one row, widest for 2-8, the other way round for the K-quants.
    let (narrow, wide) = (isas[0], *isas.last().unwrap());
    let choice = [[narrow, wide, narrow], [wide, narrow, wide]];
    choose_tiles(choice).expect("the first choice is taken");
    assert_eq!(tile_choice(), Some(choice));
    assert!(
        choose_tiles(choice).is_err(),
        "the table is built: too late"
    );
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let (rows, n) = (7, 512);
        let (ws, as_) = (row_bytes(ty, n), row_bytes(vec_dot_type(ty), n));
        let mut w = vec![0u8; rows * ws];
        for row in w.chunks_exact_mut(ws) {
            let v: Vec<f32> = (0..n).map(|_| next()).collect();
            quantize_row(ty, &v, row);
        }
        for tokens in [1, 4, 16] {
            assert!(fulcrum_quant::class(tokens) < CLASSES);
            let mut a = vec![0u8; tokens * as_];
            for row in a.chunks_exact_mut(as_) {
                let v: Vec<f32> = (0..n).map(|_| next()).collect();
                quantize_row(vec_dot_type(ty), &v, row);
            }
            for (run, order) in Order::runs(ty, tokens, 0..tokens) {
                if run.is_empty() {
                    continue;
                }
                let mut out = vec![0f32; run.len() * rows];
                dot_tile(
                    ty,
                    n,
                    &w,
                    rows,
                    &a[run.start * as_..],
                    run.len(),
                    order,
                    &mut out,
                    rows,
                );
                for (i, t) in run.clone().enumerate() {
                    for r in 0..rows {
                        let want = vec_dot_in_batch(ty, n, &w[r * ws..], &a[t * as_..], tokens, t);
                        assert_eq!(
                            out[i * rows + r].to_bits(),
                            want.to_bits(),
                            "{ty} tokens {tokens} row {r} token {t}"
                        );
                    }
                }
            }
        }
    }
}
