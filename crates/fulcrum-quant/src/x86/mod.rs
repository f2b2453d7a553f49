//! The x86-64 kernels: AVX2 + FMA (+ F16C) dot products, quantizers, NF4 and f16 attention, and the matmul tiles,
//! which also come in AVX-VNNI, AVX512-VNNI and AVX-512 forms (`tiles.rs`, `k_tiles512.rs`), picked by
//! `tiles::Isa::detect`. The integer dot products follow llama.cpp's x86 paths: unpack codes to bytes, `maddubs`
//! (u8 × i8 → i16 pairs) and `madd` (i16 → i32) or one VNNI `vpdpbusd`, then one float FMA per block.
//!
//! Every kernel here is an `unsafe fn` with `#[target_feature]`; [`install`] puts safe wrappers into the dispatch
//! table only after [`available`] has confirmed the CPU features, which is what makes the wrappers sound.

pub mod f16vec;
mod float;
mod helpers;
mod k_quants;
mod k_tiles512;
mod legacy;
pub mod nf4;
mod quantize;
mod tiles;

use crate::table::{DotFn, Order, QuantizeFn, Table, TileChoice, TileFn, TileIsa};
use crate::GgmlType;

/// Whether this CPU can run these kernels.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Defines safe wrappers around target-feature kernels; only [`install`] (after [`available`]) may hand them out.
macro_rules! wrappers {
    ($($name:ident => $kernel:path),* $(,)?) => {
        $(fn $name(w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: only reachable through the table, which holds it only when `available()` returned true.
            unsafe { $kernel(w, a) }
        })*
    };
}

wrappers! {
    dot_f32 => float::vec_dot_f32,
    dot_f16 => float::vec_dot_f16,
    dot_bf16 => float::vec_dot_bf16,
    dot_q4_0 => legacy::vec_dot_q4_0,
    dot_q4_1 => legacy::vec_dot_q4_1,
    dot_q5_0 => legacy::vec_dot_q5_0,
    dot_q5_1 => legacy::vec_dot_q5_1,
    dot_q8_0 => legacy::vec_dot_q8_0,
    dot_q4_k => k_quants::vec_dot_q4_k,
    dot_q4_k_grouped => k_quants::vec_dot_q4_k_grouped,
    dot_q6_k_tiled => k_quants::vec_dot_q6_k_tiled,
    dot_q5_k => k_quants::vec_dot_q5_k,
    dot_q6_k => k_quants::vec_dot_q6_k,
    dot_q8_k => k_quants::vec_dot_q8_k,
}

/// Defines safe wrappers around target-feature tile kernels, like [`wrappers`].
macro_rules! tile_wrappers {
    ($($name:ident => $kernel:path),* $(,)?) => {
        $(unsafe fn $name(w: &[u8], rows: usize, a: &[u8], tokens: usize, n: usize, out: *mut f32, ld: usize) {
            // SAFETY: as in `wrappers` for the features; the caller keeps `TileFn`'s promise on `out`.
            unsafe { $kernel(w, rows, a, tokens, n, out, ld) }
        })*
    };
}

tile_wrappers! {
    tile_q4_0 => tiles::tile_32::<tiles::Q4_0>,
    tile_q5_0 => tiles::tile_32::<tiles::Q5_0>,
    tile_q8_0 => tiles::tile_32::<tiles::Q8_0>,
    tile_q4_0_avx_vnni => tiles::tile_32_avx_vnni::<tiles::Q4_0>,
    tile_q5_0_avx_vnni => tiles::tile_32_avx_vnni::<tiles::Q5_0>,
    tile_q8_0_avx_vnni => tiles::tile_32_avx_vnni::<tiles::Q8_0>,
    tile_q4_0_avx512_vnni => tiles::tile_32_avx512_vnni::<tiles::Q4_0>,
    tile_q5_0_avx512_vnni => tiles::tile_32_avx512_vnni::<tiles::Q5_0>,
    tile_q8_0_avx512_vnni => tiles::tile_32_avx512_vnni::<tiles::Q8_0>,
    tile_q4_0_avx512 => tiles::tile_32_avx512::<tiles::Q4_0>,
    tile_q5_0_avx512 => tiles::tile_32_avx512::<tiles::Q5_0>,
    tile_q8_0_avx512 => tiles::tile_32_avx512::<tiles::Q8_0>,
    tile_q4_k => tiles::tile_q4_k,
    tile_q4_k_grouped => tiles::tile_q4_k_grouped,
    tile_q6_k => tiles::tile_q6_k,
    tile_q6_k_tiled => tiles::tile_q6_k_tiled,
    tile_q4_k_avx512 => k_tiles512::tile_q4_k,
    tile_q4_k_grouped_avx512 => k_tiles512::tile_q4_k_grouped,
    tile_q6_k_avx512 => k_tiles512::tile_q6_k,
}

/// Defines safe wrappers around target-feature quantizers, like [`wrappers`].
macro_rules! quantizer_wrappers {
    ($($name:ident => $kernel:path),* $(,)?) => {
        $(fn $name(src: &[f32], dst: &mut [u8]) {
            // SAFETY: as in `wrappers`; the callers pass whole blocks (`quantize_row` checks them).
            unsafe { $kernel(src, dst) }
        })*
    };
}

quantizer_wrappers! {
    quantize_q8_0 => quantize::quantize_q8_0,
    quantize_q8_k => quantize::quantize_q8_k,
}

