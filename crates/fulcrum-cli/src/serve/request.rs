//! Parsing of OpenAI-style request bodies into what the engine needs, with OpenAI-shaped errors. A field that is
//! unknown, not supported, of the wrong type or out of range is a 400 that names it: nothing is silently ignored.

use fulcrum_core::AttentionMode;
use fulcrum_engine::chat::{Message, ToolCall};
use fulcrum_engine::constraint::ConstraintSpec;
use fulcrum_engine::embeddings::Pooling;
use fulcrum_engine::sampler::SamplerConfig;
use fulcrum_engine::spec::Speculation;
use fulcrum_engine::tools::{Tool, ToolChoice};
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

/// One prompt of `/v1/completions`: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// What the prompt is.
pub enum Prompt {
    /// `/v1/completions`: one or more prompts (each gets `n` choices).
    Completion(Vec<PromptInput>),
    Chat(Vec<Message>),
}

/// A parsed completion or chat completion request.
pub struct Request {
    /// The model asked for, if named.
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Fill-in-the-middle: the text after the insertion point (`/v1/completions`' `suffix`).
    pub suffix: Option<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Choices generated per prompt, of which the `n` with the best mean log-probability per token are returned.
    pub best_of: usize,
    /// Whether a completion's text starts with its prompt.
    pub echo: bool,
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
    /// What the output must be, with the field that said so (`response_format`, or the extensions `json_schema`,
    /// `grammar`, `regex`).
    pub constraint: Option<(&'static str, ConstraintSpec)>,
    /// Functions the model may call (chat only).
    pub tools: Vec<Tool>,
    /// Whether and how it must call them.
    pub tool_choice: ToolChoice,
    /// Whether several calls may come in one reply.
    pub parallel_tool_calls: bool,
    /// Whether generation goes on past end-of-generation tokens (`ignore_eos`).
    pub ignore_eos: bool,
    /// Whether the stop string that ended the output stays in it (`no_stop_trim`).
    pub no_stop_trim: bool,
    /// Whether control tokens are left out of the text (`skip_special_tokens`, default true).
    pub skip_special_tokens: bool,
    /// Whether a reasoning model's thinking goes to `reasoning_content` (`separate_reasoning`, default true).
    pub separate_reasoning: bool,
}

/// Fields of both endpoints, OpenAI's and the extensions of llama.cpp, vLLM and Fulcrum.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "seed",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
    "repeat_penalty",
    "repeat_last_n",
    "spec",
    "attention",
    "response_format",
    "json_schema",
    "grammar",
    "regex",
    // SGLang's, which its router sends with every request.
    "ignore_eos",
    "no_stop_trim",
    "skip_special_tokens",
    "return_hidden_states",
];
/// Fields only of `/v1/completions`.
const COMPLETION_FIELDS: &[&str] = &["prompt", "suffix", "echo", "best_of"];
/// Fields only of `/v1/chat/completions`.
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "metadata",
    "store",
    "parallel_tool_calls",
    "tools",
    "tool_choice",
    "modalities",
    "continue_final_message",
    "separate_reasoning",
    "stream_reasoning",
];
/// OpenAI fields this server knows but cannot honour yet: a 400 that says so, rather than a silent default.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("functions", "function calling (deprecated: use 'tools')"),
    (
        "function_call",
        "function calling (deprecated: use 'tool_choice')",
    ),
    ("audio", "audio output"),
    ("prediction", "predicted outputs"),
    ("web_search_options", "web search"),
    ("reasoning_effort", "a reasoning effort"),
    ("service_tier", "service tiers"),
];
/// Roles a chat message may have (`developer` is OpenAI's newer name for `system`).
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
/// Most choices per prompt (`n`, `best_of`).
const MAX_CHOICES: u64 = 16;
/// Most prompts in one request.
const MAX_PROMPTS: usize = 64;

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
    check_fields(&body, chat)?;
    let prompt = if chat {
        Prompt::Chat(messages(&body)?)
    } else {
        Prompt::Completion(prompts(&body)?)
    };
    let n = count(&body, "n", MAX_CHOICES)?.unwrap_or(1);
    if n == 0 {
        return Err(bad(
            "n",
            format!("'n' must be an integer from 1 to {MAX_CHOICES}"),
        ));
    }
    let best_of = count(&body, "best_of", MAX_CHOICES)?.unwrap_or(n);
    if best_of < n {
        return Err(bad("best_of", "'best_of' must be at least 'n'"));
    }
    let echo = flag(&body, "echo")?;
    let suffix = match body.get("suffix") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("suffix", "'suffix' must be a string")),
    };
    if suffix.is_some() && echo {
        return Err(bad("echo", "'echo' cannot be combined with 'suffix'"));
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
    if stream && best_of > n {
        return Err(bad(
            "best_of",
            "'best_of' greater than 'n' cannot be streamed",
        ));
    }
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) if stream => flag(&Value::Object(o.clone()), "include_usage")
            .map_err(|_| {
                bad(
                    "stream_options",
                    "'stream_options.include_usage' must be a boolean",
                )
            })?,
        Some(Value::Object(_)) => {
            return Err(bad(
                "stream_options",
                "'stream_options' needs 'stream': true",
            ))
        }
        Some(_) => return Err(bad("stream_options", "'stream_options' must be an object")),
    };
    let penalty = |key: &str| -> Result<f32, BadRequest> {
        let v = number(&body, key)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(bad(key, format!("'{key}' must be between -2 and 2")));
        }
        Ok(v as f32)
    };
    let presence_penalty = penalty("presence_penalty")?;
    let frequency_penalty = penalty("frequency_penalty")?;
    // vLLM's name and llama.cpp's for the multiplicative repetition penalty.
    let repeat_key = if body.get("repetition_penalty").is_some_and(|v| !v.is_null()) {
        "repetition_penalty"
    } else {
        "repeat_penalty"
    };
    let repeat_penalty = number(&body, repeat_key)?.unwrap_or(1.0);
    if !(repeat_penalty > 0.0 && repeat_penalty <= 10.0) {
        return Err(bad(
            repeat_key,
            format!("'{repeat_key}' must be in (0, 10] (1 = off)"),
        ));
    }
    let repeat_last_n = count(&body, "repeat_last_n", u32::MAX as u64)?.unwrap_or(64);
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
    let constraint = constraint(&body)?;
    let (tools, tool_choice, parallel_tool_calls) = if chat {
        tools(&body)?
    } else {
        (Vec::new(), ToolChoice::None, true)
    };
    if constraint.is_some() && matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_))
    {
        return Err(bad(
            "tool_choice",
            "a forced tool call cannot be combined with a response format: the call's arguments follow the function's schema",
        ));
    }
    let on_by_default = |key: &str| -> Result<bool, BadRequest> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(true),
            _ => flag(&body, key),
        }
    };
    let skip_special_tokens = on_by_default("skip_special_tokens")?;
    let separate_reasoning = on_by_default("separate_reasoning")?;
    // What this server cannot do is refused when asked for, and accepted at the default the SGLang router sends.
    for (key, default, what) in [
        (
            "continue_final_message",
            false,
            "continuing the final assistant message",
        ),
        (
            "stream_reasoning",
            true,
            "holding back reasoning until the end",
        ),
        ("return_hidden_states", false, "returning hidden states"),
    ] {
        if body.get(key).is_some_and(|v| !v.is_null()) && flag(&body, key)? != default {
            return Err(bad(
                key,
                format!("'{key}' ({what}) is not supported by this server"),
            ));
        }
    }
    Ok(Request {
        ignore_eos: flag(&body, "ignore_eos")?,
        no_stop_trim: flag(&body, "no_stop_trim")?,
        skip_special_tokens,
        separate_reasoning,
        tools,
        tool_choice,
        parallel_tool_calls,
        model: body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
        prompt,
        max_tokens,
        sampler: SamplerConfig {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            min_p: min_p as f32,
            repeat_penalty: repeat_penalty as f32,
            repeat_last_n,
            presence_penalty,
            frequency_penalty,
            seed,
            logit_bias,
        },
        suffix,
        n,
        best_of,
        echo,
        stop,
        stream,
        include_usage,
        logprobs,
        spec,
        attention,
        constraint,
    })
}

