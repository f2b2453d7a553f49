use std::fs;
use std::path::PathBuf;

use super::*;
use crate::testing::{f32_bytes, listing, tiny_tensors, write_tiny_model, TestDir};

fn info(name: &str, dims: &[u64], ty: GgmlType) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dims: dims.to_vec(),
        ty,
        offset: 0,
        size_bytes: 0,
    }
}

#[test]
fn weights_go_to_the_target_and_the_rest_to_f32() {
    let nf4 = GgmlType::NF4;
    let q5 = GgmlType::Q5_0;
    assert_eq!(
        output_type(&info("blk.0.attn_q.weight", &[640, 1024], q5), nf4),
        nf4
    );
    assert_eq!(
        output_type(&info("token_embd.weight", &[896, 151936], q5), nf4),
        nf4
    );
    assert_eq!(
        output_type(&info("blk.0.attn_norm.weight", &[640], GgmlType::F32), nf4),
        GgmlType::F32
    );
    assert_eq!(
        output_type(&info("blk.0.attn_q.bias", &[896], GgmlType::F16), nf4),
        GgmlType::F32
    );
    // Rows NF4 cannot hold (shorter than 512, or not whole blocks of 64) fall back to Q8_0, then F32.
    assert_eq!(
        output_type(&info("blk.0.x.weight", &[256, 8], q5), nf4),
        GgmlType::Q8_0
    );
    assert_eq!(
        output_type(&info("blk.0.x.weight", &[544, 8], q5), nf4),
        GgmlType::Q8_0
    );
    assert_eq!(
        output_type(&info("blk.0.x.weight", &[100, 8], GgmlType::F16), nf4),
        GgmlType::F32
    );
    assert_eq!(
        output_type(&info("positions", &[4], GgmlType::I32), nf4),
        GgmlType::I32
    );
    assert_eq!(
        output_type(
            &info("blk.0.attn_q.weight", &[640, 1024], q5),
            GgmlType::Q4_0
        ),
        GgmlType::Q4_0
    );
}

/// The row-by-row encoding of `values` as `ty`.
fn encoded(ty: GgmlType, n: usize, values: &[f32]) -> Vec<u8> {
    let row = fulcrum_quant::row_bytes(ty, n);
    let mut out = vec![0u8; values.len() / n * row];
    for (src, dst) in values.chunks_exact(n).zip(out.chunks_exact_mut(row)) {
        fulcrum_quant::quantize_row(ty, src, dst);
    }
    out
}

/// Records what `requantize` reported.
#[derive(Default)]
struct Recorded {
    total: Option<usize>,
    tensors: Vec<(usize, String)>,
}

impl Progress for Recorded {
    fn start(&mut self, tensors: usize) {
        self.total = Some(tensors);
    }

    fn tensor(&mut self, done: usize, name: &str) {
        self.tensors.push((done, name.to_owned()));
    }
}

fn options(target: Target) -> Options {
    Options {
        target,
        threads: 2,
        replace: false,
    }
}

