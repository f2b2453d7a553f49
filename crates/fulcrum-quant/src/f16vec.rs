//! Online-softmax attention over an f16 KV cache in the exact arithmetic of llama.cpp's CPU flash-attention path (ggml's
//! `vec_dot_f16`, `vec_mad_f16` and `vec_scale_f16` on AVX2, and the C library's `expf`), so that attention outputs
//! match its results bit for bit. [`attend`] has a scalar reference ([`scalar`]) and an AVX2 kernel chosen at run
//! time; both give identical bits.

pub(crate) mod operands;
pub mod scalar;

pub use operands::{Dump, Head, Queries, LANES};

use half::f16;
use std::ops::Range;
use std::sync::OnceLock;

/// Online-softmax attention of queries that share `head`, over `positions`, each exactly as llama.cpp's CPU flash
/// attention computes one query: a score is [`scalar::dot`]`(k, q) · scale` and its weight the C library's `expf` of its
/// distance to the running maximum (both f32), and the weighted values accumulate in `acc` (one row of `hdv` f16 per
/// query, zeroed by the caller), rescaled with [`scalar::scale`] when the maximum grows. Writes each query's sum of weights to
/// `sums`. With a `dump`, also writes every score and each query's final maximum there (the arithmetic is unchanged).
///
/// # Panics
/// If a position's row is outside the cache, or `q`, `acc`, `sums` or the dump's scores are too short.
pub fn attend(
    qs: &Queries,
    head: &Head,
    positions: Range<usize>,
    acc: &mut [f16],
    sums: &mut [f32],
    dump: Option<&mut Dump>,
) {
    assert!(
        (1..=LANES).contains(&qs.lanes)
            && qs.q.len().is_multiple_of(qs.lanes)
            && acc.len() >= qs.lanes * qs.hdv
            && sums.len() >= qs.lanes
            && dump
                .as_ref()
                .is_none_or(|d| d.scores.len() >= positions.len() * LANES),
        "f16 attend shapes"
    );
    (kernels().attend)(qs, head, positions, acc, sums, dump)
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
pub type AttendFn = fn(&Queries, &Head, Range<usize>, &mut [f16], &mut [f32], Option<&mut Dump>);
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
            scalar::attend(&qs, &head, start..len, &mut b, &mut sb, None);
            // A dumping call computes the same bits, and dumps the same scores and maxima.
            let (mut dump_b, mut max_b) = (vec![f32::NAN; len * LANES], [f32::NAN; LANES]);
            let mut b2 = vec![f16::ZERO; lanes * hd];
            let mut sb2 = [0f32; LANES];
            let mut d = Dump { scores: &mut dump_b, maxes: &mut max_b };
            scalar::attend(&qs, &head, start..len, &mut b2, &mut sb2, Some(&mut d));
            prop_assert_eq!(&b2, &b);
            prop_assert_eq!(sb2.map(f32::to_bits), sb.map(f32::to_bits));
            for l in 0..lanes {
                let top = (start..len).map(|p| dump_b[(p - start) * LANES + l]).fold(f32::NEG_INFINITY, f32::max);
                prop_assert_eq!(top.to_bits(), max_b[l].to_bits());
            }
            for attend_simd in variants {
                a.fill(f16::ZERO);
                attend_simd(&qs, &head, start..len, &mut a, &mut sa, None);
                prop_assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits));
                prop_assert_eq!(&a, &b);
                let (mut dump_a, mut max_a) = (vec![f32::NAN; len * LANES], [f32::NAN; LANES]);
                a.fill(f16::ZERO);
                let mut d = Dump { scores: &mut dump_a, maxes: &mut max_a };
                attend_simd(&qs, &head, start..len, &mut a, &mut sa, Some(&mut d));
                prop_assert_eq!(&a, &b);
                for l in 0..lanes {
                    prop_assert_eq!(max_a[l].to_bits(), max_b[l].to_bits());
                    for p in 0..len - start {
                        prop_assert_eq!(dump_a[p * LANES + l].to_bits(), dump_b[p * LANES + l].to_bits());
                    }
                }
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
