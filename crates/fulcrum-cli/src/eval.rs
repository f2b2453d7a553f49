//! `fulcrum eval ppl`: perplexity of a text, computed as llama.cpp's perplexity tool does.

use crate::common::{check_threads, context_size, load_model, CliResult, DEFAULT_MODEL};
use fulcrum_core::Session;
use fulcrum_engine::eval;
use serde_json::json;
use std::io::Write;

/// Arguments of `fulcrum eval`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Perplexity over windows of --ctx tokens, scoring the second half of each window.
    Ppl(PplArgs),
}

/// Arguments of `fulcrum eval ppl`.
#[derive(clap::Args)]
pub struct PplArgs {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Text file to evaluate.
    #[arg(long, short)]
    file: std::path::PathBuf,
    /// Window length in tokens.
    #[arg(long, short, default_value_t = 512)]
    ctx: usize,
    /// Stop after this many windows (default: all).
    #[arg(long)]
    chunks: Option<usize>,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `fulcrum eval`.
pub fn run(args: Args) -> CliResult {
    match args.what {
        What::Ppl(a) => perplexity(a),
    }
}

fn perplexity(args: PplArgs) -> CliResult {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    if args.chunks == Some(0) {
        return Err("--chunks must be at least 1".into());
    }
    if args.ctx < 16 {
        return Err("--ctx must be at least 16".into());
    }
    let model = load_model(&args.model, !args.json)?;
    let n_ctx = context_size(&model, Some(args.ctx))?;
    let tok = &model.tokenizer;
    // As llama.cpp: BOS per the model's flag, special-token text left as text.
    let tokens = tok.encode(&text, true, false);
    let available = tokens.len() / n_ctx;
    if available == 0 {
        return Err(format!(
            "the text has {} tokens; it needs at least --ctx {n_ctx}",
            tokens.len()
        )
        .into());
    }
    let n_chunks = args.chunks.map_or(available, |c| c.min(available));
    let mut session = Session::new(
        model.clone(),
        n_ctx,
        check_threads(args.threads)?,
        n_ctx.min(512),
    )?;
    let started = std::time::Instant::now();
    let json = args.json;
    let result = eval::perplexity(&mut session, &tokens, n_chunks, |chunk, ppl| {
        if !json {
            eprint!("[{chunk}]{ppl:.4},");
            let _ = std::io::stderr().flush();
        }
    })?;
    let (ppl, plus_minus, count) = (result.ppl, result.plus_minus, result.tokens_scored);
    if args.json {
        println!(
            "{}",
            json!({"ppl": ppl, "plus_minus": plus_minus, "chunks": n_chunks, "ctx": n_ctx, "tokens_scored": count})
        );
    } else {
        eprintln!();
        println!(
            "PPL = {ppl:.4} +/- {plus_minus:.5} ({n_chunks} chunks of {n_ctx} tokens, {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
