//! Why a speculation setting cannot be used with these models.

use fulcrum_core::ModelError;
use thiserror::Error;

/// A speculative-decoding setting cannot be used with these models.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The draft model's tokenizer or output size differs from the target's.
    #[error(
        "the draft model cannot draft for this target: {0}. A draft model must share the target's vocabulary \
         (for example qwen2.5-coder-0.5b-instruct for qwen2.5-coder-1.5b-instruct)"
    )]
    VocabularyMismatch(String),
    /// An exit layer outside the model.
    #[error("exit layer {exit} is out of range: the model has {n_layers} layers, so an exit must be from 1 to {}", n_layers - 1)]
    ExitOutOfRange { exit: usize, n_layers: usize },
    /// `draft:` without a loaded draft model.
    #[error("--spec {0} needs its draft model loaded")]
    MissingDraftModel(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}
