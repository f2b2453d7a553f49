//! Tile kernels: one weight row × several activation rows per step, with one accumulator per output. Each weight
//! block is unpacked once for all the step's activation rows and their fused multiply-add chains run side by side,
//! but each chain adds its blocks in the same order, with the same float operations, as the single dot product in
//! `legacy.rs` or `k_quants.rs`, so every output is bit-identical to it.

use super::helpers::{bits_to_bytes, half, hsum_f32, nibbles_32};
use super::k_quants::{hsum_i32, min_sub, min_term, q6_codes};
use crate::block::{cast, ByteBlock};
use crate::formats::{k_scales, q4_k::BlockQ4K, q6_k::BlockQ6K, q8_k::BlockQ8K};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Activation rows per step of the 32-element tiles: each weight block is unpacked once for this many.
const TG: usize = 8;
/// Activation rows per step of the AVX-512 32-element tiles (32 registers hold twice the accumulators).
const TG512: usize = 16;
/// How far ahead of the block being read the weight stream is prefetched, in bytes (measured: 20 % faster
/// matrix-vector products than the hardware prefetcher alone on a 2-core EPYC).
const PF: usize = 2048;

/// A 32-element weight block dotted against Q8_0: an f16 scale at byte 0, then codes.
///
/// The AVX2 tiles take formats whose codes are `u − OFFSET` for an unsigned `u` (Q4_0, Q5_0) as `u` and subtract
/// `OFFSET · Σ y` per lane, precomputed once per activation row; signed formats (Q8_0, `OFFSET` = 0) use the sign
/// trick. The VNNI tiles take the signed codes `x` against the activations plus 128 (unsigned, as `vpdpbusd`
/// wants them, made once per activation row) and start each lane from `−128 · Σ x`, made once per weight block.
/// Either way each lane holds the same exact integer as the single dot product's.
pub trait Block32 {
    /// Bytes per block.
    const SIZE: usize;
    /// What was added to every code to make it unsigned; 0 for signed codes.
    const OFFSET: i8;
    /// The 32 codes of the block at `p`: `code + OFFSET` as u8, or the signed codes when `OFFSET` is 0.
    unsafe fn codes(p: *const u8) -> __m256i;
    /// The 32 signed codes of the block at `p`.
    unsafe fn signed_codes(p: *const u8) -> __m256i;
    /// [`Block32::signed_codes`] of the blocks at `p0` (low half) and `p1` (high half), with AVX-512.
    unsafe fn signed_pair(p0: *const u8, p1: *const u8) -> __m512i;
}

/// Q8_0: signed codes, stored as they are.
pub struct Q8_0;
/// Q5_0: a nibble and a fifth bit make `code + 16`.
pub struct Q5_0;
/// Q4_0: the nibble is `code + 8`.
pub struct Q4_0;

impl Block32 for Q8_0 {
    const SIZE: usize = 34;
    const OFFSET: i8 = 0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.add(2).cast())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_codes(p: *const u8) -> __m256i {
        Self::codes(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn signed_pair(p0: *const u8, p1: *const u8) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(Self::codes(p0)), Self::codes(p1))
    }
}

/// The nibbles of the 16 bytes at `p0` and at `p1`, each as 32 bytes in [`nibbles_32`]'s order: `p0`'s in the low
/// half of the result, `p1`'s in the high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibbles_pair(p0: *const u8, p1: *const u8) -> __m512i {
    let packed = _mm256_set_m128i(_mm_loadu_si128(p1.cast()), _mm_loadu_si128(p0.cast()));
    let high = _mm256_srli_epi16::<4>(packed);
    // Qwords: p0's packed bytes, p0's shifted bytes, p1's packed, p1's shifted (the second source from 8 on).
    let order = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    let both = _mm512_permutex2var_epi64(
        _mm512_castsi256_si512(packed),
        order,
        _mm512_castsi256_si512(high),
    );
    _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
}

impl Block32 for Q5_0 {
    const SIZE: usize = 22;
    const OFFSET: i8 = 16;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        let qh = u32::from_le_bytes(p.add(2).cast::<[u8; 4]>().read());
        let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles_32(p.add(6)), high)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_codes(p: *const u8) -> __m256i {
        _mm256_sub_epi8(Self::codes(p), _mm256_set1_epi8(16))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn signed_pair(p0: *const u8, p1: *const u8) -> __m512i {
        let qh = |p: *const u8| u32::from_le_bytes(p.add(2).cast::<[u8; 4]>().read()) as u64;
        // Bit j of the mask is element j's fifth bit (p0's 32 elements, then p1's): the code is the nibble where
        // it is set and the nibble − 16 where it is clear.
        let clear = _cvtu64_mask64(!(qh(p0) | qh(p1) << 32));
        let low = nibbles_pair(p0.add(6), p1.add(6));
        _mm512_mask_sub_epi8(low, clear, low, _mm512_set1_epi8(16))
    }
}

