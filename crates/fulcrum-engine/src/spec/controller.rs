//! The DEL controller (papers.md §2.2), generalised to choose among every drafter by expected tokens per second.
//!
//! Per drafting option ("arm": an early exit after E layers, prompt lookup, a draft model) it keeps exponentially
//! decayed counts of matched and mismatched draft tokens, α = matched / (matched + mismatched), and the decayed mean
//! confidence of each; τ, the confidence below which drafting stops, is the midpoint of the two means. Drafting d
//! tokens yields N(α, d) = Σ_{i=0..d} αⁱ tokens in expectation (the accepted prefix plus the target's bonus token).
//! DEL divides N by a cost in layers, L + d·E; on a CPU, verifying d + 1 tokens is not free, so Fulcrum divides by
//! measured seconds instead and picks the (arm, d) with the most tokens per second. d = 0 is plain decoding, which
//! wins whenever no arm pays: that is the fallback.

/// DEL's decay of the acceptance statistics (ω).
pub const OMEGA: f64 = 0.95;
/// DEL's longest draft (γ_max).
pub const GAMMA_MAX: usize = 18;
/// Pseudo-count of mismatches added to α's denominator (Fulcrum's guard against acting on one or two matches).
pub const ALPHA_PRIOR: f64 = 1.0;

/// Decayed acceptance statistics of one arm.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acceptance {
    matched: f64,
    mismatched: f64,
    confidence_matched: f64,
    confidence_mismatched: f64,
}

impl Acceptance {
    /// Folds in one round's outcomes, `(matched, confidence)` per position, already clipped at the first rejection:
    /// stat ← ω·stat + new.
    pub fn update(&mut self, omega: f64, outcomes: &[(bool, f32)]) {
        if outcomes.is_empty() {
            return;
        }
        let (mut m, mut x, mut cm, mut cx) = (0.0, 0.0, 0.0, 0.0);
        for &(matched, confidence) in outcomes {
            // A NaN confidence (a broken row) counts as no confidence at all.
            let c = if confidence.is_finite() {
                f64::from(confidence)
            } else {
                0.0
            };
            if matched {
                m += 1.0;
                cm += c;
            } else {
                x += 1.0;
                cx += c;
            }
        }
        self.matched = omega * self.matched + m;
        self.mismatched = omega * self.mismatched + x;
        self.confidence_matched = omega * self.confidence_matched + cm;
        self.confidence_mismatched = omega * self.confidence_mismatched + cx;
    }

    /// α, the decayed share of matched tokens; `None` before any data (DEL's NaN case). One mismatch is assumed
    /// beyond those seen ([`ALPHA_PRIOR`]), so that a few early matches cannot make the longest draft look certain;
    /// with DEL's decay the prior weighs about 5 % once statistics are established.
    pub fn alpha(&self) -> Option<f64> {
        let total = self.matched + self.mismatched;
        (total > 0.0).then(|| self.matched / (total + ALPHA_PRIOR))
    }

    /// τ: the midpoint of the mean confidences of matched and mismatched tokens; `None` until both were seen.
    pub fn threshold(&self) -> Option<f32> {
        if self.matched <= 0.0 || self.mismatched <= 0.0 {
            return None;
        }
        let mean_matched = self.confidence_matched / self.matched;
        let mean_mismatched = self.confidence_mismatched / self.mismatched;
        Some(((mean_matched + mean_mismatched) / 2.0) as f32)
    }
}

/// N(α, d) = Σ_{i=0..d} αⁱ: tokens a round yields in expectation when it drafts `d` tokens.
pub fn expected_tokens(alpha: f64, d: usize) -> f64 {
    // DEL's recurrence g[0] = 1, g[i] = 1 + α·g[i−1].
    (0..d).fold(1.0, |g, _| 1.0 + alpha * g)
}

/// DEL's tokens per layer: N(α, d) / (L + d·E) for an exit after `exit` of `n_layers` layers.
pub fn tokens_per_layer(alpha: f64, exit: usize, d: usize, n_layers: usize) -> f64 {
    expected_tokens(alpha, d) / (n_layers + d * exit) as f64
}

/// Batch sizes measured one by one: up to a draft of [`GAMMA_MAX`] tokens plus the target's own row.
pub const MEASURED_SIZES: usize = GAMMA_MAX + 1;

/// Batches of at least this many rows are timed per row as well: past it the multiply-adds dominate, so a row
/// costs about the same however many more there are (a prompt, a draft model catching up).
pub const BULK_ROWS: usize = 16;

