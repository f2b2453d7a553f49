//! A loaded model and its forward pass over a batch of tokens of one sequence.

use crate::attention::{self, AttentionScratch, AttentionShape};
use crate::config::{Activation, Config};
use crate::delta::pass::SpanRows;
use crate::delta::{DeltaConfig, DeltaScratch};
use crate::error::ModelError;
use crate::kv::{KvCache, KvView};
use crate::ops::{self, QuantBuffer};
use crate::threads::ThreadPool;
use crate::trace::{self, Tracer};
use crate::weights::{Mat, Weights};
use fulcrum_gguf::GgufFile;
use fulcrum_tokenizer::Tokenizer;
use std::ops::Range;
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
    /// DELTA's settings when the span's rows decode with sparse attention; `None`: dense (always so for prefill).
    pub delta: Option<&'a DeltaConfig>,
}

impl SeqSpan<'_> {
    /// The batch rows of the span's tokens.
    fn rows(&self) -> Range<usize> {
        self.start_row..self.start_row + self.len
    }
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
    /// DELTA's selections and counters.
    pub delta: DeltaScratch,
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

    /// Chooses the batch rows whose logits the spans ask for (`out_rows`): the last layer's feed-forward block runs
    /// only for them, as in llama.cpp.
    fn select_logit_rows(&mut self, spans: &[SeqSpan]) {
        self.out_rows.clear();
        for span in spans {
            self.out_rows
                .extend(span.start_row + span.logits_from..span.start_row + span.len);
        }
    }

    /// Moves the `out_rows` of the residual stream and of the sub-layer output to the front; returns their count.
    fn keep_logit_rows(&mut self, d_model: usize) -> usize {
        let d = d_model;
        for (j, &r) in self.out_rows.iter().enumerate() {
            self.o.copy_within(r * d..(r + 1) * d, j * d);
            self.x.copy_within(r * d..(r + 1) * d, j * d);
        }
        self.out_rows.len()
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
            delta: DeltaScratch::default(),
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
    /// With `delta`, the tokens decode under DELTA's sparse attention.
    ///
    /// `tokens.len()` must be at most `scratch.max_batch`; callers split longer inputs.
    pub fn forward<'s>(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        kv: &mut KvCache,
        s: &'s mut Scratch,
        logits: Logits,
        delta: Option<&DeltaConfig>,
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
            delta,
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
        Tracer::from_env().record("inp_scaled", None, &s.x[..n * d], n);
        Ok(())
    }

    /// Runs the residual stream's rows (the spans' tokens, in row order) through `layers`, storing their keys and
    /// values in `kv`. A range that ends at the last layer leaves, at the front of the stream, only the rows whose
    /// logits the spans ask for, ready for [`Model::classify`]. Speculative decoding runs the layers in parts.
    pub fn run_layers(
        &self,
        pool: &ThreadPool,
        layers: Range<usize>,
        spans: &[SeqSpan],
        kv: &mut KvCache,
        s: &mut Scratch,
        rounding: Rounding,
    ) -> Result<(), ModelError> {
        let n = self.check_batch(&layers, spans, kv, s)?;
        let p = Pass {
            pool,
            spans,
            invariant: rounding == Rounding::BatchInvariant,
            trace: Tracer::from_env(),
        };
        s.select_logit_rows(spans);
        if spans.iter().any(|span| span.delta.is_some()) {
            s.delta.begin_pass(n);
        }
        let last_layer = self.weights.layers.len() - 1;
        for l in layers {
            // x += attention(norm(x)); after the last layer's, only the rows whose logits are wanted go on.
            let m = self.attention_block(&p, l, n, kv, s, l == last_layer);
            if m > 0 {
                // x += ffn(norm(x))
                self.ffn_block(&p, l, m, s);
            }
        }
        Ok(())
    }

    /// The attention sub-layer of layer `l` over the batch's `n` rows: `x += post_norm(attention(norm(x)) · wo)`.
    /// After the `last` layer's attention only the rows whose logits are wanted go on, moved to the front, as in
    /// llama.cpp (whose smaller batch there also decides how the feed-forward matmuls round); returns how many go on.
    fn attention_block(
        &self,
        p: &Pass,
        l: usize,
        n: usize,
        kv: &mut KvCache,
        s: &mut Scratch,
        last: bool,
    ) -> usize {
        let lw = &self.weights.layers[l];
        self.norm(p, l, n, &lw.attn_norm, "attn_norm", s); // xb = norm(x)   (n, d_model)
        self.qkv(p, l, n, s); // q, k, v = xb · wq, wk, wv   (n, q_dim), (n, kv_dim), (n, kv_dim_v)
        self.qk_norm(p, l, n, s); // per-head norms of q and k, where the model has them
        self.rope(p, l, n, s); // q and k rotated by their positions
        self.store_kv(p, l, kv, s); // k, v → the cache rows of their positions
        self.attend(p, l, n, kv, s); // att = softmax(q · Kᵀ) · V   (n, n_heads · head_dim_v)
        self.out_proj(p, l, n, s); // o = att · wo   (n, d_model)
        let m = if last {
            s.keep_logit_rows(self.config.d_model)
        } else {
            n
        };
        if m > 0 {
            let names = ["attn_out", "attn_post_norm", "sa_out"];
            self.residual(p, l, m, lw.post_attn_norm.as_deref(), names, s); // x += post_norm(o)   (m, d_model)
        }
        m
    }

    /// The feed-forward sub-layer of layer `l` over the first `m` rows: `x += post_norm(act(xb · w_gate, xb · w_up)
    /// · w_down)` with `xb = norm(x)`.
    fn ffn_block(&self, p: &Pass, l: usize, m: usize, s: &mut Scratch) {
        let lw = &self.weights.layers[l];
        self.norm(p, l, m, &lw.ffn_norm, "ffn_norm", s); // xb = norm(x)   (m, d_model)
        self.gate_up(p, l, m, s); // gate, up = xb · w_gate, w_up   (m, d_ff)
        self.activation(p, l, m, s); // gate = act(gate) · up   (m, d_ff)
        self.down_proj(p, l, m, s); // o = gate · w_down   (m, d_model)
        let names = ["ffn_out", "ffn_post_norm", "l_out"];
        self.residual(p, l, m, lw.post_ffn_norm.as_deref(), names, s); // x += post_norm(o)   (m, d_model)
    }

    /// `xb = rms_norm(x) · weight` for the first `rows` rows, `(rows, d_model)`, traced as `name`.
    fn norm(&self, p: &Pass, l: usize, rows: usize, weight: &[f32], name: &str, s: &mut Scratch) {
        let (d, eps) = (self.config.d_model, self.config.rms_eps);
        let x = &s.x[..rows * d];
        ops::par_rows(p.pool, &mut s.xb[..rows * d], d, |r0, out| {
            ops::rms_norm(&x[r0 * d..][..out.len()], weight, eps, out)
        });
        p.trace.record(name, Some(l), &s.xb[..rows * d], rows);
    }

    /// `q, k, v = xb · wq, wk, wv` plus their biases, where the model has them: `(n, q_dim)`, `(n, kv_dim)`,
    /// `(n, kv_dim_v)`.
    fn qkv(&self, p: &Pass, l: usize, n: usize, s: &mut Scratch) {
        let (c, lw) = (&self.config, &self.weights.layers[l]);
        self.matmuls(
            p.pool,
            &s.xb[..n * c.d_model],
            n,
            [(&lw.wq, &mut s.q), (&lw.wk, &mut s.k), (&lw.wv, &mut s.v)],
            &mut s.qbuf,
            p.invariant,
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
        p.trace.record("Qcur", Some(l), q, n);
        p.trace.record("Kcur", Some(l), k, n);
        p.trace.record("Vcur", Some(l), v, n);
    }

    /// Per-head RMS norms of q and k, where the model has them (Gemma 3).
    fn qk_norm(&self, p: &Pass, l: usize, n: usize, s: &mut Scratch) {
        let (c, lw) = (&self.config, &self.weights.layers[l]);
        let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) else {
            return;
        };
        let (q, k) = (&mut s.q[..n * c.q_dim()], &mut s.k[..n * c.kv_dim()]);
        ops::par_rows(p.pool, q, c.q_dim(), |_, q| {
            ops::rms_norm_inplace(q, qn, c.rms_eps)
        });
        ops::par_rows(p.pool, k, c.kv_dim(), |_, k| {
            ops::rms_norm_inplace(k, kn, c.rms_eps)
        });
        p.trace.record("Qcur_normed", Some(l), q, n);
        p.trace.record("Kcur_normed", Some(l), k, n);
    }

    /// Rotates every span's q and k rows by their positions (with the local base and scale on sliding-window layers).
    fn rope(&self, p: &Pass, l: usize, n: usize, s: &mut Scratch) {
        let c = &self.config;
        let (base, scale) = if c.is_sliding(l) {
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
            factors: self.weights.rope_freqs.as_deref(),
        };
        let (q, k) = (&mut s.q[..n * c.q_dim()], &mut s.k[..n * c.kv_dim()]);
        for span in p.spans {
            let rows = span.rows();
            for (x, width) in [(&mut *q, c.q_dim()), (&mut *k, c.kv_dim())] {
                let x = &mut x[rows.start * width..rows.end * width];
                ops::par_rows(p.pool, x, width, |r0, x| {
                    for (i, row) in x.chunks_exact_mut(width).enumerate() {
                        rope.apply(row, span.start_pos + r0 + i);
                    }
                });
            }
        }
        p.trace.record("Qcur_rope", Some(l), q, n);
        p.trace.record("Kcur_rope", Some(l), k, n);
    }

    /// Writes every span's k and v rows into layer `l` of the cache: at their positions, or at their slots in a
    /// paged pool.
    fn store_kv(&self, p: &Pass, l: usize, kv: &mut KvCache, s: &Scratch) {
        let (kv_dim, kv_dim_v) = (self.config.kv_dim(), self.config.kv_dim_v());
        for span in p.spans {
            let rows = span.rows();
            let (ks, vs) = (
                &s.k[rows.start * kv_dim..rows.end * kv_dim],
                &s.v[rows.start * kv_dim_v..rows.end * kv_dim_v],
            );
            match span.slots {
                None => kv.store(l, span.start_pos, ks, vs),
                Some(slots) => {
                    for i in 0..span.len {
                        let slot = slots[span.start_pos + i] as usize;
                        kv.store(
                            l,
                            slot,
                            &ks[i * kv_dim..(i + 1) * kv_dim],
                            &vs[i * kv_dim_v..(i + 1) * kv_dim_v],
                        );
                    }
                }
            }
        }
    }

    /// `att = softmax(q · Kᵀ · scale) · V` for every span over its own keys and values in layer `l`'s cache (causal,
    /// and windowed on sliding-window layers): `(n, n_heads · head_dim_v)`.
    fn attend(&self, p: &Pass, l: usize, n: usize, kv: &KvCache, s: &mut Scratch) {
        let c = &self.config;
        let q = &mut s.q[..n * c.q_dim()];
        if c.scale_queries {
            q.iter_mut().for_each(|x| *x *= c.attn_scale);
        }
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            scale: if c.scale_queries { 1.0 } else { c.attn_scale },
            window: if c.is_sliding(l) {
                c.sliding_window
            } else {
                None
            },
        };
        let (q_dim, att_width) = (c.q_dim(), c.n_heads * c.head_dim_v);
        for span in p.spans {
            let rows = span.rows();
            let view = KvView {
                kv: &kv.layers[l],
                slots: span.slots,
            };
            let (q, out) = (
                &q[rows.start * q_dim..rows.end * q_dim],
                &mut s.att[rows.start * att_width..rows.end * att_width],
            );
            match span.delta {
                // Sliding-window layers keep their window: it is already shorter than any useful budget.
                Some(config) if shape.window.is_none() => {
                    let span_rows = SpanRows {
                        first_row: span.start_row,
                        len: span.len,
                        start_pos: span.start_pos,
                        slots: span.slots,
                    };
                    let role = config.role(l);
                    s.delta.attend(
                        p.pool,
                        &shape,
                        config,
                        role,
                        view,
                        &span_rows,
                        q,
                        out,
                        &mut s.att_scratch,
                        p.invariant,
                    );
                }
                _ => attend_span(p, &shape, view, span, q, out, &mut s.att_scratch),
            }
        }
        p.trace
            .record("kqv_out", Some(l), &s.att[..n * att_width], n);
    }

    /// `o = att · wo`, `(n, d_model)`.
    fn out_proj(&self, p: &Pass, l: usize, n: usize, s: &mut Scratch) {
        let att_width = self.config.n_heads * self.config.head_dim_v;
        let wo = &self.weights.layers[l].wo;
        let att = &s.att[..n * att_width];
        self.matmul(p.pool, wo, att, n, &mut s.o, &mut s.qbuf, p.invariant);
    }

    /// `gate, up = xb · w_gate, w_up`, `(m, d_ff)` each.
    fn gate_up(&self, p: &Pass, l: usize, m: usize, s: &mut Scratch) {
        let (c, lw) = (&self.config, &self.weights.layers[l]);
        self.matmuls(
            p.pool,
            &s.xb[..m * c.d_model],
            m,
            [(&lw.w_gate, &mut s.gate), (&lw.w_up, &mut s.up)],
            &mut s.qbuf,
            p.invariant,
        );
        p.trace
            .record("ffn_gate", Some(l), &s.gate[..m * c.d_ff], m);
        p.trace.record("ffn_up", Some(l), &s.up[..m * c.d_ff], m);
    }

    /// `gate = act(gate) · up` elementwise, with SiLU (SwiGLU) or tanh-approximated GELU (GeGLU): `(m, d_ff)`.
    fn activation(&self, p: &Pass, l: usize, m: usize, s: &mut Scratch) {
        let c = &self.config;
        let (gate, up) = (&mut s.gate[..m * c.d_ff], &s.up[..m * c.d_ff]);
        ops::par_rows(p.pool, gate, c.d_ff, |r0, gate| {
            let up = &up[r0 * c.d_ff..][..gate.len()];
            match c.activation {
                Activation::Silu => ops::swiglu(gate, up, c.d_ff),
                Activation::GeluTanh => ops::geglu(gate, up),
            }
        });
        p.trace.record("ffn_geglu", Some(l), gate, m);
    }

    /// `o = gate · w_down`, `(m, d_model)`.
    fn down_proj(&self, p: &Pass, l: usize, m: usize, s: &mut Scratch) {
        let w_down = &self.weights.layers[l].w_down;
        let gate = &s.gate[..m * self.config.d_ff];
        self.matmul(p.pool, w_down, gate, m, &mut s.o, &mut s.qbuf, p.invariant);
    }

    /// `x += post_norm(o)` for the first `m` rows, `(m, d_model)`. Traces `o` as `names[0]` before the norm and
    /// `names[1]` after it (llama.cpp's names, whether or not the model has the norm), then `x` as `names[2]`.
    fn residual(
        &self,
        p: &Pass,
        l: usize,
        m: usize,
        post_norm: Option<&[f32]>,
        names: [&str; 3],
        s: &mut Scratch,
    ) {
        let d = self.config.d_model;
        let o = &mut s.o[..m * d];
        p.trace.record(names[0], Some(l), o, m);
        if let Some(norm) = post_norm {
            ops::rms_norm_inplace(o, norm, self.config.rms_eps);
        }
        let x = &mut s.x[..m * d];
        ops::add_inplace(x, o);
        p.trace.record(names[1], Some(l), o, m);
        p.trace.record(names[2], Some(l), x, m);
    }

    /// The final norm of the residual stream's first `rows` rows, `(rows, d_model)`: the hidden states the
    /// classifier reads (llama.cpp's `result_norm`, what its embeddings pool).
    pub fn final_norm<'s>(&self, rows: usize, s: &'s mut Scratch) -> &'s [f32] {
        let d = self.config.d_model;
        ops::rms_norm(
            &s.x[..rows * d],
            &self.weights.output_norm,
            self.config.rms_eps,
            &mut s.xb[..rows * d],
        );
        &s.xb[..rows * d]
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
        let trace = Tracer::from_env();
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
        trace.record("result_norm", None, &s.xb[..rows * d], rows);
        if let Some(cap) = c.final_logit_softcap {
            s.logits
                .iter_mut()
                .for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        trace.record("result_output", None, &s.logits, rows);
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

    /// Checks a batch of `spans` for `layers` against the model, the cache and the scratch; returns its row count.
    fn check_batch(
        &self,
        layers: &Range<usize>,
        spans: &[SeqSpan],
        kv: &KvCache,
        s: &Scratch,
    ) -> Result<usize, ModelError> {
        let n_layers = self.weights.layers.len();
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
        if layers.end > n_layers || layers.start > layers.end {
            return Err(ModelError::BadBatch(format!(
                "layers {layers:?} of a {n_layers}-layer model"
            )));
        }
        self.check_spans(spans, n, kv, s)?;
        Ok(n)
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

/// What every step of one pass of a batch through the layers shares.
struct Pass<'a> {
    pool: &'a ThreadPool,
    /// The batch's sequences, in row order.
    spans: &'a [SeqSpan<'a>],
    /// Every row rounds as if alone ([`Rounding::BatchInvariant`]).
    invariant: bool,
    trace: Tracer,
}

/// One span's dense attention over its keys and values, `kv`: its rows of one layer's cache (through its slot list in
/// a paged pool). `q` holds the span's query rows and `out` receives its `(span.len, n_heads · head_dim_v)` outputs.
/// Spans decoding under DELTA go to [`DeltaScratch::attend`] instead, which narrows `kv` to the selected pages.
fn attend_span(
    p: &Pass,
    shape: &AttentionShape,
    kv: KvView,
    span: &SeqSpan,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut AttentionScratch,
) {
    attention::attention(
        p.pool,
        shape,
        kv,
        q,
        span.len,
        span.start_pos,
        out,
        scratch,
        p.invariant,
    );
}
