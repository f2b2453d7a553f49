//! Structured outputs: a request's response format (any JSON object, a JSON schema, a regex, a Lark or GBNF grammar)
//! becomes a per-token mask over the model's vocabulary, so that sampling can only produce text the format accepts.
//!
//! The grammar engine is llguidance (the one llama.cpp and vLLM use): an Earley parser over lexemes, walking a trie of
//! every token's bytes to compute the mask. A [`ConstraintFactory`] is built once per vocabulary and shared; each
//! request compiles its [`ConstraintSpec`] into a [`Constraint`] and, at every position, masks the logits, commits the
//! sampled token, and rolls back tokens that speculative decoding rejected.
//!
//! Special tokens (control tokens and every end-of-generation token) enter the trie as `0xFF` followed by their text,
//! llguidance's convention: the grammar never allows them as text, and end tokens only where the output is complete.

mod gbnf;

use fulcrum_core::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

pub use gbnf::gbnf_to_lark;

/// The byte that marks a special token's bytes in [`ConstraintFactory::new`] (not valid UTF-8, so never text).
pub const SPECIAL_TOKEN_MARKER: u8 = TokTrie::SPECIAL_TOKEN_MARKER;

/// JSON whitespace allowed where the format allows any (llama.cpp's `space` rule, without tabs): unbounded whitespace lets a model
/// loop on newlines forever. A schema's own top-level `"x-guidance"` settings take precedence.
const JSON_WHITESPACE: &str = r"(?: |\n {0,20})";

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object.
    JsonObject,
    /// A value valid under this JSON schema (OpenAI `strict` style; properties in schema order).
    JsonSchema(serde_json::Value),
    /// Text the whole of which matches this regex (Rust `regex` syntax).
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
    /// A grammar in llama.cpp's GBNF syntax (converted to Lark).
    Gbnf(String),
}

impl ConstraintSpec {
    /// A grammar in whichever syntax it is written: GBNF defines rules with `::=`, Lark with `:`.
    pub fn grammar(text: String) -> ConstraintSpec {
        if text.contains("::=") {
            ConstraintSpec::Gbnf(text)
        } else {
            ConstraintSpec::Lark(text)
        }
    }

    /// The format's name as a user wrote it, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonObject => "JSON object format",
            ConstraintSpec::JsonSchema(_) => "JSON schema",
            ConstraintSpec::Regex(_) => "regex",
            ConstraintSpec::Lark(_) => "Lark grammar",
            ConstraintSpec::Gbnf(_) => "GBNF grammar",
        }
    }
}

/// Why a constraint could not be built or advanced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// The request's format does not compile (an HTTP 400).
    #[error("invalid {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
    /// The token is not allowed at this position; the constraint is unchanged.
    #[error("token {token} is not allowed by the response format at this position")]
    Rejected { token: u32 },
    /// More tokens were rolled back than were committed.
    #[error("cannot roll back {asked} tokens: only {committed} were committed")]
    Rollback { asked: usize, committed: usize },
    /// The vocabulary cannot be used (no end token, an id out of range).
    #[error("vocabulary unusable for constrained decoding: {0}")]
    Vocabulary(String),
    /// The grammar engine failed on a valid format (a resource limit, or a bug); the request should be failed.
    #[error("constrained decoding failed: {0}")]
    Engine(String),
}

/// One vocabulary compiled for llguidance: its token trie and lexer caches, shared by every request of a model.
pub struct ConstraintFactory {
    parser_factory: ParserFactory,
    eos: Arc<[u32]>,
}

