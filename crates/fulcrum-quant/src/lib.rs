//! GGUF tensor block formats: layouts, quantizers, dequantizers and dot products that mirror llama.cpp's CPU
//! backend, with scalar reference kernels and x86 SIMD kernels (AVX2/FMA, VNNI, AVX-512; `x86/`) chosen at run time.
//!
//! A matmul row `w · x` is computed as in ggml: the f32 activation row `x` is first quantized to the weight type's
//! [`vec_dot_type`] with [`quantize_row`], then [`vec_dot`] takes the integer (or float) dot product block by block.
//! Set `FULCRUM_FORCE_SCALAR=1` to use the scalar kernels everywhere (for bisecting numerical differences).

mod block;
pub mod calibrate;
mod dispatch;
mod error;
pub mod expf;
pub mod f16vec;
pub mod formats;
mod fp;
pub mod nf4;
mod rows;
mod table;
mod tile;
pub mod vecf32;

#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{choose_tiles, env_tile_choice};
pub use error::QuantError;
pub use fulcrum_gguf::GgmlType;
pub use rows::{row_bytes, try_row_bytes, vec_dot_type};
pub use table::{class, Order, TileChoice, TileIsa, CLASSES, FAMILIES, FAMILY_NAMES};

/// The tile instruction sets this CPU runs (as `FULCRUM_NO_VNNI` / `FULCRUM_NO_AVX512` allow), narrowest first; empty
/// off x86 or without AVX2.
pub fn tile_isas() -> Vec<TileIsa> {
    #[cfg(target_arch = "x86_64")]
    {
        x86::tile_isas()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The tiles' instruction set per family and batch-size class in use (`None`: scalar kernels).
pub fn tile_choice() -> Option<TileChoice> {
    dispatch::table().tiles
}
pub use tile::{dot_tile, dot_tile_raw};

/// Whether `ty` can be dequantized and used as weights in [`vec_dot`].
pub fn is_supported(ty: GgmlType) -> bool {
    dispatch::scalar_kernels(ty).is_some_and(|k| k.vec_dot.is_some())
}

/// Checks that tensors of type `ty` with rows of `n` elements can be used as weights.
pub fn check_weights(ty: GgmlType, n: usize) -> Result<(), QuantError> {
    if !is_supported(ty) {
        return Err(QuantError::Unsupported { ty });
    }
    try_row_bytes(ty, n)?;
    if ty == GgmlType::NF4 && n < formats::nf4::MIN_BLOCKS * formats::nf4::BLOCK {
        return Err(QuantError::Corrupt {
            ty,
            reason: format!(
                "rows of {n} elements are shorter than the {} that NF4 rows need",
                formats::nf4::MIN_BLOCKS * formats::nf4::BLOCK
            ),
        });
    }
    Ok(())
}

/// Checks a tensor of rows of `n` elements of type `ty` (its bytes in `data`) before it is used as weights: what
/// [`check_weights`] checks, and for NF4 every row's header.
pub fn check_tensor(ty: GgmlType, n: usize, data: &[u8]) -> Result<(), QuantError> {
    check_weights(ty, n)?;
    if ty == GgmlType::NF4 {
        let bytes = row_bytes(ty, n);
        for (r, row) in data.chunks_exact(bytes).enumerate() {
            formats::nf4::Row::new(row)
                .check()
                .map_err(|reason| QuantError::Corrupt {
                    ty,
                    reason: format!("row {r}: {reason}"),
                })?;
        }
    }
    Ok(())
}

/// Encodes the f32 row `src` as type `ty` into `dst` (exactly `row_bytes(ty, src.len())` bytes are written).
///
/// Supported for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q8_K with llama.cpp's reference rounding, and
/// for Q4_K, Q5_K and Q6_K with a simpler min/max fit than llama.cpp's, and for NF4 (one whole row) as bitsandbytes
/// encodes it.
///
/// # Panics
/// If `ty` has no quantizer, `src.len()` is not a whole number of blocks or `dst` is too short.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    quantize_with(dispatch::kernels(ty), ty, src, dst)
}

/// [`quantize_row`] with the kernels `k` of `ty`.
fn quantize_with(k: &table::Kernels, ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let bytes = row_bytes(ty, src.len());
    let quantize = k
        .quantize
        .unwrap_or_else(|| panic!("no quantizer for {ty}"));
    quantize(src, &mut dst[..bytes]);
}

/// Expands the first `dst.len()` elements of the row `src` of type `ty` into `dst` (for NF4, whose rows decode only
/// whole, `dst` must be the whole row).
///
/// # Panics
/// If `ty` is unsupported, `dst.len()` is not a whole number of blocks or `src` is too short.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let bytes = row_bytes(ty, dst.len());
    (dispatch::kernels(ty).dequantize)(&src[..bytes], dst);
}

