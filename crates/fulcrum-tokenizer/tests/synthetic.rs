//! Small hand-made vocabularies whose expected tokenizations follow directly from llama.cpp's algorithms:
//! SPM merge order by score, byte fallback, BPE merge order by rank, the special-token partition, errors.

use fulcrum_tokenizer::{StreamDecoder, Tokenizer, TokenizerError, VocabSpec};

/// An SPM vocabulary: control tokens 0..3, the 256 byte tokens, then `pieces` with their scores.
fn spm(pieces: &[(&str, f32)], user_defined: &[&str]) -> Tokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for &(p, s) in pieces {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(s);
    }
    for &u in user_defined {
        tokens.push(u.to_string());
        types.push(4);
        scores.push(0.0);
    }
    Tokenizer::new(VocabSpec {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_space_prefix: Some(false),
        ..VocabSpec::default()
    })
    .expect("spm vocabulary")
}

fn ids(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts
        .iter()
        .map(|t| {
            tok.token_id(t)
                .unwrap_or_else(|| panic!("{t:?} is not a token"))
        })
        .collect()
}

#[test]
fn spm_merges_the_best_scored_pair_first() {
    let tok = spm(
        &[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -5.0),
            ("bc", -2.0),
        ],
        &[],
    );
    assert_eq!(tok.encode("abc", false, false), ids(&tok, &["a", "bc"]));
    let tok = spm(
        &[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -2.0),
            ("bc", -5.0),
        ],
        &[],
    );
    assert_eq!(tok.encode("abc", false, false), ids(&tok, &["ab", "c"]));
}

#[test]
fn spm_breaks_score_ties_leftmost() {
    let tok = spm(&[("a", -1.0), ("aa", -1.0)], &[]);
    assert_eq!(tok.encode("aaa", false, false), ids(&tok, &["aa", "a"]));
}

#[test]
fn spm_escapes_spaces_and_falls_back_to_bytes() {
    let tok = spm(&[("\u{2581}", -1.0), ("x", -1.0), ("\u{2581}x", -0.5)], &[]);
    // "é" is not a token: its two UTF-8 bytes become <0xC3><0xA9>.
    assert_eq!(
        tok.encode(" x é", true, false),
        ids(&tok, &["<s>", "\u{2581}x", "\u{2581}", "<0xC3>", "<0xA9>"])
    );
    assert_eq!(tok.decode(&tok.encode(" x é", true, false), false), " x é");
}

#[test]
fn partition_takes_longer_special_tokens_first() {
    let tok = spm(&[("x", -1.0)], &["<a>", "<a><b>", "<b>"]);
    assert_eq!(
        tok.encode("x<a><b>x<b><a>", false, true),
        ids(&tok, &["x", "<a><b>", "x", "<b>", "<a>"])
    );
}

#[test]
fn parse_special_off_still_cuts_user_defined_tokens() {
    let tok = spm(&[("x", -1.0)], &["<u>"]);
    // "</s>" is a control token: without parse_special it is spelled out as text (here: bytes).
    let got = tok.encode("x</s><u>", false, false);
    let mut want = ids(&tok, &["x", "<0x3C>", "<0x2F>"]);
    want.extend(ids(&tok, &["<0x73>", "<0x3E>", "<u>"]));
    assert_eq!(got, want);
    assert_eq!(
        tok.encode("x</s><u>", false, true),
        ids(&tok, &["x", "</s>", "<u>"])
    );
}

#[test]
fn control_tokens_decode_only_when_asked() {
    let tok = spm(&[("x", -1.0)], &["<u>"]);
    let toks = tok.encode("</s>x<u>", true, true);
    assert_eq!(tok.decode(&toks, false), "x<u>");
    assert_eq!(tok.decode(&toks, true), "<s></s>x<u>");
    assert!(tok.is_eog(2) && !tok.is_eog(1));
}

/// A byte-level BPE vocabulary over the letters a..e plus `extra` tokens, with `merges`.
fn bpe(extra: &[&str], merges: &[&str]) -> Tokenizer {
    let mut tokens: Vec<String> = "abcde".chars().map(String::from).collect();
    tokens.push("Ġ".into()); // byte 0x20
    tokens.extend(extra.iter().map(|s| s.to_string()));
    Tokenizer::new(VocabSpec {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        tokens,
        ..VocabSpec::default()
    })
    .expect("bpe vocabulary")
}

#[test]
fn bpe_merges_the_lowest_rank_first() {
    let tok = bpe(&["ab", "bc"], &["b c", "a b"]);
    assert_eq!(tok.encode("abc", false, false), ids(&tok, &["a", "bc"]));
    let tok = bpe(&["ab", "bc"], &["a b", "b c"]);
    assert_eq!(tok.encode("abc", false, false), ids(&tok, &["ab", "c"]));
}

#[test]
fn bpe_encodes_spaces_as_byte_level_code_points() {
    let tok = bpe(&["Ġa", "Ġab"], &["Ġ a", "Ġa b"]);
    assert_eq!(tok.encode("a ab", false, false), ids(&tok, &["a", "Ġab"]));
    assert_eq!(tok.decode(&tok.encode("a ab", false, false), false), "a ab");
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let tok = spm(&[("x", -1.0)], &[]);
    let toks = tok.encode("x🙂x", false, false);
    assert_eq!(toks.len(), 6, "the emoji should be four byte tokens");
    let mut stream = StreamDecoder::new();
    let chunks: Vec<String> = toks.iter().map(|&id| stream.push(&tok, id)).collect();
    assert_eq!(chunks, ["x", "", "", "", "🙂", "x"]);
    assert_eq!(stream.flush(), "");
    // A character cut off at the end comes out as one replacement character, like decode's.
    let mut stream = StreamDecoder::new();
    let cut: String = toks[..3]
        .iter()
        .map(|&id| stream.push(&tok, id))
        .collect::<String>()
        + &stream.flush();
    assert_eq!(cut, tok.decode(&toks[..3], false));
    assert_eq!(cut, "x\u{FFFD}");
}

#[test]
fn errors_name_what_is_supported() {
    let err = |spec: VocabSpec| Tokenizer::new(spec).err().expect("should fail");
    let base = VocabSpec {
        tokens: vec!["a".into()],
        merges: Some(vec![]),
        ..VocabSpec::default()
    };
    let e = err(VocabSpec {
        model: "t5".into(),
        ..base.clone()
    });
    assert!(
        matches!(e, TokenizerError::UnknownModel { .. }) && e.to_string().contains("'llama'"),
        "{e}"
    );
    let e = err(VocabSpec {
        model: "gpt2".into(),
        pre: Some("tekken".into()),
        ..base.clone()
    });
    assert!(
        e.to_string().contains("qwen2") && e.to_string().contains("llama-bpe"),
        "{e}"
    );
    let e = err(VocabSpec {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        merges: None,
        ..base.clone()
    });
    assert!(matches!(e, TokenizerError::MissingMerges), "{e}");
    let e = err(VocabSpec {
        model: "llama".into(),
        scores: Some(vec![]),
        add_bos: Some(false),
        ..base.clone()
    });
    assert!(matches!(e, TokenizerError::ShortArray { .. }), "{e}");
    let e = err(VocabSpec {
        model: "llama".into(),
        tokens: vec![],
        ..base
    });
    assert!(matches!(e, TokenizerError::EmptyVocab), "{e}");
}
