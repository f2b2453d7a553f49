//! The early-exit drafter: the target's own first E layers, then its final norm and classifier, draft greedily, one
//! batched partial forward per draft position over every sequence drafting at that exit (LayerSkip; DEL chooses E
//! per round). Every row is rounded as if alone, so the keys and values it leaves below the exit are the ones a
//! full verification would compute.
//!
//! When verification resumes at the exit (papers.md §2.1: every lane of the step drafted at this exit), the last
//! draft token also runs through the first E layers, every row's layer-E state is kept, and on a shadow round the
//! states at the live candidate exits below E are copied on the way.

use super::controller::Timings;
use super::lane::{draft_batch, Lane, Runner, ShadowRows};
use super::rules::argmax_confidence;
use fulcrum_core::ModelError;
use std::time::Instant;

/// Fills the placeholder drafts of `lanes[m]`, `m` in `members`, with the greedy predictions of the first `exit`
/// layers of `target`; with `resume`, keeps every row's layer-`exit` state for verification (see the module doc).
pub(super) fn fill(
    target: &mut Runner,
    lanes: &mut [Lane],
    members: &[usize],
    exit: usize,
    timings: &mut Timings,
    resume: bool,
) -> Result<(), ModelError> {
    let vocab = target.model.config.vocab_size;
    let d = target.model.config.d_model;
    let longest = members.iter().map(|&m| lanes[m].draft.len()).max();
    let steps = longest.unwrap_or(0) + usize::from(resume);
    // DEL's confidence stop, per member: drafting ends after a token below its τ.
    let taus: Vec<Option<f32>> = members
        .iter()
        .map(|&m| {
            lanes[m]
                .state
                .as_deref()
                .filter(|s| s.policy.confidence_stop())
                .and_then(|s| s.policy.threshold(exit))
        })
        .collect();
    // The shadow exits below this one, for resumed lanes on a shadow round.
    let below: Vec<Vec<usize>> = members
        .iter()
        .map(|&m| match lanes[m].state.as_deref() {
            Some(s) if resume => s.policy.shadow_exits().filter(|&e| e < exit).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut boundaries: Vec<usize> = below.iter().flatten().copied().collect();
    boundaries.sort_unstable();
    boundaries.dedup();
    let mut tokens = Vec::with_capacity(members.len());
    for step in 0..steps {
        // Members still drafting come first (their rows are classified), then those whose last draft token only
        // runs the layers for a resumed verification.
        let drafting: Vec<usize> = (0..members.len())
            .filter(|&i| lanes[members[i]].draft.len() > step)
            .collect();
        let finishing: Vec<usize> = (0..members.len())
            .filter(|&i| resume && lanes[members[i]].draft.len() == step)
            .collect();
        let active: Vec<usize> = drafting.iter().chain(&finishing).copied().collect();
        if active.is_empty() {
            break;
        }
        let spans = draft_batch(lanes, members, &active, step, &mut tokens);
        let started = Instant::now();
        target.embed(&tokens)?;
        let mut from = 0;
        for &boundary in boundaries.iter().chain(std::iter::once(&exit)) {
            target.run_layers(from..boundary, &spans)?;
            from = boundary;
            let hidden = target.scratch.hidden(active.len(), d);
            for (row, &i) in active.iter().enumerate() {
                let Some(state) = lanes[members[i]].state.as_deref_mut() else {
                    continue;
                };
                let state_row = &hidden[row * d..(row + 1) * d];
                if boundary == exit {
                    if resume {
                        state.exit_hidden.extend_from_slice(state_row);
                    }
                } else if below[i].contains(&boundary) {
                    shadow_rows(&mut state.shadow, boundary).extend_from_slice(state_row);
                }
            }
        }
        timings.layer.record(
            active.len(),
            started.elapsed().as_secs_f64() / exit.max(1) as f64,
        );
        if drafting.is_empty() {
            continue;
        }
        let head = Instant::now();
        let model = target.model;
        let logits = target.classify(drafting.len());
        timings
            .head
            .record(drafting.len(), head.elapsed().as_secs_f64());
        for (row, &i) in drafting.iter().enumerate() {
            let lane = &mut lanes[members[i]];
            let (token, confidence) = argmax_confidence(&logits[row * vocab..][..vocab]);
            lane.draft[step] = token;
            let unsure = taus[i].is_some_and(|tau| confidence < tau);
            if unsure || model.tokenizer.is_eog(token) {
                // Kept, but the last of this draft; its spare rows stay unused.
                lane.draft.truncate(step + 1);
            }
            if let Some(state) = lane.state.as_deref_mut() {
                state.confidences.push(confidence);
            }
        }
    }
    Ok(())
}

/// The rows captured at `exit` this round, started if there are none yet.
fn shadow_rows(shadow: &mut Vec<ShadowRows>, exit: usize) -> &mut Vec<f32> {
    let i = match shadow
        .iter()
        .position(|s| s.exit == exit && s.targets.is_empty())
    {
        Some(i) => i,
        None => {
            shadow.push(ShadowRows {
                exit,
                rows: Vec::new(),
                targets: Vec::new(),
            });
            shadow.len() - 1
        }
    };
    &mut shadow[i].rows
}
