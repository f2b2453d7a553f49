//! What speculation did in one generation, and what it learned that holds beyond one text.

use super::controller::{Acceptance, Arm, Timings};
use std::collections::BTreeMap;

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
    pub exits: Vec<(Arm, Acceptance)>,
}
