//! BPE pre-tokenizers: split a text fragment into the pieces that BPE merges within.
//!
//! Each mirrors what llama.cpp's `unicode_regex_split` does for a pre-tokenizer type: its hand-written
//! scanners for the GPT-2, Llama 3 and Qwen2 regexes (which differ from a regex engine in small ways that
//! matter for exactness), and its pass-by-pass splitting for multi-regex types, where each pass splits the
//! chunks of the previous one into matches and the gaps between them.

use crate::unicode_classes::{LETTER_RANGES, NUMBER_RANGES, PUNCTUATION_RANGES};

/// A pre-tokenizer type (llama.cpp's `llama_vocab_pre_type`, the ones implemented here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// `[\p{P}$+<=>^~|]+`, then GPT-2, then `\p{N}+`, then `[0-9]{3}`.
    Default,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// `\p{N}` alone, then GPT-2.
    StarCoder,
    /// Llama 3: `(?i:'s|..)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    /// `ignore_merges` says whether a piece that is a whole token skips merging (llama3 proper does).
    Llama3 { ignore_merges: bool },
    /// Qwen2: as Llama 3 but with single digits, `\p{N}`.
    Qwen2,
}

/// `tokenizer.ggml.pre` names per type: (names, type, add_bos default).
const NAMES: &[(&[&str], PreTokenizer, bool)] = &[
    (&["default"], PreTokenizer::Default, false),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
        ],
        PreTokenizer::Gpt2,
        false,
    ),
    (
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        PreTokenizer::StarCoder,
        false,
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        PreTokenizer::Llama3 {
            ignore_merges: true,
        },
        true,
    ),
    (
        &["dbrx", "smaug-bpe"],
        PreTokenizer::Llama3 {
            ignore_merges: false,
        },
        false,
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
        ],
        PreTokenizer::Qwen2,
        false,
    ),
];

impl PreTokenizer {
    /// The type for a `tokenizer.ggml.pre` name, with whether it adds BOS by default.
    pub fn from_name(name: &str) -> Option<(PreTokenizer, bool)> {
        NAMES
            .iter()
            .find(|(names, _, _)| names.contains(&name))
            .map(|&(_, pre, bos)| (pre, bos))
    }

    /// Every supported name.
    pub fn supported_names() -> Vec<&'static str> {
        NAMES
            .iter()
            .flat_map(|(names, _, _)| names.iter().copied())
            .collect()
    }

    /// Whether a piece that is itself a token is emitted without merging.
    pub fn ignore_merges(self) -> bool {
        matches!(
            self,
            PreTokenizer::Llama3 {
                ignore_merges: true
            }
        )
    }

    /// Splits `text` into pieces whose concatenation is `text`.
    pub fn split(self, text: &str) -> Vec<&str> {
        let chars: Vec<char> = text.chars().collect();
        let whole = vec![chars.len()];
        let lengths = match self {
            PreTokenizer::Default => {
                let l = split_matches(&chars, &whole, is_default_punct, None);
                let l = split_by(&chars, &l, gpt2);
                let l = split_matches(&chars, &l, |c| flags(c).number, None);
                split_matches(&chars, &l, |c| c.is_ascii_digit(), Some(3))
            }
            PreTokenizer::Gpt2 => split_by(&chars, &whole, gpt2),
            PreTokenizer::StarCoder => {
                let l = split_matches(&chars, &whole, |c| flags(c).number, Some(1));
                split_by(&chars, &l, gpt2)
            }
            PreTokenizer::Llama3 { .. } => {
                split_by(&chars, &whole, |c, out| llama3_like(c, Some(3), out))
            }
            PreTokenizer::Qwen2 => split_by(&chars, &whole, |c, out| llama3_like(c, Some(1), out)),
        };
        let mut pieces = Vec::with_capacity(lengths.len());
        let mut rest = text;
        for n in lengths {
            let bytes: usize = rest.chars().take(n).map(char::len_utf8).sum();
            let (piece, tail) = rest.split_at(bytes);
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }
}

/// The classes the scanners test; all false for a position outside the chunk.
#[derive(Clone, Copy, Default)]
struct Flags {
    present: bool,
    letter: bool,
    number: bool,
    whitespace: bool,
}

fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let cp = c as u32;
    let i = ranges.partition_point(|&(_, end)| end < cp);
    ranges.get(i).is_some_and(|&(start, _)| start <= cp)
}

