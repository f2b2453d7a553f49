//! Speculative decoding: drafters propose tokens, the target checks them all in one batched forward pass, and the
//! output is exactly what plain decoding would give (greedy: token for token; sampling: in distribution).
//!
//! One round, with `next` the last committed token (not yet in the KV cache, at position `pos`):
//! 1. a drafter proposes `d1..dn`: prompt lookup, a draft model, or the target's own first E layers (early exit);
//! 2. the target runs `next, d1..dn` (positions `pos..=pos+n`) in one batch whose rows round exactly as single-token
//!    decoding would, and yields n + 1 distributions;
//! 3. acceptance keeps the longest agreeing prefix `d1..dk` plus one token of the target's own (the bonus, or the
//!    replacement of the first rejected draft);
//! 4. the cache keeps positions `..=pos+k`: drafts were written in place in the spare rows after the sequence
//!    (BMC's insight, papers.md §6), so a rejection only resets the length.
//!
//! An early-exit draft computes layers below E for the draft tokens once: verification reuses their keys and values
//! and the saved layer-E hidden states, running layers below E only for the last draft token (papers.md §2.1).

pub mod controller;
pub mod lookup;
pub mod mode;
mod rounds;
pub mod served;
pub mod verify;

pub use controller::{Arm, Choice, Controller, CostUnits, Timings};
pub use mode::{SpecMode, SPEC_SYNTAX};
pub use rounds::argmax_confidence;

use crate::sampler::{Sampler, SamplerConfig};
use fulcrum_core::{Model, ModelError, Session};
use std::collections::BTreeMap;
use std::sync::Arc;
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

/// A draft model and its own cache, kept in step with the committed text.
struct DraftRunner {
    session: Session,
    sampler: Sampler,
    /// Tokens whose keys and values the draft cache holds, in order.
    fed: Vec<u32>,
    /// Rounds since the draft model last drafted.
    idle: usize,
}

impl DraftRunner {
    /// How many leading tokens of `history` the draft cache holds and can keep (never the last one, whose logits
    /// the next draft starts from).
    fn cached_prefix(&self, history: &[u32]) -> usize {
        self.fed
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count()
            .min(history.len().saturating_sub(1))
    }
}

/// Drives speculative decoding of one sequence of a target [`Session`].
pub struct Speculator {
    pub mode: SpecMode,
    pub options: SpecOptions,
    controller: Controller,
    /// Candidate exits, ascending, for shadow tokens.
    exits: Vec<usize>,
    draft: Option<DraftRunner>,
    fsm_gamma: usize,
    round: usize,
    /// Tokens of the prompt [`Speculator::prefill`] evaluated: the rest of the history was generated.
    prompt_len: usize,
    /// Tokens generated since that prompt.
    generated: usize,
    /// The decayed mean length of earlier answers (see [`Learned`]).
    answer_len: Option<f64>,
    buffers: rounds::Buffers,
    pub stats: SpecStats,
}

