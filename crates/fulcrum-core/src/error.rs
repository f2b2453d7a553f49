//! Errors of model loading and running.

use fulcrum_gguf::{GgmlType, GgufError};
use fulcrum_tokenizer::TokenizerError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is not a valid GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer described by the file cannot be built.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// The architecture named in `general.architecture` is not implemented.
    #[error("unsupported architecture '{found}'; Fulcrum supports: {}", supported.join(", "))]
    UnsupportedArchitecture {
        found: String,
        supported: Vec<&'static str>,
    },
    /// A metadata key the architecture needs is absent.
    #[error(
        "metadata key '{0}' is missing; the file is incomplete or was converted for another engine"
    )]
    MissingKey(String),
    /// A metadata value is outside what the architecture allows.
    #[error("metadata '{key}' has an invalid value: {reason}")]
    BadMetadata { key: String, reason: String },
    /// A tensor the architecture needs is absent.
    #[error("tensor '{0}' is missing from the model file")]
    MissingTensor(String),
    /// A tensor has a shape other than the configuration implies.
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    /// A tensor is stored in a type the kernels do not implement.
    #[error("tensor '{name}' has type {ty}, which Fulcrum cannot compute with yet")]
    UnsupportedType { name: String, ty: GgmlType },
    /// A tensor's shape or bytes are invalid for its type.
    #[error("tensor '{name}': {source}")]
    BadWeights {
        name: String,
        source: fulcrum_quant::QuantError,
    },
    /// The prompt and generation do not fit the context window.
    #[error("{needed} tokens do not fit the context of {ctx} tokens; shorten the prompt or raise --ctx (the model allows up to {max})")]
    ContextOverflow {
        needed: usize,
        ctx: usize,
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadToken { id: u32, vocab: usize },
    /// A forward pass was asked to run no tokens.
    #[error("nothing to evaluate: the input has no tokens")]
    EmptyBatch,
    /// The sequences of a batch do not describe its tokens.
    #[error("malformed batch: {0}")]
    BadBatch(String),
    /// A forward pass was given more tokens than its buffers hold.
    #[error("a batch of {n} tokens exceeds the {max} the session was sized for")]
    BatchTooLarge { n: usize, max: usize },
}
