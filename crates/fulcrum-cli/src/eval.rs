//! `fulcrum eval ppl`: perplexity of a text, computed as llama.cpp's perplexity tool does, or scored by decode
//! steps over long windows; `fulcrum eval needle`: a needle-in-a-haystack set. Both compare dense attention with
//! DELTA in one run.

use crate::common::{check_threads, context_size, load_model, CliResult, DeltaArgs, DEFAULT_MODEL};
use fulcrum_core::AttentionMode;
use fulcrum_core::Session;
use fulcrum_engine::eval;
use fulcrum_engine::eval::{needle, tail};
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
    /// Perplexity over windows of --ctx tokens, scoring the second half of each window (or, with --decode-tail,
    /// its last tokens one decode step at a time, under each of --attention).
    Ppl(PplArgs),
    /// Needle in a haystack: a fact hidden at several depths of long prompts, a question at the end, the greedy
    /// answer checked by string match; accuracy per length and depth under each of --attention.
    Needle(NeedleArgs),
}

/// Arguments of `fulcrum eval needle`.
#[derive(clap::Args)]
pub struct NeedleArgs {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, default_value = "4096,8192,16384")]
    lengths: String,
    /// Depths of the fact, as fractions of the haystack, comma-separated.
    #[arg(long, default_value = "0.1,0.3,0.5,0.7,0.9")]
    depths: String,
    /// Attention modes to answer under, comma-separated, each from the same prefilled prompt.
    #[arg(long, default_value = "dense,delta")]
    attention: String,
    #[command(flatten)]
    delta: DeltaArgs,
    /// Most tokens of an answer.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
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
    /// Score each window's last N tokens by decode steps (its head prefilled densely), under each of --attention.
    #[arg(long, value_name = "N")]
    decode_tail: Option<usize>,
    /// With --decode-tail: attention modes to score under, comma-separated, from the same prefilled head.
    #[arg(long, default_value = "dense,delta")]
    attention: String,
    #[command(flatten)]
    delta: DeltaArgs,
}

/// Runs `fulcrum eval`.
pub fn run(args: Args) -> CliResult {
    match args.what {
        What::Ppl(a) if a.decode_tail.is_some() => decode_scored(a),
        What::Ppl(a) => perplexity(a),
        What::Needle(a) => needle_set(a),
    }
}

/// Comma-separated numbers of `flag`.
fn list<T: std::str::FromStr>(flag: &str, text: &str) -> CliResult<Vec<T>> {
    text.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| format!("--{flag}: '{}' is not a number", x.trim()).into())
        })
        .collect()
}