impl Block32 for Q4_0 {
    const SIZE: usize = 18;
    const OFFSET: i8 = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(p: *const u8) -> __m256i {
        nibbles_32(p.add(2))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_codes(p: *const u8) -> __m256i {
        _mm256_sub_epi8(Self::codes(p), _mm256_set1_epi8(8))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn signed_pair(p0: *const u8, p1: *const u8) -> __m512i {
        _mm512_sub_epi8(nibbles_pair(p0.add(2), p1.add(2)), _mm512_set1_epi8(8))
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

/// What a tile step precomputes per activation block, for the `TT` activation rows of the step: block `b` of row
/// `t` is entry `b · TT + t`.
struct Prepared {
    /// AVX2: `OFFSET · Σ y` over each lane's four codes (offset formats only). VNNI: the codes + 128, as u8.
    codes: Vec<__m256i>,
    /// The block scale as f32.
    scale: Vec<f32>,
}

thread_local! {
    static PREPARED: std::cell::RefCell<Prepared> =
        const { std::cell::RefCell::new(Prepared { codes: Vec::new(), scale: Vec::new() }) };
}

/// How a tile step uses the activation codes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codes {
    /// Read in place; nothing prepared but the scales.
    InPlace,
    /// Read in place, with the correction for codes offset by this much prepared.
    Offset(i8),
    /// Prepared + 128 (the VNNI tiles).
    Shifted,
}

/// Fills `p` for activation rows `a + t·as_`, `t < tt`, of `nb` blocks, as `codes` says.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare(p: &mut Prepared, a: *const u8, as_: usize, tt: usize, nb: usize, codes: Codes) {
    p.scale.resize(nb * tt, 0.0);
    p.codes.resize(
        if codes == Codes::InPlace { 0 } else { nb * tt },
        _mm256_setzero_si256(),
    );
    let ones = _mm256_set1_epi16(1);
    for t in 0..tt {
        for b in 0..nb {
            let y = a.add(t * as_ + b * Q8_0_SIZE);
            p.scale[b * tt + t] = half_at(y);
            let qy = _mm256_loadu_si256(y.add(2).cast());
            match codes {
                Codes::InPlace => {}
                Codes::Offset(offset) => {
                    let off = _mm256_set1_epi8(offset);
                    p.codes[b * tt + t] = _mm256_madd_epi16(_mm256_maddubs_epi16(off, qy), ones);
                }
                Codes::Shifted => {
                    p.codes[b * tt + t] = _mm256_xor_si256(qy, _mm256_set1_epi8(-128));
                }
            }
        }
    }
}

/// The exact i32 lanes (four products each) of a block: unsigned codes `u` against activations at `y`, less the
/// prepared correction at `c`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_lanes(u: __m256i, y: *const u8, c: *const __m256i) -> __m256i {
    let products = _mm256_madd_epi16(
        _mm256_maddubs_epi16(u, _mm256_loadu_si256(y.cast())),
        _mm256_set1_epi16(1),
    );
    _mm256_sub_epi32(products, *c)
}

/// The exact i32 lanes of a block of signed codes `x` (`ax` = |x|) against activations at `y`, by the sign trick.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_lanes(x: __m256i, ax: __m256i, y: *const u8) -> __m256i {
    let sy = _mm256_sign_epi8(_mm256_loadu_si256(y.cast()), x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// `acc + Σ u·s` per lane of four (u8 × i8) products, with AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dpbusd_avx_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, s)
}

/// [`dpbusd_avx_vnni`] with AVX512-VNNI's 256-bit form (Zen 4 has it but not AVX-VNNI).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dpbusd_avx512_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// Calls `$kernel::<B, TT>(args)` with the step width `$tt` as the const `TT` (the widths `walk_32` hands out).
macro_rules! by_step {
    ($tt:expr, $kernel:ident::<$b:ty>($($arg:expr),* $(,)?)) => {
        match $tt {
            TG512 => $kernel::<$b, TG512>($($arg),*),
            TG => $kernel::<$b, TG>($($arg),*),
            4 => $kernel::<$b, 4>($($arg),*),
            2 => $kernel::<$b, 2>($($arg),*),
            _ => $kernel::<$b, 1>($($arg),*),
        }
    };
}

/// One weight row against `TT` activation rows (at `a + t·as_`), `nb` blocks, into `out[t·ld]`, with AVX2; `p`
/// prepared for those rows. Each output adds its blocks in order with `acc += (d_w·d_a) · float(lanes)`, as the
/// single dot product does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_32<B: Block32, const TT: usize>(
    w: *const u8,
    a: *const u8,
    as_: usize,
    p: &Prepared,
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [_mm256_setzero_ps(); TT];
    let (scale, correction) = (p.scale.as_ptr(), p.codes.as_ptr());
    for b in 0..nb {
        let x = w.add(b * B::SIZE);
        _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(PF).cast());
        let dx = _mm256_set1_ps(half_at(x));
        let qx = B::codes(x);
        let ax = _mm256_sign_epi8(qx, qx);
        for (t, acc_t) in acc.iter_mut().enumerate() {
            let y = a.add(t * as_ + b * Q8_0_SIZE + 2);
            let lanes = if B::OFFSET == 0 {
                signed_lanes(qx, ax, y)
            } else {
                offset_lanes(qx, y, correction.add(b * TT + t))
            };
            let d = _mm256_mul_ps(dx, _mm256_broadcast_ss(&*scale.add(b * TT + t)));
            *acc_t = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc_t);
        }
    }
    for (t, &v) in acc.iter().enumerate() {
        *out.add(t * ld) = hsum_f32(v);
    }
}

