//! Every validation error, each triggered by a minimal malformed file.

mod common;

use common::*;
use fulcrum_gguf::{GgufError, GgufFile};

fn open(raw: Raw) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(raw.0)
}

fn error(raw: Raw) -> GgufError {
    open(raw).expect_err("malformed file was accepted")
}

/// Header for one tensor and one key, then the string key; tests add the tensor info.
fn with_tensor(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
    Raw::header(3, 1, 1)
        .kv_str("general.architecture", "test")
        .tensor(name, dims, type_id, offset)
        .pad(32)
}

#[test]
fn valid_file_opens() {
    let file = open(valid()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("test"));
    let w = file.tensor("w").unwrap();
    assert_eq!(
        file.tensor_data(w),
        &[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
}

#[test]
fn version_2_opens() {
    let mut raw = valid();
    raw.0[4] = 2;
    assert_eq!(open(raw).unwrap().version(), 2);
}

#[test]
fn bad_magic() {
    let mut raw = valid();
    raw.0[0..4].copy_from_slice(b"GGML");
    let err = error(raw);
    assert!(
        matches!(err, GgufError::BadMagic { found } if &found == b"GGML"),
        "{err}"
    );
    assert!(err.to_string().contains("not a GGUF file"));
}

#[test]
fn unsupported_versions() {
    for version in [0u32, 1, 4, 1000] {
        let mut raw = valid();
        raw.0[4..8].copy_from_slice(&version.to_le_bytes());
        let err = error(raw);
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v } if v == version),
            "{err}"
        );
    }
}

#[test]
fn big_endian() {
    let mut raw = valid();
    raw.0[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = error(raw);
    assert!(matches!(err, GgufError::BigEndian { version: 3 }), "{err}");
    assert!(err.to_string().contains("big-endian"));
}

#[test]
fn empty_and_tiny_files() {
    for len in 0..24 {
        let raw = Raw(valid().0[..len].to_vec());
        assert!(matches!(error(raw), GgufError::Truncated { .. }));
    }
}

#[test]
fn absurd_counts() {
    let err = error(Raw::header(3, 0, u64::MAX));
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                count: u64::MAX,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("metadata key/value count"),
        "{err}"
    );

    let err = error(Raw::header(3, 1 << 40, 0));
    assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("tensor count"), "{err}");

    let raw = Raw::header(3, 0, 1)
        .key("tokenizer.ggml.tokens", T_ARRAY)
        .u32(T_STRING)
        .u64(u64::MAX / 4);
    let err = error(raw);
    assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    // Even one-byte elements are checked: 100 u8s cannot fit in 10 bytes.
    let raw = Raw::header(3, 0, 1)
        .key("a", T_ARRAY)
        .u32(T_U8)
        .u64(100)
        .bytes(&[0; 10]);
    assert!(matches!(
        error(raw),
        GgufError::CountTooLarge {
            count: 100,
            remaining: 10,
            ..
        }
    ));
}

#[test]
fn string_lengths_past_end() {
    let raw = Raw::header(3, 0, 1).u64(1 << 50).bytes(b"abcdefghijklmnop");
    let err = error(raw);
    assert!(
        matches!(err, GgufError::Truncated { needed, .. } if needed == 1 << 50),
        "{err}"
    );
    assert!(err.to_string().contains("metadata key #0"), "{err}");

    let raw = Raw::header(3, 0, 1)
        .key("general.name", T_STRING)
        .u64(u64::MAX);
    let err = error(raw);
    assert!(err.to_string().contains("general.name"), "{err}");
}

#[test]
fn invalid_utf8() {
    let raw = Raw::header(3, 0, 1).string(b"bad\xffkey").u32(T_U32).u32(1);
    let err = error(raw);
    assert!(
        matches!(err, GgufError::InvalidUtf8 { offset: 24, .. }),
        "{err}"
    );

    let raw = Raw::header(3, 0, 1)
        .key("general.name", T_STRING)
        .string(b"\xc3\x28");
    let err = error(raw);
    assert!(matches!(err, GgufError::InvalidUtf8 { .. }), "{err}");
    assert!(err.to_string().contains("general.name"), "{err}");

    let raw = Raw::header(3, 0, 1)
        .key("tokenizer.ggml.tokens", T_ARRAY)
        .u32(T_STRING)
        .u64(2)
        .string(b"ok")
        .string(b"\xed\xa0\x80");
    let err = error(raw);
    assert!(
        err.to_string()
            .contains("element 1 of array 'tokenizer.ggml.tokens'"),
        "{err}"
    );

    let raw = Raw::header(3, 1, 0)
        .string(b"w\xff")
        .u32(1)
        .u64(4)
        .u32(F32)
        .u64(0)
        .pad(32)
        .data(16);
    assert!(error(raw).to_string().contains("name of tensor #0"));
}

