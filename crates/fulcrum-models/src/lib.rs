//! fulcrum-models: model files and where they come from — the registry of default models, pulling them into the
//! cache, resolving a name or path to a GGUF file, re-quantizing a GGUF file into another, and choosing the weights a
//! draft model is loaded with.
//!
//! Its rule: it deals in files, never in loaded models. It reads GGUF headers (`fulcrum-gguf`) and block formats
//! (`fulcrum-quant`) but never depends on `fulcrum-core` or `fulcrum-engine`, so anything, those crates' own tests
//! included, can use it to fetch a model.
//! Nor does it print, except `pull`'s progress when its caller asks for it: the rest reports through return values
//! and progress callbacks, and the caller decides what the user sees.

pub mod draft;
mod error;
pub mod pull;
pub mod registry;
pub mod requantize;
pub mod resolve;
#[cfg(test)]
mod testing;

pub use error::ModelError;
pub use pull::pull;
pub use registry::{cached_path, find_known, known_models, models_dir, KnownModel};
pub use resolve::resolve;
