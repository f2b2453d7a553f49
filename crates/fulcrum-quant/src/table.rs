//! What the kernel table holds: the signatures of the kernels, the kernels of one type, the table indexed by type,
//! and the summation orders that index a type's tile kernels. [`crate::dispatch`] fills it once at start-up.

use crate::GgmlType;

/// The float summation order of a dot product. llama.cpp's CPU backend changes it with the batch size (its repacked
/// and tiled matmuls sum the same exact integers in another order), and Fulcrum follows it to stay bit-identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `ggml_vec_dot`'s order: a batch of one, and every type without a batched variant.
    Plain = 0,
    /// Repacked Q4_K taking activation rows four at a time.
    Grouped = 1,
    /// The tiled K-quant matmul of batches of eight rows or more (Q6_K).
    Tiled = 2,
}

/// Dot product of a weight row with an activation row of the matching `vec_dot_type`, both exactly one row long.
pub type DotFn = fn(&[u8], &[u8]) -> f32;
/// Expands a row (a whole number of blocks) into `dst` (one f32 per element).
pub type DequantizeFn = fn(&[u8], &mut [f32]);
/// Encodes f32 values (a whole number of blocks) into a row.
pub type QuantizeFn = fn(&[f32], &mut [u8]);
/// Dots `rows` consecutive weight rows (`w`) with `tokens` consecutive activation rows (`a`), all `n` elements long,
/// into `out[t * ld + r]`; each output rounds exactly as the matching single dot product of its order.
///
/// # Safety
/// `out` is valid for writes at `t * ld + r` for every `t < tokens`, `r < rows`, and nothing else accesses those
/// elements meanwhile (other elements of the same buffer may be written by other threads).
pub type TileFn =
    unsafe fn(w: &[u8], rows: usize, a: &[u8], tokens: usize, n: usize, out: *mut f32, ld: usize);

/// The kernels of one type.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dequantize: DequantizeFn,
    pub quantize: Option<QuantizeFn>,
    pub vec_dot: Option<DotFn>,
    /// The dot product for activation rows that llama.cpp handles four at a time, where its rounding differs from
    /// `vec_dot` (repacked Q4_K); `None` means the same as `vec_dot`.
    pub vec_dot_grouped: Option<DotFn>,
    /// The dot product of llama.cpp's tiled matmul for batches of 8 rows or more, where its rounding differs from
    /// `vec_dot` (Q6_K); `None` means the same as `vec_dot`.
    pub vec_dot_tiled: Option<DotFn>,
    /// Many-rows-by-many-tokens kernels, indexed by batch-size [`class`] and [`Order`]; `None` falls back to one
    /// dot per pair.
    pub tile: [[Option<TileFn>; 3]; CLASSES],
}

/// Batch-size classes whose tile kernels are chosen separately: one activation row (decode), 2–8, and 9 or more.
pub const CLASSES: usize = 3;

/// The batch-size class of a tile call over `tokens` activation rows.
pub fn class(tokens: usize) -> usize {
    match tokens {
        0 | 1 => 0,
        2..=8 => 1,
        _ => 2,
    }
}

/// An instruction set of the integer tile kernels (x86); every one gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileIsa {
    /// `maddubs` + `madd` on 256-bit registers.
    Avx2,
    /// AVX-VNNI's `vpdpbusd` on 256-bit registers.
    AvxVnni,
    /// AVX512-VNNI's `vpdpbusd` on 256-bit registers.
    Avx512Vnni,
    /// 512-bit registers (two weight rows per register for the 32-element formats).
    Avx512,
}

impl TileIsa {
    /// Every variant, narrowest first.
    pub const ALL: [TileIsa; 4] = [
        TileIsa::Avx2,
        TileIsa::AvxVnni,
        TileIsa::Avx512Vnni,
        TileIsa::Avx512,
    ];

    /// Its name in logs, caches and `FULCRUM_TILE_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            TileIsa::Avx2 => "avx2",
            TileIsa::AvxVnni => "avx-vnni",
            TileIsa::Avx512Vnni => "avx512-vnni",
            TileIsa::Avx512 => "avx512",
        }
    }

    /// The variant named `name`.
    pub fn parse(name: &str) -> Option<TileIsa> {
        TileIsa::ALL.into_iter().find(|i| i.name() == name.trim())
    }
}

/// Kernel families whose tiles come in several instruction sets: the 32-element formats (Q4_0, Q5_0, Q8_0) and the
/// K-quants (Q4_K, Q6_K).
pub const FAMILIES: usize = 2;

/// The families' names, in [`TileChoice`]'s order.
pub const FAMILY_NAMES: [&str; FAMILIES] = ["32-element", "k-quant"];

/// The tile instruction set per family and batch-size class.
pub type TileChoice = [[TileIsa; CLASSES]; FAMILIES];

/// Slots in the table: ggml's ids below 32, then Fulcrum's own types.
pub const SLOTS: usize = 33;

/// The table slot of `ty`: its ggml id, or a slot past them for NF4 (whose id is far above ggml's).
pub fn slot(ty: GgmlType) -> usize {
    match ty {
        GgmlType::NF4 => 32,
        other => other as usize,
    }
}

/// Kernels for every type, indexed by [`slot`] (the ggml type id for ggml's types).
pub struct Table {
    pub level: &'static str,
    pub by_id: [Option<Kernels>; SLOTS],
    /// The tiles' instruction sets (`None`: scalar kernels).
    pub tiles: Option<TileChoice>,
}

impl Table {
    /// The kernels of `ty`, if it is supported.
    pub fn get(&self, ty: GgmlType) -> Option<&Kernels> {
        self.by_id.get(slot(ty)).and_then(Option::as_ref)
    }
}
