//! Tool calling: the functions a request offers, the syntax in which a model writes calls to them, parsing that
//! syntax back out of its output (whole or as it streams), and the grammar that forces a valid call when the request
//! demands one.
//!
//! Three syntaxes are known, each chosen from what the model's chat template teaches:
//! - **Hermes** (Qwen2.5, Hermes, and the fallback for templates that teach none): `<tool_call>\n{"name": …,
//!   "arguments": {…}}\n</tool_call>`, one block per call, text allowed before them.
//! - **Llama 3.x**: the whole reply is a JSON object `{"name": …, "parameters": {…}}` (several separated by `;`),
//!   optionally after `<|python_tag|>`.
//! - **Mistral**: `[TOOL_CALLS]` then a JSON array of `{"name": …, "arguments": {…}}`, or (newer templates)
//!   `[TOOL_CALLS]name[ARGS]{…}` per call.

use crate::chat::Message;
use crate::generation::held_back;
use serde_json::{json, Value};

/// One function a request offers the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// The function as the request gave it (`{"type": "function", "function": {…}}`), for the template.
    pub definition: Value,
    /// The JSON schema of its arguments (`{"type": "object"}` when none was given).
    pub parameters: Value,
}

/// Whether and how the model should call a tool (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never: the tools are not shown to the model.
    None,
    /// The model decides.
    Auto,
    /// At least one call, enforced by a grammar.
    Required,
    /// Exactly one call of this function, enforced by a grammar.
    Function(String),
}

/// How a model writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>{json}</tool_call>` blocks.
    Hermes,
    /// A bare JSON object with `parameters`, optionally after `<|python_tag|>`.
    Llama3,
    /// `[TOOL_CALLS]` and a JSON array, or `[TOOL_CALLS]name[ARGS]{json}`.
    Mistral,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";

impl ToolSyntax {
    /// The syntax a chat template teaches (Hermes for a template that teaches none, whose prompt then describes it).
    pub fn of_template(source: Option<&str>) -> ToolSyntax {
        match source {
            Some(s) if s.contains(MISTRAL_CALLS) => ToolSyntax::Mistral,
            Some(s) if s.contains(HERMES_OPEN) => ToolSyntax::Hermes,
            Some(s) if s.contains(PYTHON_TAG) || s.contains("ipython") => ToolSyntax::Llama3,
            _ => ToolSyntax::Hermes,
        }
    }

    /// The name of the field holding a call's arguments in this syntax's JSON.
    fn arguments_key(self) -> &'static str {
        match self {
            ToolSyntax::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

/// A tool call parsed from a model's output: the function and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as compact text.
    pub arguments: String,
}

/// A piece of a model's output: plain text, or a complete tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text meant for the user.
    Text(String),
    /// A tool call.
    Call(ParsedCall),
}

/// Where a [`ToolParser`] is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before anything but whitespace (Llama 3.x decides here whether the reply is a call).
    Start,
    /// In text that may still contain the start of a call.
    Text,
    /// Inside a Hermes block, waiting for its end.
    InCall,
    /// After a call's start in a syntax whose calls run to the end of the output.
    Tail,
    /// A Hermes reply that opens with `{` or a code fence: small models often write the call's JSON without its
    /// tags, or fenced as a JSON code block.
    Bare,
}

/// Splits a model's output into text and tool calls as it arrives: text that might begin a call is held back until
/// it is decided, a call is given out once complete.
#[derive(Debug, Clone)]
pub struct ToolParser {
    syntax: ToolSyntax,
    state: State,
    buffer: String,
    /// The offered functions' names: a Hermes reply that is only untagged JSON calls of these counts as calls.
    names: Vec<String>,
}

impl ToolParser {
    /// A parser for output in `syntax`.
    pub fn new(syntax: ToolSyntax) -> ToolParser {
        ToolParser {
            syntax,
            state: State::Start,
            buffer: String::new(),
            names: Vec::new(),
        }
    }

    /// Also takes a Hermes reply made only of untagged JSON calls of these functions as calls.
    pub fn untagged_calls_of(mut self, names: Vec<String>) -> ToolParser {
        self.names = names;
        self
    }

