//! The scalar reference kernels (public for the property tests that compare them with the SIMD ones).

use super::operands::{Dump, Head, Queries, LANES};
use half::f16;
use std::ops::Range;

/// Elements per step of the vector loops: four accumulators of eight lanes.
const STEP: usize = 32;

/// See [`super::attend`]: one query after the other.
pub fn attend(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
    mut dump: Option<&mut Dump>,
) {
    let (hd, hdv) = (qs.q.len() / qs.lanes, qs.hdv);
    for l in 0..qs.lanes {
        let scores = dump.as_deref_mut().map(|d| (&mut *d.scores, l));
        let (sum, max) = attend_one(
            &qs.q[l * hd..][..hd],
            head,
            positions.clone(),
            qs.scale,
            &mut acc[l * hdv..][..hdv],
            scores,
        );
        sums[l] = sum;
        if let Some(d) = dump.as_deref_mut() {
            d.maxes[l] = max;
        }
    }
}

/// One query of [`super::attend`]; returns its sum of weights and its largest score. With `dump = (scores, lane)`,
/// writes the score of each position `p` to `scores[(p - positions.start) · LANES + lane]`.
pub fn attend_one(
    q: &[f32],
    head: &Head,
    positions: Range<usize>,
    scale_by: f32,
    acc: &mut [f16],
    mut dump: Option<(&mut [f32], usize)>,
) -> (f32, f32) {
    let hdv = acc.len();
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    let first = positions.start;
    for p in positions {
        let score = dot_with(head.k(p, q.len()), |i| q[i]) * scale_by;
        if let Some((scores, lane)) = dump.as_mut() {
            scores[(p - first) * LANES + *lane] = score;
        }
        let weight = if score > max {
            // A new maximum: rescale what has accumulated so far by exp(old - new).
            let shrink = (max - score).exp();
            max = score;
            scale(acc, shrink);
            sum = sum.mul_add(shrink, 1.0);
            1.0
        } else {
            let w = (score - max).exp();
            sum += w;
            w
        };
        mad(acc, head.v(p, hdv), weight);
    }
    (sum, max)
}

/// `x · y`, accumulated as ggml does on AVX2: element `i` of each 32-wide step goes to accumulator `(i / 8) % 4`,
/// lane `i % 8`, by fused multiply-add; the accumulators are folded pairwise (0+2, 1+3, then 0+1), the lanes
/// summed as (l0+l4)+(l1+l5) + (l2+l6)+(l3+l7); elements past the last whole step are added in f64.
pub fn dot(x: &[f16], y: &[f16]) -> f32 {
    dot_with(x, |i| y[i].to_f32())
}

/// [`dot`] with `y[i]` given by `y(i)` (f16 values, as f32).
fn dot_with(x: &[f16], y: impl Fn(usize) -> f32) -> f32 {
    let whole = x.len() / STEP * STEP;
    let mut acc = [[0.0f32; 8]; 4];
    for base in (0..whole).step_by(STEP) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                let i = base + 8 * j + l;
                *a = x[i].to_f32().mul_add(y(i), *a);
            }
        }
    }
    let mut folded = [0.0f32; 8];
    for l in 0..8 {
        let (s02, s13) = (acc[0][l] + acc[2][l], acc[1][l] + acc[3][l]);
        folded[l] = s02 + s13;
    }
    let half: [f32; 4] = std::array::from_fn(|l| folded[l] + folded[l + 4]);
    let mut sum = ((half[0] + half[1]) + (half[2] + half[3])) as f64;
    for (i, xi) in x.iter().enumerate().skip(whole) {
        sum += (xi.to_f32() * y(i)) as f64;
    }
    sum as f32
}

/// `y = f16(x · v + y)` elementwise, with one rounding to f32 (fused multiply-add) and one to f16.
pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
    for (a, b) in y.iter_mut().zip(x) {
        *a = f16::from_f32(b.to_f32().mul_add(v, a.to_f32()));
    }
}

/// `y = f16(y · v)` elementwise.
pub fn scale(y: &mut [f16], v: f32) {
    for a in y.iter_mut() {
        *a = f16::from_f32(a.to_f32() * v);
    }
}
