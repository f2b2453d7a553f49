//! Speculative decoding: drafters propose tokens, the target checks them all in one batched forward pass, and the
//! output is exactly what plain decoding would give (greedy: token for token; sampling: in distribution).
//!
//! One driver serves every caller: [`step::run`] takes a batch of [`Lane`]s (every running sequence of the serving
//! engine, or the one sequence of `generate`), fills their drafts, verifies them in one forward pass, runs the
//! acceptance walk and lets each sequence's [`Policy`] learn. Where things are:
//!
//! | module | job |
//! |---|---|
//! | [`mode`] | [`Speculation`], the one `--spec`/`"spec"` type |
//! | [`policy`], [`rules`], [`controller`] | choosing the drafter and length per round (DEL's controller), learning |
//! | [`lookup`], [`early_exit`], [`draft_model`] | the drafters |
//! | [`step`], [`verify`], `shadow` | the driver, the acceptance math, DEL's shadow statistics |
//! | [`lane`] | what the driver works on |
//! | [`single`] | a [`Session`](fulcrum_core::Session)'s batch of one (`generate`) |

pub mod controller;
pub mod draft_model;
pub mod early_exit;
pub mod lane;
pub mod lookup;
pub mod mode;
pub mod policy;
pub mod rules;
mod shadow;
pub mod single;
pub mod step;
pub mod verify;

pub use controller::{Arm, Choice, Controller, CostUnits, Timings};
pub use draft_model::DraftModel;
pub use lane::{Lane, Runner, SpecState};
pub use mode::{Speculation, SPEC_SYNTAX};
pub use policy::{Policy, Progress};
pub use rules::argmax_confidence;
pub use single::Speculator;
pub use step::{StepOptions, Verified};

use fulcrum_core::{Model, ModelError};
use std::collections::BTreeMap;
use thiserror::Error;

/// A speculative-decoding setting cannot be used with these models.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The draft model's tokenizer or output size differs from the target's.
    #[error(
        "the draft model cannot draft for this target: {0}. A draft model must share the target's vocabulary \
         (for example qwen2.5-coder-0.5b-instruct for qwen2.5-coder-1.5b-instruct)"
    )]
    VocabularyMismatch(String),
    /// An exit layer outside the model.
    #[error("exit layer {exit} is out of range: the model has {n_layers} layers, so an exit must be from 1 to {}", n_layers - 1)]
    ExitOutOfRange { exit: usize, n_layers: usize },
    /// `draft:` without a loaded draft model.
    #[error("--spec {0} needs its draft model loaded")]
    MissingDraftModel(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Tunables of the speculative driver.
#[derive(Clone, Debug)]
pub struct SpecOptions {
    /// Exit layers (as layer counts) that DEL and auto consider; empty: spread over the depth.
    pub exits: Vec<usize>,
    /// Shadow tokens (every candidate exit's prediction, for its acceptance statistics) every this many rounds;
    /// 0 never. The current exit's statistics come from its own drafts every round.
    pub shadow_every: usize,
    /// Prompt tokens whose shadow predictions initialise the statistics. DEL uses 32; on a CPU each costs one
    /// classifier row per candidate exit (about 4.5 ms each for Qwen2.5-0.5B on two cores), so the default is 8.
    pub init_window: usize,
    /// A draft model not used for this many rounds is tried again for one round.
    pub probe_every: usize,
    /// DEL's γ_min: with 1 or more, DEL and auto always draft (once an exit has statistics).
    pub gamma_min: usize,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            exits: Vec::new(),
            shadow_every: 4,
            init_window: 8,
            probe_every: 32,
            gamma_min: 0,
        }
    }
}

/// Exit layers spread over the depth of an `n_layers`-layer model: ¼, ⅜, ½, ⅝, ¾ and ⅞ of it.
pub fn default_exits(n_layers: usize) -> Vec<usize> {
    let mut exits: Vec<usize> = (2..=7)
        .map(|eighths| (n_layers * eighths + 4) / 8)
        .filter(|&e| e >= 1 && e < n_layers)
        .collect();
    exits.dedup();
    exits
}

/// Counts of one drafter's rounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmStats {
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
}

/// What speculation did during one generation.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Rounds that verified a draft.
    pub rounds: usize,
    /// Rounds of plain decoding.
    pub plain_steps: usize,
    pub drafted: usize,
    pub accepted: usize,
    /// Per drafter (an exit layer, lookup, the draft model).
    pub per_arm: BTreeMap<Arm, ArmStats>,
    /// `accepted_lengths[k]`: rounds that accepted k drafted tokens.
    pub accepted_lengths: Vec<usize>,
    /// Rounds that computed shadow tokens, and the seconds they took.
    pub shadow_rounds: usize,
    pub shadow_seconds: f64,
    /// Decayed acceptance α of every arm the controller tracks at the end (None: no data).
    pub alpha: Vec<(Arm, Option<f64>)>,
}

impl SpecStats {
    /// Mean accepted draft tokens per verification round.
    pub fn mean_accepted(&self) -> f64 {
        self.accepted as f64 / self.rounds.max(1) as f64
    }
}

/// Weight of the earlier answers' mean length against the latest answer's.
const ANSWER_DECAY: f64 = 0.75;

/// The decayed mean length of answers, `mean` of the earlier ones folded with one of `len` tokens.
pub fn fold_answer_len(mean: Option<f64>, len: usize) -> f64 {
    mean.map_or(len as f64, |m| {
        ANSWER_DECAY * m + (1.0 - ANSWER_DECAY) * len as f64
    })
}

/// What a speculator learns that holds beyond one text: the costs it timed (layers, classifier, draft model) and
/// how long answers run (the decayed mean of their lengths), which prices a draft model's catch-up against the
/// answer's likely rest.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    /// The controller's timings.
    pub timings: Timings,
    /// The decayed mean length, in tokens, of the answers generated so far.
    pub answer_len: Option<f64>,
    /// Each early exit's acceptance: how well a model's exit agrees with its last layer changes far less from one
    /// text to the next than lookup's or a draft model's hits, so an exit that never paid starts out without shadow
    /// tokens (until the periodic revival tests it again).
    pub exits: Vec<(Arm, controller::Acceptance)>,
}

/// A draft model's decode step as a fraction of the target's, before either is timed: decoding reads every weight
/// once per token, so step times scale with the files' sizes.
pub fn step_ratio(draft: &Model, target: &Model) -> Option<f64> {
    let size = |m: &Model| std::fs::metadata(&m.path).map(|m| m.len() as f64).ok();
    size(draft).zip(size(target)).map(|(d, t)| d / t.max(1.0))
}

/// Checks that `draft` can draft for `target`: the same output size and the same token texts.
pub fn check_vocabulary(target: &Model, draft: &Model) -> Result<(), SpecError> {
    let (t, d) = (&target.tokenizer, &draft.tokenizer);
    if target.config.vocab_size != draft.config.vocab_size {
        return Err(SpecError::VocabularyMismatch(format!(
            "its output has {} tokens, the target's {}",
            draft.config.vocab_size, target.config.vocab_size
        )));
    }
    if t.vocab_size() != d.vocab_size() {
        return Err(SpecError::VocabularyMismatch(format!(
            "its tokenizer has {} tokens, the target's {}",
            d.vocab_size(),
            t.vocab_size()
        )));
    }
    if let Some(id) = (0..t.vocab_size() as u32).find(|&id| t.token_text(id) != d.token_text(id)) {
        return Err(SpecError::VocabularyMismatch(format!(
            "token {id} is {:?} in the draft and {:?} in the target",
            d.token_text(id),
            t.token_text(id)
        )));
    }
    Ok(())
}
