//! Chat templates: turn a conversation into the prompt text a model was trained on.
//!
//! Templates come from GGUF metadata (`tokenizer.chat_template`), written in Jinja for Hugging
//! Face's `apply_chat_template`. They are untrusted input, so rendering runs in minijinja with
//! bounded work: limited fuel (instructions), recursion depth and output size.
//!
//! A model without a template gets a plain fallback format:
//!
//! ```text
//! system: You are helpful.
//!
//! user: Hello
//!
//! assistant:
//! ```
//!
//! (messages as `role: content` separated by a blank line; with `add_generation_prompt` a final
//! `assistant:` line follows).

use std::io::{self, Write};
use std::ops::Range;

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use thiserror::Error;

use crate::tools::{describe_in_messages, Tool, ToolSyntax};

mod date;

/// Instructions a template may execute for one render (real templates use a few thousand).
const FUEL: u64 = 2_000_000;
/// Deepest nesting of macro calls, includes and blocks.
const RECURSION_LIMIT: usize = 64;
/// Largest prompt a render may produce.
const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Marks errors raised by the template's own `raise_exception(...)`.
const RAISED_PREFIX: &str = "template raised: ";

/// A chat template could not be compiled or rendered.
#[derive(Debug, Error)]
pub enum ChatError {
    /// The template source is not valid Jinja.
    #[error("the model's chat template does not compile: {0}")]
    Syntax(String),
    /// The template failed while rendering (bad expression, unknown function, ...).
    #[error("the model's chat template failed to render: {0}")]
    Render(String),
    /// The template itself rejected the conversation via `raise_exception`.
    #[error("the model's chat template rejected the conversation: {0}")]
    Raised(String),
    /// The template exceeded its instruction budget (it may loop forever).
    #[error("the model's chat template ran too long (over {FUEL} instructions) and may loop forever; supply a different template")]
    TooMuchWork,
    /// The template nested too deeply.
    #[error("the model's chat template recursed deeper than {RECURSION_LIMIT} levels")]
    TooDeep,
    /// The rendered prompt exceeded the size cap.
    #[error("the chat template produced more than {MAX_OUTPUT_BYTES} bytes; shorten the conversation or the template")]
    TooLarge,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
    /// The functions an assistant turn called.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` turn answers.
    pub tool_call_id: Option<String>,
    /// The function a `tool` turn answers for (or a participant's name).
    pub name: Option<String>,
}

/// A function call made in an assistant turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, which the tool's answer refers to.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl Message {
    /// A message from a role and its text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// The message as a template sees it: OpenAI's shape, with each call's arguments as a JSON object where they
    /// parse as one and `object_arguments` (most Hugging Face templates write them with `tojson`; some add them to
    /// strings as the JSON text OpenAI sends).
    fn to_value(&self, object_arguments: bool) -> Value {
        let mut fields = vec![
            ("role", Value::from(self.role.as_str())),
            ("content", Value::from(self.content.as_str())),
        ];
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                        .ok()
                        .filter(|_| object_arguments)
                        .map(|v| Value::from_serialize(&v))
                        .unwrap_or_else(|| Value::from(c.arguments.as_str()));
                    let function = Value::from_iter([
                        ("name", Value::from(c.name.as_str())),
                        ("arguments", arguments),
                    ]);
                    Value::from_iter([
                        ("id", Value::from(c.id.as_str())),
                        ("type", Value::from("function")),
                        ("function", function),
                    ])
                })
                .collect();
            fields.push(("tool_calls", Value::from(calls)));
        }
        if let Some(id) = &self.tool_call_id {
            fields.push(("tool_call_id", Value::from(id.as_str())));
        }
        if let Some(name) = &self.name {
            fields.push(("name", Value::from(name.as_str())));
        }
        Value::from_iter(fields)
    }
}

