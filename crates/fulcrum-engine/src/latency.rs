//! DuetServe's iteration latency model, on a CPU (papers §5): a step's time is predicted with a roofline, each part
//! taking the longer of its compute time and its memory time, with attention costed per request from its query and
//! context lengths. The scheduler sizes prefill chunks with it ([`SloBudget`]) so that a step carrying decoding
//! sequences stays under a time-between-tokens target.
//!
//! The machine's speeds are measured on the model itself (two probe steps at start-up, [`Machine::fit`]) and a
//! decayed ratio of measured to predicted times keeps the prediction honest as the machine's load changes.

use crate::scheduler::{PrefillBudget, Shape};
use fulcrum_core::roofline::weight_bytes_per_token;
use fulcrum_core::Model;

/// What one model's steps cost, independent of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCost {
    /// Weight bytes every step reads once (the matmul matrices and the output projection).
    pub weight_bytes: f64,
    /// Floating-point operations of the layers' matmuls per token.
    pub layer_flops: f64,
    /// Floating-point operations of the output projection per row of logits.
    pub logit_flops: f64,
    /// Floating-point operations of attention per (query, visible key) pair in one layer.
    pub pair_flops: f64,
    /// Cached key and value bytes of one position in one layer.
    pub kv_row_bytes: f64,
    /// Layers attending to every earlier position.
    pub full_layers: usize,
    /// Layers attending to the last `window` positions only, and that window.
    pub windowed_layers: usize,
    pub window: usize,
}

impl ModelCost {
    /// The costs of `model`.
    pub fn of(model: &Model) -> ModelCost {
        let (c, w) = (&model.config, &model.weights);
        let layer_params: usize = w
            .layers
            .iter()
            .map(|l| l.matrices().iter().map(|m| m.rows * m.cols).sum::<usize>())
            .sum();
        let windowed_layers = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        ModelCost {
            weight_bytes: weight_bytes_per_token(w) as f64,
            layer_flops: 2.0 * layer_params as f64,
            logit_flops: 2.0 * (w.output.rows * w.output.cols) as f64,
            pair_flops: (2 * c.n_heads * (c.head_dim + c.head_dim_v)) as f64,
            kv_row_bytes: c.kv_row_bytes() as f64,
            full_layers: c.n_layers - windowed_layers,
            windowed_layers,
            window: c.sliding_window.unwrap_or(usize::MAX),
        }
    }

    /// Cached bytes read and attention operations of `shape`'s new tokens. Each attends to the positions it sees
    /// (itself included), costed at the middle token's view; a prompt chunk reads the cache once per 64 queries
    /// (the tiled attention's block), a decoded token once.
    fn attention(&self, shape: &Shape) -> (f64, f64) {
        let seen = shape.context + shape.new_tokens / 2 + 1;
        let positions =
            (self.full_layers * seen + self.windowed_layers * seen.min(self.window)) as f64;
        let reads = shape.new_tokens.div_ceil(64) as f64;
        (
            reads * positions * self.kv_row_bytes,
            shape.new_tokens as f64 * positions * self.pair_flops,
        )
    }
}

/// A machine's speeds as the model's kernels see them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    /// Bytes per second the weights stream at (memory-bound steps).
    pub bandwidth: f64,
    /// Floating-point operations per second of the matmul kernels (compute-bound steps).
    pub flops: f64,
    /// Seconds every step costs besides (sampling, threads, scheduling).
    pub overhead: f64,
}

impl Machine {
    /// Speeds from two measured steps of the model: `one` seconds for a single decoded token (memory-bound) and
    /// `chunk` seconds for a prompt chunk of `tokens` tokens (compute-bound), both at an empty cache.
    pub fn fit(cost: &ModelCost, one: f64, tokens: usize, chunk: f64) -> Machine {
        // The single token is the overhead plus a read of the weights; the chunk is the overhead plus its compute.
        let overhead = (0.05 * one).min(chunk * 0.05);
        let bandwidth = cost.weight_bytes / (one - overhead).max(1e-6);
        let flops =
            (cost.layer_flops * tokens as f64 + cost.logit_flops) / (chunk - overhead).max(1e-6);
        Machine {
            bandwidth,
            flops,
            overhead,
        }
    }
}