impl ConstraintFactory {
    /// Builds from each token's bytes (special tokens as [`SPECIAL_TOKEN_MARKER`] then their text; empty for tokens
    /// never to be sampled) and the end-of-generation ids, which the mask allows once the output is complete.
    pub fn new(tokens: Vec<Vec<u8>>, eos: &[u32]) -> Result<ConstraintFactory, ConstraintError> {
        let vocab_size = u32::try_from(tokens.len())
            .map_err(|_| ConstraintError::Vocabulary("more than 2^32 tokens".into()))?;
        let Some(&first_eos) = eos.first() else {
            return Err(ConstraintError::Vocabulary(
                "no end-of-generation token: a constrained output could never finish".into(),
            ));
        };
        if let Some(&bad) = eos.iter().find(|&&id| id >= vocab_size) {
            return Err(ConstraintError::Vocabulary(format!(
                "end token {bad} is outside the {vocab_size}-token vocabulary"
            )));
        }
        let info = TokRxInfo::new(vocab_size, first_eos);
        let trie = TokTrie::from(&info, &tokens).with_eos_tokens(eos);
        // Greedy tokenization over the trie stands in for the model's tokenizer: llguidance needs a canonical one
        // only to force ("fast-forward") tokens, which this module does not use.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut parser_factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        parser_factory.quiet();
        Ok(ConstraintFactory {
            parser_factory,
            eos: eos.into(),
        })
    }

    /// Builds from a Fulcrum tokenizer: text tokens as their decoded bytes, control and end tokens marked special.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<ConstraintFactory, ConstraintError> {
        ConstraintFactory::new(token_words(tokenizer), tokenizer.eog_ids())
    }

    /// The number of tokens in the vocabulary (masks have this many bits).
    pub fn vocab_size(&self) -> usize {
        self.parser_factory.tok_env().tok_trie().vocab_size()
    }

    /// Compiles a request's format; an invalid schema, regex or grammar is [`ConstraintError::Invalid`].
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint, ConstraintError> {
        let invalid = |message: String| ConstraintError::Invalid {
            kind: spec.kind(),
            message,
        };
        let grammar = match spec {
            ConstraintSpec::JsonObject => TopLevelGrammar::from_json_schema(
                with_bounded_whitespace(serde_json::json!({ "type": "object" })),
            ),
            ConstraintSpec::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_bounded_whitespace(schema.clone()))
            }
            ConstraintSpec::Regex(regex) => TopLevelGrammar::from_regex(regex),
            ConstraintSpec::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            ConstraintSpec::Gbnf(gbnf) => {
                TopLevelGrammar::from_lark(gbnf_to_lark(gbnf).map_err(invalid)?)
            }
        };
        let parser = self
            .parser_factory
            .create_parser(grammar)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
            mask: None,
            committed: 0,
            eos_after_stop: 0,
            eos: self.eos.clone(),
        })
    }
}

/// Each token's bytes as [`ConstraintFactory::new`] takes them, from what the tokenizer makes public.
pub fn token_words(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tokenizer.vocab_size() as u32)
        .map(|id| {
            let text = tokenizer.token_bytes(id, false);
            // An end token with text (a user-defined `<|file_sep|>`) must not be sampled as text either.
            if !text.is_empty() && !tokenizer.is_control(id) && !tokenizer.is_eog(id) {
                return text.to_vec();
            }
            let special = tokenizer.token_bytes(id, true);
            if special.is_empty() {
                return Vec::new();
            }
            let mut word = Vec::with_capacity(special.len() + 1);
            word.push(SPECIAL_TOKEN_MARKER);
            word.extend_from_slice(special);
            word
        })
        .collect()
}

/// Adds the bounded-whitespace default to a schema that sets no `"x-guidance"` options of its own.
fn with_bounded_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
    }
    schema
}

/// One request's position in its format: the mask for the next token, advanced by each committed token.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// The mask at the current position, computed on first use and dropped when the position changes.
    mask: Option<SimpleVob>,
    /// Tokens committed and not rolled back.
    committed: usize,
    /// End tokens committed after the grammar stopped, which the matcher never sees.
    eos_after_stop: usize,
    eos: Arc<[u32]>,
}

impl Constraint {
    /// The allowed tokens at the next position: bit `id % 32` of word `id / 32`. Only end tokens once stopped.
    pub fn mask(&mut self) -> Result<&[u32], ConstraintError> {
        Ok(self.current_mask()?.as_slice())
    }

