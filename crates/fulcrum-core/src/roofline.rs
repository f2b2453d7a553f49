//! The memory roofline of decoding: bytes read from memory per generated token, and the machine's read bandwidth.
//!
//! Decoding one token reads every weight matrix once and the cached keys and values it attends to; at these sizes
//! nothing of that fits in cache between tokens, so tokens/s × bytes per token is the bandwidth decode achieves, and
//! a streaming read of a buffer far larger than the last-level cache is the most it could achieve.

use crate::attention::AttentionShape;
use crate::config::Config;
use crate::threads::{split_range, ThreadPool};
use crate::weights::{Mat, Weights};
use std::time::Instant;

/// Bytes one decode step (a batch of one token) reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeBytes {
    /// Weight bytes as stored: every matmul matrix in full, and one row of the embedding table.
    pub weights: u64,
    /// Cached keys and values (f16) of every layer over the positions attended to.
    pub kv: f64,
}

impl DecodeBytes {
    /// Weights and KV together.
    pub fn total(&self) -> f64 {
        self.weights as f64 + self.kv
    }
}

fn mat_bytes(m: &Mat) -> u64 {
    (m.rows * m.row_bytes) as u64
}

/// Weight bytes read per decoded token: each layer's q, k, v, output, gate, up and down matrices, the output
/// projection (the embedding table itself when tied, read in full) and the one embedding row looked up. Norm
/// weights and biases (a few KiB, copied to f32 at load) are left out.
pub fn weight_bytes_per_token(w: &Weights) -> u64 {
    let layers: u64 = w
        .layers
        .iter()
        .map(|l| l.matrices().into_iter().map(mat_bytes).sum::<u64>())
        .sum();
    layers + mat_bytes(&w.output) + w.token_embd.row_bytes as u64
}

/// KV bytes read by the token at position `pos` (stored before attention, so it attends to itself): per layer, the
/// key and value rows of the positions it sees, fewer on sliding-window layers.
pub fn kv_bytes_at(c: &Config, pos: usize) -> u64 {
    let row_bytes = c.kv_row_bytes() as u64;
    (0..c.n_layers)
        .map(|layer| {
            let shape = AttentionShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                head_dim_v: c.head_dim_v,
                scale: c.attn_scale,
                window: if c.is_sliding(layer) {
                    c.sliding_window
                } else {
                    None
                },
            };
            shape.visible(pos).len() as u64 * row_bytes
        })
        .sum()
}

/// Mean bytes per token of generating `n_gen` tokens after `depth` cached positions (positions `depth..depth+n_gen`).
pub fn decode_bytes(c: &Config, w: &Weights, depth: usize, n_gen: usize) -> DecodeBytes {
    let kv_sum: u64 = (depth..depth + n_gen).map(|pos| kv_bytes_at(c, pos)).sum();
    DecodeBytes {
        weights: weight_bytes_per_token(w),
        kv: if n_gen == 0 {
            0.0
        } else {
            kv_sum as f64 / n_gen as f64
        },
    }
}

/// A measured read bandwidth.
#[derive(Clone, Debug)]
pub struct Bandwidth {
    /// Median over the passes, bytes per second.
    pub bytes_per_s: f64,
    /// Size of the buffer read in each pass.
    pub buffer_bytes: usize,
    /// Bytes per second of each pass.
    pub passes: Vec<f64>,
}

