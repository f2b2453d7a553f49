//! DEL's statistics from hidden states: which rows a verifying pass copies (every row of a shadow round at the live
//! candidate exits; the last rows of a prompt for its initialisation, papers.md §2.2) and the classification of all
//! of them in one batch, each candidate exit's predictions checked against the text that followed.

use super::controller::Timings;
use super::lane::{Lane, LaneResult, Runner, ShadowRows};
use super::rules::argmax_confidence;
use fulcrum_core::Rounding;
use std::time::Instant;

/// Hidden states the verifying pass copies: `rows` rows of lane `lane` from its row `row`, after `exit` layers, whose
/// next tokens are `targets` (empty: the tokens the round commits).
pub(super) struct Capture {
    lane: usize,
    pub exit: usize,
    row: usize,
    rows: usize,
    targets: Vec<u32>,
}

/// The captures of this step: every row of decode lanes on a shadow round, at their live exits (above the exit a
/// resumed pass starts from; those below were copied while drafting), and the last rows of prompts whose prefill ends
/// here, for DEL's initialisation.
pub(super) fn captures(
    lanes: &mut [Lane],
    resume: Option<usize>,
    timings: &Timings,
) -> Vec<Capture> {
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

/// Copies the rows the `captures` at `boundary` ask for from `hidden` (the pass's residual stream after `boundary`
/// layers, rows of `d` floats) into their lanes' states.
pub(super) fn copy_captured(
    captures: &[Capture],
    boundary: usize,
    hidden: &[f32],
    d: usize,
    lanes: &mut [Lane],
) {
    for c in captures.iter().filter(|c| c.exit == boundary) {
        if let Some(state) = lanes[c.lane].state.as_deref_mut() {
            state.shadow.push(ShadowRows {
                exit: c.exit,
                rows: hidden[c.row * d..(c.row + c.rows) * d].to_vec(),
                targets: c.targets.clone(),
            });
        }
    }
}

/// Classifies the hidden states the lanes' states hold and tells each policy how well its candidate exits predicted
/// their next tokens (the prompt's, or those the round committed). Returns the rows classified and the lanes they
/// were for.
pub(super) fn learn_from_shadow(
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
            delta: None,
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
            delta: None,
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
