//! DELTA's page scoring and selection, as the reference code does them: a page's score is the sum over its tokens of
//! the largest attention probability any query head gives the token; the most recent pages are forced in, NaN scores
//! count as −∞, the top pages win with ties going to the earlier page, and the chosen pages come out in logical order.

use std::cmp::Ordering;

/// `out[j] = Σ_{t ∈ page j} exp(max_log_probs[t])` for pages of `page` tokens (the last one may be partial).
pub fn page_scores(max_log_probs: &[f32], page: usize, out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        max_log_probs
            .chunks(page)
            .map(|tokens| tokens.iter().map(|&x| x.exp()).sum::<f32>()),
    );
}

/// The `budget` best of `scores.len()` pages into `out`, ascending: the last `recent` pages always, then the highest
/// scores, an earlier page winning a tie; NaN scores rank last. Every page when there are no more than `budget`.
pub fn select_pages(scores: &[f32], budget: usize, recent: usize, out: &mut Vec<u32>) {
    let n = scores.len();
    out.clear();
    out.extend(0..n as u32);
    if n > budget && budget > 0 {
        let forced_from = n.saturating_sub(recent);
        let key = |j: u32| {
            let j = j as usize;
            if j >= forced_from {
                f32::INFINITY
            } else if scores[j].is_nan() {
                f32::NEG_INFINITY
            } else {
                scores[j]
            }
        };
        // Best first: the larger key, then the earlier page.
        let order = |a: &u32, b: &u32| -> Ordering { key(*b).total_cmp(&key(*a)).then(a.cmp(b)) };
        out.select_nth_unstable_by(budget - 1, order);
        out.truncate(budget);
    }
    out.sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference's steps, written plainly: probabilities by a full softmax per head in f64, the max over heads,
    /// the page sums, then a full sort of (score, page) pairs.
    fn reference(scores: &[Vec<f32>], page: usize, budget: usize, recent: usize) -> Vec<u32> {
        let n_tok = scores[0].len();
        let probs: Vec<Vec<f64>> = scores
            .iter()
            .map(|head| {
                let m = head.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = head.iter().map(|&s| (s as f64 - m).exp()).sum();
                head.iter().map(|&s| (s as f64 - m).exp() / z).collect()
            })
            .collect();
        let n_pages = n_tok.div_ceil(page);
        let mut pages: Vec<(f64, u32)> = (0..n_pages)
            .map(|j| {
                let s: f64 = (j * page..((j + 1) * page).min(n_tok))
                    .map(|t| probs.iter().map(|h| h[t]).fold(0.0, f64::max))
                    .sum();
                let s = if j + recent >= n_pages {
                    f64::INFINITY
                } else {
                    s
                };
                (s, j as u32)
            })
            .collect();
        pages.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut chosen: Vec<u32> = pages.iter().take(budget).map(|p| p.1).collect();
        chosen.sort_unstable();
        chosen
    }

    fn ours(scores: &[Vec<f32>], page: usize, budget: usize, recent: usize) -> Vec<u32> {
        let n_tok = scores[0].len();
        let lse: Vec<f32> = scores
            .iter()
            .map(|head| {
                let m = head.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                m + head.iter().map(|&s| (s - m).exp()).sum::<f32>().ln()
            })
            .collect();
        let best: Vec<f32> = (0..n_tok)
            .map(|t| {
                scores
                    .iter()
                    .zip(&lse)
                    .map(|(h, z)| h[t] - z)
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        let (mut page_s, mut out) = (Vec::new(), Vec::new());
        page_scores(&best, page, &mut page_s);
        select_pages(&page_s, budget, recent, &mut out);
        out
    }

    proptest! {
        /// Random scores with well separated pages select what the plain reference selects.
        #[test]
        fn matches_the_plain_reference(
            seed in any::<u64>(),
            n_tok in 1usize..400,
            heads in 1usize..6,
            budget in 1usize..12,
            recent in 0usize..4,
        ) {
            let recent = recent.min(budget);
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32
            };
            // Page-level levels far apart so that rounding cannot reorder pages.
            let n_pages = n_tok.div_ceil(16);
            let level: Vec<f32> = (0..n_pages).map(|_| (next() * 1000.0).floor() / 50.0).collect();
            let scores: Vec<Vec<f32>> = (0..heads)
                .map(|_| (0..n_tok).map(|t| level[t / 16] + next() * 1e-3).collect())
                .collect();
            let want = reference(&scores, 16, budget, recent);
            let got = ours(&scores, 16, budget, recent);
            // Distinct levels only decide the order; equal levels tie within noise, so compare where unambiguous.
            let mut distinct = level.clone();
            distinct.sort_by(f32::total_cmp);
            distinct.dedup();
            if distinct.len() == level.len() {
                prop_assert_eq!(got, want);
            } else {
                prop_assert_eq!(got.len(), want.len());
            }
        }
    }

    #[test]
    fn ties_go_to_the_earlier_page() {
        let mut out = Vec::new();
        select_pages(&[1.0, 2.0, 2.0, 2.0, 1.0, 0.5], 3, 1, &mut out);
        // Page 5 is forced; of the three tied at 2.0, pages 1 and 2 win.
        assert_eq!(out, [1, 2, 5]);
    }

    #[test]
    fn nan_scores_rank_last_and_the_window_is_forced() {
        let mut out = Vec::new();
        select_pages(
            &[f32::NAN, 0.1, f32::NAN, 0.2, f32::NAN, f32::NAN],
            3,
            2,
            &mut out,
        );
        assert_eq!(out, [3, 4, 5]);
        select_pages(&[f32::NAN; 4], 2, 0, &mut out);
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn short_sequences_keep_every_page_and_a_partial_page_sums_its_tokens() {
        let mut out = Vec::new();
        select_pages(&[0.3, 0.1], 4, 8, &mut out);
        assert_eq!(out, [0, 1]);
        let mut s = Vec::new();
        page_scores(&[0.0, 0.0, 0.0, f32::NEG_INFINITY, 0.0], 2, &mut s);
        assert_eq!(s, [2.0, 1.0, 1.0]);
    }
}
