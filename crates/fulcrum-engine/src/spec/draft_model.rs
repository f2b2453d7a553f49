//! The draft-model drafter: a smaller model with the target's vocabulary drafts greedily (or from its own
//! distribution q when the target samples), batched over every sequence that uses it.
//!
//! Its cache has one row per row of the target's (a sequence's slots address both; a single sequence's caches are
//! both contiguous), and each sequence records how many of its positions the draft cache holds
//! ([`super::SpecState::draft_fed`]). A round first catches the draft cache up with the committed text (the whole prompt
//! at first), which also yields the first draft token, then runs one batched single-token step per further draft
//! position. After verification `draft_fed` drops to the first rejected position, so the next catch-up overwrites
//! the stale rows.

use super::controller::Timings;
use super::error::SpecError;
use super::lane::{draft_batch, Lane};
use super::rules::{argmax_confidence, CALIBRATION_ROWS};
use super::verify;
use fulcrum_core::kv::KvCache;
use fulcrum_core::model::Scratch;
use fulcrum_core::{Model, ModelError, Rounding, SeqSpan, ThreadPool};
use std::sync::Arc;
use std::time::Instant;

/// A draft model beside a target: its own cache and activations.
pub struct DraftModel {
    pub model: Arc<Model>,
    kv: KvCache,
    scratch: Scratch,
    /// Its decode step over the target's, by weight bytes, until one is timed.
    ratio: Option<f64>,
}

impl DraftModel {
    /// `model` drafting for `target` (checked to share its vocabulary), with a cache of `rows` rows, batches of up
    /// to `max_batch` tokens and sequences of up to `max_seq_len` positions.
    pub fn new(
        model: Arc<Model>,
        target: &Model,
        rows: usize,
        max_batch: usize,
        max_seq_len: usize,
        n_threads: usize,
    ) -> Result<DraftModel, SpecError> {
        check_vocabulary(target, &model)?;
        Ok(DraftModel {
            kv: model.new_kv_cache(rows),
            scratch: Scratch::new(&model.config, max_batch, max_seq_len, n_threads),
            ratio: step_ratio(&model, target),
            model,
        })
    }

    /// Its decode step as a fraction of the target's, estimated from the files' sizes.
    pub fn ratio(&self) -> Option<f64> {
        self.ratio
    }

    /// Times a catch-up batch of [`CALIBRATION_ROWS`] of the text `lane` has computed, if no batch that large was
    /// timed yet, so that a first probe is priced from the draft model's own speed (the rows are kept: they are the
    /// start of that catch-up).
    pub fn calibrate(
        &mut self,
        pool: &ThreadPool,
        lane: &mut Lane,
        timings: &mut Timings,
    ) -> Result<(), ModelError> {
        let Some(state) = lane.state.as_deref_mut() else {
            return Ok(());
        };
        if timings.draft_step.estimate(CALIBRATION_ROWS).is_some() {
            return Ok(());
        }
        let keep = state.draft_fed.min(lane.start);
        let end = keep + CALIBRATION_ROWS;
        if end > lane.start {
            return Ok(());
        }
        let span = SeqSpan {
            start_row: 0,
            len: CALIBRATION_ROWS,
            start_pos: keep,
            slots: lane.slots.map(|s| &s[..end]),
            logits_from: CALIBRATION_ROWS - 1,
            delta: None,
        };
        let started = Instant::now();
        self.model.forward_batch(
            pool,
            &lane.tokens[keep..end],
            &[span],
            &mut self.kv,
            &mut self.scratch,
            Rounding::BatchInvariant,
        )?;
        timings
            .draft_step
            .record(CALIBRATION_ROWS, started.elapsed().as_secs_f64());
        state.draft_fed = end;
        Ok(())
    }

