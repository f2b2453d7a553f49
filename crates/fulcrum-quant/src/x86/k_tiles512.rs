//! AVX-512 tiles for Q4_K and Q6_K: 64 codes per instruction, each code × activation pair weighted by its
//! sub-block scale and added to i32 lanes by one VNNI `vpdpwssd`, up to eight activation rows per pass over the
//! weights. Every lane total is the same exact integer as in `k_quants.rs` (integer sums do not depend on their
//! order), and the float steps are the single dot product's, so every output is bit-identical to it.

use super::helpers::{half, hsum_f32};
use super::k_quants::q6_codes;
use super::tiles::{prefetch_block, q4_k_float_steps, q4_k_row, q4_k_rows, RK};
use crate::block::{cast, ByteBlock};
use crate::formats::{k_scales, q4_k::BlockQ4K, q6_k::BlockQ6K, q8_k::BlockQ8K};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Activation rows per pass over the weights at most.
const WIDEST: usize = 8;

/// Word w of entry p picks scale `4p + w / 8` of a Q6_K block: the sub-block of word w when the 64 codes of chunk
/// pair p (of the block's eight 32-code chunks) are multiplied pairwise into 32 i16 words.
static Q6_SCALE_INDEX: [[i16; 32]; 4] = {
    let mut index = [[0i16; 32]; 4];
    let mut p = 0;
    while p < 4 {
        let mut w = 0;
        while w < 32 {
            index[p][w] = (4 * p + w / 8) as i16;
            w += 1;
        }
        p += 1;
    }
    index
};

/// The two 256-bit halves of `v` added lane by lane (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// `lo` as the low half and `hi` as the high half of one register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// A K-quant order's kernels for the walk: `RK` weight rows at once where the order allows it, one otherwise.
trait Kernels {
    /// The weight block.
    type W: ByteBlock;
    /// Whether [`Kernels::rows`] exists (else every row goes through [`Kernels::row`]).
    const ROWS: bool;
    /// `RK` weight rows against `TT` activation rows, into `out[t·ld + r]`.
    unsafe fn rows<const TT: usize>(
        x: [&[Self::W]; RK],
        ys: [&[BlockQ8K]; TT],
        out: *mut f32,
        ld: usize,
    );
    /// One weight row against `TT` activation rows.
    unsafe fn row<const TT: usize>(x: &[Self::W], ys: [&[BlockQ8K]; TT]) -> [f32; TT];
}

/// Walks a tile in passes of 8, 4, 3, 2 or 1 activation rows (the widest that fits), each pass taking every weight
/// row (`RK` at a time where the order allows it).
///
/// # Safety
/// AVX-512 F, BW, VL and VNNI are available and the buffers hold what `TileFn` promises.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn walk<K: Kernels>(
    w: &[u8],
    rows: usize,
    a: &[u8],
    tokens: usize,
    n: usize,
    out: *mut f32,
    ld: usize,
) {
    let nb = n / 256;
    let (ws, as_) = (nb * size_of::<K::W>(), nb * size_of::<BlockQ8K>());
    assert!(w.len() >= rows * ws && a.len() >= tokens * as_);
    let mut t = 0;
    while t < tokens {
        let step = match tokens - t {
            left if left >= WIDEST => WIDEST,
            left if left >= 4 => 4,
            left => left,
        };
        let (a, out) = (&a[t * as_..], out.add(t * ld));
        match step {
            WIDEST => pass::<K, WIDEST>(w, rows, ws, a, as_, out, ld),
            4 => pass::<K, 4>(w, rows, ws, a, as_, out, ld),
            3 => pass::<K, 3>(w, rows, ws, a, as_, out, ld),
            2 => pass::<K, 2>(w, rows, ws, a, as_, out, ld),
            _ => pass::<K, 1>(w, rows, ws, a, as_, out, ld),
        }
        t += step;
    }
}

/// One pass of [`walk`]: every weight row (stride `ws`) against the `TT` activation rows at `a` (stride `as_`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn pass<K: Kernels, const TT: usize>(
    w: &[u8],
    rows: usize,
    ws: usize,
    a: &[u8],
    as_: usize,
    out: *mut f32,
    ld: usize,
) {
    let row = |r: usize| cast::<K::W>(&w[r * ws..(r + 1) * ws]);
    let ys: [&[BlockQ8K]; TT] = std::array::from_fn(|t| cast(&a[t * as_..(t + 1) * as_]));
    let grouped = if K::ROWS { rows - rows % RK } else { 0 };
    for r in (0..grouped).step_by(RK) {
        K::rows::<TT>(std::array::from_fn(|i| row(r + i)), ys, out.add(r), ld);
    }
    for r in grouped..rows {
        for (t, v) in K::row::<TT>(row(r), ys).into_iter().enumerate() {
            *out.add(t * ld + r) = v;
        }
    }
}

/// Q6_K in `vec_dot_q6_k`'s order: one row at a time, its float steps being per lane.
struct Q6KPlain;

impl Kernels for Q6KPlain {
    type W = BlockQ6K;
    const ROWS: bool = false;

    unsafe fn rows<const TT: usize>(
        _: [&[BlockQ6K]; RK],
        _: [&[BlockQ8K]; TT],
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("Q6_K's plain order has no row-group kernel")
    }