/// A tile of any size for a 32-element format (AVX2): steps of [`TG`] activation rows (then 4, 2, 1 for the
/// rest), each walking every weight row.
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
    out: *mut f32,
    ld: usize,
) {
    let codes = if B::OFFSET == 0 {
        Codes::InPlace
    } else {
        Codes::Offset(B::OFFSET)
    };
    walk_32::<B>(
        w,
        rows,
        a,
        tokens,
        n,
        out,
        ld,
        TG,
        codes,
        |tt, w, ws, ap, as_, p, nb, op| {
            for r in 0..rows {
                let (wp, op) = (w.add(r * ws), op.add(r));
                by_step!(tt, row_32::<B>(wp, ap, as_, p, nb, op, ld))
            }
        },
    )
}

/// Defines a 256-bit VNNI tile kernel and its row kernel: `$features` enabled, the lanes formed by `$dpbusd`.
macro_rules! vnni_32_family {
    ($(#[$doc:meta])* $tile:ident, $row:ident, $features:literal, $dpbusd:ident) => {
        /// [`row_32`] with VNNI: the signed codes against the prepared shifted activations, each lane started
        /// from `−128 · Σ x`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $row<B: Block32, const TT: usize>(
            w: *const u8,
            p: &Prepared,
            nb: usize,
            out: *mut f32,
            ld: usize,
        ) {
            let mut acc = [_mm256_setzero_ps(); TT];
            let (scale, shifted) = (p.scale.as_ptr(), p.codes.as_ptr());
            let (zero, bias) = (_mm256_setzero_si256(), _mm256_set1_epi8(-128));
            for b in 0..nb {
                let x = w.add(b * B::SIZE);
                _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(PF).cast());
                let dx = _mm256_set1_ps(half_at(x));
                let qx = B::signed_codes(x);
                let start = _mm256_sub_epi32(zero, $dpbusd(zero, bias, qx));
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let lanes = $dpbusd(start, *shifted.add(b * TT + t), qx);
                    let d = _mm256_mul_ps(dx, _mm256_broadcast_ss(&*scale.add(b * TT + t)));
                    *acc_t = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc_t);
                }
            }
            for (t, &v) in acc.iter().enumerate() {
                *out.add(t * ld) = hsum_f32(v);
            }
        }

        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the instruction set, and the buffers hold what `TileFn` promises (checked by `dot_tile`).
        #[target_feature(enable = $features)]
        pub unsafe fn $tile<B: Block32>(
            w: &[u8],
            rows: usize,
            a: &[u8],
            tokens: usize,
            n: usize,
            out: *mut f32,
            ld: usize,
        ) {
            walk_32::<B>(w, rows, a, tokens, n, out, ld, TG, Codes::Shifted, |tt, w, ws, _, _, p, nb, op| {
                for r in 0..rows {
                    let (wp, op) = (w.add(r * ws), op.add(r));
                    by_step!(tt, $row::<B>(wp, p, nb, op, ld))
                }
            })
        }
    };
}

/// Walks a 32-element tile's activation rows in steps of `widest` (then [`TG`], 4, 2, 1 for the rest): prepares each
/// step's activation blocks as `codes` says and hands them to `step_rows(tt, w, ws, a, as_, prepared, nb, out)`,
/// which computes every weight row (at `w`, stride `ws`, `nb` blocks) against the `tt` activation rows at `a`
/// (stride `as_`) into `out`.
///
/// # Safety
/// AVX2, FMA and F16C are available and the buffers hold what `TileFn` promises.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn walk_32<B: Block32>(
    w: &[u8],
    rows: usize,
    a: &[u8],
    tokens: usize,
    n: usize,
    out: *mut f32,
    ld: usize,
    widest: usize,
    codes: Codes,
    mut step_rows: impl FnMut(usize, *const u8, usize, *const u8, usize, &Prepared, usize, *mut f32),
) {
    let nb = n / 32;
    let (ws, as_) = (nb * B::SIZE, nb * Q8_0_SIZE);
    assert!(w.len() >= rows * ws && a.len() >= tokens * as_);
    PREPARED.with_borrow_mut(|p| {
        let (w, a, o) = (w.as_ptr(), a.as_ptr(), out);
        let mut t = 0;
        while t < tokens {
            let step = match tokens - t {
                left if left >= widest => widest,
                left if left >= TG => TG,
                left if left >= 4 => 4,
                left if left >= 2 => 2,
                _ => 1,
            };
            let (ap, op) = (a.add(t * as_), o.add(t * ld));
            prepare(p, ap, as_, step, nb, codes);
            step_rows(step, w, ws, ap, as_, p, nb, op);
            t += step;
        }
    });
}