fn flags(c: char) -> Flags {
    if c.is_ascii() {
        return Flags {
            present: true,
            letter: c.is_ascii_alphabetic(),
            number: c.is_ascii_digit(),
            whitespace: matches!(c, '\t'..='\r' | ' '),
        };
    }
    Flags {
        present: true,
        letter: in_ranges(c, LETTER_RANGES),
        number: in_ranges(c, NUMBER_RANGES),
        // Unicode White_Space, the set llama.cpp uses for `\s`.
        whitespace: c.is_whitespace(),
    }
}

/// `[\p{P}\$\+<=>\^~\|]` as llama.cpp evaluates it (non-ASCII whitespace never matches).
fn is_default_punct(c: char) -> bool {
    matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
        || (!c.is_whitespace() && in_ranges(c, PUNCTUATION_RANGES))
}

/// A chunk of code points with out-of-range reads, like llama.cpp's `_get_cpt`/`_get_flags`.
struct Chunk<'a> {
    chars: &'a [char],
}

impl Chunk<'_> {
    fn len(&self) -> usize {
        self.chars.len()
    }
    fn at(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).copied()
    }
    fn flags(&self, pos: usize) -> Flags {
        self.at(pos).map(flags).unwrap_or_default()
    }
    fn is_newline(&self, pos: usize) -> bool {
        matches!(self.at(pos), Some('\r' | '\n'))
    }
    /// Length of an English contraction (`'s`, `'re`, ...) at `pos`; `fold_case` for the `(?i:...)` forms.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.at(pos) != Some('\'') {
            return None;
        }
        let low = |p: usize| {
            self.at(p)
                .map(|c| if fold_case { c.to_ascii_lowercase() } else { c })
        };
        match (low(pos + 1), low(pos + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
            _ => None,
        }
    }
    /// Whitespace run at `pos`: its length and the end of its last `\r`/`\n`, if any.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut newline_end = None;
        while self.flags(pos + n).whitespace {
            if self.is_newline(pos + n) {
                newline_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, newline_end)
    }
}

/// Applies a scanner to every chunk (given by its length in code points) and concatenates the results.
fn split_by(
    chars: &[char],
    chunks: &[usize],
    scan: impl Fn(&Chunk, &mut Vec<usize>),
) -> Vec<usize> {
    let mut out = Vec::with_capacity(chunks.len());
    let mut start = 0;
    for &len in chunks {
        scan(
            &Chunk {
                chars: &chars[start..start + len],
            },
            &mut out,
        );
        start += len;
    }
    out
}

/// One regex pass of a single character class: matches are runs of `class` (all of a run, or, with
/// `Some(k)`, as many k-long pieces as fit from its start); everything between matches is one gap piece.
fn split_matches(
    chars: &[char],
    chunks: &[usize],
    class: impl Fn(char) -> bool,
    group: Option<usize>,
) -> Vec<usize> {
    split_by(chars, chunks, |chunk, out| {
        let mut gap_start = 0;
        let mut pos = 0;
        while pos < chunk.len() {
            let run = chunk.chars[pos..].iter().take_while(|&&c| class(c)).count();
            let take = match group {
                None => run,
                Some(k) => run / k * k,
            };
            if take == 0 {
                pos += run.max(1);
                continue;
            }
            if pos > gap_start {
                out.push(pos - gap_start);
            }
            let k = group.unwrap_or(take);
            out.extend(std::iter::repeat_n(k, take / k));
            pos += take;
            gap_start = pos;
            // A run's remainder (shorter than k) starts the next gap.
            pos += run - take;
        }
        if chunk.len() > gap_start {
            out.push(chunk.len() - gap_start);
        }
    })
}

/// GPT-2's pattern, as llama.cpp's `unicode_regex_split_custom_gpt2`.
fn gpt2(chunk: &Chunk, out: &mut Vec<usize>) {
    let mut piece_start = 0;
    let mut pos = 0;
    let mut emit = |end: usize, piece_start: &mut usize| {
        if end > *piece_start {
            out.push(end - *piece_start);
        }
        *piece_start = end;
    };
    while pos < chunk.len() {
        if let Some(n) = chunk.contraction(pos, false) {
            pos += n;
            emit(pos, &mut piece_start);
            continue;
        }
        let space = chunk.at(pos) == Some(' ');
        let f = chunk.flags(pos + usize::from(space));
        let run_of = |test: fn(Flags) -> bool, from: usize| {
            let mut p = from;
            while test(chunk.flags(p)) {
                p += 1;
            }
            p
        };
        let other = |f: Flags| f.present && !(f.whitespace || f.letter || f.number);
        if f.letter || f.number || other(f) {
            let test: fn(Flags) -> bool = if f.letter {
                |f| f.letter
            } else if f.number {
                |f| f.number
            } else {
                other
            };
            pos = run_of(test, pos + usize::from(space));
            emit(pos, &mut piece_start);
            continue;
        }
        let (n, _) = chunk.whitespace_run(pos);
        if n > 1 && chunk.at(pos + n).is_some() {
            // `\s+(?!\S)`: leave the last space to prefix the next word.
            pos += n - 1;
        } else {
            pos += n.max(1);
        }
        emit(pos, &mut piece_start);
    }
}

