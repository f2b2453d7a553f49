//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's `llm_tokenizer_bpe_session`:
//! pre-tokenize, map every byte of a piece to one code point (GPT-2's `bytes_to_unicode`), then repeatedly
//! merge the adjacent pair with the lowest merge rank (leftmost on ties) and look the symbols up as tokens.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::byte_level;
use crate::fxhash::FxHashMap;
use crate::pretokenize::PreTokenizer;
use crate::vocab::Vocab;

/// Merge ranks and the pre-tokenizer of a byte-level BPE vocabulary.
pub(crate) struct Bpe {
    pre: PreTokenizer,
    /// Rank of each merge, keyed by the piece ids of its two halves (first occurrence wins).
    ranks: FxHashMap<(u32, u32), u32>,
    /// Ids for merge halves that are not tokens, numbered after the vocabulary.
    extra_pieces: FxHashMap<String, u32>,
    /// The code point of each byte, precomputed.
    byte_chars: [char; 256],
}

/// One symbol of a word being merged: a byte range of the encoded word and its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    piece: Option<u32>,
}

impl Bpe {
    /// Indexes the merges ("left right", best first) by the piece ids of their halves.
    pub fn new(vocab: &Vocab, merges: &[String], pre: PreTokenizer) -> Bpe {
        let mut extra_pieces: FxHashMap<String, u32> = FxHashMap::default();
        let mut ranks = FxHashMap::default();
        ranks.reserve(merges.len());
        let mut next_extra = vocab.texts.len() as u32;
        let mut intern = |s: &str, extra: &mut FxHashMap<String, u32>| {
            vocab.id(s).unwrap_or_else(|| {
                *extra.entry(s.to_string()).or_insert_with(|| {
                    next_extra += 1;
                    next_extra - 1
                })
            })
        };
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a line without one never matches.
            let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            if left.is_empty() || right.is_empty() {
                continue;
            }
            let key = (
                intern(left, &mut extra_pieces),
                intern(right, &mut extra_pieces),
            );
            ranks.entry(key).or_insert(rank as u32);
        }
        let byte_chars = std::array::from_fn(|b| byte_level::byte_to_char(b as u8));
        Bpe {
            pre,
            ranks,
            extra_pieces,
            byte_chars,
        }
    }

    /// Appends the tokens of one text fragment (no special tokens inside) to `out`.
    pub fn encode(&self, text: &str, vocab: &Vocab, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut symbols = Vec::new();
        let mut queue = BinaryHeap::new();
        for piece in self.pre.split(text) {
            word.clear();
            word.extend(piece.bytes().map(|b| self.byte_chars[b as usize]));
            if self.pre.ignore_merges() {
                if let Some(id) = vocab.id(&word) {
                    out.push(id);
                    continue;
                }
            }
            self.merge_word(&word, vocab, &mut symbols, &mut queue);
            emit_symbols(&word, &symbols, vocab, out);
        }
    }

    fn piece_id(&self, s: &str, vocab: &Vocab) -> Option<u32> {
        vocab.id(s).or_else(|| self.extra_pieces.get(s).copied())
    }

    /// Splits `word` into code points and merges pairs by rank until no pair has one.
    fn merge_word(
        &self,
        word: &str,
        vocab: &Vocab,
        symbols: &mut Vec<Symbol>,
        queue: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    ) {
        symbols.clear();
        queue.clear();
        for (start, c) in word.char_indices() {
            let len = c.len_utf8();
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len,
                prev: i.checked_sub(1),
                next: (start + len < word.len()).then_some(i + 1),
                piece: self.piece_id(&word[start..start + len], vocab),
            });
        }
        for i in 1..symbols.len() {
            self.push_pair(symbols, i - 1, i, queue);
        }
        // Pop the lowest rank, leftmost first; entries whose symbols changed since are stale.
        while let Some(Reverse((_, left, right, size))) = queue.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != size {
                continue;
            }
            symbols[left].len = size;
            symbols[left].next = r.next;
            symbols[left].piece = self.piece_id(&word[l.start..l.start + size], vocab);
            symbols[right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(left);
            }
            if let Some(p) = l.prev {
                self.push_pair(symbols, p, left, queue);
            }
            if let Some(n) = r.next {
                self.push_pair(symbols, left, n, queue);
            }
        }
    }

    fn push_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        if let (Some(a), Some(b)) = (l.piece, r.piece) {
            if let Some(&rank) = self.ranks.get(&(a, b)) {
                queue.push(Reverse((rank, left, right, l.len + r.len)));
            }
        }
    }
}

/// Looks up each final symbol; a symbol that is not a token falls back to its single-byte tokens.
fn emit_symbols(word: &str, symbols: &[Symbol], vocab: &Vocab, out: &mut Vec<u32>) {
    for s in symbols.iter().filter(|s| s.len > 0) {
        let text = &word[s.start..s.start + s.len];
        match vocab.id(text) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp looks up each byte as a one-byte string: only ASCII bytes can match a token.
                for b in text.bytes().filter(u8::is_ascii) {
                    let mut buf = [0u8; 4];
                    if let Some(id) = vocab.id(char::from(b).encode_utf8(&mut buf)) {
                        out.push(id);
                    }
                }
            }
        }
    }
}