#[test]
fn a_tiny_model_is_retyped_tensor_by_tensor_and_reads_back() {
    let dir = TestDir::new("requantize");
    let (input, output) = (dir.0.join("in.gguf"), dir.0.join("out.gguf"));
    let tensors = tiny_tensors();
    write_tiny_model(&input, &tensors);

    let mut progress = Recorded::default();
    let summary =
        requantize(&input, &output, &options(Target::Q4_0), &mut progress).expect("requantize");
    assert_eq!(
        listing(&dir.0),
        ["in.gguf", "out.gguf"],
        "no temporary file"
    );
    assert_eq!(progress.total, Some(4));
    let names: Vec<(usize, &str)> = tensors.iter().enumerate().map(|(i, t)| (i, t.0)).collect();
    let reported: Vec<(usize, &str)> = progress
        .tensors
        .iter()
        .map(|(i, n)| (*i, n.as_str()))
        .collect();
    assert_eq!(reported, names);

    let file = GgufFile::open(&output).expect("output reads back");
    assert_eq!(summary.size, fs::metadata(&output).expect("stat").len());
    assert_eq!(
        summary.counts,
        [(GgmlType::Q4_0, 2), (GgmlType::F32, 2)],
        "the 64- and 512-wide matrices become Q4_0; the norm and the 48-wide rows stay F32"
    );
    assert_eq!(file.get("general.file_type"), Some(&Value::U32(2)));
    assert_eq!(
        file.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    for (name, dims, values) in &tensors {
        let t = file.tensor(name).expect("tensor kept");
        assert_eq!(&t.dims, dims);
        let expected = match t.ty {
            GgmlType::F32 => f32_bytes(values),
            ty => encoded(ty, dims[0] as usize, values),
        };
        assert_eq!(file.tensor_data(t), &expected[..], "{name} as {}", t.ty);
    }
}

#[test]
fn nf4_falls_back_to_q8_0_for_short_rows_and_drops_the_file_type() {
    let dir = TestDir::new("requantize-nf4");
    let (input, output) = (dir.0.join("in.gguf"), dir.0.join("out.gguf"));
    write_tiny_model(&input, &tiny_tensors());
    requantize(&input, &output, &options(Target::Nf4), &mut Silent).expect("requantize");
    let file = GgufFile::open(&output).expect("output reads back");
    let ty = |name| file.tensor(name).map(|t| t.ty);
    assert_eq!(ty("blk.0.ffn_up.weight"), Some(GgmlType::NF4));
    assert_eq!(ty("blk.0.attn_q.weight"), Some(GgmlType::Q8_0));
    assert_eq!(ty("blk.0.odd.weight"), Some(GgmlType::F32));
    assert_eq!(
        file.get("general.file_type"),
        None,
        "NF4 has no llama.cpp file type"
    );
}

#[test]
fn the_input_and_an_existing_output_are_never_overwritten() {
    let dir = TestDir::new("requantize-refusals");
    let input = dir.0.join("in.gguf");
    write_tiny_model(&input, &tiny_tensors());
    let before = fs::read(&input).expect("read");
    for replace in [false, true] {
        let options = Options {
            replace,
            ..options(Target::Q8_0)
        };
        let err = requantize(&input, &input, &options, &mut Silent).expect_err("same file");
        assert!(matches!(err, RequantizeError::SameFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains("choose another output path"),
            "{err}"
        );
    }
    assert_eq!(fs::read(&input).expect("read"), before);

    let existing = dir.0.join("existing.gguf");
    fs::write(&existing, b"keep me").expect("write");
    let err =
        requantize(&input, &existing, &options(Target::Q8_0), &mut Silent).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(fs::read(&existing).expect("read"), b"keep me");
    let replace = Options {
        replace: true,
        ..options(Target::Q8_0)
    };
    requantize(&input, &existing, &replace, &mut Silent).expect("replaced when allowed");
    assert!(GgufFile::open(&existing).is_ok());

    let missing: PathBuf = dir.0.join("no-such-dir").join("out.gguf");
    let err =
        requantize(&input, &missing, &options(Target::Q8_0), &mut Silent).expect_err("no folder");
    assert!(err.to_string().contains("cannot create"), "{err}");
    assert_eq!(listing(&dir.0), ["existing.gguf", "in.gguf"]);
}

#[test]
fn a_non_finite_weight_fails_with_its_tensor_and_row_and_leaves_nothing() {
    let dir = TestDir::new("requantize-nan");
    let (input, output) = (dir.0.join("in.gguf"), dir.0.join("out.gguf"));
    let mut tensors = tiny_tensors();
    tensors[3].2[512 + 7] = f32::NAN;
    write_tiny_model(&input, &tensors);
    let err =
        requantize(&input, &output, &options(Target::Q4_0), &mut Silent).expect_err("NaN weight");
    match &err {
        RequantizeError::NonFinite { tensor, row, .. } => {
            assert_eq!((tensor.as_str(), *row), ("blk.0.ffn_up.weight", 1));
        }
        other => panic!("expected a non-finite weight, got {other:?}"),
    }
    assert!(err.to_string().contains("finite"), "{err}");
    assert_eq!(listing(&dir.0), ["in.gguf"], "no output or temporary file");
}