/// The Llama 3 (`digits = Some(3)`) and Qwen2 (`Some(1)`) patterns, as llama.cpp's custom splitters.
fn llama3_like(chunk: &Chunk, digits: Option<usize>, out: &mut Vec<usize>) {
    let max_digits = digits.unwrap_or(usize::MAX);
    let mut piece_start = 0;
    let mut pos = 0;
    let mut emit = |end: usize, piece_start: &mut usize| {
        if end > *piece_start {
            out.push(end - *piece_start);
        }
        *piece_start = end;
    };
    while pos < chunk.len() {
        if let Some(n) = chunk.contraction(pos, true) {
            pos += n;
            emit(pos, &mut piece_start);
            continue;
        }
        let f = chunk.flags(pos);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(chunk.is_newline(pos) || f.number) && (f.letter || chunk.flags(pos + 1).letter) {
            pos += 1;
            while chunk.flags(pos).letter {
                pos += 1;
            }
            emit(pos, &mut piece_start);
            continue;
        }
        // `\p{N}{1,k}`
        if f.number {
            let mut run = 0;
            while chunk.flags(pos).number {
                pos += 1;
                run += 1;
                if run == max_digits {
                    emit(pos, &mut piece_start);
                    run = 0;
                }
            }
            emit(pos, &mut piece_start);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; a lone trailing space also lands here, as in llama.cpp.
        let space = chunk.at(pos) == Some(' ');
        let f2 = if space { chunk.flags(pos + 1) } else { f };
        if !(f2.whitespace || f2.letter || f2.number) {
            pos += usize::from(space);
            loop {
                let g = chunk.flags(pos);
                if !g.present || g.whitespace || g.letter || g.number {
                    break;
                }
                pos += 1;
            }
            while chunk.is_newline(pos) {
                pos += 1;
            }
            emit(pos, &mut piece_start);
            continue;
        }
        let (n, newline_end) = chunk.whitespace_run(pos);
        if let Some(end) = newline_end {
            // `\s*[\r\n]+`: up to the last line break of the run.
            pos = end;
        } else if n > 1 && chunk.at(pos + n).is_some() {
            // `\s+(?!\S)`
            pos += n - 1;
        } else {
            pos += n.max(1);
        }
        emit(pos, &mut piece_start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_unicode_white_space() {
        // llama.cpp's `unicode_set_whitespace`, which `char::is_whitespace` must reproduce.
        let mut want: Vec<u32> = vec![0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680];
        want.extend(0x2000..=0x200A);
        want.extend([0x2028, 0x2029, 0x202F, 0x205F, 0x3000]);
        let got: Vec<u32> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| flags(c).whitespace)
            .map(u32::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn classes_follow_general_categories() {
        assert!(flags('é').letter && flags('日').letter && !flags('\u{0301}').letter);
        assert!(flags('²').number && flags('Ⅻ').number && flags('٣').number && !flags('x').number);
        assert!(
            is_default_punct('!')
                && is_default_punct('「')
                && is_default_punct('$')
                && !is_default_punct('`')
        );
    }

    fn split(pre: PreTokenizer, text: &str) -> Vec<&str> {
        pre.split(text)
    }

    #[test]
    fn qwen2_pieces() {
        let q = PreTokenizer::Qwen2;
        assert_eq!(split(q, "Hello world"), ["Hello", " world"]);
        assert_eq!(split(q, "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(split(q, "don't I'LL"), ["don", "'t", " I", "'LL"]);
        assert_eq!(split(q, "a\n\n  b"), ["a", "\n\n", " ", " b"]);
        assert_eq!(
            split(q, "hello!!\n\nworld  "),
            ["hello", "!!\n\n", "world", "  "]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(
            split(
                PreTokenizer::Llama3 {
                    ignore_merges: true
                },
                "1234567"
            ),
            ["123", "456", "7"]
        );
    }

    #[test]
    fn gpt2_contractions_are_case_sensitive() {
        assert_eq!(
            split(PreTokenizer::Gpt2, "I'LL it's"),
            ["I", "'", "LL", " it", "'s"]
        );
    }

    #[test]
    fn default_runs_its_passes_in_order() {
        let got = split(PreTokenizer::Default, "Hello, world! 1234567");
        assert_eq!(got, ["Hello", ",", " world", "!", " ", "123", "456", "7"]);
    }
}
