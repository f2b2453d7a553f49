//! Scalar NF4 dot products: the references of the two SIMD paths, and the branchy per-element decode that
//! bitsandbytes used before its lookup table (the benchmark baseline).

use super::nf4::{Row, BLOCK, CODES, CODES_I8, CODE_BYTES, INT8_SCALE};
use super::q8_0::{BlockQ8_0, QK};
use crate::block::cast;
use crate::fp::f16_to_f32;

/// Little-endian f32 activations `a[i]`.
#[inline]
fn act(a: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// Exact path against f32 activations: per block, `absmax · Σ CODES[code]·x`, the absmax applied once per block.
pub fn vec_dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let row = Row::new(w);
    let mut sum = 0.0f32;
    for (b, codes) in row.codes.chunks_exact(CODE_BYTES).enumerate() {
        let mut block = 0.0f32;
        for (j, &byte) in codes.iter().enumerate() {
            let i = b * BLOCK + 2 * j;
            block += CODES[(byte >> 4) as usize] * act(a, i);
            block += CODES[(byte & 0x0F) as usize] * act(a, i + 1);
        }
        sum += row.absmax(b) * block;
    }
    sum
}

/// Int8 path against Q8_0 activations: `CODES_I8` codes times the int8 activations, an exact i32 sum per 32-element
/// half block, scaled by `absmax · (1/127) · d_a`.
pub fn vec_dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let row = Row::new(w);
    let acts = cast::<BlockQ8_0>(a);
    let mut sum = 0.0f32;
    for (b, codes) in row.codes.chunks_exact(CODE_BYTES).enumerate() {
        let weight_scale = row.absmax(b) * INT8_SCALE;
        for (half, y) in codes.chunks_exact(QK / 2).zip(&acts[2 * b..2 * b + 2]) {
            let mut sumi = 0i32;
            for (j, &byte) in half.iter().enumerate() {
                sumi += CODES_I8[(byte >> 4) as usize] as i32 * y.qs[2 * j] as i32;
                sumi += CODES_I8[(byte & 0x0F) as usize] as i32 * y.qs[2 * j + 1] as i32;
            }
            sum += sumi as f32 * (weight_scale * f16_to_f32(y.d));
        }
    }
    sum
}

/// One NF4 value by testing the code's bits one at a time, as bitsandbytes' `dDequantizeNF4` did before its table.
#[inline]
fn branchy_value(code: u8) -> f32 {
    if code & 0b1000 != 0 {
        if code & 0b0100 != 0 {
            if code & 0b0010 != 0 {
                if code & 0b0001 != 0 {
                    1.0
                } else {
                    0.722_956_84
                }
            } else if code & 0b0001 != 0 {
                0.562_617
            } else {
                0.440_709_83
            }
        } else if code & 0b0010 != 0 {
            if code & 0b0001 != 0 {
                0.337_915_24
            } else {
                0.246_112_3
            }
        } else if code & 0b0001 != 0 {
            0.160_930_2
        } else {
            0.079_580_3
        }
    } else if code & 0b0100 != 0 {
        if code & 0b0010 != 0 {
            if code & 0b0001 != 0 {
                0.0
            } else {
                -0.091_050_036
            }
        } else if code & 0b0001 != 0 {
            -0.184_773_43
        } else {
            -0.284_441_38
        }
    } else if code & 0b0010 != 0 {
        if code & 0b0001 != 0 {
            -0.394_917_5
        } else {
            -0.525_073_05
        }
    } else if code & 0b0001 != 0 {
        -0.696_192_8
    } else {
        -1.0
    }
}

/// The baseline: each weight decoded on its own (a branch tree, then `· absmax`), then multiplied by its f32
/// activation — dequantize-then-dot with no table and nothing hoisted out of the element loop.
pub fn vec_dot_branchy(w: &[u8], a: &[u8]) -> f32 {
    let row = Row::new(w);
    let mut sum = 0.0f32;
    for (b, codes) in row.codes.chunks_exact(CODE_BYTES).enumerate() {
        let absmax = row.absmax(b);
        for (j, &byte) in codes.iter().enumerate() {
            let i = b * BLOCK + 2 * j;
            sum += branchy_value(byte >> 4) * absmax * act(a, i);
            sum += branchy_value(byte & 0x0F) * absmax * act(a, i + 1);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_tree_is_the_table() {
        for code in 0..16u8 {
            assert_eq!(
                branchy_value(code).to_bits(),
                CODES[code as usize].to_bits()
            );
        }
    }
}
