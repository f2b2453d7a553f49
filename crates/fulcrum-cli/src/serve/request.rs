//! Parsing of OpenAI-style request bodies into what the engine needs, with OpenAI-shaped errors. Unknown fields are
//! ignored; known fields with wrong types or values are a 400 that names the field.

use fulcrum_core::AttentionMode;
use fulcrum_engine::chat::Message;
use fulcrum_engine::sampler::SamplerConfig;
use fulcrum_engine::spec::Speculation;
use serde_json::Value;

/// A 400 error: the message and the offending parameter.
#[derive(Debug)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<String>,
}

/// Longest stop string, in bytes (each is searched for in the text after every token).
const MAX_STOP_BYTES: usize = 1024;
/// Most tokens one request may bias.
const MAX_LOGIT_BIAS: usize = 1024;

fn bad(param: &str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// What the prompt is.
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

/// A parsed completion or chat completion request.
pub struct Request {
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Alternatives per token, if log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// Speculation asked for (`"spec"`, any `--spec` value); `None`: the server's default.
    pub spec: Option<Speculation>,
    /// Attention asked for (`"attention"`: `"dense"` or `"delta"`); `None`: the server's default.
    pub attention: Option<AttentionMode>,
}

fn number(body: &Value, key: &str) -> Result<Option<f64>, BadRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(key, format!("'{key}' must be a number"))),
    }
}

fn count(body: &Value, key: &str, max: u64) -> Result<Option<usize>, BadRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n as usize)),
            _ => Err(bad(
                key,
                format!("'{key}' must be an integer from 0 to {max}"),
            )),
        },
    }
}

fn flag(body: &Value, key: &str) -> Result<bool, BadRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(key, format!("'{key}' must be a boolean"))),
    }
}