vnni_32_family! {
    /// [`tile_32`] with AVX-VNNI dot products.
    tile_32_avx_vnni, row_32_avx_vnni, "avx2,fma,f16c,avxvnni", dpbusd_avx_vnni
}
vnni_32_family! {
    /// [`tile_32`] with AVX512-VNNI's 256-bit dot products.
    tile_32_avx512_vnni, row_32_avx512_vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dpbusd_avx512_vnni
}

/// Two weight rows (at `w` and `w + ws`) against `TT` activation rows with AVX-512: row r in the low half of every
/// 512-bit register and row r + 1 in the high half, each half doing exactly [`row_32_avx512_vnni`]'s arithmetic.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows2_32_avx512<B: Block32, const TT: usize>(
    w: *const u8,
    ws: usize,
    p: &Prepared,
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [_mm512_setzero_ps(); TT];
    let (scale, shifted) = (p.scale.as_ptr(), p.codes.as_ptr());
    let (zero, bias) = (_mm512_setzero_si512(), _mm512_set1_epi8(-128));
    let both = |lo: __m256, hi: __m256| {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        ))
    };
    for b in 0..nb {
        let (x0, x1) = (w.add(b * B::SIZE), w.add(ws + b * B::SIZE));
        _mm_prefetch::<_MM_HINT_T0>(x0.wrapping_add(PF).cast());
        _mm_prefetch::<_MM_HINT_T0>(x1.wrapping_add(PF).cast());
        let dx = both(_mm256_set1_ps(half_at(x0)), _mm256_set1_ps(half_at(x1)));
        let qx = B::signed_pair(x0, x1);
        let start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, qx));
        for (t, acc_t) in acc.iter_mut().enumerate() {
            let y = _mm512_broadcast_i64x4(*shifted.add(b * TT + t));
            let lanes = _mm512_dpbusd_epi32(start, y, qx);
            let d = _mm512_mul_ps(dx, _mm512_set1_ps(*scale.add(b * TT + t)));
            *acc_t = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lanes), *acc_t);
        }
    }
    for (t, &v) in acc.iter().enumerate() {
        *out.add(t * ld) = hsum_f32(_mm512_castps512_ps256(v));
        *out.add(t * ld + 1) = hsum_f32(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
    }
}

/// [`tile_32`] with AVX-512: weight rows two at a time ([`rows2_32_avx512`]), an odd last row by
/// [`row_32_avx512_vnni`].
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and the buffers hold what `TileFn` promises (checked by `dot_tile`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile_32_avx512<B: Block32>(
    w: &[u8],
    rows: usize,
    a: &[u8],
    tokens: usize,
    n: usize,
    out: *mut f32,
    ld: usize,
) {
    walk_32::<B>(
        w,
        rows,
        a,
        tokens,
        n,
        out,
        ld,
        TG512,
        Codes::Shifted,
        |tt, w, ws, _, _, p, nb, op| {
            for r in (0..rows - rows % 2).step_by(2) {
                let (wp, op) = (w.add(r * ws), op.add(r));
                by_step!(tt, rows2_32_avx512::<B>(wp, ws, p, nb, op, ld))
            }
            if rows % 2 == 1 {
                let r = rows - 1;
                let (wp, op) = (w.add(r * ws), op.add(r));
                by_step!(tt, row_32_avx512_vnni::<B>(wp, p, nb, op, ld))
            }
        },
    )
}

/// Which instructions the 32-element tiles use on this CPU. `FULCRUM_NO_VNNI=1` forces AVX2 (and
/// `FULCRUM_NO_AVX512=1` the 256-bit kernels), so that the paths can be compared and bisected on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// `maddubs` + `madd`.
    Avx2,
    /// AVX-VNNI's `vpdpbusd` on 256-bit registers.
    AvxVnni,
    /// AVX512-VNNI's `vpdpbusd` on 256-bit registers (Zen 4 has it but not AVX-VNNI).
    Avx512Vnni,
    /// Two weight rows per 512-bit register, with AVX512-VNNI.
    Avx512,
}

impl Isa {
    /// Whether the CPU has the AVX-512 subsets the 512-bit and AVX512-VNNI tiles use.
    pub fn avx512() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// The best this CPU has, as the switches allow.
    pub fn detect() -> Isa {
        let off = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        let avx512 = Isa::avx512();
        if off("FULCRUM_NO_VNNI") {
            Isa::Avx2
        } else if avx512 && !off("FULCRUM_NO_AVX512") {
            Isa::Avx512
        } else if is_x86_feature_detected!("avxvnni") {
            Isa::AvxVnni
        } else if avx512 {
            Isa::Avx512Vnni
        } else {
            Isa::Avx2
        }
    }
}

