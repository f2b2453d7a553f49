//! A loaded model and its forward pass over a batch of tokens of one sequence.

use crate::attention::{self, AttentionScratch, AttentionShape};
use crate::config::{Activation, Config};
use crate::error::ModelError;
use crate::kv::{KvCache, KvView};
use crate::ops::{self, QuantBuffer};
use crate::threads::ThreadPool;
use crate::trace;
use crate::weights::{Mat, Weights};
use fulcrum_gguf::GgufFile;
use fulcrum_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A model ready to run: the mapped file, its configuration, weights and tokenizer.
pub struct Model {
    pub file: GgufFile,
    pub path: PathBuf,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
}

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill chunks before the last).
    None,
    /// Only the last token's (generation).
    Last,
    /// Tokens `from..n` of the batch (perplexity, speculative verification).
    From(usize),
}

/// One sequence's tokens in a batch: rows `start_row..start_row + len`, at positions `start_pos..`.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpan<'a> {
    pub start_row: usize,
    pub len: usize,
    pub start_pos: usize,
    /// Cache row of each position `0..start_pos + len` in a paged pool; `None` when row = position.
    pub slots: Option<&'a [u32]>,
    /// Logits are wanted for the span's tokens from this index on (`len`: none).
    pub logits_from: usize,
}

/// How a batch rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Exactly as llama.cpp rounds this batch (its kernels depend on the batch size).
    Reference,
    /// Every row as if it were alone, so that batching requests together never changes their results (serving).
    BatchInvariant,
}

/// Activation buffers for batches of up to `max_batch` tokens, allocated once.
pub struct Scratch {
    pub max_batch: usize,
    /// (n, d_model) residual stream
    x: Vec<f32>,
    /// (n, d_model) normed input of a sub-layer
    xb: Vec<f32>,
    /// (n, q_dim)
    q: Vec<f32>,
    /// (n, kv_dim)
    k: Vec<f32>,
    /// (n, kv_dim_v)
    v: Vec<f32>,
    /// (n, n_heads·head_dim_v)
    att: Vec<f32>,
    /// (n, d_model) output of a sub-layer
    o: Vec<f32>,
    /// (n, d_ff)
    gate: Vec<f32>,
    /// (n, d_ff)
    up: Vec<f32>,
    /// (n_logits, vocab)
    logits: Vec<f32>,
    att_scratch: AttentionScratch,
    qbuf: QuantBuffer,
    /// Batch rows whose logits are wanted.
    out_rows: Vec<usize>,
}

impl Scratch {
    /// The first `rows` rows of the residual stream, `(rows, d_model)`.
    pub fn hidden(&self, rows: usize, d_model: usize) -> &[f32] {
        &self.x[..rows * d_model]
    }

    /// Writes `rows` (whole rows of `d_model` floats) to the front of the residual stream.
    pub fn load_hidden(&mut self, rows: &[f32]) -> Result<(), ModelError> {
        if rows.len() > self.x.len() {
            return Err(ModelError::BadBatch(format!(
                "{} hidden floats exceed the scratch's {}",
                rows.len(),
                self.x.len()
            )));
        }
        self.x[..rows.len()].copy_from_slice(rows);
        Ok(())
    }

    /// Buffers for `config`, batches of `max_batch` tokens, a context of `n_ctx` and `n_threads` threads.
    pub fn new(c: &Config, max_batch: usize, n_ctx: usize, n_threads: usize) -> Scratch {
        let n = max_batch;
        Scratch {
            max_batch,
            x: vec![0.0; n * c.d_model],
            xb: vec![0.0; n * c.d_model],
            q: vec![0.0; n * c.q_dim()],
            k: vec![0.0; n * c.kv_dim()],
            v: vec![0.0; n * c.kv_dim_v()],
            att: vec![0.0; n * c.n_heads * c.head_dim_v],
            o: vec![0.0; n * c.d_model],
            gate: vec![0.0; n * c.d_ff],
            up: vec![0.0; n * c.d_ff],
            logits: Vec::new(),
            att_scratch: AttentionScratch::new(
                n_ctx,
                c.kv_dim(),
                c.kv_dim_v(),
                c.head_dim,
                n_threads,
            ),
            qbuf: QuantBuffer::default(),
            out_rows: Vec::new(),
        }
    }
}

