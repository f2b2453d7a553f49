//! `fulcrum bench spec`: speculative decoding against plain decoding, every drafter in one run, on a prompt set.

use crate::common::{check_threads, load_draft, load_model, CliResult, DraftType};
use fulcrum_core::{Model, Session};
use fulcrum_engine::sampler::{Sampler, SamplerConfig};
use fulcrum_engine::spec::{default_exits, Learned, SpecOptions, Speculation, Speculator};
use fulcrum_engine::{generation, prompt};
use serde_json::json;
use std::sync::Arc;

/// Arguments of `fulcrum bench spec`.
#[derive(clap::Args)]
pub struct Args {
    /// Target model.
    #[arg(long, short, default_value = "qwen2.5-coder-1.5b-instruct")]
    model: String,
    /// Draft model for `draft:` and `auto`.
    #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
    draft: String,
    /// How the draft model's weights are held: q4_0 (re-quantized once into the model cache, if wider) or keep.
    #[arg(long, value_enum, default_value_t = DraftType::Q4_0)]
    draft_type: DraftType,
    /// Prompts, one JSON object per line: {"name", "set", "prompt", "chat": bool} (bench/spec writes HumanEval's).
    #[arg(long)]
    prompts: std::path::PathBuf,
    /// Tokens generated per prompt (greedy; fewer if the model ends its answer).
    #[arg(long, short = 'n', default_value_t = 128)]
    n_gen: usize,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Prompts of each set used to pick the best static (exit, length), as LayerSkip picks it on a dev set.
    #[arg(long, default_value_t = 2)]
    grid_prompts: usize,
    /// Prompts (and generated tokens of each) for the per-layer acceptance table of target and draft; 0 skips it.
    #[arg(long, default_value_t = 2)]
    layer_prompts: usize,
    /// Modes to run, in order: any `--spec` value, or `static` (the grid's best early exit), `fsm` (γ±1 at its exit)
    /// and `draft` (the draft model, 4 tokens). Plain decoding (`off`) is always run first, as the baseline.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lookup,lookup:8,draft,static,fsm,del,auto"
    )]
    modes: Vec<String>,
    /// Start every prompt's speculator from nothing; by default each mode carries its timings and answer lengths
    /// from one prompt to the next, as a server or a chat session does.
    #[arg(long)]
    fresh: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One prompt of the set.
struct Prompt {
    name: String,
    set: String,
    ids: Vec<u32>,
}

/// What one mode did on one prompt.
struct Run {
    tokens: Vec<u32>,
    seconds: f64,
    drafted: usize,
    accepted: usize,
    rounds: usize,
    /// Per drafter: `arm rounds×accepted/drafted`, for the log.
    arms: String,
}

