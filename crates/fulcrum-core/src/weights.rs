//! Weights: views into the mapped GGUF file, checked against the configuration at load.

use crate::config::Config;
use crate::error::ModelError;
use fulcrum_gguf::{GgmlType, GgufFile, TensorInfo};

/// A weight matrix `(rows, cols)` stored row-major in the file, each row `cols` elements of type `ty`.
#[derive(Clone, Debug)]
pub struct Mat {
    pub info: TensorInfo,
    pub ty: GgmlType,
    /// Output features.
    pub rows: usize,
    /// Input features (the row length).
    pub cols: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
}

/// The weights of one transformer block; shapes are `(rows, cols)` of the matmul.
pub struct LayerWeights {
    /// (d_model) pre-attention RMS norm
    pub attn_norm: Vec<f32>,
    /// (q_dim, d_model)
    pub wq: Mat,
    /// (kv_dim, d_model)
    pub wk: Mat,
    /// (kv_dim_v, d_model)
    pub wv: Mat,
    /// Biases of q, k, v (Qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// (head_dim) per-head norms of q and k (Gemma 3)
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// (d_model, n_heads·head_dim_v)
    pub wo: Mat,
    /// (d_model) norm of the attention output before the residual (Gemma 3)
    pub post_attn_norm: Option<Vec<f32>>,
    /// (d_model) pre-FFN RMS norm
    pub ffn_norm: Vec<f32>,
    /// (d_ff, d_model)
    pub w_gate: Mat,
    /// (d_ff, d_model)
    pub w_up: Mat,
    /// (d_model, d_ff)
    pub w_down: Mat,
    /// (d_model) norm of the FFN output before the residual (Gemma 3)
    pub post_ffn_norm: Option<Vec<f32>>,
}

impl LayerWeights {
    /// The layer's matmul matrices: q, k, v, output, gate, up, down.
    pub fn matrices(&self) -> [&Mat; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

/// All weights of a model.
pub struct Weights {
    /// (vocab, d_model)
    pub token_embd: Mat,
    pub layers: Vec<LayerWeights>,
    /// (d_model)
    pub output_norm: Vec<f32>,
    /// (vocab, d_model); the embedding matrix itself when tied.
    pub output: Mat,
    /// (rope_dims/2) per-frequency divisors (Llama 3.1 rope scaling), if present.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    /// Finds and checks every tensor the configuration needs.
    pub fn load(file: &GgufFile, c: &Config) -> Result<Weights, ModelError> {
        let d = c.d_model as u64;
        let mat = |name: &str, rows: usize, cols: u64| load_mat(file, name, rows as u64, cols);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let opt_vec = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                match file.tensor(&n(s)) {
                    Some(_) => load_vec(file, &n(s), len).map(Some),
                    None => Ok(None),
                }
            };
            let need =
                |s: &str, len: usize, wanted: bool| -> Result<Option<Vec<f32>>, ModelError> {
                    let v = opt_vec(s, len)?;
                    if wanted && v.is_none() {
                        return Err(ModelError::MissingTensor(n(s)));
                    }
                    Ok(v)
                };
            layers.push(LayerWeights {
                attn_norm: load_vec(file, &n("attn_norm.weight"), c.d_model)?,
                wq: mat(&n("attn_q.weight"), c.q_dim(), d)?,
                wk: mat(&n("attn_k.weight"), c.kv_dim(), d)?,
                wv: mat(&n("attn_v.weight"), c.kv_dim_v(), d)?,
                bq: opt_vec("attn_q.bias", c.q_dim())?,
                bk: opt_vec("attn_k.bias", c.kv_dim())?,
                bv: opt_vec("attn_v.bias", c.kv_dim_v())?,
                q_norm: need("attn_q_norm.weight", c.head_dim, c.qk_norm)?,
                k_norm: need("attn_k_norm.weight", c.head_dim, c.qk_norm)?,
                wo: mat(
                    &n("attn_output.weight"),
                    c.d_model,
                    (c.n_heads * c.head_dim_v) as u64,
                )?,
                post_attn_norm: need("post_attention_norm.weight", c.d_model, c.post_norms)?,
                ffn_norm: load_vec(file, &n("ffn_norm.weight"), c.d_model)?,
                w_gate: mat(&n("ffn_gate.weight"), c.d_ff, d)?,
                w_up: mat(&n("ffn_up.weight"), c.d_ff, d)?,
                w_down: mat(&n("ffn_down.weight"), c.d_model, c.d_ff as u64)?,
                post_ffn_norm: need("post_ffw_norm.weight", c.d_model, c.post_norms)?,
            });
        }
        let token_embd = mat("token_embd.weight", c.vocab_size, d)?;
        let output = match file.tensor("output.weight") {
            Some(_) => mat("output.weight", c.vocab_size, d)?,
            None => token_embd.clone(),
        };
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(load_vec(file, "rope_freqs.weight", c.rope_dims / 2)?),
            None => None,
        };
        Ok(Weights {
            token_embd,
            layers,
            output_norm: load_vec(file, "output_norm.weight", c.d_model)?,
            output,
            rope_freqs,
        })
    }
}

fn load_mat(file: &GgufFile, name: &str, rows: u64, cols: u64) -> Result<Mat, ModelError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if info.dims != [cols, rows] {
        return Err(ModelError::BadShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![cols, rows],
        });
    }
    if !fulcrum_quant::is_supported(info.ty) {
        return Err(ModelError::UnsupportedType {
            name: name.into(),
            ty: info.ty,
        });
    }
    fulcrum_quant::check_tensor(info.ty, cols as usize, file.tensor_data(info)).map_err(
        |source| ModelError::BadWeights {
            name: name.into(),
            source,
        },
    )?;
    Ok(Mat {
        info: info.clone(),
        ty: info.ty,
        rows: rows as usize,
        cols: cols as usize,
        row_bytes: fulcrum_quant::row_bytes(info.ty, cols as usize),
    })
}

/// Reads a small tensor (a norm, a bias) into f32, whatever its storage type.
fn load_vec(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if info.n_elements() != len as u64 || info.dims.len() != 1 {
        return Err(ModelError::BadShape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![len as u64],
        });
    }
    if !fulcrum_quant::is_supported(info.ty) {
        return Err(ModelError::UnsupportedType {
            name: name.into(),
            ty: info.ty,
        });
    }
    let mut out = vec![0.0f32; len];
    fulcrum_quant::dequantize_row(info.ty, file.tensor_data(info), &mut out);
    Ok(out)
}