    /// Sets the logits of disallowed tokens (and of ids past the vocabulary) to negative infinity.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        self.ban(logits.len(), |id| logits[id] = f32::NEG_INFINITY)
    }

    /// Calls `ban` with every id below `n` the format does not allow next (ids past the vocabulary included).
    pub fn ban(&mut self, n: usize, mut ban: impl FnMut(usize)) -> Result<(), ConstraintError> {
        let words = self.current_mask()?.as_slice();
        for (w, &word) in words.iter().enumerate().take(n.div_ceil(32)) {
            if word == u32::MAX {
                continue;
            }
            (w * 32..(w * 32 + 32).min(n))
                .filter(|id| word >> (id % 32) & 1 == 0)
                .for_each(&mut ban);
        }
        (words.len() * 32..n).for_each(ban);
        Ok(())
    }

    /// Whether `token` may come next (false if the mask cannot be computed; [`Constraint::mask`] says why).
    pub fn allows(&mut self, token: u32) -> bool {
        self.current_mask()
            .is_ok_and(|mask| (token as usize) < mask.len() && mask.is_allowed(token))
    }

    /// Advances past `token`; a disallowed token is [`ConstraintError::Rejected`] and changes nothing.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if self.matcher.is_stopped() && !self.matcher.is_error() {
            if !self.eos.contains(&token) {
                return Err(ConstraintError::Rejected { token });
            }
            self.eos_after_stop += 1;
            self.committed += 1;
            return Ok(());
        }
        if !self.check(token)? {
            return Err(ConstraintError::Rejected { token });
        }
        self.mask = None;
        self.matcher.consume_token(token).map_err(engine)?;
        self.committed += 1;
        Ok(())
    }

    /// How many of `tokens`, in order from the current position, the format accepts; the position is unchanged.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> usize {
        if self.matcher.is_error() {
            return 0;
        }
        if self.matcher.is_stopped() {
            return tokens.iter().take_while(|t| self.eos.contains(t)).count();
        }
        self.matcher.validate_tokens(tokens).unwrap_or(0)
    }

    /// Undoes the last `n` committed tokens (drafted tokens that verification rejected).
    pub fn rollback(&mut self, n: usize) -> Result<(), ConstraintError> {
        if n > self.committed {
            return Err(ConstraintError::Rollback {
                asked: n,
                committed: self.committed,
            });
        }
        let phantom = n.min(self.eos_after_stop);
        self.matcher.rollback(n - phantom).map_err(engine)?;
        self.eos_after_stop -= phantom;
        self.committed -= n;
        self.mask = None;
        Ok(())
    }

    /// Whether the output so far is complete: an end token is allowed next.
    pub fn is_accepting(&mut self) -> bool {
        (self.matcher.is_stopped() && !self.matcher.is_error())
            || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether nothing but an end token may follow (the grammar is complete and cannot grow, or has failed).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Tokens committed and not rolled back.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// Whether `token` may come next, from the mask when it is computed, else by a cheaper parse of that token.
    fn check(&mut self, token: u32) -> Result<bool, ConstraintError> {
        if let Some(mask) = &self.mask {
            return Ok((token as usize) < mask.len() && mask.is_allowed(token));
        }
        if token as usize
            >= self
                .matcher
                .tok_env()
                .map_err(engine)?
                .tok_trie()
                .vocab_size()
        {
            return Ok(false);
        }
        self.matcher
            .validate_tokens(&[token])
            .map(|n| n == 1)
            .map_err(engine)
    }

    fn current_mask(&mut self) -> Result<&SimpleVob, ConstraintError> {
        let mask = match self.mask.take() {
            Some(mask) => mask,
            None => self.matcher.compute_mask_or_eos().map_err(engine)?,
        };
        Ok(self.mask.insert(mask))
    }
}

/// An llguidance failure on a format that compiled.
fn engine(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError::Engine(e.to_string())
}

#[cfg(test)]
mod tests;
