//! `fulcrum chat` and `fulcrum run`: an interactive conversation that keeps its history (and reuses its KV cache
//! between turns), with line editing at a terminal, slash commands that never reach the model, and Ctrl-C to stop a
//! reply.

use crate::common::{
    check_threads, context_size, load_model, CliResult, SamplingArgs, DEFAULT_MODEL,
};
use fulcrum_core::Session;
use fulcrum_engine::chat::{ChatTemplate, Message};
use fulcrum_engine::sampler::{Sampler, SamplerConfig};
use fulcrum_engine::{generation, prompt};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `fulcrum chat`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: Options,
}

/// Arguments of `fulcrum run`: `fulcrum chat` with the model named first (fetched if it is not cached).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Model name or path to a .gguf file.
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
    #[command(flatten)]
    options: Options,
}

/// The settings of a chat.
#[derive(clap::Args)]
pub struct Options {
    /// System message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Longest reply in tokens.
    #[arg(long, short = 'n', default_value_t = 1024)]
    max_tokens: usize,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens.
    #[arg(long, short)]
    ctx: Option<usize>,
    /// File of the line editor's history (default: chat-history in the model cache; at a terminal only).
    #[arg(long)]
    history_file: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    format: crate::common::FormatArgs,
    #[command(flatten)]
    attention: crate::common::AttentionArgs,
}

/// Runs `fulcrum run MODEL`.
pub fn run_model(args: RunArgs) -> CliResult {
    run(Args {
        model: args.model,
        options: args.options,
    })
}

const HELP: &str = "\
commands (never sent to the model):
  /help               this list
  /reset              forget the conversation (the system message stays)
  /system [TEXT]      set the system message (no TEXT: show it)
  /save FILE          write the conversation as JSON (OpenAI's messages)
  /load FILE          read a conversation written by /save
  /set [NAME VALUE]   change a setting: temp, top_p, top_k, min_p, repeat_penalty, seed, max_tokens (none: show them)
  /exit, /quit        leave (or end of input, Ctrl-D)
Ctrl-C stops a reply and keeps what was written; a line starting with // sends the rest starting with /.";

/// Where user lines come from: a line editor at a terminal, plain lines otherwise.
enum Input {
    Editor(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    Lines(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    fn new(history: Option<PathBuf>) -> Input {
        if std::io::stdin().is_terminal() {
            if let Ok(mut editor) = rustyline::DefaultEditor::new() {
                let history = history.or_else(|| {
                    fulcrum_models::models_dir()
                        .parent()
                        .map(|d| d.join("chat-history"))
                });
                if let Some(path) = &history {
                    let _ = editor.load_history(path);
                }
                return Input::Editor(Box::new(editor), history);
            }
        }
        Input::Lines(std::io::stdin().lock().lines())
    }

    /// The next line; `None` at the end of input.
    fn line(&mut self) -> CliResult<Option<String>> {
        match self {
            Input::Editor(editor, history) => loop {
                match editor.readline(">>> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                            if let Some(path) = history {
                                let _ = editor.save_history(path);
                            }
                        }
                        return Ok(Some(line));
                    }
                    // Ctrl-C at the prompt clears the line, as in a shell.
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(format!("reading input: {e}").into()),
                }
            },
            Input::Lines(lines) => {
                eprint!(">>> ");
                let _ = std::io::stderr().flush();
                lines.next().transpose().map_err(Into::into)
            }
        }
    }
}

/// What a slash command asks of the loop.
enum Flow {
    Continue,
    Exit,
}

/// The state of one chat.
struct Chat {
    messages: Vec<Message>,
    config: SamplerConfig,
    max_tokens: usize,
}

impl Chat {
    /// Runs slash command `line` (without its `/`).
    fn command(&mut self, line: &str) -> Result<Flow, String> {
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match name {
            "help" | "?" => eprintln!("{HELP}"),
            "exit" | "quit" | "bye" => return Ok(Flow::Exit),
            "reset" | "clear" => {
                self.messages.retain(|m| m.role == "system");
                eprintln!("(conversation cleared)");
            }
            "system" if rest.is_empty() => match self.messages.first() {
                Some(m) if m.role == "system" => eprintln!("{}", m.content),
                _ => eprintln!("(no system message)"),
            },
            "system" => {
                if self.messages.first().is_some_and(|m| m.role == "system") {
                    self.messages[0].content = rest.to_string();
                } else {
                    self.messages.insert(0, Message::new("system", rest));
                }
                eprintln!("(system message set)");
            }
            "save" if !rest.is_empty() => {
                let list: Vec<serde_json::Value> = self
                    .messages
                    .iter()
                    .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                    .collect();
                let text = serde_json::to_string_pretty(&list).unwrap_or_default();
                std::fs::write(rest, text + "\n")
                    .map_err(|e| format!("cannot write {rest}: {e}"))?;
                eprintln!("(saved {} messages to {rest})", self.messages.len());
            }
            "load" if !rest.is_empty() => {
                let text = std::fs::read_to_string(rest)
                    .map_err(|e| format!("cannot read {rest}: {e}"))?;
                self.messages = parse_conversation(&text).map_err(|e| format!("{rest}: {e}"))?;
                eprintln!("(loaded {} messages from {rest})", self.messages.len());
            }
            "save" | "load" => return Err(format!("/{name} needs a file name")),
            "set" if rest.is_empty() => {
                let c = &self.config;
                eprintln!(
                    "temp {} top_p {} top_k {} min_p {} repeat_penalty {} seed {} max_tokens {}",
                    c.temperature,
                    c.top_p,
                    c.top_k,
                    c.min_p,
                    c.repeat_penalty,
                    c.seed,
                    self.max_tokens
                );
            }
            "set" => self.set(rest)?,
            _ => return Err(format!("unknown command /{name}; /help lists the commands")),
        }
        Ok(Flow::Continue)
    }

