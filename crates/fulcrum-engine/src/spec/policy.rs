//! One sequence's speculation policy: before each round it chooses the drafter and the draft length (a fixed choice
//! for the static modes, DEL's controller for `lookup`, `del` and `auto`), and after it learns from what the
//! target kept. It decides and learns only; the driver ([`super::step`]) runs the forward passes, so a sequence keeps
//! its own statistics whatever it is batched with.
//!
//! Rules (papers.md §2.2, with Fulcrum's changes): drafting pays when the controller's expected tokens per second
//! beat plain decoding's; shadow tokens (every candidate exit's prediction of the committed text) come every
//! `shadow_every` rounds while an exit drafts, four times less often otherwise, within a small share of the time, and
//! only for exits that could pay; a draft model is probed only where it would save more than its catch-up costs.

use super::controller::{Arm, Batch, Choice, Controller, CostUnits, Timings};
use super::error::SpecError;
use super::lookup;
use super::mode::{self, Speculation};
use super::options::{default_exits, SpecOptions};
use super::rules::{
    choose_drafter, draft_outcomes, draft_probe_due, expected_room, lookup_outcomes, mark_live,
    shadow_due,
};
use super::stats::SpecStats;
use std::time::Instant;

/// What a round's plan needs to know about the answer so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Tokens generated so far.
    pub generated: usize,
    /// Tokens that may still be generated after this round's first one.
    pub left: usize,
    /// Positions the draft model's cache lags behind the text.
    pub draft_behind: usize,
    /// The decayed mean length of earlier answers in this process, if any.
    pub typical: Option<f64>,
}

/// One sequence's drafter choice and statistics.
#[derive(Debug)]
pub struct Policy {
    mode: Speculation,
    options: SpecOptions,
    controller: Controller,
    /// Candidate exits (DEL and auto), ascending, for shadow tokens.
    exits: Vec<usize>,
    /// Per candidate exit, whether it is worth its shadow tokens.
    live: Vec<bool>,
    /// Whether prompt lookup proposes every round (lookup and auto).
    with_lookup: bool,
    /// Whether the draft model is one of the controller's arms (auto with a draft model).
    with_draft: bool,
    /// Rounds since the draft model last drafted.
    draft_idle: usize,
    /// The γ±1 rule's current length (`exit-fsm`).
    fsm_gamma: usize,
    round: usize,
    /// When this generation started, and the shadow seconds it has spent.
    started: Instant,
    shadow_seconds: f64,
    /// Whether the prompt's last tokens were captured for DEL's initialisation and still wait to be classified.
    init_pending: bool,
    /// Whether the initialisation was asked for already.
    initialised: bool,
    /// This round's decision, and whether it captures shadow states.
    choice: Choice,
    shadow: bool,
    /// Prompt lookup's proposal this round.
    lookup: Vec<u32>,
    outcomes: Vec<(bool, f32)>,
    /// What this generation's rounds did.
    pub stats: SpecStats,
}