    /// Per super-block and activation row: the chunk pairs' scaled products in 16 lanes, folded to the single dot
    /// product's 8 (lane l of chunk k lands in lane l either way), less its bias of 32 per code, then
    /// `acc += (d_a · d_w) · lanes` on those 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn row<const TT: usize>(x: &[BlockQ6K], ys: [&[BlockQ8K]; TT]) -> [f32; TT] {
        let mut acc = [_mm256_setzero_ps(); TT];
        for (b, xb) in x.iter().enumerate() {
            prefetch_block(xb);
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xb.scales.as_ptr().cast()));
            let wide = _mm512_castsi256_si512(scales16);
            let mut sumi = [_mm512_setzero_si512(); TT];
            for n in 0..2 {
                let codes = q6_codes(xb, n);
                for m in 0..2 {
                    let code = join(codes[2 * m], codes[2 * m + 1]);
                    let index = _mm512_loadu_si512(Q6_SCALE_INDEX[2 * n + m].as_ptr().cast());
                    let scale = _mm512_permutexvar_epi16(index, wide);
                    for (t, s) in sumi.iter_mut().enumerate() {
                        let q8 =
                            _mm512_loadu_si512(ys[t][b].qs.as_ptr().add(128 * n + 64 * m).cast());
                        *s = _mm512_dpwssd_epi32(*s, scale, _mm512_maddubs_epi16(code, q8));
                    }
                }
            }
            let dx = half(xb.d);
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let y = &ys[t][b];
                let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
                let bias = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, scales16));
                let lanes = _mm256_sub_epi32(fold(sumi[t]), bias);
                let d = _mm256_set1_ps(y.scale() * dx);
                *acc_t = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc_t);
            }
        }
        std::array::from_fn(|t| hsum_f32(acc[t]))
    }
}

/// Q4_K in `vec_dot_q4_k`'s order (`GROUPED` false) or `vec_dot_q4_k_grouped`'s.
struct Q4K<const GROUPED: bool>;

impl<const GROUPED: bool> Kernels for Q4K<GROUPED> {
    type W = BlockQ4K;
    const ROWS: bool = true;

    /// `RK` rows side by side: each sub-block pair's 64 codes (low nibbles, then high) against 64 activations in
    /// one register, the pair's two scales in its halves; the exact totals then take the shared float steps. A
    /// lone activation row takes the 256-bit kernel, which measured faster for it.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const TT: usize>(
        x: [&[BlockQ4K]; RK],
        ys: [&[BlockQ8K]; TT],
        out: *mut f32,
        ld: usize,
    ) {
        if TT == 1 {
            return q4_k_rows::<1, GROUPED>(x, [ys[0]], out, ld);
        }
        let low4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = ([_mm256_setzero_ps(); TT], [_mm256_setzero_ps(); TT]);
        for b in 0..ys[0].len() {
            // As in `tiles::q4_k_rows`: sums[t][j][r] holds row r's exact lanes of pair j (GROUPED) or of the
            // whole super-block (j = 0); mins[j][r] the minimums of sub-blocks 2j and 2j + 1 as two i16 halves.
            let mut sums = [[[MaybeUninit::<__m256i>::uninit(); RK]; 4]; TT];
            let mut mins = [[0i32; RK]; 4];
            for r in 0..RK {
                let xb = &x[r][b];
                prefetch_block(xb);
                let (scale, min) = k_scales::unpack(&xb.scales);
                let mut block = [_mm512_setzero_si512(); TT];
                for j in 0..4 {
                    mins[j][r] = min[2 * j] as i32 | (min[2 * j + 1] as i32) << 16;
                    let bits = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * j).cast());
                    let code = join(
                        _mm256_and_si256(bits, low4),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4),
                    );
                    let scales = join(
                        _mm256_set1_epi16(scale[2 * j] as i16),
                        _mm256_set1_epi16(scale[2 * j + 1] as i16),
                    );
                    for (t, block_t) in block.iter_mut().enumerate() {
                        let q8 = _mm512_loadu_si512(ys[t][b].qs.as_ptr().add(64 * j).cast());
                        let products = _mm512_maddubs_epi16(code, q8);
                        if GROUPED {
                            let pair =
                                _mm512_dpwssd_epi32(_mm512_setzero_si512(), scales, products);
                            sums[t][j][r].write(fold(pair));
                        } else {
                            *block_t = _mm512_dpwssd_epi32(*block_t, scales, products);
                        }
                    }
                }
                if !GROUPED {
                    for (t, &v) in block.iter().enumerate() {
                        sums[t][0][r].write(fold(v));
                    }
                }
            }
            // SAFETY: every slot the order reads was written above.
            q4_k_float_steps::<TT, GROUPED>(&x, &ys, b, &sums, &mins, &mut acc, &mut acc_min);
        }
        for t in 0..TT {
            _mm256_storeu_ps(out.add(t * ld), _mm256_sub_ps(acc[t], acc_min[t]));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn row<const TT: usize>(x: &[BlockQ4K], ys: [&[BlockQ8K]; TT]) -> [f32; TT] {
        q4_k_row::<TT, GROUPED>(x, ys)
    }
}

/// Defines the AVX-512 K-quant tile entry points.
macro_rules! tiles_512 {
    ($($(#[$doc:meta])* $name:ident => $kernels:ty;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has AVX-512 F, BW, VL and VNNI, and the buffers hold what `TileFn` promises (checked by
        /// `dot_tile`).
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name(
            w: &[u8],
            rows: usize,
            a: &[u8],
            tokens: usize,
            n: usize,
            out: *mut f32,
            ld: usize,
        ) {
            walk::<$kernels>(w, rows, a, tokens, n, out, ld)
        }
    )*};
}

tiles_512! {
    /// Q4_K tiles in `vec_dot_q4_k`'s order.
    tile_q4_k => Q4K<false>;
    /// Q4_K tiles in `vec_dot_q4_k_grouped`'s order.
    tile_q4_k_grouped => Q4K<true>;
    /// Q6_K tiles in `vec_dot_q6_k`'s order.
    tile_q6_k => Q6KPlain;
}
