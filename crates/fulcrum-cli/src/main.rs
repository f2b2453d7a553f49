//! `fulcrum`: pull, inspect, run, chat with, benchmark, evaluate and re-quantize GGUF models on the CPU.

mod bench;
mod bench_spec;
mod chat;
mod common;
mod eval;
mod generate;
mod info;
mod kernels;
mod pull;
mod quantize;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Fulcrum: an LLM inference engine for GGUF models.
#[derive(Parser)]
#[command(name = "fulcrum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a default model into the cache (checks its sha256).
    Pull(pull::Args),
    /// Show a model's architecture, sizes, tensor types, tokenizer and template.
    Info(info::Args),
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::Args),
    /// Chat interactively, keeping the conversation's history.
    Chat(chat::Args),
    /// Chat with a model named first, fetching it if needed (as `ollama run`).
    Run(chat::RunArgs),
    /// Measure prompt processing and generation speed (like llama-bench's pp512 and tg128).
    Bench(bench::Args),
    /// Evaluate a model (perplexity).
    Eval(eval::Args),
    /// Re-quantize a model's weights to NF4, Q8_0 or Q4_0 into a new GGUF file.
    Quantize(quantize::Args),
    /// Serve the OpenAI-compatible HTTP API with continuous batching, paged KV and prefix caching.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_closed_pipe();
    }
    // Every command but pull may run kernels: the tile choice must come first.
    if !matches!(cli.command, Command::Pull(_)) {
        kernels::configure();
    }
    let result = match cli.command {
        Command::Pull(a) => pull::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Run(a) => chat::run_model(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lets a closed stdout (`fulcrum generate … | head`) end the process quietly, as it ends other Unix tools, instead of
/// a panic on the failed write. The server keeps Rust's default (the signal ignored), so a client's closed socket is
/// an error on that connection only.
fn quiet_on_closed_pipe() {
    // SAFETY: called before any other thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
