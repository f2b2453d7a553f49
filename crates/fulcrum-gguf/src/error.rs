//! Everything that can go wrong while reading or writing a GGUF file.

use std::path::PathBuf;

/// A GGUF file could not be read, validated, queried or written; the message says where and why.
#[derive(thiserror::Error, Debug)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Writing a GGUF file failed at the operating-system level.
    #[error("cannot write GGUF data: {0}")]
    Write(#[from] std::io::Error),

    /// The first four bytes are not "GGUF".
    #[error("not a GGUF file: expected magic bytes \"GGUF\" at byte 0, found {found:02x?}")]
    BadMagic { found: [u8; 4] },

    /// The version field is one this reader does not handle.
    #[error("GGUF version {version} is not supported (this reader handles versions 2 and 3); re-convert the model with a current llama.cpp")]
    UnsupportedVersion { version: u32 },

    /// The file was written big-endian (detected by a byte-swapped version number).
    #[error("big-endian GGUF (version {version} byte-swapped) is not supported; use a little-endian file")]
    BigEndian { version: u32 },

    /// The file ends before a field it declares.
    #[error("file truncated: {what} at byte {offset} needs {needed} bytes, but the file is only {file_size} bytes long (incomplete download?)")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_size: u64,
    },

    /// A count cannot be right: even the smallest encoding of that many items would not fit in the file.
    #[error("{what} at byte {offset} is {count}, but that many entries of at least {min_bytes} bytes each cannot fit in the {remaining} bytes left in the file (truncated or corrupt file?)")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        min_bytes: u64,
        remaining: u64,
    },

    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8 ({detail})")]
    InvalidUtf8 {
        what: String,
        offset: u64,
        detail: std::str::Utf8Error,
    },

    /// A metadata value has a type id outside the GGUF spec.
    #[error("metadata key '{key}': unknown value type id {type_id} at byte {offset} (valid ids are 0..=12)")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },

    /// Arrays nested deeper than this reader allows.
    #[error("metadata key '{key}': arrays nested more than {max_depth} deep at byte {offset}")]
    ArrayTooDeep {
        key: String,
        max_depth: usize,
        offset: u64,
    },

    /// A bool value that is neither 0 nor 1.
    #[error("metadata key '{key}': bool at byte {offset} has value {value}, expected 0 or 1")]
    InvalidBool { key: String, value: u8, offset: u64 },

    /// The same metadata key appears twice.
    #[error("metadata key '{key}' appears twice (second time at byte {offset})")]
    DuplicateKey { key: String, offset: u64 },

    /// `general.alignment` has the wrong type or is not a non-zero power of two.
    #[error("metadata key 'general.alignment' must be a non-zero power of two of type u32, found {found}")]
    BadAlignment { found: String },

    /// A metadata value has a different type than the caller asked for.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    /// A numeric metadata value does not fit the requested type.
    #[error("metadata key '{key}' has value {value}, which does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },

    /// A tensor's ggml type id is unknown to this reader.
    #[error("tensor '{tensor}': unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },

    /// A tensor's shape is invalid (dimension count, zero or overflowing sizes, partial blocks).
    #[error("tensor '{tensor}' has invalid shape {dims:?}: {reason}")]
    BadShape {
        tensor: String,
        dims: Vec<u64>,
        reason: String,
    },

    /// Two tensors share a name.
    #[error("tensor name '{name}' appears twice")]
    DuplicateTensor { name: String },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    /// A tensor's data runs past the end of the file.
    #[error("tensor '{tensor}': data bytes {start}..{end} lie past the end of the file ({file_size} bytes; incomplete download?)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_size: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("tensors '{first}' (bytes {first_start}..{first_end}) and '{second}' (starting at byte {second_start}) overlap")]
    OverlappingTensors {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
    },

    /// The writer was used inconsistently (wrong order, size or missing tensors).
    #[error("GGUF writer: {0}")]
    Writer(String),
}