/// An estimate of t(b) seconds for a batch of b tokens, from decayed measurements: the batch sizes a verification
/// uses (up to [`MEASURED_SIZES`]) are kept one by one, since on a CPU t(b) is far from affine there (a second
/// row can cost nothing while the weights stream from memory, an eighth costs a lot once the multiply-adds no longer
/// hide under that stream); other sizes are interpolated between measured ones. Larger batches cost their rows at
/// the per-row time of the large batches timed ([`BULK_ROWS`] rows or more), or, before one was, are extrapolated
/// from the largest measured size with the slope c of an affine fit t(b) = a + c·(b − 1) to every batch timed.
#[derive(Clone, Debug, Default)]
pub struct BatchTime {
    single: Option<f64>,
    per_extra: Option<f64>,
    /// A larger batch timed before any single token was (a prompt), turned into a slope once one is.
    early: Option<(usize, f64)>,
    /// `by_size[b − 2]`: the decayed time of a batch of b, for b = 2..=[`MEASURED_SIZES`].
    by_size: [Option<f64>; MEASURED_SIZES - 1],
    /// The decayed seconds per row of batches of [`BULK_ROWS`] rows or more.
    per_row: Option<f64>,
}

/// Weight of the old estimate against a new timing: fast enough that one verification corrects a slope first
/// taken from a prompt's batch (whose kernels differ).
const TIME_DECAY: f64 = 0.5;

impl BatchTime {
    /// Records that a batch of `b` took `seconds`.
    pub fn record(&mut self, b: usize, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 || b == 0 {
            return;
        }
        if b >= BULK_ROWS {
            self.per_row = Some(blend(self.per_row, seconds / b as f64));
        }
        if b == 1 {
            self.single = Some(blend(self.single, seconds));
            if let Some((b, seconds)) = self.early.take() {
                self.record_against_single(b, seconds);
            }
            return;
        }
        if self.single.is_none() {
            self.early = Some((b, seconds));
            return;
        }
        self.record_against_single(b, seconds);
    }

    /// Folds a batch of `b` > 1 into its size's time and the affine slope, once a single token was timed.
    fn record_against_single(&mut self, b: usize, seconds: f64) {
        let Some(a) = self.single else {
            return;
        };
        if let Some(slot) = self.by_size.get_mut(b - 2) {
            *slot = Some(blend(*slot, seconds));
        }
        let slope = ((seconds - a) / (b - 1) as f64).max(0.0);
        self.per_extra = Some(blend(self.per_extra, slope));
    }

    /// Estimated seconds for a batch of `b`; before any batch larger than one was timed, each extra token is assumed
    /// to cost a tenth of the first (weight reads dominate small batches on a CPU).
    pub fn estimate(&self, b: usize) -> Option<f64> {
        let Some(a) = self.single else {
            // Only large batches timed yet: their rows' time.
            return self
                .per_row
                .filter(|_| b >= BULK_ROWS)
                .map(|r| r * b as f64);
        };
        if b <= 1 {
            return Some(a);
        }
        let measured = |size: usize| match size {
            1 => Some(a),
            _ => self.by_size.get(size - 2).copied().flatten(),
        };
        // The nearest measured sizes at or below b and above it (1 is always measured).
        let below = (1..=b.min(MEASURED_SIZES))
            .rev()
            .find_map(|s| Some((s, measured(s)?)));
        let (lo, t_lo) = below.unwrap_or((1, a));
        if lo == b {
            return Some(t_lo);
        }
        let above = (b + 1..=MEASURED_SIZES).find_map(|s| Some((s, measured(s)?)));
        Some(match (above, self.per_row) {
            (Some((hi, t_hi)), _) => t_lo + (t_hi - t_lo) * (b - lo) as f64 / (hi - lo) as f64,
            (None, Some(r)) if b > MEASURED_SIZES => t_lo.max(r * b as f64),
            _ => t_lo + self.per_extra.unwrap_or(a * 0.1) * (b - lo) as f64,
        })
    }
}

fn blend(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| TIME_DECAY * o + (1.0 - TIME_DECAY) * new)
}

/// A way to draft tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arm {
    /// The target's own first `E` layers, then its final norm and classifier.
    Exit(usize),
    /// N-gram lookup in the prompt and the text so far.
    Lookup,
    /// A separate, smaller model with the same vocabulary.
    DraftModel,
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Arm::Exit(e) => write!(f, "exit:{e}"),
            Arm::Lookup => write!(f, "lookup"),
            Arm::DraftModel => write!(f, "draft"),
        }
    }
}

/// How the controller prices a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostUnits {
    /// DEL's cost in layers, L + d·E (lookup and a draft model count as E = 0).
    Layers,
    /// Measured seconds per layer, classifier and draft step, by batch size.
    Seconds,
}

/// What to do in the next round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The arm to draft with; `None` is plain decoding.
    pub arm: Option<Arm>,
    /// Tokens to draft at most.
    pub draft_len: usize,
}

