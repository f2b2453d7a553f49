//! What one [`super::attend`] call reads: a head's keys and values in the cache, and the queries.

use half::f16;

/// One head's keys and values in an f16 cache: position `p` lives in row `slots[p]` (row `p` without slots); the head's
/// keys start `k_off` elements into a key row of `k_stride`, its values `v_off` into a value row of `v_stride`.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    pub keys: &'a [f16],
    pub values: &'a [f16],
    pub k_stride: usize,
    pub k_off: usize,
    pub v_stride: usize,
    pub v_off: usize,
    pub slots: Option<&'a [u32]>,
}

impl Head<'_> {
    #[inline(always)]
    fn row(&self, p: usize) -> usize {
        self.slots.map_or(p, |s| s[p] as usize)
    }

    /// Keys of position `p` (`hd` elements).
    #[inline(always)]
    pub fn k(&self, p: usize, hd: usize) -> &[f16] {
        &self.keys[self.row(p) * self.k_stride + self.k_off..][..hd]
    }

    /// Values of position `p` (`hdv` elements).
    #[inline(always)]
    pub fn v(&self, p: usize, hdv: usize) -> &[f16] {
        &self.values[self.row(p) * self.v_stride + self.v_off..][..hdv]
    }
}

/// Most queries [`super::attend`] takes at once.
pub const LANES: usize = 8;

/// The queries of one [`super::attend`] call: `lanes` (1 to [`LANES`]) rows of `q` holding f16 values (as f32), the
/// multiplier of their scores, and the width of the values.
#[derive(Clone, Copy)]
pub struct Queries<'a> {
    pub q: &'a [f32],
    pub lanes: usize,
    pub scale: f32,
    pub hdv: usize,
}

/// Where [`super::attend`] also leaves what it computed, for DELTA's page scoring: every score, position-major with
/// [`LANES`] per position (`scores[(p - positions.start) · LANES + lane]`), and each query's final maximum score.
pub struct Dump<'a> {
    pub scores: &'a mut [f32],
    pub maxes: &'a mut [f32; LANES],
}
