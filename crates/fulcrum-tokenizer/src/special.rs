//! The special-token partition (llama.cpp's `tokenizer_st_partition`): before the model sees the text,
//! occurrences of control, user-defined and unknown tokens' texts are cut out and become those ids.
//!
//! Tokens are taken longest text first; for each, every remaining text fragment is split at all its
//! non-overlapping occurrences, left to right. With `parse_special` off only user-defined tokens are cut.

use crate::vocab::{attr, Vocab};

/// A piece of the input: text still to tokenize, or a special token already recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Partitions `text` on special tokens; empty text fragments are dropped. Control and unknown tokens are parsed
/// only with `parse_special`, and never where they overlap a byte range of `plain`.
pub(crate) fn partition<'a>(
    text: &'a str,
    vocab: &Vocab,
    parse_special: bool,
    plain: &[std::ops::Range<usize>],
) -> Vec<Fragment<'a>> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(text));
    let present = BytePairs::of(text);
    let mut next = Vec::new();
    for &id in &vocab.specials {
        if !parse_special && vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let guarded =
            !plain.is_empty() && vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0;
        let special = vocab.texts[id as usize].as_str();
        // A token absent from the whole text is absent from every fragment: skip the rebuild.
        if !present.may_contain(special) || !text.contains(special) {
            continue;
        }
        next.clear();
        for &fragment in &fragments {
            let Fragment::Text(t) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut rest = 0;
            // Where this fragment starts in `text`.
            let base = t.as_ptr() as usize - text.as_ptr() as usize;
            for (at, _) in t.match_indices(special) {
                let span = base + at..base + at + special.len();
                if guarded
                    && plain
                        .iter()
                        .any(|p| p.start < span.end && span.start < p.end)
                {
                    continue;
                }
                if at > rest {
                    next.push(Fragment::Text(&t[rest..at]));
                }
                next.push(Fragment::Token(id));
                rest = at + special.len();
            }
            if rest < t.len() {
                next.push(Fragment::Text(&t[rest..]));
            }
        }
        std::mem::swap(&mut fragments, &mut next);
    }
    fragments
}

/// Which bytes and adjacent byte pairs occur in a text: a cheap first test before searching it for each of
/// the thousands of special tokens some vocabularies have (Gemma: 6414).
struct BytePairs {
    bytes: [bool; 256],
    pairs: Vec<u64>,
}

impl BytePairs {
    fn of(text: &str) -> BytePairs {
        let mut bytes = [false; 256];
        let mut pairs = vec![0u64; 65536 / 64];
        let b = text.as_bytes();
        for &x in b {
            bytes[x as usize] = true;
        }
        for w in b.windows(2) {
            let k = usize::from(w[0]) << 8 | usize::from(w[1]);
            pairs[k / 64] |= 1 << (k % 64);
        }
        BytePairs { bytes, pairs }
    }

    /// False only if `s` certainly does not occur in the text.
    fn may_contain(&self, s: &str) -> bool {
        match s.as_bytes() {
            [] => false,
            [x] => self.bytes[*x as usize],
            [x, y, ..] => {
                let k = usize::from(*x) << 8 | usize::from(*y);
                self.pairs[k / 64] & (1 << (k % 64)) != 0
            }
        }
    }
}
