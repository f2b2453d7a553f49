//! One speculative round: choose, draft, verify, accept, learn.

use super::controller::{Arm, Choice};
use super::verify::{self, Verdict};
use super::{lookup, mode::SpecMode, Speculator};
use crate::sampler::Sampler;
use fulcrum_core::{ModelError, Session};
use std::time::Instant;

/// The acceptance rate at which a draft model must be expected to pay before it is tried.
const PROBE_ALPHA: f64 = 0.9;

/// How far an exit's acceptance may rise before the next look, for deciding whether it is worth watching.
const ALPHA_HEADROOM: f64 = 0.25;
/// Rounds between looks at every exit that could pay.
const REVIVE_EVERY: usize = 64;
/// While no early exit drafts, the largest share of the generation's time that shadow tokens may take: they only
/// watch for an exit that starts to pay, and on models not trained for early exit none does.
const SHADOW_SHARE: f64 = 0.02;

/// Work buffers of a [`Speculator`], reused across rounds.
pub(super) struct Buffers {
    drafts: Vec<u32>,
    /// The draft model's distribution of each draft token (sampling only).
    draft_dists: Vec<Vec<(u32, f32)>>,
    /// The drafter's confidence in each draft token.
    confidences: Vec<f32>,
    /// Layer-E hidden states of the early-exit draft's inputs, `(n + 1, d_model)`.
    exit_hidden: Vec<f32>,
    /// Per candidate exit, its hidden states of this round's positions, `(positions, d_model)`.
    shadow: Vec<Vec<f32>>,
    /// Per candidate exit, whether it could pay at all (only those get shadow tokens).
    live: Vec<bool>,
    /// DEL's prompt initialisation, waiting for the first timings: hidden states per exit and their targets.
    pending_init: Option<(Vec<Vec<f32>>, Vec<u32>)>,
    /// When the generation's prefill started (the clock [`SHADOW_SHARE`] is measured against), and the shadow
    /// seconds of earlier generations.
    started: Option<(Instant, f64)>,
    lookup: Vec<u32>,
    p: Vec<(u32, f32)>,
    residual: Vec<(u32, f32)>,
    rows: Vec<f32>,
    outcomes: Vec<(bool, f32)>,
}

impl Buffers {
    pub(super) fn new(n_exits: usize) -> Buffers {
        Buffers {
            drafts: Vec::new(),
            draft_dists: Vec::new(),
            confidences: Vec::new(),
            exit_hidden: Vec::new(),
            shadow: vec![Vec::new(); n_exits],
            live: vec![true; n_exits],
            pending_init: None,
            started: None,
            lookup: Vec::new(),
            p: Vec::new(),
            residual: Vec::new(),
            rows: Vec::new(),
            outcomes: Vec::new(),
        }
    }
}

/// Marks in `live` the candidate `exits` worth their shadow tokens: those that could pay if always right, and, once
/// their acceptance is known, would pay if it rose by [`ALPHA_HEADROOM`]. Every [`REVIVE_EVERY`] rounds all exits that
/// could pay are looked at again, for contexts where the model's early layers start to agree.
pub(super) fn mark_live(
    controller: &super::Controller,
    exits: &[usize],
    round: usize,
    max_len: usize,
    live: &mut [bool],
) {
    let revive = round.is_multiple_of(REVIVE_EVERY);
    for (live, &exit) in live.iter_mut().zip(exits) {
        let arm = Arm::Exit(exit);
        let alpha = controller.acceptance(arm).and_then(|a| a.alpha());
        let hopeful = match alpha {
            Some(alpha) if !revive => {
                controller.could_pay(arm, max_len, (alpha + ALPHA_HEADROOM).min(1.0))
            }
            _ => true,
        };
        *live = hopeful && controller.can_pay(arm, max_len);
    }
}