/// Activation rows per step of the K-quant tiles (one weight row at a time: a super-block's codes are unpacked once
/// and dotted with this many activation rows).
const TK: usize = 3;

/// Prefetches the cache lines [`PF`] bytes ahead of the weight block `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prefetch_block<W>(x: &W) {
    let p = (x as *const W).cast::<i8>().wrapping_add(PF);
    for line in (0..size_of::<W>()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
    }
}

/// Weight rows per step of the row-transposed K-quant kernels.
pub(super) const RK: usize = 8;
/// Activation rows per step of the row-transposed K-quant kernels.
const TR: usize = 4;

/// `RK` weight rows against `TT` activation rows, written to `out[t·ld + r]`.
type RowsFn<W, const TT: usize> = unsafe fn([&[W]; RK], [&[BlockQ8K]; TT], *mut f32, usize);

/// The `RK`-row kernels of one order for steps of `TR`, 3, 2 and 1 activation rows.
struct RowsK<W: 'static> {
    four: RowsFn<W, TR>,
    three: RowsFn<W, 3>,
    two: RowsFn<W, 2>,
    one: RowsFn<W, 1>,
}

/// The kernels of one K-quant order: one row against `TK` or 1 activation rows, and, where the order's float steps
/// take exact integer totals, `RK` rows at once.
struct KernelsK<W: 'static> {
    wide: unsafe fn(&[W], [&[BlockQ8K]; TK]) -> [f32; TK],
    narrow: unsafe fn(&[W], [&[BlockQ8K]; 1]) -> [f32; 1],
    rows: Option<RowsK<W>>,
}

/// Walks a K-quant tile `TK` activation rows per step (then one at a time for the rest), `RK` weight rows at a
/// time where the order allows it and one at a time otherwise.
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
    out: *mut f32,
    ld: usize,
    k: &KernelsK<W>,
) {
    let nb = n / 256;
    let (ws, as_) = (nb * size_of::<W>(), nb * size_of::<BlockQ8K>());
    let act = |t: usize| cast::<BlockQ8K>(&a[t * as_..(t + 1) * as_]);
    let row = |r: usize| cast::<W>(&w[r * ws..(r + 1) * ws]);
    let grouped_rows = if k.rows.is_some() {
        rows - rows % RK
    } else {
        0
    };
    if let Some(kernels) = &k.rows {
        // Up to TR activation rows per pass over the weights, so that a batch of 2 or 3 reads them once.
        let mut t = 0;
        while t < tokens {
            let step = (tokens - t).min(TR);
            let acts = |i: usize| act(t + i);
            for r in (0..grouped_rows).step_by(RK) {
                let x = std::array::from_fn(|i| row(r + i));
                let o = out.add(t * ld + r);
                match step {
                    TR => (kernels.four)(x, std::array::from_fn(acts), o, ld),
                    3 => (kernels.three)(x, std::array::from_fn(acts), o, ld),
                    2 => (kernels.two)(x, std::array::from_fn(acts), o, ld),
                    _ => (kernels.one)(x, std::array::from_fn(acts), o, ld),
                }
            }
            t += step;
        }
    }
    let mut t = 0;
    while t < tokens {
        let step = if tokens - t >= TK { TK } else { 1 };
        for r in grouped_rows..rows {
            if step == TK {
                let dots = (k.wide)(row(r), std::array::from_fn(|i| act(t + i)));
                for (i, v) in dots.into_iter().enumerate() {
                    *out.add((t + i) * ld + r) = v;
                }
            } else {
                *out.add(t * ld + r) = (k.narrow)(row(r), [act(t)])[0];
            }
        }
        t += step;
    }
}

/// Lane r = the exact sum of the eight lanes of `v[r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn totals8(v: [__m256i; RK]) -> __m256i {
    // Per 128-bit half: pairs, then quadruples, of each vector's lanes; then the two halves added.
    let t0 = _mm256_hadd_epi32(v[0], v[1]);
    let t1 = _mm256_hadd_epi32(v[2], v[3]);
    let t2 = _mm256_hadd_epi32(v[4], v[5]);
    let t3 = _mm256_hadd_epi32(v[6], v[7]);
    let u0 = _mm256_hadd_epi32(t0, t1);
    let u1 = _mm256_hadd_epi32(t2, t3);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(u0, u1),
        _mm256_permute2x128_si256::<0x31>(u0, u1),
    )
}

/// An f32 per row, from each row's block `b`.
#[inline]
pub(super) fn per_row<W>(x: &[&[W]; RK], b: usize, f: impl Fn(&W) -> f32) -> [f32; RK] {
    std::array::from_fn(|r| f(&x[r][b]))
}