    /// `/set NAME VALUE`.
    fn set(&mut self, rest: &str) -> Result<(), String> {
        let (name, value) = rest
            .split_once(' ')
            .ok_or("/set needs a name and a value, such as /set temp 0.7")?;
        let value = value.trim();
        let number = || {
            value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or(format!(
                    "{name} must be a number of at least 0, not '{value}'"
                ))
        };
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a whole number, not '{value}'"))
        };
        let c = &mut self.config;
        match name {
            "temp" | "temperature" => c.temperature = number()?,
            "top_p" | "top-p" => {
                let p = number()?;
                if p == 0.0 || p > 1.0 {
                    return Err("top_p must be in (0, 1]".into());
                }
                c.top_p = p;
            }
            "top_k" | "top-k" => c.top_k = count()?,
            "min_p" | "min-p" => {
                let p = number()?;
                if p > 1.0 {
                    return Err("min_p must be between 0 and 1".into());
                }
                c.min_p = p;
            }
            "repeat_penalty" | "repeat-penalty" => {
                let p = number()?;
                if p == 0.0 {
                    return Err("repeat_penalty must be above 0 (1 = off)".into());
                }
                c.repeat_penalty = p;
            }
            "seed" => {
                c.seed = value
                    .parse()
                    .map_err(|_| format!("seed must be a whole number, not '{value}'"))?
            }
            "max_tokens" | "max-tokens" => self.max_tokens = count()?.max(1),
            _ => return Err(format!("unknown setting '{name}'; /help lists them")),
        }
        eprintln!("({name} set to {value})");
        Ok(())
    }
}

/// A conversation as `/save` writes it: a JSON array of `{"role", "content"}` objects with known roles.
fn parse_conversation(text: &str) -> Result<Vec<Message>, String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of messages: {e}"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |key: &str| m.get(key).and_then(serde_json::Value::as_str);
            match (field("role"), field("content")) {
                (Some(role @ ("system" | "user" | "assistant")), Some(content)) => {
                    Ok(Message::new(role, content))
                }
                _ => Err(format!(
                    "message {i} must be {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"…\"}}"
                )),
            }
        })
        .collect()
}