/// The output format: OpenAI's `response_format`, or one of the extensions `json_schema` (llama.cpp's), `grammar`
/// (GBNF, as llama.cpp takes it, or llguidance's Lark) and `regex`; at most one of them.
fn constraint(body: &Value) -> Result<Option<(&'static str, ConstraintSpec)>, BadRequest> {
    let given: Vec<&'static str> = ["response_format", "json_schema", "grammar", "regex"]
        .into_iter()
        .filter(|k| body.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    if given.len() > 1 {
        return Err(bad(
            given[1],
            format!("give one of {}, not several", given.join(", ")),
        ));
    }
    let Some(&key) = given.first() else {
        return Ok(None);
    };
    let spec = constraint_spec(body, key)?;
    Ok(spec.map(|spec| (key, spec)))
}

/// The format given by field `key` (`None`: plain text).
fn constraint_spec(body: &Value, key: &'static str) -> Result<Option<ConstraintSpec>, BadRequest> {
    let value = &body[key];
    let string = |what: &str| {
        value
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| bad(key, format!("'{key}' must be a non-empty string ({what})")))
    };
    Ok(Some(match key {
        "json_schema" if value.is_object() => ConstraintSpec::JsonSchema(value.clone()),
        "json_schema" => return Err(bad(key, "'json_schema' must be a JSON schema (an object)")),
        "regex" => ConstraintSpec::Regex(string("a regex the whole output must match")?),
        "grammar" => ConstraintSpec::grammar(string("a GBNF or Lark grammar")?),
        _ => {
            let kind = value.get("type").and_then(Value::as_str);
            match kind {
                Some("text") => return Ok(None),
                Some("json_object") => ConstraintSpec::JsonObject,
                Some("json_schema") => {
                    let schema = value
                        .get("json_schema")
                        .and_then(|s| s.get("schema"))
                        .filter(|s| s.is_object())
                        .ok_or_else(|| {
                            bad(
                                "response_format",
                                "'response_format' of type json_schema needs 'json_schema': {\"name\": …, \"schema\": {…}}",
                            )
                        })?;
                    ConstraintSpec::JsonSchema(schema.clone())
                }
                _ => {
                    return Err(bad(
                        "response_format",
                        "'response_format' must have 'type' \"text\", \"json_object\" or \"json_schema\"",
                    ))
                }
            }
        }
    }))
}