impl Choice {
    /// One token, no draft.
    pub const PLAIN: Choice = Choice {
        arm: None,
        draft_len: 0,
    };
}

/// Timings the cost model reads.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// One transformer layer, by batch size.
    pub layer: BatchTime,
    /// Final norm and classifier, by rows.
    pub head: BatchTime,
    /// One step of the draft model.
    pub draft_step: BatchTime,
}

/// Per-context choice of drafter, exit layer and draft length.
#[derive(Clone, Debug)]
pub struct Controller {
    /// The arms and their statistics, in a fixed order.
    pub arms: Vec<(Arm, Acceptance)>,
    pub n_layers: usize,
    pub omega: f64,
    pub gamma_max: usize,
    /// DEL's γ_min: shorter drafts, plain decoding included, are never chosen while an arm has statistics.
    pub gamma_min: usize,
    pub units: CostUnits,
    pub timings: Timings,
    /// A draft model's step as a fraction of a target step (the ratio of their weight bytes), until one is timed.
    pub draft_ratio: Option<f64>,
    /// Whether verification of an early-exit draft reuses the keys and values the draft left below the exit (a
    /// single sequence's rounds do; the serving engine recomputes every layer in the batch).
    pub reuses_exit_kv: bool,
    /// The step this sequence shares (serving): the tokens the other sequences commit in it and its seconds without
    /// any draft. A draft's extra time then delays them all, so a round is rated by the step's tokens per second.
    pub batch: Option<Batch>,
}

/// A shared step, as [`Controller::batch`] describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Batch {
    pub other_tokens: f64,
    pub seconds: f64,
}

impl Controller {
    /// A controller over `arms` for a model of `n_layers` layers, with DEL's defaults.
    pub fn new(arms: &[Arm], n_layers: usize, units: CostUnits) -> Controller {
        Controller {
            arms: arms.iter().map(|&a| (a, Acceptance::default())).collect(),
            n_layers,
            omega: OMEGA,
            gamma_max: GAMMA_MAX,
            gamma_min: 0,
            units,
            timings: Timings::default(),
            draft_ratio: None,
            reuses_exit_kv: true,
            batch: None,
        }
    }

    /// The statistics of `arm`, if the controller has it.
    pub fn acceptance(&self, arm: Arm) -> Option<&Acceptance> {
        self.arms.iter().find(|(a, _)| *a == arm).map(|(_, s)| s)
    }

    /// Folds one round's outcomes for `arm` into its statistics.
    pub fn observe(&mut self, arm: Arm, outcomes: &[(bool, f32)]) {
        let omega = self.omega;
        if let Some((_, s)) = self.arms.iter_mut().find(|(a, _)| *a == arm) {
            s.update(omega, outcomes);
        }
    }

    /// Cost of a round drafting `d` tokens with `arm` (`None`: plain decoding), in the controller's units.
    pub fn cost(&self, arm: Option<Arm>, d: usize) -> Option<f64> {
        let l = self.n_layers;
        let exit = match arm {
            Some(Arm::Exit(e)) => e,
            _ => 0,
        };
        match self.units {
            CostUnits::Layers => Some((l + d * exit) as f64),
            CostUnits::Seconds => {
                let t = &self.timings;
                let (layer1, head1) = (t.layer.estimate(1)?, t.head.estimate(1)?);
                let below = if self.reuses_exit_kv { exit } else { 0 };
                let verify_layers = (l - below) as f64 * t.layer.estimate(d + 1)?;
                let verify = verify_layers + t.head.estimate(d + 1)?;
                Some(match arm {
                    None => l as f64 * layer1 + head1,
                    Some(Arm::Exit(e)) => {
                        d as f64 * (e as f64 * layer1 + head1) + below as f64 * layer1 + verify
                    }
                    Some(Arm::Lookup) => verify,
                    Some(Arm::DraftModel) => {
                        let plain = l as f64 * layer1 + head1;
                        let step = t
                            .draft_step
                            .estimate(1)
                            .or(self.draft_ratio.map(|r| r * plain))?;
                        d as f64 * step + verify
                    }
                })
            }
        }
    }

    /// Tokens per unit of cost of a round that yields `tokens` for `cost` (plain decoding costing `plain`): alone,
    /// the ratio; in a shared step, the step's tokens over its time with this round's extra cost.
    fn rate(&self, tokens: f64, cost: f64, plain: f64) -> f64 {
        match self.batch {
            None => tokens / cost,
            Some(b) => (b.other_tokens + tokens) / (b.seconds + (cost - plain).max(0.0)),
        }
    }

