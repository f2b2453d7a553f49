//! Shared test inputs: a tiny seeded RNG and generators of weight and activation rows, random and adversarial.
#![allow(dead_code)]

use fulcrum_quant::{dequantize_row, quantize_row, row_bytes, vec_dot_type, GgmlType};

/// Every type usable as weights.
pub const WEIGHT_TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// xorshift64* — deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u = self.uniform().max(1e-7);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `n` values drawn for activation mode `mode` (0..6): Gaussian at three scales, zeros, all at ± the same
/// magnitude (every code at ±127), and huge alternating values.
pub fn activation_values(rng: &mut Rng, n: usize, mode: u32) -> Vec<f32> {
    match mode {
        0 => (0..n).map(|_| rng.normal()).collect(),
        1 => (0..n).map(|_| rng.normal() * 1e-3).collect(),
        2 => (0..n).map(|_| rng.normal() * 1e3).collect(),
        3 => vec![0.0; n],
        4 => (0..n)
            .map(|i| {
                if (rng.next_u64() >> 7) & 1 == 0 || i % 7 == 0 {
                    5.0
                } else {
                    -5.0
                }
            })
            .collect(),
        _ => (0..n)
            .map(|i| if i % 2 == 0 { 6.0e4 } else { -6.0e4 })
            .collect(),
    }
}

/// An activation row for weights of type `w`, quantized as the kernels expect.
pub fn activation_row(w: GgmlType, values: &[f32]) -> Vec<u8> {
    let ty = vec_dot_type(w);
    let mut row = vec![0u8; row_bytes(ty, values.len())];
    quantize_row(ty, values, &mut row);
    row
}

/// Byte offsets of the f16 scale fields in one block of a block-quantized type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// A weight row for mode `mode` (0..5): quantized Gaussian data, random bytes with sane scales (every code pattern),
/// random bytes with the largest f16 scales, all bits set, all bits clear (scales set to 1).
pub fn weight_row(rng: &mut Rng, ty: GgmlType, n: usize, mode: u32) -> Vec<u8> {
    let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if mode == 0 || float {
        let scale = [1.0, 1.0, 5.0e3, 1.0, 1e-4][mode as usize % 5];
        let values: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
        let mut row = vec![0u8; row_bytes(ty, n)];
        quantize_row(ty, &values, &mut row);
        return row;
    }
    let mut row = match mode {
        1 | 2 => rng.bytes(row_bytes(ty, n)),
        3 => vec![0xFF; row_bytes(ty, n)],
        _ => vec![0x00; row_bytes(ty, n)],
    };
    for block in row.chunks_exact_mut(ty.type_size()) {
        if ty == GgmlType::Q8_K {
            let d: f32 = if mode == 2 {
                1e4
            } else {
                rng.uniform() * 0.01 + 1e-4
            };
            block[..4].copy_from_slice(&d.to_le_bytes());
            continue;
        }
        for &at in f16_fields(ty) {
            let d = match mode {
                1 => (rng.uniform() - 0.3) * 0.1,
                2 => 65504.0,
                _ => 1.0,
            };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        }
    }
    row
}

/// Dequantizes a row of `n` elements.
pub fn dequantized(ty: GgmlType, row: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dequantize_row(ty, row, &mut out);
    out
}

/// A bound on the partial sums a kernel adds up: Σ (|w_i| + max|w|)·|a_i|. Block offsets (m, dmin·min) never
/// exceed the largest weight magnitude, so every partial product is bounded by this.
pub fn magnitude(w: &[f32], a: &[f32]) -> f64 {
    let max_w = w.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    w.iter()
        .zip(a)
        .map(|(x, y)| (x.abs() as f64 + max_w) * y.abs() as f64)
        .sum()
}