/// Whether round `round`, which made `choice`, computes shadow tokens: every `shadow_every` rounds while an early
/// exit drafts (its neighbours' statistics decide where it moves), four times less often otherwise (while plain
/// decoding, lookup or a draft model wins, the statistics only need to notice when an exit starts to pay), and then
/// only while they have taken at most [`SHADOW_SHARE`] of the generation's time; `spent` is the shadow seconds so
/// far and the time since the generation started.
pub(super) fn shadow_due(
    choice: Choice,
    round: usize,
    shadow_every: usize,
    live: &[bool],
    spent: Option<(f64, std::time::Duration)>,
) -> bool {
    let exit_drafts = matches!(choice.arm, Some(Arm::Exit(_)));
    let every = if exit_drafts {
        shadow_every
    } else {
        shadow_every * 4
    };
    let affordable = exit_drafts
        || spent.is_none_or(|(shadow, elapsed)| shadow <= SHADOW_SHARE * elapsed.as_secs_f64());
    live.iter().any(|&l| l) && every > 0 && round.is_multiple_of(every) && affordable
}

/// The fewest tokens a generation is expected to have left when a draft model's probe is priced.
const PROBE_HORIZON: usize = 16;

/// The tokens a generation that has produced `generated` is expected to run for, of at most `left` more: as many
/// again as it has run (an answer that has gone on for n tokens is about as likely to go on for n more as to stop),
/// at least [`PROBE_HORIZON`], and, where earlier answers in this process ran `typical` tokens on average, what is
/// left of that. A probe priced on the whole `max_tokens` would pay its draft model's catch-up on every short answer.
pub(super) fn expected_room(generated: usize, left: usize, typical: Option<f64>) -> usize {
    let rest_of_typical = typical.map_or(0.0, |t| t - generated as f64).max(0.0) as usize;
    left.min(generated.max(PROBE_HORIZON).max(rest_of_typical))
}

/// Seconds for a draft model to catch its cache up with `behind` tokens of text: its own batch of as many rows where
/// one that large was timed, else the target's scaled by the draft's step ratio; `None` before the target's layers
/// and classifier were timed.
pub(super) fn catch_up_seconds(c: &super::Controller, behind: usize) -> Option<f64> {
    let t = &c.timings;
    if let Some(seconds) = t.draft_step.estimate(behind.max(1)) {
        return Some(seconds);
    }
    let (layer, head) = (t.layer.estimate(behind.max(1))?, t.head.estimate(1)?);
    Some(c.draft_ratio? * (c.n_layers as f64 * layer + head))
}

/// Prompt tokens a draft model evaluates in `auto`'s first round when its batches were never timed, so that its
/// catch-up is priced from its own speed (the work is kept: they are the start of that catch-up).
pub(super) const CALIBRATION_ROWS: usize = 16;

/// Whether a round tries the draft model: it is due (from the second round while it was never tried, or after
/// `probe_every` rounds `idle`), and at [`PROBE_ALPHA`] it would save more of the `room` tokens' time than catching
/// its cache up with `behind` tokens costs ([`super::Controller::worth_probing`]).
pub(super) fn draft_probe_due(
    c: &super::Controller,
    (round, idle, probe_every): (usize, usize, usize),
    (max_len, instead): (usize, Choice),
    room: usize,
    behind: usize,
) -> bool {
    let never = c
        .acceptance(Arm::DraftModel)
        .and_then(|a| a.alpha())
        .is_none();
    let due = idle >= probe_every || (never && round > 1);
    due && c.worth_probing(
        (Arm::DraftModel, instead),
        max_len,
        PROBE_ALPHA,
        room,
        catch_up_seconds(c, behind).unwrap_or(0.0),
    )
}

/// The controller's choice among the exits, lookup (if it has a proposal of `lookup_len` tokens, to which its draft
/// is cut) and the draft model (if `with_draft`), with drafts of at most `max_len` tokens.
pub(super) fn choose_drafter(
    c: &super::Controller,
    max_len: usize,
    lookup_len: usize,
    with_draft: bool,
) -> Choice {
    let choice = c.choose(max_len, |arm| match arm {
        Arm::Lookup => lookup_len > 0,
        Arm::DraftModel => with_draft,
        Arm::Exit(_) => true,
    });
    match choice.arm {
        Some(Arm::Lookup) => Choice {
            draft_len: choice.draft_len.min(lookup_len),
            ..choice
        },
        _ => choice,
    }
}

/// Writes to `out` whether each of a round's `drafts` matches the `committed` text (the accepted drafts and the
/// target's own token, so the list stops at the first rejection, its position included), with the drafter's
/// confidence in it (1 where none was given).
pub(super) fn draft_outcomes(
    drafts: &[u32],
    confidences: &[f32],
    committed: &[u32],
    out: &mut Vec<(bool, f32)>,
) {
    out.clear();
    out.extend(
        drafts
            .iter()
            .zip(committed)
            .enumerate()
            .map(|(j, (&d, &actual))| (d == actual, confidences.get(j).copied().unwrap_or(1.0))),
    );
}

