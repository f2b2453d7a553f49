//! Pieces shared by the subcommands: loading a model by name or path, sampling flags.

use clap::Args as ClapArgs;
use fulcrum_core::{AttentionMode, DeltaConfig, Model};
use fulcrum_engine::constraint::{Constraint, ConstraintFactory, ConstraintSpec};
use fulcrum_engine::sampler::{Format, SamplerConfig};
use fulcrum_models as models;
use fulcrum_models::draft::{draft_weights, DraftWeights};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use fulcrum_models::draft::DraftType;

/// A boxed error: subcommands report anything the libraries return.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";

/// Resolves a model name or path (pulling a known model on first use) and loads it.
pub fn load_model(name_or_path: &str, verbose: bool) -> CliResult<Arc<Model>> {
    load_file(&models::resolve(name_or_path, true)?, verbose)
}

/// Loads the model file at `path`, saying so if `verbose`.
fn load_file(path: &Path, verbose: bool) -> CliResult<Arc<Model>> {
    let started = Instant::now();
    let model = Model::load(path)?;
    if verbose {
        eprintln!(
            "loaded {} ({}, {} layers) in {:.0} ms",
            path.display(),
            model.config.arch_name,
            model.config.n_layers,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(Arc::new(model))
}

/// Loads the draft model `name_or_path`, held as `ty` says (`fulcrum_models::draft`). A re-quantized copy that
/// cannot be written (a read-only cache, a full disk) leaves the file's own weights, with a warning.
pub fn load_draft(name_or_path: &str, ty: DraftType, verbose: bool) -> CliResult<Arc<Model>> {
    let path = models::resolve(name_or_path, true)?;
    let weights = draft_weights(&path, ty)?;
    match &weights {
        DraftWeights::Copy {
            path,
            written: true,
        } if verbose => eprintln!(
            "re-quantized the draft model to Q4_0 at {} (--draft-type keep uses it as it is)",
            path.display()
        ),
        DraftWeights::Fallback { warning, .. } => eprintln!("warning: {warning}"),
        _ => {}
    }
    load_file(weights.path(), verbose)
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(ClapArgs, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition, presence and frequency penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token among the recent ones (0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence among the recent ones (0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// Random seed; the same seed, prompt and settings give the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Add BIAS to a token's logit, as TOKEN_ID+BIAS or TOKEN_ID-BIAS (`-inf` bans it); repeatable.
    #[arg(long = "logit-bias", short = 'l', value_parser = parse_logit_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Never end at the model's end-of-generation tokens: they get a bias of -inf.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// `TOKEN_ID+BIAS` or `TOKEN_ID-BIAS` (llama.cpp's `--logit-bias` syntax; `-inf` bans the token).
fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let bad = || {
        format!(
            "--logit-bias {s:?}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, such as 15043+1 or 2-inf"
        )
    };
    let split = s.find(['+', '-']).ok_or_else(bad)?;
    let id = s[..split].parse::<u32>().map_err(|_| bad())?;
    let bias = s[split..].parse::<f32>().map_err(|_| bad())?;
    if bias.is_nan() || bias == f32::INFINITY {
        return Err(bad());
    }
    Ok((id, bias))
}

impl SamplingArgs {
    /// [`SamplingArgs::config`] for `model`: with `--ignore-eos`, its end-of-generation tokens banned.
    pub fn config_for(&self, model: &Model) -> CliResult<SamplerConfig> {
        let mut cfg = self.config()?;
        if self.ignore_eos {
            cfg.logit_bias.extend(
                model
                    .tokenizer
                    .eog_ids()
                    .iter()
                    .map(|&id| (id, f32::NEG_INFINITY)),
            );
        }
        Ok(cfg)
    }

    /// The sampler configuration, with a time-based seed when none was given.
    fn config(&self) -> CliResult<SamplerConfig> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let cfg = SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
            logit_bias: self.logit_bias.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Structured-output flags shared by `generate` and `chat`: what the output must be (llama.cpp's flag names).
#[derive(ClapArgs, Clone, Debug, Default)]
pub struct FormatArgs {
    /// The output must be valid under this JSON schema (inline JSON; `{}` for any JSON value).
    #[arg(long, short = 'j', value_name = "SCHEMA", group = "format")]
    pub json_schema: Option<String>,
    /// The output must be valid under the JSON schema in this file.
    #[arg(long, value_name = "FILE", group = "format")]
    pub json_schema_file: Option<std::path::PathBuf>,
    /// The output must follow this grammar (GBNF, as llama.cpp takes it, or llguidance's Lark).
    #[arg(long, value_name = "GRAMMAR", group = "format")]
    pub grammar: Option<String>,
    /// The output must follow the grammar in this file (GBNF or Lark).
    #[arg(long, value_name = "FILE", group = "format")]
    pub grammar_file: Option<std::path::PathBuf>,
    /// The whole output must match this regex.
    #[arg(long, value_name = "REGEX", group = "format")]
    pub regex: Option<String>,
}

impl FormatArgs {
    /// The format asked for, if any.
    fn spec(&self) -> CliResult<Option<ConstraintSpec>> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
        };
        let schema = |flag: &str, text: &str| -> CliResult<ConstraintSpec> {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("--{flag}: not JSON: {e}"))?;
            if !value.is_object() {
                return Err(format!("--{flag}: a JSON schema is an object").into());
            }
            Ok(ConstraintSpec::JsonSchema(value))
        };
        Ok(Some(match self {
            FormatArgs {
                json_schema: Some(s),
                ..
            } => schema("json-schema", s)?,
            FormatArgs {
                json_schema_file: Some(p),
                ..
            } => schema("json-schema-file", &read("json-schema-file", p)?)?,
            FormatArgs {
                grammar: Some(g), ..
            } => ConstraintSpec::grammar(g.clone()),
            FormatArgs {
                grammar_file: Some(p),
                ..
            } => ConstraintSpec::grammar(read("grammar-file", p)?),
            FormatArgs { regex: Some(r), .. } => ConstraintSpec::Regex(r.clone()),
            _ => return Ok(None),
        }))
    }

    /// Compiles the format for `model`'s vocabulary, once; `None` when no format was asked for.
    pub fn compiled(&self, model: &Model) -> CliResult<Option<FormatSource>> {
        let Some(spec) = self.spec()? else {
            return Ok(None);
        };
        let factory = ConstraintFactory::from_tokenizer(&model.tokenizer)?;
        let constraint = factory.compile(&spec)?;
        Ok(Some(FormatSource {
            constraint,
            eog: model.tokenizer.eog_ids().to_vec(),
        }))
    }
}

/// A compiled format at its start, from which each output takes a fresh copy.
pub struct FormatSource {
    constraint: Constraint,
    eog: Vec<u32>,
}

impl FormatSource {
    /// The format for one output, from its start.
    pub fn fresh(&self) -> Format {
        Format::new(self.constraint.clone(), &self.eog)
    }
}

/// Context length to use: the request, or 4096, never more than the model's own.
pub fn context_size(model: &Model, requested: Option<usize>) -> CliResult<usize> {
    let max = model.config.context_length;
    match requested {
        Some(0) => Err("--ctx must be at least 1".into()),
        Some(n) if n > max => {
            Err(format!("--ctx {n} exceeds the model's context length of {max} tokens").into())
        }
        Some(n) => Ok(n),
        None => Ok(max.min(4096)),
    }
}

/// Checks a `--threads` value (0 means all cores); more than 4 threads per core is refused as a likely typo.
pub fn check_threads(n: usize) -> CliResult<usize> {
    let cores = fulcrum_core::threads::default_threads();
    if n > 4 * cores.max(1) {
        return Err(format!(
            "--threads {n} is more than 4 per core on this machine ({cores} cores)"
        )
        .into());
    }
    Ok(n)
}

/// How decode steps attend: `--attention` and DELTA's settings.
#[derive(ClapArgs, Debug, Clone)]
pub struct AttentionArgs {
    /// Attention of decode steps: `dense` (every position) or `delta` (DELTA's layer-aware sparse attention for
    /// long contexts; prefill stays dense).
    #[arg(long, default_value = "dense")]
    pub attention: AttentionMode,
    #[command(flatten)]
    pub delta: DeltaArgs,
}

/// DELTA's settings.
#[derive(ClapArgs, Debug, Clone)]
pub struct DeltaArgs {
    /// DELTA's full-attention layers, comma-separated (default: the paper's 0,1,2,14,22 of 28 layers, scaled by
    /// relative depth).
    #[arg(long, value_name = "LIST")]
    pub delta_layers: Option<String>,
    /// DELTA's budget: 16-token pages each sparse layer attends to; contexts of no more pages attend densely.
    #[arg(long, default_value_t = 64, value_name = "PAGES")]
    pub delta_budget: usize,
    /// DELTA's recency window: the most recent pages, always attended.
    #[arg(long, default_value_t = 8, value_name = "PAGES")]
    pub delta_recent: usize,
}

impl DeltaArgs {
    /// DELTA's settings for a model of `n_layers` layers, checked (the error names the flag).
    pub fn config(&self, n_layers: usize) -> CliResult<DeltaConfig> {
        let mut config = DeltaConfig::for_model(n_layers);
        if let Some(list) = &self.delta_layers {
            config.full_layers = DeltaConfig::parse_layers(list).map_err(|e| format!("--{e}"))?;
        }
        config.budget = self.delta_budget;
        config.recent = self.delta_recent;
        config.check(n_layers).map_err(|e| {
            if e.starts_with("delta budget") {
                format!("--delta-budget: {e}")
            } else if e.starts_with("delta recency") {
                format!("--delta-recent: {e}")
            } else {
                format!("--{}", e.replacen("delta layers", "delta-layers", 1))
            }
        })?;
        Ok(config)
    }

    /// The settings of each mode of a comma-separated list given as `flag` (`dense` → `None`, `delta` → DELTA's).
    pub fn modes(
        &self,
        flag: &str,
        list: &str,
        n_layers: usize,
    ) -> CliResult<Vec<(AttentionMode, Option<DeltaConfig>)>> {
        let config = self.config(n_layers)?;
        list.split(',')
            .map(|m| {
                let mode: AttentionMode = m.trim().parse().map_err(|e| format!("--{flag}: {e}"))?;
                Ok((mode, (mode == AttentionMode::Delta).then(|| config.clone())))
            })
            .collect()
    }
}

impl AttentionArgs {
    /// The settings decode steps use: DELTA's with `--attention delta`, none for dense.
    pub fn decode_delta(&self, n_layers: usize) -> CliResult<Option<DeltaConfig>> {
        let config = self.delta.config(n_layers)?;
        Ok((self.attention == AttentionMode::Delta).then_some(config))
    }
}

/// The `attention` object of `--json` output: the mode, and with DELTA the positions its decode rows attended to
/// against the positions dense attention reads (summed over rows and layers), and their ratio.
pub fn attention_json(mode: AttentionMode, (attended, context): (u64, u64)) -> serde_json::Value {
    serde_json::json!({
        "mode": mode.to_string(),
        "attended_tokens": attended,
        "context_tokens": context,
        "reduction": if attended == 0 { 1.0 } else { context as f64 / attended as f64 },
    })
}
