//! Property: no corruption of a valid file makes `from_bytes` panic; it returns Ok or a clean error. Checked by
//! targeted properties and by the stable-toolchain fuzzer (`fuzz_gguf_reader`; long runs: `scripts/fuzz.sh`).

#[path = "fuzzing/driver.rs"]
mod fuzzing;

use fulcrum_gguf::writer::{to_bytes, TensorSpec};
use fulcrum_gguf::{Array, GgmlType, GgufFile, Value};
use proptest::prelude::*;

/// A small file exercising every value kind, nested arrays and several tensor types.
fn base() -> Vec<u8> {
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("qwen2".into()),
        ),
        ("qwen2.block_count".to_string(), Value::U32(1)),
        ("general.alignment".to_string(), Value::U32(32)),
        ("flag".to_string(), Value::Bool(false)),
        ("eps".to_string(), Value::F64(1e-5)),
        ("neg".to_string(), Value::I8(-1)),
        (
            "tokens".to_string(),
            Value::Array(Array::String(vec!["a".into(), "bc".into(), "".into()])),
        ),
        (
            "scores".to_string(),
            Value::Array(Array::F32(vec![0.5, -0.5])),
        ),
        ("types".to_string(), Value::Array(Array::I32(vec![1, 2]))),
        (
            "nested".to_string(),
            Value::Array(Array::Array(vec![
                Array::U16(vec![1]),
                Array::String(vec!["x".into()]),
            ])),
        ),
    ];
    let tensor = |name: &str, dims: &[u64], ty| TensorSpec {
        name: name.into(),
        dims: dims.to_vec(),
        ty,
    };
    let q4k = [1u8; 144];
    let q8 = [2u8; 34 * 2];
    let f32s = [3u8; 4 * 5];
    to_bytes(
        &metadata,
        &[
            (
                tensor("blk.0.ffn_down.weight", &[256], GgmlType::Q4_K),
                &q4k[..],
            ),
            (
                tensor("token_embd.weight", &[32, 2], GgmlType::Q8_0),
                &q8[..],
            ),
            (tensor("output_norm.weight", &[5], GgmlType::F32), &f32s[..]),
        ],
    )
    .unwrap()
}

/// Parses and, if accepted, touches everything a caller could, so invariants are exercised too.
fn parse_and_touch(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    if let Ok(file) = GgufFile::from_bytes(bytes) {
        for (key, _) in file.metadata() {
            let _ = file.get_u32(key);
            let _ = file.get_f32(key);
            let _ = file.get_str_array(key);
            let _ = file.get_i32_array(key);
        }
        for t in file.tensors() {
            assert_eq!(file.tensor_data(t).len() as u64, t.size_bytes);
            assert!(t.offset + t.size_bytes <= len);
            assert_eq!(t.offset % file.alignment(), 0);
            assert_eq!(file.tensor(&t.name), Some(t));
        }
    }
}

#[test]
fn base_is_valid() {
    let file = GgufFile::from_bytes(base()).unwrap();
    assert_eq!(file.tensors().len(), 3);
}

#[test]
fn every_truncation() {
    let full = base();
    for len in 0..full.len() {
        parse_and_touch(full[..len].to_vec());
    }
}

/// Values that stress count, length and offset fields.
fn interesting_u64(len: usize) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 7),
        Just(1 << 63),
        Just(i64::MAX as u64 + 1),
        0..(2 * len as u64),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn byte_flips(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = base();
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        parse_and_touch(bytes);
    }

    #[test]
    fn u64_overwrites(at in any::<prop::sample::Index>(), value in interesting_u64(1024), cut in any::<prop::sample::Index>()) {
        let mut bytes = base();
        let i = at.index(bytes.len() - 8);
        bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
        parse_and_touch(bytes.clone());
        // The same corruption, truncated as well.
        let keep = cut.index(bytes.len());
        bytes.truncate(keep);
        parse_and_touch(bytes);
    }

    #[test]
    fn u32_overwrites(at in any::<prop::sample::Index>(), value in prop_oneof![0u32..40, any::<u32>()]) {
        let mut bytes = base();
        let i = at.index(bytes.len() - 4);
        bytes[i..i + 4].copy_from_slice(&value.to_le_bytes());
        parse_and_touch(bytes);
    }

    #[test]
    fn header_counts(tensors in interesting_u64(1024), kvs in interesting_u64(1024)) {
        let mut bytes = base();
        bytes[8..16].copy_from_slice(&tensors.to_le_bytes());
        bytes[16..24].copy_from_slice(&kvs.to_le_bytes());
        parse_and_touch(bytes);
    }

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut with_magic = b"GGUF\x03\0\0\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        parse_and_touch(with_magic);
        parse_and_touch(bytes);
    }
}

/// The mutation fuzzer over the reader (a short run here; `scripts/fuzz.sh` runs it for long).
#[test]
fn fuzz_gguf_reader() {
    let mut dictionary: Vec<Vec<u8>> = vec![
        b"GGUF".to_vec(),
        b"general.alignment".to_vec(),
        b"general.architecture".to_vec(),
    ];
    // Value type ids and GGML type ids, as the u32s the format stores.
    dictionary.extend((0u32..40).map(|t| t.to_le_bytes().to_vec()));
    let fuzz = fuzzing::Fuzz {
        name: "gguf",
        seeds: vec![base()],
        dictionary,
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        max_len: 1 << 16,
    };
    fuzz.run(|bytes| parse_and_touch(bytes.to_vec()));
}
