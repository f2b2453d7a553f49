//! Builds the tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.

use crate::error::ModelError;
use fulcrum_gguf::GgufFile;
use fulcrum_tokenizer::{Tokenizer, VocabSpec};

/// Reads the vocabulary description from `file` and builds its tokenizer.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer, ModelError> {
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    let id = |k: &str| file.get_u32(&key(k));
    let flag = |k: &str| file.get_bool(&key(k));
    let model = file
        .get_str(&key("model"))?
        .ok_or_else(|| ModelError::MissingKey(key("model")))?
        .to_string();
    let tokens = file
        .get_str_array(&key("tokens"))?
        .ok_or_else(|| ModelError::MissingKey(key("tokens")))?
        .to_vec();
    let spec = VocabSpec {
        model,
        pre: file.get_str(&key("pre"))?.map(str::to_string),
        tokens,
        scores: file.get_f32_array(&key("scores"))?.map(<[f32]>::to_vec),
        token_types: file
            .get_i32_array(&key("token_type"))?
            .map(|t| t.into_owned()),
        merges: file.get_str_array(&key("merges"))?.map(<[String]>::to_vec),
        bos: id("bos_token_id")?,
        eos: id("eos_token_id")?,
        eot: id("eot_token_id")?,
        eom: id("eom_token_id")?,
        unk: id("unknown_token_id")?,
        pad: id("padding_token_id")?,
        add_bos: flag("add_bos_token")?,
        add_eos: flag("add_eos_token")?,
        add_space_prefix: flag("add_space_prefix")?,
    };
    Ok(Tokenizer::new(spec)?)
}
