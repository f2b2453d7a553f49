//! What an attention call leaves for DELTA's page scoring: every raw score and each query head's log-sum-exp.

use fulcrum_quant::f16vec::LANES;

/// Scores of one [`super::attention_rows`] call, kept per work item (a query row's heads that share a kv head, up to
/// [`LANES`] of them): item `i` holds `stride` positions × `LANES` scores, position-major, and `LANES` log-sum-exps.
/// The buffers only grow, so a steady decode allocates nothing.
#[derive(Default)]
pub struct ScoreDump {
    pub(super) scores: Vec<f32>,
    pub(super) lse: Vec<f32>,
    /// Positions per item (the longest row's).
    pub(super) stride: usize,
    /// Items per kv head (chunks of its query heads) and query heads per item.
    chunks: usize,
    lanes: usize,
    n_kv_heads: usize,
    /// Query heads per kv head.
    group: usize,
}

impl ScoreDump {
    /// Sizes the buffers for `rows` query rows; each kv head's `group` query heads are split into `chunks` items of
    /// up to `lanes` heads; rows attend to at most `stride` positions.
    pub(super) fn prepare(
        &mut self,
        rows: usize,
        n_kv_heads: usize,
        group: usize,
        (chunks, lanes): (usize, usize),
        stride: usize,
    ) {
        let items = rows * n_kv_heads * chunks;
        if self.scores.len() < items * stride * LANES {
            self.scores.resize(items * stride * LANES, 0.0);
        }
        if self.lse.len() < items * LANES {
            self.lse.resize(items * LANES, 0.0);
        }
        self.lse[..items * LANES].fill(f32::INFINITY);
        (self.stride, self.chunks, self.lanes) = (stride, chunks, lanes);
        (self.n_kv_heads, self.group) = (n_kv_heads, group);
    }

    /// The largest log-probability over every query head of row `row` at each of its first `out.len()` positions:
    /// `out[p] = max_h (score_h(p) − lse_h)`; NaN never wins (a token all of whose scores are NaN gets −∞).
    pub fn max_log_probs(&self, row: usize, out: &mut [f32]) {
        out.fill(f32::NEG_INFINITY);
        let per_row = self.n_kv_heads * self.chunks;
        for item in row * per_row..(row + 1) * per_row {
            let c = item % self.chunks;
            let count = self.lanes.min(self.group - c * self.lanes);
            let scores = &self.scores[item * self.stride * LANES..][..out.len() * LANES];
            let lse = &self.lse[item * LANES..][..count];
            for (best, at) in out.iter_mut().zip(scores.chunks_exact(LANES)) {
                for (&s, &z) in at.iter().zip(lse) {
                    let v = s - z;
                    // `>` is false for NaN, so a NaN score never wins.
                    if v > *best {
                        *best = v;
                    }
                }
            }
        }
    }
}
