//! Reading the metadata key/value section (GGUF spec, "gguf_metadata_kv_t").

use std::collections::HashMap;

use crate::reader::{Cursor, Named};
use crate::value::{Array, Value, ValueType};
use crate::GgufError;

/// Deepest array nesting accepted: an array of arrays of scalars. Bounds recursion on hostile input.
pub const MAX_ARRAY_DEPTH: usize = 2;

/// Smallest possible key/value pair: empty key (u64 length), u32 type, one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Metadata in file order plus an index from key to position.
pub(crate) struct Metadata {
    pub(crate) entries: Vec<(String, Value)>,
    pub(crate) index: HashMap<String, usize>,
}

/// Fails unless `count` items of at least `min_bytes` each could fit in what is left of the file.
pub(crate) fn check_count(
    cursor: &Cursor,
    count: u64,
    min_bytes: u64,
    offset: u64,
    what: impl FnOnce() -> String,
) -> Result<(), GgufError> {
    let fits = count
        .checked_mul(min_bytes)
        .is_some_and(|total| total <= cursor.remaining());
    if fits {
        Ok(())
    } else {
        Err(GgufError::CountTooLarge {
            what: what(),
            offset,
            count,
            min_bytes,
            remaining: cursor.remaining(),
        })
    }
}

/// Reads a GGUF string: u64 byte length, then that many UTF-8 bytes (no terminator).
pub(crate) fn read_string(
    cursor: &mut Cursor,
    what: impl Fn() -> String,
) -> Result<String, GgufError> {
    let offset = cursor.pos();
    let len = cursor.u64().what(|| format!("length of {}", what()))?;
    let bytes = cursor
        .take(len)
        .what(|| format!("{} ({len} bytes long)", what()))?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(detail) => Err(GgufError::InvalidUtf8 {
            what: what(),
            offset,
            detail,
        }),
    }
}

/// Reads `count` key/value pairs, rejecting duplicate keys.
pub(crate) fn read_metadata(
    cursor: &mut Cursor,
    count: u64,
    count_offset: u64,
) -> Result<Metadata, GgufError> {
    check_count(cursor, count, MIN_KV_BYTES, count_offset, || {
        "metadata key/value count".to_string()
    })?;
    let mut entries = Vec::with_capacity(count as usize);
    let mut index = HashMap::with_capacity(count as usize);
    for n in 0..count {
        let key_offset = cursor.pos();
        let key = read_string(cursor, || format!("metadata key #{n}"))?;
        if index.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        let type_offset = cursor.pos();
        let type_id = cursor
            .u32()
            .what(|| format!("value type of metadata key '{key}'"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
            offset: type_offset,
        })?;
        let value = read_value(cursor, ty, &key)?;
        index.insert(key.clone(), entries.len());
        entries.push((key, value));
    }
    Ok(Metadata { entries, index })
}

/// Reads one value of type `ty` belonging to `key`.
fn read_value(cursor: &mut Cursor, ty: ValueType, key: &str) -> Result<Value, GgufError> {
    let what = || format!("value of metadata key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(cursor.u8().what(what)?),
        ValueType::I8 => Value::I8(cursor.i8().what(what)?),
        ValueType::U16 => Value::U16(cursor.u16().what(what)?),
        ValueType::I16 => Value::I16(cursor.i16().what(what)?),
        ValueType::U32 => Value::U32(cursor.u32().what(what)?),
        ValueType::I32 => Value::I32(cursor.i32().what(what)?),
        ValueType::F32 => Value::F32(cursor.f32().what(what)?),
        ValueType::U64 => Value::U64(cursor.u64().what(what)?),
        ValueType::I64 => Value::I64(cursor.i64().what(what)?),
        ValueType::F64 => Value::F64(cursor.f64().what(what)?),
        ValueType::Bool => Value::Bool(read_bool(cursor, key)?),
        ValueType::String => Value::String(read_string(cursor, what)?),
        ValueType::Array => Value::Array(read_array(cursor, key, 1)?),
    })
}

/// Reads a bool stored as one byte, which must be 0 or 1.
fn read_bool(cursor: &mut Cursor, key: &str) -> Result<bool, GgufError> {
    let offset = cursor.pos();
    match cursor
        .u8()
        .what(|| format!("bool in metadata key '{key}'"))?
    {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_string(),
            value,
            offset,
        }),
    }
}

/// Reads `count` elements with `read`; the caller has already bounded `count` by the bytes left.
fn read_elements<T>(
    cursor: &mut Cursor,
    count: usize,
    mut read: impl FnMut(&mut Cursor, usize) -> Result<T, GgufError>,
) -> Result<Vec<T>, GgufError> {
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        out.push(read(cursor, index)?);
    }
    Ok(out)
}

/// Reads an array header (u32 element type, u64 count) and its elements; `depth` is 1 for a top-level array.
fn read_array(cursor: &mut Cursor, key: &str, depth: usize) -> Result<Array, GgufError> {
    let offset = cursor.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            key: key.to_string(),
            max_depth: MAX_ARRAY_DEPTH,
            offset,
        });
    }
    let type_id = cursor
        .u32()
        .what(|| format!("element type of array '{key}'"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id,
        offset,
    })?;
    let count_offset = cursor.pos();
    let count = cursor
        .u64()
        .what(|| format!("element count of array '{key}'"))?;
    check_count(cursor, count, ty.min_encoded_size(), count_offset, || {
        format!("element count of array '{key}' ({})", ty.name())
    })?;
    // check_count bounds count by the file length, so it fits in usize.
    let n = count as usize;
    let element = |index: usize| move || format!("element {index} of array '{key}'");
    macro_rules! scalars {
        ($variant:ident, $read:ident) => {
            Array::$variant(read_elements(cursor, n, |c, i| c.$read().what(element(i)))?)
        };
    }
    Ok(match ty {
        ValueType::U8 => scalars!(U8, u8),
        ValueType::I8 => scalars!(I8, i8),
        ValueType::U16 => scalars!(U16, u16),
        ValueType::I16 => scalars!(I16, i16),
        ValueType::U32 => scalars!(U32, u32),
        ValueType::I32 => scalars!(I32, i32),
        ValueType::F32 => scalars!(F32, f32),
        ValueType::U64 => scalars!(U64, u64),
        ValueType::I64 => scalars!(I64, i64),
        ValueType::F64 => scalars!(F64, f64),
        ValueType::Bool => Array::Bool(read_elements(cursor, n, |c, _| read_bool(c, key))?),
        ValueType::String => {
            Array::String(read_elements(cursor, n, |c, i| read_string(c, element(i)))?)
        }
        ValueType::Array => Array::Array(read_elements(cursor, n, |c, _| {
            read_array(c, key, depth + 1)
        })?),
    })
}
