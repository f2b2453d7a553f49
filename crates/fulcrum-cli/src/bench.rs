//! `fulcrum bench`: prompt-processing and generation speed, measured the way llama-bench does.

use crate::common::{
    attention_json, check_threads, load_model, CliResult, DeltaArgs, DEFAULT_MODEL,
};
use fulcrum_core::roofline::{self, Bandwidth, DecodeBytes};
use fulcrum_core::{AttentionMode, Session};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// Arguments of `fulcrum bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Prompt length of the prompt-processing test (0 skips it).
    #[arg(long, short = 'p', default_value_t = 512)]
    n_prompt: usize,
    /// Tokens of the generation test (0 skips it).
    #[arg(long, short = 'n', default_value_t = 128)]
    n_gen: usize,
    /// Tokens already in the context before each test (llama-bench's -d).
    #[arg(long, short = 'd', default_value_t = 0)]
    depth: usize,
    /// Repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 5)]
    reps: usize,
    /// Buffer of the streaming-read bandwidth test run after a generation test, in MiB (0 skips it).
    #[arg(long, default_value_t = 512)]
    bandwidth_mib: usize,
    /// Run the prompt-processing test with every row rounded as if alone, as serving and speculative verification
    /// do (slower than llama.cpp's batch rounding, which `pp` otherwise follows).
    #[arg(long)]
    invariant: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Measure the tile kernels' instruction sets for this CPU (per kernel family and batch size), store the choice
    /// in the model cache's kernels.json and show the figures, instead of benchmarking a model.
    #[arg(long)]
    kernels: bool,
    /// Attention of the generation test: dense, delta, or both (dense,delta), each decoded from the same prefilled
    /// depth.
    #[arg(long, default_value = "dense")]
    attention: String,
    #[command(flatten)]
    delta: DeltaArgs,
    #[command(subcommand)]
    what: Option<Benchmark>,
}

/// Benchmarks other than the default speed test.
#[derive(clap::Subcommand)]
enum Benchmark {
    /// Speculative decoding: every drafter against plain decoding on a prompt set (see bench/spec).
    Spec(crate::bench_spec::Args),
}

/// Passes of the bandwidth test (its median is reported).
const BANDWIDTH_PASSES: usize = 7;

/// The generation test's memory roofline: bytes read per token, achieved and measured bandwidth.
struct Roofline {
    test: String,
    bytes: DecodeBytes,
    tokens_per_s: f64,
    measured: Option<Bandwidth>,
}

impl Roofline {
    fn achieved_bytes_per_s(&self) -> f64 {
        self.bytes.total() * self.tokens_per_s
    }

    fn fraction(&self) -> Option<f64> {
        self.measured
            .as_ref()
            .map(|m| self.achieved_bytes_per_s() / m.bytes_per_s)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "weight_bytes_per_token": self.bytes.weights,
            "kv_bytes_per_token": self.bytes.kv,
            "bytes_per_token": self.bytes.total(),
            "achieved_gb_s": self.achieved_bytes_per_s() / 1e9,
            "measured_read_gb_s": self.measured.as_ref().map(|m| m.bytes_per_s / 1e9),
            "fraction_of_measured": self.fraction(),
        })
    }

    fn line(&self) -> String {
        let mut line = format!(
            "roofline {}: {:.1} MB weights + {:.2} MB KV read per token × {:.2} t/s = {:.2} GB/s",
            self.test,
            self.bytes.weights as f64 / 1e6,
            self.bytes.kv / 1e6,
            self.tokens_per_s,
            self.achieved_bytes_per_s() / 1e9
        );
        if let (Some(m), Some(f)) = (&self.measured, self.fraction()) {
            line += &format!(
                "; streaming read {:.2} GB/s ({} MiB, median of {}) → {:.0} % of measured",
                m.bytes_per_s / 1e9,
                m.buffer_bytes >> 20,
                m.passes.len(),
                100.0 * f
            );
        }
        line
    }
}

/// The process's peak resident set so far (VmHWM), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Mean and sample standard deviation.
fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// A deterministic stream of token ids in `0..vocab` (llama-bench feeds random tokens too).
struct TokenStream(u64, u32);

impl TokenStream {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % self.1 as u64) as u32
    }
}