/// Every field must be known to the endpoint; the ones this server cannot honour are refused by name.
fn check_fields(body: &Value, chat: bool) -> Result<(), BadRequest> {
    let Some(fields) = body.as_object() else {
        return Ok(());
    };
    let own = if chat { CHAT_FIELDS } else { COMPLETION_FIELDS };
    let present = |key: &str| fields.get(key).is_some_and(|v| !v.is_null());
    for key in fields.keys() {
        if let Some((_, what)) = UNSUPPORTED_FIELDS.iter().find(|(k, _)| k == key) {
            if present(key) {
                return Err(bad(
                    key,
                    format!("'{key}' ({what}) is not supported by this server"),
                ));
            }
        } else if !COMMON_FIELDS.contains(&key.as_str()) && !own.contains(&key.as_str()) {
            let other = if chat { COMPLETION_FIELDS } else { CHAT_FIELDS };
            let hint = if other.contains(&key.as_str()) {
                format!(
                    " of {}",
                    if chat {
                        "/v1/completions"
                    } else {
                        "/v1/chat/completions"
                    }
                )
            } else {
                String::new()
            };
            return Err(bad(key, format!("unknown field '{key}'{hint}")));
        }
    }
    if chat {
        match fields.get("modalities") {
            None | Some(Value::Null) => {}
            Some(Value::Array(m)) if m.iter().all(|m| m == "text") => {}
            Some(_) => {
                return Err(bad(
                    "modalities",
                    "this server generates text only: 'modalities' may be [\"text\"]",
                ))
            }
        }
        flag(body, "store")?;
        if fields
            .get("metadata")
            .is_some_and(|m| !m.is_null() && !m.is_object())
        {
            return Err(bad("metadata", "'metadata' must be an object"));
        }
    }
    if fields
        .get("user")
        .is_some_and(|u| !u.is_null() && !u.is_string())
    {
        return Err(bad("user", "'user' must be a string"));
    }
    if let Some(model) = fields.get("model") {
        if !model.is_null() && !model.is_string() {
            return Err(bad("model", "'model' must be a string"));
        }
    }
    Ok(())
}

