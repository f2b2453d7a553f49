//! What the speculation driver works on: a [`Lane`] is one sequence's part of a step (the tokens it feeds, its cache
//! rows, its draft, its sampler), and a [`SpecState`] is what a speculating sequence keeps between steps (its policy,
//! how far the draft model's cache holds its text, and the round's working buffers).

use super::controller::{Arm, Batch, Timings};
use super::policy::{Policy, Progress};
use crate::sampler::{Sampler, SamplerConfig};
use fulcrum_core::kv::KvCache;
use fulcrum_core::model::Scratch;
use fulcrum_core::{DeltaConfig, Model, ModelError, Rounding, SeqSpan, ThreadPool};

/// What a forward pass runs on: the thread pool, a model, its KV rows (a sequence's contiguous cache or a paged
/// pool) and its activation buffers.
pub struct Runner<'a> {
    pub pool: &'a ThreadPool,
    pub model: &'a Model,
    pub kv: &'a mut KvCache,
    pub scratch: &'a mut Scratch,
}

/// One sequence's part of a step.
pub struct Lane<'a> {
    /// The sequence's text: the prompt and every committed token; `tokens[..start]` are in the cache.
    pub tokens: &'a [u32],
    /// The first position this step computes.
    pub start: usize,
    /// Tokens of `tokens` it feeds: `tokens[start..start + len]`.
    pub len: usize,
    /// Whether the step samples after its last fed token (a decode step, or a prompt's last chunk).
    pub wants_logits: bool,
    /// Whether it is a decode step (one token fed, logits wanted, something generated before), which may draft.
    pub decode: bool,
    /// Cache rows of positions `0..start + len + draft.len()`; `None` where row = position.
    pub slots: Option<&'a [u32]>,
    /// Tokens drafted after its fed tokens, verified in the same pass.
    pub draft: &'a mut Vec<u32>,
    /// Its speculation state (`None`: it does not speculate).
    pub state: Option<&'a mut SpecState>,
    pub sampler: &'a mut Sampler,
    /// DELTA's settings when its decode steps (and their drafts and verification rows) attend sparsely.
    pub delta: Option<&'a DeltaConfig>,
}

impl<'a> Lane<'a> {
    /// DELTA's settings for its rows in a verifying pass: a decode step's, never a prompt chunk's.
    pub fn span_delta(&self) -> Option<&'a DeltaConfig> {
        self.delta.filter(|_| self.decode)
    }

    /// Rows it adds to the batch: its fed tokens and its draft.
    pub fn rows(&self) -> usize {
        self.len + self.draft.len()
    }

    /// Its cache rows of positions `0..end`, or `None` where row = position.
    pub fn slots_to(&self, end: usize) -> Option<&'a [u32]> {
        self.slots.map(|s| &s[..end])
    }

    /// The token a drafting step feeds at draft position `step`: its own token first, then its draft so far.
    pub fn draft_input(&self, step: usize) -> u32 {
        match step {
            0 => self.tokens[self.start],
            _ => self.draft[step - 1],
        }
    }

    /// The one-token span of draft position `step`, in row `row` of a drafting batch.
    pub fn draft_span(&self, row: usize, step: usize) -> SeqSpan<'a> {
        let pos = self.start + step;
        SeqSpan {
            start_row: row,
            len: 1,
            start_pos: pos,
            slots: self.slots_to(pos + 1),
            logits_from: 0,
            delta: self.delta,
        }
    }
}

impl Runner<'_> {
    /// Embeds `tokens` into the front of the residual stream.
    pub fn embed(&mut self, tokens: &[u32]) -> Result<(), ModelError> {
        self.model.embed(tokens, self.scratch)
    }

    /// Runs the residual stream's rows (the `spans`' tokens) through `layers`, every row rounded as if alone.
    pub fn run_layers(
        &mut self,
        layers: std::ops::Range<usize>,
        spans: &[SeqSpan],
    ) -> Result<(), ModelError> {
        self.model.run_layers(
            self.pool,
            layers,
            spans,
            self.kv,
            self.scratch,
            Rounding::BatchInvariant,
        )
    }

    /// Final norm and classifier over the stream's first `rows` rows, every row rounded as if alone.
    pub fn classify(&mut self, rows: usize) -> &[f32] {
        self.model
            .classify(self.pool, rows, self.scratch, Rounding::BatchInvariant)
    }
}

