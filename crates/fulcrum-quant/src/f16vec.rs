//! Online-softmax attention over an f16 KV cache in the exact arithmetic of llama.cpp's CPU flash-attention path (ggml's
//! `vec_dot_f16`, `vec_mad_f16` and `vec_scale_f16` on AVX2, and the C library's `expf`), so that attention outputs
//! match its results bit for bit. [`attend`] has a scalar reference ([`scalar`]) and an AVX2 kernel chosen at run
//! time; both give identical bits.

use half::f16;
use std::ops::Range;
use std::sync::OnceLock;

/// Elements per step of the vector loops: four accumulators of eight lanes.
const STEP: usize = 32;

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

/// Most queries [`attend`] takes at once.
pub const LANES: usize = 8;

/// The queries of one [`attend`] call: `lanes` (1 to [`LANES`]) rows of `q` holding f16 values (as f32), the
/// multiplier of their scores, and the width of the values.
#[derive(Clone, Copy)]
pub struct Queries<'a> {
    pub q: &'a [f32],
    pub lanes: usize,
    pub scale: f32,
    pub hdv: usize,
}

/// Online-softmax attention of queries that share `head`, over `positions`, each exactly as llama.cpp's CPU flash
/// attention computes one query: a score is [`scalar::dot`]`(k, q) · scale` and its weight the C library's `expf` of its
/// distance to the running maximum (both f32), and the weighted values accumulate in `acc` (one row of `hdv` f16 per
/// query, zeroed by the caller), rescaled with [`scalar::scale`] when the maximum grows. Writes each query's sum of weights to
/// `sums`.
///
/// # Panics
/// If a position's row is outside the cache, or `q`, `acc` or `sums` is too short.
pub fn attend(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
) {
    assert!(
        (1..=LANES).contains(&qs.lanes)
            && qs.q.len().is_multiple_of(qs.lanes)
            && acc.len() >= qs.lanes * qs.hdv
            && sums.len() >= qs.lanes,
        "f16 attend shapes"
    );
    (kernels().attend)(qs, head, positions, acc, sums)
}

/// The scalar reference kernels (public for the property tests that compare them with the SIMD ones).
pub mod scalar {
    use super::{Head, Queries, STEP};
    use half::f16;
    use std::ops::Range;

    /// See [`super::attend`]: one query after the other.
    pub fn attend(
        qs: &Queries,
        head: &Head,
        positions: Range<usize>,
        acc: &mut [f16],
        sums: &mut [f32],
    ) {
        let (hd, hdv) = (qs.q.len() / qs.lanes, qs.hdv);
        for l in 0..qs.lanes {
            sums[l] = attend_one(
                &qs.q[l * hd..][..hd],
                head,
                positions.clone(),
                qs.scale,
                &mut acc[l * hdv..][..hdv],
            );
        }
    }

    /// One query of [`super::attend`]; returns its sum of weights.
    pub fn attend_one(
        q: &[f32],
        head: &Head,
        positions: Range<usize>,
        scale_by: f32,
        acc: &mut [f16],
    ) -> f32 {
        let hdv = acc.len();
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        for p in positions {
            let score = dot_with(head.k(p, q.len()), |i| q[i]) * scale_by;
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
        sum
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
}

struct Kernels {
    attend: AttendFn,
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if crate::dispatch::simd() {
            return Kernels {
                attend: if crate::expf::matches_libm() {
                    crate::x86::f16vec::attend
                } else {
                    crate::x86::f16vec::attend_libm_exp
                },
            };
        }
        Kernels {
            attend: scalar::attend,
        }
    })
}

/// Signature of [`attend`].
pub type AttendFn = fn(&Queries, &Head, Range<usize>, &mut [f16], &mut [f32]);
/// The AVX2 variants of [`attend`] this CPU and C library can run (with the C library's `expf`, and with the port of
/// it where that matches), for tests that compare them with [`scalar::attend`].
pub fn simd_attends() -> Vec<AttendFn> {
    let mut variants: Vec<AttendFn> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if crate::x86::available() {
        variants.push(crate::x86::f16vec::attend_libm_exp);
        if crate::expf::matches_libm() {
            variants.push(crate::x86::f16vec::attend);
        }
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn halves(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    proptest! {
        /// The fused AVX2 attention gives the scalar reference's bits: contiguous and paged rows, any length.
        #[test]
        fn simd_attend_matches_scalar(
            seed in any::<u64>(),
            len in 1usize..200,
            lanes in 1usize..=LANES,
            hd in prop_oneof![Just(32usize), Just(64), Just(128), Just(40)],
            paged in any::<bool>(),
            spread in 0.1f32..30.0,
        ) {
            let variants = simd_attends();
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            };
            let (stride, off, rows) = (hd * 2 + 8, hd + 3, len + 5);
            let keys: Vec<f16> = (0..rows * stride).map(|_| f16::from_f32(next() * spread)).collect();
            let values: Vec<f16> = (0..rows * stride).map(|_| f16::from_f32(next() * 4.0)).collect();
            let slots: Vec<u32> = (0..len as u32).map(|p| (p * 7 + 3) % rows as u32).collect();
            let head = Head {
                keys: &keys,
                values: &values,
                k_stride: stride,
                k_off: off,
                v_stride: stride,
                v_off: off - 3,
                slots: paged.then_some(&slots[..]),
            };
            let q: Vec<f32> = (0..lanes * hd).map(|_| f16::from_f32(next()).to_f32()).collect();
            let start = (seed % 5) as usize % len;
            let (mut a, mut b) = (vec![f16::ZERO; lanes * hd], vec![f16::ZERO; lanes * hd]);
            let (mut sa, mut sb) = ([0f32; LANES], [0f32; LANES]);
            let qs = Queries { q: &q, lanes, scale: 0.125, hdv: hd };
            scalar::attend(&qs, &head, start..len, &mut b, &mut sb);
            for attend_simd in variants {
                a.fill(f16::ZERO);
                attend_simd(&qs, &head, start..len, &mut a, &mut sa);
                prop_assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits));
                prop_assert_eq!(&a, &b);
            }
        }

        /// The dot product is a dot product: close to the f64 sum.
        #[test]
        fn dot_tracks_f64(x in proptest::collection::vec(-4.0f32..4.0, 0..300)) {
            let y: Vec<f32> = x.iter().map(|a| (a * 1.7).cos()).collect();
            let (hx, hy) = (halves(&x), halves(&y));
            let want: f64 = hx.iter().zip(&hy).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            let bound = 1e-5 * hx.iter().zip(&hy).map(|(a, b)| (a.to_f64() * b.to_f64()).abs()).sum::<f64>() + 1e-6;
            prop_assert!((scalar::dot(&hx, &hy) as f64 - want).abs() <= bound);
        }
    }
}
