//! Incremental detokenization: a character may be spread over several byte tokens, so text is released
//! only once its UTF-8 is complete. The chunks concatenate to `Tokenizer::decode` of the same ids.

use crate::tokenizer::Tokenizer;

/// Turns a stream of token ids into complete UTF-8 text, holding back a trailing partial character.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder that drops control tokens (as `decode(.., special = false)`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that renders control tokens as their text (as `decode(.., special = true)`).
    pub fn with_special() -> Self {
        StreamDecoder {
            pending: Vec::new(),
            special: true,
        }
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending
            .extend_from_slice(tok.token_bytes(id, self.special));
        let mut text = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = consumed + e.valid_up_to();
                    // The prefix was just validated, so this conversion cannot fail.
                    text.push_str(
                        std::str::from_utf8(&self.pending[consumed..valid_end]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        // Bytes that can never become valid: replace them as from_utf8_lossy would.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            consumed = valid_end + bad;
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            consumed = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        text
    }

    /// Releases whatever is held back at the end of the stream (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