/// Writes to `out` prompt lookup's `proposal` checked against the `committed` text, up to and including its first
/// miss (lookup's proposals cost nothing, so they are judged even in rounds that did not use them).
pub(super) fn lookup_outcomes(proposal: &[u32], committed: &[u32], out: &mut Vec<(bool, f32)>) {
    out.clear();
    for (&proposed, &actual) in proposal.iter().zip(committed) {
        out.push((proposed == actual, 1.0));
        if proposed != actual {
            break;
        }
    }
}

/// The most likely token of `logits` (lowest id on ties, NaN never) and its softmax probability.
pub fn argmax_confidence(logits: &[f32]) -> (u32, f32) {
    let best = crate::sampler::argmax(logits);
    let max = logits[best as usize];
    if !max.is_finite() {
        return (best, 0.0);
    }
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from((v - max).exp()))
        .sum();
    (best, (1.0 / sum) as f32)
}

impl Speculator {
    /// Evaluates the prompt (what plain decoding's prefill does, with the same arithmetic) and returns the last
    /// token's logits. DEL and auto also initialise every candidate exit's statistics from its predictions of the
    /// prompt's last tokens (papers.md §2.2, "32-token prefill adjustment").
    pub fn prefill(
        &mut self,
        session: &mut Session,
        prompt: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let window = self.options.init_window.min(prompt.len());
        self.answer_len = self.answer_len_so_far();
        self.generated = 0;
        self.prompt_len = prompt.len();
        let started = Instant::now();
        self.buffers.started = Some((started, self.stats.shadow_seconds));
        let n_layers = session.model.config.n_layers;
        // A prompt that fits one batch times a large batch for the cost model (layers dominate its time).
        let one_batch = prompt.len() > 1 && prompt.len() <= session.hidden_capacity();
        let time_it = |controller: &mut super::Controller| {
            if one_batch {
                let per_layer = started.elapsed().as_secs_f64() / n_layers as f64;
                controller.timings.layer.record(prompt.len(), per_layer);
            }
        };
        if self.exits.is_empty() || window < 2 {
            let logits = session.eval_last(prompt)?.to_vec();
            time_it(&mut self.controller);
            return Ok(logits);
        }
        let mut captured = Vec::new();
        let logits = session
            .eval_last_capturing(prompt, &self.exits, window, &mut captured)?
            .to_vec();
        time_it(&mut self.controller);
        let window = captured[0].len() / session.model.config.d_model;
        // Rows 0..window-1 predict the prompt's last window-1 tokens. Their shadow tokens are computed once the first
        // round has timed the layers, and only for exits that could pay.
        let targets = prompt[prompt.len() + 1 - window..].to_vec();
        self.buffers.pending_init = Some((captured, targets));
        Ok(logits)
    }

