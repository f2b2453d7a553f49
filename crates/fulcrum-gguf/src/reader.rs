//! A bounds-checked little-endian cursor over the file bytes (GGUF is little-endian only).

use crate::GgufError;

/// A read that ran past the end of the buffer; turned into [`GgufError::Truncated`] once the caller names the field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Short {
    offset: u64,
    needed: u64,
    file_size: u64,
}

impl Short {
    /// Names the field that was being read.
    pub(crate) fn named(self, what: String) -> GgufError {
        GgufError::Truncated {
            what,
            offset: self.offset,
            needed: self.needed,
            file_size: self.file_size,
        }
    }
}

/// Attaches a lazily built field description to a short read.
pub(crate) trait Named<T> {
    /// Converts a short read into a `Truncated` error describing `what()`.
    fn what(self, what: impl FnOnce() -> String) -> Result<T, GgufError>;
}

impl<T> Named<T> for Result<T, Short> {
    #[inline]
    fn what(self, what: impl FnOnce() -> String) -> Result<T, GgufError> {
        self.map_err(|short| short.named(what()))
    }
}

/// Reads fields front to back, never past the end.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($name:ident, $ty:ty) => {
        #[inline]
        pub(crate) fn $name(&mut self) -> Result<$ty, Short> {
            let bytes = self.take(std::mem::size_of::<$ty>() as u64)?;
            let mut array = [0u8; std::mem::size_of::<$ty>()];
            array.copy_from_slice(bytes);
            Ok(<$ty>::from_le_bytes(array))
        }
    };
}

impl<'a> Cursor<'a> {
    /// A cursor at byte 0 of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Current byte offset from the start of the file.
    #[inline]
    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left after the current position.
    #[inline]
    pub(crate) fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes, advancing past them.
    #[inline]
    pub(crate) fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        if n > self.remaining() {
            return Err(Short {
                offset: self.pos(),
                needed: n,
                file_size: self.bytes.len() as u64,
            });
        }
        // n <= remaining <= usize::MAX, so the cast is exact.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    read_le!(u8, u8);
    read_le!(i8, i8);
    read_le!(u16, u16);
    read_le!(i16, i16);
    read_le!(u32, u32);
    read_le!(i32, i32);
    read_le!(u64, u64);
    read_le!(i64, i64);
    read_le!(f32, f32);
    read_le!(f64, f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_end() {
        let bytes = [1, 0, 0, 0, 2, 0];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(cursor.u32().unwrap(), 1);
        assert_eq!(cursor.remaining(), 2);
        let err = cursor.u32().what(|| "a field".into()).unwrap_err();
        assert!(matches!(
            err,
            GgufError::Truncated {
                offset: 4,
                needed: 4,
                file_size: 6,
                ..
            }
        ));
        // A failed read does not move the cursor.
        assert_eq!(cursor.u16().unwrap(), 2);
        assert!(cursor.take(u64::MAX).is_err());
    }
}
