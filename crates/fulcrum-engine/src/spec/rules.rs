//! The rules a speculation policy decides by, as plain functions of the controller's state: which exits are worth
//! their shadow tokens, when a round computes them, how much of an answer is likely left, what a draft model's
//! catch-up costs and when it is worth a probe, and how a round's drafts are judged.

use super::controller::{Arm, Choice, Controller};

/// The acceptance rate at which a draft model must be expected to pay before it is tried.
pub const PROBE_ALPHA: f64 = 0.9;

/// How far an exit's acceptance may rise before the next look, for deciding whether it is worth watching.
pub const ALPHA_HEADROOM: f64 = 0.25;
/// Rounds between looks at every exit that could pay.
pub const REVIVE_EVERY: usize = 64;
/// While no early exit drafts, the largest share of the generation's time that shadow tokens may take: they only
/// watch for an exit that starts to pay, and on models not trained for early exit none does.
pub const SHADOW_SHARE: f64 = 0.02;

/// Marks in `live` the candidate `exits` worth their shadow tokens: those that could pay if always right, and, once
/// their acceptance is known, would pay if it rose by [`ALPHA_HEADROOM`]. Every [`REVIVE_EVERY`] rounds all exits that
/// could pay are looked at again, for contexts where the model's early layers start to agree.
pub fn mark_live(
    controller: &Controller,
    exits: &[usize],
    round: usize,
    max_len: usize,
    live: &mut [bool],
) {
    let revive = round.is_multiple_of(REVIVE_EVERY);
    for (live, &exit) in live.iter_mut().zip(exits) {
        let arm = Arm::Exit(exit);
        let alpha = controller.acceptance(arm).and_then(|a| a.alpha());
        let hopeful = match alpha {
            Some(alpha) if !revive => {
                controller.could_pay(arm, max_len, (alpha + ALPHA_HEADROOM).min(1.0))
            }
            _ => true,
        };
        *live = hopeful && controller.can_pay(arm, max_len);
    }
}

/// Whether round `round`, which made `choice`, computes shadow tokens: every `shadow_every` rounds while an early
/// exit drafts (its neighbours' statistics decide where it moves), four times less often otherwise (while plain
/// decoding, lookup or a draft model wins, the statistics only need to notice when an exit starts to pay), and then
/// only while they have taken at most [`SHADOW_SHARE`] of the generation's time; `spent` is the shadow seconds so
/// far and the time since the generation started.
pub fn shadow_due(
    choice: Choice,
    round: usize,
    shadow_every: usize,
    live: &[bool],
    spent: Option<(f64, std::time::Duration)>,
) -> bool {
    let exit_drafts = matches!(choice.arm, Some(Arm::Exit(_)));
    let every = if exit_drafts {
        shadow_every
    } else {
        shadow_every * 4
    };
    let affordable = exit_drafts
        || spent.is_none_or(|(shadow, elapsed)| shadow <= SHADOW_SHARE * elapsed.as_secs_f64());
    live.iter().any(|&l| l) && every > 0 && round.is_multiple_of(every) && affordable
}

/// The fewest tokens a generation is expected to have left when a draft model's probe is priced.
pub const PROBE_HORIZON: usize = 16;

/// The tokens a generation that has produced `generated` is expected to run for, of at most `left` more: as many
/// again as it has run (an answer that has gone on for n tokens is about as likely to go on for n more as to stop),
/// at least [`PROBE_HORIZON`], and, where earlier answers in this process ran `typical` tokens on average, what is
/// left of that. A probe priced on the whole `max_tokens` would pay its draft model's catch-up on every short answer.
pub fn expected_room(generated: usize, left: usize, typical: Option<f64>) -> usize {
    let rest_of_typical = typical.map_or(0.0, |t| t - generated as f64).max(0.0) as usize;
    left.min(generated.max(PROBE_HORIZON).max(rest_of_typical))
}

/// Seconds for a draft model to catch its cache up with `behind` tokens of text: its own batch of as many rows where
/// one that large was timed, else the target's scaled by the draft's step ratio; `None` before the target's layers
/// and classifier were timed.
pub fn catch_up_seconds(c: &Controller, behind: usize) -> Option<f64> {
    let t = &c.timings;
    if let Some(seconds) = t.draft_step.estimate(behind.max(1)) {
        return Some(seconds);
    }
    let (layer, head) = (t.layer.estimate(behind.max(1))?, t.head.estimate(1)?);
    Some(c.draft_ratio? * (c.n_layers as f64 * layer + head))
}

/// Prompt tokens a draft model evaluates in `auto`'s first round when its batches were never timed, so that its
/// catch-up is priced from its own speed (the work is kept: they are the start of that catch-up).
pub const CALIBRATION_ROWS: usize = 16;

