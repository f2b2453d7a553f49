//! A model's prompt text and tokens: its chat template (or the plain fallback) with its own BOS and EOS texts, a user
//! message rendered through it, and tokenization the way llama.cpp tokenizes a prompt.

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::tools::Tool;
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
    tokenize_guarded(model, text, &[])
}

/// Why a conversation cannot be tokenized safely.
#[derive(Debug, thiserror::Error)]
#[error("message {index}'s content holds the text of a control token ({token:?}), which this model's chat template changes so that it cannot be kept as plain text; remove it")]
pub struct UnsafeContent {
    /// The message.
    pub index: usize,
    /// The control token's text.
    pub token: String,
}

/// Renders a conversation and tokenizes it with the messages' content as plain text: only the template's own markup
/// becomes control tokens, so that a message cannot forge turns (`<|im_end|>` typed by a user stays text).
pub fn tokenize_chat(
    model: &Model,
    template: &ChatTemplate,
    messages: &[Message],
    tools: &[Tool],
    add_generation_prompt: bool,
) -> Result<Result<Vec<u32>, UnsafeContent>, ChatError> {
    let tok = &model.tokenizer;
    let Some(index) = messages
        .iter()
        .position(|m| tok.has_control_text(&m.content))
    else {
        // Nothing to protect: the template's text as it is (the same tokens as guarding every content).
        return Ok(Ok(tokenize(
            model,
            &template.render_tools(messages, tools, add_generation_prompt)?,
        )));
    };
    let (text, spans) = template.render_spans(messages, tools, add_generation_prompt)?;
    Ok(match spans {
        Some(spans) => Ok(tokenize_guarded(model, &text, &spans)),
        None => Err(UnsafeContent {
            index,
            token: first_control_text(model, &messages[index].content),
        }),
    })
}

/// The first control token's text in `text`.
fn first_control_text(model: &Model, text: &str) -> String {
    let tok = &model.tokenizer;
    tok.encode(text, false, true)
        .into_iter()
        .find(|&id| tok.has_control_text(tok.token_text(id)))
        .map(|id| tok.token_text(id).to_string())
        .unwrap_or_default()
}

/// [`tokenize`], with the byte ranges `plain` of `text` tokenized as plain text (control tokens' text stays text).
pub fn tokenize_guarded(model: &Model, text: &str, plain: &[std::ops::Range<usize>]) -> Vec<u32> {
    let tok = &model.tokenizer;
    let mut ids = tok.encode_guarded(text, true, plain);
    if tok.add_bos() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == tok.bos() {
        ids.remove(0);
    }
    ids
}

/// The fill-in-the-middle tokens (prefix, suffix, middle) of the families that have them, by their text.
const FIM_TOKENS: [[&str; 3]; 4] = [
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    ["<fim-prefix>", "<fim-suffix>", "<fim-middle>"],
    ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
];

/// A fill-in-the-middle prompt (what editors' code completion sends): prefix, suffix and middle tokens around the
/// code before and after the cursor, as plain text; `None` when the model has no such tokens.
pub fn fill_in_the_middle(model: &Model, prefix: &str, suffix: &str) -> Option<Vec<u32>> {
    let tok = &model.tokenizer;
    let [pre, suf, mid] = FIM_TOKENS.iter().find_map(|texts| {
        let ids = texts.map(|t| tok.token_id(t));
        Some([ids[0]?, ids[1]?, ids[2]?])
    })?;
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.push(pre);
    ids.extend(tok.encode(prefix, false, false));
    ids.push(suf);
    ids.extend(tok.encode(suffix, false, false));
    ids.push(mid);
    Some(ids)
}
