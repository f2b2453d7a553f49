//! The continuous-batching scheduler: each sequence has a count of computed tokens and a target (its tokens so far);
//! every step hands out up to `token_budget` tokens so that the first catches up with the second. Prefill chunks,
//! decode tokens and prefix-cache hits all follow from that one rule. When the KV pool runs out, the most recently
//! admitted sequence is preempted: its blocks are released and it goes back to the queue to be recomputed.
//!
//! No tensors and no threads here: the engine asks for a [`Step`], runs one forward pass over its work, and reports
//! back with [`Scheduler::commit`].

use crate::blocks::{BlockPool, BlockTable};
use std::collections::VecDeque;

/// A sequence the scheduler tracks.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: u64,
    /// Prompt and generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    /// Prompt tokens found in the prefix cache at the last admission.
    pub cached: usize,
    pub table: BlockTable,
    /// Most tokens the sequence may hold (prompt and output).
    pub max_len: usize,
}

impl Sequence {
    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// One sequence's share of a step: compute `tokens[start..start + len]`; logits are wanted for the last of them when
/// that completes the sequence's tokens. A decode step may carry speculative `draft` tokens after them, computed in
/// the spare rows after the sequence and kept only as far as verification accepts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub id: u64,
    pub start: usize,
    pub len: usize,
    pub wants_logits: bool,
    pub draft: Vec<u32>,
}

impl Work {
    /// Rows this work adds to the batch: its own tokens and its draft.
    pub fn rows(&self) -> usize {
        self.len + self.draft.len()
    }

    /// Its size, as a latency model sees it.
    pub fn shape(&self) -> Shape {
        Shape {
            new_tokens: self.rows(),
            context: self.start,
            logits: self.wants_logits,
        }
    }
}

/// What to run in one iteration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    pub work: Vec<Work>,
    /// Sequences sent back to the queue this step (their computed tokens were dropped).
    pub preempted: Vec<u64>,
}

/// The size of one sequence's share of a step, as a latency model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Tokens computed in the step.
    pub new_tokens: usize,
    /// Tokens already in the cache before them.
    pub context: usize,
    /// Whether the step produces logits for it (a decoding sequence, or the end of a prompt).
    pub logits: bool,
}

/// How many prompt tokens a step may take for a sequence, given the work already planned for it: the policy seam of
/// DuetServe's latency-aware budget ([`crate::latency::SloBudget`]).
pub trait PrefillBudget {
    /// Most of the `wanted` prompt tokens (of a sequence with `context` tokens cached) to add to a step already
    /// holding `planned`; 0 leaves the sequence for a later step.
    fn allow(&self, planned: &[Shape], context: usize, wanted: usize) -> usize;
}

/// The plain token budget: every prefill chunk as large as the step's budget allows.
pub struct Unlimited;

impl PrefillBudget for Unlimited {
    fn allow(&self, _planned: &[Shape], _context: usize, wanted: usize) -> usize {
        wanted
    }
}

/// Why a request cannot be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the request needs {needed} KV slots but the cache holds {capacity}")]
    TooLong { needed: usize, capacity: usize },
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("invalid parameters: {0}")]
    Invalid(String),
    /// The engine thread has stopped.
    #[error("the inference engine has stopped")]
    Unavailable,
}

/// Limits of a [`Scheduler`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tokens computed per step, over all sequences.
    pub token_budget: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Requests waiting before new ones are refused.
    pub max_waiting: usize,
}

/// Waiting and running sequences over one block pool.
#[derive(Debug)]
pub struct Scheduler {
    pub pool: BlockPool,
    limits: Limits,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
}

