//! Why a tensor type or row cannot be used.

use fulcrum_gguf::GgmlType;

/// Why a type or row length cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no kernels here.
    #[error("tensor type {ty} is not supported by this build (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, NF4); re-quantize the model to one of those")]
    Unsupported { ty: GgmlType },
    /// The row length is not a whole number of blocks.
    #[error("a row of {n} elements cannot be stored as {ty}, whose blocks hold {block} elements; the file is corrupt or the tensor shape is wrong")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    /// The tensor's bytes cannot be valid for its type.
    #[error("{ty} tensor: {reason}; the file is corrupt or was not written by `fulcrum quantize`")]
    Corrupt { ty: GgmlType, reason: String },
}