impl Policy {
    /// A policy for `mode` on a target of `n_layers` layers; `draft_ratio` is the loaded draft model's step over
    /// the target's (by weight bytes) when there is one, and `reuses_exit_kv` whether verification of an exit's draft
    /// reuses the keys and values the draft wrote below the exit.
    pub fn new(
        mode: Speculation,
        options: SpecOptions,
        n_layers: usize,
        draft_ratio: Option<Option<f64>>,
        reuses_exit_kv: bool,
    ) -> Result<Policy, SpecError> {
        mode.check(n_layers)?;
        let mut exits = if options.exits.is_empty() {
            default_exits(n_layers)
        } else {
            options.exits.clone()
        };
        exits.sort_unstable();
        exits.dedup();
        for &e in &exits {
            mode::check_exit(Some(e), n_layers)?;
        }
        let with_draft = mode == Speculation::Auto && draft_ratio.is_some();
        if mode.needs_draft_model() && draft_ratio.is_none() {
            return Err(SpecError::MissingDraftModel(mode.to_string()));
        }
        let (arms, exits): (Vec<Arm>, Vec<usize>) = match &mode {
            Speculation::Off => (Vec::new(), Vec::new()),
            Speculation::Lookup { .. } => (vec![Arm::Lookup], Vec::new()),
            Speculation::Draft { .. } => (vec![Arm::DraftModel], Vec::new()),
            Speculation::EarlyExit { exit, .. } | Speculation::ExitFsm { exit } => {
                (vec![Arm::Exit(*exit)], Vec::new())
            }
            Speculation::Del => (exits.iter().map(|&e| Arm::Exit(e)).collect(), exits),
            Speculation::Auto => {
                let mut arms: Vec<Arm> = exits.iter().map(|&e| Arm::Exit(e)).collect();
                arms.push(Arm::Lookup);
                if with_draft {
                    arms.push(Arm::DraftModel);
                }
                (arms, exits)
            }
        };
        let mut controller = Controller::new(&arms, n_layers, CostUnits::Seconds);
        controller.gamma_min = options.gamma_min;
        controller.reuses_exit_kv = reuses_exit_kv;
        controller.draft_ratio = draft_ratio.flatten();
        Ok(Policy {
            with_lookup: matches!(mode, Speculation::Lookup { .. } | Speculation::Auto),
            with_draft,
            live: vec![true; exits.len()],
            exits,
            draft_idle: 0,
            fsm_gamma: 1,
            round: 0,
            started: Instant::now(),
            shadow_seconds: 0.0,
            init_pending: false,
            initialised: false,
            choice: Choice::PLAIN,
            shadow: false,
            lookup: Vec::new(),
            outcomes: Vec::new(),
            stats: SpecStats::default(),
            controller,
            mode,
            options,
        })
    }

    /// The mode this policy follows.
    pub fn mode(&self) -> &Speculation {
        &self.mode
    }

    /// The controller (its statistics and the timings it last planned with).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The controller, for carrying what it learned from one text to the next.
    pub fn controller_mut(&mut self) -> &mut Controller {
        &mut self.controller
    }

    /// Starts a new generation: its clock and shadow budget, its round count and statistics.
    pub fn restart(&mut self) {
        self.started = Instant::now();
        self.shadow_seconds = 0.0;
        self.round = 0;
        self.initialised = false;
        self.init_pending = false;
        self.stats = SpecStats::default();
    }

    /// This round's choice.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// Decides the round after `tokens` (the text so far, its last token not yet in the cache), with drafts of at
    /// most `max_len` tokens, under `timings`, in a step shared as `batch` says (`None`: alone), writing prompt
    /// lookup's tokens to `draft` when it drafts (and placeholders of the draft's length otherwise).
    pub fn plan(
        &mut self,
        timings: &Timings,
        batch: Option<Batch>,
        tokens: &[u32],
        max_len: usize,
        progress: Progress,
        draft: &mut Vec<u32>,
    ) -> Choice {
        self.round += 1;
        self.controller.timings.clone_from(timings);
        self.controller.batch = batch;
        let max_len = max_len.min(self.controller.gamma_max);
        self.lookup.clear();
        if self.with_lookup {
            lookup::propose(tokens, max_len, &mut self.lookup);
        }
        self.mark_live(self.round, max_len.max(1));
        let choice = if max_len == 0 {
            Choice::PLAIN
        } else {
            self.choose(max_len, progress)
        };
        let spent = Some((self.shadow_seconds, self.started.elapsed()));
        // A prompt too short to initialise from (or served from the prefix cache up to its last token) leaves every
        // exit unknown: the first decode step then looks at all of them.
        let unknown = !self.init_pending
            && self.exits.iter().all(|&e| {
                self.controller
                    .acceptance(Arm::Exit(e))
                    .and_then(|a| a.alpha())
                    .is_none()
            });
        self.shadow = (unknown && self.live.iter().any(|&l| l))
            || shadow_due(
                choice,
                self.round,
                self.options.shadow_every,
                &self.live,
                spent,
            );
        self.choice = choice;
        if self.with_draft {
            self.draft_idle = if choice.arm == Some(Arm::DraftModel) {
                0
            } else {
                self.draft_idle + 1
            };
        }
        draft.clear();
        match choice.arm {
            Some(Arm::Lookup) => {
                draft.extend_from_slice(&self.lookup[..choice.draft_len.min(self.lookup.len())])
            }
            Some(_) => draft.resize(choice.draft_len, 0),
            None => {}
        }
        choice
    }

