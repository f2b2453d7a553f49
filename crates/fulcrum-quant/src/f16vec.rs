//! Vector operations on f16 rows used by attention over an f16 KV cache, in the exact arithmetic order of llama.cpp's
//! CPU flash-attention path (ggml's `vec_dot_f16`, `vec_mad_f16` and `vec_scale_f16` on AVX2), so that attention
//! outputs match its results bit for bit. Each has a scalar reference and an AVX2 kernel chosen at run time; both
//! give identical bits.

use half::f16;
use std::sync::OnceLock;

/// Elements per step of the vector loops: four accumulators of eight lanes.
const STEP: usize = 32;

/// `x · y`, accumulated as ggml does on AVX2: element `i` of each 32-wide step goes to accumulator `(i / 8) % 4`,
/// lane `i % 8`, by fused multiply-add; the accumulators are folded pairwise (0+2, 1+3, then 0+1), the lanes summed as
/// (l0+l4)+(l1+l5) + (l2+l6)+(l3+l7); elements past the last whole step are added in f64.
pub fn dot(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "f16 dot lengths");
    (kernels().dot)(x, y)
}

/// `y = f16(x · v + y)` elementwise, with one rounding to f32 (fused multiply-add) and one to f16.
pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
    assert_eq!(x.len(), y.len(), "f16 mad lengths");
    (kernels().mad)(y, x, v)
}

/// `y = f16(y · v)` elementwise.
pub fn scale(y: &mut [f16], v: f32) {
    (kernels().scale)(y, v)
}

/// The scalar reference kernels (public for the property tests that compare them with the SIMD ones).
pub mod scalar {
    use super::STEP;
    use half::f16;

    /// See [`super::dot`].
    pub fn dot(x: &[f16], y: &[f16]) -> f32 {
        let whole = x.len() / STEP * STEP;
        let mut acc = [[0.0f32; 8]; 4];
        for base in (0..whole).step_by(STEP) {
            for (j, lanes) in acc.iter_mut().enumerate() {
                for (l, a) in lanes.iter_mut().enumerate() {
                    let i = base + 8 * j + l;
                    *a = x[i].to_f32().mul_add(y[i].to_f32(), *a);
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
        for i in whole..x.len() {
            sum += (x[i].to_f32() * y[i].to_f32()) as f64;
        }
        sum as f32
    }

    /// See [`super::mad`].
    pub fn mad(y: &mut [f16], x: &[f16], v: f32) {
        for (a, b) in y.iter_mut().zip(x) {
            *a = f16::from_f32(b.to_f32().mul_add(v, a.to_f32()));
        }
    }

    /// See [`super::scale`].
    pub fn scale(y: &mut [f16], v: f32) {
        for a in y.iter_mut() {
            *a = f16::from_f32(a.to_f32() * v);
        }
    }
}

struct Kernels {
    dot: fn(&[f16], &[f16]) -> f32,
    mad: fn(&mut [f16], &[f16], f32),
    scale: fn(&mut [f16], f32),
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if crate::dispatch::simd() {
            return Kernels {
                dot: crate::avx2::f16vec::dot,
                mad: crate::avx2::f16vec::mad,
                scale: crate::avx2::f16vec::scale,
            };
        }
        Kernels {
            dot: scalar::dot,
            mad: scalar::mad,
            scale: scalar::scale,
        }
    })
}

/// Signature of [`dot`].
pub type DotFn = fn(&[f16], &[f16]) -> f32;
/// Signature of [`mad`].
pub type MadFn = fn(&mut [f16], &[f16], f32);
/// Signature of [`scale`].
pub type ScaleFn = fn(&mut [f16], f32);

/// The AVX2 kernels when this CPU has them, for tests that compare them with [`scalar`].
pub fn simd_kernels() -> Option<(DotFn, MadFn, ScaleFn)> {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        return Some((
            crate::avx2::f16vec::dot,
            crate::avx2::f16vec::mad,
            crate::avx2::f16vec::scale,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn halves(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    proptest! {
        /// The AVX2 kernels give the scalar references' bits exactly, at every length (whole steps and tails).
        #[test]
        fn simd_matches_scalar_bit_for_bit(
            x in proptest::collection::vec(-60.0f32..60.0, 0..300),
            seed in any::<u32>(),
            v in -3.0f32..3.0,
        ) {
            let Some((dot, mad, scale)) = simd_kernels() else { return Ok(()) };
            let y: Vec<f32> = x.iter().enumerate()
                .map(|(i, a)| (a * 0.37 + (i as u32 ^ seed) as f32 * 1e-3).sin() * 8.0)
                .collect();
            let (hx, hy) = (halves(&x), halves(&y));
            prop_assert_eq!(dot(&hx, &hy).to_bits(), scalar::dot(&hx, &hy).to_bits());
            let (mut a, mut b) = (hy.clone(), hy.clone());
            mad(&mut a, &hx, v);
            scalar::mad(&mut b, &hx, v);
            prop_assert_eq!(&a, &b);
            scale(&mut a, v);
            scalar::scale(&mut b, v);
            prop_assert_eq!(a, b);
        }

        /// The dot product is a dot product: close to the f64 sum.
        #[test]
        fn dot_tracks_f64(x in proptest::collection::vec(-4.0f32..4.0, 0..300)) {
            let y: Vec<f32> = x.iter().map(|a| (a * 1.7).cos()).collect();
            let (hx, hy) = (halves(&x), halves(&y));
            let want: f64 = hx.iter().zip(&hy).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            let bound = 1e-5 * hx.iter().zip(&hy).map(|(a, b)| (a.to_f64() * b.to_f64()).abs()).sum::<f64>() + 1e-6;
            prop_assert!((dot(&hx, &hy) as f64 - want).abs() <= bound);
        }
    }
}
