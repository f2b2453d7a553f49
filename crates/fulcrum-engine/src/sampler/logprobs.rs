//! Log-probabilities of chosen tokens and of the best alternatives, for `logprobs` output.

use super::candidates::{by_logit_desc, weight, Candidate};

/// log(sum(exp(logits))) in f64, ignoring NaN; -inf for an empty or all-impossible slice.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| weight(l, max))
        .sum();
    f64::from(max) + sum.ln()
}

/// Log-probabilities (softmax at temperature 1) of the tokens `ids`; an id outside the
/// vocabulary gets -inf.
pub fn log_softmax_at(logits: &[f32], ids: &[u32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    ids.iter()
        .map(|&id| match logits.get(id as usize) {
            Some(&logit) if !logit.is_nan() => (f64::from(logit) - lse) as f32,
            _ => f32::NEG_INFINITY,
        })
        .collect()
}

/// The `n` most likely tokens as (id, log-probability), best first, lower id first on ties.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let lse = log_sum_exp(logits);
    let mut candidates: Vec<Candidate> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(id, &logit)| Candidate {
            id: id as u32,
            logit,
        })
        .collect();
    let n = n.min(candidates.len());
    if n == 0 {
        return Vec::new();
    }
    if n < candidates.len() {
        candidates.select_nth_unstable_by(n - 1, by_logit_desc);
        candidates.truncate(n);
    }
    candidates.sort_unstable_by(by_logit_desc);
    candidates
        .into_iter()
        .map(|c| (c.id, (f64::from(c.logit) - lse) as f32))
        .collect()
}