/// `RK` Q4_K rows against `TT` activation rows, in the order of `vec_dot_q4_k_grouped` (`GROUPED`) or
/// `vec_dot_q4_k`. Both take the float steps on exact integer totals (per sub-block pair or per super-block), so the
/// totals of the `RK` rows are formed side by side, transposed into one vector (lane = row), and the float steps of
/// all rows run as one vector operation each, lane by lane the single dot product's.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k_rows<const TT: usize, const GROUPED: bool>(
    x: [&[BlockQ4K]; RK],
    ys: [&[BlockQ8K]; TT],
    out: *mut f32,
    ld: usize,
) {
    let low4 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = ([_mm256_setzero_ps(); TT], [_mm256_setzero_ps(); TT]);
    for b in 0..ys[0].len() {
        // sums[t][j][r]: row r's exact lanes of sub-block pair j (GROUPED) or of the whole super-block (j = 0),
        // each written once below before it is read.
        let mut sums = [[[MaybeUninit::<__m256i>::uninit(); RK]; 4]; TT];
        // mins[j][r]: row r's minimums of sub-blocks 2j and 2j + 1 as two i16 halves.
        let mut mins = [[0i32; RK]; 4];
        for r in 0..RK {
            let xb = &x[r][b];
            prefetch_block(xb);
            let (scale, min) = k_scales::unpack(&xb.scales);
            let mut block = [_mm256_setzero_si256(); TT];
            for j in 0..4 {
                mins[j][r] = min[2 * j] as i32 | (min[2 * j + 1] as i32) << 16;
                let bits = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * j).cast());
                let low = _mm256_and_si256(bits, low4);
                let high = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
                let s0 = _mm256_set1_epi16(scale[2 * j] as i16);
                let s1 = _mm256_set1_epi16(scale[2 * j + 1] as i16);
                for t in 0..TT {
                    let q8 = ys[t][b].qs.as_ptr().add(64 * j);
                    let pair = _mm256_add_epi32(
                        _mm256_madd_epi16(
                            s0,
                            _mm256_maddubs_epi16(low, _mm256_loadu_si256(q8.cast())),
                        ),
                        _mm256_madd_epi16(
                            s1,
                            _mm256_maddubs_epi16(high, _mm256_loadu_si256(q8.add(32).cast())),
                        ),
                    );
                    if GROUPED {
                        sums[t][j][r].write(pair);
                    } else {
                        block[t] = _mm256_add_epi32(block[t], pair);
                    }
                }
            }
            if !GROUPED {
                for t in 0..TT {
                    sums[t][0][r].write(block[t]);
                }
            }
        }
        // SAFETY: every slot read there was written above (pairs 0..4 when GROUPED, else pair 0).
        q4_k_float_steps::<TT, GROUPED>(&x, &ys, b, &sums, &mins, &mut acc, &mut acc_min);
    }
    for t in 0..TT {
        _mm256_storeu_ps(out.add(t * ld), _mm256_sub_ps(acc[t], acc_min[t]));
    }
}

/// The float steps of [`q4_k_rows`] for super-block `b`: from the rows' exact totals `sums[t][j][r]` (pairs `j` when
/// `GROUPED`, else `j` = 0) and packed minimums `mins[j][r]`, `acc` and `acc_min` advance as each row's single dot
/// product would, one vector operation for all `RK` rows.
///
/// # Safety
/// Every slot of `sums` that the order reads (pairs 0..4 when `GROUPED`, else pair 0) is initialised.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn q4_k_float_steps<const TT: usize, const GROUPED: bool>(
    x: &[&[BlockQ4K]; RK],
    ys: &[&[BlockQ8K]; TT],
    b: usize,
    sums: &[[[MaybeUninit<__m256i>; RK]; 4]; TT],
    mins: &[[i32; RK]; 4],
    acc: &mut [__m256; TT],
    acc_min: &mut [__m256; TT],
) {
    // SAFETY: the caller initialised every slot read here.
    let totals = |t: usize, j: usize| totals8(sums[t][j].map(|v| unsafe { v.assume_init() }));
    let d = _mm256_loadu_ps(per_row(x, b, |xb| half(xb.d)).as_ptr());
    let dmin = _mm256_loadu_ps(per_row(x, b, |xb| half(xb.dmin)).as_ptr());
    for t in 0..TT {
        let y = &ys[t][b];
        let ys_scale = _mm256_set1_ps(y.scale());
        let (d_t, dmin_t) = (_mm256_mul_ps(d, ys_scale), _mm256_mul_ps(dmin, ys_scale));
        // min[s] · (bsum(2s) + bsum(2s + 1)) for the sub-blocks of pair j, both rows' terms in one madd: the
        // activation's sub-block sums as i16 (|sum| ≤ 32 · 128), pair j in i32 lane j of the 128-bit lane j / 2.
        let subs = _mm256_madd_epi16(
            _mm256_loadu_si256(y.bsums.as_ptr().cast()),
            _mm256_set1_epi16(1),
        );
        let packed = _mm256_packs_epi32(subs, subs);
        let min_pair = |j: usize| {
            let pair = _mm256_permutevar8x32_epi32(packed, _mm256_set1_epi32([0, 1, 4, 5][j]));
            _mm256_madd_epi16(_mm256_loadu_si256(mins[j].as_ptr().cast()), pair)
        };
        if GROUPED {
            for j in 0..4 {
                let total = _mm256_cvtepi32_ps(totals(t, j));
                acc[t] = _mm256_fmadd_ps(total, d_t, acc[t]);
                acc_min[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(min_pair(j)), dmin_t, acc_min[t]);
            }
        } else {
            let total = _mm256_cvtepi32_ps(totals(t, 0));
            acc[t] = _mm256_fmadd_ps(total, d_t, acc[t]);
            let min_sum = (1..4).fold(min_pair(0), |m, j| _mm256_add_epi32(m, min_pair(j)));
            acc_min[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(min_sum), dmin_t, acc_min[t]);
        }
    }
}

