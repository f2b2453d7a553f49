//! GPT-2's byte-level alphabet (`bytes_to_unicode`): every byte written as one printable code point, and back.
//! Byte-level BPE encodes text through it (`bpe.rs`) and decodes token texts through it (`vocab.rs`).

/// The bytes that GPT-2's byte-level encoding does not keep as themselves, in order; the n-th of them is
/// written as U+0100 + n.
const REMAPPED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let (mut b, mut n) = (0usize, 0usize);
    while b < 256 {
        if !is_printable_latin1(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// The code point GPT-2's byte-level encoding uses for byte `b`: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes are numbered in order from U+0100.
pub(crate) fn byte_to_char(b: u8) -> char {
    if is_printable_latin1(b) {
        return char::from(b);
    }
    let rank = REMAPPED_BYTES.iter().position(|&x| x == b).unwrap_or(0) as u32;
    char::from_u32(0x100 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a byte-level code point stands for, if it is one of the 256.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        let b = cp as u8;
        return is_printable_latin1(b).then_some(b);
    }
    REMAPPED_BYTES.get((cp - 0x100) as usize).copied()
}

/// '!'..='~', '¡'..='¬' and '®'..='ÿ' keep their own code point in the byte-level map.
const fn is_printable_latin1(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_is_a_bijection() {
        let chars: Vec<char> = (0..=255u8).map(byte_to_char).collect();
        for (b, &c) in chars.iter().enumerate() {
            assert_eq!(char_to_byte(c), Some(b as u8));
        }
        let mut sorted = chars.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        // GPT-2: space is 'Ġ' (U+0120), newline 'Ċ' (U+010A), 'A' itself.
        assert_eq!((chars[0x20], chars[0x0A], chars[0x41]), ('Ġ', 'Ċ', 'A'));
        assert_eq!(char_to_byte('日'), None);
    }
}
