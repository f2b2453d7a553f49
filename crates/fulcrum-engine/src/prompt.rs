//! A model's prompt text and tokens: its chat template (or the plain fallback) with its own BOS and EOS texts, a user
//! message rendered through it, and tokenization the way llama.cpp tokenizes a prompt.

use crate::chat::{ChatError, ChatTemplate, Message};
use fulcrum_core::Model;

/// The model's chat template (or the plain fallback), with its BOS and EOS texts.
pub fn chat_template(model: &Model) -> Result<ChatTemplate, ChatError> {
    let tok = &model.tokenizer;
    let special = |id: Option<u32>| {
        id.map(|i| tok.token_text(i).to_string())
            .unwrap_or_default()
    };
    ChatTemplate::new(
        model.chat_template(),
        &special(tok.bos()),
        &special(tok.eos()),
    )
}

/// The prompt text to tokenize: the chat template applied to a user message (after `system`, if given) unless `raw`
/// or the model has no template.
pub fn user_prompt(
    model: &Model,
    prompt: &str,
    system: Option<&str>,
    raw: bool,
) -> Result<String, ChatError> {
    if raw || model.chat_template().is_none() {
        return Ok(prompt.to_string());
    }
    let template = chat_template(model)?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", prompt));
    template.render(&messages, true)
}

/// Tokenizes text the way llama.cpp does for a prompt: BOS per the model's flag (unless the text already starts
/// with it), special-token text parsed into special tokens.
pub fn tokenize(model: &Model, text: &str) -> Vec<u32> {
    let tok = &model.tokenizer;
    let mut ids = tok.encode(text, true, true);
    if tok.add_bos() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == tok.bos() {
        ids.remove(0);
    }
    ids
}
