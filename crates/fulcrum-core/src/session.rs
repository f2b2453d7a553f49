//! A session: one sequence being evaluated, with its KV cache, scratch buffers and thread pool.

use crate::delta::DeltaConfig;
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::model::{Logits, Model, Rounding, Scratch, SeqSpan};
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
    /// DELTA's settings for decode steps (single-token evaluations); `None`: dense attention.
    delta: Option<DeltaConfig>,
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
            delta: None,
        })
    }

    /// Decodes with DELTA's sparse attention from now on (`None`: dense); the settings must suit the model
    /// ([`DeltaConfig::check`]).
    pub fn set_delta(&mut self, delta: Option<DeltaConfig>) -> Result<(), String> {
        if let Some(d) = &delta {
            d.check(self.model.config.n_layers)?;
        }
        self.delta = delta;
        Ok(())
    }

    /// Positions attended by DELTA's rows so far and positions they would have attended densely, summed over rows and
    /// layers.
    pub fn attention_counts(&self) -> (u64, u64) {
        (self.scratch.delta.attended, self.scratch.delta.context)
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
                    None,
                )?;
            }
        }
        let last = tokens.chunks(chunk).last().ok_or(ModelError::EmptyBatch)?;
        // A single-token pass is a decode step.
        let delta = self.delta.as_ref().filter(|_| last.len() == 1);
        self.model.forward(
            &self.pool,
            last,
            &mut self.kv,
            &mut self.scratch,
            Logits::Last,
            delta,
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
                let delta = self.delta.as_ref().filter(|_| part.len() == 1);
                let logits = self.model.forward(
                    &self.pool,
                    part,
                    &mut self.kv,
                    &mut self.scratch,
                    Logits::From(local),
                    delta,
                )?;
                out.extend_from_slice(&logits[..(part.len() - local) * vocab]);
            } else {
                self.model.forward(
                    &self.pool,
                    part,
                    &mut self.kv,
                    &mut self.scratch,
                    Logits::Last,
                    None,
                )?;
            }
            offset = end;
        }
        Ok(out)
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Evaluates `tokens` after what is cached and returns every token's final hidden state (after the final norm),
    /// `(tokens.len(), d_model)` row-major: what embeddings pool.
    pub fn eval_hidden(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.check_fits(tokens.len())?;
        let d = self.model.config.d_model;
        let n_layers = self.model.config.n_layers;
        let mut out = Vec::with_capacity(tokens.len() * d);
        for part in tokens.chunks(self.scratch.max_batch) {
            let span = SeqSpan {
                start_row: 0,
                len: part.len(),
                start_pos: self.kv.len,
                slots: None,
                logits_from: 0,
                delta: None,
            };
            self.model.embed(part, &mut self.scratch)?;
            self.model.run_layers(
                &self.pool,
                0..n_layers,
                &[span],
                &mut self.kv,
                &mut self.scratch,
                Rounding::Reference,
            )?;
            self.kv.len += part.len();
            out.extend_from_slice(self.model.final_norm(part.len(), &mut self.scratch));
        }
        Ok(out)
    }

    /// [`Session::eval_last`] that also copies, for the last `window` tokens (at most the last chunk's), the hidden
    /// state at each layer boundary of `boundaries` (ascending, each below the layer count) into `captured`, one
    /// `(window, d_model)` buffer per boundary. The arithmetic, and so the logits, are those of `eval_last`.
    pub fn eval_last_capturing(
        &mut self,
        tokens: &[u32],
        boundaries: &[usize],
        window: usize,
        captured: &mut Vec<Vec<f32>>,
    ) -> Result<&[f32], ModelError> {
        self.check_fits(tokens.len())?;
        let chunk = self.scratch.max_batch;
        let split = tokens.len() - (tokens.len() - 1) % chunk - 1;
        let (before, last) = tokens.split_at(split);
        if !before.is_empty() {
            self.eval_last(before)?;
        }
        let n = last.len();
        let window = window.min(n);
        let d = self.model.config.d_model;
        let span = SeqSpan {
            start_row: 0,
            len: n,
            start_pos: self.kv.len,
            slots: None,
            logits_from: n - 1,
            delta: None,
        };
        self.model.embed(last, &mut self.scratch)?;
        captured.clear();
        let mut from = 0;
        for &b in boundaries {
            self.model.run_layers(
                &self.pool,
                from..b,
                &[span],
                &mut self.kv,
                &mut self.scratch,
                Rounding::Reference,
            )?;
            let rows = self.scratch.hidden(n, d);
            captured.push(rows[(n - window) * d..].to_vec());
            from = b;
        }
        let n_layers = self.model.config.n_layers;
        self.model.run_layers(
            &self.pool,
            from..n_layers,
            &[span],
            &mut self.kv,
            &mut self.scratch,
            Rounding::Reference,
        )?;
        self.kv.len += n;
        Ok(self
            .model
            .classify(&self.pool, 1, &mut self.scratch, Rounding::Reference))
    }

    /// Embeds `tokens` into the front of the residual stream, for [`Session::run_layers`].
    pub fn embed(&mut self, tokens: &[u32]) -> Result<(), ModelError> {
        self.model.embed(tokens, &mut self.scratch)
    }

    /// Writes hidden states (whole rows) to the front of the residual stream, for [`Session::run_layers`].
    pub fn load_hidden(&mut self, rows: &[f32]) -> Result<(), ModelError> {
        self.scratch.load_hidden(rows)
    }

    /// Runs the stream's first `n` rows, the tokens at positions `start_pos..`, through `layers`, every row rounded
    /// as if alone, and stores their keys and values. Does not move [`Session::len`]: the caller says with
    /// [`Session::set_len`] which positions are complete in every layer.
    pub fn run_layers(
        &mut self,
        layers: std::ops::Range<usize>,
        start_pos: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        let span = SeqSpan {
            start_row: 0,
            len: n,
            start_pos,
            slots: None,
            logits_from: 0,
            delta: None,
        };
        self.model.run_layers(
            &self.pool,
            layers,
            &[span],
            &mut self.kv,
            &mut self.scratch,
            Rounding::BatchInvariant,
        )
    }

    /// Rows the residual stream holds: the most tokens one batch may carry.
    pub fn hidden_capacity(&self) -> usize {
        self.scratch.max_batch
    }

    /// The first `rows` rows of the residual stream, `(rows, d_model)`.
    pub fn hidden(&self, rows: usize) -> &[f32] {
        self.scratch.hidden(rows, self.model.config.d_model)
    }

    /// Final norm and classifier over the stream's first `rows` rows: `(rows, vocab)` logits.
    pub fn classify(&mut self, rows: usize) -> &[f32] {
        self.model.classify(
            &self.pool,
            rows,
            &mut self.scratch,
            Rounding::BatchInvariant,
        )
    }

    /// [`Session::classify`] rounded as llama.cpp rounds a batch of this size: for statistics (argmaxes of shadow
    /// rows), never for decoding.
    pub fn classify_batch(&mut self, rows: usize) -> &[f32] {
        self.model
            .classify(&self.pool, rows, &mut self.scratch, Rounding::Reference)
    }

    /// The session's thread pool, model, cache, activation buffers and DELTA settings, for a driver that runs the
    /// layers itself.
    pub fn parts(
        &mut self,
    ) -> (
        &ThreadPool,
        &Model,
        &mut KvCache,
        &mut Scratch,
        Option<&DeltaConfig>,
    ) {
        (
            &self.pool,
            &self.model,
            &mut self.kv,
            &mut self.scratch,
            self.delta.as_ref(),
        )
    }

    /// Declares positions `0..len` complete in every layer (after a speculative round).
    pub fn set_len(&mut self, len: usize) {
        self.kv.len = len.min(self.kv.n_ctx);
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
