//! Choosing the tile kernels by measurement (without building the kernel table, so that the result can still be
//! handed to [`crate::choose_tiles`]): which instruction set is fastest for each kernel family and batch-size
//! class on this CPU. Wider is not always faster — on AMD Zen 4 and Zen 5 the 512-bit tiles win batches but lose
//! single-row decoding, where the matrix streams from memory — so the choice is timed, not assumed. Every variant
//! gives the same bits, so the choice changes speed only.

use crate::scalar::quantize_row;
use crate::table::{TileChoice, TileIsa, CLASSES, FAMILIES};
use crate::{row_bytes, vec_dot_type, GgmlType};
use std::time::Instant;

/// One measurement: a family's tile in one instruction set, over a batch of `tokens` rows.
#[derive(Debug, Clone, Copy)]
pub struct TileTiming {
    pub family: usize,
    pub class: usize,
    pub tokens: usize,
    pub isa: TileIsa,
    /// Best time of one pass over the weight matrix, in seconds.
    pub seconds: f64,
    /// Weight bytes read per second in that pass.
    pub weight_gb_per_s: f64,
}

/// Activation rows that stand for each class when timing.
pub const CLASS_TOKENS: [usize; CLASSES] = [1, 4, 16];
/// The type that stands for each family when timing.
const FAMILY_TYPES: [GgmlType; FAMILIES] = [GgmlType::Q8_0, GgmlType::Q4_K];
/// Weight rows and tokens per tile call, as the matmul tiles them.
const ROW_BLOCK: usize = 16;
const TOKEN_BLOCK: usize = 64;

/// A deterministic pseudo-random f32 stream in [-1, 1).
fn stream(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Times every tile instruction set this CPU runs for every family and class over a weight matrix of about
/// `matrix_mib` MiB (larger than the caches, as a model's are), `reps` passes each (the best counts; the variants
/// alternate so that drift hits them alike); returns the fastest per family and class, and every timing.
pub fn calibrate_tiles(matrix_mib: usize, reps: usize) -> Option<(TileChoice, Vec<TileTiming>)> {
    let all = crate::tile_isas();
    let widest = *all.last()?;
    let mut timings = Vec::new();
    let mut choice = [[widest; CLASSES]; FAMILIES];
    for (family, &ty) in FAMILY_TYPES.iter().enumerate() {
        // The K-quants have two variants: 256-bit (for every narrower set) and 512-bit.
        let isas: Vec<TileIsa> = if family == 0 {
            all.clone()
        } else {
            all.iter()
                .copied()
                .filter(|&i| i == TileIsa::Avx2 || i == TileIsa::Avx512)
                .collect()
        };
        let cols = 4096;
        let (w_bytes, a_bytes) = (row_bytes(ty, cols), row_bytes(vec_dot_type(ty), cols));
        let rows = ((matrix_mib << 20) / w_bytes).max(ROW_BLOCK) / ROW_BLOCK * ROW_BLOCK;
        // A few distinct quantized rows, repeated: real blocks, cheap to make.
        let mut next = stream(0x9E37_79B9_7F4A_7C15 + family as u64);
        let distinct = 8;
        let mut seed_rows = vec![0u8; distinct * w_bytes];
        for row in seed_rows.chunks_exact_mut(w_bytes) {
            let values: Vec<f32> = (0..cols).map(|_| next()).collect();
            quantize_row(ty, &values, row);
        }
        let mut w = vec![0u8; rows * w_bytes];
        for (i, row) in w.chunks_exact_mut(w_bytes).enumerate() {
            row.copy_from_slice(&seed_rows[(i % distinct) * w_bytes..][..w_bytes]);
        }
        let max_tokens = CLASS_TOKENS[CLASSES - 1];
        let mut acts = vec![0u8; max_tokens * a_bytes];
        for row in acts.chunks_exact_mut(a_bytes) {
            let values: Vec<f32> = (0..cols).map(|_| next()).collect();
            quantize_row(vec_dot_type(ty), &values, row);
        }
        let mut out = vec![0f32; ROW_BLOCK * TOKEN_BLOCK];
        for (class, &tokens) in CLASS_TOKENS.iter().enumerate() {
            let mut best = vec![f64::INFINITY; isas.len()];
            for _ in 0..reps {
                for (i, &isa) in isas.iter().enumerate() {
                    let tile = tile_of(family, isa);
                    let start = Instant::now();
                    for r0 in (0..rows).step_by(ROW_BLOCK) {
                        // SAFETY: `out` holds ROW_BLOCK × tokens outputs at stride ROW_BLOCK, and is ours alone.
                        unsafe {
                            tile(
                                &w[r0 * w_bytes..(r0 + ROW_BLOCK) * w_bytes],
                                ROW_BLOCK,
                                &acts,
                                tokens,
                                cols,
                                out.as_mut_ptr(),
                                ROW_BLOCK,
                            )
                        };
                    }
                    best[i] = best[i].min(start.elapsed().as_secs_f64());
                    std::hint::black_box(&out);
                }
            }
            let fastest = (0..isas.len())
                .min_by(|&a, &b| best[a].total_cmp(&best[b]))
                .expect("at least one instruction set");
            choice[family][class] = isas[fastest];
            for (i, &isa) in isas.iter().enumerate() {
                timings.push(TileTiming {
                    family,
                    class,
                    tokens,
                    isa,
                    seconds: best[i],
                    weight_gb_per_s: (rows * w_bytes) as f64 / best[i] / 1e9,
                });
            }
        }
    }
    Some((choice, timings))
}

/// The Plain-order tile of `family` in `isa`.
fn tile_of(family: usize, isa: TileIsa) -> crate::table::TileFn {
    #[cfg(target_arch = "x86_64")]
    {
        if family == 0 {
            crate::x86::tiles_32(isa).2
        } else {
            crate::x86::tiles_k(isa).0
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (family, isa);
        unreachable!("no tile instruction sets off x86")
    }
}
