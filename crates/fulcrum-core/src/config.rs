//! The model configuration, read from GGUF metadata.

use crate::error::ModelError;
use fulcrum_gguf::GgufFile;

/// The architectures Fulcrum implements, by their GGUF `general.architecture` names.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "gemma3"];

/// Most rotating dimensions per head that [`crate::ops::Rope`] supports (its angle table lives on the stack).
pub const MAX_ROPE_DIMS: usize = 1024;

/// Model family; differences between families are the other fields of [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1), as in the original Llama.
    Interleaved,
    /// Halves (i, i + d/2), as in GPT-NeoX, Qwen2 and Gemma.
    Neox,
}

/// The gated feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// silu(gate) · up
    Silu,
    /// gelu_tanh(gate) · up
    GeluTanh,
}

/// Everything about the network's shape and arithmetic that the forward pass needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    /// Architecture name as in the file.
    pub arch_name: String,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Hidden width of the feed-forward network.
    pub d_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head's key and query.
    pub head_dim: usize,
    /// Width of one head's value.
    pub head_dim_v: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMS norm epsilon.
    pub rms_eps: f32,
    /// Rope base of global-attention layers.
    pub rope_base: f32,
    /// Rope base of sliding-window layers (Gemma 3 uses a different one).
    pub rope_base_local: f32,
    /// Linear rope scaling factor of global layers (positions are divided by it).
    pub rope_scale: f32,
    /// Linear rope scaling factor of sliding-window layers.
    pub rope_scale_local: f32,
    /// Dimensions of each head that rotate.
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Sliding-window width of local layers, if the model has them.
    pub sliding_window: Option<usize>,
    /// Every `sliding_pattern`-th layer is global; the others slide (Gemma 3: 6). 0 means all layers are global.
    pub sliding_pattern: usize,
    /// Scale applied to q·k (1/√head_dim unless the architecture says otherwise).
    pub attn_scale: f32,
    /// Whether `attn_scale` multiplies the queries before attention (Gemma, as in llama.cpp) rather than q·k. The
    /// products are the same, but the f16 rounding of small query values is not.
    pub scale_queries: bool,
    /// Multiplier of token embeddings (Gemma: √d_model).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// RMS norms of each head's q and k before rope (Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the FFN, before the residual add (Gemma 3).
    pub post_norms: bool,
    /// Tanh soft-capping of the final logits, if any.
    pub final_logit_softcap: Option<f32>,
}