/// The messages of a chat request: known roles, text content (a string or text parts).
fn messages(body: &Value) -> Result<Vec<Message>, BadRequest> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "'messages' must be an array of messages"))?;
    if messages.is_empty() {
        return Err(bad("messages", "'messages' must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(bad("messages", format!("message {i} must be an object")));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("messages", format!("message {i} has no 'role'")))?;
        if !ROLES.contains(&role) {
            return Err(bad(
                "messages",
                format!(
                    "message {i} has role '{role}'; roles are {}",
                    ROLES.join(", ")
                ),
            ));
        }
        for key in m.keys() {
            match key.as_str() {
                "role" | "content" | "name" | "tool_call_id" | "refusal" | "tool_calls" => {}
                "function_call" if m[key].is_null() => {}
                "function_call" => {
                    return Err(bad(
                        "messages",
                        format!("message {i}: 'function_call' (deprecated) is not supported: use 'tool_calls'"),
                    ))
                }
                _ => return Err(bad("messages", format!("message {i} has an unknown field '{key}'"))),
            }
        }
        let text_field = |key: &str| -> Result<Option<String>, BadRequest> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(
                    "messages",
                    format!("message {i}: '{key}' must be a string"),
                )),
            }
        };
        let (name, tool_call_id) = (text_field("name")?, text_field("tool_call_id")?);
        let tool_calls = match m.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(_) if role != "assistant" => {
                return Err(bad("messages", format!("message {i}: only assistant messages have 'tool_calls'")))
            }
            Some(Value::Array(calls)) => calls
                .iter()
                .enumerate()
                .map(|(j, c)| message_tool_call(c).ok_or_else(|| bad("messages", format!(
                    "message {i}, tool call {j}: a call is {{\"id\": …, \"type\": \"function\", \"function\": {{\"name\": …, \"arguments\": \"<JSON text>\"}}}}"))))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("messages", format!("message {i}: 'tool_calls' must be an array"))),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text") {
                            Some(Value::String(t)) => text.push_str(t),
                            _ => {
                                return Err(bad(
                                    "messages",
                                    format!("message {i}, content part {j}: a text part needs a string 'text'"),
                                ))
                            }
                        },
                        Some(kind) => {
                            return Err(bad(
                                "messages",
                                format!("message {i}, content part {j}: '{kind}' parts are not supported: this model takes text only"),
                            ))
                        }
                        None => {
                            return Err(bad(
                                "messages",
                                format!("message {i}, content part {j} has no 'type'"),
                            ))
                        }
                    }
                }
                text
            }
            None | Some(Value::Null) => String::new(),
            Some(_) => {
                return Err(bad(
                    "messages",
                    format!("message {i}: 'content' must be a string or an array of text parts"),
                ))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        if role == "tool" && tool_call_id.is_none() {
            return Err(bad(
                "messages",
                format!("message {i}: a tool message needs the 'tool_call_id' it answers"),
            ));
        }
        out.push(Message {
            tool_calls,
            tool_call_id,
            name,
            ..Message::new(role, content)
        });
    }
    Ok(out)
}

/// One call of an assistant message: OpenAI's shape, arguments as JSON text (or, leniently, an object).
fn message_tool_call(call: &Value) -> Option<ToolCall> {
    let function = call.get("function")?;
    if call.get("type").is_some_and(|t| t != "function") {
        return None;
    }
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        None | Some(Value::Null) => "{}".to_string(),
        Some(_) => return None,
    };
    Some(ToolCall {
        id: call
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        name: function.get("name")?.as_str()?.to_string(),
        arguments,
    })
}

/// Most tools one request may offer.
const MAX_TOOLS: usize = 128;