impl Model {
    /// Maps and validates the GGUF file at `path` and prepares its weights and tokenizer.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open(path)?;
        let config = Config::from_gguf(&file)?;
        let weights = Weights::load(&file, &config)?;
        let tokenizer = crate::vocab::tokenizer_from_gguf(&file)?;
        if tokenizer.vocab_size() < config.vocab_size {
            return Err(ModelError::BadMetadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!(
                    "{} tokens for an embedding of {} rows",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        Ok(Model {
            file,
            path: path.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }

    /// The chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.file.get_str("tokenizer.chat_template").ok().flatten()
    }

    /// A KV cache for `n_ctx` positions.
    pub fn new_kv_cache(&self, n_ctx: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(c.n_layers, n_ctx, c.kv_dim(), c.kv_dim_v())
    }

    fn data(&self, m: &Mat) -> &[u8] {
        self.file.tensor_data(&m.info)
    }

    /// Runs `tokens` at positions `kv.len ..` through the network, appends their keys and values to `kv`, and
    /// returns the logits asked for: `(rows, vocab)` row-major. Rounds exactly as llama.cpp does for this batch.
    ///
    /// `tokens.len()` must be at most `scratch.max_batch`; callers split longer inputs.
    pub fn forward<'s>(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        kv: &mut KvCache,
        s: &'s mut Scratch,
        logits: Logits,
    ) -> Result<&'s [f32], ModelError> {
        let n = tokens.len();
        let start = kv.len;
        let logits_from = match logits {
            Logits::None => n,
            Logits::Last => n.saturating_sub(1),
            Logits::From(i) => i.min(n.saturating_sub(1)),
        };
        let span = SeqSpan {
            start_row: 0,
            len: n,
            start_pos: start,
            slots: None,
            logits_from,
        };
        self.forward_batch(pool, tokens, &[span], kv, s, Rounding::Reference)?;
        kv.len = start + n;
        Ok(&s.logits)
    }

    /// Runs a batch holding tokens of several sequences (`spans`, in row order, covering every token) through the
    /// network, stores their keys and values in `kv` (a contiguous cache, or a paged pool addressed through each
    /// span's slots), and returns the logits each span asks for, span after span: `(rows, vocab)` row-major.
    pub fn forward_batch<'s>(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        spans: &[SeqSpan],
        kv: &mut KvCache,
        s: &'s mut Scratch,
        rounding: Rounding,
    ) -> Result<&'s [f32], ModelError> {
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::EmptyBatch);
        }
        self.check_spans(spans, n, kv, s)?;
        self.embed(tokens, s)?;
        self.run_layers(pool, 0..self.config.n_layers, spans, kv, s, rounding)?;
        let rows = s.out_rows.len();
        Ok(self.classify(pool, rows, s, rounding))
    }

    /// Writes the embeddings of `tokens` into the first rows of the scratch's residual stream.
    pub fn embed(&self, tokens: &[u32], s: &mut Scratch) -> Result<(), ModelError> {
        let c = &self.config;
        let w = &self.weights;
        let n = tokens.len();
        if n > s.max_batch {
            return Err(ModelError::BadBatch(format!(
                "batch of {n} exceeds scratch capacity {}",
                s.max_batch
            )));
        }
        let d = c.d_model;
        // Embed: x[t] = E[token_t] (· √d for Gemma).
        let embd_data = self.data(&w.token_embd);
        for (t, &tok) in tokens.iter().enumerate() {
            if tok as usize >= c.vocab_size {
                return Err(ModelError::BadToken {
                    id: tok,
                    vocab: c.vocab_size,
                });
            }
            let row = &embd_data[tok as usize * w.token_embd.row_bytes..][..w.token_embd.row_bytes];
            let x = &mut s.x[t * d..(t + 1) * d];
            fulcrum_quant::dequantize_row(w.token_embd.ty, row, x);
            if let Some(scale) = c.embed_scale {
                x.iter_mut().for_each(|v| *v *= scale);
            }
        }
        if trace::enabled() {
            trace::tensor("inp_scaled", None, &s.x[..n * d], n);
        }
        Ok(())
    }

    /// Runs the residual stream's rows (the spans' tokens, in row order) through `layers`, storing their keys and
    /// values in `kv`. A range that ends at the last layer leaves, at the front of the stream, only the rows whose
    /// logits the spans ask for, ready for [`Model::classify`]. Speculative decoding runs the layers in parts.
    pub fn run_layers(
        &self,
        pool: &ThreadPool,
        layers: std::ops::Range<usize>,
        spans: &[SeqSpan],
        kv: &mut KvCache,
        s: &mut Scratch,
        rounding: Rounding,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let w = &self.weights;
        let n: usize = spans.iter().map(|span| span.len).sum();
        if n == 0 {
            return Err(ModelError::EmptyBatch);
        }
        if n > s.max_batch {
            return Err(ModelError::BadBatch(format!(
                "batch of {n} exceeds scratch capacity {}",
                s.max_batch
            )));
        }
        if layers.end > w.layers.len() || layers.start > layers.end {
            return Err(ModelError::BadBatch(format!(
                "layers {layers:?} of a {}-layer model",
                w.layers.len()
            )));
        }
        self.check_spans(spans, n, kv, s)?;
        let invariant = rounding == Rounding::BatchInvariant;
        let d = c.d_model;
        let tr = trace::enabled();

        // Rows whose logits are wanted: the last layer's feed-forward block runs only for them, as in llama.cpp
        // (whose smaller batch there also decides how its matmuls round).
        s.out_rows.clear();
        for span in spans {
            s.out_rows
                .extend(span.start_row + span.logits_from..span.start_row + span.len);
        }
        let last_layer = w.layers.len() - 1;
        for l in layers {
            let lw = &w.layers[l];
            // Attention block.
            let x = &s.x[..n * d];
            ops::par_rows(pool, &mut s.xb[..n * d], d, |r0, out| {
                ops::rms_norm(&x[r0 * d..][..out.len()], &lw.attn_norm, c.rms_eps, out)
            });
            let xb = &s.xb[..n * d];
            if tr {
                trace::tensor("attn_norm", Some(l), xb, n);
            }
            self.matmuls(
                pool,
                xb,
                n,
                [(&lw.wq, &mut s.q), (&lw.wk, &mut s.k), (&lw.wv, &mut s.v)],
                &mut s.qbuf,
                invariant,
            );
            let (q, k, v) = (
                &mut s.q[..n * c.q_dim()],
                &mut s.k[..n * c.kv_dim()],
                &mut s.v[..n * c.kv_dim_v()],
            );
            for (bias, x) in [(&lw.bq, &mut *q), (&lw.bk, &mut *k), (&lw.bv, &mut *v)] {
                if let Some(b) = bias {
                    ops::add_bias(x, b);
                }
            }
            if tr {
                trace::tensor("Qcur", Some(l), q, n);
                trace::tensor("Kcur", Some(l), k, n);
                trace::tensor("Vcur", Some(l), v, n);
            }
            if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                ops::par_rows(pool, q, c.q_dim(), |_, q| {
                    ops::rms_norm_inplace(q, qn, c.rms_eps)
                });
                ops::par_rows(pool, k, c.kv_dim(), |_, k| {
                    ops::rms_norm_inplace(k, kn, c.rms_eps)
                });
                if tr {
                    trace::tensor("Qcur_normed", Some(l), q, n);
                    trace::tensor("Kcur_normed", Some(l), k, n);
                }
            }
            let sliding = c.is_sliding(l);
            let (base, scale) = if sliding {
                (c.rope_base_local, c.rope_scale_local)
            } else {
                (c.rope_base, c.rope_scale)
            };
            let rope = ops::Rope {
                head_dim: c.head_dim,
                dims: c.rope_dims,
                base,
                scale,
                style: c.rope_style,
                factors: w.rope_freqs.as_deref(),
            };
            for span in spans {
                let rows = span.start_row..span.start_row + span.len;
                for (x, width) in [(&mut *q, c.q_dim()), (&mut *k, c.kv_dim())] {
                    let x = &mut x[rows.start * width..rows.end * width];
                    ops::par_rows(pool, x, width, |r0, x| {
                        for (i, row) in x.chunks_exact_mut(width).enumerate() {
                            rope.apply(row, span.start_pos + r0 + i);
                        }
                    });
                }
            }
            if tr {
                trace::tensor("Qcur_rope", Some(l), q, n);
                trace::tensor("Kcur_rope", Some(l), k, n);
            }
            for span in spans {
                let rows = span.start_row..span.start_row + span.len;
                let (ks, vs) = (
                    &k[rows.start * c.kv_dim()..rows.end * c.kv_dim()],
                    &v[rows.start * c.kv_dim_v()..rows.end * c.kv_dim_v()],
                );
                match span.slots {
                    None => kv.store(l, span.start_pos, ks, vs),
                    Some(slots) => {
                        for i in 0..span.len {
                            let slot = slots[span.start_pos + i] as usize;
                            kv.store(
                                l,
                                slot,
                                &ks[i * c.kv_dim()..(i + 1) * c.kv_dim()],
                                &vs[i * c.kv_dim_v()..(i + 1) * c.kv_dim_v()],
                            );
                        }
                    }
                }
            }
            if c.scale_queries {
                q.iter_mut().for_each(|x| *x *= c.attn_scale);
            }
            let shape = AttentionShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                head_dim_v: c.head_dim_v,
                scale: if c.scale_queries { 1.0 } else { c.attn_scale },
                window: if sliding { c.sliding_window } else { None },
            };
            let att_width = c.n_heads * c.head_dim_v;
            for span in spans {
                let rows = span.start_row..span.start_row + span.len;
                attention::attention(
                    pool,
                    &shape,
                    KvView {
                        kv: &kv.layers[l],
                        slots: span.slots,
                    },
                    &q[rows.start * c.q_dim()..rows.end * c.q_dim()],
                    span.len,
                    span.start_pos,
                    &mut s.att[rows.start * att_width..rows.end * att_width],
                    &mut s.att_scratch,
                    invariant,
                );
            }
            let att = &s.att[..n * att_width];
            if tr {
                trace::tensor("kqv_out", Some(l), att, n);
            }
            self.matmul(pool, &lw.wo, att, n, &mut s.o, &mut s.qbuf, invariant);
            // After the last attention, keep only the rows whose logits are wanted, moved to the front.
            let m = if l == last_layer {
                for (j, &r) in s.out_rows.iter().enumerate() {
                    s.o.copy_within(r * d..(r + 1) * d, j * d);
                    s.x.copy_within(r * d..(r + 1) * d, j * d);
                }
                s.out_rows.len()
            } else {
                n
            };
            if m == 0 {
                continue;
            }
            let o = &mut s.o[..m * d];
            if tr {
                trace::tensor("attn_out", Some(l), o, m);
            }
            if let Some(norm) = &lw.post_attn_norm {
                ops::rms_norm_inplace(o, norm, c.rms_eps);
            }
            let x = &mut s.x[..m * d];
            ops::add_inplace(x, o);
            if tr {
                trace::tensor("attn_post_norm", Some(l), o, m);
                trace::tensor("sa_out", Some(l), x, m);
            }

            // Feed-forward block.
            let x = &s.x[..m * d];
            ops::par_rows(pool, &mut s.xb[..m * d], d, |r0, out| {
                ops::rms_norm(&x[r0 * d..][..out.len()], &lw.ffn_norm, c.rms_eps, out)
            });
            let xb = &s.xb[..m * d];
            if tr {
                trace::tensor("ffn_norm", Some(l), xb, m);
            }
            self.matmuls(
                pool,
                xb,
                m,
                [(&lw.w_gate, &mut s.gate), (&lw.w_up, &mut s.up)],
                &mut s.qbuf,
                invariant,
            );
            let (gate, up) = (&mut s.gate[..m * c.d_ff], &s.up[..m * c.d_ff]);
            if tr {
                trace::tensor("ffn_gate", Some(l), gate, m);
                trace::tensor("ffn_up", Some(l), up, m);
            }
            ops::par_rows(pool, gate, c.d_ff, |r0, gate| {
                let up = &up[r0 * c.d_ff..][..gate.len()];
                match c.activation {
                    Activation::Silu => ops::swiglu(gate, up, c.d_ff),
                    Activation::GeluTanh => ops::geglu(gate, up),
                }
            });
            if tr {
                trace::tensor("ffn_geglu", Some(l), gate, m);
            }
            self.matmul(pool, &lw.w_down, gate, m, &mut s.o, &mut s.qbuf, invariant);
            let o = &mut s.o[..m * d];
            if tr {
                trace::tensor("ffn_out", Some(l), o, m);
            }
            if let Some(norm) = &lw.post_ffn_norm {
                ops::rms_norm_inplace(o, norm, c.rms_eps);
            }
            let x = &mut s.x[..m * d];
            ops::add_inplace(x, o);
            if tr {
                trace::tensor("ffn_post_norm", Some(l), o, m);
                trace::tensor("l_out", Some(l), x, m);
            }
        }

        Ok(())
    }

    /// Final norm and classifier for the first `rows` rows of the residual stream: `(rows, vocab)` logits.
    pub fn classify<'s>(
        &self,
        pool: &ThreadPool,
        rows: usize,
        s: &'s mut Scratch,
        rounding: Rounding,
    ) -> &'s [f32] {
        let c = &self.config;
        let w = &self.weights;
        let d = c.d_model;
        let invariant = rounding == Rounding::BatchInvariant;
        let tr = trace::enabled();
        s.logits.resize(rows * c.vocab_size, 0.0);
        if rows == 0 {
            trace::next_step();
            return &[];
        }
        ops::rms_norm(
            &s.x[..rows * d],
            &w.output_norm,
            c.rms_eps,
            &mut s.xb[..rows * d],
        );
        self.matmul(
            pool,
            &w.output,
            &s.xb[..rows * d],
            rows,
            &mut s.logits,
            &mut s.qbuf,
            invariant,
        );
        if tr {
            trace::tensor("result_norm", None, &s.xb[..rows * d], rows);
        }
        if let Some(cap) = c.final_logit_softcap {
            s.logits
                .iter_mut()
                .for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        if tr {
            trace::tensor("result_output", None, &s.logits, rows);
        }
        trace::next_step();
        &s.logits
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        pool: &ThreadPool,
        w: &Mat,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        qbuf: &mut QuantBuffer,
        invariant: bool,
    ) {
        ops::matmul(pool, w, self.data(w), x, n, out, qbuf, invariant);
    }

    /// Several projections of the same input `x`: quantized once for each run of matrices that share an activation
    /// format, and each such run multiplied in one parallel step.
    fn matmuls<const N: usize>(
        &self,
        pool: &ThreadPool,
        x: &[f32],
        n: usize,
        projections: [(&Mat, &mut Vec<f32>); N],
        qbuf: &mut QuantBuffer,
        invariant: bool,
    ) {
        let mut jobs = projections.map(|(w, out)| (w, self.data(w), out.as_mut_slice()));
        let act_ty = |i: usize, jobs: &[(&Mat, &[u8], &mut [f32])]| {
            fulcrum_quant::vec_dot_type(jobs[i].0.ty)
        };
        let mut start = 0;
        while start < N {
            let end = (start..N)
                .find(|&i| act_ty(i, &jobs) != act_ty(start, &jobs))
                .unwrap_or(N);
            ops::quantize_input(pool, x, n, jobs[start].0.cols, act_ty(start, &jobs), qbuf);
            ops::matmuls_quantized(pool, &mut jobs[start..end], n, qbuf, invariant);
            start = end;
        }
    }

    fn check_spans(
        &self,
        spans: &[SeqSpan],
        n: usize,
        kv: &KvCache,
        s: &Scratch,
    ) -> Result<(), ModelError> {
        let mut row = 0;
        for span in spans {
            let end = span.start_pos + span.len;
            let fits = match span.slots {
                None => end <= kv.n_ctx,
                Some(slots) => {
                    slots.len() >= end && slots[..end].iter().all(|&r| (r as usize) < kv.n_ctx)
                }
            };
            if span.start_row != row || span.len == 0 || span.logits_from > span.len {
                return Err(ModelError::BadBatch(format!(
                    "span at row {} of {} tokens does not continue row {row}",
                    span.start_row, span.len
                )));
            }
            if !fits || end > s.att_scratch.n_ctx() {
                return Err(ModelError::ContextOverflow {
                    needed: end,
                    ctx: s.att_scratch.n_ctx().min(kv.n_ctx),
                    max: self.config.context_length,
                });
            }
            row += span.len;
        }
        if row != n {
            return Err(ModelError::BadBatch(format!(
                "spans cover {row} of {n} tokens"
            )));
        }
        Ok(())
    }
}
