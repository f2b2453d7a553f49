//! The vocabulary: token texts, attributes, special ids and decoded pieces, built as llama.cpp's
//! `llama_vocab::impl::load` builds them (defaults, end-of-generation detection by text, special-token order).

use crate::byte_level;
use crate::fxhash::FxHashMap;
use crate::spec::{TokenizerError, VocabSpec};

/// Token attribute bits (a subset of llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;
}

/// Which decoding rules apply to normal tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// SentencePiece: "▁" stands for a space, `<0xXX>` tokens for raw bytes.
    Spm,
    /// Byte-level BPE: every byte is one printable code point (GPT-2's `bytes_to_unicode`).
    Bpe,
}

/// End-of-turn token texts that llama.cpp detects when the file has no `eot_token_id`.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Token texts that end generation wherever they appear in a vocabulary (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The vocabulary with everything the tokenizers and the decoder look up.
pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u8>,
    pub token_to_id: FxHashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order of the special partition.
    pub specials: Vec<u32>,
    /// Decoded bytes of every token (special tokens as their text), concatenated.
    pieces: Vec<u8>,
    /// `pieces[piece_ends[i - 1]..piece_ends[i]]` is token i's piece.
    piece_ends: Vec<usize>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    /// End-of-generation ids, sorted.
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

impl Vocab {
    /// Builds the vocabulary; `bpe_adds_bos` is the pre-tokenizer's default for `add_bos_token`.
    pub fn new(spec: VocabSpec, kind: Kind, bpe_adds_bos: bool) -> Result<Vocab, TokenizerError> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let scores = match spec.scores {
            Some(s) if s.len() < n => {
                return Err(TokenizerError::ShortArray {
                    field: "tokenizer.ggml.scores",
                    len: s.len(),
                    expected: n,
                })
            }
            Some(mut s) => {
                s.truncate(n);
                s
            }
            None => vec![0.0; n],
        };
        let mut attrs = match &spec.token_types {
            Some(t) if t.len() < n => {
                return Err(TokenizerError::ShortArray {
                    field: "tokenizer.ggml.token_type",
                    len: t.len(),
                    expected: n,
                })
            }
            Some(t) => t[..n].iter().map(|&ty| type_to_attr(ty)).collect(),
            None => vec![attr::NORMAL; n],
        };