/// The tools of a chat request, how they may be called, and whether several calls may come at once.
fn tools(body: &Value) -> Result<(Vec<Tool>, ToolChoice, bool), BadRequest> {
    let message = "each tool is {\"type\": \"function\", \"function\": {\"name\": …, \"description\": …, \"parameters\": {JSON schema}}}";
    let list: Vec<Tool> = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() > MAX_TOOLS => {
            return Err(bad("tools", format!("at most {MAX_TOOLS} tools")))
        }
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| {
                let function = t
                    .get("function")
                    .filter(|_| t.get("type").is_none_or(|k| k == "function"))
                    .ok_or_else(|| bad("tools", message))?;
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| {
                        !n.is_empty()
                            && n.len() <= 64
                            && n.chars().all(|c| {
                                c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
                            })
                    })
                    .ok_or_else(|| {
                        bad(
                            "tools",
                            "a function's 'name' must be 1 to 64 letters, digits, '_', '-' or '.'",
                        )
                    })?;
                let parameters = match function.get("parameters") {
                    None | Some(Value::Null) => serde_json::json!({"type": "object"}),
                    Some(p @ Value::Object(_)) => p.clone(),
                    Some(_) => {
                        return Err(bad(
                            "tools",
                            format!(
                                "function '{name}': 'parameters' must be a JSON schema (an object)"
                            ),
                        ))
                    }
                };
                Ok(Tool {
                    name: name.to_string(),
                    definition: serde_json::json!({"type": "function", "function": function}),
                    parameters,
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("tools", "'tools' must be an array of tools")),
    };
    for (i, t) in list.iter().enumerate() {
        if list[..i].iter().any(|u| u.name == t.name) {
            return Err(bad("tools", format!("two tools are named '{}'", t.name)));
        }
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) if list.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(c)) => match c.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}")),
        },
        Some(c) => match c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) if c.get("type").is_none_or(|t| t == "function") => ToolChoice::Function(name.to_string()),
            _ => return Err(bad("tool_choice", "a named 'tool_choice' is {\"type\": \"function\", \"function\": {\"name\": …}}")),
        },
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Auto if list.is_empty() => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' other than \"none\" needs 'tools'",
            ))
        }
        ToolChoice::Function(name) if !list.iter().any(|t| &t.name == name) => {
            return Err(bad(
                "tool_choice",
                format!("'tool_choice' names '{name}', which is not one of 'tools'"),
            ))
        }
        _ => {}
    }
    let parallel = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "parallel_tool_calls",
                "'parallel_tool_calls' must be a boolean",
            ))
        }
    };
    Ok((list, choice, parallel))
}

/// The prompts of a completion request: a string, token ids, or an array of either.
fn prompts(body: &Value) -> Result<Vec<PromptInput>, BadRequest> {
    texts(body, "prompt", MAX_PROMPTS)
}

/// Field `key` of `body` as one or more texts: a string, token ids, or an array of strings or token-id arrays; at
/// most `max` of them.
fn texts(body: &Value, key: &str, max: usize) -> Result<Vec<PromptInput>, BadRequest> {
    let message = format!(
        "'{key}' must be a string, an array of token ids, or an array of strings or of token-id arrays"
    );
    let tokens = |items: &[Value]| -> Result<Vec<u32>, BadRequest> {
        items
            .iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
                    .ok_or_else(|| bad(key, message.clone()))
            })
            .collect()
    };
    let out = match body.get(key) {
        Some(Value::String(s)) => vec![PromptInput::Text(s.clone())],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![PromptInput::Tokens(tokens(items)?)]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(PromptInput::Text(s.clone())),
                Value::Array(ids) if !ids.is_empty() => Ok(PromptInput::Tokens(tokens(ids)?)),
                _ => Err(bad(key, message.clone())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad(key, message)),
    };
    if out.len() > max {
        return Err(bad(key, format!("at most {max} inputs per request")));
    }
    Ok(out)
}

/// Most inputs of one `/v1/embeddings` request (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// A `/v1/embeddings` request.
#[derive(Debug)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Vec<PromptInput>,
    /// `encoding_format: "base64"`: little-endian f32s in base64 instead of a JSON array.
    pub base64: bool,
    /// The extension `pooling`: `"mean"` (the default) or `"last"`.
    pub pooling: Pooling,
    /// The extension `normalize` (default true): unit-length vectors.
    pub normalize: bool,
}