/// Runs `fulcrum chat`: reads user turns until end of input or `/exit`.
pub fn run(args: Args) -> CliResult {
    let o = args.options;
    let model = load_model(&args.model, true)?;
    let mut chat = Chat {
        messages: Vec::new(),
        config: o.sampling.config_for(&model)?,
        max_tokens: o.max_tokens,
    };
    // Checks the settings before the first turn.
    Sampler::new(chat.config.clone())?;
    // Every reply follows the format from its start.
    let format = o.format.compiled(&model)?;
    let n_ctx = context_size(&model, o.ctx)?;
    let template = prompt::chat_template(&model)?;
    let markers: &[&str] = if template.is_fallback() {
        eprintln!("(this model has no chat template; using a plain 'role: text' format)");
        &fulcrum_engine::chat::FALLBACK_TURN_MARKERS
    } else {
        &[]
    };
    let mut session = Session::new(
        model.clone(),
        n_ctx,
        check_threads(o.threads)?,
        fulcrum_core::session::DEFAULT_BATCH,
    )?;
    session.set_delta(o.attention.decode_delta(model.config.n_layers)?)?;
    if let Some(s) = &o.system {
        chat.messages.push(Message::new("system", s.clone()));
    }
    // Ctrl-C while a reply is written stops the reply; at any other time it ends the program as usual.
    let interrupted = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(true));
    signal_hook::flag::register_conditional_default(signal_hook::consts::SIGINT, idle.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    // Tokens currently in the session's KV cache, to reuse the common prefix of the next turn.
    let mut cached: Vec<u32> = Vec::new();
    eprintln!(
        "type a message and press enter; /help lists the commands, /exit or end of input quits"
    );
    let mut input = Input::new(o.history_file);
    while let Some(line) = input.line()? {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let text = match text.strip_prefix('/') {
            Some(escaped) if escaped.starts_with('/') => escaped,
            Some(command) => {
                match chat.command(command) {
                    Ok(Flow::Exit) => break,
                    Ok(Flow::Continue) => {}
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            None => text,
        };
        chat.messages.push(Message::new("user", text));
        let reply = reply(
            &mut chat,
            &template,
            &model,
            &mut session,
            &mut cached,
            (n_ctx, markers),
            format.as_ref(),
            (&interrupted, &idle),
        );
        match reply {
            Ok(text) => chat.messages.push(Message::new("assistant", text)),
            Err(e) => {
                chat.messages.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

/// Writes the model's reply to the conversation so far and returns its text; a timing line follows it.
#[allow(clippy::too_many_arguments)]
fn reply(
    chat: &mut Chat,
    template: &ChatTemplate,
    model: &Arc<fulcrum_core::Model>,
    session: &mut Session,
    cached: &mut Vec<u32>,
    (n_ctx, markers): (usize, &[&str]),
    format: Option<&crate::common::FormatSource>,
    (interrupted, idle): (&AtomicBool, &AtomicBool),
) -> CliResult<String> {
    let ids = prompt::tokenize(model, &template.render(&chat.messages, true)?);
    if ids.is_empty() {
        return Err("the conversation renders to no tokens".into());
    }
    if ids.len() >= n_ctx {
        return Err(format!(
            "the conversation ({} tokens) no longer fits the context of {n_ctx}; /reset to start over",
            ids.len()
        )
        .into());
    }
    let common = cached
        .iter()
        .zip(&ids)
        .take_while(|(a, b)| a == b)
        .count()
        .min(ids.len() - 1);
    session.truncate(common);
    cached.truncate(common);
    let mut sampler = Sampler::new(chat.config.clone())?;
    if let Some(format) = format {
        sampler.set_format(format.fresh());
    }
    let stdout = std::io::stdout();
    // Text that may start a turn marker is held back until it is decided.
    let (mut held, mut shown) = (String::new(), String::new());
    let mut ended_at_marker = false;
    interrupted.store(false, Ordering::SeqCst);
    idle.store(false, Ordering::SeqCst);
    let result = generation::decode(
        session,
        &mut sampler,
        cached,
        &ids[common..],
        chat.max_tokens,
        None,
        |piece| {
            held.push_str(piece);
            let mut keep = generation::held_back(&held, markers);
            if let Some(at) = markers.iter().filter_map(|m| held.find(m)).min() {
                held.truncate(at);
                keep = 0;
                ended_at_marker = true;
            }
            let out: String = held.drain(..held.len() - keep).collect();
            let mut lock = stdout.lock();
            let _ = lock.write_all(out.as_bytes());
            let _ = lock.flush();
            shown.push_str(&out);
            !ended_at_marker && !interrupted.load(Ordering::SeqCst)
        },
    );
    idle.store(true, Ordering::SeqCst);
    let generated = result?;
    if !ended_at_marker {
        shown.push_str(&held);
        print!("{held}");
    }
    println!();
    let stopped = interrupted.swap(false, Ordering::SeqCst);
    let tokens = generated.tokens.len();
    eprintln!(
        "[{}{tokens} tokens in {:.2} s, {:.1} tokens/s; prompt {} tokens in {:.2} s]",
        if stopped { "stopped: " } else { "" },
        generated.gen_seconds,
        tokens as f64 / generated.gen_seconds.max(1e-9),
        ids.len() - common,
        generated.prompt_seconds,
    );
    // The last sampled token was never evaluated; the next turn re-renders and re-evaluates from the prefix.
    cached.truncate(session.len());
    Ok(shown.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Chat {
        Chat {
            messages: vec![Message::new("user", "hi")],
            config: SamplerConfig::default(),
            max_tokens: 10,
        }
    }

    #[test]
    fn commands_change_the_chat_and_never_add_messages() {
        let mut c = chat();
        assert!(matches!(c.command("set temp 0.25"), Ok(Flow::Continue)));
        assert_eq!(c.config.temperature, 0.25);
        c.command("set max_tokens 7").unwrap();
        assert_eq!(c.max_tokens, 7);
        for bad in [
            "set temp hot",
            "set top_p 0",
            "set colour red",
            "set",
            "nope",
            "save",
        ] {
            if bad == "set" {
                assert!(c.command(bad).is_ok());
            } else {
                assert!(c.command(bad).is_err(), "{bad}");
            }
        }
        c.command("system Be brief.").unwrap();
        assert_eq!(c.messages[0], Message::new("system", "Be brief."));
        c.command("system Be terse.").unwrap();
        assert_eq!(c.messages.len(), 2);
        let file = std::env::temp_dir().join(format!("fulcrum-chat-{}.json", std::process::id()));
        c.command(&format!("save {}", file.display())).unwrap();
        c.command("reset").unwrap();
        assert_eq!(c.messages, vec![Message::new("system", "Be terse.")]);
        c.command(&format!("load {}", file.display())).unwrap();
        assert_eq!(c.messages[1], Message::new("user", "hi"));
        std::fs::write(&file, r#"[{"role": "wizard", "content": "x"}]"#).unwrap();
        assert!(c.command(&format!("load {}", file.display())).is_err());
        assert_eq!(c.messages.len(), 2, "a failed load keeps the conversation");
        let _ = std::fs::remove_file(file);
        assert!(matches!(c.command("exit"), Ok(Flow::Exit)));
    }
}
