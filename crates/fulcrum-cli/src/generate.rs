//! `fulcrum generate`: one prompt in, streamed text out; and the decoding loop `chat` shares.

use crate::common::{
    chat_template, check_threads, context_size, load_model, tokenize_prompt, CliResult,
    SamplingArgs, DEFAULT_MODEL,
};
use fulcrum_core::tokenizer::StreamDecoder;
use fulcrum_core::{Model, Session};
use fulcrum_engine::chat::Message;
use fulcrum_engine::sampler::Sampler;
use serde_json::json;
use std::io::Write;
use std::time::Instant;

/// Arguments of `fulcrum generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// The prompt.
    #[arg(
        long,
        short,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// System message (chat-template models only).
    #[arg(long)]
    system: Option<String>,
    /// Stop after this many generated tokens.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (default: 4096 or the model's, whichever is smaller).
    #[arg(long, short)]
    ctx: Option<usize>,
    /// Skip the chat template: tokenize the prompt as is (BOS per the model, special-token text parsed).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (prompt and generated token ids, text, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// What one generation produced.
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub prompt_seconds: f64,
    pub gen_seconds: f64,
    /// "stop" (end-of-generation token) or "length" (token limit or full context).
    pub finish_reason: &'static str,
}

/// Evaluates `new_tokens` after what `session` holds, then samples up to `max_tokens` tokens, passing each piece of
/// complete UTF-8 text to `on_text`. `history` holds every token in the session, for the repetition penalty.
pub fn decode_loop(
    session: &mut Session,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
    new_tokens: &[u32],
    max_tokens: usize,
    mut on_text: impl FnMut(&str),
) -> CliResult<Generation> {
    let model = session.model.clone();
    let tok = &model.tokenizer;
    let started = Instant::now();
    let mut logits = session.eval_last(new_tokens)?.to_vec();
    history.extend_from_slice(new_tokens);
    let prompt_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut decoder = StreamDecoder::new();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        prompt_seconds,
        gen_seconds: 0.0,
        finish_reason: "length",
    };
    while out.tokens.len() < max_tokens {
        let id = sampler.sample(&logits, history);
        out.tokens.push(id);
        history.push(id);
        if tok.is_eog(id) {
            out.finish_reason = "stop";
            break;
        }
        let piece = decoder.push(tok, id);
        if !piece.is_empty() {
            on_text(&piece);
            out.text.push_str(&piece);
        }
        if out.tokens.len() == max_tokens || session.len() >= session.n_ctx() {
            break;
        }
        logits.copy_from_slice(session.eval_last(&[id])?);
    }
    let rest = decoder.flush();
    if !rest.is_empty() {
        on_text(&rest);
        out.text.push_str(&rest);
    }
    out.gen_seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// The prompt text to tokenize: the chat template applied to a user message unless `raw` or the model has none.
fn prompt_text(model: &Model, prompt: &str, system: Option<&str>, raw: bool) -> CliResult<String> {
    if raw || model.chat_template().is_none() {
        return Ok(prompt.to_string());
    }
    let template = chat_template(model)?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message {
            role: "system".into(),
            content: s.into(),
        });
    }
    messages.push(Message {
        role: "user".into(),
        content: prompt.into(),
    });
    Ok(template.render(&messages, true)?)
}

/// Runs `fulcrum generate`.
pub fn run(args: Args) -> CliResult {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read prompt file {}: {e}", path.display()))?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let sampler_config = args.sampling.config()?;
    let seed = sampler_config.seed;
    let mut sampler = Sampler::new(sampler_config)?;
    let model = load_model(&args.model, !args.json)?;
    let n_ctx = context_size(&model, args.ctx)?;
    let text = prompt_text(&model, &prompt, args.system.as_deref(), args.raw)?;
    let prompt_ids = tokenize_prompt(&model, &text);
    if prompt_ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    if prompt_ids.len() >= n_ctx {
        return Err(format!(
            "the prompt has {} tokens but the context holds {n_ctx}; shorten it or raise --ctx (the model allows up to {})",
            prompt_ids.len(),
            model.config.context_length
        )
        .into());
    }
    let mut session = Session::new(
        model.clone(),
        n_ctx,
        check_threads(args.threads)?,
        fulcrum_core::session::DEFAULT_BATCH,
    )?;
    let mut history = Vec::new();
    let stdout = std::io::stdout();
    let json = args.json;
    let result = decode_loop(
        &mut session,
        &mut sampler,
        &mut history,
        &prompt_ids,
        args.max_tokens,
        |piece| {
            if !json {
                let mut lock = stdout.lock();
                let _ = lock.write_all(piece.as_bytes());
                let _ = lock.flush();
            }
        },
    )?;
    let prompt_tps = prompt_ids.len() as f64 / result.prompt_seconds.max(1e-9);
    let gen_tps = result.tokens.len() as f64 / result.gen_seconds.max(1e-9);
    if json {
        let out = json!({
            "model": model.path.display().to_string(),
            "prompt_tokens": prompt_ids,
            "tokens": result.tokens,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "seed": seed,
            "timings": {
                "prompt_tokens_per_s": prompt_tps,
                "gen_tokens_per_s": gen_tps,
                "prompt_ms": result.prompt_seconds * 1e3,
                "gen_ms": result.gen_seconds * 1e3,
            },
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "\n[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, finish: {}]",
            prompt_ids.len(),
            prompt_tps,
            result.tokens.len(),
            gen_tps,
            result.finish_reason
        );
    }
    Ok(())
}