fn load_prompts(args: &Args, model: &Model) -> CliResult<Vec<Prompt>> {
    let text = std::fs::read_to_string(&args.prompts)
        .map_err(|e| format!("cannot read {}: {e}", args.prompts.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", args.prompts.display(), i + 1))?;
        let field = |k: &str| v[k].as_str().map(str::to_string);
        let prompt = field("prompt").ok_or(format!("line {}: no \"prompt\"", i + 1))?;
        let chat = v["chat"].as_bool().unwrap_or(false);
        let text = prompt::user_prompt(model, &prompt, None, !chat)?;
        prompts.push(Prompt {
            name: field("name").unwrap_or_else(|| format!("prompt{i}")),
            set: field("set").unwrap_or_else(|| "default".into()),
            ids: prompt::tokenize(model, &text),
        });
    }
    if prompts.is_empty() {
        return Err(format!("{} holds no prompts", args.prompts.display()).into());
    }
    Ok(prompts)
}

/// Greedy generation of up to `n` tokens (stopping at end of generation), timed after the prompt; the speculator
/// starts from `carry` (what the same mode learned on earlier prompts) and leaves what it learned there.
fn run_one(
    target: &Arc<Model>,
    draft: &Arc<Model>,
    mode: &Speculation,
    (prompt, n): (&[u32], usize),
    threads: usize,
    carry: &mut Option<Learned>,
) -> CliResult<Run> {
    let n_ctx = prompt.len() + n + 8;
    let greedy = SamplerConfig::greedy();
    let mut session = Session::new(target.clone(), n_ctx, threads, 512)?;
    let mut sampler = Sampler::new(greedy.clone())?;
    let mut spec = match mode {
        Speculation::Off => None,
        _ => Some(Speculator::new(
            mode.clone(),
            SpecOptions::default(),
            target,
            Some(draft.clone()),
            &greedy,
            n_ctx,
            threads,
        )?),
    };
    if let (Some(spec), Some(learned)) = (&mut spec, carry.take()) {
        spec.resume(learned);
    }
    let mut history = Vec::new();
    let generated = generation::decode(
        &mut session,
        &mut sampler,
        &mut history,
        prompt,
        n,
        spec.as_mut(),
        |_| true,
    )?;
    *carry = spec.as_ref().map(Speculator::learned);
    let stats = spec.map(|s| s.final_stats()).unwrap_or_default();
    Ok(Run {
        tokens: generated.tokens,
        // DEL's initialisation from the prompt runs in the first rounds, so it counts as generation time.
        seconds: generated.gen_seconds,
        drafted: stats.drafted,
        accepted: stats.accepted,
        rounds: stats.rounds,
        arms: stats
            .per_arm
            .iter()
            .map(|(arm, a)| format!(" {arm} {}×{}/{}", a.rounds, a.accepted, a.drafted))
            .collect(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Fraction of positions where each layer's early exit predicts the final layer's greedy token, teacher-forced on
/// `tokens` (prompt then greedy output): one value per exit 1..L−1.
fn layer_acceptance(
    model: &Arc<Model>,
    runs: &[(Vec<u32>, Vec<u32>)],
    threads: usize,
) -> CliResult<Vec<f64>> {
    let n_layers = model.config.n_layers;
    let (d, vocab) = (model.config.d_model, model.config.vocab_size);
    let exits: Vec<usize> = (1..n_layers).collect();
    let mut matched = vec![0usize; exits.len()];
    let mut total = 0usize;
    for (prompt, output) in runs {
        if output.len() < 2 {
            continue;
        }
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&output[..output.len() - 1]);
        let window = output.len();
        let mut session = Session::new(model.clone(), tokens.len() + 1, threads, 512)?;
        let mut captured = Vec::new();
        session.eval_last_capturing(&tokens, &exits, window, &mut captured)?;
        let window = captured[0].len() / d;
        let targets = &output[output.len() - window..];
        let per_chunk = session.hidden_capacity();
        for (i, rows) in captured.iter().enumerate() {
            for (c, chunk) in rows.chunks(d * per_chunk).enumerate() {
                session.load_hidden(chunk)?;
                let logits = session.classify_batch(chunk.len() / d);
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    let prediction = fulcrum_engine::sampler::argmax(row);
                    matched[i] += usize::from(prediction == targets[c * per_chunk + j]);
                }
            }
        }
        total += window;
    }
    Ok(matched
        .iter()
        .map(|&m| m as f64 / total.max(1) as f64)
        .collect())
}

/// Runs `fulcrum bench spec`.
pub fn run(args: Args) -> CliResult {
    let threads = check_threads(args.threads)?;
    let target = load_model(&args.model, !args.json)?;
    let draft = load_draft(&args.draft, args.draft_type, !args.json)?;
    fulcrum_engine::spec::check_vocabulary(&target, &draft)?;
    let prompts = load_prompts(&args, &target)?;
    let n_layers = target.config.n_layers;
    let log = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };

    // LayerSkip's static choice: the best (exit, length) of a small grid on the first prompts of each set.
    let mut dev: Vec<&Prompt> = Vec::new();
    for p in &prompts {
        if dev.iter().filter(|q| q.set == p.set).count() < args.grid_prompts {
            dev.push(p);
        }
    }
    let exits = default_exits(n_layers);
    let grid: Vec<Speculation> = exits[exits.len().saturating_sub(3)..]
        .iter()
        .flat_map(|&exit| [1, 3].map(|gamma| Speculation::EarlyExit { exit, gamma }))
        .collect();
    let mut best_static = (f64::MAX, grid[0].clone());
    let needs_grid = args.modes.iter().any(|m| m == "static" || m == "fsm");
    for mode in grid.iter().filter(|_| needs_grid) {
        let mut seconds = 0.0;
        for p in &dev {
            let one = (&p.ids[..], args.n_gen);
            seconds += run_one(&target, &draft, mode, one, threads, &mut None)?.seconds;
        }
        log(format!(
            "grid {mode}: {seconds:.2} s on {} dev prompts",
            dev.len()
        ));
        if seconds < best_static.0 {
            best_static = (seconds, mode.clone());
        }
    }
    let static_exit = match best_static.1 {
        Speculation::EarlyExit { exit, .. } => exit,
        _ => n_layers - 1,
    };

    let mut modes = vec![Speculation::Off];
    for name in &args.modes {
        modes.push(match name.as_str() {
            "static" => best_static.1.clone(),
            "fsm" => Speculation::ExitFsm { exit: static_exit },
            "draft" => format!("draft:{},4", args.draft).parse()?,
            other => other.parse()?,
        });
    }
    // runs[mode][prompt], measured prompt by prompt with every mode back to back, so that each speed-up compares runs
    // at most a minute apart (this host's speed drifts by ±10 % over the minutes a whole set takes).
    let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    let mut carries: Vec<Option<Learned>> = modes.iter().map(|_| None).collect();
    for p in &prompts {
        for ((mode, row), carry) in modes.iter().zip(runs.iter_mut()).zip(&mut carries) {
            if args.fresh {
                *carry = None;
            }
            let run = run_one(&target, &draft, mode, (&p.ids, args.n_gen), threads, carry)?;
            log(format!(
                "{mode} {}: {} tokens in {:.2} s ({:.2} t/s), {}/{} drafts accepted{}",
                p.name,
                run.tokens.len(),
                run.seconds,
                run.tokens.len() as f64 / run.seconds,
                run.accepted,
                run.drafted,
                run.arms
            ));
            row.push(run);
        }
    }

    let sets: Vec<String> = {
        let mut s: Vec<String> = prompts.iter().map(|p| p.set.clone()).collect();
        s.dedup();
        s
    };
    let mut table = Vec::new();
    if !args.json {
        println!(
            "{:<28} {:<10} {:>9} {:>9} {:>10} {:>9}",
            "mode", "set", "tok/s", "speed-up", "accepted", "lossless"
        );
    }
    for (mode, row) in modes.iter().zip(&runs) {
        for set in &sets {
            let pick: Vec<usize> = (0..prompts.len())
                .filter(|&i| &prompts[i].set == set)
                .collect();
            let tokens: usize = pick.iter().map(|&i| row[i].tokens.len()).sum();
            let seconds: f64 = pick.iter().map(|&i| row[i].seconds).sum();
            let ratios: Vec<f64> = pick
                .iter()
                .map(|&i| runs[0][i].seconds / row[i].seconds)
                .collect();
            let speedup = median(ratios);
            let (drafted, accepted, rounds) = pick.iter().fold((0, 0, 0), |acc, &i| {
                (
                    acc.0 + row[i].drafted,
                    acc.1 + row[i].accepted,
                    acc.2 + row[i].rounds,
                )
            });
            let lossless = pick.iter().all(|&i| row[i].tokens == runs[0][i].tokens);
            let acceptance = accepted as f64 / drafted.max(1) as f64;
            if !args.json {
                println!(
                    "{:<28} {:<10} {:>9.2} {:>8.2}× {:>9.0}% {:>9}",
                    mode.to_string(),
                    set,
                    tokens as f64 / seconds,
                    speedup,
                    acceptance * 100.0,
                    if lossless { "yes" } else { "NO" }
                );
            }
            table.push(json!({
                "mode": mode.to_string(), "set": set, "tokens": tokens, "seconds": seconds,
                "tokens_per_s": tokens as f64 / seconds, "median_speedup": speedup,
                "drafted": drafted, "accepted": accepted, "rounds": rounds,
                "mean_accepted_per_round": accepted as f64 / rounds.max(1) as f64,
                "lossless": lossless,
            }));
        }
    }

    // Per-layer acceptance of target and draft, teacher-forced on their own greedy outputs.
    let mut layers = serde_json::Map::new();
    if args.layer_prompts > 0 {
        let mut picked: Vec<usize> = Vec::new();
        for set in &sets {
            picked.extend(
                (0..prompts.len())
                    .filter(|&i| &prompts[i].set == set)
                    .take(args.layer_prompts.div_ceil(sets.len())),
            );
        }
        for (name, model) in [(&args.model, &target), (&args.draft, &draft)] {
            let mut pairs = Vec::new();
            for &i in &picked {
                let out = run_one(
                    model,
                    &draft,
                    &Speculation::Off,
                    (&prompts[i].ids, args.n_gen.min(64)),
                    threads,
                    &mut None,
                )?;
                pairs.push((prompts[i].ids.clone(), out.tokens));
            }
            let acc = layer_acceptance(model, &pairs, threads)?;
            if !args.json {
                println!("\nper-layer acceptance of {name} (exit after E layers: share of positions agreeing with the last layer)");
                for (e, a) in acc.iter().enumerate() {
                    println!("  E={:<3} {:>5.1}%", e + 1, a * 100.0);
                }
            }
            layers.insert(name.clone(), json!(acc));
        }
    }
    if args.json {
        println!(
            "{}",
            json!({
                "model": args.model, "draft": args.draft, "n_gen": args.n_gen, "threads": threads,
                "prompts": prompts.len(), "static_pick": best_static.1.to_string(),
                "results": table, "layer_acceptance": layers,
            })
        );
    }
    Ok(())
}
