//! GGUF model files: a validating reader over a memory map, and a minimal writer.
//!
//! Layout per the GGUF spec (ggml `docs/gguf.md`): header (magic, version, counts), metadata key/values, tensor
//! infos, padding to `general.alignment`, tensor data. Every count, length, shape and offset is checked against
//! the file size when it is opened, so hostile or truncated files give an error instead of a panic or a huge
//! allocation, and [`GgufFile::tensor_data`] can slice without further checks.

mod error;
mod file;
mod getters;
mod metadata;
mod reader;
mod tensor;
mod types;
mod value;
pub mod writer;

pub use error::GgufError;
pub use file::{GgufFile, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};
pub use metadata::MAX_ARRAY_DEPTH;
pub use tensor::{tensor_size, TensorInfo, MAX_DIMS};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
