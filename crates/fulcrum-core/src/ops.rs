//! The small f32 operations of a forward pass (norms, rope, activations) and the threaded matmul.
//!
//! Arithmetic follows ggml's CPU backend where the order of operations changes results visibly (sums of squares in
//! f64, rope angles advanced by repeated multiplication, GELU through an f16 table), so that logits track llama.cpp's.

use crate::config::{RopeStyle, MAX_ROPE_DIMS};
use crate::threads::{split_range, ThreadPool};
use crate::weights::Mat;
use half::f16;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A raw pointer that threads of one `ThreadPool::run` job share to write disjoint parts of a buffer.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
// SAFETY: every user writes only indices that no other thread of the same job touches.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper rather than the raw field).
    pub fn ptr(self) -> *mut T {
        self.0
    }
}

/// Calls `f(first_row, rows)` on disjoint runs of whole rows (of `width` floats) of `data`: on the pool's threads for
/// batches of at least two rows per thread, else on the caller's.
pub fn par_rows(
    pool: &ThreadPool,
    data: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let n = data.len() / width;
    if n < 2 * pool.n_threads() {
        return f(0, data);
    }
    let ptr = SharedMut(data.as_mut_ptr());
    pool.run(|index, n_threads| {
        let rows = split_range(n, index, n_threads);
        // SAFETY: the runs of rows of the threads are disjoint and inside `data`.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(ptr.ptr().add(rows.start * width), rows.len() * width)
        };
        f(rows.start, mine)
    });
}

/// `out = x / rms(x) · weight`, one row of `weight.len()` at a time.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, out_row) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let scale = rms_scale(row, eps);
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// In-place variant of [`rms_norm`] (used for per-head q/k norms and post-norms).
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    for row in x.chunks_exact_mut(d) {
        let scale = rms_scale(row, eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    // ggml accumulates the sum of squares in double precision.
    let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// Rotary position embedding parameters of one layer.
#[derive(Clone, Copy)]
pub struct Rope<'a> {
    /// Width of one head.
    pub head_dim: usize,
    /// Leading dimensions of each head that rotate.
    pub dims: usize,
    pub base: f32,
    /// Linear scaling: positions are divided by it.
    pub scale: f32,
    pub style: RopeStyle,
    /// Per-frequency divisors (Llama 3.1 style), if any.
    pub factors: Option<&'a [f32]>,
}

impl Rope<'_> {
    /// Rotates every head of `x` (one token's q or k) for position `pos`.
    ///
    /// Angles are `pos · base^(-2i/dims) / factor[i] / scale`, advanced by multiplication as ggml does.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.dims / 2;
        let theta_scale = self.base.powf(-2.0 / self.dims as f32);
        let mut theta = pos as f32;
        let mut cos_sin = [(0.0f32, 0.0f32); MAX_ROPE_DIMS / 2];
        let table = &mut cos_sin[..half];
        for (i, cs) in table.iter_mut().enumerate() {
            let factor = self.factors.map_or(1.0, |f| f[i]);
            let angle = theta / factor / self.scale;
            *cs = (angle.cos(), angle.sin());
            theta *= theta_scale;
        }
        for head in x.chunks_exact_mut(self.head_dim) {
            for (i, &(cos, sin)) in table.iter().enumerate() {
                let (a, b) = match self.style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                // ggml's C is compiled with floating-point contraction: each line becomes one fused multiply-add.
                head[a] = x0.mul_add(cos, -(x1 * sin));
                head[b] = x0.mul_add(sin, x1 * cos);
            }
        }
    }
}

/// `gate = silu(gate) · up`, elementwise, for rows of `width` values (ggml's arithmetic, which treats each row's
/// tail apart).
pub fn swiglu(gate: &mut [f32], up: &[f32], width: usize) {
    for (g, u) in gate.chunks_mut(width).zip(up.chunks(width)) {
        fulcrum_quant::vecf32::swiglu_row(g, u);
    }
}

/// `gate = gelu_tanh(gate) · up`, elementwise, through ggml's f16 GELU table.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * u
        };
    }
}