impl Config {
    /// Reads the configuration of the architecture named in the file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Config, ModelError> {
        let arch_name = file
            .get_str("general.architecture")?
            .ok_or_else(|| missing("general.architecture"))?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    found: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES.to_vec(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req_u32 = |k: &str| -> Result<usize, ModelError> {
            let k = key(k);
            let v = file.get_u32(&k)?.ok_or_else(|| missing(&k))?;
            if v == 0 {
                return Err(ModelError::BadMetadata {
                    key: k,
                    reason: "must be positive".into(),
                });
            }
            Ok(v as usize)
        };
        let opt_u32 = |k: &str| -> Result<Option<usize>, ModelError> {
            Ok(file.get_u32(&key(k))?.map(|v| v as usize))
        };
        let opt_f32 = |k: &str| -> Result<Option<f32>, ModelError> { Ok(file.get_f32(&key(k))?) };

        let n_layers = req_u32("block_count")?;
        let d_model = req_u32("embedding_length")?;
        let d_ff = req_u32("feed_forward_length")?;
        let n_heads = req_u32("attention.head_count")?;
        let n_kv_heads = opt_u32("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = match opt_u32("attention.key_length")? {
            Some(d) => d,
            None if d_model % n_heads == 0 => d_model / n_heads,
            None => {
                return Err(ModelError::BadMetadata {
                    key: key("attention.head_count"),
                    reason: format!("{n_heads} heads do not divide the embedding length {d_model}"),
                })
            }
        };
        let head_dim_v = opt_u32("attention.value_length")?.unwrap_or(head_dim);
        for (name, value) in [
            ("attention.key_length", head_dim),
            ("attention.value_length", head_dim_v),
        ] {
            if value == 0 {
                return Err(ModelError::BadMetadata {
                    key: key(name),
                    reason: "must be positive".into(),
                });
            }
        }
        let context_length = opt_u32("context_length")?.unwrap_or(2048);
        let rms_eps = opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6);
        let rope_base = opt_f32("rope.freq_base")?.unwrap_or(10_000.0);
        let rope_dims = opt_u32("rope.dimension_count")?.unwrap_or(head_dim);
        let rope_scale = match file.get_str(&key("rope.scaling.type"))? {
            Some("linear") | None => opt_f32("rope.scaling.factor")?
                .filter(|f| *f > 0.0)
                .unwrap_or(1.0),
            Some("none") => 1.0,
            Some(other) => {
                return Err(ModelError::BadMetadata {
                    key: key("rope.scaling.type"),
                    reason: format!("rope scaling '{other}' is not supported (only linear)"),
                })
            }
        };
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadMetadata {
                key: key("attention.head_count_kv"),
                reason: format!("{n_kv_heads} does not divide the {n_heads} query heads"),
            });
        }
        if rope_dims > head_dim || rope_dims % 2 != 0 || rope_dims > MAX_ROPE_DIMS {
            return Err(ModelError::BadMetadata {
                key: key("rope.dimension_count"),
                reason: format!(
                    "{rope_dims} must be even, at most the head width {head_dim} and at most {}",
                    MAX_ROPE_DIMS
                ),
            });
        }
        let vocab_size = file
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?
            .n_rows() as usize;
        if vocab_size == 0 {
            return Err(ModelError::BadMetadata {
                key: "token_embd.weight".into(),
                reason: "the vocabulary is empty".into(),
            });
        }

        let mut config = Config {
            arch,
            arch_name: arch_name.to_string(),
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_v,
            vocab_size,
            context_length,
            rms_eps,
            rope_base,
            rope_base_local: rope_base,
            rope_scale,
            rope_scale_local: rope_scale,
            rope_dims,
            rope_style: RopeStyle::Neox,
            sliding_window: None,
            sliding_pattern: 0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            scale_queries: false,
            embed_scale: None,
            activation: Activation::Silu,
            qk_norm: false,
            post_norms: false,
            final_logit_softcap: opt_f32("final_logit_softcapping")?,
        };
        match arch {
            Arch::Llama => config.rope_style = RopeStyle::Interleaved,
            Arch::Qwen2 => {}
            Arch::Gemma3 => {
                // Gemma 3: five sliding-window layers, then one global layer; local layers use rope base 10 000.
                // A window of 0 means none, as in llama.cpp.
                config.sliding_window =
                    Some(opt_u32("attention.sliding_window")?.unwrap_or(512)).filter(|w| *w > 0);
                config.sliding_pattern = 6;
                config.rope_base_local = 10_000.0;
                config.rope_scale_local = 1.0;
                // llama.cpp scales the 27B model's queries by its d_model/n_heads rather than the head width.
                if n_layers == 62 {
                    config.attn_scale = 1.0 / ((d_model / n_heads) as f32).sqrt();
                }
                config.scale_queries = true;
                config.embed_scale = Some((d_model as f32).sqrt());
                config.activation = Activation::GeluTanh;
                config.qk_norm = true;
                config.post_norms = true;
            }
        }
        Ok(config)
    }

    /// Whether layer `layer` attends through a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_pattern > 0
            && !(layer + 1).is_multiple_of(self.sliding_pattern)
    }

    /// Width of all key heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of all value heads together.
    pub fn kv_dim_v(&self) -> usize {
        self.n_kv_heads * self.head_dim_v
    }

    /// Bytes the KV cache holds per position and layer (f16 keys and values).
    pub fn kv_row_bytes(&self) -> usize {
        (self.kv_dim() + self.kv_dim_v()) * std::mem::size_of::<half::f16>()
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

fn missing(key: &str) -> ModelError {
    ModelError::MissingKey(key.to_string())
}
