//! NF4: bitsandbytes' 4-bit NormalFloat (papers.md §1.2) in a row-self-contained layout (docs/formats.md).
//!
//! Weights are coded in blocks of 64 as `w = CODES[code] · absmax`, two codes per byte, the first element in the high
//! nibble. The block absmax values are double-quantized as bitsandbytes does: `absmax = DYNAMIC_MAP[q] · scale + offset`,
//! with 8-bit codes `q` into the signed dynamic map, one f32 `scale` per group of 256 absmax values and one f32 `offset`
//! (the mean absmax). Here the groups and the offset belong to one row rather than to the whole tensor, so a row decodes
//! alone. A row of `nb` blocks (`34·nb` bytes, GGUF's 64-element block of 34 bytes) is:
//!
//! | bytes | content |
//! |---|---|
//! | `0..4` | `offset`, f32 little-endian |
//! | `4..4+4·G` | `scale[g]` for the `G = ⌈nb/256⌉` groups, f32 little-endian |
//! | `4+4·G..nb` | zero |
//! | `nb..2·nb` | `q[b]`, the absmax code of block `b` |
//! | `2·nb..34·nb` | the codes, 32 bytes per block, `byte j = code(2j) << 4 \| code(2j+1)` |
//!
//! The header must fit in the first `nb` bytes, so rows hold at least [`MIN_BLOCKS`] blocks (512 weights).

/// Weights per block (bitsandbytes' default `blocksize` for 4-bit).
pub const BLOCK: usize = 64;
/// Bytes of packed codes per block.
pub const CODE_BYTES: usize = BLOCK / 2;
/// Absmax values per second-level scale (bitsandbytes' nested `blocksize`).
pub const GROUP: usize = 256;
/// The fewest blocks a row may have: its header (offset and one scale, 8 bytes) takes one byte per block.
pub const MIN_BLOCKS: usize = 8;
/// Bytes per block in the file: codes, the absmax code and one header byte.
pub const BLOCK_BYTES: usize = CODE_BYTES + 2;