/// The tanh approximation of GELU.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    // `1 + a·x·x` as one fused multiply-add, as ggml's contracted C computes it.
    let inner = (COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// Scratch for quantized activations of one matmul input, and what it holds.
#[derive(Default)]
pub struct QuantBuffer {
    bytes: Vec<u8>,
    /// The activation type, row length and row count of the input quantized last.
    holds: Option<(fulcrum_quant::GgmlType, usize, usize)>,
}

/// Matrices per parallel step of [`matmuls_quantized`] (q, k and v at most).
const MAX_JOBS: usize = 4;
/// Weight rows per unit of work of [`matmul`] (whole cache lines of output).
const ROW_BLOCK: usize = 16;
/// Input rows per tile of [`matmul`].
const TOKEN_BLOCK: usize = 64;

/// `out[t][r] = W[r] · x[t]` for `n` input rows `x` of `w.cols` floats; `out` holds `n` rows of `w.rows` floats.
///
/// The inputs are first quantized to the weight type's activation format (as ggml does, [`quantize_input`]), then
/// multiplied ([`matmul_quantized`]).
/// With `invariant`, each row rounds as it would alone (as llama.cpp rounds a batch of one); otherwise as llama.cpp
/// rounds row `t` of a batch of `n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    w: &Mat,
    w_data: &[u8],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    qbuf: &mut QuantBuffer,
    invariant: bool,
) {
    quantize_input(pool, x, n, w.cols, fulcrum_quant::vec_dot_type(w.ty), qbuf);
    matmul_quantized(pool, w, w_data, n, out, qbuf, invariant);
}

/// Quantizes `n` rows of `cols` floats to `act_ty` into `qbuf`, the pool's threads taking rows for larger batches.
pub fn quantize_input(
    pool: &ThreadPool,
    x: &[f32],
    n: usize,
    cols: usize,
    act_ty: fulcrum_quant::GgmlType,
    qbuf: &mut QuantBuffer,
) {
    assert_eq!(x.len(), n * cols, "matmul input shape");
    let act_row = fulcrum_quant::row_bytes(act_ty, cols);
    qbuf.bytes.resize(n * act_row, 0);
    qbuf.holds = Some((act_ty, cols, n));
    if n < 2 * pool.n_threads() {
        for (src, dst) in x
            .chunks_exact(cols)
            .zip(qbuf.bytes.chunks_exact_mut(act_row))
        {
            fulcrum_quant::quantize_row(act_ty, src, dst);
        }
    } else {
        let q_ptr = SharedMut(qbuf.bytes.as_mut_ptr());
        pool.run(|index, n_threads| {
            for t in split_range(n, index, n_threads) {
                // SAFETY: input row t's bytes belong to this thread only; the buffer holds n rows.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(q_ptr.ptr().add(t * act_row), act_row)
                };
                fulcrum_quant::quantize_row(act_ty, &x[t * cols..(t + 1) * cols], dst);
            }
        });
    }
}

/// `out[t][r] = W[r] · x[t]` for the `n` input rows last quantized into `qbuf` (by [`quantize_input`], to the
/// weight type's activation format).
///
/// # Panics
/// If `qbuf` does not hold `n` rows of `w.cols` elements in `w`'s activation format.
pub fn matmul_quantized(
    pool: &ThreadPool,
    w: &Mat,
    w_data: &[u8],
    n: usize,
    out: &mut [f32],
    qbuf: &QuantBuffer,
    invariant: bool,
) {
    matmuls_quantized(pool, &mut [(w, w_data, out)], n, qbuf, invariant)
}

