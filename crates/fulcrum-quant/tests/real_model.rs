//! Rows of a real GGUF file (Gemma 3 270M, Q4_K_M mix) dequantize to the values llama.cpp's gguf-py computes, and
//! every kernel agrees on them. Skipped when the model has not been downloaded.

mod common;

use common::{activation_row, activation_values, dequantized, magnitude, Rng};
use fulcrum_quant::{row_bytes, scalar, vec_dot, vec_dot_type, GgmlType};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// (name, type id, first dimension, absolute offset of its data) for every tensor: a minimal GGUF v3 header walk.
fn tensor_table(file: &mut BufReader<File>) -> std::io::Result<Vec<(String, u32, u64, u64)>> {
    fn u32_(f: &mut impl Read) -> std::io::Result<u32> {
        let mut b = [0; 4];
        f.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_(f: &mut impl Read) -> std::io::Result<u64> {
        let mut b = [0; 8];
        f.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn string(f: &mut impl Read) -> std::io::Result<String> {
        let mut b = vec![0; u64_(f)? as usize];
        f.read_exact(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    /// Skips one metadata value of type `ty` (GGUF spec: 0–7 and 10–12 scalars, 8 string, 9 array).
    fn skip(f: &mut BufReader<File>, ty: u32) -> std::io::Result<()> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => u64_(f)? as i64,
            9 => {
                let (inner, n) = (u32_(f)?, u64_(f)?);
                for _ in 0..n {
                    skip(f, inner)?;
                }
                0
            }
            _ => return Err(std::io::Error::other(format!("unknown metadata type {ty}"))),
        };
        f.seek_relative(size)
    }
    let mut magic = [0; 4];
    file.read_exact(&mut magic)?;
    assert_eq!(&magic, b"GGUF");
    let _version = u32_(file)?;
    let (tensors, kvs) = (u64_(file)?, u64_(file)?);
    let mut alignment = 32u64;
    for _ in 0..kvs {
        let key = string(file)?;
        let ty = u32_(file)?;
        if key == "general.alignment" && ty == 4 {
            alignment = u32_(file)? as u64;
        } else {
            skip(file, ty)?;
        }
    }
    let mut table = Vec::new();
    for _ in 0..tensors {
        let name = string(file)?;
        let dims: Vec<u64> = (0..u32_(file)?)
            .map(|_| u64_(file))
            .collect::<Result<_, _>>()?;
        let ty = u32_(file)?;
        table.push((name, ty, dims[0], u64_(file)?));
    }
    let data_start = file.stream_position()?.div_ceil(alignment) * alignment;
    Ok(table
        .into_iter()
        .map(|(n, t, d, o)| (n, t, d, o + data_start))
        .collect())
}

#[test]
fn gemma3_rows_match_gguf_py_and_kernels_agree() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let path = std::path::Path::new(&home).join(".cache/fulcrum/models/gemma3-270m.gguf");
    let Ok(file) = File::open(&path) else {
        eprintln!("skipping: {} not found", path.display());
        return;
    };
    let mut file = BufReader::new(file);
    let table = tensor_table(&mut file).expect("header walk");
    // Second row of each tensor at indices 0, 1, 16, 17, 31, 161, 200, 255, from gguf-py's `quants.dequantize`.
    let golden: [(&str, GgmlType, [f64; 8]); 4] = [
        (
            "token_embd.weight",
            GgmlType::Q8_0,
            [
                0.022817612,
                -0.061118603,
                -0.019557953,
                -0.008964062,
                0.070082664,
                0.018945694,
                -0.093744278,
                -0.017195702,
            ],
        ),
        (
            "blk.0.attn_k.weight",
            GgmlType::Q5_0,
            [
                0.0037994385,
                -0.007598877,
                -0.0037994385,
                -0.030395508,
                0.041793823,
                0.03173828,
                0.015411377,
                -0.004791259,
            ],
        ),
        (
            "blk.0.attn_output.weight",
            GgmlType::Q4_K,
            [
                0.029732823,
                -0.102198601,
                0.053720355,
                -0.006248474,
                -0.066217303,
                -0.085976601,
                -0.043300151,
                -0.034078836,
            ],
        ),
        (
            "blk.0.ffn_down.weight",
            GgmlType::Q6_K,
            [
                -0.0033416748,
                -0.0083541870,
                0.0091896057,
                0.0367584229,
                0.0183792114,
                0.0,
                -0.0300750732,
                0.0225693583,
            ],
        ),
    ];
    let mut rng = Rng::new(3);
    for (name, ty, expected) in golden {
        let (_, id, n, offset) = table.iter().find(|t| t.0 == name).expect("tensor present");
        assert_eq!(GgmlType::from_id(*id), Some(ty), "{name}");
        let n = *n as usize;
        let bytes = row_bytes(ty, n);
        let mut rows = vec![0u8; 2 * bytes];
        file.seek(SeekFrom::Start(*offset)).unwrap();
        file.read_exact(&mut rows).unwrap();
        let w_row = &rows[bytes..];
        let w = dequantized(ty, w_row, n);
        for (i, want) in [0, 1, 16, 17, 31, 161, 200, 255].into_iter().zip(expected) {
            assert!(
                (w[i] as f64 - want).abs() <= 1e-6,
                "{name}[{i}] = {}, gguf-py says {want}",
                w[i]
            );
        }
        let act = activation_row(ty, &activation_values(&mut rng, n, 0));
        let a = dequantized(vec_dot_type(ty), &act, n);
        let exact: f64 = w.iter().zip(&a).map(|(&x, &y)| x as f64 * y as f64).sum();
        let (reference, fast) = (
            scalar::vec_dot(ty, n, w_row, &act) as f64,
            vec_dot(ty, n, w_row, &act) as f64,
        );
        let bound = 1e-4 * magnitude(&w, &a);
        assert!(
            (reference - exact).abs() <= bound,
            "{name}: scalar {reference} vs dequantized {exact}"
        );
        assert!(
            (fast - reference).abs() <= bound,
            "{name}: dispatched {fast} vs scalar {reference}"
        );
    }
}
