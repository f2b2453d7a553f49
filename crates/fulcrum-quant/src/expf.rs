//! `expf` as the GNU C library computes it on x86-64 with FMA (its `__expf_fma`, the algorithm of Arm's optimized
//! routines), scalar and eight lanes at once, so that attention's online softmax, which llama.cpp runs with the C
//! library's `expf` per position, can be vectorised without changing a bit.
//!
//! The algorithm: `x·32/ln 2 = k + r` with `k` rounded to an integer (by adding 1.5·2^52) and `|r| ≤ 1/2`;
//! `2^(k/32)` from a 32-entry table with `k / 32` added to its exponent; `2^(r/32)` from a cubic; everything in f64,
//! each `a·b + c` fused as the FMA build contracts it, and one rounding to f32 at the end. [`matches_libm`] checks the
//! port against the C library this process runs with (other C libraries, or one without the FMA variant, round
//! differently), and callers use the port only where it agrees.

use std::sync::OnceLock;

/// `2^(i/32)` as f64 bits, less `i << 47` (the table of the C library, which adds `k << 47` back).
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// 32 / ln 2.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// 1.5 · 2^52: adding it rounds to an integer (ties to even) held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic's coefficients, scaled by powers of 1/32: `2^(r/32) ≈ C0·r³ + C1·r² + C2·r + 1`.
const C0: f64 = f64::from_bits(0x3fac6af84b912394) / 32768.0;
const C1: f64 = f64::from_bits(0x3fcebfce50fac4f3) / 1024.0;
const C2: f64 = f64::from_bits(0x3fe62e42ff0c52d6) / 32.0;
/// Above this the result overflows to infinity.
const OVERFLOW: f32 = f32::from_bits(0x42b17217); // 0x1.62e42ep6
/// Below this the C library returns 0 ...
const UNDERFLOW: f32 = f32::from_bits(0xc2cff1b4); // -0x1.9fe368p6
/// ... and below this (and above `UNDERFLOW`) the smallest subnormal.
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce8ecf); // -0x1.9d1d9ep6

/// `expf(x)`, bit for bit the C library's (where [`matches_libm`] holds).
pub fn expf(x: f32) -> f32 {
    let abstop = (x.to_bits() >> 20) & 0x7ff;
    if abstop >= (88.0f32.to_bits() >> 20) {
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= (f32::INFINITY.to_bits() >> 20) {
            return x + x;
        }
        if x > OVERFLOW {
            return f32::INFINITY;
        }
        if x < UNDERFLOW {
            return 0.0;
        }
        if x < MAY_UNDERFLOW {
            return f32::from_bits(1);
        }
    }
    let xd = f64::from(x);
    let shifted = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = shifted.to_bits();
    let kd = shifted - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    let t = TABLE[(ki % 32) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let z = C0.mul_add(r, C1);
    let r2 = r * r;
    let y = C2.mul_add(r, 1.0);
    let y = z.mul_add(r2, y);
    (y * s) as f32
}

/// Whether [`expf`] gives the bits of this process's C library `expf` on a spread of inputs (checked once).
pub fn matches_libm() -> bool {
    static SAME: OnceLock<bool> = OnceLock::new();
    *SAME.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..20_000).all(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly the softmax's range, [-110, 0], then any bits at all.
            let x = if i % 4 == 0 {
                f32::from_bits(state as u32)
            } else {
                -((state >> 40) as f32 / (1u64 << 24) as f32) * 110.0
            };
            expf(x).to_bits() == x.exp().to_bits() || (x.is_nan() && expf(x).is_nan())
        })
    })
}

/// [`expf`] of eight lanes; lane for lane the same bits.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn expf_x8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let half = |xh: __m128| -> __m128 {
        let xd = _mm256_cvtps_pd(xh);
        let shifted = _mm256_fmadd_pd(_mm256_set1_pd(INV_LN2_N), xd, _mm256_set1_pd(SHIFT));
        let ki = _mm256_castpd_si256(shifted);
        let kd = _mm256_sub_pd(shifted, _mm256_set1_pd(SHIFT));
        let r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_N), xd, kd);
        let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = _mm256_i64gather_epi64::<8>(TABLE.as_ptr().cast(), index);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(_mm256_set1_pd(C2), r, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    };
    let lo = half(_mm256_castps256_ps128(x));
    let hi = half(_mm256_extractf128_ps::<1>(x));
    let y = _mm256_set_m128(hi, lo);
    // The special cases, as blends (rare: a softmax's arguments are all in [-88, 0] but for masked positions).
    let abstop = _mm256_and_si256(
        _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
        _mm256_set1_epi32(0x7ff),
    );
    let big = _mm256_cmpgt_epi32(
        abstop,
        _mm256_set1_epi32((88.0f32.to_bits() >> 20) as i32 - 1),
    );
    if _mm256_testz_si256(big, big) != 0 {
        return y;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), x);
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), y);
    let mut flags = [0i32; 8];
    _mm256_storeu_si256(flags.as_mut_ptr().cast(), big);
    for l in 0..8 {
        if flags[l] != 0 {
            out[l] = expf(lanes[l]);
        }
    }
    _mm256_loadu_ps(out.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_matches_this_libm() {
        // The C library of the machine the tests run on is glibc with its FMA variant (x86-64 with FMA); elsewhere
        // the port is only used where `matches_libm` holds, so there is nothing to check.
        if !matches_libm() {
            eprintln!("this C library's expf rounds differently; the port is not used here");
            return;
        }
        let mut bits = 0u32;
        // Every 97th float: all exponents and many mantissas, both signs.
        while let Some(next) = bits.checked_add(97) {
            let x = f32::from_bits(bits);
            let (got, want) = (expf(x), x.exp());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "expf({x:e}) = {got:e}, libm {want:e}"
            );
            bits = next;
        }
    }

    #[test]
    fn eight_lanes_match_the_scalar() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            use std::arch::x86_64::*;
            let mut bits = 7u32;
            let mut xs = [0f32; 8];
            for round in 0..2_000_000u32 {
                for (l, x) in xs.iter_mut().enumerate() {
                    bits = bits.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                    *x = if round % 3 == 0 {
                        f32::from_bits(bits)
                    } else {
                        -((bits >> 8) as f32 / (1u32 << 24) as f32) * (1 + l * 15) as f32
                    };
                }
                let mut out = [0f32; 8];
                // SAFETY: AVX2 and FMA were detected.
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr(), expf_x8(_mm256_loadu_ps(xs.as_ptr())))
                };
                for (x, y) in xs.iter().zip(out) {
                    let want = expf(*x);
                    assert!(
                        y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                        "lane expf({x:e}) = {y:e}, scalar {want:e}"
                    );
                }
            }
        }
    }
}