/// [`matmul_quantized`] for several matrices `(W, its bytes, out)` of the same input, in one parallel step: the
/// pool's threads take bands of weight rows (whole `ROW_BLOCK`s) of any of them and dot each band with
/// `TOKEN_BLOCK` inputs at a time, straight into its `out`.
///
/// # Panics
/// As [`matmul_quantized`], for each matrix.
pub fn matmuls_quantized(
    pool: &ThreadPool,
    jobs: &mut [(&Mat, &[u8], &mut [f32])],
    n: usize,
    qbuf: &QuantBuffer,
    invariant: bool,
) {
    // Threads take bands of rows from a shared counter until none are left, so one slowed down (by another process,
    // say) leaves its share to the others instead of stalling the whole step. A band is an eighth of a thread's
    // share of its matrix: long enough to keep each weight stream sequential.
    struct Job<'a> {
        w: &'a Mat,
        data: &'a [u8],
        out: SharedMut<f32>,
        act_row: usize,
        band: usize,
        first_band: usize,
    }
    assert!(
        jobs.len() <= MAX_JOBS,
        "at most {MAX_JOBS} matrices per step"
    );
    let mut bands = 0;
    let jobs: [Option<Job>; MAX_JOBS] = std::array::from_fn(|i| {
        jobs.get_mut(i).map(|(w, data, out)| {
            let act_ty = fulcrum_quant::vec_dot_type(w.ty);
            // Checked always: the threads below write through a raw pointer.
            assert!(
                qbuf.holds == Some((act_ty, w.cols, n)) && out.len() >= n * w.rows,
                "matmul shapes"
            );
            assert!(data.len() >= w.rows * w.row_bytes, "matmul weight bytes");
            let units = w.rows.div_ceil(ROW_BLOCK);
            let band = (units / (8 * pool.n_threads())).max(1);
            let job = Job {
                w,
                data,
                out: SharedMut(out.as_mut_ptr()),
                act_row: fulcrum_quant::row_bytes(act_ty, w.cols),
                band,
                first_band: bands,
            };
            bands += units.div_ceil(band);
            job
        })
    });
    let acts = &qbuf.bytes;
    let batch = if invariant { 1 } else { n };
    let next = AtomicUsize::new(0);
    pool.run(|_, _| loop {
        let task = next.fetch_add(1, Ordering::Relaxed);
        if task >= bands {
            break;
        }
        let job = jobs
            .iter()
            .flatten()
            .rev()
            .find(|j| j.first_band <= task)
            .expect("band 0 is a job's");
        let (w, rows) = (job.w, job.w.rows);
        let first = (task - job.first_band) * job.band;
        let (r0, end) = (
            first * ROW_BLOCK,
            ((first + job.band) * ROW_BLOCK).min(rows),
        );
        let w_rows = &job.data[r0 * w.row_bytes..end * w.row_bytes];
        for t0 in (0..n).step_by(TOKEN_BLOCK) {
            let nt = TOKEN_BLOCK.min(n - t0);
            for (run, order) in fulcrum_quant::Order::runs(w.ty, batch, t0..t0 + nt) {
                // SAFETY: rows r0..end of every output row belong to this thread only, and `out` holds n rows.
                unsafe {
                    fulcrum_quant::dot_tile_raw(
                        w.ty,
                        w.cols,
                        w_rows,
                        end - r0,
                        &acts[run.start * job.act_row..],
                        run.len(),
                        order,
                        job.out.ptr().add(run.start * rows + r0),
                        rows,
                    )
                };
            }
        }
    });
}

/// The kernel family chosen at start-up ("scalar", or "avx2+fma" and any VNNI tiles).
pub fn simd_level() -> &'static str {
    fulcrum_quant::simd_level()
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`, elementwise.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32; 8];
        let mut out = [0.0f32; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        for v in out {
            assert!((v - 0.5).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let orig: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
            let mut x = orig.clone();
            let rope = Rope {
                head_dim: 64,
                dims: 64,
                base: 10000.0,
                scale: 1.0,
                style,
                factors: None,
            };
            rope.apply(&mut x, 0);
            assert_eq!(x, orig);
            rope.apply(&mut x, 17);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4 * n0);
            assert_ne!(x, orig);
        }
    }

    #[test]
    fn geglu_table_tracks_exact_gelu() {
        for i in -400..400 {
            let x = i as f32 * 0.025;
            let mut g = [x];
            geglu(&mut g, &[1.0]);
            assert!(
                (g[0] - gelu_tanh(x)).abs() < 2e-2 * (1.0 + x.abs()),
                "x={x}"
            );
        }
    }
}
