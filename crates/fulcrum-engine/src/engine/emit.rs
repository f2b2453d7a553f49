//! How a request's tokens and its end are reported: events to the caller, counters and histograms to the metrics.

use super::api::{Event, FinishReason, TokenLogprobs};
use super::metrics::Metrics;
use super::Engine;
use crate::sampler::{log_softmax_at, top_logprobs};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Engine {
    /// Reports one committed `token` of request `id` (its logits `row`); `(index, count)` place it among the tokens
    /// the step committed for the request (they arrive at the same moment). Returns false once the request has ended.
    pub(super) fn emit(&mut self, id: u64, token: u32, row: &[f32], place: (usize, usize)) -> bool {
        let Some(req) = self.requests.get_mut(&id) else {
            return false;
        };
        let is_eog = req.params.stop_at_eog && self.model.tokenizer.is_eog(token);
        let logprobs = req.params.logprobs.map(|n| TokenLogprobs {
            logprob: log_softmax_at(row, &[token])[0],
            top: top_logprobs(row, n),
        });
        let (index, count) = place;
        if index == 0 {
            let now = Instant::now();
            match req.last_token {
                None => {
                    Metrics::observe(&self.metrics.ttft, (now - req.submitted).as_secs_f64());
                    let cached_tokens = self.scheduler.get(id).map_or(0, |s| s.cached);
                    let _ = req.events.try_send(Event::Prefilled { cached_tokens });
                    // Any more tokens of this first step have no gap to share: they are not observed.
                    req.step_gap = None;
                }
                // The step's tokens share its time between tokens: a speculative step of k tokens is k
                // observations of a k-th of the gap each, so the histogram's mean stays the mean time per token.
                Some(t) => req.step_gap = Some((now - t).as_secs_f64() / count as f64),
            }
            req.last_token = Some(now);
        }
        if let Some(gap) = req.step_gap {
            Metrics::observe(&self.metrics.tbt, gap);
        }

        if is_eog {
            self.finish(id, Some(FinishReason::Stop));
            return false;
        }
        req.emitted += 1;
        // Ends at the token limit or at the context: the length as of this token (a speculative step has already
        // appended the tokens after it).
        let prompt_len = self.scheduler.get(id).map_or(0, |s| s.prompt_len);
        let full = req.emitted >= req.params.max_tokens
            || prompt_len + req.emitted >= self.config.max_seq_len;
        self.metrics
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        if req
            .events
            .try_send(Event::Token {
                id: token,
                logprobs,
            })
            .is_err()
        {
            // The client went away (or stopped reading): cancel at once.
            self.finish(id, None);
            return false;
        }
        if full {
            self.finish(id, Some(FinishReason::Length));
            return false;
        }
        true
    }

    /// Ends request `id`: reports `reason` (none for a cancellation) and frees its blocks.
    pub(super) fn finish(&mut self, id: u64, reason: Option<FinishReason>) {
        let seq = self.scheduler.remove(id);
        if let Some(req) = self.requests.remove(&id) {
            if reason.is_some() && req.emitted > 0 {
                self.answer_len = Some(crate::spec::fold_answer_len(self.answer_len, req.emitted));
            }
            if let (Some(_), Some(failure)) = (reason, req.sampler.format_failure()) {
                // The grammar engine failed mid-output and forced the end: the output is not what was asked for.
                let _ = req.events.try_send(Event::Failed(format!(
                    "the response format could not be followed: {failure}"
                )));
            } else if let (Some(reason), Some(seq)) = (reason, seq) {
                let _ = req.events.try_send(Event::Finished {
                    reason,
                    prompt_tokens: seq.prompt_len,
                    completion_tokens: req.emitted,
                    cached_tokens: seq.cached,
                });
            }
            self.metrics
                .requests_finished
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes the scheduler's and the pool's gauges.
    pub(super) fn publish(&self) {
        let m = &self.metrics;
        m.waiting
            .store(self.scheduler.n_waiting() as u64, Ordering::Relaxed);
        m.running
            .store(self.scheduler.n_running() as u64, Ordering::Relaxed);
        let pool = &self.scheduler.pool;
        m.kv_usage_ppm
            .store((pool.usage() * 1e6) as u64, Ordering::Relaxed);
        m.prefix_queried_tokens
            .store(pool.queried_tokens, Ordering::Relaxed);
        m.prefix_hit_tokens
            .store(pool.hit_tokens, Ordering::Relaxed);
    }
}
