//! Hand-built blocks with known values: these pin down nibble order, bit positions and scale packing, which the
//! agreement tests cannot (a layout bug made consistently in every kernel would pass them).

use fulcrum_quant::{dequantize_row, quantize_row, row_bytes, scalar, GgmlType};

const F16_ONE: [u8; 2] = [0x00, 0x3C];
const F16_HALF: [u8; 2] = [0x00, 0x38];
const F16_TWO: [u8; 2] = [0x00, 0x40];
const F16_MINUS_ONE: [u8; 2] = [0x00, 0xBC];

fn dequantize(ty: GgmlType, block: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; ty.block_size()];
    dequantize_row(ty, block, &mut out);
    let mut reference = vec![0.0; ty.block_size()];
    scalar::dequantize_row(ty, block, &mut reference);
    assert_eq!(out, reference);
    out
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; row_bytes(ty, x.len())];
    quantize_row(ty, x, &mut out);
    out
}

#[test]
fn q4_0_low_nibble_is_element_j_high_is_j_plus_16() {
    let mut block = [0x88u8; 18];
    block[..2].copy_from_slice(&F16_ONE);
    block[2] = 0x93; // element 0: 3 − 8, element 16: 9 − 8
    let y = dequantize(GgmlType::Q4_0, &block);
    assert_eq!((y[0], y[16], y[1], y[17]), (-5.0, 1.0, 0.0, 0.0));
}

#[test]
fn q4_1_scale_then_offset() {
    let mut block = [0u8; 20];
    block[..2].copy_from_slice(&F16_HALF);
    block[2..4].copy_from_slice(&F16_MINUS_ONE);
    block[4 + 1] = 0xF0; // element 1: 0, element 17: 15
    let y = dequantize(GgmlType::Q4_1, &block);
    assert_eq!((y[1], y[17], y[0]), (-1.0, 6.5, -1.0));
}

#[test]
fn q5_0_fifth_bit_j_of_qh() {
    let mut block = [0u8; 22];
    block[..2].copy_from_slice(&F16_TWO);
    block[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
    block[6] = 0x01; // element 0 low bits 1, element 16 low bits 0
    block[7] = 0x30; // element 1 low bits 0, element 17 low bits 3
    let y = dequantize(GgmlType::Q5_0, &block);
    // element 0: (1 | 16) − 16 = 1; element 16: 0 − 16; element 1: −16; element 17: (3 | 16) − 16 = 3.
    assert_eq!((y[0], y[16], y[1], y[17]), (2.0, -32.0, -32.0, 6.0));
}

#[test]
fn q5_1_fifth_bit_and_offset() {
    let mut block = [0u8; 24];
    block[..2].copy_from_slice(&F16_ONE);
    block[2..4].copy_from_slice(&F16_HALF);
    block[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
    block[8 + 15] = 0x20; // element 31: low bits 2, fifth bit set → 18
    let y = dequantize(GgmlType::Q5_1, &block);
    assert_eq!((y[31], y[15], y[0]), (18.5, 0.5, 0.5));
}

#[test]
fn q8_0_and_q8_k_codes() {
    let mut block = [0u8; 34];
    block[..2].copy_from_slice(&F16_HALF);
    block[2 + 5] = (-4i8) as u8;
    assert_eq!(dequantize(GgmlType::Q8_0, &block)[5], -2.0);

    let mut block = [0u8; 292];
    block[..4].copy_from_slice(&0.25f32.to_le_bytes());
    block[4 + 200] = (-7i8) as u8;
    assert_eq!(dequantize(GgmlType::Q8_K, &block)[200], -1.75);
}

/// Scales and minimums of sub-blocks 0 and 5 of a Q4_K/Q5_K block, packed by hand (`get_scale_min_k4`):
/// sub-block 0: scale 3, min 4; sub-block 5: scale 37 = 0b10_0101, min 50 = 0b11_0010.
fn k4_scales() -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0] = 3;
    s[4] = 4;
    s[9] = 0x25; // low 4 bits: scale 5 (low nibble), min 2 (high nibble)
    s[1] = 2 << 6; // top 2 bits of scale 5
    s[5] = 3 << 6; // top 2 bits of min 5
    s
}

