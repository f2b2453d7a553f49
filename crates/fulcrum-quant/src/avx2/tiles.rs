//! Tile kernels: `R` weight rows × `T` activation rows per step, with one accumulator per output. Each weight block
//! is unpacked once for the `T` activation rows and the `R × T` fused multiply-add chains run side by side, but each
//! chain adds its blocks in the same order, with the same operations, as the single dot product in `legacy.rs` or
//! `k_quants.rs`, so every output is bit-identical to it.

use super::helpers::{bits_to_bytes, half, hsum_f32, nibbles_32};
use super::k_quants::{hsum_i32, min_sub, min_term, q6_codes};
use crate::block::{cast, ByteBlock};
use crate::formats::{k_scales, q4_k::BlockQ4K, q6_k::BlockQ6K, q8_k::BlockQ8K};
use std::arch::x86_64::*;

/// Activation rows per step of the wide tiles.
const T: usize = 3;
/// Weight rows per step.
const R: usize = 3;
/// How far ahead of the block being read the weight stream is prefetched, in bytes (measured: 20 % faster
/// matrix-vector products than the hardware prefetcher alone on a 2-core EPYC).
const PF: usize = 2048;

/// A 32-element weight block dotted against Q8_0: an f16 scale at byte 0, and signed codes.
pub trait Block32 {
    /// Bytes per block.
    const SIZE: usize;
    /// The 32 signed codes of the block at `p`.
    unsafe fn codes(p: *const u8) -> __m256i;
}

/// Q8_0: the codes are stored as they are.
pub struct Q8_0;
/// Q5_0: code − 16 from a nibble and a fifth bit.
pub struct Q5_0;
/// Q4_0: nibble − 8.
pub struct Q4_0;

impl Block32 for Q8_0 {
    const SIZE: usize = 34;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.add(2).cast())
    }
}

impl Block32 for Q5_0 {
    const SIZE: usize = 22;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        let qh = u32::from_le_bytes(p.add(2).cast::<[u8; 4]>().read());
        let high_clear = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles_32(p.add(6)), high_clear)
    }
}

impl Block32 for Q4_0 {
    const SIZE: usize = 18;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles_32(p.add(2)), _mm256_set1_epi8(8))
    }
}

/// Bytes of a Q8_0 activation block.
const Q8_0_SIZE: usize = 34;

/// The f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_at(p: *const u8) -> f32 {
    half(p.cast::<[u8; 2]>().read())
}

/// `RR × TT` outputs of a 32-element format: weight rows at `w + r·ws`, activation rows at `a + t·as_`, `nb` blocks;
/// `dy` holds the activation rows' block scales as f32, `nb` per row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_32<B: Block32, const RR: usize, const TT: usize>(
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    dy: *const f32,
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); TT]; RR];
    for b in 0..nb {
        let qy: [__m256i; TT] =
            std::array::from_fn(|t| _mm256_loadu_si256(a.add(t * as_ + b * Q8_0_SIZE + 2).cast()));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let p = w.add(r * ws + b * B::SIZE);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF).cast());
            let dx = half_at(p);
            let qx = B::codes(p);
            let ax = _mm256_sign_epi8(qx, qx);
            for t in 0..TT {
                let sums =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy[t], qx)), ones);
                let d = _mm256_set1_ps(dx * *dy.add(t * nb + b));
                acc_r[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc_r[t]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (t, &v) in acc_r.iter().enumerate() {
            *out.add(t * ld + r) = hsum_f32(v);
        }
    }
}

