//! The speculation driver: one step over a batch of lanes, for the serving engine (every running sequence) and for
//! `generate` (a batch of one). A drafter proposes, one batched forward pass verifies, the acceptance walk keeps what
//! the target agrees with, and each lane's policy learns. Plain decoding is the round with no draft.
//!
//! 1. Drafts: prompt lookup's tokens are already in the lanes (its policy wrote them when it planned); the draft
//!    model ([`super::draft_model`]) and the early exits ([`super::early_exit`]) fill their placeholders, batched.
//! 2. Verification: every lane's fed tokens and draft in one forward pass, every row rounded as if alone
//!    (`Rounding::BatchInvariant`), so its logits are bit-identical to one-token decoding's. When every lane of the
//!    step drafted at the same exit E, the pass resumes at E from the states the drafts left there: layers below E
//!    ran for each draft position while drafting (papers.md §2.1). On the way it copies the hidden states that
//!    shadow rounds and DEL's prompt initialisation ask for.
//! 3. Acceptance ([`super::verify`]): greedy keeps the longest agreeing prefix plus the target's own next token;
//!    sampling keeps draft x with probability min(1, p(x)/q(x)) and otherwise draws from max(p − q, 0).
//! 4. Learning: each policy folds its round's outcome in; the captured states are classified together and every
//!    candidate exit's predictions are checked against the committed text.
//!
//! Drafts are written in place after the sequence (BMC's point, papers.md §6): the cache always has the spare rows,
//! and a rejection only moves the length.

use super::controller::Arm;
use super::controller::Timings;
use super::draft_model::DraftModel;
use super::early_exit;
use super::lane::{Lane, LaneResult, Runner};
use super::shadow::{captures, copy_captured, learn_from_shadow};
use super::verify::{walk, WalkBuffers};
use fulcrum_core::{ModelError, SeqSpan};
use std::time::Instant;

/// How a step may run its drafters.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// Forward passes a draft model's catch-up may take in one step: one in a shared step (the rest waits for the
    /// next), as many as needed for a single sequence.
    pub catch_up_batches: usize,
}

/// What a step did.
#[derive(Debug, Default)]
pub struct Verified {
    /// `(rows, vocab)` logits of the lanes that wanted them, lane after lane: one row per fed token asked for and
    /// one per draft token.
    pub logits: Vec<f32>,
    /// Per lane, in order.
    pub lanes: Vec<LaneResult>,
    /// Seconds the verifying forward pass took.
    pub forward_seconds: f64,
    /// Hidden-state rows classified for the statistics, and the lanes they were for.
    pub shadow_rows: usize,
    pub shadow_lanes: usize,
}

/// Runs one step over `lanes` on `target` (and `draft` for lanes drafting with the draft model), updating `timings`.
pub fn run(
    lanes: &mut [Lane],
    mut target: Runner,
    draft: Option<&mut DraftModel>,
    timings: &mut Timings,
    options: StepOptions,
) -> Result<Verified, ModelError> {
    let resume = fill_drafts(lanes, &mut target, draft, timings, options);
    let (logits, forward_seconds) = forward(lanes, &mut target, resume, timings)?;
    let vocab = target.model.config.vocab_size;
    let results = accept(lanes, &logits, vocab);
    let (shadow_rows, shadow_lanes) = learn_from_shadow(lanes, &mut target, &results, timings);
    for state in lanes.iter_mut().filter_map(|l| l.state.as_deref_mut()) {
        state.planned = false;
    }
    Ok(Verified {
        logits,
        lanes: results,
        forward_seconds,
        shadow_rows,
        shadow_lanes,
    })
}

/// The drafter a lane's planned round uses, if it drafts.
fn drafter(lane: &Lane) -> Option<Arm> {
    let state = lane.state.as_deref().filter(|s| s.planned)?;
    state.policy.choice().arm.filter(|_| !lane.draft.is_empty())
}

/// Fills the draft model's and the early exits' placeholder drafts; a drafter that fails leaves its lanes to decode
/// plainly. Returns the exit at which verification resumes, if every lane drafted there.
fn fill_drafts(
    lanes: &mut [Lane],
    target: &mut Runner,
    draft: Option<&mut DraftModel>,
    timings: &mut Timings,
    options: StepOptions,
) -> Option<usize> {
    let arms: Vec<Option<Arm>> = lanes.iter().map(drafter).collect();
    let with_model: Vec<usize> = (0..lanes.len())
        .filter(|&i| arms[i] == Some(Arm::DraftModel))
        .collect();
    let mut exits: Vec<(usize, usize)> = (0..lanes.len())
        .filter_map(|i| match arms[i] {
            Some(Arm::Exit(e)) => Some((e, i)),
            _ => None,
        })
        .collect();
    exits.sort_unstable();
    // A resumed pass would start after DELTA's planners, without the selections its sparse layers need.
    let sparse = lanes.iter().any(|lane| lane.span_delta().is_some());
    let mut resume = match exits.first() {
        Some(&(e, _))
            if !sparse && exits.len() == lanes.len() && exits.iter().all(|x| x.0 == e) =>
        {
            Some(e)
        }
        _ => None,
    };
    if !with_model.is_empty() {
        let filled = match draft {
            Some(model) => model.fill(
                target.pool,
                lanes,
                &with_model,
                timings,
                options.catch_up_batches,
            ),
            None => Err(ModelError::BadBatch("no draft model is loaded".into())),
        };
        if filled.is_err() {
            for &i in &with_model {
                drop_draft(&mut lanes[i]);
                if let Some(state) = lanes[i].state.as_deref_mut() {
                    state.forget_cache();
                }
            }
        }
    }
    for group in exits.chunk_by(|a, b| a.0 == b.0) {
        let exit = group[0].0;
        let members: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
        if early_exit::fill(target, lanes, &members, exit, timings, resume.is_some()).is_err() {
            resume = None;
            for &i in &members {
                drop_draft(&mut lanes[i]);
            }
        }
    }
    resume
}