/// Runs `fulcrum bench`.
pub fn run(args: Args) -> CliResult {
    if let Some(Benchmark::Spec(spec)) = args.what {
        return crate::bench_spec::run(spec);
    }
    if args.kernels {
        return crate::kernels::bench(args.json);
    }
    if args.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let model = load_model(&args.model, !args.json)?;
    let modes = args
        .delta
        .modes("attention", &args.attention, model.config.n_layers)?;
    let vocab = model.config.vocab_size as u32;
    let n_ctx = args
        .depth
        .saturating_add(args.n_prompt.max(args.n_gen))
        .saturating_add(1);
    if n_ctx > model.config.context_length {
        return Err(format!(
            "depth + test length {n_ctx} exceeds the model's context of {}",
            model.config.context_length
        )
        .into());
    }
    let batch = args.n_prompt.max(args.depth).clamp(1, 512);
    let mut session = Session::new(model.clone(), n_ctx, check_threads(args.threads)?, batch)?;
    let threads = session.pool.n_threads();
    let n_layers = model.config.n_layers;
    let mut stream = TokenStream(42, vocab);
    let depth_tokens: Vec<u32> = (0..args.depth).map(|_| stream.next()).collect();
    // The depth is evaluated once; later tests rewind to it (llama-bench restores a saved state the same way).
    let mut prefilled = false;
    let mut prepare = |session: &mut Session| -> CliResult {
        if !prefilled {
            session.truncate(0);
            if !depth_tokens.is_empty() {
                session.eval_last(&depth_tokens)?;
            }
            prefilled = true;
        }
        session.truncate(depth_tokens.len());
        Ok(())
    };
    let suffix = if args.depth > 0 {
        format!(" @ d{}", args.depth)
    } else {
        String::new()
    };
    let mut results = Vec::new();
    if args.n_prompt > 0 {
        let tokens: Vec<u32> = (0..args.n_prompt).map(|_| stream.next()).collect();
        let mut rates = Vec::new();
        for rep in 0..=args.reps {
            prepare(&mut session)?;
            let started = Instant::now();
            if args.invariant {
                let start = session.len();
                for chunk in tokens.chunks(batch) {
                    session.embed(chunk)?;
                    session.run_layers(0..n_layers, session.len(), chunk.len())?;
                    session.set_len(session.len() + chunk.len());
                }
                debug_assert_eq!(session.len(), start + tokens.len());
                session.classify(1);
            } else {
                session.eval_last(&tokens)?;
            }
            let rate = tokens.len() as f64 / started.elapsed().as_secs_f64();
            if rep > 0 {
                rates.push(rate); // repetition 0 warms caches and pages in the weights
            }
        }
        let rounding = if args.invariant { " invariant" } else { "" };
        results.push((format!("pp{}{suffix}{rounding}", args.n_prompt), rates));
    }
    let mut attention = BTreeMap::new();
    for (mode, delta) in modes.iter().filter(|_| args.n_gen > 0) {
        let mut rates = Vec::new();
        session.set_delta(delta.clone())?;
        let counted = session.attention_counts();
        // Every mode decodes the same tokens.
        let mut stream = TokenStream(7, vocab);
        for rep in 0..=args.reps {
            prepare(&mut session)?;
            let mut token = model.tokenizer.bos().unwrap_or(0);
            let started = Instant::now();
            for _ in 0..args.n_gen {
                session.eval_last(&[token])?;
                token = stream.next();
            }
            let rate = args.n_gen as f64 / started.elapsed().as_secs_f64();
            if rep > 0 {
                rates.push(rate);
            }
        }
        session.set_delta(None)?;
        let name = match mode {
            AttentionMode::Dense => format!("tg{}{suffix}", args.n_gen),
            AttentionMode::Delta => format!("tg{}{suffix} delta", args.n_gen),
        };
        let (a, c) = session.attention_counts();
        attention.insert(
            name.clone(),
            attention_json(*mode, (a - counted.0, c - counted.1)),
        );
        results.push((name, rates));
    }
    // Peak memory of the tests themselves, before the bandwidth test's buffer.
    let peak_rss = peak_rss_bytes();
    let roofline = results
        .iter()
        .find(|(test, _)| test.starts_with("tg"))
        .map(|(test, rates)| Roofline {
            test: test.clone(),
            bytes: roofline::decode_bytes(&model.config, &model.weights, args.depth, args.n_gen),
            tokens_per_s: mean_stddev(rates).0,
            measured: (args.bandwidth_mib > 0).then(|| {
                roofline::read_bandwidth(
                    &session.pool,
                    args.bandwidth_mib.saturating_mul(1 << 20),
                    BANDWIDTH_PASSES,
                )
            }),
        });
    if args.json {
        let out = json!({
            "model": model.path.display().to_string(),
            "threads": threads,
            "kernels": fulcrum_core::ops::simd_level(),
            "tiles": crate::kernels::tiles_json(),
            "cpu": crate::kernels::cpu_name(),
            "peak_rss_bytes": peak_rss,
            "kv_cache_bytes": session.kv.bytes(),
            "results": results.iter().map(|(test, rates)| {
                let (mean, stddev) = mean_stddev(rates);
                let mut result = json!({"test": test, "tokens_per_s": {"mean": mean, "stddev": stddev}, "samples": rates});
                if let Some(r) = roofline.as_ref().filter(|r| &r.test == test) {
                    result["roofline"] = r.to_json();
                }
                if let Some(a) = attention.get(test) {
                    result["attention"] = a.clone();
                }
                result
            }).collect::<Vec<_>>(),
            "read_bandwidth": roofline.as_ref().and_then(|r| r.measured.as_ref()).map(|m| json!({
                "gb_s": m.bytes_per_s / 1e9,
                "buffer_bytes": m.buffer_bytes,
                "threads": threads,
                "passes_gb_s": m.passes.iter().map(|p| p / 1e9).collect::<Vec<_>>(),
            })),
        });
        println!("{out}");
    } else {
        println!("| model | threads | test | t/s |");
        println!("|---|---|---|---|");
        let name = model
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for (test, rates) in &results {
            let (mean, stddev) = mean_stddev(rates);
            println!("| {name} | {threads} | {test} | {mean:.2} ± {stddev:.2} |");
        }
        if let Some(r) = &roofline {
            println!("\n{}", r.line());
        }
    }
    Ok(())
}