thread_local! {
    /// Activation block scales widened to f32 once per tile step, shared by all its weight rows.
    static SCALES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A tile of any size for a 32-element format, walked in `R × T` steps.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and the buffers hold what `TileFn` promises (checked by `dot_tile`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_32<B: Block32>(
    w: &[u8],
    rows: usize,
    a: &[u8],
    tokens: usize,
    n: usize,
    out: &mut [f32],
    ld: usize,
) {
    let nb = n / 32;
    let (ws, as_) = (nb * B::SIZE, nb * Q8_0_SIZE);
    assert!(w.len() >= rows * ws && a.len() >= tokens * as_);
    assert!(out.len() >= (tokens - 1) * ld + rows);
    SCALES.with_borrow_mut(|dy| {
        dy.resize(T * nb, 0.0);
        let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
        let mut t = 0;
        while t < tokens {
            let step = if tokens - t >= T { T } else { 1 };
            let (ap, op) = (a.add(t * as_), o.add(t * ld));
            for (i, d) in dy[..step * nb].iter_mut().enumerate() {
                *d = half_at(ap.add((i / nb) * as_ + (i % nb) * Q8_0_SIZE));
            }
            let dp = dy.as_ptr();
            let mut r = 0;
            while step == T && r + R <= rows {
                micro_32::<B, R, T>(w.add(r * ws), ws, ap, as_, dp, nb, op.add(r), ld);
                r += R;
            }
            while r < rows {
                let (wp, op) = (w.add(r * ws), op.add(r));
                if step == T {
                    micro_32::<B, 1, T>(wp, ws, ap, as_, dp, nb, op, ld);
                } else {
                    micro_32::<B, 1, 1>(wp, ws, ap, as_, dp, nb, op, ld);
                }
                r += 1;
            }
            t += step;
        }
    });
}

/// Activation rows per step of the K-quant tiles (one weight row at a time: a super-block's codes are unpacked once
/// and dotted with this many activation rows).
const TK: usize = 3;

/// Prefetches the cache lines [`PF`] bytes ahead of the weight block `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch_block<W>(x: &W) {
    let p = (x as *const W).cast::<i8>().wrapping_add(PF);
    for line in (0..size_of::<W>()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
    }
}

/// Walks a K-quant tile one weight row at a time, `TK` activation rows per step (then one at a time for the rest),
/// with `row` computing one weight row against `TT` activation rows.
///
/// # Safety
/// As [`tile_32`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_k<W: ByteBlock>(
    w: &[u8],
    rows: usize,
    a: &[u8],
    tokens: usize,
    n: usize,
    out: &mut [f32],
    ld: usize,
    wide: unsafe fn(&[W], [&[BlockQ8K]; TK]) -> [f32; TK],
    narrow: unsafe fn(&[W], [&[BlockQ8K]; 1]) -> [f32; 1],
) {
    let nb = n / 256;
    let (ws, as_) = (nb * size_of::<W>(), nb * size_of::<BlockQ8K>());
    let act = |t: usize| cast::<BlockQ8K>(&a[t * as_..(t + 1) * as_]);
    let mut t = 0;
    while t < tokens {
        let step = if tokens - t >= TK { TK } else { 1 };
        for r in 0..rows {
            let x = cast::<W>(&w[r * ws..(r + 1) * ws]);
            if step == TK {
                let dots = wide(x, std::array::from_fn(|i| act(t + i)));
                for (i, v) in dots.into_iter().enumerate() {
                    out[(t + i) * ld + r] = v;
                }
            } else {
                out[t * ld + r] = narrow(x, [act(t)])[0];
            }
        }
        t += step;
    }
}

/// One Q4_K row against `TT` activation rows; `GROUPED` selects the order of `vec_dot_q4_k_grouped` (a float step
/// per pair of sub-blocks) instead of `vec_dot_q4_k` (one per super-block).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_row<const TT: usize, const GROUPED: bool>(
    x: &[BlockQ4K],
    ys: [&[BlockQ8K]; TT],
) -> [f32; TT] {
    let low4 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = ([0.0f32; TT], [0.0f32; TT]);
    for (b, xb) in x.iter().enumerate() {
        prefetch_block(xb);
        let (scales, mins) = k_scales::unpack(&xb.scales);
        let (dx, dminx) = (half(xb.d), half(xb.dmin));
        let mut sumi = [_mm256_setzero_si256(); TT];
        for j in 0..4 {
            let bits = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * j).cast());
            let low = _mm256_and_si256(bits, low4);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            let s0 = _mm256_set1_epi16(scales[2 * j] as i16);
            let s1 = _mm256_set1_epi16(scales[2 * j + 1] as i16);
            for t in 0..TT {
                let y = &ys[t][b];
                let q8 = y.qs.as_ptr().add(64 * j);
                let pair = _mm256_add_epi32(
                    _mm256_madd_epi16(s0, _mm256_maddubs_epi16(low, _mm256_loadu_si256(q8.cast()))),
                    _mm256_madd_epi16(
                        s1,
                        _mm256_maddubs_epi16(high, _mm256_loadu_si256(q8.add(32).cast())),
                    ),
                );
                if GROUPED {
                    acc[t] = (hsum_i32(pair) as f32).mul_add(dx * y.scale(), acc[t]);
                    let min_sum = min_sub(&mins, y, 2 * j) + min_sub(&mins, y, 2 * j + 1);
                    acc_min[t] = (min_sum as f32).mul_add(dminx * y.scale(), acc_min[t]);
                } else {
                    sumi[t] = _mm256_add_epi32(sumi[t], pair);
                }
            }
        }
        if !GROUPED {
            for t in 0..TT {
                let y = &ys[t][b];
                acc[t] = (hsum_i32(sumi[t]) as f32).mul_add(dx * y.scale(), acc[t]);
                acc_min[t] = (min_term(&mins, y) as f32).mul_add(dminx * y.scale(), acc_min[t]);
            }
        }
    }
    std::array::from_fn(|t| acc[t] - acc_min[t])
}