    /// The (arm, draft length) with the most expected tokens per unit of cost, among the arms `usable` allows and
    /// lengths up to `max_len`; plain decoding when nothing beats it (or nothing is known yet).
    pub fn choose(&self, max_len: usize, usable: impl Fn(Arm) -> bool) -> Choice {
        let max_len = max_len.min(self.gamma_max);
        let Some(plain_cost) = self.cost(None, 0) else {
            return Choice::PLAIN;
        };
        let plain_rate = if self.gamma_min == 0 {
            self.rate(1.0, plain_cost, plain_cost)
        } else {
            f64::NEG_INFINITY
        };
        let mut best = (plain_rate, Choice::PLAIN);
        for (arm, stats) in &self.arms {
            let Some(alpha) = stats.alpha() else { continue };
            if !usable(*arm) || !alpha.is_finite() {
                continue;
            }
            for d in self.gamma_min.max(1)..=max_len {
                let Some(cost) = self.cost(Some(*arm), d) else {
                    continue;
                };
                let rate = self.rate(expected_tokens(alpha, d), cost, plain_cost);
                if rate > best.0 {
                    best = (
                        rate,
                        Choice {
                            arm: Some(*arm),
                            draft_len: d,
                        },
                    );
                }
            }
        }
        best.1
    }

    /// Whether `arm` could beat plain decoding at all, even if every draft were accepted (α = 1), with drafts of up
    /// to `max_len` tokens; unknown costs count as "could". Arms that cannot are not worth their statistics.
    pub fn can_pay(&self, arm: Arm, max_len: usize) -> bool {
        self.could_pay(arm, max_len, 1.0)
    }

    /// Whether `arm` would beat plain decoding if its drafts were accepted at rate `alpha`; unknown costs: yes.
    pub fn could_pay(&self, arm: Arm, max_len: usize, alpha: f64) -> bool {
        let Some(plain_cost) = self.cost(None, 0) else {
            return true;
        };
        self.best_rate(arm, max_len, alpha, plain_cost)
            .is_none_or(|best| best > self.rate(1.0, plain_cost, plain_cost))
    }

    /// The best rate of `arm` over draft lengths 1..=`max_len` at acceptance `alpha`, plain decoding costing
    /// `plain`; `None` if a length's cost is unknown.
    fn best_rate(&self, arm: Arm, max_len: usize, alpha: f64, plain: f64) -> Option<f64> {
        (1..=max_len.min(self.gamma_max).max(1)).try_fold(f64::NEG_INFINITY, |best, d| {
            let cost = self.cost(Some(arm), d)?;
            Some(best.max(self.rate(expected_tokens(alpha, d), cost, plain)))
        })
    }

    /// Whether a round trying `arm` instead of `instead` (what the controller would do otherwise) is worth `setup`
    /// seconds of preparation first (a draft model catching its cache up with the text): were its drafts accepted
    /// at `alpha`, the time it would save over the `room` tokens left, against `instead` or plain decoding,
    /// whichever is faster, must exceed that. In a shared step both are the step's time: the preparation delays
    /// every sequence in it, and the saving is the step's speed-up. Unknown costs: yes.
    pub fn worth_probing(
        &self,
        (arm, instead): (Arm, Choice),
        max_len: usize,
        alpha: f64,
        room: usize,
        setup: f64,
    ) -> bool {
        let Some(plain) = self.cost(None, 0) else {
            return true;
        };
        let plain_rate = self.rate(1.0, plain, plain);
        let baseline = self
            .expected_rate(instead)
            .unwrap_or(plain_rate)
            .max(plain_rate);
        let Some(best) = self.best_rate(arm, max_len, alpha, plain) else {
            return true;
        };
        if best <= baseline {
            return false;
        }
        let step = self.batch.map_or(plain, |b| b.seconds);
        setup <= room as f64 * step * (1.0 - baseline / best)
    }

    /// The rate the controller expects of `choice`, in its units; `None` while its costs or acceptance are unknown.
    fn expected_rate(&self, choice: Choice) -> Option<f64> {
        let plain = self.cost(None, 0)?;
        let alpha = match choice.arm {
            None => return Some(self.rate(1.0, plain, plain)),
            Some(arm) => self.acceptance(arm)?.alpha()?,
        };
        let cost = self.cost(choice.arm, choice.draft_len)?;
        Some(self.rate(expected_tokens(alpha, choice.draft_len), cost, plain))
    }

    /// The expected speed-up of `choice` over plain decoding, by the controller's model.
    pub fn expected_speedup(&self, choice: Choice) -> Option<f64> {
        let alpha = match choice.arm {
            None => 0.0,
            Some(arm) => self.acceptance(arm)?.alpha()?,
        };
        let rate =
            expected_tokens(alpha, choice.draft_len) / self.cost(choice.arm, choice.draft_len)?;
        Some(rate * self.cost(None, 0)?)
    }
}

#[cfg(test)]
mod tests;