    /// Fills the placeholder drafts of `lanes[m]`, `m` in `members`: one batched forward (or up to `batches`) that
    /// catches the draft cache up with each sequence's text and yields its first draft token, then one batched step
    /// per further position. A sequence whose catch-up does not fit decodes plainly this step (its draft is
    /// cleared), keeping what it caught up.
    pub(super) fn fill(
        &mut self,
        pool: &ThreadPool,
        lanes: &mut [Lane],
        members: &[usize],
        timings: &mut Timings,
        batches: usize,
    ) -> Result<(), ModelError> {
        let vocab = self.model.config.vocab_size;
        let capacity = self.scratch.max_batch;
        let mut fed: Vec<usize> = members
            .iter()
            .map(|&m| {
                let lane = &lanes[m];
                lane.state
                    .as_deref()
                    .map_or(0, |s| s.draft_fed)
                    .min(lane.start)
            })
            .collect();
        let mut caught_up = vec![false; members.len()];
        let mut tokens = Vec::new();
        let mut rows_of = Vec::new();
        // Catch-up: each member's text from where its draft rows end through the token the step decodes.
        for _ in 0..batches {
            tokens.clear();
            rows_of.clear();
            let mut spans = Vec::new();
            for (i, &m) in members.iter().enumerate() {
                let lane = &lanes[m];
                let want = (lane.start + 1).saturating_sub(fed[i]);
                let take = want.min(capacity - tokens.len());
                if caught_up[i] || take == 0 {
                    continue;
                }
                let finishing = take == want;
                spans.push(SeqSpan {
                    start_row: tokens.len(),
                    len: take,
                    start_pos: fed[i],
                    slots: lane.slots_to(fed[i] + take),
                    logits_from: if finishing { take - 1 } else { take },
                    delta: None,
                });
                tokens.extend_from_slice(&lane.tokens[fed[i]..fed[i] + take]);
                fed[i] += take;
                if finishing {
                    rows_of.push(i);
                }
            }
            if spans.is_empty() {
                break;
            }
            let logits = self.timed_forward(pool, &tokens, &spans, timings)?;
            for (row, &i) in rows_of.iter().enumerate() {
                caught_up[i] = true;
                let lane = &mut lanes[members[i]];
                draw(lane, 0, &logits[row * vocab..][..vocab], &self.model);
            }
            if caught_up.iter().all(|&c| c) {
                break;
            }
        }
        // Further positions: each member still drafting feeds the token it drafted last.
        let mut step = 1;
        loop {
            let active: Vec<usize> = (0..members.len())
                .filter(|&i| caught_up[i] && lanes[members[i]].draft.len() > step)
                .collect();
            if active.is_empty() {
                break;
            }
            let spans = draft_batch(lanes, members, &active, step, &mut tokens);
            for &i in &active {
                fed[i] = lanes[members[i]].start + step + 1;
            }
            let logits = self.timed_forward(pool, &tokens, &spans, timings)?;
            for (row, &i) in active.iter().enumerate() {
                let lane = &mut lanes[members[i]];
                draw(lane, step, &logits[row * vocab..][..vocab], &self.model);
            }
            step += 1;
        }
        for (i, &m) in members.iter().enumerate() {
            let lane = &mut lanes[m];
            if !caught_up[i] {
                lane.draft.clear();
            }
            if let Some(state) = lane.state.as_deref_mut() {
                state.draft_fed = fed[i];
                if !caught_up[i] {
                    state.cancel_draft();
                }
            }
        }
        Ok(())
    }

    /// One batched forward of the draft model, timed as a draft step of its size.
    fn timed_forward(
        &mut self,
        pool: &ThreadPool,
        tokens: &[u32],
        spans: &[SeqSpan],
        timings: &mut Timings,
    ) -> Result<Vec<f32>, ModelError> {
        let started = Instant::now();
        let logits = self
            .model
            .forward_batch(
                pool,
                tokens,
                spans,
                &mut self.kv,
                &mut self.scratch,
                Rounding::BatchInvariant,
            )?
            .to_vec();
        timings
            .draft_step
            .record(tokens.len(), started.elapsed().as_secs_f64());
        Ok(logits)
    }
}

/// Draws draft token `step` of `lane` from the draft model's `logits`: greedily, or from its distribution q (kept
/// for rejection sampling) when the sequence samples; a draft ends at an end-of-generation token.
fn draw(lane: &mut Lane, step: usize, logits: &[f32], model: &Model) {
    let Some(state) = lane.state.as_deref_mut() else {
        return;
    };
    let (token, confidence, q) = match state.draft_sampler() {
        None => {
            let (token, confidence) = argmax_confidence(logits);
            (token, confidence, None)
        }
        Some(sampler) => {
            let keep = sampler.config().repeat_last_n;
            let text = &lane.tokens[..lane.start + 1];
            let mut recent = text[text.len().saturating_sub(keep)..].to_vec();
            recent.extend_from_slice(&lane.draft[..step]);
            let mut q = Vec::new();
            sampler.distribution(logits, &recent, &mut q);
            let token = if q.len() == 1 {
                q[0].0
            } else {
                sampler.draw_from(&q)
            };
            (token, verify::prob(&q, token), Some(q))
        }
    };
    if let Some(q) = q {
        state.draft_dists.push(q);
    }
    lane.draft[step] = token;
    state.confidences.push(confidence);
    if model.tokenizer.is_eog(token) {
        lane.draft.truncate(step + 1);
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
