//! The sampler's unit of work: a token still in the running, the order candidates are ranked in, and the softmax
//! weight both the sampler and the log-probabilities use.

use std::cmp::Ordering;

/// One token still in the running: its id and (possibly penalized) logit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// Most likely first; equal logits keep the lower id first, so every selection is deterministic.
pub(super) fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// exp(logit - max) in f64: the unnormalized softmax weight.
pub(super) fn weight(logit: f32, max: f32) -> f64 {
    // f32 exp is several times faster than f64's over 262k tokens; sums stay in f64.
    f64::from((logit - max).exp())
}
