//! Properties of the real tokenizers: decoding inverts encoding, and streaming decode equals decode; checked on
//! generated text and by the stable-toolchain fuzzer on arbitrary bytes (`fuzz_*`; long runs: `scripts/fuzz.sh`).

mod common;
#[path = "../../fulcrum-gguf/tests/fuzzing/driver.rs"]
mod fuzzing;

use std::sync::OnceLock;

use fulcrum_tokenizer::{StreamDecoder, Tokenizer};
use proptest::prelude::*;

fn gemma() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| common::load(common::GEMMA))
}

fn qwen() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| common::load(common::QWEN_05))
}

/// Text mixing ASCII, whitespace runs, accents, CJK, emoji (with joiners) and arbitrary code points.
/// U+2581 is left out: SentencePiece reads it as an escaped space, so it cannot round-trip there.
fn text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "[a-zA-Z0-9 ,.'!?]{1,8}",
        "[ \t\n\r]{1,4}",
        "[éüßçñ日本語한국어ภาษา]{1,4}",
        "[🙂👍🏽🦀🇫🇷\u{200d}❤️𓀀𝔘ꙮ]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..12).prop_map(|v| v.concat().replace('\u{2581}', "_"))
}

fn round_trip(tok: &Tokenizer, s: &str) -> Result<(), TestCaseError> {
    // parse_special = false: text that looks like a control token stays text, so decoding restores it.
    let ids = tok.encode(s, true, false);
    prop_assert_eq!(tok.decode(&ids, false), s);
    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(tok, id));
    }
    streamed.push_str(&stream.flush());
    prop_assert_eq!(streamed, s);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn gemma_decode_inverts_encode(s in text()) {
        round_trip(gemma(), &s)?;
    }

    #[test]
    fn qwen_decode_inverts_encode(s in text()) {
        round_trip(qwen(), &s)?;
    }
}

/// Streams `ids` one token at a time, checking that no chunk ends inside a character.
fn stream_chunks(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = StreamDecoder::new();
    let mut chunks: Vec<String> = ids.iter().map(|&id| stream.push(tok, id)).collect();
    chunks.push(stream.flush());
    chunks
}

#[test]
fn streaming_splits_only_at_character_boundaries() {
    // Rare characters that both vocabularies spell with several byte tokens.
    let text = "a𓀀b𝔘ꙮ\u{10FFFD}c";
    for tok in [gemma(), qwen()] {
        let ids = tok.encode(text, false, false);
        let partial = ids
            .iter()
            .filter(|&&id| std::str::from_utf8(tok.token_bytes(id, false)).is_err())
            .count();
        assert!(
            partial >= 4,
            "expected byte tokens that split characters, got {ids:?}"
        );
        let chunks = stream_chunks(tok, &ids);
        assert_eq!(chunks.concat(), tok.decode(&ids, false));
        assert_eq!(chunks.concat(), text);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
        // Each character appears whole in exactly one chunk.
        assert!(chunks.iter().any(|c| c.contains('𓀀')));
    }
}

/// The fuzzer's view of a tokenizer: any bytes (as text, lossily) round-trip through encode and decode, streaming
/// included; special-token parsing and decoding arbitrary ids never panic.
fn fuzz_tokenizer(name: &str, tok: &Tokenizer, specials: &[&str]) {
    let fuzz = fuzzing::Fuzz {
        name,
        seeds: vec![
            b"Hello, world! def f(x):\n    return x * 2".to_vec(),
            "日本語 한국어 🙂👍🏽 \t\r\n  spaces".as_bytes().to_vec(),
            b"<|im_start|>user\nhi<|im_end|><start_of_turn>model\n".to_vec(),
        ],
        dictionary: fuzzing::words(specials),
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        max_len: 512,
    };
    fuzz.run(|bytes| {
        // SentencePiece reads U+2581 as an escaped space, so it cannot round-trip there.
        let text = String::from_utf8_lossy(bytes).replace('\u{2581}', "_");
        let ids = tok.encode(&text, true, false);
        assert_eq!(tok.decode(&ids, false), text, "round trip");
        let mut stream = StreamDecoder::new();
        let mut streamed: String = ids.iter().map(|&id| stream.push(tok, id)).collect();
        streamed.push_str(&stream.flush());
        assert_eq!(streamed, text, "streamed round trip");
        let parsed = tok.encode(&text, true, true);
        let _ = tok.decode(&parsed, true);
        // Arbitrary ids, in range or not.
        let ids: Vec<u32> = bytes
            .chunks(3)
            .map(|c| {
                c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) % (tok.vocab_size() as u32 + 16)
            })
            .collect();
        let _ = tok.decode(&ids, true);
        let mut stream = StreamDecoder::new();
        for &id in &ids {
            let _ = stream.push(tok, id);
        }
    });
}

#[test]
fn fuzz_qwen_tokenizer() {
    fuzz_tokenizer(
        "tokenizer-qwen",
        qwen(),
        &[
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|fim_prefix|>",
            "\n\n",
            "   ",
        ],
    );
}

#[test]
fn fuzz_gemma_tokenizer() {
    fuzz_tokenizer(
        "tokenizer-gemma",
        gemma(),
        &[
            "<start_of_turn>",
            "<end_of_turn>",
            "<bos>",
            "<eos>",
            "\n\n",
            "   ",
        ],
    );
}
