//! The input of the crate: a GGUF file's tokenizer metadata as plain values, and why it may not make a tokenizer.

/// The tokenizer metadata of a GGUF file (`tokenizer.ggml.*`), as plain values.
#[derive(Debug, Clone, Default)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece with scores) or "gpt2" (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a BPE vocabulary ("qwen2", "llama-bpe", ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the text of every token, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: merge priority of each token (SentencePiece).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges as "left right", best first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
}

/// Why a vocabulary could not be turned into a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error(
        "unsupported tokenizer model '{model}' (tokenizer.ggml.model); supported: 'llama' (SentencePiece) \
         and 'gpt2' (byte-level BPE)"
    )]
    UnknownModel {
        /// The model name found.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this crate does not implement.
    #[error("unsupported BPE pre-tokenizer '{pre}' (tokenizer.ggml.pre); supported: {supported}")]
    UnknownPre {
        /// The pre-tokenizer name found.
        pre: String,
        /// The names that are supported, comma-separated.
        supported: String,
    },
    /// The vocabulary has no tokens.
    #[error("the vocabulary is empty (tokenizer.ggml.tokens has no entries)")]
    EmptyVocab,
    /// A per-token array is shorter than the token list.
    #[error("{field} has {len} entries but the vocabulary has {expected} tokens; the GGUF file is inconsistent")]
    ShortArray {
        /// The metadata key.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        expected: usize,
    },
    /// A BPE vocabulary came without merges.
    #[error("a 'gpt2' (BPE) vocabulary needs tokenizer.ggml.merges, which is missing")]
    MissingMerges,
    /// The vocabulary asks for a BOS/EOS token it does not define.
    #[error("tokenizer.ggml.{flag} is true but the vocabulary has no {what} token id")]
    MissingSpecial {
        /// The add_* flag.
        flag: &'static str,
        /// Which token is missing.
        what: &'static str,
    },
}