impl Speculator {
    /// A driver for `mode` on `target`; `draft` is the loaded draft model for `draft:` and `auto` (optional there).
    /// `n_ctx` and `n_threads` size the draft model's session.
    pub fn new(
        mode: SpecMode,
        options: SpecOptions,
        target: &Model,
        draft: Option<Arc<Model>>,
        sampling: &SamplerConfig,
        n_ctx: usize,
        n_threads: usize,
    ) -> Result<Speculator, SpecError> {
        let n_layers = target.config.n_layers;
        let check_exit = |exit: usize| {
            if exit == 0 || exit >= n_layers {
                Err(SpecError::ExitOutOfRange { exit, n_layers })
            } else {
                Ok(exit)
            }
        };
        let mut exits = if options.exits.is_empty() {
            default_exits(n_layers)
        } else {
            options.exits.clone()
        };
        exits.sort_unstable();
        exits.dedup();
        for &e in &exits {
            check_exit(e)?;
        }
        let (arms, exits): (Vec<Arm>, Vec<usize>) = match &mode {
            SpecMode::Off => (Vec::new(), Vec::new()),
            SpecMode::Lookup { .. } => (vec![Arm::Lookup], Vec::new()),
            SpecMode::Draft { .. } => (vec![Arm::DraftModel], Vec::new()),
            SpecMode::EarlyExit { exit, .. } | SpecMode::ExitFsm { exit } => {
                (vec![Arm::Exit(check_exit(*exit)?)], Vec::new())
            }
            SpecMode::Del => (exits.iter().map(|&e| Arm::Exit(e)).collect(), exits),
            SpecMode::Auto => {
                let mut arms: Vec<Arm> = exits.iter().map(|&e| Arm::Exit(e)).collect();
                arms.push(Arm::Lookup);
                if draft.is_some() {
                    arms.push(Arm::DraftModel);
                }
                (arms, exits)
            }
        };
        let wants_draft = matches!(mode, SpecMode::Draft { .. });
        let draft = match draft {
            Some(model) if wants_draft || mode == SpecMode::Auto => {
                check_vocabulary(target, &model)?;
                let session = Session::new(
                    model,
                    n_ctx,
                    n_threads,
                    fulcrum_core::session::DEFAULT_BATCH,
                )?;
                let mut config = sampling.clone();
                config.seed ^= 0x0D4A_F7ED;
                let sampler = Sampler::new(config).map_err(|e| {
                    SpecError::Model(ModelError::BadBatch(format!("draft sampler: {e}")))
                })?;
                Some(DraftRunner {
                    session,
                    sampler,
                    fed: Vec::new(),
                    idle: 0,
                })
            }
            _ => None,
        };
        if wants_draft && draft.is_none() {
            return Err(SpecError::MissingDraftModel(mode.to_string()));
        }
        let fsm_gamma = match mode {
            SpecMode::ExitFsm { .. } => 1,
            _ => 0,
        };
        let mut controller = Controller::new(&arms, n_layers, CostUnits::Seconds);
        controller.gamma_min = options.gamma_min;
        if let Some(runner) = &draft {
            controller.draft_ratio = step_ratio(&runner.session.model, target);
        }
        Ok(Speculator {
            controller,
            buffers: rounds::Buffers::new(exits.len()),
            exits,
            draft,
            fsm_gamma,
            round: 0,
            prompt_len: 0,
            generated: 0,
            answer_len: None,
            mode,
            options,
            stats: SpecStats::default(),
        })
    }

    /// The controller (its statistics and timings).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The decayed mean length of the answers so far, the current one counted.
    fn answer_len_so_far(&self) -> Option<f64> {
        match self.generated {
            0 => self.answer_len,
            n => Some(fold_answer_len(self.answer_len, n)),
        }
    }

    /// What this speculator learned that holds for other texts too, its current answer counted.
    pub fn learned(&self) -> Learned {
        Learned {
            timings: self.controller.timings.clone(),
            answer_len: self.answer_len_so_far(),
            exits: self
                .controller
                .arms
                .iter()
                .filter(|(arm, _)| matches!(arm, Arm::Exit(_)))
                .cloned()
                .collect(),
        }
    }

    /// Starts from what an earlier speculator of this process learned (timings, answer lengths, exits), as one
    /// speculator reused over several texts would.
    pub fn resume(&mut self, learned: Learned) {
        self.controller.timings = learned.timings;
        self.answer_len = learned.answer_len;
        for (arm, acceptance) in learned.exits {
            if let Some((_, mine)) = self.controller.arms.iter_mut().find(|(a, _)| *a == arm) {
                *mine = acceptance;
            }
        }
        self.generated = 0;
    }

    /// The statistics so far, with the controller's current α per arm.
    pub fn final_stats(&self) -> SpecStats {
        let mut stats = self.stats.clone();
        stats.alpha = self
            .controller
            .arms
            .iter()
            .map(|(arm, acc)| (*arm, acc.alpha()))
            .collect();
        stats
    }
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
