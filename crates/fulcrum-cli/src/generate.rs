//! `fulcrum generate`: one prompt in, streamed text out; and the decoding loop `chat` shares.

use crate::common::{
    attention_json, check_threads, context_size, load_draft, load_model, AttentionArgs, CliResult,
    DraftType, SamplingArgs, DEFAULT_MODEL,
};
use fulcrum_core::{Model, Session};
use fulcrum_engine::sampler::Sampler;
use fulcrum_engine::spec::{SpecOptions, Speculation, Speculator};
use fulcrum_engine::{generation, prompt};
use serde_json::json;
use std::io::Write;

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
    /// Speculative decoding: off, lookup[:γ], draft:MODEL[,γ], early-exit:E,γ, exit-fsm:E, del or auto.
    #[arg(long, default_value = "off")]
    spec: Speculation,
    /// Draft model that `--spec auto` may use besides early exits and prompt lookup.
    #[arg(long)]
    draft: Option<String>,
    /// How the draft model's weights are held: q4_0 (re-quantized once into the model cache, if wider) or keep.
    #[arg(long, value_enum, default_value_t = DraftType::Q4_0)]
    draft_type: DraftType,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    format: crate::common::FormatArgs,
    #[command(flatten)]
    attention: AttentionArgs,
}

/// The speculative driver `--spec` asks for (none for `off`), with its draft model loaded.
fn speculator(
    args: &Args,
    model: &Model,
    sampler: &Sampler,
    n_ctx: usize,
    threads: usize,
) -> CliResult<Option<Speculator>> {
    if args.spec == Speculation::Off {
        return Ok(None);
    }
    let draft_name = args.spec.draft_model().or(args.draft.as_deref());
    let draft = match draft_name {
        Some(name) => Some(load_draft(name, args.draft_type, !args.json)?),
        None => None,
    };
    let spec = Speculator::new(
        args.spec.clone(),
        SpecOptions::default(),
        model,
        draft,
        sampler.config(),
        n_ctx,
        threads,
    )?;
    Ok(Some(spec))
}

/// The speculation statistics of `--json` output.
pub fn spec_json(spec: &Speculator) -> serde_json::Value {
    let stats = spec.final_stats();
    let per_arm: serde_json::Map<String, serde_json::Value> = stats
        .per_arm
        .iter()
        .map(|(arm, s)| {
            (
                arm.to_string(),
                json!({"rounds": s.rounds, "drafted": s.drafted, "accepted": s.accepted,
                       "acceptance": s.accepted as f64 / s.drafted.max(1) as f64}),
            )
        })
        .collect();
    let alpha: serde_json::Map<String, serde_json::Value> = stats
        .alpha
        .iter()
        .map(|(arm, a)| (arm.to_string(), json!(a)))
        .collect();
    let t = spec.timings();
    let ms = |v: Option<f64>| v.map(|v| v * 1e3);
    json!({
        "mode": spec.mode.to_string(),
        "cost_model_ms": {
            "layer_1": ms(t.layer.estimate(1)),
            "layer_5": ms(t.layer.estimate(5)),
            "head_1": ms(t.head.estimate(1)),
            "head_5": ms(t.head.estimate(5)),
            "draft_step": ms(t.draft_step.estimate(1)),
        },
        "rounds": stats.rounds,
        "plain_steps": stats.plain_steps,
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "mean_accepted": stats.mean_accepted(),
        "accepted_lengths": stats.accepted_lengths,
        "per_drafter": per_arm,
        "alpha": alpha,
        "shadow_rounds": stats.shadow_rounds,
        "shadow_ms": stats.shadow_seconds * 1e3,
    })
}

/// Runs `fulcrum generate`.
pub fn run(args: Args) -> CliResult {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read prompt file {}: {e}", path.display()))?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let model = load_model(&args.model, !args.json)?;
    let sampler_config = args.sampling.config_for(&model)?;
    let seed = sampler_config.seed;
    let mut sampler = Sampler::new(sampler_config)?;
    let format_started = std::time::Instant::now();
    if let Some(format) = args.format.compiled(&model)? {
        sampler.set_format(format.fresh());
    }
    let format_setup = format_started.elapsed().as_secs_f64();
    let n_ctx = context_size(&model, args.ctx)?;
    let text = prompt::user_prompt(&model, &prompt, args.system.as_deref(), args.raw)?;
    let prompt_ids = prompt::tokenize(&model, &text);
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
    let threads = check_threads(args.threads)?;
    let mut session = Session::new(
        model.clone(),
        n_ctx,
        threads,
        fulcrum_core::session::DEFAULT_BATCH,
    )?;
    session.set_delta(args.attention.decode_delta(model.config.n_layers)?)?;
    let mut speculator = speculator(&args, &model, &sampler, n_ctx, threads)?;
    let mut history = Vec::new();
    let stdout = std::io::stdout();
    let json = args.json;
    let result = generation::decode(
        &mut session,
        &mut sampler,
        &mut history,
        &prompt_ids,
        args.max_tokens,
        speculator.as_mut(),
        |piece| {
            if json {
                return true;
            }
            // A closed stdout (`| head`) ends the generation.
            let mut lock = stdout.lock();
            lock.write_all(piece.as_bytes()).is_ok() && lock.flush().is_ok()
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
            "finish_reason": result.finish_reason.as_str(),
            "seed": seed,
            "speculation": speculator.as_ref().map(spec_json),
            "attention": attention_json(args.attention.attention, session.attention_counts()),
            // The response format's cost: compiling the vocabulary and the format, then masks and advancing.
            "format": sampler.has_format().then(|| json!({
                "setup_ms": format_setup * 1e3,
                "mask_ms": sampler.format_seconds() * 1e3,
                "mask_share": sampler.format_seconds() / result.gen_seconds.max(1e-9),
                "failure": sampler.format_failure(),
            })),
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
            result.finish_reason.as_str()
        );
        if let Some(spec) = &speculator {
            let stats = spec.final_stats();
            eprintln!(
                "[speculation {}: {} rounds, {} of {} drafted tokens accepted ({:.2} per round), {} plain steps]",
                spec.mode,
                stats.rounds,
                stats.accepted,
                stats.drafted,
                stats.mean_accepted(),
                stats.plain_steps
            );
        }
    }
    Ok(())
}
