//! One iteration of the engine: the scheduler hands out work (prefill chunks and decode tokens), each speculating
//! decode step plans its round and reserves its draft's rows, the speculation driver runs the whole batch in one
//! verifying forward pass, and the scheduler and the requests take what it committed.

use super::Engine;
use crate::latency::SloBudget;
use crate::scheduler::{Shape, Step, Work};
use crate::spec::controller::Batch;
use crate::spec::step::{self, StepOptions, Verified};
use crate::spec::{Lane, Progress, Runner};
use fulcrum_core::AttentionMode;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Fault injection for tests of the failure path: with `FULCRUM_INJECT_PANIC_MAX_TOKENS=N` set, an iteration that
/// includes a request for exactly N tokens panics.
static INJECTED_PANIC: std::sync::LazyLock<Option<usize>> = std::sync::LazyLock::new(|| {
    std::env::var("FULCRUM_INJECT_PANIC_MAX_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
});

/// Whether `w` is a decode step of a sequence that has generated `generated` tokens: one token fed, logits wanted.
fn is_decode(w: &Work, generated: usize) -> bool {
    w.len == 1 && w.wants_logits && generated > 0
}

impl Engine {
    /// Runs one iteration.
    pub(super) fn iterate(&mut self) {
        let Step {
            mut work,
            preempted,
        } = match &self.latency {
            Some((model, target)) => self.scheduler.schedule_with(&SloBudget {
                model,
                target: *target,
                min_chunk: self.config.block_size,
            }),
            None => self.scheduler.schedule(),
        };
        self.metrics
            .preemptions
            .fetch_add(preempted.len() as u64, Ordering::Relaxed);
        // A preempted sequence's blocks were freed: the draft model starts over with it too.
        for id in preempted {
            if let Some(state) = self.requests.get_mut(&id).and_then(|r| r.spec.as_mut()) {
                state.forget_cache();
            }
        }
        // Work of a sequence without a request cannot happen (both go together); drop it rather than trust it.
        let orphans: Vec<u64> = work
            .iter()
            .map(|w| w.id)
            .filter(|id| !self.requests.contains_key(id))
            .collect();
        for id in orphans {
            self.scheduler.remove(id);
            work.retain(|w| w.id != id);
        }
        if work.is_empty() {
            return;
        }
        self.plan_drafts(&mut work);
        if let Some(n) = *INJECTED_PANIC {
            let hit = |w: &Work| {
                self.requests
                    .get(&w.id)
                    .is_some_and(|r| r.params.max_tokens == n)
            };
            if work.iter().any(hit) {
                panic!("injected fault (FULCRUM_INJECT_PANIC_MAX_TOKENS={n})");
            }
        }
        let verified = match self.run_batch(&mut work) {
            Ok(v) => v,
            Err(_) => {
                // Cannot happen for batches the scheduler built; fail the requests rather than the engine.
                for w in &work {
                    self.finish(w.id, None);
                }
                return;
            }
        };
        if let Some((model, _)) = &mut self.latency {
            let shapes: Vec<Shape> = work.iter().map(Work::shape).collect();
            model.observe(&shapes, verified.forward_seconds);
            self.metrics
                .latency_correction_ppm
                .store((model.correction * 1e6) as u64, Ordering::Relaxed);
        }
        let m = &self.metrics;
        let delta = &mut self.scratch.delta;
        m.attention_attended
            .fetch_add(std::mem::take(&mut delta.attended), Ordering::Relaxed);
        m.attention_context
            .fetch_add(std::mem::take(&mut delta.context), Ordering::Relaxed);
        m.spec_shadow_rows
            .fetch_add(verified.shadow_rows as u64, Ordering::Relaxed);
        m.spec_shadow_rounds
            .fetch_add(verified.shadow_lanes as u64, Ordering::Relaxed);
        self.commit(&work, &verified);
    }

    /// Plans the round of every speculating decode step, in order, within the step's token budget: a draft that
    /// delays the other decode steps must pay for all of them, and one the sequence's blocks cannot hold without
    /// preempting anyone is dropped.
    fn plan_drafts(&mut self, work: &mut [Work]) {
        let mut left = self
            .config
            .limits
            .token_budget
            .saturating_sub(work.iter().map(Work::rows).sum());
        // The decode steps sharing this step, for the controllers: a draft's extra time delays every one of them.
        // Prefill chunks are left out: their work is done whenever it is scheduled, so a long step does not make
        // drafting cheaper.
        let n_layers = self.model.config.n_layers as f64;
        let decoding = work.iter().filter(|w| w.len == 1 && w.wants_logits).count();
        let mut rows = decoding;
        let mut draft = Vec::new();
        for w in work.iter_mut() {
            let (Some(req), Some(seq)) = (self.requests.get_mut(&w.id), self.scheduler.get(w.id))
            else {
                continue;
            };
            let Some(state) = req.spec.as_mut() else {
                continue;
            };
            if !is_decode(w, seq.generated()) {
                continue;
            }
            let room = req.params.max_tokens.saturating_sub(seq.generated() + 1);
            let t = &self.timings;
            let batch = t
                .layer
                .estimate(rows.max(1))
                .zip(t.head.estimate(decoding.max(1)))
                .map(|(layer, head)| Batch {
                    other_tokens: decoding.saturating_sub(1) as f64,
                    seconds: n_layers * layer + head,
                });
            let progress = Progress {
                generated: seq.generated(),
                left: room,
                draft_behind: 0,
                typical: self.answer_len,
            };
            state.plan(
                &self.timings,
                batch,
                &seq.tokens,
                room.min(left),
                progress,
                &mut draft,
            );
            if draft.is_empty() {
                continue;
            }
            if self.scheduler.add_draft(w, std::mem::take(&mut draft)) {
                left -= w.draft.len();
                rows += w.draft.len();
            } else {
                state.cancel_draft();
            }
        }
    }

    /// Runs the speculation driver over `work`: every sequence's lane, one verifying forward pass.
    fn run_batch(&mut self, work: &mut [Work]) -> Result<Verified, fulcrum_core::ModelError> {
        let mut requests: HashMap<u64, &mut super::Request> =
            self.requests.iter_mut().map(|(&id, r)| (id, r)).collect();
        let n_work = work.len();
        let mut lanes = Vec::with_capacity(n_work);
        for w in work.iter_mut() {
            let (Some(req), Some(seq)) = (requests.remove(&w.id), self.scheduler.get(w.id)) else {
                continue;
            };
            let rows = w.rows();
            lanes.push(Lane {
                tokens: &seq.tokens,
                start: w.start,
                len: w.len,
                wants_logits: w.wants_logits,
                decode: is_decode(w, seq.generated()),
                slots: Some(seq.table.slots(w.start + rows)),
                draft: &mut w.draft,
                state: req.spec.as_deref_mut(),
                sampler: &mut req.sampler,
                delta: (req.params.attention == AttentionMode::Delta).then_some(&self.config.delta),
            });
        }
        if lanes.len() != n_work {
            return Err(fulcrum_core::ModelError::BadBatch(
                "scheduled work without its request".into(),
            ));
        }
        let target = Runner {
            pool: &self.pool,
            model: &self.model,
            kv: &mut self.kv,
            scratch: &mut self.scratch,
        };
        // In a shared step a draft model's catch-up takes one batch; what does not fit waits for the next step.
        let options = StepOptions {
            catch_up_batches: 1,
        };
        step::run(
            &mut lanes,
            target,
            self.draft.as_mut(),
            &mut self.timings,
            options,
        )
    }

    /// Hands what the step committed to the scheduler and reports it.
    fn commit(&mut self, work: &[Work], verified: &Verified) {
        let vocab = self.model.config.vocab_size;
        for (w, result) in work.iter().zip(&verified.lanes) {
            if !w.wants_logits {
                self.scheduler.commit(w, None);
                continue;
            }
            let committed = &result.committed;
            let accepted = committed.len().saturating_sub(1);
            if w.draft.is_empty() {
                self.scheduler.commit(w, committed.first().copied());
            } else {
                self.scheduler.commit_verified(w, accepted, committed);
            }
            if let Some((arm, drafted)) = result.drafter {
                self.metrics.count_round(arm, drafted, accepted);
            }
            if let Some(state) = self.requests.get_mut(&w.id).and_then(|r| r.spec.as_mut()) {
                // The draft model's rows hold the committed text up to the first rejected draft.
                state.draft_fed = state.draft_fed.min(w.start + 1 + accepted);
            }
            for (i, &token) in committed.iter().enumerate() {
                let row = &verified.logits[(result.first_row + i) * vocab..][..vocab];
                if !self.emit(w.id, token, row, (i, committed.len())) {
                    break;
                }
            }
        }
    }
}
