//! Tiles of dot products: a block of weight rows against a block of activation rows in one call, which is what a
//! matmul is made of. The SIMD tile kernels load each weight block once for several activation rows and keep several
//! independent accumulators in flight, but every output is still summed in exactly the order of its single dot
//! product, so a tile is bit-identical to calling [`crate::vec_dot_in_batch`] for each pair.

use crate::dispatch::kernels;
use crate::rows::{row_bytes, vec_dot_type};
use crate::table::{DotFn, Order};
use crate::GgmlType;
use std::ops::Range;

// `Order` itself lives with the table it indexes (`table.rs`); its batch rule reads the process table, so it is here.
impl Order {
    /// The order of activation row `t` of a batch of `batch` rows against weights of type `w`.
    pub fn in_batch(w: GgmlType, batch: usize, t: usize) -> Order {
        let k = kernels(w);
        if batch >= 8 && k.vec_dot_tiled.is_some() {
            Order::Tiled
        } else if t < batch - batch % 4 && k.vec_dot_grouped.is_some() {
            Order::Grouped
        } else {
            Order::Plain
        }
    }

    /// Splits the activation rows `rows` of a batch of `batch` into at most two runs of one order each.
    pub fn runs(w: GgmlType, batch: usize, rows: Range<usize>) -> [(Range<usize>, Order); 2] {
        // The order can only change where the last incomplete group of four starts.
        let cut = (batch - batch % 4).clamp(rows.start, rows.end);
        let order = |t: usize| Order::in_batch(w, batch, t);
        [
            (rows.start..cut, order(rows.start)),
            (cut..rows.end, order(cut)),
        ]
    }
}

/// `out[t * ld + r] = w_row[r] · act[t]` for `rows` consecutive weight rows of `n` elements of type `w` (in `w_rows`)
/// and `tokens` consecutive activation rows (in `acts`, type [`vec_dot_type`]`(w)`), each summed in `order`.
///
/// # Panics
/// If `w` is unsupported, `n` is not a whole number of blocks, a buffer is too short or `ld < rows`.
#[allow(clippy::too_many_arguments)]
pub fn dot_tile(
    w: GgmlType,
    n: usize,
    w_rows: &[u8],
    rows: usize,
    acts: &[u8],
    tokens: usize,
    order: Order,
    out: &mut [f32],
    ld: usize,
) {
    if rows == 0 || tokens == 0 {
        return;
    }
    assert!(
        out.len() >= (tokens - 1) * ld + rows,
        "tile output too short"
    );
    // SAFETY: `out` is borrowed exclusively and long enough for every (t, r).
    unsafe {
        dot_tile_raw(
            w,
            n,
            w_rows,
            rows,
            acts,
            tokens,
            order,
            out.as_mut_ptr(),
            ld,
        )
    }
}

/// [`dot_tile`] into a raw output, for callers whose threads write disjoint elements of one buffer.
///
/// # Safety
/// `out` is valid for writes at `t * ld + r` for every `t < tokens`, `r < rows`, and nothing else reads or writes
/// those elements during the call.
///
/// # Panics
/// As [`dot_tile`], except that the output's length cannot be checked.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_tile_raw(
    w: GgmlType,
    n: usize,
    w_rows: &[u8],
    rows: usize,
    acts: &[u8],
    tokens: usize,
    order: Order,
    out: *mut f32,
    ld: usize,
) {
    if rows == 0 || tokens == 0 {
        return;
    }
    let (w_bytes, a_bytes) = (row_bytes(w, n), row_bytes(vec_dot_type(w), n));
    assert!(ld >= rows, "tile output stride {ld} < {rows} rows");
    assert!(
        w_rows.len() >= rows * w_bytes && acts.len() >= tokens * a_bytes,
        "tile buffers too short"
    );
    let k = kernels(w);
    if let Some(tile) = k.tile[crate::table::class(tokens)][order as usize] {
        return tile(w_rows, rows, acts, tokens, n, out, ld);
    }
    let dot = ordered_dot(w, order);
    for (t, act) in acts.chunks_exact(a_bytes).take(tokens).enumerate() {
        for (r, w_row) in w_rows.chunks_exact(w_bytes).take(rows).enumerate() {
            *out.add(t * ld + r) = dot(w_row, act);
        }
    }
}

/// The single dot product of weights `w` summed in `order`.
pub(crate) fn ordered_dot(w: GgmlType, order: Order) -> DotFn {
    let k = kernels(w);
    let variant = match order {
        Order::Plain => None,
        Order::Grouped => k.vec_dot_grouped,
        Order::Tiled => k.vec_dot_tiled,
    };
    variant
        .or(k.vec_dot)
        .unwrap_or_else(|| panic!("{w} cannot be used as weights"))
}