/// What one lane's round committed.
#[derive(Clone, Debug, Default)]
pub struct LaneResult {
    /// Its first row in the step's logits ([`super::Verified::logits`]).
    pub first_row: usize,
    /// The tokens it commits: the accepted drafts and the target's own token (empty without logits).
    pub committed: Vec<u32>,
    /// The drafter whose draft it verified, and that draft's length.
    pub drafter: Option<(Arm, usize)>,
}

/// Hidden states copied for DEL's statistics: `rows` (whole `d_model` rows) after `exit` layers, whose next tokens
/// are `targets` (empty: the tokens this round commits).
#[derive(Debug)]
pub(super) struct ShadowRows {
    pub exit: usize,
    pub rows: Vec<f32>,
    pub targets: Vec<u32>,
}

/// A speculating sequence's state between steps.
#[derive(Debug)]
pub struct SpecState {
    pub policy: Policy,
    /// Positions of the sequence whose keys and values the draft model's cache holds.
    pub draft_fed: usize,
    /// Draws the draft model's tokens from its own distribution q when the target samples (`None`: greedy drafts).
    draft_sampler: Option<Sampler>,
    /// Whether this step planned a round for the sequence.
    pub(super) planned: bool,
    /// The drafter's confidence in each draft token (empty: all 1).
    pub(super) confidences: Vec<f32>,
    /// The draft model's distribution of each draft token, when it sampled them.
    pub(super) draft_dists: Vec<Vec<(u32, f32)>>,
    /// Layer-E hidden states of the draft's rows when verification resumes at the exit, `(rows, d_model)`.
    pub(super) exit_hidden: Vec<f32>,
    /// Hidden states waiting to be classified for the statistics.
    pub(super) shadow: Vec<ShadowRows>,
}

impl SpecState {
    /// The state of a sequence that follows `policy`, sampling with `sampling` (its drafts from the draft model are
    /// then drawn from the draft's distribution, with a seed of their own).
    pub fn new(policy: Policy, sampling: &SamplerConfig) -> SpecState {
        let draft_sampler = (sampling.temperature > 0.0)
            .then(|| {
                let mut config = sampling.clone();
                config.seed ^= 0x0D4A_F7ED;
                Sampler::new(config).ok()
            })
            .flatten();
        SpecState {
            policy,
            draft_fed: 0,
            draft_sampler,
            planned: false,
            confidences: Vec::new(),
            draft_dists: Vec::new(),
            exit_hidden: Vec::new(),
            shadow: Vec::new(),
        }
    }

    /// Plans the round after `tokens` (see [`Policy::plan`]), writing its draft (lookup's tokens, or placeholders
    /// the drafters fill) to `draft`.
    pub fn plan(
        &mut self,
        timings: &Timings,
        batch: Option<Batch>,
        tokens: &[u32],
        max_len: usize,
        progress: Progress,
        draft: &mut Vec<u32>,
    ) -> Option<Arm> {
        self.planned = true;
        self.confidences.clear();
        self.draft_dists.clear();
        self.exit_hidden.clear();
        let progress = Progress {
            draft_behind: tokens.len().saturating_sub(self.draft_fed),
            ..progress
        };
        self.policy
            .plan(timings, batch, tokens, max_len, progress, draft)
            .arm
    }

    /// The step had no room for the planned draft: the round decodes plainly.
    pub fn cancel_draft(&mut self) {
        self.policy.cancel_draft();
    }

    /// The sequence's cache was dropped (preempted): the draft model's rows of it are gone too.
    pub fn forget_cache(&mut self) {
        self.draft_fed = 0;
    }

    /// Records the prompt's last rows, captured at `exit` for DEL's initialisation; their next tokens are `targets`.
    pub fn add_init_rows(&mut self, exit: usize, rows: Vec<f32>, targets: Vec<u32>) {
        self.shadow.push(ShadowRows {
            exit,
            rows,
            targets,
        });
    }

    pub(super) fn draft_sampler(&mut self) -> Option<&mut Sampler> {
        self.draft_sampler.as_mut()
    }
}

/// The batch of draft position `step` for the lanes `lanes[members[i]]`, `i` in `active`: each feeds one token
/// (written to `tokens`) in its own row.
pub(super) fn draft_batch<'a>(
    lanes: &[Lane<'a>],
    members: &[usize],
    active: &[usize],
    step: usize,
    tokens: &mut Vec<u32>,
) -> Vec<SeqSpan<'a>> {
    tokens.clear();
    active
        .iter()
        .enumerate()
        .map(|(row, &i)| {
            let lane = &lanes[members[i]];
            tokens.push(lane.draft_input(step));
            lane.draft_span(row, step)
        })
        .collect()
}