fn needle_set(args: NeedleArgs) -> CliResult {
    let lengths: Vec<usize> = list("lengths", &args.lengths)?;
    let depths: Vec<f64> = list("depths", &args.depths)?;
    if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        return Err(format!("--depths: {d} is outside 0 to 1").into());
    }
    if lengths.iter().any(|&l| l < 64) {
        return Err("--lengths: each length must be at least 64 tokens".into());
    }
    let model = load_model(&args.model, !args.json)?;
    let modes = args
        .delta
        .modes("attention", &args.attention, model.config.n_layers)?;
    let longest = lengths.iter().copied().max().unwrap_or(0) + args.max_tokens + 64;
    let n_ctx = context_size(&model, Some(longest))?;
    let mut session = Session::new(model.clone(), n_ctx, check_threads(args.threads)?, 512)?;
    let configs: Vec<_> = modes.iter().map(|(_, c)| c.clone()).collect();
    let haystack = needle::haystack_text();
    let mut rows = Vec::new();
    let mut index = 0;
    for &length in &lengths {
        for &depth in &depths {
            let case = needle::case(&model, &haystack, length, depth, index)?;
            index += 1;
            let started = std::time::Instant::now();
            let answers = needle::answer(&mut session, &case, &configs, args.max_tokens)?;
            for ((mode, _), a) in modes.iter().zip(&answers) {
                if !args.json {
                    eprintln!(
                        "[{length} tokens ({}), depth {depth:.2}, {mode}] {} {:?}",
                        case.prompt.len(),
                        if a.found { "found" } else { "MISSED" },
                        a.text.trim()
                    );
                }
                rows.push(json!({
                    "length": length, "prompt_tokens": case.prompt.len(), "depth": depth, "mode": mode.to_string(),
                    "key": case.key, "expected": case.answer, "answer": a.text, "found": a.found,
                    "attended_tokens": a.attended, "context_tokens": a.context,
                }));
            }
            if !args.json {
                eprintln!("  ({:.1} s)", started.elapsed().as_secs_f64());
            }
        }
    }
    let accuracy = |mode: AttentionMode, length: Option<usize>| {
        let picked: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["mode"] == mode.to_string() && length.is_none_or(|l| r["length"] == l))
            .collect();
        let found = picked.iter().filter(|r| r["found"] == true).count();
        found as f64 / picked.len().max(1) as f64
    };
    let summary: Vec<serde_json::Value> = modes
        .iter()
        .map(|(mode, _)| {
            let per_length: serde_json::Map<String, serde_json::Value> = lengths
                .iter()
                .map(|&l| (l.to_string(), json!(accuracy(*mode, Some(l)))))
                .collect();
            json!({"mode": mode.to_string(), "accuracy": accuracy(*mode, None), "by_length": per_length})
        })
        .collect();
    if args.json {
        println!(
            "{}",
            json!({"model": model.path.display().to_string(), "cases": rows, "summary": summary})
        );
    } else {
        println!(
            "| mode | {} | all |",
            lengths
                .iter()
                .map(|l| format!("{l} tokens"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}---|", "---|".repeat(lengths.len()));
        for (mode, _) in &modes {
            let cells: Vec<String> = lengths
                .iter()
                .map(|&l| format!("{:.0} %", 100.0 * accuracy(*mode, Some(l))))
                .collect();
            println!(
                "| {mode} | {} | {:.0} % |",
                cells.join(" | "),
                100.0 * accuracy(*mode, None)
            );
        }
    }
    Ok(())
}

fn decode_scored(args: PplArgs) -> CliResult {
    let tail_len = args.decode_tail.unwrap_or(0);
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let model = load_model(&args.model, !args.json)?;
    let n_ctx = context_size(&model, Some(args.ctx))?;
    if tail_len == 0 || tail_len + 2 > n_ctx {
        return Err(format!(
            "--decode-tail must be between 1 and --ctx − 2 ({})",
            n_ctx - 2
        )
        .into());
    }
    let modes = args
        .delta
        .modes("attention", &args.attention, model.config.n_layers)?;
    let (tokens, n_chunks) = windows(&model, &text, n_ctx, args.chunks)?;
    let mut session = Session::new(model.clone(), n_ctx, check_threads(args.threads)?, 512)?;
    let configs: Vec<_> = modes.iter().map(|(_, c)| c.clone()).collect();
    let json_out = args.json;
    let started = std::time::Instant::now();
    let results = tail::decode_scored(
        &mut session,
        &tokens,
        tail_len,
        n_chunks,
        &configs,
        |chunk, running| {
            if !json_out {
                let r: Vec<String> = running.iter().map(|p| format!("{p:.4}")).collect();
                eprint!("[{chunk}]{},", r.join("/"));
                let _ = std::io::stderr().flush();
            }
        },
    )?;
    if json_out {
        let per: Vec<serde_json::Value> = modes
            .iter()
            .zip(&results)
            .map(|((m, _), r)| json!({"mode": m.to_string(), "ppl": r.ppl, "plus_minus": r.plus_minus}))
            .collect();
        println!(
            "{}",
            json!({"ctx": n_ctx, "decode_tail": tail_len, "chunks": n_chunks, "tokens_scored": results[0].tokens_scored, "modes": per})
        );
    } else {
        eprintln!();
        for ((mode, _), r) in modes.iter().zip(&results) {
            println!(
                "{mode}: PPL = {:.4} +/- {:.5} (last {tail_len} tokens of {n_chunks} windows of {n_ctx}, decode-scored)",
                r.ppl, r.plus_minus
            );
        }
        eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The text's tokens and how many whole windows of `n_ctx` to score (at most `chunks`). As llama.cpp: BOS per the
/// model's flag, special-token text left as text.
fn windows(
    model: &fulcrum_core::Model,
    text: &str,
    n_ctx: usize,
    chunks: Option<usize>,
) -> CliResult<(Vec<u32>, usize)> {
    let tokens = model.tokenizer.encode(text, true, false);
    let available = tokens.len() / n_ctx;
    if available == 0 {
        return Err(format!(
            "the text has {} tokens; it needs at least --ctx {n_ctx}",
            tokens.len()
        )
        .into());
    }
    let n_chunks = chunks.map_or(available, |c| c.min(available));
    Ok((tokens, n_chunks))
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
    let (tokens, n_chunks) = windows(&model, &text, n_ctx, args.chunks)?;
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
