//! DEL and `auto` for one request of the serving engine: the controller of [`super::controller`] chooses each decode
//! step's drafter (an early exit of the target; for `auto` also prompt lookup and the server's draft model) and its
//! length, learns from the step's
//! verification, and asks for shadow states at the candidate exits on the rounds the shadow budget allows.
//!
//! The engine owns the forward passes (batched with other requests) and the timings; this state only decides and
//! learns, so that every request keeps its own statistics whatever it is batched with.

use super::controller::{Arm, Batch, Choice, Controller, CostUnits, Timings};
use super::rounds::{
    choose_drafter, draft_outcomes, draft_probe_due, expected_room, lookup_outcomes, mark_live,
    shadow_due,
};
use super::{default_exits, lookup, SpecOptions};
use std::time::Instant;

/// One request's speculation controller.
#[derive(Debug)]
pub struct Adaptive {
    controller: Controller,
    /// Candidate exits, ascending.
    exits: Vec<usize>,
    /// Per candidate exit, whether it is worth its shadow tokens.
    live: Vec<bool>,
    with_lookup: bool,
    with_draft: bool,
    /// Rounds since the draft model last drafted.
    draft_idle: usize,
    options: SpecOptions,
    round: usize,
    started: Instant,
    shadow_seconds: f64,
    initialised: bool,
    /// This round's decision, whether it captures shadow states, and what it drafted.
    choice: Choice,
    shadow: bool,
    /// Whether this round's shadow states are still to be captured.
    pending_shadow: bool,
    confidences: Vec<f32>,
    lookup: Vec<u32>,
    outcomes: Vec<(bool, f32)>,
}

