//! The writer's files read back identically, and typed getters follow their conventions.

use fulcrum_gguf::writer::{to_bytes, GgufWriter, TensorSpec};
use fulcrum_gguf::{Array, GgmlType, GgufError, GgufFile, Value};

fn spec(name: &str, dims: &[u64], ty: GgmlType) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        dims: dims.to_vec(),
        ty,
    }
}

fn sample_metadata() -> Vec<(String, Value)> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.context_length".into(), Value::U64(4096)),
        ("small".into(), Value::U8(7)),
        ("negative".into(), Value::I32(-5)),
        ("big".into(), Value::U64(u64::MAX)),
        ("eps".into(), Value::F32(1e-6)),
        ("theta".into(), Value::F64(10000.0)),
        ("flag".into(), Value::Bool(true)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(strings(&["<s>", "▁a", "é"]))),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(Array::F32(vec![0.0, -1.5, 2.0])),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(vec![3, 1, 1])),
        ),
        ("types_u8".into(), Value::Array(Array::U8(vec![1, 2, 255]))),
        (
            "types_u64".into(),
            Value::Array(Array::U64(vec![1, u64::MAX])),
        ),
        (
            "nested".into(),
            Value::Array(Array::Array(vec![
                Array::Bool(vec![true]),
                Array::I16(vec![-1, 2]),
            ])),
        ),
    ]
}

#[test]
fn round_trip() {
    let metadata = sample_metadata();
    let q8 = [7u8; 2 * 34];
    let f32s: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tensors = [
        (spec("token_embd.weight", &[32, 2], GgmlType::Q8_0), &q8[..]),
        (spec("output_norm.weight", &[3], GgmlType::F32), &f32s[..]),
    ];
    let bytes = to_bytes(&metadata, &tensors).unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.metadata(), &metadata[..]);
    assert_eq!(file.tensors().len(), 2);
    for (spec, data) in &tensors {
        let t = file.tensor(&spec.name).unwrap();
        assert_eq!(t.dims, spec.dims);
        assert_eq!(t.ty, spec.ty);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(file.tensor_data(t), *data);
    }
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.row_len(), embd.n_rows(), embd.n_elements()),
        (32, 2, 64)
    );
    assert!(file.tensor("missing").is_none());
}

#[test]
fn getters_convert_and_name_the_key() {
    let bytes = to_bytes(&sample_metadata(), &[]).unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(file.get_u32("llama.block_count").unwrap(), Some(2));
    assert_eq!(file.get_u32("llama.context_length").unwrap(), Some(4096));
    assert_eq!(file.get_u64("small").unwrap(), Some(7));
    assert_eq!(file.get_i32("negative").unwrap(), Some(-5));
    assert_eq!(file.get_u32("absent").unwrap(), None);
    assert_eq!(file.get_f32("eps").unwrap(), Some(1e-6));
    assert_eq!(file.get_f32("theta").unwrap(), Some(10000.0));
    assert_eq!(file.get_bool("flag").unwrap(), Some(true));
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap(),
        ["<s>", "▁a", "é"]
    );
    assert_eq!(
        file.get_f32_array("tokenizer.ggml.scores")
            .unwrap()
            .unwrap(),
        [0.0, -1.5, 2.0]
    );
    assert_eq!(
        &*file
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap(),
        [3, 1, 1]
    );
    assert_eq!(
        &*file.get_i32_array("types_u8").unwrap().unwrap(),
        [1, 2, 255]
    );

    let err = file.get_u32("negative").unwrap_err();
    assert!(matches!(err, GgufError::OutOfRange { .. }), "{err}");
    assert!(err.to_string().contains("negative"));
    assert!(file.get_u32("big").is_err());
    assert!(file.get_i32_array("types_u64").is_err());
    let err = file.get_u32("general.architecture").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key 'general.architecture' has type string, expected u32"
    );
    let err = file.get_str_array("tokenizer.ggml.scores").unwrap_err();
    assert!(err.to_string().contains("array of f32"), "{err}");
    assert!(file.get_bool("small").is_err());
    assert!(file.get_str("flag").is_err());
    assert!(file.get_f32("flag").is_err());
    assert!(file.get_f32_array("tokenizer.ggml.tokens").is_err());
    assert!(file.get_i32_array("tokenizer.ggml.tokens").is_err());
    assert!(file.get_i32_array("nested").is_err());
}

