//! The tokenizer: a vocabulary and its model (SentencePiece or byte-level BPE), encoding text as llama.cpp's
//! `llama_tokenize` does and decoding ids back to bytes.

use crate::bpe::Bpe;
use crate::pretokenize::PreTokenizer;
use crate::spec::{TokenizerError, VocabSpec};
use crate::special::{self, Fragment};
use crate::spm;
use crate::vocab::{Kind, Vocab};

/// The model-specific half of the tokenizer.
enum Model {
    Spm,
    Bpe(Box<Bpe>),
}

/// A tokenizer built from a GGUF vocabulary.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
}

impl Tokenizer {
    /// Builds the tokenizer; fails on an unknown model/pre-tokenizer or inconsistent arrays.
    pub fn new(spec: VocabSpec) -> Result<Tokenizer, TokenizerError> {
        match spec.model.as_str() {
            "llama" => {
                // llama.cpp ignores tokenizer.ggml.pre for SentencePiece vocabularies.
                let vocab = Vocab::new(spec, Kind::Spm, false)?;
                Ok(Tokenizer {
                    vocab,
                    model: Model::Spm,
                })
            }
            "gpt2" => {
                let pre_name = spec.pre.clone().unwrap_or_else(|| "default".to_string());
                let (pre, bos_by_default) =
                    PreTokenizer::from_name(&pre_name).ok_or_else(|| {
                        TokenizerError::UnknownPre {
                            pre: pre_name.clone(),
                            supported: PreTokenizer::supported_names().join(", "),
                        }
                    })?;
                let merges = spec.merges.clone().ok_or(TokenizerError::MissingMerges)?;
                let vocab = Vocab::new(spec, Kind::Bpe, bos_by_default)?;
                let bpe = Bpe::new(&vocab, &merges, pre);
                Ok(Tokenizer {
                    vocab,
                    model: Model::Bpe(Box::new(bpe)),
                })
            }
            other => Err(TokenizerError::UnknownModel {
                model: other.to_string(),
            }),
        }
    }

    /// Tokenizes `text` like `llama_tokenize(text, add_special, parse_special)`.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_parts(text, add_special, parse_special, &[])
    }

    /// Tokenizes `text` with special-token text parsed, except in the byte ranges `plain` (untrusted text inside
    /// it, such as chat messages' content), where control tokens' text stays text. Without such text in `plain`,
    /// the same tokens as `encode(text, add_special, true)`.
    pub fn encode_guarded(
        &self,
        text: &str,
        add_special: bool,
        plain: &[std::ops::Range<usize>],
    ) -> Vec<u32> {
        self.encode_parts(text, add_special, true, plain)
    }

    /// Whether `text` holds the text of a control token (one that `encode(text, _, true)` would parse).
    pub fn has_control_text(&self, text: &str) -> bool {
        special::partition(text, &self.vocab, true, &[])
            .iter()
            .any(|f| matches!(f, Fragment::Token(id) if self.vocab.attrs[*id as usize] & (crate::vocab::attr::CONTROL | crate::vocab::attr::UNKNOWN) != 0))
    }

    fn encode_parts(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        plain: &[std::ops::Range<usize>],
    ) -> Vec<u32> {
        let vocab = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let fragments = special::partition(text, vocab, parse_special, plain);
        if add_special && vocab.add_bos {
            out.extend(vocab.bos);
        }
        match &self.model {
            Model::Spm => {
                // llama.cpp prefixes a space to every text fragment that follows a special token
                // (or starts the text) when add_space_prefix is set, then escapes spaces as "▁".
                let mut prev_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => {
                            let prefix = if vocab.add_space_prefix && prev_special {
                                " "
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{t}").replace(' ', "\u{2581}");
                            spm::encode(&escaped, vocab, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => bpe.encode(t, vocab, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && vocab.add_eos {
            out.extend(vocab.eos);
        }
        out
    }

    /// The bytes token `id` decodes to; control/unknown tokens give their text only when `special`.
    ///
    /// Unknown ids and unused tokens decode to nothing, like llama.cpp's `token_to_piece`.
    pub fn token_bytes(&self, id: u32, special: bool) -> &[u8] {
        self.vocab.piece(id, special)
    }

    /// Decodes ids to text (the concatenated token bytes), replacing invalid UTF-8 with U+FFFD.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.texts.len()
    }

    /// The beginning-of-sequence token, if any.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    /// The end-of-sequence token, if any.
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// The end-of-turn token (from metadata, else found by its text), if any.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.eot
    }

    /// Whether generation should stop at `id` (eos, eot, eom and end tokens found by text).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation tokens, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// Whether `id` is a control token (decoded only when asked for special tokens).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.is_control(id)
    }

    /// The vocabulary string of token `id` (empty for an unknown id).
    pub fn token_text(&self, id: u32) -> &str {
        self.vocab.texts.get(id as usize).map_or("", String::as_str)
    }

    /// The id of the token whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.token_to_id.get(text).copied()
    }

    /// Whether `encode(.., add_special = true, ..)` prepends the BOS token.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends the EOS token.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }
}