    /// Adds output text; returns what became decided.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        loop {
            match (self.syntax, self.state) {
                (ToolSyntax::Llama3, State::Start) => {
                    let rest = self.buffer.trim_start();
                    if rest.is_empty() {
                        return out;
                    }
                    let call_like = rest.starts_with('{')
                        || rest.starts_with(PYTHON_TAG)
                        || PYTHON_TAG.starts_with(rest);
                    if !call_like {
                        self.state = State::Text;
                        continue;
                    }
                    if PYTHON_TAG.starts_with(rest) && rest != PYTHON_TAG {
                        return out;
                    }
                    self.state = State::Tail;
                }
                (ToolSyntax::Llama3, State::Text) => {
                    text_piece(&mut out, std::mem::take(&mut self.buffer));
                    return out;
                }
                (ToolSyntax::Hermes, State::Start) if !self.names.is_empty() => {
                    let rest = self.buffer.trim_start();
                    if rest.is_empty() {
                        return out;
                    }
                    self.state = if rest.starts_with(['{', '`']) {
                        State::Bare
                    } else {
                        State::Text
                    };
                }
                (_, State::Start) => self.state = State::Text,
                (_, State::Text) => {
                    let open = match self.syntax {
                        ToolSyntax::Mistral => MISTRAL_CALLS,
                        _ => HERMES_OPEN,
                    };
                    if let Some(at) = self.buffer.find(open) {
                        let after = self.buffer.split_off(at);
                        text_piece(&mut out, std::mem::replace(&mut self.buffer, after));
                        if self.syntax == ToolSyntax::Mistral {
                            self.state = State::Tail;
                            return out;
                        }
                        self.buffer.drain(..open.len());
                        self.state = State::InCall;
                        continue;
                    }
                    let held = held_back(&self.buffer, &[open]);
                    let keep = self.buffer.split_off(self.buffer.len() - held);
                    text_piece(&mut out, std::mem::replace(&mut self.buffer, keep));
                    return out;
                }
                (_, State::InCall) => {
                    let Some(at) = self.buffer.find(HERMES_CLOSE) else {
                        return out;
                    };
                    let body = self.buffer[..at].to_string();
                    self.buffer.drain(..at + HERMES_CLOSE.len());
                    match parse_call(self.syntax, &body) {
                        Some(call) => out.push(Piece::Call(call)),
                        None => text_piece(&mut out, format!("{HERMES_OPEN}{body}{HERMES_CLOSE}")),
                    }
                    self.state = State::Text;
                }
                (_, State::Tail | State::Bare) => return out,
            }
        }
    }

    /// Ends the output: what was held back, as calls where it parses as calls, else as text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buffer);
        let state = std::mem::replace(&mut self.state, State::Text);
        let mut out = Vec::new();
        match state {
            State::Start | State::Text => text_piece(&mut out, rest),
            // An unclosed block (the model ended right after its JSON) still counts when the JSON is a whole call.
            State::InCall => match parse_call(self.syntax, &rest) {
                Some(call) => out.push(Piece::Call(call)),
                None => text_piece(&mut out, format!("{HERMES_OPEN}{rest}")),
            },
            State::Tail => match parse_tail(self.syntax, &rest) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => text_piece(&mut out, rest),
            },
            State::Bare => match self.untagged(&rest) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                // Not calls after all: parsed as ordinary text, where tagged calls may still follow.
                None => {
                    let mut text = ToolParser::new(self.syntax);
                    text.state = State::Text;
                    out = text.push(&rest);
                    out.extend(text.finish());
                }
            },
        }
        out
    }
}

impl ToolParser {
    /// The calls of a reply made only of JSON calls of the offered functions (whitespace between them), bare or in
    /// one fenced code block.
    fn untagged(&self, text: &str) -> Option<Vec<ParsedCall>> {
        let mut text = text.trim();
        if let Some(fenced) = text.strip_prefix("```") {
            let fenced = fenced.strip_prefix("json").unwrap_or(fenced);
            text = fenced.strip_suffix("```")?;
        }
        let mut calls = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            let value = value.ok()?;
            let object = value.as_object()?;
            if object.len() != 2 || !object.contains_key("arguments") {
                return None;
            }
            let call = call_from_json(self.syntax, &value)?;
            if !self.names.contains(&call.name) {
                return None;
            }
            calls.push(call);
        }
        (!calls.is_empty()).then_some(calls)
    }
}

/// The text and calls of a whole output from `parser`: the text with calls taken out (trimmed when there are calls).
pub fn parse_output(mut parser: ToolParser, text: &str) -> (String, Vec<ParsedCall>) {
    let mut pieces = parser.push(text);
    pieces.extend(parser.finish());
    let (mut content, mut calls) = (String::new(), Vec::new());
    for piece in pieces {
        match piece {
            Piece::Text(t) => content.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    if !calls.is_empty() {
        content = content.trim().to_string();
    }
    (content, calls)
}

fn text_piece(out: &mut Vec<Piece>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Piece::Text(text));
    }
}

/// A call from its JSON object: a string `name` and an object (or JSON text) of arguments.
fn call_from_json(syntax: ToolSyntax, value: &Value) -> Option<ParsedCall> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = object
        .get(syntax.arguments_key())
        .or_else(|| object.get("arguments"))
        .or_else(|| object.get("parameters"));
    let arguments = match arguments {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => return None,
    };
    Some(ParsedCall { name, arguments })
}

