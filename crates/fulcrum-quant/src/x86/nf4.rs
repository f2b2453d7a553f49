//! AVX2 NF4 dot products: the 16-entry table lives in registers, the CPU analogue of the paper's shared-memory
//! codebook (papers.md §1.3, §1.5).
//!
//! - exact: the f32 table in two `__m256`; 8 codes index both with `vpermps` (which reads only the low 3 bits) and a
//!   blend on bit 3 picks the half; FMAs against f32 activations, the block absmax applied once per block.
//! - int8: the int8 table in both lanes of one `__m256i`; `vpshufb` decodes 32 codes at once, then the usual
//!   `maddubs`/`madd` integer dot against Q8_0 activations.

use super::helpers::{dot_i8_i8, half, hsum_f32};
use crate::block::cast;
use crate::formats::nf4::{Row, BLOCK, CODES, CODES_I8, CODE_BYTES, INT8_SCALE};
use crate::formats::q8_0::BlockQ8_0;
use crate::table::DotFn;
use std::arch::x86_64::*;

/// The 8 NF4 values coded by the 8 nibbles of `word` (4 packed bytes read little-endian), in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode8(word: u32, lut_lo: __m256, lut_hi: __m256) -> __m256 {
    // Element 2j is the high nibble of byte j, element 2j+1 its low nibble; each lane shifts its nibble down to
    // bits 0..3 (the bits above are ignored by the permute and shifted out for the blend mask).
    let shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
    let idx = _mm256_srlv_epi32(_mm256_set1_epi32(u32::from_le(word) as i32), shifts);
    let low_half = _mm256_permutevar8x32_ps(lut_lo, idx);
    let high_half = _mm256_permutevar8x32_ps(lut_hi, idx);
    let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
    _mm256_blendv_ps(low_half, high_half, bit3)
}

/// NF4 × f32, exact table values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_exact(w: &[u8], a: &[u8]) -> f32 {
    let row = Row::new(w);
    assert!(a.len() >= row.blocks() * BLOCK * 4, "NF4 activation row");
    let lut_lo = _mm256_loadu_ps(CODES.as_ptr());
    let lut_hi = _mm256_loadu_ps(CODES.as_ptr().add(8));
    let x = a.as_ptr().cast::<f32>();
    let mut acc = _mm256_setzero_ps();
    for (b, codes) in row.codes.chunks_exact(CODE_BYTES).enumerate() {
        let xb = x.add(b * BLOCK);
        // Two chains per block so the FMAs overlap.
        let mut s0 = _mm256_setzero_ps();
        let mut s1 = _mm256_setzero_ps();
        for k in 0..4 {
            // In bounds: `codes` holds 32 bytes and k < 4.
            let w0 = codes.as_ptr().add(8 * k).cast::<u32>().read_unaligned();
            let w1 = codes.as_ptr().add(8 * k + 4).cast::<u32>().read_unaligned();
            let v0 = decode8(w0, lut_lo, lut_hi);
            let v1 = decode8(w1, lut_lo, lut_hi);
            s0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(xb.add(16 * k)), s0);
            s1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xb.add(16 * k + 8)), s1);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(row.absmax(b)), _mm256_add_ps(s0, s1), acc);
    }
    hsum_f32(acc)
}

/// NF4 × Q8_0 through the int8 table.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_int8(w: &[u8], a: &[u8]) -> f32 {
    let row = Row::new(w);
    let acts = cast::<BlockQ8_0>(a);
    assert!(acts.len() >= 2 * row.blocks(), "NF4 activation row");
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(CODES_I8.as_ptr().cast()));
    let nibble = _mm256_set1_epi8(0x0F);
    // One accumulator per half block, so consecutive FMAs do not wait on each other.
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    for (b, codes) in row.codes.chunks_exact(CODE_BYTES).enumerate() {
        let packed = _mm256_loadu_si256(codes.as_ptr().cast());
        let first = _mm256_shuffle_epi8(
            table,
            _mm256_and_si256(_mm256_srli_epi16::<4>(packed), nibble),
        );
        let second = _mm256_shuffle_epi8(table, _mm256_and_si256(packed, nibble));
        // Interleave back into element order: per lane, bytes 0..8 then 8..16 of the packed codes.
        let low = _mm256_unpacklo_epi8(first, second); // elements 0..16 | 32..48
        let high = _mm256_unpackhi_epi8(first, second); // elements 16..32 | 48..64
        let w0 = _mm256_permute2x128_si256::<0x20>(low, high);
        let w1 = _mm256_permute2x128_si256::<0x31>(low, high);
        let (y0, y1) = (&acts[2 * b], &acts[2 * b + 1]);
        let weight_scale = row.absmax(b) * INT8_SCALE;
        let dot0 = dot_i8_i8(w0, _mm256_loadu_si256(y0.qs.as_ptr().cast()));
        let dot1 = dot_i8_i8(w1, _mm256_loadu_si256(y1.qs.as_ptr().cast()));
        acc0 = _mm256_fmadd_ps(
            _mm256_set1_ps(weight_scale * half(y0.d)),
            _mm256_cvtepi32_ps(dot0),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_set1_ps(weight_scale * half(y1.d)),
            _mm256_cvtepi32_ps(dot1),
            acc1,
        );
    }
    hsum_f32(_mm256_add_ps(acc0, acc1))
}

fn dot_exact(w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: handed out only by `exact`, after `available()` confirmed the CPU features.
    unsafe { vec_dot_exact(w, a) }
}

fn dot_int8(w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: as for `dot_exact`.
    unsafe { vec_dot_int8(w, a) }
}

/// The exact path's kernel (NF4 × f32), if this CPU has AVX2, FMA and F16C.
pub fn exact() -> Option<DotFn> {
    super::available().then_some(dot_exact as DotFn)
}

/// The int8 path's kernel (NF4 × Q8_0), if this CPU has AVX2, FMA and F16C.
pub fn int8() -> Option<DotFn> {
    super::available().then_some(dot_int8 as DotFn)
}