    /// Runs one round after `history` (whose last token is not yet in `session`'s cache) and appends the tokens it
    /// commits, at least one and at most `max_new`. Returns how many.
    pub fn step(
        &mut self,
        session: &mut Session,
        sampler: &mut Sampler,
        history: &mut Vec<u32>,
        max_new: usize,
    ) -> Result<usize, ModelError> {
        let pos = session.len();
        if history.len() != pos + 1 {
            return Err(ModelError::BadBatch(format!(
                "speculation expects the cache to hold all but the last of {} tokens, it holds {pos}",
                history.len()
            )));
        }
        // Drafts take positions pos+1..=pos+n, which must fit the context; a round commits at most n + 1 tokens.
        let max_len = session
            .n_ctx()
            .saturating_sub(pos + 1)
            .min(max_new.saturating_sub(1))
            .min(self.controller.gamma_max);
        self.round += 1;
        let lookup_wanted = matches!(self.mode, SpecMode::Lookup { .. } | SpecMode::Auto);
        if lookup_wanted {
            lookup::propose(history, max_len, &mut self.buffers.lookup);
        }
        self.update_live(max_len.max(1));
        if self.round > 1 {
            self.initialise_from_prompt(session)?;
        } else {
            self.calibrate_draft(history)?;
        }
        let choice = self.choose(history, max_len, max_new);
        let shadow = self.is_shadow_round(choice);
        let start = history.len();
        match choice.arm {
            None => self.plain_round(session, sampler, history, shadow)?,
            Some(Arm::Exit(exit)) => {
                self.exit_round(session, sampler, history, exit, choice.draft_len, shadow)?
            }
            Some(Arm::Lookup) => {
                let b = &mut self.buffers;
                b.drafts.clear();
                b.drafts
                    .extend_from_slice(&b.lookup[..choice.draft_len.min(b.lookup.len())]);
                b.confidences.clear();
                b.confidences.resize(b.drafts.len(), 1.0);
                self.full_round(session, sampler, history, shadow, false)?
            }
            Some(Arm::DraftModel) => {
                self.draft_with_model(history, choice.draft_len)?;
                self.full_round(session, sampler, history, shadow, true)?
            }
        }
        let committed = history.len() - start;
        self.generated = history.len().saturating_sub(self.prompt_len);
        self.learn(session, choice, &history[start..], shadow)?;
        if let Some(runner) = &mut self.draft {
            runner.idle = if choice.arm == Some(Arm::DraftModel) {
                0
            } else {
                runner.idle + 1
            };
        }
        Ok(committed)
    }

    /// Marks the candidate exits worth their shadow tokens ([`mark_live`]).
    fn update_live(&mut self, max_len: usize) {
        mark_live(
            &self.controller,
            &self.exits,
            self.round,
            max_len,
            &mut self.buffers.live,
        );
    }

    /// In `auto`, while the draft model's batches were never timed, evaluates the next [`CALIBRATION_ROWS`] tokens
    /// of `history` it lacks and times them; a text shorter than that is cheap to catch up with at any speed.
    fn calibrate_draft(&mut self, history: &[u32]) -> Result<(), ModelError> {
        let Some(runner) = &mut self.draft else {
            return Ok(());
        };
        let timed = self
            .controller
            .timings
            .draft_step
            .estimate(CALIBRATION_ROWS);
        if self.mode != SpecMode::Auto || timed.is_some() {
            return Ok(());
        }
        let keep = runner.cached_prefix(history);
        let end = keep + CALIBRATION_ROWS;
        if end >= history.len() {
            return Ok(());
        }
        runner.session.truncate(keep);
        runner.fed.truncate(keep);
        let started = Instant::now();
        runner.session.eval_last(&history[keep..end])?;
        runner.fed.extend_from_slice(&history[keep..end]);
        self.controller
            .timings
            .draft_step
            .record(CALIBRATION_ROWS, started.elapsed().as_secs_f64());
        Ok(())
    }

    /// DEL's initialisation from the prompt's last tokens, for the exits still live.
    fn initialise_from_prompt(&mut self, session: &mut Session) -> Result<(), ModelError> {
        let Some((captured, targets)) = self.buffers.pending_init.take() else {
            return Ok(());
        };
        self.learn_from_shadow(session, &captured, &targets)
    }

    /// Whether this round computes shadow tokens ([`shadow_due`]).
    fn is_shadow_round(&self, choice: Choice) -> bool {
        let spent = self
            .buffers
            .started
            .map(|(started, before)| (self.stats.shadow_seconds - before, started.elapsed()));
        shadow_due(
            choice,
            self.round,
            self.options.shadow_every,
            &self.buffers.live,
            spent,
        )
    }

