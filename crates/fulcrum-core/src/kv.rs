//! The KV cache: keys and values of every layer, stored as f16 like llama.cpp's default, one row per cached token.
//!
//! A [`KvCache`] serves two uses:
//! - **One sequence's contiguous cache** (`Session`, [`crate::Model::forward`]): row = position; `len` counts the
//!   positions held and `truncate` forgets a rejected draft or the unshared rest of an earlier prompt.
//! - **The serving engine's paged pool**: one cache of `n_blocks · block_size` rows shared by all sequences, handed
//!   out a block at a time by the engine's block manager. Each sequence's block table gives its slot list
//!   ([`crate::SeqSpan::slots`], the pool row of every position), through which
//!   [`crate::Model::forward_batch`] stores keys and values and [`KvView`] reads them; `len` is unused there, since
//!   the block tables say which rows hold what. A draft model running beside the target has a pool of its own with
//!   the same number of rows, mirroring the target's: the same slot lists address both.

use half::f16;

/// Keys and values of one layer: `(n_ctx, kv_dim)` and `(n_ctx, kv_dim_v)`, one row per cached token.
pub struct LayerKv {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

/// Keys and values of `n_ctx` rows in every layer: the positions `0..n_ctx` of one sequence, or a paged pool's rows.
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Capacity in rows (positions of a contiguous cache).
    pub n_ctx: usize,
    /// Positions `0..len` hold valid entries (a contiguous cache; unused in a paged pool).
    pub len: usize,
    pub kv_dim: usize,
    pub kv_dim_v: usize,
}

impl KvCache {
    /// An empty cache for `n_ctx` positions.
    pub fn new(n_layers: usize, n_ctx: usize, kv_dim: usize, kv_dim_v: usize) -> KvCache {
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: vec![f16::ZERO; n_ctx * kv_dim],
                v: vec![f16::ZERO; n_ctx * kv_dim_v],
            })
            .collect();
        KvCache {
            layers,
            n_ctx,
            len: 0,
            kv_dim,
            kv_dim_v,
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.layers.len() * self.n_ctx * (self.kv_dim + self.kv_dim_v) * 2
    }

    /// Forgets every position from `len` on (a rejected draft, a new prompt sharing a prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes keys and values for consecutive rows starting at row `pos` into `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let lkv = &mut self.layers[layer];
        let (kd, vd) = (self.kv_dim, self.kv_dim_v);
        let n = k.len() / kd;
        to_f16(k, &mut lkv.k[pos * kd..(pos + n) * kd]);
        to_f16(v, &mut lkv.v[pos * vd..(pos + n) * vd]);
    }
}

/// Where each position's keys and values live in one layer's cache: row `p`, or row `slots[p]` of a paged pool.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub kv: &'a LayerKv,
    /// Cache row of each position, for a paged pool; `None` for a contiguous cache.
    pub slots: Option<&'a [u32]>,
}

impl KvView<'_> {
    #[inline]
    fn row(&self, p: usize) -> usize {
        self.slots.map_or(p, |s| s[p] as usize)
    }

    /// Keys of position `p`, kv head `g`.
    #[inline]
    pub fn k(&self, p: usize, g: usize, hd: usize, kv_dim: usize) -> &[f16] {
        &self.kv.k[self.row(p) * kv_dim + g * hd..][..hd]
    }

    /// Values of position `p`, kv head `g`.
    #[inline]
    pub fn v(&self, p: usize, g: usize, hdv: usize, kv_dim_v: usize) -> &[f16] {
        &self.kv.v[self.row(p) * kv_dim_v + g * hdv..][..hdv]
    }
}

fn to_f16(src: &[f32], dst: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}