impl Scheduler {
    /// A scheduler over `pool`.
    pub fn new(pool: BlockPool, limits: Limits) -> Scheduler {
        assert!(limits.token_budget > 0 && limits.max_running > 0);
        Scheduler {
            pool,
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues a request whose prompt is `prompt` and which may grow to `max_len` tokens in all.
    pub fn submit(&mut self, id: u64, prompt: Vec<u32>, max_len: usize) -> Result<(), Rejected> {
        let capacity = self.pool.n_blocks() * self.pool.block_size();
        if max_len.max(prompt.len()) > capacity {
            return Err(Rejected::TooLong {
                needed: max_len.max(prompt.len()),
                capacity,
            });
        }
        if self.waiting.len() >= self.limits.max_waiting {
            return Err(Rejected::QueueFull(self.waiting.len()));
        }
        let max_len = max_len.max(prompt.len());
        self.waiting.push_back(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            cached: 0,
            table: BlockTable::default(),
            max_len,
        });
        Ok(())
    }

    /// Sequences waiting for admission.
    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences admitted and holding blocks.
    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    /// The sequence `id`, wherever it is.
    pub fn get(&self, id: u64) -> Option<&Sequence> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|s| s.id == id)
    }

    /// Plans the next step with every prefill chunk as large as the token budget allows.
    pub fn schedule(&mut self) -> Step {
        self.schedule_with(&Unlimited)
    }

    /// Plans the next step, sizing each prefill chunk with `prefill` (decoding sequences come first in a step, so
    /// the policy sees them before any chunk).
    pub fn schedule_with(&mut self, prefill: &dyn PrefillBudget) -> Step {
        let mut step = Step::default();
        let mut budget = self.limits.token_budget;
        let mut shapes: Vec<Shape> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let mut n = (seq.tokens.len() - seq.computed).min(budget);
            if n > 1 {
                n = prefill.allow(&shapes, seq.computed, n).min(n);
            }
            if n == 0 {
                i += 1;
                continue;
            }
            let want = seq.computed + n;
            loop {
                let (pool, seq) = (&mut self.pool, &mut self.running[i]);
                if pool.grow(&mut seq.table, want).is_ok() {
                    break;
                }
                // Out of blocks: send the newest sequence back (possibly this one).
                let victim = self.running.len() - 1;
                self.preempt(victim, &mut step);
                if victim == i {
                    break;
                }
            }
            if i >= self.running.len() {
                break;
            }
            let seq = &self.running[i];
            let work = Work {
                id: seq.id,
                start: seq.computed,
                len: n,
                wants_logits: want == seq.tokens.len(),
                draft: Vec::new(),
            };
            shapes.push(work.shape());
            step.work.push(work);
            budget -= n;
            i += 1;
        }
        // Admit waiting sequences in order while budget, slots and blocks last. A sequence preempted this step waits.
        while budget > 0 && self.running.len() < self.limits.max_running {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            if step.preempted.contains(&seq.id) {
                break;
            }
            if seq.table.blocks.is_empty() {
                let (table, cached) = self.pool.match_prefix(&seq.tokens);
                seq.table = table;
                seq.computed = cached;
                seq.cached = cached;
            }
            let mut n = (seq.tokens.len() - seq.computed).min(budget);
            if n > 1 {
                n = prefill.allow(&shapes, seq.computed, n).min(n);
            }
            if n == 0 || self.pool.grow(&mut seq.table, seq.computed + n).is_err() {
                // Give the shared prefix back until blocks free up.
                self.pool.release(&mut seq.table);
                seq.computed = 0;
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
            let work = Work {
                id: seq.id,
                start: seq.computed,
                len: n,
                wants_logits: seq.computed + n == seq.tokens.len(),
                draft: Vec::new(),
            };
            shapes.push(work.shape());
            step.work.push(work);
            budget -= n;
            self.running.push(seq);
        }
        step
    }

    /// Records that `work` was computed, and appends `sampled` (the token drawn from its logits, if any).
    pub fn commit(&mut self, work: &Work, sampled: Option<u32>) {
        let Some(seq) = self.running.iter_mut().find(|s| s.id == work.id) else {
            return; // aborted meanwhile
        };
        assert_eq!(seq.computed, work.start, "work committed out of order");
        seq.computed += work.len;
        self.pool.register(&seq.table, &seq.tokens, seq.computed);
        if let Some(token) = sampled {
            seq.tokens.push(token);
        }
    }

    /// Attaches `draft` to a decode `work` (one token, logits wanted) if the sequence's blocks can grow to hold it
    /// without preempting anyone; returns whether it did. Drafts beyond the sequence's `max_len` are cut.
    pub fn add_draft(&mut self, work: &mut Work, mut draft: Vec<u32>) -> bool {
        if draft.is_empty() || work.len != 1 || !work.wants_logits || !work.draft.is_empty() {
            return false;
        }
        let Some(seq) = self.running.iter_mut().find(|s| s.id == work.id) else {
            return false;
        };
        draft.truncate(seq.max_len.saturating_sub(seq.tokens.len()));
        if draft.is_empty()
            || self
                .pool
                .grow(&mut seq.table, work.start + 1 + draft.len())
                .is_err()
        {
            return false;
        }
        work.draft = draft;
        true
    }

    /// Records a verified decode `work`: its token and the first `accepted` draft tokens are computed, and
    /// `committed` (those drafts and the token the target chose after them) is appended. Rows of rejected drafts stay
    /// in the sequence's blocks as spare rows, outside its computed length.
    pub fn commit_verified(&mut self, work: &Work, accepted: usize, committed: &[u32]) {
        let Some(seq) = self.running.iter_mut().find(|s| s.id == work.id) else {
            return;
        };
        assert_eq!(seq.computed, work.start, "work committed out of order");
        assert!(
            accepted <= work.draft.len() && committed.len() == accepted + 1,
            "verification commits the accepted drafts and one token"
        );
        seq.computed += work.len + accepted;
        seq.tokens.extend_from_slice(committed);
        self.pool.register(&seq.table, &seq.tokens, seq.computed);
    }

    /// Removes sequence `id` (finished, cancelled or disconnected) and frees its blocks; returns it if it was known.
    pub fn remove(&mut self, id: u64) -> Option<Sequence> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        self.pool.release(&mut seq.table);
        Some(seq)
    }

    fn preempt(&mut self, index: usize, step: &mut Step) {
        let mut seq = self.running.remove(index);
        self.pool.release(&mut seq.table);
        seq.computed = 0;
        step.work.retain(|w| w.id != seq.id);
        step.preempted.push(seq.id);
        self.waiting.push_front(seq);
    }
}

#[cfg(test)]
mod tests;
