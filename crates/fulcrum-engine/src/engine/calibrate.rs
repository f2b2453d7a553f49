//! The engine's start-up profile of this machine on its model: DuetServe's profiler (papers.md §5.2) and the costs
//! the speculation controllers start from.

use super::Engine;
use crate::latency::{LatencyModel, Machine, ModelCost};
use fulcrum_core::{ModelError, Rounding, SeqSpan};
use std::time::Instant;

/// Seconds of one timed pass: its layers, and its classifier.
struct Timed {
    total: f64,
    layers: f64,
    head: f64,
}

impl Engine {
    /// Measures a single decoded token, which reads the weights, and a prompt chunk of the token budget (64 at
    /// most), which computes, both written to cache rows no sequence owns yet, and fits the latency model to them.
    /// The first step only pages the weights in and is not counted.
    pub(super) fn calibrate(&mut self) -> LatencyModel {
        let cost = ModelCost::of(&self.model);
        let chunk = (self.config.limits.token_budget.min(64))
            .min(self.kv.n_ctx)
            .min(self.config.max_seq_len);
        let _ = self.timed_pass(1);
        let singles: Vec<Timed> = (0..3).filter_map(|_| self.timed_pass(1).ok()).collect();
        let one = singles
            .iter()
            .map(|r| r.total)
            .fold(f64::INFINITY, f64::min);
        let long = self.timed_pass(chunk).ok();
        let n_layers = self.model.config.n_layers.max(1) as f64;
        for (rows, pass) in singles
            .iter()
            .map(|p| (1, p))
            .chain(long.iter().map(|p| (chunk, p)))
        {
            self.timings.layer.record(rows, pass.layers / n_layers);
            self.timings.head.record(1, pass.head);
        }
        let machine = match (one.is_finite(), long.map(|r| r.total)) {
            (true, Some(t)) => Machine::fit(&cost, one, chunk, t),
            // Cannot happen for a loaded model; a rough machine keeps the budget working.
            _ => Machine {
                bandwidth: 10e9,
                flops: 50e9,
                overhead: 1e-3,
            },
        };
        eprintln!(
            "latency model: weights stream at {:.1} GB/s, matmuls run at {:.1} GFLOP/s; one decode step ≈ {:.0} ms",
            machine.bandwidth / 1e9,
            machine.flops / 1e9,
            one * 1e3
        );
        LatencyModel::new(cost, machine)
    }

    /// One forward pass of `n` tokens at positions `0..n` of the pool's first rows, with the last token's logits.
    fn timed_pass(&mut self, n: usize) -> Result<Timed, ModelError> {
        let slots: Vec<u32> = (0..n as u32).collect();
        let span = SeqSpan {
            start_row: 0,
            len: n,
            start_pos: 0,
            slots: Some(&slots),
            logits_from: n - 1,
            delta: None,
        };
        let tokens = vec![0u32; n];
        let started = Instant::now();
        self.model.embed(&tokens, &mut self.scratch)?;
        self.model.run_layers(
            &self.pool,
            0..self.model.config.n_layers,
            &[span],
            &mut self.kv,
            &mut self.scratch,
            Rounding::BatchInvariant,
        )?;
        let layers = started.elapsed().as_secs_f64();
        let head = Instant::now();
        self.model
            .classify(&self.pool, 1, &mut self.scratch, Rounding::BatchInvariant);
        Ok(Timed {
            total: started.elapsed().as_secs_f64(),
            layers,
            head: head.elapsed().as_secs_f64(),
        })
    }
}