/// Parses a `/v1/embeddings` body; every field is known or a 400 that names it.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingRequest, BadRequest> {
    let body: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        message: format!("the body is not valid JSON: {e}"),
        param: None,
    })?;
    let Some(fields) = body.as_object() else {
        return Err(BadRequest {
            message: "the body must be a JSON object".into(),
            param: None,
        });
    };
    for key in fields.keys() {
        match key.as_str() {
            "input" | "model" | "encoding_format" | "user" | "pooling" | "normalize" => {}
            "dimensions" => {
                return Err(bad(
                    key,
                    "'dimensions' (shortened embeddings) is not supported: this model's embeddings have a fixed size",
                ))
            }
            _ => return Err(bad(key, format!("unknown field '{key}' for /v1/embeddings"))),
        }
    }
    let input = texts(&body, "input", MAX_EMBEDDING_INPUTS)?;
    if input
        .iter()
        .any(|i| matches!(i, PromptInput::Text(t) if t.is_empty()))
    {
        return Err(bad("input", "'input' must not contain empty strings"));
    }
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(bad(
                "encoding_format",
                "'encoding_format' must be \"float\" or \"base64\"",
            ))
        }
    };
    let pooling = match body.get("pooling") {
        None | Some(Value::Null) => Pooling::Mean,
        Some(Value::String(p)) => p.parse().map_err(|e: String| bad("pooling", e))?,
        Some(_) => return Err(bad("pooling", "'pooling' must be \"mean\" or \"last\"")),
    };
    let normalize = match body.get("normalize") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("normalize", "'normalize' must be true or false")),
    };
    if let Some(user) = body.get("user").filter(|u| !u.is_null() && !u.is_string()) {
        return Err(bad("user", format!("'user' must be a string, not {user}")));
    }
    Ok(EmbeddingRequest {
        model: match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => return Err(bad("model", "'model' must be a string")),
        },
        input,
        base64,
        pooling,
        normalize,
    })
}

