//! Acceptance of drafted tokens: the longest matching prefix under greedy decoding, rejection sampling otherwise;
//! [`walk`] applies it to a round's verification rows, for every caller.
//!
//! Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a draft token x drawn from the drafter's
//! distribution q is kept with probability min(1, p(x)/q(x)), where p is the target's distribution; on rejection the
//! token is drawn from the residual max(p − q, 0), normalised. The output then follows p exactly, whatever q is. A
//! deterministic drafter (prompt lookup, an argmax draft) has q = 1 at x, so x is kept with probability p(x) and the
//! residual is p without x. Greedy decoding is the case where p is one-hot too: keep x iff it is the target's pick.

use crate::sampler::Sampler;

/// Probability of `token` in a sparse distribution (0 if absent).
pub fn prob(dist: &[(u32, f32)], token: u32) -> f32 {
    dist.iter()
        .find(|&&(id, _)| id == token)
        .map_or(0.0, |&(_, p)| p)
}

/// The outcome of checking one draft token against the target distribution `p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The draft token stands.
    Accept,
    /// The draft token is replaced by this one, drawn from the residual; the round ends here.
    Replace(u32),
}

/// Checks `draft`, drawn from `q` (`None`: proposed deterministically, q = 1 at `draft`), against the target's `p`.
/// Decisions that are certain (probability 0 or 1) consume no random numbers, so greedy decoding stays deterministic.
pub fn check(
    p: &[(u32, f32)],
    q: Option<&[(u32, f32)]>,
    draft: u32,
    sampler: &mut Sampler,
    residual: &mut Vec<(u32, f32)>,
) -> Verdict {
    let p_x = prob(p, draft);
    let q_x = q.map_or(1.0, |q| prob(q, draft));
    // q(x) = 0 cannot happen for a token drawn from q; treat it as "keep if the target allows it at all".
    let keep = if q_x <= 0.0 {
        if p_x > 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (p_x / q_x).min(1.0)
    };
    let accepted = keep >= 1.0 || (keep > 0.0 && (sampler.uniform() as f32) < keep);
    if accepted {
        return Verdict::Accept;
    }
    residual.clear();
    residual.extend(p.iter().map(|&(id, p_y)| {
        let q_y = match q {
            None => f32::from(id == draft),
            Some(q) => prob(q, id),
        };
        (id, (p_y - q_y).max(0.0))
    }));
    residual.retain(|&(_, w)| w > 0.0);
    if residual.is_empty() {
        // p ≤ q everywhere means p = q, so the draft could not have been rejected; rounding got here. Draw from p.
        residual.extend_from_slice(p);
    }
    Verdict::Replace(if residual.len() == 1 {
        residual[0].0
    } else {
        sampler.draw_from(residual)
    })
}

/// Buffers of the acceptance walk, reused from lane to lane.
#[derive(Default)]
pub struct WalkBuffers {
    /// The target's distribution at the current row.
    pub p: Vec<(u32, f32)>,
    pub residual: Vec<(u32, f32)>,
    /// The text so far, for the repetition penalty; it grows with the walk.
    pub recent: Vec<u32>,
}

/// The acceptance walk over a lane's `logits` rows: with no draft, the token sampled from the first row; with a
/// draft, each draft token while the target keeps it (greedy: it is the target's pick; sampling: rejection sampling
/// against the draft model's distributions `dists` if it sampled them, else as deterministic proposals), then the
/// target's own token. Each committed token moves the sampler's response format on, so the next row is masked for
/// the text the walk has kept.
pub fn walk(
    logits: &[f32],
    vocab: usize,
    draft: &[u32],
    dists: Option<&[Vec<(u32, f32)>]>,
    sampler: &mut Sampler,
    b: &mut WalkBuffers,
) -> Vec<u32> {
    let (p, residual, recent) = (&mut b.p, &mut b.residual, &mut b.recent);
    if draft.is_empty() {
        let token = sampler.sample(&logits[..vocab], recent);
        sampler.accept(token);
        return vec![token];
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
            sampler.accept(bonus);
            committed.push(bonus);
            break;
        };
        let q = dists.and_then(|q| q.get(j)).map(Vec::as_slice);
        match check(p, q, d, sampler, residual) {
            Verdict::Accept => {
                sampler.accept(d);
                committed.push(d);
                recent.push(d);
            }
            Verdict::Replace(token) => {
                sampler.accept(token);
                committed.push(token);
                break;
            }
        }
    }
    committed
}

#[cfg(test)]
mod tests {
    use super::{walk, WalkBuffers};
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
        let mut sampler = Sampler::new(crate::sampler::SamplerConfig::greedy()).unwrap();
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

    use super::*;
    use crate::sampler::{Rng, SamplerConfig};

    fn sampler(seed: u64) -> Sampler {
        Sampler::new(SamplerConfig {
            seed,
            ..SamplerConfig::default()
        })
        .unwrap()
    }

    fn draw(dist: &[(u32, f32)], rng: &mut Rng) -> u32 {
        let mut u = rng.next_f64() as f32;
        for &(id, p) in dist {
            u -= p;
            if u < 0.0 {
                return id;
            }
        }
        dist.last().unwrap().0
    }