/// Whether a round tries the draft model: it is due (from the second round while it was never tried, or after
/// `probe_every` rounds `idle`), and at [`PROBE_ALPHA`] it would save more of the `room` tokens' time than catching
/// its cache up with `behind` tokens costs ([`Controller::worth_probing`]).
pub fn draft_probe_due(
    c: &Controller,
    (round, idle, probe_every): (usize, usize, usize),
    (max_len, instead): (usize, Choice),
    room: usize,
    behind: usize,
) -> bool {
    let never = c
        .acceptance(Arm::DraftModel)
        .and_then(|a| a.alpha())
        .is_none();
    let due = idle >= probe_every || (never && round > 1);
    due && c.worth_probing(
        (Arm::DraftModel, instead),
        max_len,
        PROBE_ALPHA,
        room,
        catch_up_seconds(c, behind).unwrap_or(0.0),
    )
}

/// The controller's choice among the exits, lookup (if it has a proposal of `lookup_len` tokens, to which its draft
/// is cut) and the draft model (if `with_draft`), with drafts of at most `max_len` tokens.
pub fn choose_drafter(
    c: &Controller,
    max_len: usize,
    lookup_len: usize,
    with_draft: bool,
) -> Choice {
    let choice = c.choose(max_len, |arm| match arm {
        Arm::Lookup => lookup_len > 0,
        Arm::DraftModel => with_draft,
        Arm::Exit(_) => true,
    });
    match choice.arm {
        Some(Arm::Lookup) => Choice {
            draft_len: choice.draft_len.min(lookup_len),
            ..choice
        },
        _ => choice,
    }
}

/// Writes to `out` whether each of a round's `drafts` matches the `committed` text (the accepted drafts and the
/// target's own token, so the list stops at the first rejection, its position included), with the drafter's
/// confidence in it (1 where none was given).
pub fn draft_outcomes(
    drafts: &[u32],
    confidences: &[f32],
    committed: &[u32],
    out: &mut Vec<(bool, f32)>,
) {
    out.clear();
    out.extend(
        drafts
            .iter()
            .zip(committed)
            .enumerate()
            .map(|(j, (&d, &actual))| (d == actual, confidences.get(j).copied().unwrap_or(1.0))),
    );
}

/// Writes to `out` prompt lookup's `proposal` checked against the `committed` text, up to and including its first
/// miss (lookup's proposals cost nothing, so they are judged even in rounds that did not use them).
pub fn lookup_outcomes(proposal: &[u32], committed: &[u32], out: &mut Vec<(bool, f32)>) {
    out.clear();
    for (&proposed, &actual) in proposal.iter().zip(committed) {
        out.push((proposed == actual, 1.0));
        if proposed != actual {
            break;
        }
    }
}

/// The most likely token of `logits` (lowest id on ties, NaN never) and its softmax probability.
pub fn argmax_confidence(logits: &[f32]) -> (u32, f32) {
    let best = crate::sampler::argmax(logits);
    let max = logits[best as usize];
    if !max.is_finite() {
        return (best, 0.0);
    }
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from((v - max).exp()))
        .sum();
    (best, (1.0 / sum) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CostUnits;

    #[test]
    fn the_expected_room_follows_the_answer_and_earlier_answers() {
        // Alone: as many tokens again as generated, at least the horizon, at most what is left.
        assert_eq!(expected_room(0, 127, None), PROBE_HORIZON);
        assert_eq!(expected_room(40, 87, None), 40);
        assert_eq!(expected_room(100, 27, None), 27);
        // Earlier answers of about 110 tokens: the rest of that, from the start.
        assert_eq!(expected_room(1, 127, Some(110.0)), 109);
        assert_eq!(expected_room(80, 47, Some(110.0)), 47);
        // Longer than the earlier answers: back to as many again.
        assert_eq!(expected_room(60, 67, Some(30.0)), 60);
    }

    #[test]
    fn a_catch_up_is_priced_from_the_draft_models_own_batches() {
        let mut c = Controller::new(&[Arm::DraftModel], 28, CostUnits::Seconds);
        c.draft_ratio = Some(0.5);
        assert_eq!(catch_up_seconds(&c, 200), None);
        // The target's prompt of 100 rows: 15 ms a row in all, half that for the draft before it is timed.
        c.timings.layer.record(1, 0.002);
        c.timings.layer.record(100, 1.5 / 28.0);
        c.timings.head.record(1, 0.005);
        let before = catch_up_seconds(&c, 200).unwrap();
        assert!(
            (before - 0.5 * (200.0 * 1.5 / 100.0 + 0.005)).abs() < 1e-9,
            "{before}"
        );
        // The draft model's calibration batch ran at 3 ms a row: that prices it from then on.
        c.timings.draft_step.record(CALIBRATION_ROWS, 0.048);
        let after = catch_up_seconds(&c, 200).unwrap();
        assert!((after - 0.6).abs() < 1e-9, "{after}");
    }
}