/// Predicted step times, corrected by what the steps measure.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    pub cost: ModelCost,
    pub machine: Machine,
    /// Decayed ratio of measured to predicted step time.
    pub correction: f64,
}

impl LatencyModel {
    /// A model of `cost` on `machine`, not yet corrected.
    pub fn new(cost: ModelCost, machine: Machine) -> LatencyModel {
        LatencyModel {
            cost,
            machine,
            correction: 1.0,
        }
    }

    /// The roofline time of a step of `work`, before correction.
    pub fn roofline(&self, work: &[Shape]) -> f64 {
        self.roofline_of(work.iter().copied())
    }

    /// [`LatencyModel::roofline`] of the shapes `work` yields (so that callers can add or filter without copying).
    fn roofline_of(&self, work: impl Iterator<Item = Shape> + Clone) -> f64 {
        let m = &self.machine;
        let tokens: usize = work.clone().map(|s| s.new_tokens).sum();
        let logits = work.clone().filter(|s| s.logits).count().max(1);
        // The matmuls: weights streamed once, against the step's tokens.
        let compute = (self.cost.layer_flops * tokens as f64
            + self.cost.logit_flops * logits as f64)
            / m.flops;
        let linear = compute.max(self.cost.weight_bytes / m.bandwidth);
        // Attention, per request: its cached keys and values read, or its scores computed, whichever is longer.
        let attention: f64 = work
            .map(|s| {
                let (bytes, flops) = self.cost.attention(&s);
                (bytes / m.bandwidth).max(flops / m.flops)
            })
            .sum();
        m.overhead + linear + attention
    }

    /// The predicted seconds of a step of `work`.
    pub fn predict(&self, work: &[Shape]) -> f64 {
        self.predict_of(work.iter().copied())
    }

    /// [`LatencyModel::predict`] of the shapes `work` yields.
    fn predict_of(&self, work: impl Iterator<Item = Shape> + Clone) -> f64 {
        self.correction * self.roofline_of(work)
    }

    /// Folds a step's measured `seconds` into the correction (decay 0.9; one wild step moves it at most ×1.5).
    pub fn observe(&mut self, work: &[Shape], seconds: f64) {
        let predicted = self.roofline(work);
        if !(predicted > 0.0 && seconds.is_finite() && seconds > 0.0) {
            return;
        }
        let ratio = (seconds / predicted).clamp(self.correction / 1.5, self.correction * 1.5);
        self.correction = (0.9 * self.correction + 0.1 * ratio).clamp(0.05, 20.0);
    }
}

/// The factor of `--tbt-target auto`. Measured on Qwen2.5-Coder-0.5B at concurrency 8 (docs/benchmarks.md): on the
/// first kernels 2× held every chunk to the minimum and cost a fifth of the throughput, while 3× and 5× gave the
/// same throughput as no target; with today's kernels 3× let the 99th-percentile time between tokens reach 2.5–3.3×
/// its median and 2.5× held it at 2.4× for the same throughput.
pub const AUTO_FACTOR: f64 = 2.5;

/// The time-between-tokens target of [`SloBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TbtTarget {
    /// At most this many seconds per step that carries decoding sequences.
    Seconds(f64),
    /// At most this multiple of the same step without its prefill chunks (so that chunks stretch the time between
    /// the decoding sequences' tokens by a bounded factor).
    Relative(f64),
}

impl std::str::FromStr for TbtTarget {
    type Err = String;

    /// `auto` ([`AUTO_FACTOR`] times the step without its prefill chunks), `N` milliseconds, or `Nx` times the step
    /// without them.
    fn from_str(s: &str) -> Result<TbtTarget, String> {
        let bad = || {
            format!("'{s}' is not a time-between-tokens target: use auto, milliseconds (100) or a factor (2x)")
        };
        if s == "auto" {
            return Ok(TbtTarget::Relative(AUTO_FACTOR));
        }
        let (number, relative) = match s.strip_suffix('x') {
            Some(factor) => (factor, true),
            None => (s.strip_suffix("ms").unwrap_or(s), false),
        };
        let v: f64 = number.parse().map_err(|_| bad())?;
        match (relative, v.is_finite()) {
            (true, true) if v >= 1.0 => Ok(TbtTarget::Relative(v)),
            (false, true) if v > 0.0 => Ok(TbtTarget::Seconds(v / 1e3)),
            _ => Err(bad()),
        }
    }
}

