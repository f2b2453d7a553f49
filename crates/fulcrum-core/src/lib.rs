//! Fulcrum's core: model configuration from GGUF metadata, weights, the forward pass, and the thread pool.

pub mod attention;
pub mod config;
pub mod delta;
pub mod error;
pub mod kv;
pub mod model;
pub mod ops;
pub mod roofline;
pub mod session;
pub mod threads;
pub mod trace;
pub mod vocab;
pub mod weights;

pub use config::{Arch, Config, SUPPORTED_ARCHITECTURES};
pub use delta::{AttentionMode, DeltaConfig};
pub use error::ModelError;
pub use fulcrum_gguf as gguf;
pub use fulcrum_tokenizer as tokenizer;
pub use model::{Logits, Model, Rounding, SeqSpan};
pub use session::Session;
pub use threads::ThreadPool;
pub use weights::Weights;
