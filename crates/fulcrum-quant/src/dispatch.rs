//! The kernel table: per type, function pointers to the scalar reference or, when the CPU has them, the x86 SIMD
//! kernels (`x86/`). Built once, on first use, from run-time CPU feature detection.

use crate::formats::{float, nf4, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::table::{slot, Kernels, Table, TileChoice, TileIsa, SLOTS};
use crate::GgmlType;
use std::sync::OnceLock;

/// The scalar reference kernels of `ty`.
pub fn scalar_kernels(ty: GgmlType) -> Option<Kernels> {
    use GgmlType::*;
    let k = |dequantize, quantize, vec_dot| {
        Some(Kernels {
            dequantize,
            quantize,
            vec_dot,
            vec_dot_grouped: None,
            vec_dot_tiled: None,
            tile: [[None; 3]; crate::table::CLASSES],
        })
    };
    match ty {
        F32 => k(
            float::dequantize_f32,
            Some(float::quantize_f32),
            Some(float::vec_dot_f32),
        ),
        F16 => k(
            float::dequantize_f16,
            Some(float::quantize_f16),
            Some(float::vec_dot_f16),
        ),
        BF16 => k(
            float::dequantize_bf16,
            Some(float::quantize_bf16),
            Some(float::vec_dot_bf16),
        ),
        Q4_0 => k(q4_0::dequantize, Some(q4_0::quantize), Some(q4_0::vec_dot)),
        Q4_1 => k(q4_1::dequantize, Some(q4_1::quantize), Some(q4_1::vec_dot)),
        Q5_0 => k(q5_0::dequantize, Some(q5_0::quantize), Some(q5_0::vec_dot)),
        Q5_1 => k(q5_1::dequantize, Some(q5_1::quantize), Some(q5_1::vec_dot)),
        Q8_0 => k(q8_0::dequantize, Some(q8_0::quantize), Some(q8_0::vec_dot)),
        Q8_1 => k(q8_1::dequantize, Some(q8_1::quantize), None),
        Q4_K => k(q4_k::dequantize, Some(q4_k::quantize), Some(q4_k::vec_dot)),
        Q5_K => k(q5_k::dequantize, Some(q5_k::quantize), Some(q5_k::vec_dot)),
        Q6_K => k(q6_k::dequantize, Some(q6_k::quantize), Some(q6_k::vec_dot)),
        Q8_K => k(q8_k::dequantize, Some(q8_k::quantize), Some(q8_k::vec_dot)),
        NF4 => k(
            nf4::dequantize,
            Some(nf4::quantize),
            Some(crate::nf4::selected().scalar()),
        ),
        Q2_K | Q3_K | I8 | I16 | I32 | I64 | F64 => None,
    }
}

fn scalar_table() -> Table {
    let mut by_id = [None; SLOTS];
    for ty in GgmlType::ALL {
        by_id[slot(ty)] = scalar_kernels(ty);
    }
    Table {
        level: "scalar",
        by_id,
        tiles: None,
    }
}

/// The tile choice given by [`choose_tiles`] before the table was built.
static CHOICE: OnceLock<TileChoice> = OnceLock::new();

/// Sets which instruction set the tiles use per family and batch-size class (see [`crate::tile_isas`] for what this
/// CPU runs); must come before the first kernel call. `FULCRUM_TILE_ISA` still overrides it.
pub fn choose_tiles(choice: TileChoice) -> Result<(), String> {
    let supported = crate::tile_isas();
    if let Some(bad) = choice.iter().flatten().find(|i| !supported.contains(i)) {
        return Err(format!(
            "this CPU cannot run the {} tile kernels",
            bad.name()
        ));
    }
    if TABLE.get().is_some() {
        return Err("the kernel table is already built".into());
    }
    CHOICE
        .set(choice)
        .map_err(|_| "the tile kernels are already chosen".to_string())
}

/// `FULCRUM_TILE_ISA`, if set: one instruction set for every class, or three (1 row, 2–8, 9+) separated by commas,
/// each one this CPU runs; an error says why a value is not.
pub fn env_tile_choice() -> Option<Result<TileChoice, String>> {
    let v = std::env::var("FULCRUM_TILE_ISA").ok()?;
    let supported = crate::tile_isas();
    let bad = || {
        let have: Vec<&str> = supported.iter().map(|i| i.name()).collect();
        format!(
            "FULCRUM_TILE_ISA={v} is not one of this CPU's tile instruction sets ({}), or three of them separated by commas",
            have.join(", ")
        )
    };
    let isas: Option<Vec<TileIsa>> = v.split(',').map(TileIsa::parse).collect();
    let per_class: [TileIsa; 3] = match isas.as_deref() {
        Some(&[one]) => [one; 3],
        Some(&[a, b, c]) => [a, b, c],
        _ => return Some(Err(bad())),
    };
    if !per_class.iter().all(|i| supported.contains(i)) {
        return Some(Err(bad()));
    }
    Some(Ok([per_class; 2]))
}

fn build() -> Table {
    let mut table = scalar_table();
    if std::env::var("FULCRUM_FORCE_SCALAR").is_ok_and(|v| v == "1") {
        return table;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::x86::available() {
        let best = crate::x86::best_tile_isa();
        let choice = env_tile_choice()
            .and_then(Result::ok)
            .or_else(|| CHOICE.get().copied())
            .unwrap_or([[best; 3]; 2]);
        crate::x86::install(&mut table, choice);
    }
    // NF4 takes the SIMD kernel of the path `FULCRUM_NF4_DOT` selected.
    if let Some(dot) = crate::nf4::selected().simd() {
        if let Some(kernels) = table.by_id[slot(GgmlType::NF4)].as_mut() {
            kernels.vec_dot = Some(dot);
        }
    }
    table
}

/// Whether the process-wide table holds the SIMD kernels (the CPU has them and `FULCRUM_FORCE_SCALAR` is not set);
/// the other kernel families (`f16vec`, `vecf32`) follow the same choice.
pub fn simd() -> bool {
    table().level != "scalar"
}

static TABLE: OnceLock<Table> = OnceLock::new();

/// The process-wide table, built on first use.
pub fn table() -> &'static Table {
    TABLE.get_or_init(build)
}

/// The process-wide table's kernels of `ty`.
///
/// # Panics
/// If `ty` is not supported (callers check [`crate::is_supported`] first).
pub fn kernels(ty: GgmlType) -> &'static Kernels {
    table()
        .get(ty)
        .unwrap_or_else(|| panic!("tensor type {ty} is not supported; check is_supported first"))
}