    /// The choice of the mode: fixed for the static modes, the controller's for the others.
    fn choose(&self, max_len: usize, progress: Progress) -> Choice {
        let fixed = |arm, len: usize| Choice {
            arm: Some(arm),
            draft_len: len.min(max_len),
        };
        match &self.mode {
            Speculation::Off => Choice::PLAIN,
            Speculation::Lookup { .. } if self.lookup.is_empty() => Choice::PLAIN,
            Speculation::Lookup { gamma: Some(gamma) } => {
                fixed(Arm::Lookup, (*gamma).min(self.lookup.len()))
            }
            Speculation::Lookup { gamma: None } => {
                let len = self.lookup.len();
                let choice = self
                    .controller
                    .choose(max_len.min(len), |arm| arm == Arm::Lookup);
                Choice {
                    draft_len: choice.draft_len.min(len),
                    ..choice
                }
            }
            Speculation::Draft { gamma, .. } => fixed(Arm::DraftModel, *gamma),
            Speculation::EarlyExit { exit, gamma } => fixed(Arm::Exit(*exit), *gamma),
            Speculation::ExitFsm { exit } => fixed(Arm::Exit(*exit), self.fsm_gamma),
            Speculation::Del | Speculation::Auto => {
                let choice = choose_drafter(
                    &self.controller,
                    max_len,
                    self.lookup.len(),
                    self.with_draft,
                );
                let room = expected_room(progress.generated, progress.left, progress.typical);
                let probe = self.with_draft
                    && draft_probe_due(
                        &self.controller,
                        (self.round, self.draft_idle, self.options.probe_every),
                        (max_len, choice),
                        room,
                        progress.draft_behind,
                    );
                if probe {
                    fixed(Arm::DraftModel, mode::DRAFT_GAMMA)
                } else {
                    choice
                }
            }
        }
    }

    /// The round drafts nothing after all (the step had no room for its draft).
    pub fn cancel_draft(&mut self) {
        self.choice = Choice::PLAIN;
    }

    /// Marks the exits worth their shadow tokens; with γ_min ≥ 1 every exit, since drafting is forced anyway.
    fn mark_live(&mut self, round: usize, max_len: usize) {
        if self.options.gamma_min > 0 {
            self.live.iter_mut().for_each(|l| *l = true);
        } else {
            mark_live(
                &self.controller,
                &self.exits,
                round,
                max_len,
                &mut self.live,
            );
        }
    }

    /// Whether drafting with an exit stops after a token less confident than its τ (DEL and auto).
    pub fn confidence_stop(&self) -> bool {
        matches!(self.mode, Speculation::Del | Speculation::Auto)
    }

    /// τ of `exit`: drafting stops after a token less confident than this.
    pub fn threshold(&self, exit: usize) -> Option<f32> {
        self.controller
            .acceptance(Arm::Exit(exit))
            .and_then(|a| a.threshold())
    }

