//! `fulcrum chat`: an interactive conversation that keeps its history (and reuses its KV cache between turns).

use crate::common::{
    check_threads, context_size, load_model, CliResult, SamplingArgs, DEFAULT_MODEL,
};
use fulcrum_core::Session;
use fulcrum_engine::chat::Message;
use fulcrum_engine::sampler::Sampler;
use fulcrum_engine::{generation, prompt};
use std::io::{BufRead, Write};

/// Arguments of `fulcrum chat`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
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
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    format: crate::common::FormatArgs,
    #[command(flatten)]
    attention: crate::common::AttentionArgs,
}

/// Runs `fulcrum chat`: reads user turns from stdin until end of input or `/exit`.
pub fn run(args: Args) -> CliResult {
    let model = load_model(&args.model, true)?;
    let mut sampler = Sampler::new(args.sampling.config_for(&model)?)?;
    // Every reply follows the format from its start.
    let format = args.format.compiled(&model)?;
    let n_ctx = context_size(&model, args.ctx)?;
    let template = prompt::chat_template(&model)?;
    if template.is_fallback() {
        eprintln!("(this model has no chat template; using a plain 'role: text' format)");
    }
    let mut session = Session::new(
        model.clone(),
        n_ctx,
        check_threads(args.threads)?,
        fulcrum_core::session::DEFAULT_BATCH,
    )?;
    session.set_delta(args.attention.decode_delta(model.config.n_layers)?)?;
    let mut messages: Vec<Message> = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::new("system", s.clone()));
    }
    // Tokens currently in the session's KV cache, to reuse the common prefix of the next turn.
    let mut cached: Vec<u32> = Vec::new();
    eprintln!(
        "type a message and press enter; /reset clears the history, /exit or end of input quits"
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", text.to_string()));
        let ids = prompt::tokenize(&model, &template.render(&messages, true)?);
        if ids.is_empty() {
            messages.pop();
            eprintln!("error: the conversation renders to no tokens");
            continue;
        }
        if ids.len() >= n_ctx {
            messages.pop();
            eprintln!("error: the conversation ({} tokens) no longer fits the context of {n_ctx}; /reset to start over", ids.len());
            continue;
        }
        let common = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        session.truncate(common);
        cached.truncate(common);
        if let Some(format) = &format {
            sampler.set_format(format.fresh());
        }
        let stdout = std::io::stdout();
        let reply = generation::decode(
            &mut session,
            &mut sampler,
            &mut cached,
            &ids[common..],
            args.max_tokens,
            None,
            |piece| {
                let mut out = stdout.lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            },
        )?;
        println!();
        // The last sampled token was never evaluated; the next turn re-renders and re-evaluates from the prefix.
        cached.truncate(session.len());
        messages.push(Message::new("assistant", reply.text.trim().to_string()));
    }
    Ok(())
}
