//! fulcrum-tokenizer: the tokenizers of GGUF models, exact with llama.cpp's `llama_tokenize`.
//!
//! Two vocabulary types are supported, chosen by `tokenizer.ggml.model`:
//! - `llama`: SentencePiece-style BPE over scores (Gemma, Llama 2, Mistral), see `spm.rs`.
//! - `gpt2`: byte-level BPE over merge ranks (Qwen2, Llama 3, GPT-2), see `bpe.rs` and `pretokenize.rs`.
//!
//! The input is a plain [`VocabSpec`] filled from GGUF metadata, so this crate does not read files.

mod bpe;
mod byte_level;
mod fxhash;
mod pretokenize;
mod spec;
mod special;
mod spm;
mod stream;
mod tokenizer;
mod unicode_classes;
mod vocab;

pub use spec::{TokenizerError, VocabSpec};
pub use stream::StreamDecoder;
pub use tokenizer::Tokenizer;
