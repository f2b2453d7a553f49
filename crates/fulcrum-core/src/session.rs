//! A session: one sequence being evaluated, with its KV cache, scratch buffers and thread pool.

use crate::error::ModelError;
use crate::kv::KvCache;
use crate::model::{Logits, Model, Scratch};
use crate::threads::ThreadPool;
use std::sync::Arc;

/// Default number of tokens evaluated in one forward pass during prefill.
pub const DEFAULT_BATCH: usize = 512;

/// Runs one sequence through a model: feed tokens, get logits, rewind.
pub struct Session {
    pub model: Arc<Model>,
    pub pool: ThreadPool,
    pub kv: KvCache,
    scratch: Scratch,
}

impl Session {
    /// A session with a context of `n_ctx` positions, `n_threads` threads (0: all cores) and prefill batches of `batch`.
    pub fn new(
        model: Arc<Model>,
        n_ctx: usize,
        n_threads: usize,
        batch: usize,
    ) -> Result<Session, ModelError> {
        let max = model.config.context_length;
        if n_ctx == 0 || n_ctx > max {
            return Err(ModelError::ContextOverflow {
                needed: n_ctx,
                ctx: max,
                max,
            });
        }
        let pool = ThreadPool::new(n_threads);
        let batch = batch.clamp(1, n_ctx);
        let kv = model.new_kv_cache(n_ctx);
        let scratch = Scratch::new(&model.config, batch, n_ctx, pool.n_threads());
        Ok(Session {
            model,
            pool,
            kv,
            scratch,
        })
    }

    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    /// Whether nothing has been evaluated yet.
    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// Capacity of the context in tokens.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
    }

    /// Evaluates `tokens` after what is cached and returns the logits of the last one (`vocab` floats).
    pub fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], ModelError> {
        self.check_fits(tokens.len())?;
        let chunk = self.scratch.max_batch;
        let n_chunks = tokens.len().div_ceil(chunk);
        for (i, part) in tokens.chunks(chunk).enumerate() {
            if i + 1 < n_chunks {
                self.model.forward(
                    &self.pool,
                    part,
                    &mut self.kv,
                    &mut self.scratch,
                    Logits::Last,
                )?;
            }
        }
        let last = tokens.chunks(chunk).last().ok_or(ModelError::EmptyBatch)?;
        self.model.forward(
            &self.pool,
            last,
            &mut self.kv,
            &mut self.scratch,
            Logits::Last,
        )
    }

    /// Evaluates `tokens` and returns the logits of tokens `from..`, `(tokens.len() - from, vocab)` row-major.
    pub fn eval_from(&mut self, tokens: &[u32], from: usize) -> Result<Vec<f32>, ModelError> {
        self.check_fits(tokens.len())?;
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(from) * vocab);
        let mut offset = 0;
        for part in tokens.chunks(self.scratch.max_batch) {
            let end = offset + part.len();
            if end > from {
                let local = from.saturating_sub(offset);
                let logits = self.model.forward(
                    &self.pool,
                    part,
                    &mut self.kv,
                    &mut self.scratch,
                    Logits::From(local),
                )?;
                out.extend_from_slice(&logits[..(part.len() - local) * vocab]);
            } else {
                self.model.forward(
                    &self.pool,
                    part,
                    &mut self.kv,
                    &mut self.scratch,
                    Logits::Last,
                )?;
            }
            offset = end;
        }
        Ok(out)
    }

    fn check_fits(&self, n: usize) -> Result<(), ModelError> {
        if n == 0 {
            return Err(ModelError::EmptyBatch);
        }
        if self.kv.len + n > self.kv.n_ctx {
            return Err(ModelError::ContextOverflow {
                needed: self.kv.len + n,
                ctx: self.kv.n_ctx,
                max: self.model.config.context_length,
            });
        }
        Ok(())
    }
}