/// A compiled chat template, or the plain fallback format.
#[derive(Debug)]
pub struct ChatTemplate {
    /// None for the fallback.
    environment: Option<Environment<'static>>,
    /// The template's text (None for the fallback).
    source: Option<String>,
    bos_token: String,
    eos_token: String,
}

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source` (None → the plain fallback) with the model's special token texts.
    pub fn new(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, ChatError> {
        let environment = match source {
            Some(source) => {
                let mut environment = sandboxed_environment();
                environment
                    .add_template_owned(TEMPLATE_NAME, source.to_owned())
                    .map_err(|e| ChatError::Syntax(describe(&e)))?;
                Some(environment)
            }
            None => None,
        };
        Ok(ChatTemplate {
            environment,
            source: source.map(str::to_owned),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// True when the model had no template and the plain fallback format is used.
    pub fn is_fallback(&self) -> bool {
        self.environment.is_none()
    }

    /// Whether the template shows the model a request's tools itself (otherwise [`ChatTemplate::render_tools`]
    /// describes them in the system message).
    pub fn renders_tools(&self) -> bool {
        self.source.as_deref().is_some_and(|s| s.contains("tools"))
    }

    /// The syntax in which this template's model writes tool calls.
    pub fn tool_syntax(&self) -> ToolSyntax {
        ToolSyntax::of_template(self.source.as_deref())
    }

    /// Renders the conversation; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_tools(messages, &[], add_generation_prompt)
    }

    /// Renders the conversation with the functions the model may call (none: as [`ChatTemplate::render`]).
    pub fn render_tools(
        &self,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        if !tools.is_empty() && !self.renders_tools() {
            let described = describe_in_messages(messages, tools);
            return self.render_tools(&described, &[], add_generation_prompt);
        }
        let Some(environment) = &self.environment else {
            return Ok(render_fallback(messages, add_generation_prompt));
        };
        match self.render_with(environment, messages, tools, add_generation_prompt, true) {
            // A template that joins call arguments to strings fails on objects: it gets the JSON text instead.
            Err(ChatError::Render(_)) if messages.iter().any(|m| !m.tool_calls.is_empty()) => {
                self.render_with(environment, messages, tools, add_generation_prompt, false)
            }
            result => result,
        }
    }

    /// One render, with call arguments as objects or as JSON text.
    fn render_with(
        &self,
        environment: &Environment<'static>,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
        object_arguments: bool,
    ) -> Result<String, ChatError> {
        let template = environment
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| m.to_value(object_arguments))
            .collect();
        let tools = if tools.is_empty() {
            Value::from(())
        } else {
            Value::from(
                tools
                    .iter()
                    .map(|t| Value::from_serialize(&t.definition))
                    .collect::<Vec<_>>(),
            )
        };
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => tools,
        };
        let mut output = CappedWriter::default();
        // A hostile template can trip a panic inside the renderer (one found by fuzzing): it is an error here.
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            template.render_captured_to(context, &mut output)
        }));
        let Ok(rendered) = rendered else {
            return Err(ChatError::Render(
                "the template renderer failed on this template".into(),
            ));
        };
        match rendered {
            Ok(_) => String::from_utf8(output.buffer)
                .map_err(|_| ChatError::Render("the output is not valid UTF-8".into())),
            Err(_) if output.overflowed => Err(ChatError::TooLarge),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// Where each message's content lies in a rendered conversation, by byte range (`None`: unknown).
pub type ContentSpans = Option<Vec<Range<usize>>>;

impl ChatTemplate {
    /// Renders the conversation and finds where each message's content lies in the text, so that it can be
    /// tokenized as plain text: the spans are `None` where the template changes a content beyond trimming it, or
    /// renders differently for other content.
    pub fn render_spans(
        &self,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<(String, ContentSpans), ChatError> {
        if !tools.is_empty() && !self.renders_tools() {
            let described = describe_in_messages(messages, tools);
            return self.render_spans(&described, &[], add_generation_prompt);
        }
        let text = self.render_tools(messages, tools, add_generation_prompt)?;
        let spans = self.content_spans(&text, messages, tools, add_generation_prompt);
        Ok((text, spans))
    }

    /// Renders the conversation with a numbered marker for each content, then puts the contents (as they are, or
    /// trimmed) where the markers are; if that gives the real rendering, the contents' spans are known exactly.
    fn content_spans(
        &self,
        text: &str,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> ContentSpans {
        const OPEN: char = '\u{F8F0}';
        const CLOSE: char = '\u{F8F1}';
        if messages.iter().any(|m| m.content.contains([OPEN, CLOSE])) {
            return None;
        }
        // An empty content stays empty: templates test it (`if message.content`) beside tool calls.
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                content: if m.content.is_empty() {
                    String::new()
                } else {
                    format!("{OPEN}{i}{CLOSE}")
                },
                ..m.clone()
            })
            .collect();
        let skeleton = self
            .render_tools(&marked, tools, add_generation_prompt)
            .ok()?;
        'variant: for trim in [false, true] {
            let (mut out, mut spans, mut rest) = (String::new(), Vec::new(), skeleton.as_str());
            while let Some(open) = rest.find(OPEN) {
                out.push_str(&rest[..open]);
                let after = &rest[open + OPEN.len_utf8()..];
                let close = after.find(CLOSE)?;
                let Some(message) = after[..close]
                    .parse()
                    .ok()
                    .and_then(|i: usize| messages.get(i))
                else {
                    continue 'variant;
                };
                let content = if trim {
                    message.content.trim()
                } else {
                    &message.content
                };
                spans.push(out.len()..out.len() + content.len());
                out.push_str(content);
                rest = &after[close + CLOSE.len_utf8()..];
            }
            out.push_str(rest);
            if out == text {
                return Some(spans);
            }
        }
        None
    }
}

/// Where a reply in the plain fallback format ends: the next turn's opening, which a model without a template would
/// otherwise write itself.
pub const FALLBACK_TURN_MARKERS: [&str; 3] = ["\nuser:", "\nsystem:", "\nassistant:"];

/// The plain format documented at the top of this module.
fn render_fallback(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut turns: Vec<String> = messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect();
    if add_generation_prompt {
        turns.push("assistant:".to_owned());
    }
    turns.join("\n\n")
}

/// An environment set up like Hugging Face's (trim_blocks, lstrip_blocks, Python string
/// methods) with every resource bound applied.
fn sandboxed_environment() -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_trim_blocks(true);
    environment.set_lstrip_blocks(true);
    environment.set_fuel(Some(FUEL));
    environment.set_recursion_limit(RECURSION_LIMIT);
    environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    environment.add_function(
        "raise_exception",
        |message: String| -> Result<Value, JinjaError> {
            Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("{RAISED_PREFIX}{message}"),
            ))
        },
    );
    environment.add_function("strftime_now", |format: String| -> String {
        date::Date::today().format(&format)
    });
    environment.add_filter("tojson", python_json);
    environment
}

/// `tojson` as Hugging Face's renderer defines it (Python's `json.dumps` with `ensure_ascii=False`): `", "` and
/// `": "` between items, or `indent` spaces per level; minijinja's own escapes HTML characters and writes compactly.
fn python_json(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let spaces = " ".repeat(n);
            let mut serializer = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes()),
            );
            serde::Serialize::serialize(&value, &mut serializer)
        }
        None => {
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
            serde::Serialize::serialize(&value, &mut serializer)
        }
    };
    result.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|_| JinjaError::new(ErrorKind::InvalidOperation, "tojson: not UTF-8"))?;
    Ok(Value::from_safe_string(text))
}

/// Python's default JSON separators on one line.
struct PythonFormatter;

/// `", "` before every array item and object key but the first.
fn item_separator<W: ?Sized + Write>(writer: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Maps a minijinja error to the variant that tells the user what happened.
fn classify(error: &JinjaError) -> ChatError {
    // The raise may be wrapped by the call site; look through the chain of sources.
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(jinja) = e.downcast_ref::<JinjaError>() {
            match jinja.kind() {
                ErrorKind::OutOfFuel => return ChatError::TooMuchWork,
                ErrorKind::InvalidOperation => {
                    if let Some(message) =
                        jinja.detail().and_then(|d| d.strip_prefix(RAISED_PREFIX))
                    {
                        return ChatError::Raised(message.to_owned());
                    }
                    if jinja.detail().is_some_and(|d| d.contains("recursion")) {
                        return ChatError::TooDeep;
                    }
                }
                _ => {}
            }
        }
        current = e.source();
    }
    ChatError::Render(describe(error))
}

/// The error on one line; minijinja's message already names the template line.
fn describe(error: &JinjaError) -> String {
    error.to_string()
}

/// Collects output and fails the render once it passes `MAX_OUTPUT_BYTES`.
#[derive(Default)]
struct CappedWriter {
    buffer: Vec<u8>,
    overflowed: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + bytes.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output too large"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
