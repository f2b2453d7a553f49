//! Speculative decoding of one sequence of a [`Session`] (`generate`, `chat`, `bench spec`): the driver's batch of
//! one. Its prefill is the session's own (rounded as llama.cpp rounds the prompt, so the first token is plain
//! decoding's), capturing the prompt's last hidden states for DEL's initialisation; every round after it is a
//! [`step::run`] over a single lane.

use super::controller::{Arm, Controller, Timings};
use super::draft_model::DraftModel;
use super::error::SpecError;
use super::lane::{Lane, Runner, SpecState};
use super::mode::Speculation;
use super::options::SpecOptions;
use super::policy::{Policy, Progress};
use super::stats::{fold_answer_len, Learned, SpecStats};
use super::step::{self, StepOptions};
use crate::sampler::{Sampler, SamplerConfig};
use fulcrum_core::{Model, ModelError, Session};
use std::sync::Arc;
use std::time::Instant;

/// Drives speculative decoding of one sequence of a target [`Session`].
pub struct Speculator {
    pub mode: Speculation,
    state: SpecState,
    draft: Option<DraftModel>,
    /// The costs the controller reads, timed on this machine.
    timings: Timings,
    /// Tokens of the prompt [`Speculator::prefill`] evaluated: the rest of the history was generated.
    prompt_len: usize,
    /// Tokens generated since that prompt.
    generated: usize,
    /// The decayed mean length of earlier answers (see [`Learned`]).
    answer_len: Option<f64>,
    /// The round's draft.
    draft_tokens: Vec<u32>,
}

impl Speculator {
    /// A driver for `mode` on `target`; `draft` is the loaded draft model for `draft` and `auto` (optional there).
    /// `n_ctx` and `n_threads` (the session's: 0 for one per core) size the draft model's cache and buffers.
    pub fn new(
        mode: Speculation,
        options: SpecOptions,
        target: &Model,
        draft: Option<Arc<Model>>,
        sampling: &SamplerConfig,
        n_ctx: usize,
        n_threads: usize,
    ) -> Result<Speculator, SpecError> {
        let draft = match draft {
            Some(model) if mode.uses_draft_model() => Some(DraftModel::new(
                model,
                target,
                n_ctx,
                fulcrum_core::session::DEFAULT_BATCH,
                n_ctx,
                fulcrum_core::threads::resolve(n_threads),
            )?),
            _ => None,
        };
        let ratio = draft.as_ref().map(DraftModel::ratio);
        let policy = Policy::new(mode.clone(), options, target.config.n_layers, ratio, true)?;
        Ok(Speculator {
            state: SpecState::new(policy, sampling),
            draft,
            timings: Timings::default(),
            prompt_len: 0,
            generated: 0,
            answer_len: None,
            draft_tokens: Vec::new(),
            mode,
        })
    }

    /// The controller (its statistics and the timings of its last round).
    pub fn controller(&self) -> &Controller {
        self.state.policy.controller()
    }

    /// The costs timed so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
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
            timings: self.timings.clone(),
            answer_len: self.answer_len_so_far(),
            exits: self
                .controller()
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
        self.timings = learned.timings;
        self.answer_len = learned.answer_len;
        let controller = self.state.policy.controller_mut();
        for (arm, acceptance) in learned.exits {
            if let Some((_, mine)) = controller.arms.iter_mut().find(|(a, _)| *a == arm) {
                *mine = acceptance;
            }
        }
        self.generated = 0;
    }

    /// The statistics so far, with the controller's current α per arm.
    pub fn final_stats(&self) -> SpecStats {
        self.state.policy.final_stats()
    }

    /// Evaluates the prompt (what plain decoding's prefill does, with the same arithmetic) and returns the last
    /// token's logits. DEL and auto also capture the hidden states of the prompt's last tokens at the candidate
    /// exits, classified after the first round has timed the layers (papers.md §2.2, "32-token prefill adjustment").
    pub fn prefill(
        &mut self,
        session: &mut Session,
        prompt: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        self.answer_len = self.answer_len_so_far();
        self.generated = 0;
        self.prompt_len = prompt.len();
        self.state.policy.restart();
        let started = Instant::now();
        let n_layers = session.model.config.n_layers;
        // A prompt that fits one batch times a large batch for the cost model (layers dominate its time).
        let one_batch = prompt.len() > 1 && prompt.len() <= session.hidden_capacity();
        let window = self.state.policy.init_window().min(prompt.len());
        let exits = match window {
            0 | 1 => Vec::new(),
            _ => self.state.policy.init_exits(&self.timings),
        };
        let logits = if exits.is_empty() {
            session.eval_last(prompt)?.to_vec()
        } else {
            let mut captured = Vec::new();
            let logits = session
                .eval_last_capturing(prompt, &exits, window, &mut captured)?
                .to_vec();
            // Row i predicts the token after it: the rows before the last predict the prompt's last tokens.
            let window = captured[0].len() / session.model.config.d_model;
            let targets = &prompt[prompt.len() + 1 - window..];
            for (exit, rows) in exits.into_iter().zip(captured) {
                self.state.add_init_rows(exit, rows, targets.to_vec());
            }
            logits
        };
        if one_batch {
            let per_layer = started.elapsed().as_secs_f64() / n_layers as f64;
            self.timings.layer.record(prompt.len(), per_layer);
        }
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
            .min(max_new.saturating_sub(1));
        let progress = Progress {
            generated: history.len().saturating_sub(self.prompt_len),
            left: max_new,
            draft_behind: 0,
            typical: self.answer_len,
        };
        let (pool, model, kv, scratch, delta) = session.parts();
        let mut lane = Lane {
            tokens: history,
            start: pos,
            len: 1,
            wants_logits: true,
            decode: true,
            slots: None,
            draft: &mut self.draft_tokens,
            state: Some(&mut self.state),
            sampler,
            delta,
        };
        if let (Some(draft), Speculation::Auto) = (&mut self.draft, &self.mode) {
            // auto's first round times the draft model's batches, so that its first probe is priced right.
            draft.calibrate(pool, &mut lane, &mut self.timings)?;
        }
        if let Some(state) = lane.state.as_deref_mut() {
            state.plan(
                &self.timings,
                None,
                lane.tokens,
                max_len,
                progress,
                lane.draft,
            );
        }
        let target = Runner {
            pool,
            model,
            kv,
            scratch,
        };
        let options = StepOptions {
            catch_up_batches: usize::MAX,
        };
        let mut verified = step::run(
            std::slice::from_mut(&mut lane),
            target,
            self.draft.as_mut(),
            &mut self.timings,
            options,
        )?;
        let committed = std::mem::take(&mut verified.lanes[0].committed);
        history.extend_from_slice(&committed);
        session.set_len(pos + committed.len());
        self.generated = history.len().saturating_sub(self.prompt_len);
        Ok(committed.len())
    }
}