/// `RK` Q6_K rows against `TT` activation rows in the order of `vec_dot_q6_k_tiled`: the exact per-super-block
/// totals of the rows side by side, transposed into one vector, then `acc += (d_w · total) · d_a` for all rows at
/// once, lane by lane the single dot product's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_rows_tiled<const TT: usize>(
    x: [&[BlockQ6K]; RK],
    ys: [&[BlockQ8K]; TT],
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [_mm256_setzero_ps(); TT];
    for b in 0..ys[0].len() {
        let mut sums = [[MaybeUninit::<__m256i>::uninit(); RK]; TT];
        for r in 0..RK {
            let xb = &x[r][b];
            prefetch_block(xb);
            q6_k_sums::<TT>(xb, std::array::from_fn(|t| &ys[t][b]), |t, v| {
                sums[t][r].write(v);
            });
        }
        let d = _mm256_loadu_ps(per_row(&x, b, |xb| half(xb.d)).as_ptr());
        for t in 0..TT {
            // SAFETY: q6_k_sums wrote every (t, r) above.
            let total = totals8(sums[t].map(|v| unsafe { v.assume_init() }));
            let total = _mm256_mul_ps(d, _mm256_cvtepi32_ps(total));
            acc[t] = _mm256_fmadd_ps(total, _mm256_set1_ps(ys[t][b].scale()), acc[t]);
        }
    }
    for (t, &v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(t * ld), v);
    }
}

/// One Q4_K row against `TT` activation rows; `GROUPED` selects the order of `vec_dot_q4_k_grouped` (a float step
/// per pair of sub-blocks) instead of `vec_dot_q4_k` (one per super-block).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k_row<const TT: usize, const GROUPED: bool>(
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

/// The exact i32 lanes of one Q6_K super-block against `TT` activation blocks, handed to `put(t, lanes)`: scale ·
/// code · activation per lane, less the bias of 32 per code, as `vec_dot_q6_k` forms them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_sums<const TT: usize>(
    xb: &BlockQ6K,
    ys: [&BlockQ8K; TT],
    mut put: impl FnMut(usize, __m256i),
) {
    let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xb.scales.as_ptr().cast()));
    let mut sumi: [__m256i; TT] = std::array::from_fn(|t| {
        let bsums = _mm256_loadu_si256(ys[t].bsums.as_ptr().cast());
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
                let q8 = _mm256_loadu_si256(ys[t].qs.as_ptr().add(128 * n + 32 * k).cast());
                let part = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(code, q8));
                sumi[t] = _mm256_add_epi32(sumi[t], part);
            }
        }
    }
    for (t, &v) in sumi.iter().enumerate() {
        put(t, v);
    }
}

/// One Q6_K row against `TT` activation rows; `TILED` selects the order of `vec_dot_q6_k_tiled` (a scalar step per
/// super-block) instead of `vec_dot_q6_k` (eight lanes, summed at the end). Both start from the same exact lane
/// sums ([`q6_k_sums`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_row<const TT: usize, const TILED: bool>(
    x: &[BlockQ6K],
    ys: [&[BlockQ8K]; TT],
) -> [f32; TT] {
    let mut acc = [_mm256_setzero_ps(); TT];
    let mut acc_tiled = [0.0f32; TT];
    for (b, xb) in x.iter().enumerate() {
        prefetch_block(xb);
        let dx = half(xb.d);
        q6_k_sums::<TT>(xb, std::array::from_fn(|t| &ys[t][b]), |t, sumi| {
            let ys_scale = ys[t][b].scale();
            if TILED {
                acc_tiled[t] = (dx * hsum_i32(sumi) as f32).mul_add(ys_scale, acc_tiled[t]);
            } else {
                let d = _mm256_set1_ps(ys_scale * dx);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[t]);
            }
        });
    }
    std::array::from_fn(|t| {
        if TILED {
            acc_tiled[t]
        } else {
            hsum_f32(acc[t])
        }
    })
}