impl Adaptive {
    /// DEL over the default exits of an `n_layers`-layer model; `with_lookup` adds prompt lookup as an arm, and
    /// `draft_ratio` (a draft model's step over the target's) the draft model (`auto`).
    pub fn new(
        n_layers: usize,
        with_lookup: bool,
        draft_ratio: Option<f64>,
        options: SpecOptions,
    ) -> Adaptive {
        let exits = if options.exits.is_empty() {
            default_exits(n_layers)
        } else {
            let mut e: Vec<usize> = options
                .exits
                .iter()
                .copied()
                .filter(|&e| e >= 1 && e < n_layers)
                .collect();
            e.sort_unstable();
            e.dedup();
            e
        };
        let mut arms: Vec<Arm> = exits.iter().map(|&e| Arm::Exit(e)).collect();
        if with_lookup {
            arms.push(Arm::Lookup);
        }
        if draft_ratio.is_some() {
            arms.push(Arm::DraftModel);
        }
        let mut controller = Controller::new(&arms, n_layers, CostUnits::Seconds);
        controller.gamma_min = options.gamma_min;
        controller.reuses_exit_kv = false;
        controller.draft_ratio = draft_ratio;
        Adaptive {
            controller,
            live: vec![true; exits.len()],
            exits,
            with_lookup,
            with_draft: draft_ratio.is_some(),
            draft_idle: 0,
            options,
            round: 0,
            started: Instant::now(),
            shadow_seconds: 0.0,
            initialised: false,
            choice: Choice::PLAIN,
            shadow: false,
            pending_shadow: false,
            confidences: Vec::new(),
            lookup: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Decides the decode step after `tokens` (the sequence so far), with drafts of at most `max_len` tokens, under
    /// the engine's current `timings`, in a step shared as `batch` says; `room` tokens may still be generated after
    /// the `generated` so far, the draft model's cache lags the text by `draft_behind` tokens, and earlier answers
    /// ran `typical` tokens on average.
    pub fn plan(
        &mut self,
        timings: &Timings,
        batch: Option<Batch>,
        tokens: &[u32],
        max_len: usize,
        (room, generated, draft_behind, typical): (usize, usize, usize, Option<f64>),
    ) -> Choice {
        self.round += 1;
        self.controller.timings = timings.clone();
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
            let c = choose_drafter(
                &self.controller,
                max_len,
                self.lookup.len(),
                self.with_draft,
            );
            let room = expected_room(generated, room, typical);
            self.draft_probe((max_len, c), room, draft_behind)
                .unwrap_or(c)
        };
        let spent = Some((self.shadow_seconds, self.started.elapsed()));
        // A prompt too short to initialise from (or served from the prefix cache up to its last token) leaves every
        // exit unknown: the first decode step then looks at all of them.
        let unknown = self.exits.iter().all(|&e| {
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
        self.pending_shadow = self.shadow;
        self.confidences.clear();
        if self.with_draft {
            self.draft_idle = if choice.arm == Some(Arm::DraftModel) {
                0
            } else {
                self.draft_idle + 1
            };
        }
        choice
    }

    /// A round that tries the draft model, when [`draft_probe_due`] says so for the `room` tokens expected and a
    /// cache `behind` the text by that many tokens.
    fn draft_probe(
        &self,
        (max_len, instead): (usize, Choice),
        room: usize,
        behind: usize,
    ) -> Option<Choice> {
        if !self.with_draft {
            return None;
        }
        let probe = draft_probe_due(
            &self.controller,
            (self.round, self.draft_idle, self.options.probe_every),
            (max_len, instead),
            room,
            behind,
        );
        probe.then_some(Choice {
            arm: Some(Arm::DraftModel),
            draft_len: super::mode::DRAFT_GAMMA.min(max_len),
        })
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

    /// Prompt lookup's proposal for this round (`auto` only).
    pub fn lookup_proposal(&self) -> &[u32] {
        &self.lookup
    }

    /// τ of `exit`: drafting stops after a token less confident than this.
    pub fn threshold(&self, exit: usize) -> Option<f32> {
        self.controller
            .acceptance(Arm::Exit(exit))
            .and_then(|a| a.threshold())
    }

    /// Records the drafter's confidence in each token of this round's draft.
    pub fn set_confidences(&mut self, confidences: &[f32]) {
        self.confidences.clear();
        self.confidences.extend_from_slice(confidences);
    }

    /// The exits whose hidden states this round's forward pass should copy (none unless it is a shadow round);
    /// asked once per round.
    pub fn take_shadow_exits(&mut self) -> Vec<usize> {
        if !std::mem::take(&mut self.pending_shadow) {
            return Vec::new();
        }
        self.live_exits()
    }

    /// Whether the prompt's last tokens should still initialise the statistics, and at which exits (DEL's prefill
    /// adjustment), under the engine's `timings`.
    pub fn init_exits(&mut self, timings: &Timings) -> Vec<usize> {
        if self.initialised {
            return Vec::new();
        }
        self.initialised = true;
        self.controller.timings = timings.clone();
        let max_len = self.controller.gamma_max;
        self.mark_live(0, max_len);
        self.live_exits()
    }

    /// Positions of the prompt DEL initialises from.
    pub fn init_window(&self) -> usize {
        self.options.init_window
    }

    fn live_exits(&self) -> Vec<usize> {
        self.exits
            .iter()
            .zip(&self.live)
            .filter(|(_, &l)| l)
            .map(|(&e, _)| e)
            .collect()
    }

    /// Learns from this round's verification: `drafts` were proposed and `committed` (the accepted drafts and the
    /// target's own token) were kept.
    pub fn learn(&mut self, drafts: &[u32], committed: &[u32]) {
        if let Some(arm) = self.choice.arm {
            // Shadow tokens of a live exit already cover its own positions.
            let covered =
                self.shadow && matches!(arm, Arm::Exit(e) if self.live_exits().contains(&e));
            if !covered {
                draft_outcomes(drafts, &self.confidences, committed, &mut self.outcomes);
                self.controller.observe(arm, &self.outcomes);
            }
        }
        // Lookup's proposal costs nothing, so it is checked whenever it was not used.
        if self.with_lookup && self.choice.arm != Some(Arm::Lookup) && !self.lookup.is_empty() {
            lookup_outcomes(&self.lookup, committed, &mut self.outcomes);
            self.controller.observe(Arm::Lookup, &self.outcomes);
        }
    }

    /// Learns from shadow tokens: `predictions` (token, confidence) of `exit` at positions whose actual tokens are
    /// `targets`; `seconds` is this request's share of their cost.
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
    }
}
