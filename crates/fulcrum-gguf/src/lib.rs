//! GGUF model files: a validating reader over a memory map.

mod types;

pub use types::GgmlType;
