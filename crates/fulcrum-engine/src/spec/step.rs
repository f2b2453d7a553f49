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
use super::draft_model::DraftModel;
use super::lane::{Lane, Runner, ShadowRows};
use super::rules::argmax_confidence;
use super::verify::{self, Verdict};
use super::{early_exit, Timings};
use fulcrum_core::{ModelError, Rounding, SeqSpan};
use std::time::Instant;

/// How a step may run its drafters.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// Forward passes a draft model's catch-up may take in one step: one in a shared step (the rest waits for the
    /// next), as many as needed for a single sequence.
    pub catch_up_batches: usize,
}

/// What one lane's round committed.
#[derive(Clone, Debug, Default)]
pub struct LaneResult {
    /// Its first row in [`Verified::logits`].
    pub first_row: usize,
    /// The tokens it commits: the accepted drafts and the target's own token (empty without logits).
    pub committed: Vec<u32>,
    /// The drafter whose draft it verified, and that draft's length.
    pub drafter: Option<(Arm, usize)>,
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
    let mut resume = match exits.first() {
        Some(&(e, _)) if exits.len() == lanes.len() && exits.iter().all(|x| x.0 == e) => Some(e),
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

/// Hidden states the verifying pass copies: `rows` rows of lane `lane` from its row `row`, after `exit` layers, whose
/// next tokens are `targets` (empty: the tokens the round commits).
struct Capture {
    lane: usize,
    exit: usize,
    row: usize,
    rows: usize,
    targets: Vec<u32>,
}

/// The captures of this step: every row of decode lanes on a shadow round, at their live exits (above the exit a
/// resumed pass starts from; those below were copied while drafting), and the last rows of prompts whose prefill ends
/// here, for DEL's initialisation.
fn captures(lanes: &mut [Lane], resume: Option<usize>, timings: &Timings) -> Vec<Capture> {
    let mut captures = Vec::new();
    let mut row = 0;
    for (index, lane) in lanes.iter_mut().enumerate() {
        let first_row = row;
        row += lane.rows();
        let (len, start, rows) = (lane.len, lane.start, lane.rows());
        let Some(state) = lane.state.as_deref_mut() else {
            continue;
        };
        if lane.decode && state.planned {
            if resume.is_some_and(|e| state.policy.shadow_exits().any(|x| x == e)) {
                // The exit itself sees exactly the states its draft left there.
                let rows = state.exit_hidden.clone();
                state.shadow.push(ShadowRows {
                    exit: resume.unwrap_or(0),
                    rows,
                    targets: Vec::new(),
                });
            }
            for exit in state.policy.shadow_exits() {
                if resume.is_none_or(|e| exit > e) {
                    captures.push(Capture {
                        lane: index,
                        exit,
                        row: first_row,
                        rows,
                        targets: Vec::new(),
                    });
                }
            }
        } else if lane.wants_logits && !lane.decode {
            // The prompt's last chunk: rows predicting its last `window - 1` tokens.
            let window = state.policy.init_window().min(len);
            if window < 2 {
                continue;
            }
            let from = start + len - window;
            let targets = &lane.tokens[from + 1..start + len];
            for exit in state.policy.init_exits(timings) {
                captures.push(Capture {
                    lane: index,
                    exit,
                    row: first_row + len - window,
                    rows: window - 1,
                    targets: targets.to_vec(),
                });
            }
        }
    }
    captures
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
            model.embed(&tokens, target.scratch)?;
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
        model.run_layers(
            target.pool,
            from..boundary,
            &spans,
            target.kv,
            target.scratch,
            Rounding::BatchInvariant,
        )?;
        let hidden = target.scratch.hidden(tokens.len(), d);
        for c in captures.iter().filter(|c| c.exit == boundary) {
            if let Some(state) = lanes[c.lane].state.as_deref_mut() {
                state.shadow.push(ShadowRows {
                    exit: c.exit,
                    rows: hidden[c.row * d..(c.row + c.rows) * d].to_vec(),
                    targets: c.targets.clone(),
                });
            }
        }
        from = boundary;
    }
    model.run_layers(
        target.pool,
        from..n_layers,
        &spans,
        target.kv,
        target.scratch,
        Rounding::BatchInvariant,
    )?;
    let layers_s = started.elapsed().as_secs_f64();
    let logit_rows: usize = spans.iter().map(|s| s.len - s.logits_from).sum();
    let head = Instant::now();
    let logits = model
        .classify(
            target.pool,
            logit_rows,
            target.scratch,
            Rounding::BatchInvariant,
        )
        .to_vec();
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

/// Buffers of the acceptance walk, reused from lane to lane.
#[derive(Default)]
struct WalkBuffers {
    /// The target's distribution at the current row.
    p: Vec<(u32, f32)>,
    residual: Vec<(u32, f32)>,
    /// The text so far, for the repetition penalty; it grows with the walk.
    recent: Vec<u32>,
}

/// The acceptance walk over a lane's `logits` rows: with no draft, the token sampled from the first row; with a
/// draft, each draft token while the target keeps it (greedy: it is the target's pick; sampling: rejection sampling
/// against the draft model's distributions `dists` if it sampled them, else as deterministic proposals), then the
/// target's own token.
fn walk(
    logits: &[f32],
    vocab: usize,
    draft: &[u32],
    dists: Option<&[Vec<(u32, f32)>]>,
    sampler: &mut crate::sampler::Sampler,
    b: &mut WalkBuffers,
) -> Vec<u32> {
    let (p, residual, recent) = (&mut b.p, &mut b.residual, &mut b.recent);
    if draft.is_empty() {
        return vec![sampler.sample(&logits[..vocab], recent)];
    }
    let mut committed = Vec::with_capacity(draft.len() + 1);
    for (j, row) in logits.chunks_exact(vocab).enumerate() {
        sampler.distribution(row, recent, p);
        let Some(&d) = draft.get(j) else {
            let bonus = if p.len() == 1 {
                p[0].0
            } else {
                sampler.draw_from(p)
            };
            committed.push(bonus);
            break;
        };
        let q = dists.and_then(|q| q.get(j)).map(Vec::as_slice);
        match verify::check(p, q, d, sampler, residual) {
            Verdict::Accept => {
                committed.push(d);
                recent.push(d);
            }
            Verdict::Replace(token) => {
                committed.push(token);
                break;
            }
        }
    }
    committed
}

/// Classifies the hidden states the lanes' states hold and tells each policy how well its candidate exits predicted
/// their next tokens (the prompt's, or those the round committed). Returns the rows classified and the lanes they
/// were for.
fn learn_from_shadow(
    lanes: &mut [Lane],
    target: &mut Runner,
    results: &[LaneResult],
    timings: &Timings,
) -> (usize, usize) {
    let model = target.model;
    let (d, vocab) = (model.config.d_model, model.config.vocab_size);
    // Each job: (lane, exit, targets, whether it is a round's rather than the prompt's); its rows go to `rows`.
    let mut jobs = Vec::new();
    let mut rows = Vec::new();
    for (index, lane) in lanes.iter_mut().enumerate() {
        let Some(state) = lane.state.as_deref_mut() else {
            continue;
        };
        for shadow in std::mem::take(&mut state.shadow) {
            let round = shadow.targets.is_empty();
            if !round && !state.policy.worth_watching(shadow.exit, timings) {
                continue;
            }
            let targets = match round {
                true => results[index].committed.clone(),
                false => shadow.targets,
            };
            let n = targets.len().min(shadow.rows.len() / d);
            if n == 0 {
                continue;
            }
            rows.extend_from_slice(&shadow.rows[..n * d]);
            jobs.push((index, shadow.exit, targets[..n].to_vec(), round));
        }
        state.policy.init_done();
    }
    let total = rows.len() / d;
    if total == 0 {
        return (0, 0);
    }
    let started = Instant::now();
    let mut predictions = Vec::with_capacity(total);
    let capacity = target.scratch.max_batch.max(1);
    for chunk in rows.chunks(capacity * d) {
        if target.scratch.load_hidden(chunk).is_err() {
            return (0, 0);
        }
        // Statistics only: rounded as a batch of this size, which is faster than row by row.
        let logits = model.classify(
            target.pool,
            chunk.len() / d,
            target.scratch,
            Rounding::Reference,
        );
        predictions.extend(logits.chunks_exact(vocab).map(argmax_confidence));
    }
    let per_row = started.elapsed().as_secs_f64() / total as f64;
    let mut at = 0;
    let mut seen: Vec<usize> = Vec::new();
    let mut rounds: Vec<usize> = Vec::new();
    for (index, exit, targets, round) in jobs {
        let n = targets.len();
        let preds = &predictions[at..at + n];
        at += n;
        if let Some(state) = lanes[index].state.as_deref_mut() {
            state
                .policy
                .learn_shadow(exit, preds, &targets, per_row * n as f64);
            if !seen.contains(&index) {
                seen.push(index);
            }
            if round && !rounds.contains(&index) {
                rounds.push(index);
                state.policy.count_shadow_round();
            }
        }
    }
    (total, seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{Sampler, SamplerConfig};
    use crate::spec::{Policy, Progress, SpecOptions, SpecState, Speculation};

    const VOCAB: usize = 8;

    /// Logit rows whose greedy picks are `picks`.
    fn rows(picks: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0; picks.len() * VOCAB];
        for (i, &p) in picks.iter().enumerate() {
            out[i * VOCAB + p as usize] = 5.0;
        }
        out
    }

    fn greedy_walk(picks: &[u32], draft: &[u32]) -> Vec<u32> {
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut buffers = WalkBuffers::default();
        buffers.recent.extend([1, 2, 3]);
        walk(&rows(picks), VOCAB, draft, None, &mut sampler, &mut buffers)
    }

    #[test]
    fn the_walk_keeps_the_agreeing_prefix_and_the_targets_own_token() {
        // No draft: the target's pick.
        assert_eq!(greedy_walk(&[4], &[]), [4]);
        // The target agrees with the first two drafts and replaces the third.
        assert_eq!(greedy_walk(&[5, 6, 1, 7], &[5, 6, 2]), [5, 6, 1]);
        // Every draft kept, then the bonus token.
        assert_eq!(greedy_walk(&[5, 6, 2, 7], &[5, 6, 2]), [5, 6, 2, 7]);
        // A wrong first draft: only the replacement.
        assert_eq!(greedy_walk(&[3, 6], &[5]), [3]);
    }

    /// A DEL state on a 24-layer model that has planned a round (its first: every exit unknown, so a shadow round).
    fn planned_del() -> SpecState {
        let policy =
            Policy::new(Speculation::Del, SpecOptions::default(), 24, None, false).unwrap();
        let mut state = SpecState::new(policy, &SamplerConfig::greedy());
        let mut draft = Vec::new();
        state.plan(
            &Timings::default(),
            None,
            &[1, 2, 3],
            4,
            Progress::default(),
            &mut draft,
        );
        assert!(state.policy.is_shadow_round());
        state
    }

    #[test]
    fn a_shadow_round_captures_every_row_at_its_live_exits() {
        let mut state = planned_del();
        let exits: Vec<usize> = state.policy.shadow_exits().collect();
        assert_eq!(exits, crate::spec::default_exits(24));
        let tokens = [1, 2, 3];
        let mut draft = vec![4, 5];
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut lanes = [Lane {
            tokens: &tokens,
            start: 2,
            len: 1,
            wants_logits: true,
            decode: true,
            slots: None,
            draft: &mut draft,
            state: Some(&mut state),
            sampler: &mut sampler,
        }];
        let c = captures(&mut lanes, None, &Timings::default());
        assert_eq!(c.iter().map(|c| c.exit).collect::<Vec<_>>(), exits);
        assert!(c
            .iter()
            .all(|c| c.row == 0 && c.rows == 3 && c.targets.is_empty()));
        // Resumed at exit 12: exits above it are captured in the pass, the exit's own rows come from the draft's
        // saved states, and those below were copied while drafting.
        let d = 2;
        if let Some(s) = lanes[0].state.as_deref_mut() {
            s.exit_hidden = vec![0.5; 3 * d];
        }
        let c = captures(&mut lanes, Some(12), &Timings::default());
        assert!(c.iter().all(|c| c.exit > 12) && !c.is_empty());
        let state = lanes[0].state.as_deref().unwrap();
        assert_eq!(state.shadow.len(), 1);
        assert_eq!(
            (state.shadow[0].exit, state.shadow[0].rows.len()),
            (12, 3 * d)
        );
    }

    #[test]
    fn a_prompts_last_chunk_captures_its_last_rows_once() {
        let policy =
            Policy::new(Speculation::Del, SpecOptions::default(), 24, None, false).unwrap();
        let mut state = SpecState::new(policy, &SamplerConfig::greedy());
        let tokens: Vec<u32> = (0..20).collect();
        let mut draft = Vec::new();
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut lanes = [Lane {
            tokens: &tokens,
            start: 4,
            len: 16,
            wants_logits: true,
            decode: false,
            slots: None,
            draft: &mut draft,
            state: Some(&mut state),
            sampler: &mut sampler,
        }];
        let c = captures(&mut lanes, None, &Timings::default());
        let window = SpecOptions::default().init_window;
        assert!(!c.is_empty());
        for capture in &c {
            // Rows predicting the prompt's last window - 1 tokens.
            assert_eq!(capture.row, 16 - window);
            assert_eq!(capture.rows, window - 1);
            assert_eq!(capture.targets, &tokens[20 - window + 1..]);
        }
        // The initialisation is asked for once per generation.
        assert!(captures(&mut lanes, None, &Timings::default()).is_empty());
    }
}