/// DuetServe's prefill budget: a step that already holds decoding sequences gets the largest prefill chunks whose
/// predicted step time stays within the target; its first chunk gets at least `min_chunk` tokens, so that prompts keep
/// moving whatever the target. A step without decoding sequences takes the whole token budget.
pub struct SloBudget<'a> {
    pub model: &'a LatencyModel,
    pub target: TbtTarget,
    pub min_chunk: usize,
}

impl PrefillBudget for SloBudget<'_> {
    fn allow(&self, planned: &[Shape], context: usize, wanted: usize) -> usize {
        if !planned.iter().any(|s| s.new_tokens == 1 && s.logits) {
            return wanted;
        }
        let limit = match self.target {
            TbtTarget::Seconds(s) => s,
            // Relative to the step's decoding sequences alone, not to chunks granted before this one.
            TbtTarget::Relative(k) => {
                let decoding = planned.iter().copied().filter(|s| s.new_tokens == 1);
                k * self.model.predict_of(decoding)
            }
        };
        let with = |n: usize| {
            let chunk = Shape {
                new_tokens: n,
                context,
                logits: false,
            };
            self.model.correction
                * self
                    .model
                    .roofline_of(planned.iter().copied().chain([chunk]))
        };
        // The step time grows with the chunk: the largest chunk within the limit, by bisection.
        let first_chunk = !planned.iter().any(|s| s.new_tokens > 1);
        let floor = if first_chunk {
            self.min_chunk.min(wanted)
        } else {
            0
        };
        if with(wanted) <= limit {
            return wanted;
        }
        let (mut fits, mut over) = (0, wanted);
        while over - fits > 1 {
            let mid = (fits + over) / 2;
            if with(mid) <= limit {
                fits = mid;
            } else {
                over = mid;
            }
        }
        fits.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LatencyModel {
        // Qwen2.5-0.5B's sizes.
        let cost = ModelCost {
            weight_bytes: 400e6,
            layer_flops: 2.0 * 360e6,
            logit_flops: 2.0 * 136e6,
            pair_flops: (2 * 14 * 128) as f64,
            kv_row_bytes: (2 * 128 * 2) as f64,
            full_layers: 24,
            windowed_layers: 0,
            window: usize::MAX,
        };
        // 20 GB/s and 100 GFLOP/s: a decode step is memory-bound (20 ms), a 64-token chunk compute-bound.
        LatencyModel::new(
            cost,
            Machine {
                bandwidth: 20e9,
                flops: 100e9,
                overhead: 0.001,
            },
        )
    }

    fn decode(context: usize) -> Shape {
        Shape {
            new_tokens: 1,
            context,
            logits: true,
        }
    }

    #[test]
    fn the_roofline_takes_the_slower_resource() {
        let m = model();
        let one = m.predict(&[decode(0)]);
        assert!((one - (0.001 + 400e6 / 20e9)).abs() < 1e-3, "{one}");
        let chunk = Shape {
            new_tokens: 256,
            context: 0,
            logits: true,
        };
        let t = m.predict(&[chunk]);
        let compute = (2.0 * 360e6 * 256.0 + 2.0 * 136e6) / 100e9;
        assert!(t > compute && t < compute * 1.2 + 0.002, "{t} vs {compute}");
        // Longer contexts cost more to decode.
        assert!(m.predict(&[decode(8000)]) > one);
    }

    #[test]
    fn fitted_machine_reproduces_its_probes() {
        let m = model();
        let (one, chunk) = (
            m.predict(&[decode(0)]),
            m.predict(&[Shape {
                new_tokens: 64,
                context: 0,
                logits: true,
            }]),
        );
        let fitted = LatencyModel::new(m.cost.clone(), Machine::fit(&m.cost, one, 64, chunk));
        let again = fitted.predict(&[decode(0)]);
        assert!((again - one).abs() / one < 0.1, "{again} vs {one}");
        let again = fitted.predict(&[Shape {
            new_tokens: 64,
            context: 0,
            logits: true,
        }]);
        assert!((again - chunk).abs() / chunk < 0.1, "{again} vs {chunk}");
    }

    #[test]
    fn correction_follows_measured_times_within_bounds() {
        let mut m = model();
        let work = [decode(100)];
        let predicted = m.roofline(&work);
        for _ in 0..60 {
            m.observe(&work, 2.0 * predicted);
        }
        assert!((m.correction - 2.0).abs() < 0.05, "{}", m.correction);
        let before = m.correction;
        m.observe(&work, 1000.0 * predicted);
        assert!(
            m.correction <= before * 1.06,
            "one wild step moves it little"
        );
        m.observe(&work, f64::NAN);
        assert!(m.correction.is_finite());
    }

    #[test]
    fn targets_parse() {
        assert_eq!("auto".parse(), Ok(TbtTarget::Relative(AUTO_FACTOR)));
        assert_eq!("3x".parse(), Ok(TbtTarget::Relative(3.0)));
        assert_eq!("150".parse(), Ok(TbtTarget::Seconds(0.15)));
        assert_eq!("80ms".parse(), Ok(TbtTarget::Seconds(0.08)));
        for bad in ["", "0", "-5", "0.5x", "fast", "nanx", "infms"] {
            assert!(bad.parse::<TbtTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn budget_fits_the_chunk_under_the_target() {
        let m = model();
        let planned = vec![decode(50), decode(70)];
        let decode_only = m.predict(&planned);
        for factor in [1.5, 2.0, 3.0] {
            let budget = SloBudget {
                model: &m,
                target: TbtTarget::Relative(factor),
                min_chunk: 16,
            };
            let n = budget.allow(&planned, 0, 512);
            assert!((16..512).contains(&n), "factor {factor}: {n}");
            let mut with = planned.clone();
            with.push(Shape {
                new_tokens: n,
                context: 0,
                logits: false,
            });
            let t = m.predict(&with);
            assert!(
                n == 16 || t <= factor * decode_only + 1e-9,
                "{t} > {factor} × {decode_only}"
            );
            with.last_mut().unwrap().new_tokens = n + 1;
            assert!(
                m.predict(&with) > factor * decode_only,
                "the chunk is the largest that fits"
            );
        }
        // No decoding sequence: nobody waits on the step, the whole chunk goes.
        let budget = SloBudget {
            model: &m,
            target: TbtTarget::Seconds(0.001),
            min_chunk: 16,
        };
        assert_eq!(budget.allow(&[], 0, 512), 512);
        // An impossible target still lets prompts move, by the minimum chunk, one prompt per step.
        assert_eq!(budget.allow(&planned, 0, 512), 16);
        assert_eq!(budget.allow(&planned, 0, 5), 5);
        let mut with_chunk = planned.clone();
        with_chunk.push(Shape {
            new_tokens: 16,
            context: 0,
            logits: false,
        });
        assert_eq!(budget.allow(&with_chunk, 0, 512), 0);
        // A relative target is relative to the decoding sequences: chunks granted earlier in the step use it up
        // rather than raise it.
        let relative = SloBudget {
            model: &m,
            target: TbtTarget::Relative(2.0),
            min_chunk: 16,
        };
        let first = relative.allow(&planned, 0, 512);
        let mut after = planned.clone();
        after.push(Shape {
            new_tokens: first,
            context: 0,
            logits: false,
        });
        let second = relative.allow(&after, 0, 512);
        after.push(Shape {
            new_tokens: second,
            context: 0,
            logits: false,
        });
        if first > 16 {
            assert!(
                m.predict(&after) <= 2.0 * decode_only + 1e-9,
                "{first} then {second}"
            );
        } else {
            assert_eq!(second, 0, "the floor chunk already spent the target");
        }
    }
}