/// Dot product of the first `n` elements of the weight row `w_row` (type `w`) with the activation row `act_row`
/// (type [`vec_dot_type`]`(w)`, as written by [`quantize_row`]). Uses SIMD kernels when the CPU has them.
///
/// # Panics
/// If `w` is unsupported, `n` is not a whole number of blocks or a row is too short.
pub fn vec_dot(w: GgmlType, n: usize, w_row: &[u8], act_row: &[u8]) -> f32 {
    let dot = dispatch::kernels(w)
        .vec_dot
        .unwrap_or_else(|| panic!("{w} cannot be used as weights"));
    dot(
        &w_row[..row_bytes(w, n)],
        &act_row[..row_bytes(vec_dot_type(w), n)],
    )
}

/// As [`vec_dot`], for activation row `t` of a batch of `batch` rows, rounded as llama.cpp's CPU backend rounds it
/// there. It multiplies repacked Q4_K weights four activation rows at a time (the first `batch - batch % 4` rows) and
/// Q6_K weights in tiles once a batch has 8 rows; those paths sum the same exact integers in another float order,
/// which this reproduces ([`Order`]). Elsewhere the result is exactly [`vec_dot`]'s.
///
/// # Panics
/// As [`vec_dot`].
pub fn vec_dot_in_batch(
    w: GgmlType,
    n: usize,
    w_row: &[u8],
    act_row: &[u8],
    batch: usize,
    t: usize,
) -> f32 {
    let dot = tile::ordered_dot(w, Order::in_batch(w, batch, t));
    dot(
        &w_row[..row_bytes(w, n)],
        &act_row[..row_bytes(vec_dot_type(w), n)],
    )
}

/// Which kernels [`vec_dot`] uses: `"scalar"`, or `"avx2+fma"` with `"+avx-vnni"` or `"+avx512-vnni"` where the tiles
/// use VNNI dot products (`FULCRUM_NO_VNNI=1` turns those off) or `"+avx512"` where they use 512-bit registers
/// (`FULCRUM_NO_AVX512=1` turns that off).
pub fn simd_level() -> &'static str {
    dispatch::table().level
}

/// The scalar reference kernels, whatever the CPU supports (for tests, benchmarks and bisecting).
pub mod scalar {
    use super::{row_bytes, vec_dot_type, GgmlType};
    use crate::dispatch::scalar_kernels;
    use crate::table::Kernels;

    fn kernels(ty: GgmlType) -> Kernels {
        scalar_kernels(ty).unwrap_or_else(|| {
            panic!("tensor type {ty} is not supported; check is_supported first")
        })
    }

    /// Scalar [`crate::vec_dot`].
    pub fn vec_dot(w: GgmlType, n: usize, w_row: &[u8], act_row: &[u8]) -> f32 {
        let dot = kernels(w)
            .vec_dot
            .unwrap_or_else(|| panic!("{w} cannot be used as weights"));
        dot(
            &w_row[..row_bytes(w, n)],
            &act_row[..row_bytes(vec_dot_type(w), n)],
        )
    }

    /// Scalar [`crate::quantize_row`].
    pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
        super::quantize_with(&kernels(ty), ty, src, dst)
    }

    /// Scalar [`crate::dequantize_row`].
    pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
        let bytes = row_bytes(ty, dst.len());
        (kernels(ty).dequantize)(&src[..bytes], dst);
    }
}