/// One Q6_K row against `TT` activation rows; `TILED` selects the order of `vec_dot_q6_k_tiled` (a scalar step per
/// super-block) instead of `vec_dot_q6_k` (eight lanes, summed at the end). Both start from the same exact lane
/// sums: scale · code · activation per lane, less the bias of 32 per code.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_row<const TT: usize, const TILED: bool>(
    x: &[BlockQ6K],
    ys: [&[BlockQ8K]; TT],
) -> [f32; TT] {
    let mut acc = [_mm256_setzero_ps(); TT];
    let mut acc_tiled = [0.0f32; TT];
    for (b, xb) in x.iter().enumerate() {
        prefetch_block(xb);
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xb.scales.as_ptr().cast()));
        let mut sumi: [__m256i; TT] = std::array::from_fn(|t| {
            let bsums = _mm256_loadu_si256(ys[t][b].bsums.as_ptr().cast());
            _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales16)),
            )
        });
        for n in 0..2 {
            let codes = q6_codes(xb, n);
            for (k, &code) in codes.iter().enumerate() {
                let sub = 8 * n + 2 * k;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(xb.scales[sub + 1] as i16),
                    _mm_set1_epi16(xb.scales[sub] as i16),
                );
                for t in 0..TT {
                    let q8 = _mm256_loadu_si256(ys[t][b].qs.as_ptr().add(128 * n + 32 * k).cast());
                    let part = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(code, q8));
                    sumi[t] = _mm256_add_epi32(sumi[t], part);
                }
            }
        }
        let dx = half(xb.d);
        for t in 0..TT {
            let ys_scale = ys[t][b].scale();
            if TILED {
                acc_tiled[t] = (dx * hsum_i32(sumi[t]) as f32).mul_add(ys_scale, acc_tiled[t]);
            } else {
                let d = _mm256_set1_ps(ys_scale * dx);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
    }
    std::array::from_fn(|t| {
        if TILED {
            acc_tiled[t]
        } else {
            hsum_f32(acc[t])
        }
    })
}

/// Defines the K-quant tile entry points: `name => row kernel, order flag`.
macro_rules! k_tiles {
    ($($(#[$doc:meta])* $name:ident => $row:ident, $variant:literal;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// As [`tile_32`].
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(
            w: &[u8],
            rows: usize,
            a: &[u8],
            tokens: usize,
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            tile_k(w, rows, a, tokens, n, out, ld, $row::<TK, $variant>, $row::<1, $variant>)
        }
    )*};
}

k_tiles! {
    /// Q4_K tiles in `vec_dot_q4_k`'s order.
    tile_q4_k => q4_k_row, false;
    /// Q4_K tiles in `vec_dot_q4_k_grouped`'s order.
    tile_q4_k_grouped => q4_k_row, true;
    /// Q6_K tiles in `vec_dot_q6_k`'s order.
    tile_q6_k => q6_k_row, false;
    /// Q6_K tiles in `vec_dot_q6_k_tiled`'s order.
    tile_q6_k_tiled => q6_k_row, true;
}