#[test]
fn streaming_writer_enforces_order_and_sizes() {
    let specs = [
        spec("a", &[4], GgmlType::F32),
        spec("b", &[2], GgmlType::F32),
    ];
    let mut writer = GgufWriter::new(Vec::new(), &[], &specs).unwrap();
    assert!(writer.write_tensor("b", &[0; 8]).is_err());
    assert!(writer.write_tensor("a", &[0; 15]).is_err());
    writer.write_tensor("a", &[0; 16]).unwrap();
    let err = GgufWriter::new(Vec::new(), &[], &specs)
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(err.to_string().contains("'a' is next"), "{err}");
    writer.write_tensor("b", &[1; 8]).unwrap();
    assert!(writer.write_tensor("c", &[]).is_err());
    let bytes = writer.finish().unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(file.tensor_bytes("b").unwrap(), &[1; 8]);
}

#[test]
fn writer_refuses_what_the_reader_rejects() {
    let dup = [
        ("k".to_string(), Value::U8(1)),
        ("k".to_string(), Value::U8(2)),
    ];
    let err = to_bytes(&dup, &[]).unwrap_err();
    assert!(err.to_string().contains("'k' given twice"), "{err}");
    let bad_alignment = [("general.alignment".to_string(), Value::U32(24))];
    assert!(matches!(
        to_bytes(&bad_alignment, &[]),
        Err(GgufError::BadAlignment { .. })
    ));
    let deep = Array::Array(vec![Array::Array(vec![Array::U8(vec![])])]);
    assert!(matches!(
        to_bytes(&[("d".to_string(), Value::Array(deep))], &[]),
        Err(GgufError::Writer(_))
    ));
    let t = spec("t", &[33], GgmlType::Q8_0);
    assert!(matches!(
        GgufWriter::new(Vec::new(), &[], &[t]),
        Err(GgufError::BadShape { .. })
    ));
    let twice = [
        spec("t", &[1], GgmlType::F32),
        spec("t", &[1], GgmlType::F32),
    ];
    assert!(matches!(
        GgufWriter::new(Vec::new(), &[], &twice),
        Err(GgufError::DuplicateTensor { .. })
    ));
}

#[test]
fn writer_honours_custom_alignment() {
    let metadata = [("general.alignment".to_string(), Value::U32(128))];
    let tensors = [
        (spec("a", &[3], GgmlType::F32), &[0u8; 12][..]),
        (spec("b", &[1], GgmlType::F32), &[9u8; 4][..]),
    ];
    let file = GgufFile::from_bytes(to_bytes(&metadata, &tensors).unwrap()).unwrap();
    assert_eq!(file.alignment(), 128);
    for t in file.tensors() {
        assert_eq!(t.offset % 128, 0, "{}", t.name);
    }
    assert_eq!(file.tensor_bytes("b").unwrap(), &[9; 4]);
}

#[test]
fn open_maps_a_file_on_disk() {
    let dir = std::env::temp_dir().join(format!("fulcrum-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let specs = [spec("w", &[2, 2], GgmlType::F32)];
    let metadata = [(
        "general.architecture".to_string(),
        Value::String("tiny".into()),
    )];
    let out = std::fs::File::create(&path).unwrap();
    let mut writer = GgufWriter::new(std::io::BufWriter::new(out), &metadata, &specs).unwrap();
    writer.write_tensor("w", &[5; 16]).unwrap();
    writer.finish().unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("tiny"));
    assert_eq!(file.tensor_bytes("w").unwrap(), &[5; 16]);
    assert_eq!(file.file_size(), std::fs::metadata(&path).unwrap().len());

    let empty = dir.join("empty.gguf");
    std::fs::File::create(&empty).unwrap();
    let err = GgufFile::open(&empty).unwrap_err();
    assert!(
        matches!(err, GgufError::Truncated { .. } | GgufError::Io { .. }),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fulcrum's NF4 type (id "NF4\0") is written and read back like any ggml type.
#[test]
fn nf4_tensor_round_trips() {
    let data = vec![0x5Au8; 2 * 10 * 34];
    let bytes = to_bytes(
        &[("general.architecture".into(), Value::String("llama".into()))],
        &[(spec("w", &[640, 2], GgmlType::NF4), &data)],
    )
    .unwrap();
    assert!(bytes.windows(4).any(|w| w == b"NF4\0"));
    let file = GgufFile::from_bytes(bytes).unwrap();
    let info = file.tensor("w").unwrap();
    assert_eq!(info.ty, GgmlType::NF4);
    assert_eq!(file.tensor_data(info), &data[..]);
}
