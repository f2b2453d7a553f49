//! One span's attention in one layer under DELTA: dense on full layers, dense plus page selection on planners, the
//! selected pages on sparse layers; and the buffers that carry each row's selection from its planner to the sparse
//! layers after it.

use super::{page_scores, select_pages, DeltaConfig, LayerRole};
use crate::attention::{self, AttentionScratch, AttentionShape, ScoreDump};
use crate::kv::KvView;
use crate::threads::ThreadPool;

/// DELTA's per-pass state and buffers, held in the model's scratch: each batch row's selected pages and their cache
/// rows, and counters of attended against context positions. Buffers only grow, so decoding allocates nothing once
/// warm.
#[derive(Default)]
pub struct DeltaScratch {
    dump: ScoreDump,
    log_probs: Vec<f32>,
    page_scores: Vec<f32>,
    pages: Vec<u32>,
    /// Per batch row: the cache rows of its selected positions, in logical order (`rows[r]`, empty: dense).
    rows: Vec<Vec<u32>>,
    /// Positions attended by DELTA rows, summed over rows and layers.
    pub attended: u64,
    /// Positions those rows would attend to densely, summed the same way.
    pub context: u64,
}

/// One span's rows for [`DeltaScratch::attend`]: batch rows `first_row..first_row + len` at positions
/// `start_pos..`, with their cache rows through `slots` (row = position without).
pub struct SpanRows<'a> {
    pub first_row: usize,
    pub len: usize,
    pub start_pos: usize,
    pub slots: Option<&'a [u32]>,
}

impl DeltaScratch {
    /// Forgets every row's selection: a new pass begins.
    pub fn begin_pass(&mut self, rows: usize) {
        if self.rows.len() < rows {
            self.rows.resize_with(rows, Vec::new);
        }
        self.rows.iter_mut().for_each(Vec::clear);
    }