#[test]
fn q4_k_scale_packing_and_nibbles() {
    let mut block = [0u8; 144];
    block[..2].copy_from_slice(&F16_ONE);
    block[2..4].copy_from_slice(&F16_HALF);
    block[4..16].copy_from_slice(&k4_scales());
    block[16] = 0x02; // element 0 (sub-block 0, low nibble of qs[0])
    block[16 + 65] = 0x70; // element 161 = 64·2 + 32 + 1 (sub-block 5, high nibble of qs[65])
    let y = dequantize(GgmlType::Q4_K, &block);
    assert_eq!(y[0], 3.0 * 2.0 - 0.5 * 4.0);
    assert_eq!(y[161], 37.0 * 7.0 - 0.5 * 50.0);
    assert_eq!(y[129], 0.0); // element 129 is sub-block 4: scale and min 0
}

#[test]
fn q5_k_fifth_bit_is_bit_2j_plus_h() {
    let mut block = [0u8; 176];
    block[..2].copy_from_slice(&F16_ONE);
    block[2..4].copy_from_slice(&F16_HALF);
    block[4..16].copy_from_slice(&k4_scales());
    block[16 + 1] = 1 << 5; // qh[1], bit 2·2 + 1: fifth bit of element 161
    block[48 + 65] = 0x70;
    let y = dequantize(GgmlType::Q5_K, &block);
    assert_eq!(y[161], 37.0 * 23.0 - 0.5 * 50.0);
    assert_eq!(y[0], -0.5 * 4.0);
}

#[test]
fn q6_k_code_bits_and_scales() {
    let mut block = [0u8; 210];
    // Element 200 = 128·1 + 32·2 + 8: low bits in the high nibble of ql[64 + 8], high bits 4..5 of qh[32 + 8].
    block[72] = 0xA0;
    block[128 + 40] = 2 << 4;
    block[192 + 12] = (-3i8) as u8; // scale of sub-block 200/16 = 12
    block[192] = 1; // scale of sub-block 0
    block[208..210].copy_from_slice(&F16_HALF);
    let y = dequantize(GgmlType::Q6_K, &block);
    assert_eq!(y[200], 0.5 * -3.0 * (42.0 - 32.0));
    assert_eq!(y[201], 0.5 * -3.0 * -32.0);
    assert_eq!(y[0], 0.5 * 1.0 * -32.0);
}

#[test]
fn q8_0_scales_by_127_over_amax_and_rounds_half_to_even() {
    // ggml's AVX2 quantizer multiplies by 127/amax and rounds ties to even; llama.cpp runs that one here.
    let mut x = [0.0f32; 32];
    x[0] = 63.5; // amax → d = 0.5, scale 2
    x[1] = 0.25; // 0.5 → 0
    x[2] = -0.75; // −1.5 → −2
    x[3] = 1.25; // 2.5 → 2
    let q = quantize(GgmlType::Q8_0, &x);
    assert_eq!(&q[..2], &F16_HALF);
    assert_eq!(&q[2..6], &[127, 0, (-2i8) as u8, 2]);
}

#[test]
fn q8_k_rounds_half_to_even_and_fills_bsums() {
    let mut x = [0.0f32; 256];
    x[0] = -127.0; // signed max → iscale = 1, d = 1
    x[1] = 2.5; // → 2
    x[2] = 3.5; // → 4
    x[16] = -0.5; // → 0
    let q = quantize(GgmlType::Q8_K, &x);
    assert_eq!(f32::from_le_bytes(q[..4].try_into().unwrap()), 1.0);
    assert_eq!(&q[4..7], &[(-127i8) as u8, 2, 4]);
    assert_eq!(q[4 + 16], 0);
    assert_eq!(i16::from_le_bytes([q[260], q[261]]), -127 + 2 + 4);
}

#[test]
fn q4_0_quantizer_truncates_and_clamps() {
    let mut x = [0.0f32; 32];
    x[0] = -8.0; // signed max → d = 1
    x[1] = 3.0; // 11.5 → 11
    x[17] = 7.6; // 16.1 → clamped to 15
    let q = quantize(GgmlType::Q4_0, &x);
    assert_eq!(&q[..2], &F16_ONE);
    assert_eq!(q[2] & 0x0F, 0);
    assert_eq!(q[3], 11 | (15 << 4));
}

#[test]
fn q8_1_sum_field() {
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = -27.0;
    let q = quantize(GgmlType::Q8_1, &x);
    assert_eq!(&q[..2], &F16_ONE);
    assert_eq!(half::f16::from_le_bytes([q[2], q[3]]).to_f32(), 100.0);
}