/// Measures streaming read bandwidth: every thread of `pool` sums its own contiguous part of a `buffer_bytes`
/// buffer, `passes` times after one pass that faults the pages in and warms up; returns the median.
pub fn read_bandwidth(pool: &ThreadPool, buffer_bytes: usize, passes: usize) -> Bandwidth {
    let words: Vec<u64> = (0..buffer_bytes / 8).map(|i| i as u64).collect();
    let read_pass = || {
        let started = Instant::now();
        pool.run(|index, n_threads| {
            let part = &words[split_range(words.len(), index, n_threads)];
            std::hint::black_box(part.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
        });
        (words.len() * 8) as f64 / started.elapsed().as_secs_f64()
    };
    read_pass();
    let rates: Vec<f64> = (0..passes.max(1)).map(|_| read_pass()).collect();
    Bandwidth {
        bytes_per_s: median(&rates),
        buffer_bytes: words.len() * 8,
        passes: rates,
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_gguf::writer::{to_bytes, TensorSpec};
    use fulcrum_gguf::{GgmlType, GgufFile, Value};

    const D: u64 = 64;
    const FF: u64 = 96;
    const VOCAB: u64 = 50;
    const HEADS: u32 = 4;
    const KV_HEADS: u32 = 2;
    const HEAD_DIM: u64 = 16;
    const LAYERS: u32 = 6;
    const WINDOW: u32 = 8;

    /// A small model of `arch` with zero weights in several storage types; the output matrix is separate unless
    /// `tied`.
    fn model_file(arch: &str, tied: bool) -> GgufFile {
        let key = |k: &str| format!("{arch}.{k}");
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (key("block_count"), Value::U32(LAYERS)),
            (key("embedding_length"), Value::U32(D as u32)),
            (key("feed_forward_length"), Value::U32(FF as u32)),
            (key("attention.head_count"), Value::U32(HEADS)),
            (key("attention.head_count_kv"), Value::U32(KV_HEADS)),
            (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
            (key("attention.value_length"), Value::U32(HEAD_DIM as u32)),
            (key("context_length"), Value::U32(1024)),
        ];
        if arch == "gemma3" {
            metadata.push((key("attention.sliding_window"), Value::U32(WINDOW)));
        }
        let (q_dim, kv_dim) = (HEADS as u64 * HEAD_DIM, KV_HEADS as u64 * HEAD_DIM);
        let mut specs = vec![
            (
                "token_embd.weight".to_string(),
                vec![D, VOCAB],
                GgmlType::Q8_0,
            ),
            ("output_norm.weight".to_string(), vec![D], GgmlType::F32),
        ];
        if !tied {
            specs.push(("output.weight".into(), vec![D, VOCAB], GgmlType::F16));
        }
        for l in 0..LAYERS {
            let n = |s: &str| format!("blk.{l}.{s}");
            specs.extend([
                (n("attn_norm.weight"), vec![D], GgmlType::F32),
                (n("attn_q.weight"), vec![D, q_dim], GgmlType::Q8_0),
                (n("attn_k.weight"), vec![D, kv_dim], GgmlType::F16),
                (n("attn_v.weight"), vec![D, kv_dim], GgmlType::Q4_0),
                (n("attn_output.weight"), vec![q_dim, D], GgmlType::Q8_0),
                (n("ffn_norm.weight"), vec![D], GgmlType::F32),
                (n("ffn_gate.weight"), vec![D, FF], GgmlType::Q5_0),
                (n("ffn_up.weight"), vec![D, FF], GgmlType::Q8_0),
                (n("ffn_down.weight"), vec![FF, D], GgmlType::F32),
            ]);
            if arch == "gemma3" {
                specs.extend([
                    (n("attn_q_norm.weight"), vec![HEAD_DIM], GgmlType::F32),
                    (n("attn_k_norm.weight"), vec![HEAD_DIM], GgmlType::F32),
                    (n("post_attention_norm.weight"), vec![D], GgmlType::F32),
                    (n("post_ffw_norm.weight"), vec![D], GgmlType::F32),
                ]);
            }
        }
        let data: Vec<(TensorSpec, Vec<u8>)> = specs
            .into_iter()
            .map(|(name, dims, ty)| {
                let size = fulcrum_gguf::tensor_size(&name, &dims, ty).unwrap();
                (TensorSpec { name, dims, ty }, vec![0u8; size as usize])
            })
            .collect();
        let refs: Vec<(TensorSpec, &[u8])> = data
            .iter()
            .map(|(s, d)| (s.clone(), d.as_slice()))
            .collect();
        GgufFile::from_bytes(to_bytes(&metadata, &refs).unwrap()).unwrap()
    }

    /// Bytes of the file's two-dimensional tensors (the matmul weights; norms are vectors).
    fn matrix_bytes(file: &GgufFile) -> u64 {
        file.tensors()
            .iter()
            .filter(|t| t.dims.len() == 2)
            .map(|t| file.tensor_data(t).len() as u64)
            .sum()
    }

    fn load(arch: &str, tied: bool) -> (GgufFile, Config, Weights) {
        let file = model_file(arch, tied);
        let config = Config::from_gguf(&file).unwrap();
        let weights = Weights::load(&file, &config).unwrap();
        (file, config, weights)
    }

    #[test]
    fn untied_model_reads_every_matrix_once_but_only_one_embedding_row() {
        let (file, _, w) = load("llama", false);
        let embd = file.tensor("token_embd.weight").unwrap();
        let embd_bytes = file.tensor_data(embd).len() as u64;
        let row = embd_bytes / VOCAB;
        assert_eq!(
            weight_bytes_per_token(&w),
            matrix_bytes(&file) - embd_bytes + row
        );
    }

    #[test]
    fn tied_model_reads_the_embedding_in_full_as_output_and_one_row_as_input() {
        let (file, _, w) = load("llama", true);
        let row = file
            .tensor_data(file.tensor("token_embd.weight").unwrap())
            .len() as u64
            / VOCAB;
        assert_eq!(weight_bytes_per_token(&w), matrix_bytes(&file) + row);
    }

    #[test]
    fn kv_bytes_count_every_position_on_global_layers() {
        let (_, c, _) = load("llama", false);
        let row = 2 * (KV_HEADS as u64 * HEAD_DIM) * 2; // k and v, f16
        for pos in [0, 1, 7, 100] {
            assert_eq!(kv_bytes_at(&c, pos), LAYERS as u64 * (pos as u64 + 1) * row);
        }
    }

    #[test]
    fn kv_bytes_stop_growing_at_the_window_on_sliding_layers() {
        let (_, c, _) = load("gemma3", false);
        let row = 2 * (KV_HEADS as u64 * HEAD_DIM) * 2;
        // Gemma 3: layers 0..4 slide, layer 5 is global.
        let (sliding, global) = (LAYERS as u64 - 1, 1);
        for pos in [0u64, 5, 7, 8, 100] {
            let expected = (sliding * (pos + 1).min(WINDOW as u64) + global * (pos + 1)) * row;
            assert_eq!(kv_bytes_at(&c, pos as usize), expected, "pos {pos}");
        }
        let run = decode_bytes(&c, &load("gemma3", false).2, 10, 4);
        let mean = (10..14).map(|p| kv_bytes_at(&c, p) as f64).sum::<f64>() / 4.0;
        assert_eq!(run.kv, mean);
    }

    #[test]
    fn bandwidth_is_positive_and_reads_the_whole_buffer() {
        let pool = ThreadPool::new(2);
        let b = read_bandwidth(&pool, 1 << 20, 3);
        assert_eq!(b.buffer_bytes, 1 << 20);
        assert_eq!(b.passes.len(), 3);
        assert!(b.bytes_per_s > 0.0 && b.bytes_per_s.is_finite());
    }
}