    /// `out = attention(q)` for a span decoding under DELTA in a layer of role `role` (not a sliding-window layer):
    /// rows over the budget select pages on a planner and attend to them on a sparse layer; the rest attend densely
    /// (by the online path only when `online_only`, as [`attention::attention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &mut self,
        pool: &ThreadPool,
        shape: &AttentionShape,
        config: &DeltaConfig,
        role: LayerRole,
        view: KvView,
        span: &SpanRows,
        q: &[f32],
        out: &mut [f32],
        scratch: &mut AttentionScratch,
        online_only: bool,
    ) {
        let over = |t: usize| config.over_budget(span.start_pos + t);
        let sparse = (0..span.len).any(|t| !self.rows[span.first_row + t].is_empty());
        match role {
            LayerRole::Planner if (0..span.len).any(over) => {
                let keys = |t: usize| (view, 0..span.start_pos + t + 1);
                let dump = &mut self.dump;
                attention::attention_rows(
                    pool,
                    shape,
                    q,
                    span.len,
                    out,
                    scratch,
                    &keys,
                    Some(dump),
                );
                for t in (0..span.len).filter(|&t| over(t)) {
                    self.select(config, span, t);
                }
            }
            LayerRole::Sparse if sparse => {
                let rows = &self.rows[span.first_row..span.first_row + span.len];
                let keys = |t: usize| {
                    if rows[t].is_empty() {
                        (view, 0..span.start_pos + t + 1)
                    } else {
                        let gathered = KvView {
                            kv: view.kv,
                            slots: Some(&rows[t][..]),
                        };
                        (gathered, 0..rows[t].len())
                    }
                };
                attention::attention_rows(pool, shape, q, span.len, out, scratch, &keys, None);
            }
            _ => attention::attention(
                pool,
                shape,
                view,
                q,
                span.len,
                span.start_pos,
                out,
                scratch,
                online_only,
            ),
        }
        for t in 0..span.len {
            let context = span.start_pos + t + 1;
            let rows = &self.rows[span.first_row + t];
            self.context += context as u64;
            self.attended += if role == LayerRole::Sparse && !rows.is_empty() {
                rows.len()
            } else {
                context
            } as u64;
        }
    }

    /// Scores the pages of span row `t` from the planner's dump and keeps the chosen pages' cache rows.
    fn select(&mut self, config: &DeltaConfig, span: &SpanRows, t: usize) {
        let n = span.start_pos + t + 1;
        self.log_probs.resize(n, 0.0);
        self.dump.max_log_probs(t, &mut self.log_probs[..n]);
        page_scores(&self.log_probs[..n], config.page, &mut self.page_scores);
        select_pages(
            &self.page_scores,
            config.budget,
            config.recent,
            &mut self.pages,
        );
        let rows = &mut self.rows[span.first_row + t];
        rows.clear();
        for &j in &self.pages {
            let first = j as usize * config.page;
            for p in first..(first + config.page).min(n) {
                rows.push(span.slots.map_or(p as u32, |s| s[p]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCache;
    use half::f16;

    /// Softmax attention in f64 of query `q` (one head) over `positions` of kv head `g`.
    fn plain(
        kv: &KvCache,
        g: usize,
        hd: usize,
        q: &[f32],
        positions: &[usize],
        scale: f32,
    ) -> Vec<f64> {
        let (k, v) = (&kv.layers[0].k, &kv.layers[0].v);
        let kd = kv.kv_dim;
        let s: Vec<f64> = positions
            .iter()
            .map(|&p| {
                (0..hd)
                    .map(|i| q[i] as f64 * k[p * kd + g * hd + i].to_f64())
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hd)
            .map(|i| {
                positions
                    .iter()
                    .zip(&w)
                    .map(|(&p, w)| w * v[p * kd + g * hd + i].to_f64())
                    .sum::<f64>()
                    / z
            })
            .collect()
    }

    /// A planner then a sparse layer over one cache, for two decode rows (a verification pair), against a plain
    /// reference: probabilities per head, the max over heads, page sums, the top pages plus the window, then
    /// attention over exactly those positions.
    #[test]
    fn planner_and_sparse_layer_match_a_plain_reference() {
        let (n_heads, n_kv, hd, n_ctx) = (4, 2, 32, 203);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let mut kv = KvCache::new(1, n_ctx, n_kv * hd, n_kv * hd);
        let k: Vec<f32> = (0..n_ctx * n_kv * hd).map(|_| next() * 2.0).collect();
        let v: Vec<f32> = (0..n_ctx * n_kv * hd).map(|_| next()).collect();
        kv.store(0, 0, &k, &v);
        let rows = 2;
        let q: Vec<f32> = (0..rows * n_heads * hd)
            .map(|_| f16::from_f32(next() * 2.0).to_f32())
            .collect();
        let shape = AttentionShape {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            head_dim_v: hd,
            scale: 0.3,
            window: None,
        };
        let config = DeltaConfig {
            full_layers: vec![0],
            page: 16,
            budget: 4,
            recent: 1,
        };
        let pool = ThreadPool::new(2);
        let mut scratch = AttentionScratch::new(n_ctx, n_kv * hd, n_kv * hd, hd, 2);
        let mut delta = DeltaScratch::default();
        delta.begin_pass(rows);
        let span = SpanRows {
            first_row: 0,
            len: rows,
            start_pos: n_ctx - rows,
            slots: None,
        };
        let view = KvView {
            kv: &kv.layers[0],
            slots: None,
        };
        let mut dense = vec![0.0; rows * n_heads * hd];
        let mut sparse = vec![0.0; rows * n_heads * hd];
        for (role, out) in [
            (LayerRole::Planner, &mut dense),
            (LayerRole::Sparse, &mut sparse),
        ] {
            delta.attend(
                &pool,
                &shape,
                &config,
                role,
                view,
                &span,
                &q,
                out,
                &mut scratch,
                true,
            );
        }
        for t in 0..rows {
            let pos = span.start_pos + t;
            let all: Vec<usize> = (0..=pos).collect();
            // The reference selection.
            let probs: Vec<Vec<f64>> = (0..n_heads)
                .map(|h| {
                    let qh = &q[(t * n_heads + h) * hd..][..hd];
                    let g = h / (n_heads / n_kv);
                    let s: Vec<f64> = all
                        .iter()
                        .map(|&p| {
                            (0..hd)
                                .map(|i| {
                                    qh[i] as f64
                                        * f16::from_f32(k[p * n_kv * hd + g * hd + i]).to_f64()
                                })
                                .sum::<f64>()
                                * 0.3
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    s.iter().map(|x| (x - m).exp() / z).collect()
                })
                .collect();
            let n_pages = (pos + 1).div_ceil(16);
            let mut pages: Vec<(f64, usize)> = (0..n_pages)
                .map(|j| {
                    let score: f64 = (j * 16..((j + 1) * 16).min(pos + 1))
                        .map(|p| probs.iter().map(|h| h[p]).fold(0.0, f64::max))
                        .sum();
                    (
                        if j + 1 >= n_pages {
                            f64::INFINITY
                        } else {
                            score
                        },
                        j,
                    )
                })
                .collect();
            pages.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut chosen: Vec<usize> = pages[..4].iter().map(|p| p.1).collect();
            chosen.sort_unstable();
            let positions: Vec<usize> = chosen
                .iter()
                .flat_map(|&j| j * 16..((j + 1) * 16).min(pos + 1))
                .collect();
            let got: Vec<usize> = delta.rows[t].iter().map(|&r| r as usize).collect();
            assert_eq!(got, positions, "row {t}: selected positions");
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv);
                let qh = &q[(t * n_heads + h) * hd..][..hd];
                for (out, keys) in [(&dense, &all), (&sparse, &positions)] {
                    let want = plain(&kv, g, hd, qh, keys, 0.3);
                    let out = &out[(t * n_heads + h) * hd..][..hd];
                    for (a, b) in out.iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 3e-3, "row {t} head {h}: {a} vs {b}");
                    }
                }
            }
        }
        // 3 of 13 pages, and one layer of two attended densely.
        assert!(delta.attended < delta.context);
    }
}