fn parse_call(syntax: ToolSyntax, body: &str) -> Option<ParsedCall> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    call_from_json(syntax, &value)
}

/// The calls of a Llama 3.x reply or of the text after Mistral's first `[TOOL_CALLS]`; `None` unless all of it is calls.
fn parse_tail(syntax: ToolSyntax, text: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    match syntax {
        ToolSyntax::Llama3 => {
            let text = text.trim();
            let text = text.strip_prefix(PYTHON_TAG).unwrap_or(text);
            for part in text.split(';') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                calls.push(parse_call(syntax, part)?);
            }
        }
        ToolSyntax::Mistral => {
            for part in text.split(MISTRAL_CALLS) {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                if part.starts_with('[') {
                    let list: Vec<Value> = serde_json::from_str(part).ok()?;
                    for v in &list {
                        calls.push(call_from_json(syntax, v)?);
                    }
                } else {
                    let (name, arguments) = part.split_once(MISTRAL_ARGS)?;
                    let arguments: Value = serde_json::from_str(arguments.trim()).ok()?;
                    calls.push(call_from_json(
                        syntax,
                        &json!({"name": name.trim(), "arguments": arguments}),
                    )?);
                }
            }
        }
        ToolSyntax::Hermes => return None,
    }
    (!calls.is_empty()).then_some(calls)
}

/// The Lark grammar (llguidance's syntax) of the output `choice` demands: at least one call of any tool
/// (`Required`, several when `parallel`) or exactly one of the named function. `special` gives the id of a control
/// token by its text (Mistral's `[TOOL_CALLS]` is one). `None` for `Auto` and `None` choices.
pub fn call_grammar(
    syntax: ToolSyntax,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    special: impl Fn(&str) -> Option<u32>,
) -> Option<String> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    let key = syntax.arguments_key();
    let variants: Vec<Value> = chosen
        .iter()
        .map(|t| {
            json!({"type": "object",
                   "properties": {"name": {"const": t.name}, key: t.parameters},
                   "required": ["name", key], "additionalProperties": false})
        })
        .collect();
    let mut schema = match variants.len() {
        0 => return None,
        1 => variants.into_iter().next().unwrap_or_default(),
        _ => json!({ "anyOf": variants }),
    };
    schema["x-guidance"] = json!({ "whitespace_pattern": r"(?: |\n {0,20})" });
    let many = parallel && *choice == ToolChoice::Required;
    let literal = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let (start, call) = match syntax {
        ToolSyntax::Hermes => (
            if many {
                r#"start: call ("\n" call)*"#.to_string()
            } else {
                "start: call".to_string()
            },
            format!(
                "call: {} body {}",
                literal(&format!("{HERMES_OPEN}\n")),
                literal(&format!("\n{HERMES_CLOSE}"))
            ),
        ),
        ToolSyntax::Llama3 => (
            if many {
                r#"start: call ("; " call)*"#.to_string()
            } else {
                "start: call".to_string()
            },
            "call: body".to_string(),
        ),
        ToolSyntax::Mistral => {
            let marker = match special(MISTRAL_CALLS) {
                Some(id) => format!("<[{id}]>"),
                None => literal(MISTRAL_CALLS),
            };
            (
                if many {
                    format!(r#"start: {marker} "[" body (", " body)* "]""#)
                } else {
                    format!(r#"start: {marker} "[" body "]""#)
                },
                String::new(),
            )
        }
    };
    Some(format!("{start}\n{call}\nbody: %json {schema}\n"))
}

/// The conversation for a template that does not render tools itself: the tools and the Hermes syntax described in
/// the system message, earlier calls written into their assistant turns, and tool results given as user turns.
pub fn describe_in_messages(messages: &[Message], tools: &[Tool]) -> Vec<Message> {
    let mut system = String::from(
        "You may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        system.push('\n');
        system.push_str(&tool.definition.to_string());
    }
    system.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    match messages.first() {
        Some(first) if first.role == "system" || first.role == "developer" => {
            out.push(Message::new(
                "system",
                format!("{}\n\n{system}", first.content),
            ));
            rest = &messages[1..];
        }
        _ => out.push(Message::new("system", system)),
    }
    for m in rest {
        match m.role.as_str() {
            "tool" => {
                let response = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&response);
                    }
                    _ => out.push(Message::new("user", response)),
                }
            }
            "assistant" if !m.tool_calls.is_empty() => {
                let mut content = m.content.clone();
                for call in &m.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    let arguments: Value = serde_json::from_str(&call.arguments)
                        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
                    content.push_str(&format!(
                        "{HERMES_OPEN}\n{}\n{HERMES_CLOSE}",
                        json!({"name": call.name, "arguments": arguments})
                    ));
                }
                out.push(Message::new("assistant", content));
            }
            _ => out.push(Message::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests;
