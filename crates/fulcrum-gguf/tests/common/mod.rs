//! A byte-level GGUF builder for tests: writes fields exactly as told, so tests can produce malformed files.

#![allow(dead_code)]

/// GGUF value type ids used by the tests (GGUF spec, `gguf_metadata_value_type`).
pub const T_U8: u32 = 0;
pub const T_U32: u32 = 4;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;

/// ggml type ids used by the tests.
pub const F32: u32 = 0;
pub const Q8_0: u32 = 8;

/// Raw file bytes under construction.
#[derive(Clone, Debug, Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, key/value count.
    pub fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(tensors).u64(kvs)
    }

    pub fn u8(mut self, v: u8) -> Raw {
        self.0.push(v);
        self
    }

    pub fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }

    /// A GGUF string: u64 length then the bytes.
    pub fn string(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }

    /// A key and a value type id; the caller writes the value.
    pub fn key(self, key: &str, type_id: u32) -> Raw {
        self.string(key.as_bytes()).u32(type_id)
    }

    pub fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.key(key, T_U32).u32(v)
    }

    pub fn kv_str(self, key: &str, v: &str) -> Raw {
        self.key(key, T_STRING).string(v.as_bytes())
    }

    /// A tensor info with a relative data offset.
    pub fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut raw = self.string(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            raw = raw.u64(d);
        }
        raw.u32(type_id).u64(offset)
    }

    /// Zero bytes up to a multiple of `alignment`.
    pub fn pad(mut self, alignment: usize) -> Raw {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }

    /// `n` bytes of tensor data.
    pub fn data(mut self, n: usize) -> Raw {
        self.0.extend((0..n).map(|i| i as u8));
        self
    }
}

/// A small valid file: one string key, one F32 tensor `w` of 4 elements, ending exactly at its data.
pub fn valid() -> Raw {
    Raw::header(3, 1, 1)
        .kv_str("general.architecture", "test")
        .tensor("w", &[4], F32, 0)
        .pad(32)
        .data(16)
}
