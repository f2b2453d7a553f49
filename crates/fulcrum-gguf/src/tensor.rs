//! Tensor infos (GGUF spec, "gguf_tensor_info_t"): reading them, checking shapes, and placing their data.

use std::collections::HashMap;

use crate::metadata::{check_count, read_string};
use crate::reader::{Cursor, Named};
use crate::{GgmlType, GgufError};

/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Smallest possible tensor info: empty name, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Where one tensor lives in the file and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the row length (contiguous), the rest count rows.
    pub dims: Vec<u64>,
    /// Storage type of the elements.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data: `n_rows * ty.row_bytes(row_len)`.
    pub size_bytes: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(0)
    }
}

/// Checks a shape for type `ty` and returns its size in bytes.
///
/// Rejects 0 or more than [`MAX_DIMS`] dimensions, zero dimensions, element counts past `i64::MAX` (ggml stores
/// them as int64), and rows that are not a whole number of `ty` blocks.
pub fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason: String| GgufError::BadShape {
        tensor: name.to_string(),
        dims: dims.to_vec(),
        reason,
    };
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(bad(format!(
            "{} dimensions, expected 1 to {MAX_DIMS}",
            dims.len()
        )));
    }
    if dims.contains(&0) {
        return Err(bad("a dimension is zero".to_string()));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad("element count overflows 64 bits".to_string()))?;
    let row_bytes = ty.row_bytes(dims[0]).ok_or_else(|| {
        bad(format!(
            "row length {} is not a multiple of the {ty} block size {}",
            dims[0],
            ty.block_size()
        ))
    })?;
    // n_elements did not overflow and row_bytes <= row_len * type_size, so this only overflows for huge types.
    let n_rows = n_elements / dims[0];
    row_bytes
        .checked_mul(n_rows)
        .ok_or_else(|| bad("byte size overflows 64 bits".to_string()))
}

/// Reads `count` tensor infos; offsets in the result are still relative to the data section.
pub(crate) fn read_tensor_infos(
    cursor: &mut Cursor,
    count: u64,
    count_offset: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    check_count(cursor, count, MIN_TENSOR_INFO_BYTES, count_offset, || {
        "tensor count".to_string()
    })?;
    let mut tensors = Vec::with_capacity(count as usize);
    for n in 0..count {
        tensors.push(read_tensor_info(cursor, n)?);
    }
    Ok(tensors)
}

/// Reads one tensor info: name, u32 n_dims, n_dims × u64 dims, u32 ggml type, u64 relative offset.
fn read_tensor_info(cursor: &mut Cursor, n: u64) -> Result<TensorInfo, GgufError> {
    let name = read_string(cursor, || format!("name of tensor #{n}"))?;
    let field = |field: &str| format!("{field} of tensor '{name}'");
    let n_dims = cursor.u32().what(|| field("dimension count"))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadShape {
            tensor: name,
            dims: Vec::new(),
            reason: format!("dimension count is {n_dims}, expected 1 to {MAX_DIMS}"),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cursor.u64().what(|| field("dimensions"))?);
    }
    let type_id = cursor.u32().what(|| field("type"))?;
    let offset = cursor.u64().what(|| field("data offset"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.clone(),
        type_id,
    })?;
    let size_bytes = tensor_size(&name, &dims, ty)?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        size_bytes,
    })
}

/// Makes offsets absolute and checks that every tensor is aligned, inside the file, unique and not overlapping.
/// Returns the name index.
pub(crate) fn place_tensors(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<HashMap<String, usize>, GgufError> {
    let mut index = HashMap::with_capacity(tensors.len());
    for (i, tensor) in tensors.iter_mut().enumerate() {
        if index.insert(tensor.name.clone(), i).is_some() {
            return Err(GgufError::DuplicateTensor {
                name: tensor.name.clone(),
            });
        }
        if tensor.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(tensor.offset);
        let end = start.and_then(|s| s.checked_add(tensor.size_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_size => tensor.offset = start,
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: tensor.name.clone(),
                    start: data_offset.saturating_add(tensor.offset),
                    end: data_offset
                        .saturating_add(tensor.offset)
                        .saturating_add(tensor.size_bytes),
                    file_size,
                })
            }
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        // Offsets were checked above: offset + size_bytes cannot overflow.
        let first_end = first.offset + first.size_bytes;
        if first_end > second.offset {
            return Err(GgufError::OverlappingTensors {
                first: first.name.clone(),
                first_start: first.offset,
                first_end,
                second: second.name.clone(),
                second_start: second.offset,
            });
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_block_layout() {
        assert_eq!(
            tensor_size("t", &[640, 262144], GgmlType::Q8_0).unwrap(),
            262144 * 20 * 34
        );
        assert_eq!(tensor_size("t", &[256], GgmlType::Q4_K).unwrap(), 144);
        assert_eq!(tensor_size("t", &[3, 2], GgmlType::F32).unwrap(), 24);
        assert!(tensor_size("t", &[33], GgmlType::Q8_0).is_err());
        assert!(tensor_size("t", &[], GgmlType::F32).is_err());
        assert!(tensor_size("t", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
        assert!(tensor_size("t", &[4, 0], GgmlType::F32).is_err());
        assert!(tensor_size("t", &[u64::MAX, 2], GgmlType::F32).is_err());
        assert!(tensor_size("t", &[1 << 62, 1], GgmlType::F64).is_err());
        // NF4: 34 bytes per 64 weights; rows must be whole 64-blocks.
        assert_eq!(
            tensor_size("t", &[640, 3], GgmlType::NF4).unwrap(),
            3 * 10 * 34
        );
        assert!(tensor_size("t", &[96], GgmlType::NF4).is_err());
    }

    #[test]
    fn nf4_id_is_outside_ggml_ids() {
        // ggml's ids are below 64; the NF4 id is the bytes "NF4\0" read as a little-endian u32.
        assert_eq!(GgmlType::NF4 as u32, u32::from_le_bytes(*b"NF4\0"));
        assert!(GgmlType::NF4 as u32 > 1 << 20);
        assert_eq!(GgmlType::from_id(0x0034_464E), Some(GgmlType::NF4));
        assert_eq!(GgmlType::from_id(0x0034_464F), None);
    }

    #[test]
    fn counts_rows_and_elements() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![4, 3, 2],
            ty: GgmlType::F32,
            offset: 0,
            size_bytes: 96,
        };
        assert_eq!(t.n_elements(), 24);
        assert_eq!(t.n_rows(), 6);
        assert_eq!(t.row_len(), 4);
    }
}