    /// The exits whose hidden states this round's forward passes copy (none unless it is a shadow round).
    pub fn shadow_exits(&self) -> impl Iterator<Item = usize> + '_ {
        self.live_exits().filter(|_| self.shadow)
    }

    /// Whether this round computes shadow tokens.
    pub fn is_shadow_round(&self) -> bool {
        self.shadow
    }

    /// The exits at which the prompt's last tokens should be captured to initialise the statistics (DEL's prefill
    /// adjustment), under `timings`; asked once per generation.
    pub fn init_exits(&mut self, timings: &Timings) -> Vec<usize> {
        if self.initialised || self.exits.is_empty() {
            return Vec::new();
        }
        self.initialised = true;
        self.controller.timings.clone_from(timings);
        let max_len = self.controller.gamma_max;
        self.mark_live(0, max_len);
        let exits: Vec<usize> = self.live_exits().collect();
        self.init_pending = !exits.is_empty();
        exits
    }

    /// Positions of the prompt DEL initialises from.
    pub fn init_window(&self) -> usize {
        self.options.init_window
    }

    /// Whether `exit` is still worth its shadow tokens under `timings` (captured prompt rows are classified only
    /// for those, once the first round has timed the layers).
    pub fn worth_watching(&mut self, exit: usize, timings: &Timings) -> bool {
        self.controller.timings.clone_from(timings);
        let i = self.exits.iter().position(|&e| e == exit);
        let max_len = self.controller.gamma_max;
        i.is_some_and(|_| {
            self.options.gamma_min > 0 || self.controller.can_pay(Arm::Exit(exit), max_len)
        })
    }

    fn live_exits(&self) -> impl Iterator<Item = usize> + '_ {
        self.exits
            .iter()
            .zip(&self.live)
            .filter(|(_, &l)| l)
            .map(|(&e, _)| e)
    }

    /// Learns from this round's verification: `drafts` were proposed with `confidences` (empty: all 1) and
    /// `committed` (the accepted drafts and the target's own token) were kept.
    pub fn learn(&mut self, drafts: &[u32], confidences: &[f32], committed: &[u32]) {
        let arm = self.choice.arm.filter(|_| !drafts.is_empty());
        match arm {
            None => self.stats.plain_steps += 1,
            Some(arm) => {
                let (n, k) = (drafts.len(), committed.len().saturating_sub(1));
                let s = &mut self.stats;
                s.rounds += 1;
                s.drafted += n;
                s.accepted += k;
                let per_arm = s.per_arm.entry(arm).or_default();
                per_arm.rounds += 1;
                per_arm.drafted += n;
                per_arm.accepted += k;
                if s.accepted_lengths.len() <= k {
                    s.accepted_lengths.resize(k + 1, 0);
                }
                s.accepted_lengths[k] += 1;
                if let Speculation::ExitFsm { .. } = self.mode {
                    self.fsm_gamma = if k == n {
                        (self.fsm_gamma + 1).min(self.controller.gamma_max)
                    } else {
                        self.fsm_gamma.saturating_sub(1).max(1)
                    };
                }
                // Shadow tokens of a live exit already cover its own positions.
                let covered =
                    self.shadow && matches!(arm, Arm::Exit(e) if self.live_exits().any(|x| x == e));
                if !covered {
                    draft_outcomes(drafts, confidences, committed, &mut self.outcomes);
                    self.controller.observe(arm, &self.outcomes);
                }
            }
        }
        // Lookup's proposal costs nothing, so it is checked whenever it was not used.
        if self.with_lookup && arm != Some(Arm::Lookup) && !self.lookup.is_empty() {
            lookup_outcomes(&self.lookup, committed, &mut self.outcomes);
            self.controller.observe(Arm::Lookup, &self.outcomes);
        }
    }

    /// Learns from shadow tokens: `predictions` (token, confidence) of `exit` at positions whose actual tokens are
    /// `targets`; `seconds` is this sequence's share of their cost.
    pub fn learn_shadow(
        &mut self,
        exit: usize,
        predictions: &[(u32, f32)],
        targets: &[u32],
        seconds: f64,
    ) {
        self.outcomes.clear();
        self.outcomes.extend(
            predictions
                .iter()
                .zip(targets)
                .map(|(&(token, confidence), &actual)| (token == actual, confidence)),
        );
        self.controller.observe(Arm::Exit(exit), &self.outcomes);
        self.shadow_seconds += seconds;
        self.stats.shadow_seconds += seconds;
    }

    /// Marks the prompt's captured rows as classified.
    pub fn init_done(&mut self) {
        self.init_pending = false;
    }

    /// Counts one round of shadow tokens.
    pub fn count_shadow_round(&mut self) {
        self.stats.shadow_rounds += 1;
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

#[cfg(test)]
mod tests;
