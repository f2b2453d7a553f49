//! f32 vector functions in the arithmetic of llama.cpp's AVX2 CPU backend, so that activations match it bit for bit:
//! its polynomial `exp` and the SiLU-gated unit built on it. The functions are elementwise, so one scalar description
//! with fused multiply-adds is exact lane for lane; an AVX2+FMA build of the same code is used when the CPU has it.

use std::sync::OnceLock;

/// `exp(x)` as ggml's vectorised exponential computes it (range reduction by ln 2 split in two parts, a degree-5
/// polynomial, and an exponent-splitting path for results near overflow or underflow); within about 1.5 ulp of `exp`.
#[inline]
pub fn exp_approx(x: f32) -> f32 {
    exp_inline(x)
}

/// `gate = silu(gate) · up` for one row, with ggml's arithmetic: elements in whole groups of eight use
/// [`exp_approx`], the remaining ones the C library's `expf`.
pub fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu lengths");
    (kernels().swiglu)(gate, up)
}

/// Sum of eight values in the order of ggml's AVX2 horizontal add: halves, then pairs, then the last two.
#[inline]
pub fn hsum8(v: &[f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The plain build of the kernels, for tests that compare it with the dispatched one.
pub fn swiglu_row_scalar(gate: &mut [f32], up: &[f32]) {
    swiglu_inline(gate, up)
}

const fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

#[inline(always)]
fn exp_inline(x: f32) -> f32 {
    const SHIFT: f32 = f(0x4b40_0000); // 1.5 · 2^23: adding it rounds to an integer in the low mantissa bits
    const LOG2_E: f32 = f(0x3fb8_aa3b);
    const LN2_HI: f32 = f(0x3f31_7200);
    const LN2_LO: f32 = f(0x35bf_be8e);
    const C1: f32 = f(0x3f7f_fff6);
    const C2: f32 = f(0x3eff_fedb);
    const C3: f32 = f(0x3e2a_af33);
    const C4: f32 = f(0x3d2b_9f17);
    const C5: f32 = f(0x3c07_2010);
    let z = x.mul_add(LOG2_E, SHIFT);
    let n = z - SHIFT;
    // b = x − n·ln2, with ln 2 in two parts for accuracy.
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1 * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    // 2^n overflows the exponent field: scale in two steps.
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// [`exp_approx`] of eight lanes at once, lane by lane the same bits (the scalar's branches become blends).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_approx_x8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |bits: u32| _mm256_set1_ps(f(bits));
    let shift = c(0x4b40_0000);
    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), shift);
    let n = _mm256_sub_ps(z, shift);
    let sign = _mm256_set1_ps(-0.0);
    let minus_n = _mm256_xor_ps(n, sign);
    let b = _mm256_fmadd_ps(
        minus_n,
        c(0x35bf_be8e),
        _mm256_fmadd_ps(minus_n, c(0x3f31_7200), x),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_set1_epi32(1.0f32.to_bits() as i32),
    ));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c(0x3f7f_fff6), b),
    );
    let normal = _mm256_fmadd_ps(j, k, k);
    let abs_n = _mm256_andnot_ps(sign, n);
    let in_range = _mm256_cmp_ps::<_CMP_LE_OQ>(abs_n, _mm256_set1_ps(126.0));
    if _mm256_movemask_ps(in_range) == 0xFF {
        return normal;
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let outside = _mm256_blendv_ps(
        _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1),
        _mm256_mul_ps(s1, s1),
        huge,
    );
    _mm256_blendv_ps(outside, normal, in_range)
}

/// The scalar form (and the tail, under eight elements, of [`swiglu_fma`]).
#[inline(always)]
fn swiglu_inline(gate: &mut [f32], up: &[f32]) {
    let whole = gate.len() / 8 * 8;
    for (g, &u) in gate[..whole].iter_mut().zip(&up[..whole]) {
        *g = *g / (1.0 + exp_inline(0.0 - *g)) * u;
    }
    for (g, &u) in gate[whole..].iter_mut().zip(&up[whole..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// [`swiglu_inline`] with the whole groups of eight in explicit vectors (the scalar form's range branch keeps the
/// compiler from vectorising it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let whole = gate.len().min(up.len()) / 8 * 8;
    let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    for o in (0..whole).step_by(8) {
        let g = _mm256_loadu_ps(pg.add(o));
        let e = exp_approx_x8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(pg.add(o), _mm256_mul_ps(silu, _mm256_loadu_ps(pu.add(o))));
    }
    swiglu_inline(&mut gate[whole..], &up[whole..]);
}

struct Kernels {
    swiglu: fn(&mut [f32], &[f32]),
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if crate::dispatch::simd() {
            return Kernels {
                // SAFETY: the table is only non-scalar when AVX2 and FMA were detected.
                swiglu: |g, u| unsafe { swiglu_fma(g, u) },
            };
        }
        Kernels {
            swiglu: swiglu_inline,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_tracks_exp_across_the_range() {
        let mut x = -103.0f32;
        while x < 88.0 {
            let (got, want) = (exp_approx(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 4e-7 * want + 1e-44,
                "x={x}: {got} vs {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_approx(0.0), 1.0);
        assert_eq!(exp_approx(-200.0), 0.0);
        assert!(exp_approx(100.0).is_infinite());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_approx_x8_matches_scalar_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut values: Vec<f32> = Vec::new();
        let mut x = -260.0f32;
        while x < 260.0 {
            values.push(x);
            x += 0.0371;
        }
        values.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            88.72,
            -87.33,
            -103.9,
            126.5,
        ]);
        values.extend((0..4096).map(|i| f32::from_bits(0x3000_0000 + i * 0x0003_1f1f)));
        for chunk in values.chunks(8) {
            let mut lanes = [0.0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(
                    got.as_mut_ptr(),
                    exp_approx_x8(_mm256_loadu_ps(lanes.as_ptr())),
                );
            }
            for (g, &l) in got.iter().zip(&lanes) {
                let want = exp_approx(l);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp_approx_x8({l}) = {g}, scalar {want}"
                );
            }
        }
    }

    #[test]
    fn swiglu_builds_agree() {
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 * 0.731).sin() * 12.0).collect();
        let up: Vec<f32> = (0..203).map(|i| (i as f32 * 0.377).cos()).collect();
        let (mut a, mut b) = (gate.clone(), gate.clone());
        swiglu_row(&mut a, &up);
        swiglu_row_scalar(&mut b, &up);
        assert_eq!(a, b);
        // Far outside the polynomial's range too (exp(-g) over- or underflows), with tails of every length.
        let wide: Vec<f32> = (0..203).map(|i| (i as f32 * 0.917).sin() * 260.0).collect();
        for len in [0, 1, 7, 8, 9, 64, 203] {
            let (mut c, mut d) = (wide[..len].to_vec(), wide[..len].to_vec());
            swiglu_row(&mut c, &up[..len]);
            swiglu_row_scalar(&mut d, &up[..len]);
            assert_eq!(
                c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                d.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        for ((g, y), u) in gate.iter().zip(&a).zip(&up) {
            let want = *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64;
            assert!((*y as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
    }
}