    /// The round's choice, with drafts of at most `max_len` tokens and `room` tokens left to generate after
    /// `history`.
    fn choose(&mut self, history: &[u32], max_len: usize, room: usize) -> Choice {
        if max_len == 0 {
            return Choice::PLAIN;
        }
        let fixed = |arm, len: usize| Choice {
            arm: Some(arm),
            draft_len: len.min(max_len),
        };
        match &self.mode {
            SpecMode::Off => Choice::PLAIN,
            SpecMode::Lookup { .. } if self.buffers.lookup.is_empty() => Choice::PLAIN,
            SpecMode::Lookup { gamma: Some(gamma) } => {
                fixed(Arm::Lookup, (*gamma).min(self.buffers.lookup.len()))
            }
            SpecMode::Lookup { gamma: None } => {
                let len = self.buffers.lookup.len();
                let choice = self
                    .controller
                    .choose(max_len.min(len), |arm| arm == Arm::Lookup);
                Choice {
                    draft_len: choice.draft_len.min(len),
                    ..choice
                }
            }
            SpecMode::Draft { gamma, .. } => fixed(Arm::DraftModel, *gamma),
            SpecMode::EarlyExit { exit, gamma } => fixed(Arm::Exit(*exit), *gamma),
            SpecMode::ExitFsm { exit } => fixed(Arm::Exit(*exit), self.fsm_gamma),
            SpecMode::Del | SpecMode::Auto => {
                let choice = choose_drafter(
                    &self.controller,
                    max_len,
                    self.buffers.lookup.len(),
                    self.draft.is_some(),
                );
                if let Some(runner) = &self.draft {
                    let generated = history.len().saturating_sub(self.prompt_len);
                    let probe = draft_probe_due(
                        &self.controller,
                        (self.round, runner.idle, self.options.probe_every),
                        (max_len, choice),
                        expected_room(generated, room, self.answer_len),
                        history.len() - runner.cached_prefix(history),
                    );
                    if probe {
                        return fixed(Arm::DraftModel, super::mode::DRAFT_GAMMA);
                    }
                }
                choice
            }
        }
    }

    /// Runs the stream's `n` rows at `start_pos` through `layers`, copying on shadow rounds the hidden state at every
    /// candidate exit strictly inside the range; times the layers for the cost model.
    fn run_capturing(
        &mut self,
        session: &mut Session,
        layers: std::ops::Range<usize>,
        start_pos: usize,
        n: usize,
        shadow: bool,
    ) -> Result<(), ModelError> {
        let started = Instant::now();
        let mut from = layers.start;
        if shadow {
            for (i, &exit) in self.exits.iter().enumerate() {
                if self.buffers.live[i] && exit > layers.start && exit < layers.end {
                    session.run_layers(from..exit, start_pos, n)?;
                    self.buffers.shadow[i].extend_from_slice(session.hidden(n));
                    from = exit;
                }
            }
        }
        session.run_layers(from..layers.end, start_pos, n)?;
        let count = layers.len().max(1);
        let per_layer = started.elapsed().as_secs_f64() / count as f64;
        self.controller.timings.layer.record(n, per_layer);
        Ok(())
    }