        // llama.cpp renames empty tokens so that every text maps to an id; a repeated text maps to its last id.
        let texts: Vec<String> = (spec.tokens.into_iter().enumerate())
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t
                }
            })
            .collect();
        let mut token_to_id = FxHashMap::default();
        token_to_id.reserve(n);
        for (i, t) in texts.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        // Defaults of llama.cpp for ids the file does not give; ids out of range fall back to them.
        let (default_bos, default_eos, default_unk) = match kind {
            Kind::Spm => (Some(1), Some(2), Some(0)),
            Kind::Bpe => (Some(11), Some(11), None),
        };
        let pick = |given: Option<u32>, default: Option<u32>| {
            given
                .filter(|&id| (id as usize) < n)
                .or(default.filter(|&id| (id as usize) < n))
        };
        let bos = pick(spec.bos, default_bos);
        let eos = pick(spec.eos, default_eos);
        let unk = pick(spec.unk, default_unk);
        let mut eot = pick(spec.eot, None);
        let mut eom = pick(spec.eom, None);

        let add_bos = spec.add_bos.unwrap_or(kind == Kind::Spm || bpe_adds_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        let add_space_prefix = spec.add_space_prefix.unwrap_or(kind == Kind::Spm);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                flag: "add_bos_token",
                what: "BOS",
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                flag: "add_eos_token",
                what: "EOS",
            });
        }

        // Tokens found by text are forced to be control tokens, as llama.cpp does. Where several texts of a
        // list are present llama.cpp takes whichever its hash map yields first; we take the list's order.
        let find = |list: &[&str], attrs: &mut Vec<u8>| {
            let id = list.iter().find_map(|t| token_to_id.get(*t).copied());
            if let Some(id) = id {
                attrs[id as usize] |= attr::CONTROL;
            }
            id
        };
        if eot.is_none() {
            eot = find(EOT_TEXTS, &mut attrs);
        }
        if eom.is_none() {
            eom = find(EOM_TEXTS, &mut attrs);
        }
        for list in [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS] {
            find(list, &mut attrs);
        }
        let mut eog: Vec<u32> = Vec::new();
        for list in [FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS] {
            eog.extend(find(list, &mut attrs));
        }
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        drop_conflicting_eog(&texts, &mut attrs, &mut eog);

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));

        let mut vocab = Vocab {
            texts,
            scores,
            attrs,
            token_to_id,
            specials,
            pieces: Vec::new(),
            piece_ends: Vec::new(),
            bos,
            eos,
            eot,
            unk,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        };
        vocab.build_pieces(kind);
        Ok(vocab)
    }

    /// The id of the exact text, if it is a token.
    #[inline]
    pub fn id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & attr::CONTROL != 0)
    }

    /// The decoded bytes of `id`, as llama.cpp's `token_to_piece(id, lstrip = 0, special)`.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        let Some(&a) = self.attrs.get(i) else {
            return &[];
        };
        if !special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
        &self.pieces[start..self.piece_ends[i]]
    }

    /// Precomputes every token's piece (special tokens as text), like llama.cpp's piece cache.
    fn build_pieces(&mut self, kind: Kind) {
        let mut pieces = Vec::with_capacity(self.texts.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(self.texts.len());
        for (text, &a) in self.texts.iter().zip(&self.attrs) {
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                pieces.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                match kind {
                    Kind::Spm => {
                        for (k, part) in text.split('\u{2581}').enumerate() {
                            if k > 0 {
                                pieces.push(b' ');
                            }
                            pieces.extend_from_slice(part.as_bytes());
                        }
                    }
                    Kind::Bpe => decode_byte_level(text, &mut pieces),
                }
            } else if a & attr::BYTE != 0 {
                pieces.push(byte_token_value(text));
            }
            // Unused and undefined tokens decode to nothing.
            ends.push(pieces.len());
        }
        self.pieces = pieces;
        self.piece_ends = ends;
    }
}

/// Maps a GGUF token type to attribute bits (0 undefined, 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte).
fn type_to_attr(ty: i32) -> u8 {
    match ty {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// llama.cpp's exceptions to its end-of-generation list: `<|end|>` is a plain turn separator when the
/// vocabulary also has `<|return|>`/`<|call|>` (or `<|calls|>`/`<|flush|>`), and `</s>` is normal text when
/// `<|tool_response>` or `<|plamo:eos|>` is present.
fn drop_conflicting_eog(texts: &[String], attrs: &mut [u8], eog: &mut Vec<u32>) {
    let has = |eog: &Vec<u32>, t: &str| eog.iter().find(|&&id| texts[id as usize] == t).copied();
    if let Some(end) = has(eog, "<|end|>") {
        let call = has(eog, "<|call|>").or(has(eog, "<|calls|>")).is_some();
        if call && (has(eog, "<|return|>").is_some() || has(eog, "<|flush|>").is_some()) {
            eog.retain(|&id| id != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    if let Some(s) = has(eog, "</s>") {
        if has(eog, "<|tool_response>").is_some() || has(eog, "<|plamo:eos|>").is_some() {
            eog.retain(|&id| id != s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
}

/// Decodes a byte-level BPE token text; a code point outside the byte map is kept as llama.cpp reports it.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match byte_level::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// The byte of a `<0xXX>` token: the hex digits at offsets 3..5, parsed like C's `strtol` (0 if none).
fn byte_token_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..text.len().min(5)).unwrap_or(&[]);
    let mut value = 0u8;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(v) => value = value.wrapping_mul(16).wrapping_add(v as u8),
            None => break,
        }
    }
    value
}
