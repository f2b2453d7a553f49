//! Token sampling: logit bias, repetition penalty, top-k, top-p, min-p, temperature, then a seeded draw.
//!
//! The chain and its order follow llama.cpp's default sampler chain (penalties → top-k → top-p →
//! min-p → temperature → dist), so the same settings keep the same candidate sets. The random
//! generator is our own (xoshiro256**), so sampled text is reproducible for a seed but does not
//! match llama.cpp's draws; greedy decoding (temperature 0) matches exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use thiserror::Error;

use crate::constraint::Constraint;

mod candidates;
mod logprobs;
mod rng;

use candidates::{by_logit_desc, weight, Candidate};
pub use logprobs::{log_softmax_at, top_logprobs};
pub use rng::Rng;

/// Seed used when the caller does not choose one, so runs are reproducible by default.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE_5EED;

/// A sampler setting is outside its valid range.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplerError {
    /// The named parameter has a value outside `valid`.
    #[error("invalid sampler setting {name} = {value}: it must be {valid}")]
    InvalidParameter {
        /// Parameter name as the user spells it (e.g. `top_p`).
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// Human-readable valid range.
        valid: &'static str,
    },
}

/// Settings of the sampling chain.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 means greedy (argmax after the repetition penalty).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set whose probability mass reaches `top_p`; 1 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 turns it off.
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_last_n` tokens; 1 turns it off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition, presence and frequency penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token seen in the last `repeat_last_n` tokens; 0 turns it off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the last `repeat_last_n` tokens; 0 turns it off.
    pub frequency_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
    /// `(token, bias)` pairs added to the logits before anything else (OpenAI's `logit_bias`; -100 or -inf bans a
    /// token).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplerConfig {
    /// llama.cpp's CLI defaults, with a fixed seed.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: DEFAULT_SEED,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: always the most likely token, no penalty.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks every setting is in its valid range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |name, value: f32, valid| {
            Err(SamplerError::InvalidParameter {
                name,
                value: value.to_string(),
                valid,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1] (1 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1] (0 = off)");
        }
        if let Some(&(_, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| b.is_nan() || *b == f32::INFINITY)
        {
            return bad(
                "logit_bias",
                b,
                "numbers or -inf (-100 or -inf bans a token)",
            );
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !value.is_finite() {
                return bad(name, value, "a finite number (0 = off)");
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                "repeat_penalty",
                self.repeat_penalty,
                "a finite number > 0 (1 = off)",
            );
        }
        Ok(())
    }
}

/// A u64 that orders candidates like `by_logit_desc`, best = largest: the logit's bits made
/// monotonic (IEEE 754 total order) in the high half, the bit-inverted id in the low half.
fn rank_key(candidate: &Candidate) -> u64 {
    let bits = candidate.logit.to_bits();
    let monotonic = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    u64::from(monotonic) << 32 | u64::from(!candidate.id)
}

/// Inverse of `rank_key`.
fn from_rank_key(key: u64) -> Candidate {
    let monotonic = (key >> 32) as u32;
    let bits = if monotonic >> 31 == 1 {
        monotonic & !(1 << 31)
    } else {
        !monotonic
    };
    Candidate {
        id: !(key as u32),
        logit: f32::from_bits(bits),
    }
}

/// A request's response format as its sampler enforces it: only tokens the format allows can be drawn.
#[derive(Clone)]
pub struct Format(Box<FormatState>);

#[derive(Clone)]
struct FormatState {
    constraint: Constraint,
    /// The end-of-generation tokens, allowed alone if the grammar engine fails (the output then ends).
    eog: Vec<u32>,
    /// Why the grammar engine failed, if it did.
    failed: Option<String>,
    /// Time spent computing masks and advancing the format, in seconds.
    seconds: f64,
}

impl Format {
    /// Enforces `constraint`; `eog` are the model's end-of-generation tokens.
    pub fn new(constraint: Constraint, eog: &[u32]) -> Format {
        Format(Box::new(FormatState {
            constraint,
            eog: eog.to_vec(),
            failed: None,
            seconds: 0.0,
        }))
    }
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Format")
            .field("committed", &self.0.constraint.committed())
            .field("failed", &self.0.failed)
            .finish()
    }
}

/// A configured sampling chain with its random generator and scratch buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    /// The response format to enforce, if any.
    format: Option<Format>,
    rng: Rng,
    /// Candidates of the current call; capacity kept across calls.
    candidates: Vec<Candidate>,
    /// The penalties' window, sorted; capacity kept across calls.
    recent_sorted: Vec<u32>,
    /// Probability mass per logit bucket for top-p; capacity kept across calls.
    bucket_mass: Vec<f64>,
    /// Min-heap of the best rank keys for top-k; capacity kept across calls.
    top_keys: BinaryHeap<Reverse<u64>>,
    /// Unnormalized probabilities of the final candidates; capacity kept across calls.
    weights: Vec<f32>,
}

impl Sampler {
    /// Builds a sampler after validating `config`.
    pub fn new(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        config.validate()?;
        Ok(Sampler {
            rng: Rng::seed_from(config.seed),
            config,
            format: None,
            candidates: Vec::new(),
            recent_sorted: Vec::new(),
            bucket_mass: Vec::new(),
            top_keys: BinaryHeap::new(),
            weights: Vec::new(),
        })
    }

    /// The settings this sampler runs with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Enforces a response format from the next token on.
    pub fn set_format(&mut self, format: Format) {
        self.format = Some(format);
    }

    /// Whether a response format is enforced.
    pub fn has_format(&self) -> bool {
        self.format.is_some()
    }

    /// Why the response format's grammar engine failed, if it did (the output was then ended).
    pub fn format_failure(&self) -> Option<&str> {
        self.format.as_ref()?.0.failed.as_deref()
    }

    /// Time the response format has cost so far (masks and advancing past tokens), in seconds; 0 without one.
    pub fn format_seconds(&self) -> f64 {
        self.format.as_ref().map_or(0.0, |f| f.0.seconds)
    }

    /// Records that `token` was emitted: the response format moves past it. Call once per emitted token, in order.
    pub fn accept(&mut self, token: u32) {
        if let Some(Format(format)) = &mut self.format {
            if format.failed.is_none() {
                let started = std::time::Instant::now();
                if let Err(e) = format.constraint.commit(token) {
                    format.failed = Some(e.to_string());
                }
                format.seconds += started.elapsed().as_secs_f64();
            }
        }
    }

    /// Restarts the random generator from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = Rng::seed_from(seed);
    }

    /// Picks the next token from `logits`; `recent` are the previous tokens, oldest first.
    ///
    /// An empty `logits` slice returns 0. NaN logits are treated as impossible tokens.
    /// Allocates scratch buffers on the first call only.
    pub fn sample(&mut self, logits: &[f32], recent: &[u32]) -> u32 {
        self.load_candidates(logits);
        self.apply_repeat_penalty(recent);
        if self.candidates.is_empty() {
            return 0;
        }
        if self.config.temperature <= 0.0 {
            return self.best_candidate();
        }
        let sorted = self.apply_top_k();
        if self.config.top_p < 1.0 {
            self.apply_top_p(sorted);
        }
        self.apply_min_p();
        self.draw()
    }

    /// The distribution [`Sampler::sample`] draws from for `logits` after `recent`: `(token, probability)` pairs
    /// summing to 1, written to `out`. Greedy settings give the chosen token probability 1.
    pub fn distribution(&mut self, logits: &[f32], recent: &[u32], out: &mut Vec<(u32, f32)>) {
        out.clear();
        self.load_candidates(logits);
        self.apply_repeat_penalty(recent);
        if self.candidates.is_empty() {
            out.push((0, 1.0));
            return;
        }
        let max = if self.config.temperature <= 0.0 {
            f32::NEG_INFINITY
        } else {
            let sorted = self.apply_top_k();
            if self.config.top_p < 1.0 {
                self.apply_top_p(sorted);
            }
            self.apply_min_p();
            self.max_logit()
        };
        if max == f32::NEG_INFINITY {
            out.push((self.best_candidate(), 1.0));
            return;
        }
        let inverse_temperature = 1.0 / self.config.temperature;
        let weights = self
            .candidates
            .iter()
            .map(|c| (c.id, ((c.logit - max) * inverse_temperature).exp()));
        out.extend(weights.filter(|&(_, w)| w > 0.0));
        let total: f64 = out.iter().map(|&(_, w)| f64::from(w)).sum();
        for (_, w) in out.iter_mut() {
            *w = (f64::from(*w) / total) as f32;
        }
    }

    /// One draw from `(token, weight)` pairs (weights need not sum to 1); 0 if all weights are zero.
    pub fn draw_from(&mut self, weights: &[(u32, f32)]) -> u32 {
        let total: f64 = weights.iter().map(|&(_, w)| f64::from(w.max(0.0))).sum();
        let mut threshold = self.rng.next_f64() * total;
        for &(id, w) in weights {
            threshold -= f64::from(w.max(0.0));
            if threshold < 0.0 {
                return id;
            }
        }
        weights
            .iter()
            .rev()
            .find(|&&(_, w)| w > 0.0)
            .map_or(0, |&(id, _)| id)
    }

    /// A uniform draw in [0, 1) from the sampler's generator.
    pub fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    fn load_candidates(&mut self, logits: &[f32]) {
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(id, &logit)| Candidate {
                id: id as u32,
                // NaN is impossible; +inf becomes the largest finite value so softmax stays finite.
                logit: if logit.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    logit.min(f32::MAX)
                },
            }));
        // Candidates are in id order here, so a token id indexes its candidate.
        for &(id, bias) in &self.config.logit_bias {
            if let Some(candidate) = self.candidates.get_mut(id as usize) {
                candidate.logit = (candidate.logit + bias).min(f32::MAX);
            }
        }
        self.apply_format();
    }

    /// Tokens the response format does not allow next become impossible.
    fn apply_format(&mut self) {
        let Some(Format(format)) = &mut self.format else {
            return;
        };
        let started = std::time::Instant::now();
        let candidates = &mut self.candidates;
        if format.failed.is_none() {
            // Candidates are in id order here, so a token id indexes its candidate.
            let banned = format.constraint.ban(candidates.len(), |id| {
                candidates[id].logit = f32::NEG_INFINITY;
            });
            if let Err(e) = banned {
                format.failed = Some(e.to_string());
            }
        }
        // The grammar engine failed: only the end tokens remain, so the output ends here.
        if format.failed.is_some() {
            for candidate in candidates.iter_mut() {
                if !format.eog.contains(&candidate.id) {
                    candidate.logit = f32::NEG_INFINITY;
                }
            }
        }
        format.seconds += started.elapsed().as_secs_f64();
    }

    /// llama.cpp's rules over the last `repeat_last_n` tokens: each distinct token has its logit divided by the
    /// repetition penalty when positive and multiplied by it otherwise, once however often it occurs; then it loses
    /// `count × frequency_penalty + presence_penalty` (OpenAI's presence and frequency penalties).
    fn apply_repeat_penalty(&mut self, recent: &[u32]) {
        let SamplerConfig {
            repeat_penalty: penalty,
            presence_penalty: presence,
            frequency_penalty: frequency,
            repeat_last_n,
            ..
        } = self.config;
        if (penalty == 1.0 && presence == 0.0 && frequency == 0.0) || repeat_last_n == 0 {
            return;
        }
        let window = &recent[recent.len().saturating_sub(repeat_last_n)..];
        self.recent_sorted.clear();
        self.recent_sorted.extend_from_slice(window);
        self.recent_sorted.sort_unstable();
        // Candidates are still in id order here, so a token id indexes its candidate.
        for run in self.recent_sorted.chunk_by(|a, b| a == b) {
            if let Some(candidate) = self.candidates.get_mut(run[0] as usize) {
                if candidate.logit <= 0.0 {
                    candidate.logit *= penalty;
                } else {
                    candidate.logit /= penalty;
                }
                candidate.logit -= run.len() as f32 * frequency + presence;
            }
        }
    }

    fn best_candidate(&self) -> u32 {
        self.candidates
            .iter()
            .min_by(|a, b| by_logit_desc(a, b))
            .map_or(0, |c| c.id)
    }

    /// Keeps the `top_k` best, sorted best first; returns whether the candidates are now sorted.
    fn apply_top_k(&mut self) -> bool {
        let k = self.config.top_k;
        if k == 0 || k >= self.candidates.len() {
            return false;
        }
        // One pass with a k-entry min-heap of the best keys seen: O(n) comparisons when k is small
        // (most tokens lose to the heap's minimum at once) and no sort of the vocabulary.
        self.top_keys.clear();
        for candidate in &self.candidates {
            let key = Reverse(rank_key(candidate));
            if self.top_keys.len() < k {
                self.top_keys.push(key);
            } else if let Some(mut worst) = self.top_keys.peek_mut() {
                if key < *worst {
                    *worst = key;
                }
            }
        }
        self.candidates.clear();
        self.candidates
            .extend(self.top_keys.drain().map(|Reverse(key)| from_rank_key(key)));
        self.candidates.sort_unstable_by(by_logit_desc);
        true
    }

    /// Keeps the smallest set of best tokens whose probability reaches `top_p` (at least one).
    fn apply_top_p(&mut self, sorted: bool) {
        let max = self.max_logit();
        if sorted {
            let total: f64 = self.candidates.iter().map(|c| weight(c.logit, max)).sum();
            let keep = prefix_reaching(
                &self.candidates,
                max,
                0.0,
                f64::from(self.config.top_p) * total,
            );
            self.candidates.truncate(keep);
            return;
        }
        // Unsorted (no top-k): instead of sorting the whole vocabulary, bucket the tokens by
        // logit distance from the best, find the bucket where the mass crosses top_p, and sort
        // only that bucket. Every token in a better bucket is kept, in any order.
        self.bucket_mass.clear();
        self.bucket_mass.resize(BUCKETS, 0.0);
        for candidate in &self.candidates {
            self.bucket_mass[bucket_of(candidate.logit, max)] += weight(candidate.logit, max);
        }
        let total: f64 = self.bucket_mass.iter().sum();
        let target = f64::from(self.config.top_p) * total;
        let mut mass_before = 0.0;
        let Some(boundary) = self.bucket_mass.iter().position(|&mass| {
            let reached = mass_before + mass >= target;
            if !reached {
                mass_before += mass;
            }
            reached
        }) else {
            return; // Rounding left the sum just short of the target: everything is kept.
        };
        let better =
            partition_in_place(&mut self.candidates, |c| bucket_of(c.logit, max) < boundary);
        let in_boundary = partition_in_place(&mut self.candidates[better..], |c| {
            bucket_of(c.logit, max) == boundary
        });
        let boundary_slice = &mut self.candidates[better..better + in_boundary];
        boundary_slice.sort_unstable_by(by_logit_desc);
        let keep = prefix_reaching(boundary_slice, max, mass_before, target);
        self.candidates.truncate(better + keep);
    }

    /// Keeps tokens with p >= min_p * p_max, i.e. logit >= max_logit + ln(min_p).
    fn apply_min_p(&mut self) {
        let min_p = self.config.min_p;
        if min_p <= 0.0 {
            return;
        }
        let threshold = self.max_logit() + min_p.ln();
        // The best token always passes (ln(min_p) <= 0), so at least one is kept; order is kept.
        self.candidates.retain(|c| c.logit >= threshold);
    }

    /// Softmax of logit / temperature over the remaining candidates, then one draw.
    fn draw(&mut self) -> u32 {
        let inverse_temperature = 1.0 / self.config.temperature;
        let max = self.max_logit();
        if max == f32::NEG_INFINITY {
            // Every token is impossible; fall back to the lowest id still in the running.
            return self.best_candidate();
        }
        self.weights.clear();
        self.weights.extend(
            self.candidates
                .iter()
                .map(|c| ((c.logit - max) * inverse_temperature).exp()),
        );
        let total: f64 = self.weights.iter().map(|&w| f64::from(w)).sum();
        let mut threshold = self.rng.next_f64() * total;
        for (candidate, &w) in self.candidates.iter().zip(&self.weights) {
            threshold -= f64::from(w);
            if threshold < 0.0 {
                return candidate.id;
            }
        }
        // Rounding can leave a sliver past the last candidate: return the last possible one.
        self.candidates
            .iter()
            .rev()
            .find(|c| c.logit > f32::NEG_INFINITY)
            .map_or(0, |c| c.id)
    }

    fn max_logit(&self) -> f32 {
        self.candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

/// Number of logit buckets top-p sorts tokens into.
const BUCKETS: usize = 1024;
/// Logit range the buckets cover below the best; anything further (weight < e^-32) shares the last.
const BUCKET_SPAN: f32 = 32.0;

/// Bucket of a logit: 0 holds the best tokens; -inf lands in the last bucket.
fn bucket_of(logit: f32, max: f32) -> usize {
    // Float-to-int `as` saturates, so infinite distances map to the last bucket.
    (((max - logit) * (BUCKETS as f32 / BUCKET_SPAN)) as usize).min(BUCKETS - 1)
}

/// Length of the shortest prefix of best-first `candidates` whose mass, added to `mass_before`,
/// reaches `target`; the whole slice if rounding keeps it short, and at least 1.
fn prefix_reaching(candidates: &[Candidate], max: f32, mass_before: f64, target: f64) -> usize {
    let mut cumulative = mass_before;
    for (index, candidate) in candidates.iter().enumerate() {
        cumulative += weight(candidate.logit, max);
        if cumulative >= target {
            return index + 1;
        }
    }
    candidates.len()
}

/// Moves the items matching `keep` to the front (order not kept); returns how many match.
fn partition_in_place(items: &mut [Candidate], keep: impl Fn(&Candidate) -> bool) -> usize {
    let mut front = 0;
    for index in 0..items.len() {
        if keep(&items[index]) {
            items.swap(front, index);
            front += 1;
        }
    }
    front
}

/// Index of the largest logit; the lowest id wins ties and NaN never wins (0 if none is a number).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (id, &logit) in logits.iter().enumerate() {
        if logit.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, best_logit)| logit > best_logit) {
            best = Some((id, logit));
        }
    }
    best.map_or(0, |(id, _)| id as u32)
}

#[cfg(test)]
mod tests;