/// Defines the K-quant tile entry points: `name => row kernel, order flag, RK-row kernel or nothing`.
macro_rules! k_tiles {
    ($($(#[$doc:meta])* $name:ident => $row:ident, $variant:literal, $rows:expr;)*) => {$(
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
            out: *mut f32,
            ld: usize,
        ) {
            let kernels = KernelsK {
                wide: $row::<TK, $variant>,
                narrow: $row::<1, $variant>,
                rows: $rows,
            };
            tile_k(w, rows, a, tokens, n, out, ld, &kernels)
        }
    )*};
}

k_tiles! {
    /// Q4_K tiles in `vec_dot_q4_k`'s order.
    tile_q4_k => q4_k_row, false, Some(RowsK {
        four: q4_k_rows::<TR, false>,
        three: q4_k_rows::<3, false>,
        two: q4_k_rows::<2, false>,
        one: q4_k_rows::<1, false>,
    });
    /// Q4_K tiles in `vec_dot_q4_k_grouped`'s order.
    tile_q4_k_grouped => q4_k_row, true, Some(RowsK {
        four: q4_k_rows::<TR, true>,
        three: q4_k_rows::<3, true>,
        two: q4_k_rows::<2, true>,
        one: q4_k_rows::<1, true>,
    });
    /// Q6_K tiles in `vec_dot_q6_k`'s order (its float steps are per lane: one row at a time).
    tile_q6_k => q6_k_row, false, None;
    /// Q6_K tiles in `vec_dot_q6_k_tiled`'s order.
    tile_q6_k_tiled => q6_k_row, true, Some(RowsK {
        four: q6_k_rows_tiled::<TR>,
        three: q6_k_rows_tiled::<3>,
        two: q6_k_rows_tiled::<2>,
        one: q6_k_rows_tiled::<1>,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize_row, row_bytes, vec_dot, GgmlType};

    type Tile = unsafe fn(&[u8], usize, &[u8], usize, usize, *mut f32, usize);

    /// Every 32-element tile variant this CPU can run, per format.
    fn variants(ty: GgmlType) -> Vec<(&'static str, Tile)> {
        macro_rules! of {
            ($b:ty) => {{
                let mut v: Vec<(&'static str, Tile)> = vec![("avx2", tile_32::<$b>)];
                if is_x86_feature_detected!("avxvnni") {
                    v.push(("avx-vnni", tile_32_avx_vnni::<$b>));
                }
                if is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512f")
                {
                    v.push(("avx512-vnni", tile_32_avx512_vnni::<$b>));
                    v.push(("avx512", tile_32_avx512::<$b>));
                }
                v
            }};
        }
        match ty {
            GgmlType::Q4_0 => of!(Q4_0),
            GgmlType::Q5_0 => of!(Q5_0),
            _ => of!(Q8_0),
        }
    }

    /// Every variant's every output equals the single dot product bit for bit, for tile shapes that exercise each
    /// step width (8, 4, 2, 1) and activations with extreme codes (±127, zeros).
    #[test]
    fn every_tile_variant_matches_single_dots() {
        if !crate::x86::available() {
            return;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
            for (rows, tokens, blocks) in
                [(5, 31, 3), (1, 1, 1), (16, 64, 28), (3, 7, 9), (2, 9, 2)]
            {
                let n = 32 * blocks;
                let (ws, as_) = (row_bytes(ty, n), row_bytes(GgmlType::Q8_0, n));
                let mut w = vec![0u8; rows * ws];
                for row in w.chunks_exact_mut(ws) {
                    let values: Vec<f32> = (0..n).map(|_| next()).collect();
                    quantize_row(ty, &values, row);
                }
                let mut a = vec![0u8; tokens * as_];
                for (t, row) in a.chunks_exact_mut(as_).enumerate() {
                    let values: Vec<f32> = (0..n)
                        .map(|i| match t % 3 {
                            0 => next(),
                            1 if i % 5 == 0 => 0.0,
                            1 => next().signum(),
                            _ => next() * 1e-3,
                        })
                        .collect();
                    quantize_row(GgmlType::Q8_0, &values, row);
                }
                let ld = rows + 2;
                for (name, tile) in variants(ty) {
                    let mut out = vec![f32::NAN; tokens * ld];
                    // SAFETY: `variants` lists only what the CPU supports; the buffers have the sizes asked for.
                    unsafe { tile(&w, rows, &a, tokens, n, out.as_mut_ptr(), ld) };
                    for t in 0..tokens {
                        for r in 0..rows {
                            let single = vec_dot(ty, n, &w[r * ws..], &a[t * as_..]);
                            assert_eq!(
                                out[t * ld + r].to_bits(),
                                single.to_bits(),
                                "{ty} {name} {rows}x{tokens}x{blocks}: out[{t}][{r}]"
                            );
                        }
                    }
                }
            }
        }
    }
}