    /// Chi-square statistic of `counts` against probabilities `p`.
    fn chi_square(counts: &[usize], p: &[f32]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .map(|(&c, &p)| {
                let e = n as f64 * p as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Draft from q, verify against p, and count the emitted first tokens: they must follow p, not q.
    fn emitted_distribution(
        p: &[f32],
        q: &[f32],
        deterministic: bool,
        trials: usize,
    ) -> Vec<usize> {
        let p: Vec<(u32, f32)> = p.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
        let q: Vec<(u32, f32)> = q.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
        let mut s = sampler(7);
        let mut rng = Rng::seed_from(11);
        let mut residual = Vec::new();
        let mut counts = vec![0; p.len()];
        for _ in 0..trials {
            let (x, q_arg) = if deterministic {
                (2, None)
            } else {
                (draw(&q, &mut rng), Some(q.as_slice()))
            };
            let out = match check(&p, q_arg, x, &mut s, &mut residual) {
                Verdict::Accept => x,
                Verdict::Replace(y) => y,
            };
            counts[out as usize] += 1;
        }
        counts
    }

    // 5 categories → 4 degrees of freedom; the 99.99th percentile of χ²(4) is about 23.5.
    const CHI2_LIMIT: f64 = 23.5;

    #[test]
    fn rejection_sampling_follows_the_target() {
        let p = [0.1, 0.4, 0.2, 0.25, 0.05];
        for q in [
            [0.2f32, 0.2, 0.2, 0.2, 0.2],
            [0.7, 0.1, 0.1, 0.05, 0.05],
            [0.05, 0.05, 0.1, 0.1, 0.7],
        ] {
            let counts = emitted_distribution(&p, &q, false, 200_000);
            let chi2 = chi_square(&counts, &p);
            assert!(chi2 < CHI2_LIMIT, "q {q:?}: counts {counts:?}, χ² {chi2}");
        }
    }

    #[test]
    fn deterministic_drafts_follow_the_target() {
        let p = [0.1, 0.4, 0.2, 0.25, 0.05];
        let counts = emitted_distribution(&p, &[0.0; 5], true, 200_000);
        let chi2 = chi_square(&counts, &p);
        assert!(chi2 < CHI2_LIMIT, "counts {counts:?}, χ² {chi2}");
    }

    #[test]
    fn the_test_rejects_a_wrong_rule() {
        // Accepting every draft outputs q instead of p: the statistic must catch that.
        let p = [0.1f32, 0.4, 0.2, 0.25, 0.05];
        let q = [0.7f32, 0.1, 0.1, 0.05, 0.05];
        let mut rng = Rng::seed_from(3);
        let qd: Vec<(u32, f32)> = q.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
        let mut counts = vec![0; 5];
        for _ in 0..200_000 {
            counts[draw(&qd, &mut rng) as usize] += 1;
        }
        assert!(chi_square(&counts, &p) > CHI2_LIMIT);
    }

    #[test]
    fn greedy_keeps_the_target_pick_and_replaces_others() {
        let mut s = sampler(1);
        let mut residual = Vec::new();
        let p = [(5u32, 1.0f32)];
        assert_eq!(check(&p, None, 5, &mut s, &mut residual), Verdict::Accept);
        assert_eq!(
            check(&p, None, 4, &mut s, &mut residual),
            Verdict::Replace(5)
        );
    }

    #[test]
    fn the_walk_masks_each_row_for_the_text_it_kept() {
        use crate::constraint::{ConstraintFactory, ConstraintSpec};
        use crate::sampler::Format;
        // One token per byte and an end token (256); the output must be two digits then the end.
        const EOS: u32 = 256;
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.push(b"\xff<eos>".to_vec());
        let factory = ConstraintFactory::new(tokens, &[EOS]).unwrap();
        let constraint = factory
            .compile(&ConstraintSpec::Regex("[0-9]{2}".into()))
            .unwrap();
        let vocab = 257;
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        sampler.set_format(Format::new(constraint, &[EOS]));
        // Every row prefers `a`, then `7`: the format allows only digits, so `7`, `7`, then the end.
        let mut logits = vec![0.0f32; 4 * vocab];
        for row in logits.chunks_exact_mut(vocab) {
            row[b'a' as usize] = 9.0;
            row[b'7' as usize] = 5.0;
        }
        let mut buffers = WalkBuffers::default();
        // The draft `7`, `a`, `7`: the first is kept, `a` is replaced by the format's best, the walk ends there.
        let committed = walk(
            &logits,
            vocab,
            &[55, 97, 55],
            None,
            &mut sampler,
            &mut buffers,
        );
        assert_eq!(committed, [55, 55]);
        // Two digits are complete: only the end token is left.
        let committed = walk(
            &logits[..vocab],
            vocab,
            &[],
            None,
            &mut sampler,
            &mut buffers,
        );
        assert_eq!(committed, [EOS]);
        assert_eq!(sampler.format_failure(), None);
    }
}