/// Parses a request body; `chat` selects `/v1/chat/completions` rather than `/v1/completions`.
pub fn parse(body: &[u8], chat: bool) -> Result<Request, BadRequest> {
    let body: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
    })?;
    if !body.is_object() {
        return Err(BadRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
        });
    }
    let prompt = if chat {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("messages", "'messages' must be an array of messages"))?;
        if messages.is_empty() {
            return Err(bad("messages", "'messages' must not be empty"));
        }
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("messages", format!("message {i} has no 'role'")))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                None | Some(Value::Null) => String::new(),
                Some(_) => {
                    return Err(bad(
                        "messages",
                        format!("message {i}: 'content' must be a string"),
                    ))
                }
            };
            out.push(Message::new(role, content));
        }
        Prompt::Chat(out)
    } else {
        match body.get("prompt") {
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(_)) => {
                return Err(bad("prompt", "only one prompt per request is supported"))
            }
            _ => return Err(bad("prompt", "'prompt' must be a string")),
        }
    };
    if let Some(n) = count(&body, "n", u32::MAX as u64)? {
        if n != 1 {
            return Err(bad("n", "only n = 1 is supported"));
        }
    }
    let max_tokens = match count(&body, "max_completion_tokens", u32::MAX as u64)? {
        Some(n) => Some(n),
        None => count(&body, "max_tokens", u32::MAX as u64)?,
    };
    let temperature = number(&body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("temperature", "'temperature' must be between 0 and 2"));
    }
    let top_p = number(&body, "top_p")?.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(bad("top_p", "'top_p' must be in (0, 1]"));
    }
    let min_p = number(&body, "min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(bad("min_p", "'min_p' must be between 0 and 1"));
    }
    let top_k = count(&body, "top_k", u32::MAX as u64)?.unwrap_or(0);
    let seed = match body.get("seed") {
        None | Some(Value::Null) => rand_seed(),
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .or_else(|| v.as_u64())
            .ok_or_else(|| bad("seed", "'seed' must be an integer"))?,
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect(),
        Some(_) => return Err(bad("stop", "'stop' must be a string or up to 4 strings")),
    };
    if stop.iter().any(String::is_empty) {
        return Err(bad("stop", "stop strings must not be empty"));
    }
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(bad(
            "stop",
            format!("stop strings must be at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    let stream = flag(&body, "stream")?;
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let logprobs = if chat {
        if flag(&body, "logprobs")? {
            Some(count(&body, "top_logprobs", 20)?.unwrap_or(0))
        } else {
            None
        }
    } else {
        count(&body, "logprobs", 5)?
    };
    let logit_bias = match body.get("logit_bias") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) if map.len() > MAX_LOGIT_BIAS => {
            return Err(bad(
                "logit_bias",
                format!("'logit_bias' may bias at most {MAX_LOGIT_BIAS} tokens"),
            ))
        }
        Some(Value::Object(map)) => {
            let message = "'logit_bias' maps token ids to numbers from -100 to 100";
            let mut biases = Vec::with_capacity(map.len());
            for (token, bias) in map {
                let id = token
                    .parse::<u32>()
                    .map_err(|_| bad("logit_bias", message))?;
                match bias.as_f64() {
                    Some(b) if (-100.0..=100.0).contains(&b) => biases.push((id, b as f32)),
                    _ => return Err(bad("logit_bias", message)),
                }
            }
            biases
        }
        Some(_) => {
            return Err(bad(
                "logit_bias",
                "'logit_bias' must be an object mapping token ids to numbers",
            ))
        }
    };
    let spec = match body.get("spec") {
        None | Some(Value::Null) => None,
        Some(Value::String(spec)) => Some(spec.parse::<Speculation>().map_err(|e| bad("spec", e))?),
        Some(_) => {
            return Err(bad(
                "spec",
                "'spec' must be a string such as \"lookup\", \"early-exit:8,3\", \"draft\", \"del\", \"auto\" or \"off\"",
            ))
        }
    };
    let attention = match body.get("attention") {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) => Some(
            mode.parse::<AttentionMode>()
                .map_err(|e| bad("attention", e))?,
        ),
        Some(_) => {
            return Err(bad(
                "attention",
                "'attention' must be the string \"dense\" or \"delta\"",
            ))
        }
    };
    Ok(Request {
        prompt,
        max_tokens,
        sampler: SamplerConfig {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            min_p: min_p as f32,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed,
            logit_bias,
        },
        stop,
        stream,
        include_usage,
        logprobs,
        spec,
        attention,
    })
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The stable-toolchain fuzzer (shared with the other crates' fuzz targets).
#[cfg(test)]
#[path = "../../../fulcrum-gguf/tests/fuzzing/driver.rs"]
mod fuzzing;

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable-toolchain fuzzer over the request parser: any body is a request or a 400, never a panic.
    #[test]
    fn fuzz_request_parser() {
        let fuzz = fuzzing::Fuzz {
            name: "request-parser",
            seeds: vec![
                br#"{"model":"m","prompt":"hi","max_tokens":5,"temperature":0.7,"top_p":0.9,"stop":["a"],"seed":3,"logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"#.to_vec(),
                br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"logit_bias":{"1":-100},"logprobs":true,"top_logprobs":3,"spec":"lookup:4","attention":"delta","n":1}"#.to_vec(),
            ],
            dictionary: fuzzing::words(&[
                "\"max_tokens\":", "\"temperature\":", "\"top_k\":", "\"min_p\":", "\"stop\":",
                "\"logit_bias\":", "\"messages\":", "\"content\":", "\"role\":", "\"spec\":",
                "\"attention\":", "\"seed\":", "\"n\":", "\"top_logprobs\":", "\"prompt\":", "null", "true",
                "-1", "1e400", "18446744073709551616", "-0.0", "[", "]", "{", "}", ",", "\"\\ud800\"", "\"\"",
                "\"draft:x,9\"", "\"early-exit:99,3\"", "\"dense\"",
            ]),
            crate_dir: env!("CARGO_MANIFEST_DIR"),
            max_len: 4096,
        };
        fuzz.run(|bytes| {
            for chat in [false, true] {
                if let Err(e) = parse(bytes, chat) {
                    assert!(!e.message.is_empty());
                }
            }
        });
    }

    #[test]
    fn unknown_fields_are_ignored_and_known_ones_checked() {
        let r = parse(
            br#"{"model":"x","prompt":"hi","max_tokens":5,"frobnicate":true,"stop":["a","b"],"seed":3}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, ["a", "b"]);
        assert_eq!(r.sampler.seed, 3);
        for (body, param) in [
            (&br#"{"prompt":"hi","n":2}"#[..], "n"),
            (br#"{"prompt":"hi","temperature":"hot"}"#, "temperature"),
            (br#"{"prompt":"hi","stop":["a","b","c","d","e"]}"#, "stop"),
            (br#"{"prompt":"hi","max_tokens":-1}"#, "max_tokens"),
            (br#"{"prompt":3}"#, "prompt"),
            (br#"{"prompt":"hi","logit_bias":{"x":1}}"#, "logit_bias"),
            (br#"{"prompt":"hi","logit_bias":{"7":-101}}"#, "logit_bias"),
            (br#"{"prompt":"hi","logit_bias":[1]}"#, "logit_bias"),
            (
                format!(r#"{{"prompt":"hi","stop":["{}"]}}"#, "x".repeat(1025)).as_bytes(),
                "stop",
            ),
            (
                format!(
                    r#"{{"prompt":"hi","logit_bias":{{{}}}}}"#,
                    (0..1025)
                        .map(|i| format!(r#""{i}":1"#))
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .as_bytes(),
                "logit_bias",
            ),
            (br#"{"prompt":"hi","attention":"sparse"}"#, "attention"),
            (br#"{"prompt":"hi","attention":true}"#, "attention"),
        ] {
            let e = parse(body, false).err().expect("rejected");
            assert_eq!(e.param.as_deref(), Some(param));
        }
        assert!(parse(b"{not json", false).err().unwrap().param.is_none());
        assert!(parse(br#"{"messages":[]}"#, true).is_err());
        let chat = parse(
            br#"{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":2}"#,
            true,
        )
        .unwrap();
        assert_eq!(chat.logprobs, Some(2));
        let biased = parse(br#"{"prompt":"hi","logit_bias":{"151645":-100}}"#, false).unwrap();
        assert_eq!(biased.sampler.logit_bias, [(151645, -100.0)]);
        let delta = parse(br#"{"prompt":"hi","attention":"delta"}"#, false).unwrap();
        assert_eq!(delta.attention, Some(AttentionMode::Delta));
        assert_eq!(parse(br#"{"prompt":"hi"}"#, false).unwrap().attention, None);
    }
}