/// A random 64-bit number (the clock through a randomly keyed hash).
pub fn rand_seed() -> u64 {
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
                "\"draft:x,9\"", "\"early-exit:99,3\"", "\"dense\"", "\"response_format\":", "\"json_schema\":",
                "\"grammar\":", "\"regex\":", "\"type\":", "\"json_object\"",
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
    fn every_field_is_known_and_checked() {
        let r = parse(
            br#"{"model":"x","prompt":"hi","max_tokens":5,"user":"u","stop":["a","b"],"seed":3,"n":2,"best_of":3}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, ["a", "b"]);
        assert_eq!(r.sampler.seed, 3);
        assert_eq!((r.n, r.best_of), (2, 3));
        for (body, param) in [
            (&br#"{"prompt":"hi","frobnicate":true}"#[..], "frobnicate"),
            (br#"{"prompt":"hi","messages":[]}"#, "messages"),
            (br#"{"prompt":"hi","n":0}"#, "n"),
            (br#"{"prompt":"hi","n":17}"#, "n"),
            (br#"{"prompt":"hi","n":3,"best_of":2}"#, "best_of"),
            (br#"{"prompt":"hi","best_of":2,"stream":true}"#, "best_of"),
            (
                br#"{"prompt":"hi","presence_penalty":5}"#,
                "presence_penalty",
            ),
            (
                br#"{"prompt":"hi","frequency_penalty":-3}"#,
                "frequency_penalty",
            ),
            (
                br#"{"prompt":"hi","repetition_penalty":0}"#,
                "repetition_penalty",
            ),
            (
                br#"{"prompt":"hi","response_format":{"type":"xml"}}"#,
                "response_format",
            ),
            (br#"{"prompt":"hi","json_schema":"x"}"#, "json_schema"),
            (br#"{"prompt":"hi","regex":""}"#, "regex"),
            (
                br#"{"prompt":"hi","response_format":{"type":"json_schema"}}"#,
                "response_format",
            ),
            (
                br#"{"prompt":"hi","stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (br#"{"prompt":"hi","suffix":"x","echo":true}"#, "echo"),
            (br#"{"prompt":[]}"#, "prompt"),
            (br#"{"prompt":[1,-2]}"#, "prompt"),
            (br#"{"prompt":[[1],"a",{}]}"#, "prompt"),
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
        for (body, message) in [
            (&br#"{"messages":[{"role":"wizard","content":"hi"}]}"#[..], "role 'wizard'"),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
                "'image_url' parts are not supported",
            ),
            (br#"{"messages":[{"role":"user","content":"hi","mood":1}]}"#, "unknown field 'mood'"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}"#, "each tool is"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}"#, "names 'g'"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"tool_choice":"required"}"#, "needs 'tools'"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"}}],"tool_choice":"required","response_format":{"type":"json_object"}}"#, "cannot be combined"),
            (br#"{"messages":[{"role":"tool","content":"42"}]}"#, "needs the 'tool_call_id'"),
            (br#"{"messages":[{"role":"user","content":"hi","tool_calls":[]}]}"#, "only assistant messages"),
            (br#"{"messages":[{"role":"user","content":"hi"}],"echo":true}"#, "of /v1/completions"),
        ] {
            let e = parse(body, true).err().expect("rejected");
            assert!(e.message.contains(message), "{}", e.message);
        }
        let chat = parse(
            br#"{"messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"tool_choice":"none","tools":[],"stream":true,"stream_options":{"include_usage":true}}"#,
            true,
        )
        .unwrap();
        let Prompt::Chat(m) = &chat.prompt else {
            panic!()
        };
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "ab")
        );
        assert!(chat.include_usage);
        let many = parse(br#"{"prompt":[[1,2],"text",[3]],"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1}"#, false).unwrap();
        let Prompt::Completion(p) = &many.prompt else {
            panic!()
        };
        assert_eq!(
            p,
            &[
                PromptInput::Tokens(vec![1, 2]),
                PromptInput::Text("text".into()),
                PromptInput::Tokens(vec![3])
            ]
        );
        assert_eq!(
            (
                many.sampler.presence_penalty,
                many.sampler.frequency_penalty,
                many.sampler.repeat_penalty
            ),
            (0.5, -0.5, 1.1)
        );
        for (body, spec) in [
            (&br#"{"prompt":"hi","response_format":{"type":"json_object"}}"#[..], Some(ConstraintSpec::JsonObject)),
            (br#"{"prompt":"hi","response_format":{"type":"text"}}"#, None),
            (br#"{"prompt":"hi","regex":"[0-9]+"}"#, Some(ConstraintSpec::Regex("[0-9]+".into()))),
            (br#"{"prompt":"hi","grammar":"root ::= [0-9]+"}"#, Some(ConstraintSpec::Gbnf("root ::= [0-9]+".into()))),
            (br#"{"prompt":"hi","grammar":"start: /[0-9]+/"}"#, Some(ConstraintSpec::Lark("start: /[0-9]+/".into()))),
            (
                br#"{"prompt":"hi","response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object"},"strict":true}}}"#,
                Some(ConstraintSpec::JsonSchema(serde_json::json!({"type":"object"})))),
        ] {
            assert_eq!(parse(body, false).unwrap().constraint.map(|(_, s)| s), spec);
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

    #[test]
    fn embedding_requests_are_parsed_or_name_the_bad_field() {
        let r = parse_embeddings(
            br#"{"input":["a",[1,2]],"encoding_format":"base64","pooling":"last"}"#,
        )
        .unwrap();
        assert_eq!(
            r.input,
            [
                PromptInput::Text("a".into()),
                PromptInput::Tokens(vec![1, 2])
            ]
        );
        assert!(r.base64 && r.normalize && r.pooling == Pooling::Last);
        let r =
            parse_embeddings(br#"{"input":"a","normalize":false,"model":"m","user":"u"}"#).unwrap();
        assert!(!r.base64 && !r.normalize && r.pooling == Pooling::Mean);
        for (body, param) in [
            (&br#"{"input":"a","dimensions":8}"#[..], "dimensions"),
            (br#"{"input":"a","frobnicate":1}"#, "frobnicate"),
            (br#"{"input":""}"#, "input"),
            (br#"{"input":[]}"#, "input"),
            (br#"{}"#, "input"),
            (
                br#"{"input":"a","encoding_format":"hex"}"#,
                "encoding_format",
            ),
            (br#"{"input":"a","pooling":"cls"}"#, "pooling"),
            (br#"{"input":"a","normalize":"yes"}"#, "normalize"),
        ] {
            let e = parse_embeddings(body).expect_err("rejected");
            assert_eq!(e.param.as_deref(), Some(param));
        }
        assert!(parse_embeddings(b"[1]").err().unwrap().param.is_none());
    }
}
