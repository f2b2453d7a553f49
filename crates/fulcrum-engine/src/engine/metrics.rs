//! Counters, gauges and histograms the engine keeps for `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    /// KV usage × 10⁶.
    pub kv_usage_ppm: AtomicU64,
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    /// Sequences preempted (their blocks freed, to be recomputed) for lack of KV blocks.
    pub preemptions: AtomicU64,
    /// Speculative tokens drafted and accepted.
    pub spec_drafted: AtomicU64,
    pub spec_accepted: AtomicU64,
    /// The same per drafter (`lookup`, `exit:E`), with the rounds each drafted in.
    pub spec_by_drafter: Mutex<BTreeMap<String, DrafterCounts>>,
    /// Rounds of DEL shadow tokens (every candidate exit's prediction, for the statistics), and their rows.
    pub spec_shadow_rounds: AtomicU64,
    pub spec_shadow_rows: AtomicU64,
    /// Positions DELTA requests' decode rows attended to, summed over rows and layers, and the positions dense
    /// attention would have read for them (their ratio is DELTA's reduction).
    pub attention_attended: AtomicU64,
    pub attention_context: AtomicU64,
    /// The latency model's measured-to-predicted ratio × 10⁶ (0 without a model).
    pub latency_correction_ppm: AtomicU64,
    /// Time to first token and between tokens, in seconds.
    pub ttft: Mutex<Histogram>,
    pub tbt: Mutex<Histogram>,
    /// Requests ended, by how (`stop`, `length`, `abort`: the client went away, `error`), as the server saw them.
    pub finished_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from submission to the end of those requests, in seconds.
    pub e2e: Mutex<Histogram>,
}

/// One drafter's speculation counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrafterCounts {
    /// Decode steps that verified a draft of this drafter.
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
}

/// A fixed-bucket histogram in the Prometheus sense.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    /// Cumulative counts per bound, then the total.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        let bounds = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        Histogram {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        *self.counts.last_mut().expect("total") += 1;
        self.sum += v;
    }
}

impl Metrics {
    /// Counts one verified draft of `drafted` tokens by `drafter`, `accepted` of them kept.
    pub fn count_round(&self, drafter: crate::spec::Arm, drafted: usize, accepted: usize) {
        self.spec_drafted
            .fetch_add(drafted as u64, Ordering::Relaxed);
        self.spec_accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        let mut by = self
            .spec_by_drafter
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let c = by.entry(drafter.to_string()).or_default();
        c.rounds += 1;
        c.drafted += drafted as u64;
        c.accepted += accepted as u64;
    }

    /// Counts a request that ended for `reason` after `seconds`.
    pub fn count_finished(&self, reason: &'static str, seconds: f64) {
        *self
            .finished_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
        Self::observe(&self.e2e, seconds);
    }

    /// Observes `seconds` in histogram `h`, recovering a poisoned lock.
    pub fn observe(h: &Mutex<Histogram>, seconds: f64) {
        h.lock().unwrap_or_else(|e| e.into_inner()).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively() {
        let mut h = Histogram::default();
        for v in [0.001, 0.02, 0.02, 7.0, 100.0] {
            h.observe(v);
        }
        let at = |bound: f64| h.counts[h.bounds.iter().position(|&b| b == bound).unwrap()];
        assert_eq!(at(0.005), 1);
        assert_eq!(at(0.025), 3);
        assert_eq!(at(10.0), 4);
        assert_eq!(at(30.0), 4);
        assert_eq!(
            *h.counts.last().unwrap(),
            5,
            "the total counts values above every bound"
        );
        assert!((h.sum - 107.041).abs() < 1e-9);
    }

    #[test]
    fn rounds_are_counted_per_drafter() {
        let m = Metrics::default();
        m.count_round(crate::spec::Arm::Lookup, 4, 3);
        m.count_round(crate::spec::Arm::Exit(8), 2, 0);
        m.count_round(crate::spec::Arm::Lookup, 1, 1);
        assert_eq!(m.spec_drafted.load(Ordering::Relaxed), 7);
        assert_eq!(m.spec_accepted.load(Ordering::Relaxed), 4);
        let by = m.spec_by_drafter.lock().unwrap();
        assert_eq!(
            by["lookup"],
            DrafterCounts {
                rounds: 2,
                drafted: 5,
                accepted: 4
            }
        );
        assert_eq!(by["exit:8"].rounds, 1);
    }
}