/// The 16 NF4 values, by code (bitsandbytes `get_4bit_type("nf4")`; the literals are exact f32 values).
pub const CODES: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The NF4 values as int8, `round(127 · CODES[i])`: the table of the int8 dot path (the weights it sees are these
/// over 127, within 0.4% of the block absmax of the exact values).
pub const CODES_I8: [i8; 16] = [
    -127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127,
];

/// The factor from a block absmax to the weight of one step of [`CODES_I8`] (1/127 in f32).
pub const INT8_SCALE: f32 = 1.0 / 127.0;

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`), sorted: 127 negative values, 0, 127
/// positive values below 1, then 1.
pub static DYNAMIC_MAP: [f32; 256] = dynamic_map();

/// `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)` in scalar f32 arithmetic: for exponent
/// i = 0..7, the midpoints of `linspace(0.1, 1, 2^i + 1)` times 10^(i−6), with both signs; then 0 and 1; sorted.
const fn dynamic_map() -> [f32; 256] {
    // 10^(i-6) as Python floats, cast to f32 as PyTorch casts a scalar operand.
    const POWERS: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = [0.0f32; 256];
    let mut len = 0;
    let mut i = 0;
    while i < 7 {
        let steps = (1usize << i) + 1;
        let scale = POWERS[i] as f32;
        let mut k = 0;
        while k + 1 < steps {
            let mean = (linspace(steps, k) + linspace(steps, k + 1)) / 2.0;
            data[len] = scale * mean;
            data[len + 1] = -(scale * mean);
            len += 2;
            k += 1;
        }
        i += 1;
    }
    data[len] = 0.0;
    data[len + 1] = 1.0;
    // Insertion sort (const fn): 256 values.
    let mut a = 1;
    while a < 256 {
        let mut b = a;
        while b > 0 && data[b - 1] > data[b] {
            let t = data[b - 1];
            data[b - 1] = data[b];
            data[b] = t;
            b -= 1;
        }
        a += 1;
    }
    data
}

/// Element `k` of `torch.linspace(0.1, 1, steps)` in f32, as its scalar kernel computes it (from the start for the
/// first half, from the end for the second).
const fn linspace(steps: usize, k: usize) -> f32 {
    let (start, end) = (0.1f32, 1.0f32);
    let step = (end - start) / (steps - 1) as f32;
    if k < steps / 2 {
        start + step * k as f32
    } else {
        end - step * (steps - k - 1) as f32
    }
}

/// The NF4 code nearest to `x` (a weight divided by its block absmax): bitsandbytes' decision tree over the
/// midpoints between neighbouring values.
pub fn nearest_code(x: f32) -> u8 {
    if x > 0.039_790_15 {
        if x > 0.389_312_54 {
            if x > 0.642_786_9 {
                if x > 0.861_478_45 {
                    15
                } else {
                    14
                }
            } else if x > 0.501_663_45 {
                13
            } else {
                12
            }
        } else if x > 0.203_521_25 {
            if x > 0.292_013_77 {
                11
            } else {
                10
            }
        } else if x > 0.120_255_25 {
            9
        } else {
            8
        }
    } else if x > -0.339_679_43 {
        if x > -0.137_911_73 {
            if x > -0.045_525_018 {
                7
            } else {
                6
            }
        } else if x > -0.234_607_4 {
            5
        } else {
            4
        }
    } else if x > -0.610_632_9 {
        if x > -0.459_995_27 {
            3
        } else {
            2
        }
    } else if x > -0.848_096_4 {
        1
    } else {
        0
    }
}

/// The index of the [`DYNAMIC_MAP`] entry nearest to `x` (ties to the lower entry).
pub fn nearest_dynamic(x: f32) -> u8 {
    let upper = DYNAMIC_MAP.partition_point(|&v| v < x).min(255);
    if upper > 0 && (x - DYNAMIC_MAP[upper - 1]) <= (DYNAMIC_MAP[upper] - x) {
        (upper - 1) as u8
    } else {
        upper as u8
    }
}

/// Groups of absmax values in a row of `blocks` blocks.
pub fn groups(blocks: usize) -> usize {
    blocks.div_ceil(GROUP)
}

/// Bytes of the header (offset and scales) of a row of `blocks` blocks.
pub fn header_len(blocks: usize) -> usize {
    4 + 4 * groups(blocks)
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// One NF4 row, split into its parts.
pub struct Row<'a> {
    /// The mean of the row's absmax values.
    pub offset: f32,
    /// The whole header (offset, scales, zero padding).
    header: &'a [u8],
    /// One dynamic-map code per block.
    pub absmax_codes: &'a [u8],
    /// 32 bytes of packed codes per block.
    pub codes: &'a [u8],
}

impl<'a> Row<'a> {
    /// Splits a row of `34·nb` bytes.
    ///
    /// # Panics
    /// If the length is not a whole number of blocks or below [`MIN_BLOCKS`] blocks: a caller bug, since
    /// [`crate::check_weights`] rejects such rows when a model is loaded.
    #[inline]
    pub fn new(row: &'a [u8]) -> Row<'a> {
        let blocks = row.len() / BLOCK_BYTES;
        assert!(
            row.len().is_multiple_of(BLOCK_BYTES) && blocks >= MIN_BLOCKS,
            "an NF4 row of {} bytes is not {MIN_BLOCKS} or more whole blocks",
            row.len()
        );
        let (header, rest) = row.split_at(blocks);
        let (absmax_codes, codes) = rest.split_at(blocks);
        Row {
            offset: f32_at(header, 0),
            header,
            absmax_codes,
            codes,
        }
    }

    /// Number of 64-weight blocks.
    #[inline]
    pub fn blocks(&self) -> usize {
        self.absmax_codes.len()
    }

    /// The second-level scale of group `g`.
    #[inline]
    pub fn scale(&self, g: usize) -> f32 {
        f32_at(self.header, 4 + 4 * g)
    }

    /// The absmax of block `b`: `DYNAMIC_MAP[q] · scale + offset`, a product and a sum rounded separately, as
    /// bitsandbytes' `dequantize_blockwise` followed by `absmax += offset` computes it.
    #[inline]
    pub fn absmax(&self, b: usize) -> f32 {
        DYNAMIC_MAP[self.absmax_codes[b] as usize] * self.scale(b / GROUP) + self.offset
    }

    /// Why the header is invalid, if it is: a non-finite offset or scale, or non-zero padding.
    pub fn check(&self) -> Result<(), String> {
        let groups = groups(self.blocks());
        if !self.offset.is_finite() {
            return Err(format!("absmax offset {} is not finite", self.offset));
        }
        if let Some(g) = (0..groups).find(|&g| !self.scale(g).is_finite()) {
            return Err(format!("absmax scale {g} is {}", self.scale(g)));
        }
        if self.header[header_len(self.blocks())..]
            .iter()
            .any(|&b| b != 0)
        {
            return Err("header padding is not zero".into());
        }
        Ok(())
    }
}

/// Encodes one row (a whole number of blocks, at least [`MIN_BLOCKS`]) as bitsandbytes' `quantize_4bit` with
/// `compress_statistics=True` does: codes from `x / absmax` of the exact block absmax, then the absmax values
/// double-quantized per row. An all-zero block gets code 7 (zero) rather than bitsandbytes' 0/0.
pub fn quantize(src: &[f32], dst: &mut [u8]) {
    let blocks = src.len() / BLOCK;
    assert!(
        src.len().is_multiple_of(BLOCK)
            && blocks >= MIN_BLOCKS
            && dst.len() == blocks * BLOCK_BYTES,
        "NF4 quantize: {} values into {} bytes",
        src.len(),
        dst.len()
    );
    let absmax: Vec<f32> = src
        .chunks_exact(BLOCK)
        .map(|x| x.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / blocks as f64) as f32;

    let (header, rest) = dst.split_at_mut(blocks);
    let (absmax_codes, codes) = rest.split_at_mut(blocks);
    header.fill(0);
    header[..4].copy_from_slice(&offset.to_le_bytes());
    for (g, group) in absmax.chunks(GROUP).enumerate() {
        let scale = group.iter().fold(0.0f32, |m, &a| m.max((a - offset).abs()));
        header[4 + 4 * g..8 + 4 * g].copy_from_slice(&scale.to_le_bytes());
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &a) in absmax_codes[g * GROUP..].iter_mut().zip(group) {
            *q = nearest_dynamic((a - offset) * inverse);
        }
    }
    for ((x, out), &a) in src
        .chunks_exact(BLOCK)
        .zip(codes.chunks_exact_mut(CODE_BYTES))
        .zip(&absmax)
    {
        let inverse = if a > 0.0 { 1.0 / a } else { 0.0 };
        for (byte, pair) in out.iter_mut().zip(x.chunks_exact(2)) {
            *byte = nearest_code(pair[0] * inverse) << 4 | nearest_code(pair[1] * inverse);
        }
    }
}

/// Expands one whole row: `w = CODES[code] · absmax` (bit-exact with bitsandbytes' `dequantize_4bit`).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    let row = Row::new(src);
    for (b, (codes, y)) in row
        .codes
        .chunks_exact(CODE_BYTES)
        .zip(dst.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let absmax = row.absmax(b);
        for (pair, &byte) in y.chunks_exact_mut(2).zip(codes) {
            pair[0] = CODES[(byte >> 4) as usize] * absmax;
            pair[1] = CODES[(byte & 0x0F) as usize] * absmax;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_has_bitsandbytes_shape() {
        let m = &DYNAMIC_MAP;
        assert!(m.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        // Smallest magnitude: f32(10^-6) · (0.1 + 1)/2; largest below 1: (0.1 + 63·0.9/64 + 1)/2. The bit patterns
        // of these and of m[200], m[10] come from an independent numpy float32 evaluation of the same formula.
        assert_eq!(m[128], (1e-6f64 as f32) * ((0.1f32 + 1.0) / 2.0));
        assert_eq!(m[128].to_bits(), 5.500_000_4e-7f32.to_bits());
        assert_eq!(m[126], -m[128]);
        assert_eq!(m[254], 0.992_968_74);
        assert_eq!(m[200].to_bits(), 0x3e6f_3333);
        assert_eq!(m[10], -0.852_343_74);
        assert_eq!(m[0], -m[254]);
        // Seven decades with 1, 2, 4, ..., 64 values each per sign.
        assert_eq!(m[128..255].iter().filter(|&&v| v < 1e-6).count(), 1);
        assert_eq!(m[128..255].iter().filter(|&&v| v >= 0.1).count(), 64);
    }

    #[test]
    fn codes_are_bitsandbytes_values() {
        // The decimal expansions bitsandbytes hardcodes, parsed as f32.
        let expected = [
            "-1.0",
            "-0.6961928009986877",
            "-0.5250730514526367",
            "-0.39491748809814453",
            "-0.28444138169288635",
            "-0.18477343022823334",
            "-0.09105003625154495",
            "0.0",
            "0.07958029955625534",
            "0.16093020141124725",
            "0.24611230194568634",
            "0.33791524171829224",
            "0.44070982933044434",
            "0.5626170039176941",
            "0.7229568362236023",
            "1.0",
        ];
        for (i, (c, e)) in CODES.iter().zip(expected).enumerate() {
            assert_eq!(c.to_bits(), e.parse::<f32>().unwrap().to_bits(), "code {i}");
            assert_eq!(c.to_bits(), (e.parse::<f64>().unwrap() as f32).to_bits());
            assert_eq!(CODES_I8[i], (c * 127.0).round() as i8);
        }
    }

    #[test]
    fn decision_tree_picks_the_nearest_code() {
        for k in 0..=20_000 {
            let x = -1.0 + k as f32 / 10_000.0;
            let best = (0..16)
                .min_by(|&a, &b| {
                    (CODES[a] - x)
                        .abs()
                        .partial_cmp(&(CODES[b] - x).abs())
                        .unwrap()
                })
                .unwrap();
            let got = nearest_code(x) as usize;
            assert!(
                (CODES[got] - x).abs() <= (CODES[best] - x).abs() + 1e-7,
                "x = {x}: code {got}, nearest {best}"
            );
        }
        assert_eq!(nearest_code(0.0), 7);
        assert_eq!(nearest_code(f32::NAN), 0);
    }

    #[test]
    fn nearest_dynamic_entry() {
        for (i, &v) in DYNAMIC_MAP.iter().enumerate() {
            assert_eq!(nearest_dynamic(v) as usize, i);
        }
        assert_eq!(nearest_dynamic(-2.0), 0);
        assert_eq!(nearest_dynamic(2.0), 255);
        assert_eq!(nearest_dynamic(0.999), 255);
    }

    #[test]
    fn round_trip_is_bit_exact_with_the_formula() {
        let n = 640;
        let src: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 64) as f32))
            .collect();
        let mut row = vec![0u8; n / BLOCK * BLOCK_BYTES];
        quantize(&src, &mut row);
        let mut out = vec![0.0f32; n];
        dequantize(&row, &mut out);
        let view = Row::new(&row);
        view.check().unwrap();
        for (i, (&w, &x)) in out.iter().zip(&src).enumerate() {
            let b = i / BLOCK;
            let byte = view.codes[i / 2];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
            let absmax = DYNAMIC_MAP[view.absmax_codes[b] as usize] * view.scale(0) + view.offset;
            assert_eq!(w.to_bits(), (CODES[code as usize] * absmax).to_bits());
            let exact_absmax = src[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(code, nearest_code(x / exact_absmax), "element {i}");
            assert!(
                (w - x).abs() <= 0.2 * exact_absmax,
                "element {i}: {w} vs {x}"
            );
        }
    }

    #[test]
    fn zero_row_decodes_to_zero() {
        let mut row = vec![0xAAu8; 8 * BLOCK_BYTES];
        quantize(&[0.0; 512], &mut row);
        let mut out = vec![1.0f32; 512];
        dequantize(&row, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
