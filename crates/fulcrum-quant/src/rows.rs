//! What a row of each type is: its size in bytes, and the type of the activation rows its weights are dotted against.

use crate::error::QuantError;
use fulcrum_gguf::GgmlType;

/// The activation format that weights of type `w` are dotted against (ggml's `vec_dot_type`).
pub fn vec_dot_type(w: GgmlType) -> GgmlType {
    use GgmlType::*;
    match w {
        Q4_0 | Q5_0 | Q8_0 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => Q8_K,
        NF4 => crate::nf4::selected().activation_type(),
        other => other,
    }
}

/// Bytes of a row of `n` elements of type `ty`, or an error if `n` is not a whole number of blocks.
pub fn try_row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::PartialBlock { ty, n, block });
    }
    Ok(n / block * ty.type_size())
}

/// Bytes of a row of `n` elements of type `ty`.
///
/// # Panics
/// If `n` is not a multiple of the block size: a programming error, since tensor shapes are checked at load time
/// (use [`try_row_bytes`] to check them).
pub fn row_bytes(ty: GgmlType, n: usize) -> usize {
    try_row_bytes(ty, n).unwrap_or_else(|e| panic!("{e}"))
}
