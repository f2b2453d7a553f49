//! Views of byte slices as slices of block structs.
//!
//! Every block struct in this crate is `#[repr(C)]` and built only from byte arrays (`[u8; N]`, `[i8; N]`), so it has
//! alignment 1 and every bit pattern is a valid value. That makes casting any byte slice (say, a row inside an mmap at
//! an arbitrary offset) to `&[Block]` sound, and it keeps multi-byte fields explicit little-endian reads.

/// A block made only of byte arrays: alignment 1, no padding, every bit pattern valid.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs whose fields are all `u8`/`i8` arrays.
pub unsafe trait ByteBlock: Sized {}

/// Views `bytes` as blocks. Panics if the length is not a whole number of blocks (a caller bug).
pub fn cast<B: ByteBlock>(bytes: &[u8]) -> &[B] {
    let size = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: B has alignment 1, no padding and no invalid bit patterns (ByteBlock contract); the length fits.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Views `bytes` as mutable blocks. Panics if the length is not a whole number of blocks (a caller bug).
pub fn cast_mut<B: ByteBlock>(bytes: &mut [u8]) -> &mut [B] {
    let size = size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: as in `cast`; the exclusive borrow of `bytes` is carried over to the result.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size) }
}