    /// The classifier over the stream's first `rows` rows, timed.
    fn classify<'s>(&mut self, session: &'s mut Session, rows: usize) -> &'s [f32] {
        let started = Instant::now();
        let logits = session.classify(rows);
        self.controller
            .timings
            .head
            .record(rows, started.elapsed().as_secs_f64());
        logits
    }

    fn clear_shadow(&mut self) {
        self.buffers.shadow.iter_mut().for_each(Vec::clear);
    }

    /// One token the plain way (through the layer-range path, which rounds as single-token decoding does).
    fn plain_round(
        &mut self,
        session: &mut Session,
        sampler: &mut Sampler,
        history: &mut Vec<u32>,
        shadow: bool,
    ) -> Result<(), ModelError> {
        let pos = session.len();
        let next = history[pos];
        self.clear_shadow();
        session.embed(&[next])?;
        let n_layers = session.model.config.n_layers;
        self.run_capturing(session, 0..n_layers, pos, 1, shadow)?;
        let logits = self.classify(session, 1);
        let b = &mut self.buffers;
        sampler.distribution(logits, history, &mut b.p);
        let token = if b.p.len() == 1 {
            b.p[0].0
        } else {
            sampler.draw_from(&b.p)
        };
        history.push(token);
        session.set_len(pos + 1);
        self.stats.plain_steps += 1;
        Ok(())
    }

    /// Verifies the drafts in `buffers.drafts` (from lookup or a draft model) with one full forward pass.
    fn full_round(
        &mut self,
        session: &mut Session,
        sampler: &mut Sampler,
        history: &mut Vec<u32>,
        shadow: bool,
        sampled_drafts: bool,
    ) -> Result<(), ModelError> {
        let pos = session.len();
        let n = self.buffers.drafts.len();
        if n == 0 {
            return self.plain_round(session, sampler, history, shadow);
        }
        self.clear_shadow();
        let mut tokens = Vec::with_capacity(n + 1);
        tokens.push(history[pos]);
        tokens.extend_from_slice(&self.buffers.drafts);
        session.embed(&tokens)?;
        let n_layers = session.model.config.n_layers;
        self.run_capturing(session, 0..n_layers, pos, n + 1, shadow)?;
        let vocab = session.model.config.vocab_size;
        let logits = self.classify(session, n + 1);
        let b = &mut self.buffers;
        let k = accept(logits, vocab, b, sampled_drafts, sampler, history);
        session.set_len(pos + k + 1);
        Ok(())
    }

    /// Drafts up to `max_len` tokens with the target's first `exit` layers, then verifies them by running the layers
    /// from `exit` on over the saved hidden states (and the whole network for the last draft token only).
    fn exit_round(
        &mut self,
        session: &mut Session,
        sampler: &mut Sampler,
        history: &mut Vec<u32>,
        exit: usize,
        max_len: usize,
        shadow: bool,
    ) -> Result<(), ModelError> {
        let pos = session.len();
        let n_layers = session.model.config.n_layers;
        let vocab = session.model.config.vocab_size;
        let confidence_stop = matches!(self.mode, SpecMode::Del | SpecMode::Auto);
        let tau = self
            .controller
            .acceptance(Arm::Exit(exit))
            .and_then(|a| a.threshold());
        self.clear_shadow();
        self.buffers.drafts.clear();
        self.buffers.confidences.clear();
        self.buffers.exit_hidden.clear();
        let mut token = history[pos];
        for i in 0..max_len {
            session.embed(&[token])?;
            self.run_capturing(session, 0..exit, pos + i, 1, shadow)?;
            self.buffers
                .exit_hidden
                .extend_from_slice(session.hidden(1));
            let (draft, confidence) = argmax_confidence(self.classify(session, 1));
            self.buffers.drafts.push(draft);
            self.buffers.confidences.push(confidence);
            token = draft;
            if session.model.tokenizer.is_eog(draft) {
                break;
            }
            // DEL's dynamic draft exit: a token less confident than τ is kept, but drafting stops after it.
            if confidence_stop && tau.is_some_and(|tau| confidence < tau) {
                break;
            }
        }
        let n = self.buffers.drafts.len();
        // The last draft token has not been through any layer yet.
        session.embed(&[token])?;
        self.run_capturing(session, 0..exit, pos + n, 1, shadow)?;
        self.buffers
            .exit_hidden
            .extend_from_slice(session.hidden(1));
        session.load_hidden(&self.buffers.exit_hidden)?;
        self.run_capturing(session, exit..n_layers, pos, n + 1, shadow)?;
        if shadow {
            // The candidate at the exit itself sees exactly the saved layer-E states.
            if let Some(i) = self.exits.iter().position(|&e| e == exit) {
                let b = &mut self.buffers;
                b.shadow[i].clear();
                b.shadow[i].extend_from_slice(&b.exit_hidden);
            }
        }
        let logits = self.classify(session, n + 1);
        let b = &mut self.buffers;
        let k = accept(logits, vocab, b, false, sampler, history);
        session.set_len(pos + k + 1);
        Ok(())
    }

    /// Fills `buffers.drafts` with up to `len` tokens from the draft model, after catching its cache up with
    /// `history`.
    fn draft_with_model(&mut self, history: &[u32], len: usize) -> Result<(), ModelError> {
        let b = &mut self.buffers;
        b.drafts.clear();
        b.confidences.clear();
        b.draft_dists.clear();
        let Some(runner) = &mut self.draft else {
            return Ok(());
        };
        let started = Instant::now();
        // Keep the cache's longest prefix that is still the committed text, then feed the rest.
        let keep = runner.cached_prefix(history);
        runner.session.truncate(keep);
        runner.fed.truncate(keep);
        let catch_up = &history[keep..];
        let mut logits = runner.session.eval_last(catch_up)?.to_vec();
        runner.fed.extend_from_slice(catch_up);
        // A round's own catch-up (its bonus token, and the last draft when all were accepted) costs about a step;
        // a longer one is timed as the batch it is, not as steps.
        let caught_up = catch_up.len() > 2;
        let mut stepping = started;
        if caught_up {
            let seconds = started.elapsed().as_secs_f64();
            self.controller
                .timings
                .draft_step
                .record(catch_up.len(), seconds);
            stepping = Instant::now();
        }
        let greedy = runner.sampler.config().temperature <= 0.0;
        let mut recent = history.to_vec();
        for i in 0..len {
            let (token, confidence) = if greedy {
                argmax_confidence(&logits)
            } else {
                let mut q = Vec::new();
                runner.sampler.distribution(&logits, &recent, &mut q);
                let token = runner.sampler.draw_from(&q);
                let p = verify::prob(&q, token);
                b.draft_dists.push(q);
                (token, p)
            };
            b.drafts.push(token);
            b.confidences.push(confidence);
            recent.push(token);
            if i + 1 == len || runner.session.model.tokenizer.is_eog(token) {
                break;
            }
            if runner.session.len() + 1 >= runner.session.n_ctx() {
                break;
            }
            logits.copy_from_slice(runner.session.eval_last(&[token])?);
            runner.fed.push(token);
        }
        // After a long catch-up the first draft came with it and each later one cost a step.
        let steps = b.drafts.len().saturating_sub(usize::from(caught_up));
        if steps > 0 {
            self.controller
                .timings
                .draft_step
                .record(1, stepping.elapsed().as_secs_f64() / steps as f64);
        }
        Ok(())
    }

    /// Updates the statistics and the controller after a round that committed `committed`.
    fn learn(
        &mut self,
        session: &mut Session,
        choice: Choice,
        committed: &[u32],
        shadow: bool,
    ) -> Result<(), ModelError> {
        let b = &mut self.buffers;
        if let Some(arm) = choice.arm {
            let n = b.drafts.len();
            let k = committed.len() - 1;
            self.stats.rounds += 1;
            self.stats.drafted += n;
            self.stats.accepted += k;
            let arm_stats = self.stats.per_arm.entry(arm).or_default();
            arm_stats.rounds += 1;
            arm_stats.drafted += n;
            arm_stats.accepted += k;
            if self.stats.accepted_lengths.len() <= k {
                self.stats.accepted_lengths.resize(k + 1, 0);
            }
            self.stats.accepted_lengths[k] += 1;
            if let SpecMode::ExitFsm { .. } = self.mode {
                self.fsm_gamma = if k == n {
                    (self.fsm_gamma + 1).min(self.controller.gamma_max)
                } else {
                    self.fsm_gamma.saturating_sub(1).max(1)
                };
            }
            // The arm's own drafts, clipped at the first rejection (its position included).
            let live_exit = |e: usize| {
                let i = self.exits.iter().position(|&x| x == e);
                i.is_some_and(|i| b.live[i])
            };
            let covered_by_shadow = shadow && matches!(arm, Arm::Exit(e) if live_exit(e));
            if !covered_by_shadow {
                draft_outcomes(&b.drafts, &b.confidences, committed, &mut b.outcomes);
                self.controller.observe(arm, &b.outcomes);
            }
        }
        // Lookup's proposal costs nothing, so it is checked against the committed text whenever it was not used.
        if choice.arm != Some(Arm::Lookup)
            && !b.lookup.is_empty()
            && self.controller.acceptance(Arm::Lookup).is_some()
        {
            lookup_outcomes(&b.lookup, committed, &mut b.outcomes);
            self.controller.observe(Arm::Lookup, &b.outcomes);
        }
        if shadow {
            // Lent out and put back before any error returns: the rounds index it by exit.
            let per_exit = std::mem::take(&mut self.buffers.shadow);
            let learned = self.learn_from_shadow(session, &per_exit, committed);
            self.buffers.shadow = per_exit;
            learned?;
            self.stats.shadow_rounds += 1;
        }
        Ok(())
    }

    /// Classifies the hidden states `per_exit` holds for the live candidate exits (the first `targets.len()` rows
    /// of each) and records, per exit, whether each position's prediction matches `targets`; the time counts as
    /// shadow time.
    fn learn_from_shadow(
        &mut self,
        session: &mut Session,
        per_exit: &[Vec<f32>],
        targets: &[u32],
    ) -> Result<(), ModelError> {
        let started = Instant::now();
        let positions = targets.len();
        let vocab = session.model.config.vocab_size;
        let d = session.model.config.d_model;
        self.buffers.rows.clear();
        for (rows, &live) in per_exit.iter().zip(&self.buffers.live) {
            if live {
                self.buffers.rows.extend_from_slice(&rows[..positions * d]);
            }
        }
        let total = self.buffers.rows.len() / d;
        if total == 0 {
            return Ok(());
        }
        let capacity = session.hidden_capacity();
        let mut done = 0;
        let mut predictions = Vec::with_capacity(total);
        while done < total {
            let rows = (total - done).min(capacity);
            session.load_hidden(&self.buffers.rows[done * d..(done + rows) * d])?;
            let logits = session.classify_batch(rows);
            predictions.extend(logits.chunks_exact(vocab).map(argmax_confidence));
            done += rows;
        }
        let live: Vec<usize> = self
            .exits
            .iter()
            .zip(&self.buffers.live)
            .filter(|(_, &l)| l)
            .map(|(&e, _)| e)
            .collect();
        for (i, &exit) in live.iter().enumerate() {
            let b = &mut self.buffers;
            b.outcomes.clear();
            for (j, &(token, confidence)) in predictions[i * positions..(i + 1) * positions]
                .iter()
                .enumerate()
            {
                b.outcomes.push((token == targets[j], confidence));
            }
            self.controller.observe(Arm::Exit(exit), &b.outcomes);
        }
        self.stats.shadow_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Walks the verification rows: keeps the drafts in `b.drafts` while the target agrees (greedy) or while rejection
/// sampling accepts them (against the draft model's distributions in `b.draft_dists` if `sampled_drafts`, else as
/// deterministic proposals), then appends the target's own token. Appends every committed token to `history` and
/// returns how many drafts were kept.
fn accept(
    logits: &[f32],
    vocab: usize,
    b: &mut Buffers,
    sampled_drafts: bool,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
) -> usize {
    let drafts = &b.drafts;
    for (j, row) in logits.chunks_exact(vocab).enumerate() {
        sampler.distribution(row, history, &mut b.p);
        if j == drafts.len() {
            let bonus = if b.p.len() == 1 {
                b.p[0].0
            } else {
                sampler.draw_from(&b.p)
            };
            history.push(bonus);
            return j;
        }
        let q_j = sampled_drafts
            .then(|| b.draft_dists.get(j))
            .flatten()
            .map(Vec::as_slice);
        match verify::check(&b.p, q_j, drafts[j], sampler, &mut b.residual) {
            Verdict::Accept => history.push(drafts[j]),
            Verdict::Replace(token) => {
                history.push(token);
                return j;
            }
        }
    }
    drafts.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Controller, CostUnits};

    #[test]
    fn the_expected_room_follows_the_answer_and_earlier_answers() {
        // Alone: as many tokens again as generated, at least the horizon, at most what is left.
        assert_eq!(expected_room(0, 127, None), PROBE_HORIZON);
        assert_eq!(expected_room(40, 87, None), 40);
        assert_eq!(expected_room(100, 27, None), 27);
        // Earlier answers of about 110 tokens: the rest of that, from the start.
        assert_eq!(expected_room(1, 127, Some(110.0)), 109);
        assert_eq!(expected_room(80, 47, Some(110.0)), 47);
        // Longer than the earlier answers: back to as many again.
        assert_eq!(expected_room(60, 67, Some(30.0)), 60);
    }

    #[test]
    fn a_catch_up_is_priced_from_the_draft_models_own_batches() {
        let mut c = Controller::new(&[Arm::DraftModel], 28, CostUnits::Seconds);
        c.draft_ratio = Some(0.5);
        assert_eq!(catch_up_seconds(&c, 200), None);
        // The target's prompt of 100 rows: 15 ms a row in all, half that for the draft before it is timed.
        c.timings.layer.record(1, 0.002);
        c.timings.layer.record(100, 1.5 / 28.0);
        c.timings.head.record(1, 0.005);
        let before = catch_up_seconds(&c, 200).unwrap();
        assert!(
            (before - 0.5 * (200.0 * 1.5 / 100.0 + 0.005)).abs() < 1e-9,
            "{before}"
        );
        // The draft model's calibration batch ran at 3 ms a row: that prices it from then on.
        c.timings.draft_step.record(CALIBRATION_ROWS, 0.048);
        let after = catch_up_seconds(&c, 200).unwrap();
        assert!((after - 0.6).abs() < 1e-9, "{after}");
    }
}