/// Replaces the scalar dot products in `table` with these kernels. Call only when [`available`] is true.
pub fn install(table: &mut Table, choice: TileChoice) {
    use GgmlType::*;
    let dots: [(GgmlType, DotFn); 12] = [
        (F32, dot_f32),
        (F16, dot_f16),
        (BF16, dot_bf16),
        (Q4_0, dot_q4_0),
        (Q4_1, dot_q4_1),
        (Q5_0, dot_q5_0),
        (Q5_1, dot_q5_1),
        (Q8_0, dot_q8_0),
        (Q4_K, dot_q4_k),
        (Q5_K, dot_q5_k),
        (Q6_K, dot_q6_k),
        (Q8_K, dot_q8_k),
    ];
    for (ty, dot) in dots {
        if let Some(kernels) = table.by_id[ty as usize].as_mut() {
            kernels.vec_dot = Some(dot);
        }
    }
    if let Some(kernels) = table.by_id[Q4_K as usize].as_mut() {
        kernels.vec_dot_grouped = Some(dot_q4_k_grouped);
    }
    if let Some(kernels) = table.by_id[Q6_K as usize].as_mut() {
        kernels.vec_dot_tiled = Some(dot_q6_k_tiled);
    }
    for (ty, quantize) in [(Q8_0, quantize_q8_0 as QuantizeFn), (Q8_K, quantize_q8_k)] {
        if let Some(kernels) = table.by_id[ty as usize].as_mut() {
            kernels.quantize = Some(quantize);
        }
    }
    use Order::{Grouped, Plain, Tiled};
    // The tiles form the same exact integer lanes with whichever instructions run them (the wrappers are sound:
    // `choose_tiles` and `FULCRUM_TILE_ISA` only take what `tile_isas` confirmed), so each family and batch-size class
    // may take its own.
    for (class, (&isa32, &isak)) in choice[0].iter().zip(&choice[1]).enumerate() {
        let (q4_0, q5_0, q8_0) = tiles_32(isa32);
        let (q4_k, q4_k_grouped, q6_k) = tiles_k(isak);
        let tiles: [(GgmlType, Order, TileFn); 7] = [
            (Q4_0, Plain, q4_0),
            (Q5_0, Plain, q5_0),
            (Q8_0, Plain, q8_0),
            (Q4_K, Plain, q4_k),
            (Q4_K, Grouped, q4_k_grouped),
            (Q6_K, Plain, q6_k),
            (Q6_K, Tiled, tile_q6_k_tiled),
        ];
        for (ty, order, tile) in tiles {
            if let Some(kernels) = table.by_id[ty as usize].as_mut() {
                kernels.tile[class][order as usize] = Some(tile);
            }
        }
    }
    table.tiles = Some(choice);
    // Named after the batched tiles of the 32-element formats.
    table.level = match choice[0][2] {
        TileIsa::Avx2 => "avx2+fma",
        TileIsa::AvxVnni => "avx2+fma+avx-vnni",
        TileIsa::Avx512Vnni => "avx2+fma+avx512-vnni",
        TileIsa::Avx512 => "avx2+fma+avx512",
    };
}

/// The 32-element formats' tiles (Q4_0, Q5_0, Q8_0) in `isa`.
pub fn tiles_32(isa: TileIsa) -> (TileFn, TileFn, TileFn) {
    match isa {
        TileIsa::Avx2 => (tile_q4_0, tile_q5_0, tile_q8_0),
        TileIsa::AvxVnni => (tile_q4_0_avx_vnni, tile_q5_0_avx_vnni, tile_q8_0_avx_vnni),
        TileIsa::Avx512Vnni => (
            tile_q4_0_avx512_vnni,
            tile_q5_0_avx512_vnni,
            tile_q8_0_avx512_vnni,
        ),
        TileIsa::Avx512 => (tile_q4_0_avx512, tile_q5_0_avx512, tile_q8_0_avx512),
    }
}

/// The K-quant tiles (Q4_K, Q4_K grouped, Q6_K) in `isa` (the 256-bit ones for every narrower set).
pub fn tiles_k(isa: TileIsa) -> (TileFn, TileFn, TileFn) {
    match isa {
        TileIsa::Avx512 => (tile_q4_k_avx512, tile_q4_k_grouped_avx512, tile_q6_k_avx512),
        _ => (tile_q4_k, tile_q4_k_grouped, tile_q6_k),
    }
}

/// The tile instruction sets this CPU runs, as the switches allow, narrowest first.
pub fn tile_isas() -> Vec<TileIsa> {
    if !available() {
        return Vec::new();
    }
    let best = best_tile_isa();
    let mut out = vec![TileIsa::Avx2];
    if best == TileIsa::Avx2 {
        return out;
    }
    if is_x86_feature_detected!("avxvnni") {
        out.push(TileIsa::AvxVnni);
    }
    if tiles::Isa::avx512() {
        out.push(TileIsa::Avx512Vnni);
        if best == TileIsa::Avx512 {
            out.push(TileIsa::Avx512);
        }
    }
    out
}

/// The widest tile instruction set this CPU runs, as the switches allow.
pub fn best_tile_isa() -> TileIsa {
    match tiles::Isa::detect() {
        tiles::Isa::Avx2 => TileIsa::Avx2,
        tiles::Isa::AvxVnni => TileIsa::AvxVnni,
        tiles::Isa::Avx512Vnni => TileIsa::Avx512Vnni,
        tiles::Isa::Avx512 => TileIsa::Avx512,
    }
}
