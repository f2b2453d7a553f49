//! An opened, validated GGUF file: header, metadata, tensor infos, and the bytes behind them.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::metadata::{read_metadata, Metadata};
use crate::reader::{Cursor, Named};
use crate::tensor::{place_tensors, read_tensor_infos};
use crate::{GgufError, TensorInfo, Value};

/// "GGUF" as the four bytes that start every file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent (GGUF spec, `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// The file's bytes: a read-only map of a file on disk, or a buffer handed in by the caller.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A GGUF file whose layout has been fully validated, so tensor data can be sliced without further checks.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and validates the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory, expected a .gguf file",
            )));
        }
        // SAFETY: the map is read-only and private to this value. As with every mmap, another process truncating
        // or rewriting the file while it is mapped is outside what we can guard against; model files are not
        // expected to change under a running engine.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mapped(map))
    }

    /// Validates an in-memory GGUF image (same checks as [`GgufFile::open`]). Tensor data is only guaranteed to be
    /// as aligned as the buffer itself.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    /// Reads the header, metadata and tensor infos, then checks where every tensor's data lies.
    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let bytes = storage.bytes();
        let file_size = bytes.len() as u64;
        let mut cursor = Cursor::new(bytes);
        let version = read_preamble(&mut cursor)?;
        let tensor_count_offset = cursor.pos();
        let tensor_count = cursor.u64().what(|| "tensor count".to_string())?;
        let kv_count_offset = cursor.pos();
        let kv_count = cursor
            .u64()
            .what(|| "metadata key/value count".to_string())?;
        let Metadata { entries, index } = read_metadata(&mut cursor, kv_count, kv_count_offset)?;
        let alignment = alignment_of(index.get(ALIGNMENT_KEY).map(|&i| &entries[i].1))?;
        let mut tensors = read_tensor_infos(&mut cursor, tensor_count, tensor_count_offset)?;
        // Tensor data starts at the next multiple of the alignment after the infos (GGUF spec, "_padding").
        let data_offset = cursor.pos().div_ceil(alignment).saturating_mul(alignment);
        let names = place_tensors(&mut tensors, data_offset, alignment, file_size)?;
        Ok(GgufFile {
            version,
            alignment,
            data_offset,
            metadata: entries,
            keys: index,
            tensors,
            names,
            storage,
        })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.names.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw data of `t`: exactly `t.size_bytes` bytes.
    ///
    /// # Panics
    /// If `t` did not come from this file (its range was validated when this file was opened).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = t.offset as usize..t.offset.saturating_add(t.size_bytes) as usize;
        match self.storage.bytes().get(range) {
            Some(data) => data,
            None => panic!(
                "tensor '{}' (bytes {}..{}) does not belong to this {}-byte GGUF file",
                t.name,
                t.offset,
                t.offset.saturating_add(t.size_bytes),
                self.file_size()
            ),
        }
    }

    /// The raw data of the tensor named `name`, if any.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Checks the magic and returns the version, recognising v1 and big-endian files for a clearer message.
fn read_preamble(cursor: &mut Cursor) -> Result<u32, GgufError> {
    let magic = cursor.take(4).what(|| "magic bytes".to_string())?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = cursor.u32().what(|| "version".to_string())?;
    match version {
        2 | 3 => Ok(version),
        // gguf-py writes the magic in a fixed byte order, so a big-endian file is only visible in the version.
        v if (1..=3).contains(&v.swap_bytes()) => Err(GgufError::BigEndian {
            version: v.swap_bytes(),
        }),
        v => Err(GgufError::UnsupportedVersion { version: v }),
    }
}

/// The alignment declared by a `general.alignment` entry (u32, non-zero power of two), or the default.
fn alignment_of(value: Option<&Value>) -> Result<u64, GgufError> {
    match value {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(GgufError::BadAlignment {
            found: a.to_string(),
        }),
        Some(other) => Err(GgufError::BadAlignment {
            found: format!("a value of type {}", other.type_description()),
        }),
    }
}