#[test]
fn nested_arrays_are_bounded() {
    // [[1, 2], []]: depth 2 is accepted.
    let raw = Raw::header(3, 0, 1)
        .key("nested", T_ARRAY)
        .u32(T_ARRAY)
        .u64(2)
        .u32(T_U32)
        .u64(2)
        .u32(1)
        .u32(2)
        .u32(T_U8)
        .u64(0);
    let file = open(raw).unwrap();
    assert_eq!(file.get_array("nested").unwrap().unwrap().len(), 2);

    // [[[]]]: depth 3 is refused.
    let raw = Raw::header(3, 0, 1)
        .key("deep", T_ARRAY)
        .u32(T_ARRAY)
        .u64(1)
        .u32(T_ARRAY)
        .u64(1)
        .u32(T_U8)
        .u64(0);
    let err = error(raw);
    assert!(
        matches!(err, GgufError::ArrayTooDeep { ref key, .. } if key == "deep"),
        "{err}"
    );
}

#[test]
fn unknown_value_types() {
    let err = error(Raw::header(3, 0, 1).key("general.odd", 13).u32(0));
    assert!(
        matches!(
            err,
            GgufError::UnknownValueType {
                type_id: 13,
                offset: 43,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("general.odd"));

    let err = error(Raw::header(3, 0, 1).key("arr", T_ARRAY).u32(99).u64(0));
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 99, .. }),
        "{err}"
    );
}

#[test]
fn invalid_bool() {
    let err = error(Raw::header(3, 0, 1).key("flag", T_BOOL).u8(2));
    assert!(
        matches!(err, GgufError::InvalidBool { value: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("flag"));
}

#[test]
fn duplicate_keys() {
    let raw = Raw::header(3, 0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2);
    let err = error(raw);
    assert!(
        matches!(err, GgufError::DuplicateKey { ref key, .. } if key == "a.b"),
        "{err}"
    );
}

#[test]
fn unknown_tensor_type() {
    let err = error(with_tensor("blk.0.attn_q.weight", &[32], 4, 0).data(64));
    assert!(
        matches!(err, GgufError::UnknownTensorType { type_id: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("blk.0.attn_q.weight"));
}

#[test]
fn bad_dimension_counts() {
    for dims in [&[][..], &[1, 1, 1, 1, 1][..]] {
        let err = error(with_tensor("t", dims, F32, 0).data(64));
        assert!(matches!(err, GgufError::BadShape { .. }), "{err}");
        assert!(err.to_string().contains("dimension count"), "{err}");
    }
}

#[test]
fn zero_and_overflowing_dims() {
    let err = error(with_tensor("t", &[4, 0], F32, 0).data(64));
    assert!(err.to_string().contains("zero"), "{err}");
    let err = error(with_tensor("t", &[1 << 32, 1 << 32], F32, 0).data(64));
    assert!(err.to_string().contains("overflow"), "{err}");
    let err = error(with_tensor("t", &[u64::MAX], 28, 0).data(64));
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn partial_blocks() {
    let err = error(with_tensor("token_embd.weight", &[33, 2], Q8_0, 0).data(128));
    assert!(
        err.to_string()
            .contains("not a multiple of the Q8_0 block size 32"),
        "{err}"
    );
}

#[test]
fn duplicate_tensor_names() {
    let raw = Raw::header(3, 2, 0)
        .tensor("w", &[4], F32, 0)
        .tensor("w", &[4], F32, 32)
        .pad(32)
        .data(48);
    let err = error(raw);
    assert!(
        matches!(err, GgufError::DuplicateTensor { ref name } if name == "w"),
        "{err}"
    );
}

#[test]
fn misaligned_tensor() {
    let err = error(with_tensor("w", &[4], F32, 4).data(64));
    assert!(
        matches!(
            err,
            GgufError::MisalignedTensor {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tensor_past_end() {
    let err = error(with_tensor("w", &[4], F32, 0).data(15));
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    assert!(err.to_string().contains("'w'"));
    // An offset so large that offset + size overflows.
    let err = error(with_tensor("w", &[4], F32, u64::MAX - 31).data(16));
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
}

#[test]
fn overlapping_tensors() {
    let raw = Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[4], F32, 32)
        .pad(32)
        .data(64);
    let err = error(raw);
    assert!(matches!(err, GgufError::OverlappingTensors { .. }), "{err}");
    assert!(
        err.to_string().contains("'a'") && err.to_string().contains("'b'"),
        "{err}"
    );
}

#[test]
fn alignment_must_be_power_of_two_u32() {
    for bad in [0u32, 3, 48] {
        let raw = Raw::header(3, 0, 1).kv_u32("general.alignment", bad);
        assert!(matches!(error(raw), GgufError::BadAlignment { .. }));
    }
    let raw = Raw::header(3, 0, 1).key("general.alignment", T_U64).u64(32);
    let err = error(raw);
    assert!(err.to_string().contains("u64"), "{err}");
}

#[test]
fn custom_alignment_moves_data() {
    let raw = Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("w", &[4], F32, 0)
        .pad(64)
        .data(16);
    let file = open(raw).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.tensor("w").unwrap().offset, file.data_offset());
}

#[test]
fn every_truncation_is_an_error() {
    let full = valid().0;
    assert!(GgufFile::from_bytes(full.clone()).is_ok());
    for len in 0..full.len() {
        let err = GgufFile::from_bytes(full[..len].to_vec()).expect_err("truncated file accepted");
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "length {len}: {err}"
        );
    }
}

#[test]
fn open_reports_missing_file() {
    let err = GgufFile::open(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}