/// Empties a lane's draft: its round decodes plainly.
fn drop_draft(lane: &mut Lane) {
    lane.draft.clear();
    if let Some(state) = lane.state.as_deref_mut() {
        state.cancel_draft();
    }
}

/// The verifying forward pass over every lane's fed tokens and draft: the logits each lane asks for, and the seconds
/// it took. Copies the hidden states [`captures`] asks for into the lanes' states.
fn forward(
    lanes: &mut [Lane],
    target: &mut Runner,
    resume: Option<usize>,
    timings: &mut Timings,
) -> Result<(Vec<f32>, f64), ModelError> {
    let model = target.model;
    let (n_layers, d) = (model.config.n_layers, model.config.d_model);
    let mut tokens = Vec::new();
    let mut spans = Vec::with_capacity(lanes.len());
    for lane in lanes.iter() {
        spans.push(SeqSpan {
            start_row: tokens.len(),
            len: lane.rows(),
            start_pos: lane.start,
            slots: lane.slots_to(lane.start + lane.rows()),
            logits_from: if lane.wants_logits {
                lane.len - 1
            } else {
                lane.len
            },
            delta: lane.span_delta(),
        });
        tokens.extend_from_slice(&lane.tokens[lane.start..lane.start + lane.len]);
        tokens.extend_from_slice(lane.draft);
    }
    let captures = captures(lanes, resume, timings);
    let started = Instant::now();
    let first_layer = match resume {
        Some(exit) => {
            let mut hidden = Vec::with_capacity(tokens.len() * d);
            for lane in lanes.iter() {
                let state = lane.state.as_deref().ok_or_else(|| {
                    ModelError::BadBatch("a resumed lane has no speculation state".into())
                })?;
                hidden.extend_from_slice(&state.exit_hidden);
            }
            if hidden.len() != tokens.len() * d {
                return Err(ModelError::BadBatch(format!(
                    "{} saved exit states for {} rows",
                    hidden.len() / d,
                    tokens.len()
                )));
            }
            target.scratch.load_hidden(&hidden)?;
            exit
        }
        None => {
            target.embed(&tokens)?;
            0
        }
    };
    let mut boundaries: Vec<usize> = captures.iter().map(|c| c.exit).collect();
    boundaries.sort_unstable();
    boundaries.dedup();
    let mut from = first_layer;
    for boundary in boundaries
        .into_iter()
        .filter(|&e| e > first_layer && e < n_layers)
    {
        target.run_layers(from..boundary, &spans)?;
        let hidden = target.scratch.hidden(tokens.len(), d);
        copy_captured(&captures, boundary, hidden, d, lanes);
        from = boundary;
    }
    target.run_layers(from..n_layers, &spans)?;
    let layers_s = started.elapsed().as_secs_f64();
    let logit_rows: usize = spans.iter().map(|s| s.len - s.logits_from).sum();
    let head = Instant::now();
    let logits = target.classify(logit_rows).to_vec();
    let head_s = head.elapsed().as_secs_f64();
    let layers = (n_layers - first_layer).max(1);
    timings.layer.record(tokens.len(), layers_s / layers as f64);
    if logit_rows > 0 {
        timings.head.record(logit_rows, head_s);
    }
    Ok((logits, started.elapsed().as_secs_f64()))
}

/// Runs the acceptance walk of every lane that wanted logits and lets its policy learn from it.
fn accept(lanes: &mut [Lane], logits: &[f32], vocab: usize) -> Vec<LaneResult> {
    let mut results = Vec::with_capacity(lanes.len());
    let mut row = 0;
    let mut buffers = WalkBuffers::default();
    for lane in lanes.iter_mut() {
        let mut result = LaneResult {
            first_row: row,
            ..LaneResult::default()
        };
        if !lane.wants_logits {
            results.push(result);
            continue;
        }
        let rows = 1 + lane.draft.len();
        let lane_logits = &logits[row * vocab..(row + rows) * vocab];
        row += rows;
        let text = &lane.tokens[..lane.start + lane.len];
        let keep = lane.sampler.config().repeat_last_n;
        buffers.recent.clear();
        buffers
            .recent
            .extend_from_slice(&text[text.len().saturating_sub(keep)..]);
        let drafter = drafter(lane);
        let dists = lane
            .state
            .as_deref()
            .map(|s| s.draft_dists.as_slice())
            .filter(|d| !d.is_empty());
        result.committed = walk(
            lane_logits,
            vocab,
            lane.draft,
            dists,
            lane.sampler,
            &mut buffers,
        );
        result.drafter = drafter.map(|arm| (arm, lane.draft.len()));
        if let Some(state) = lane.state.as_deref_mut().filter(|s| s.planned) {
            state
                .policy
                .learn(lane.draft, &state.confidences, &result.committed);
        }
        results.push(result);
    }
    results
}
