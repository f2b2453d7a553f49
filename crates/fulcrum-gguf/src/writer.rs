//! A minimal GGUF v3 writer: metadata and tensor infos up front, then tensor data streamed in declared order.
//!
//! Files it writes pass every check of [`crate::GgufFile`]; it refuses input the reader would reject.

use std::collections::HashSet;
use std::io::Write;

use crate::file::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};
use crate::metadata::MAX_ARRAY_DEPTH;
use crate::{tensor_size, Array, GgmlType, GgufError, Value};

/// The format version written.
pub const VERSION: u32 = 3;

/// A tensor to declare in the header: name, ggml-order shape (`dims[0]` is the row length) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Shape in ggml order.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
}

/// Streams one GGUF file to `out`; create with [`GgufWriter::new`], then [`GgufWriter::write_tensor`] each tensor
/// in declared order, then [`GgufWriter::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    position: u64,
    /// Declared tensors (name, byte size) in order, and how many have been written.
    pending: Vec<(String, u64)>,
    written: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Validates everything, then writes the header, metadata, tensor infos and padding.
    pub fn new(
        out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let alignment = check_metadata(metadata)?;
        let mut names = HashSet::new();
        let mut pending = Vec::with_capacity(tensors.len());
        for spec in tensors {
            if !names.insert(spec.name.as_str()) {
                return Err(GgufError::DuplicateTensor {
                    name: spec.name.clone(),
                });
            }
            pending.push((
                spec.name.clone(),
                tensor_size(&spec.name, &spec.dims, spec.ty)?,
            ));
        }
        let mut writer = GgufWriter {
            out,
            alignment,
            position: 0,
            pending,
            written: 0,
        };
        writer.header(metadata, tensors)?;
        Ok(writer)
    }

    /// Header, metadata and tensor infos (GGUF spec layout), then padding up to the data section.
    fn header(
        &mut self,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<(), GgufError> {
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value);
        }
        let mut relative = 0u64;
        for (spec, (_, size)) in tensors.iter().zip(&self.pending) {
            put_string(&mut head, &spec.name);
            head.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for dim in &spec.dims {
                head.extend_from_slice(&dim.to_le_bytes());
            }
            head.extend_from_slice(&(spec.ty as u32).to_le_bytes());
            head.extend_from_slice(&relative.to_le_bytes());
            relative = align_up(relative + size, self.alignment);
        }
        self.emit(&head)?;
        self.pad()
    }

    /// Writes the data of the next declared tensor, which must be `name` with exactly its declared size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let Some((expected, size)) = self.pending.get(self.written) else {
            return Err(GgufError::Writer(format!(
                "tensor '{name}' written, but all {} declared tensors are already written",
                self.pending.len()
            )));
        };
        if expected != name {
            return Err(GgufError::Writer(format!(
                "tensor '{name}' written where '{expected}' was declared next; write tensors in declared order"
            )));
        }
        if data.len() as u64 != *size {
            return Err(GgufError::Writer(format!(
                "tensor '{name}' has {} bytes of data, its shape and type need {size}",
                data.len()
            )));
        }
        self.written += 1;
        self.emit(data)?;
        self.pad()
    }

    /// Checks that every declared tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some((missing, _)) = self.pending.get(self.written) {
            return Err(GgufError::Writer(format!(
                "only {} of {} tensors written; '{missing}' is next",
                self.written,
                self.pending.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Zero bytes up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<(), GgufError> {
        let padding = align_up(self.position, self.alignment) - self.position;
        self.emit(&vec![0u8; padding as usize])
    }
}

/// Serializes a whole file into memory.
pub fn to_bytes(
    metadata: &[(String, Value)],
    tensors: &[(TensorSpec, &[u8])],
) -> Result<Vec<u8>, GgufError> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(spec, _)| spec.clone()).collect();
    let mut writer = GgufWriter::new(Vec::new(), metadata, &specs)?;
    for (spec, data) in tensors {
        writer.write_tensor(&spec.name, data)?;
    }
    writer.finish()
}

/// Rejects metadata the reader would refuse and returns the alignment it declares.
fn check_metadata(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(GgufError::Writer(format!(
                "metadata key '{key}' given twice"
            )));
        }
        if key == ALIGNMENT_KEY {
            alignment = match value {
                Value::U32(a) if a.is_power_of_two() => u64::from(*a),
                other => {
                    return Err(GgufError::BadAlignment {
                        found: format!("{other:?}"),
                    })
                }
            };
        }
        if let Value::Array(array) = value {
            if depth(array) > MAX_ARRAY_DEPTH {
                return Err(GgufError::Writer(format!(
                    "metadata key '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep cannot be read back"
                )));
            }
        }
    }
    Ok(alignment)
}

/// Nesting depth of an array: 1 for an array of scalars.
fn depth(array: &Array) -> usize {
    match array {
        Array::Array(inner) => 1 + inner.iter().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A value without its type id (GGUF spec, `gguf_metadata_value_t`).
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(array) => put_array(out, array),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// An array: u32 element type, u64 count, then the elements without type ids.
fn put_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&(array.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! each_le {
        ($items:expr) => {
            for item in $items {
                out.extend_from_slice(&item.to_le_bytes());
            }
        };
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each_le!(v),
        Array::U16(v) => each_le!(v),
        Array::I16(v) => each_le!(v),
        Array::U32(v) => each_le!(v),
        Array::I32(v) => each_le!(v),
        Array::F32(v) => each_le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => each_le!(v),
        Array::I64(v) => each_le!(v),
        Array::F64(v) => each_le!(v),
    }
}
