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

/// Partitions `text` on special tokens; empty text fragments are dropped.
pub(crate) fn partition<'a>(
    text: &'a str,
    vocab: &Vocab,
    parse_special: bool,
) -> Vec<Fragment<'a>> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(text));
    let mut next = Vec::new();
    for &id in &vocab.specials {
        if !parse_special && vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let special = vocab.texts[id as usize].as_str();
        // A token absent from the whole text is absent from every fragment: skip the rebuild.
        if !text.contains(special) {
            continue;
        }
        next.clear();
        for &fragment in &fragments {
            let Fragment::Text(t) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut rest = 0;
            for (at, _) in t.match_indices(special) {
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
