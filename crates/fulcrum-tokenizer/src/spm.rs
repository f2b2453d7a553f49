//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp's `llm_tokenizer_spm_session`:
//! start from single code points, repeatedly merge the adjacent pair whose concatenation is the token with
//! the highest score (leftmost on ties), and write code points that are not tokens as `<0xXX>` byte tokens.
//! This is greedy bigram merging, not SentencePiece's Viterbi unigram search.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::vocab::Vocab;

/// A candidate merge of two adjacent symbols; the heap's top is the best score, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Scores compare as floats do in llama.cpp (-0 == +0); the smaller left index wins a tie.
        let by_score = if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        by_score.then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// A run of the text being merged; `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Appends the tokens of `text` (spaces already escaped as "▁") to `out`.
pub(crate) fn encode(text: &str, vocab: &Vocab, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = symbols.len();
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i.checked_sub(1),
            next: (start + len < text.len()).then_some(i + 1),
        });
    }
    let mut queue = BinaryHeap::with_capacity(symbols.len());
    for i in 1..symbols.len() {
        push_pair(text, vocab, &symbols, i - 1, i, &mut queue);
    }
    while let Some(Bigram {
        left, right, size, ..
    }) = queue.pop()
    {
        let (l, r) = (symbols[left], symbols[right]);
        // Skip candidates made stale by an earlier merge of either symbol.
        if l.len == 0 || r.len == 0 || l.len + r.len != size {
            continue;
        }
        symbols[left].len = size;
        symbols[left].next = r.next;
        symbols[right].len = 0;
        if let Some(n) = r.next {
            symbols[n].prev = Some(left);
        }
        if let Some(p) = l.prev {
            push_pair(text, vocab, &symbols, p, left, &mut queue);
        }
        if let Some(n) = r.next {
            push_pair(text, vocab, &symbols, left, n, &mut queue);
        }
    }
    for s in symbols.iter().filter(|s| s.len > 0) {
        let piece = &text[s.start..s.start + s.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            // Only a single code point can be left unknown (merges always form tokens): spell its bytes.
            None => out.extend(piece.bytes().filter_map(|b| byte_token(vocab, b))),
        }
    }
}

fn push_pair(
    text: &str,
    vocab: &Vocab,
    symbols: &[Symbol],
    left: usize,
    right: usize,
    queue: &mut BinaryHeap<Bigram>,
) {
    let (l, r) = (symbols[left], symbols[right]);
    let size = l.len + r.len;
    if let Some(id) = vocab.id(&text[l.start..l.start + size]) {
        queue.push(Bigram {
            score: vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}

/// The token for one raw byte: `<0xXX>`, else the byte itself as text, else the unknown token.
fn byte_token(vocab: &Vocab, b: u8) -> Option<u32> {
    let hex = format!("<0x{b:02X}>");
    vocab
        .id(&hex)
        .or_else(|| {
            if b.is_ascii() {
                vocab.id(char::from(b).encode_utf8(&mut [0; 4]))
            } else {
                None
            }
        })
        .or(vocab.unk)
}
