//! Facts about the real vocabularies that llama.cpp reports when it loads them (its `print_info` and
//! EOG listing for these files), and decoding rules for their special tokens.

mod common;

#[test]
fn gemma3_special_tokens() {
    let tok = common::load(common::GEMMA);
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!(
        (tok.bos(), tok.eos(), tok.eot()),
        (Some(2), Some(1), Some(106))
    );
    assert!(tok.add_bos() && !tok.add_eos());
    // llama.cpp: EOG tokens 1 '<eos>', 106 '<end_of_turn>', 212 '</s>'.
    assert_eq!(tok.eog_ids(), [1, 106, 212]);
    assert_eq!(tok.token_text(106), "<end_of_turn>");
    assert_eq!(tok.token_id("<start_of_turn>"), Some(105));
    // Newline runs are user-defined tokens: always text, even with special = false.
    assert_eq!(tok.token_bytes(108, false), b"\n\n");
    assert_eq!(tok.token_bytes(106, false), b"");
    assert_eq!(tok.token_bytes(106, true), b"<end_of_turn>");
    let ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n", true, true);
    assert_eq!(ids[..2], [2, 105]);
    assert_eq!(tok.decode(&ids, false), "user\nHi\n");
    assert_eq!(
        tok.decode(&ids, true),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    );
}

#[test]
fn qwen2_special_tokens() {
    let tok = common::load(common::QWEN_05);
    assert_eq!(tok.vocab_size(), 151936);
    assert_eq!(
        (tok.bos(), tok.eos(), tok.eot()),
        (Some(151643), Some(151645), Some(151645))
    );
    assert!(!tok.add_bos() && !tok.add_eos());
    // llama.cpp: '</s>', '<|endoftext|>', '<|im_end|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>'.
    assert_eq!(
        tok.eog_ids(),
        [128247, 151643, 151645, 151662, 151663, 151664]
    );
    assert!(tok.is_eog(151645) && !tok.is_eog(151644));
    assert!(tok.is_control(151644));
    assert_eq!(
        tok.encode("<|im_start|>user\n", true, true),
        [151644, 872, 198]
    );
    // Without parse_special the same text is spelled out as ordinary tokens.
    let plain = tok.encode("<|im_start|>user\n", true, false);
    assert!(!plain.contains(&151644));
    assert_eq!(tok.decode(&plain, false), "<|im_start|>user\n");
    // Byte-level pieces: 'Ġ' is a space, 'Ċ' a newline.
    assert_eq!(tok.token_bytes(tok.token_id("Ġ").unwrap(), false), b" ");
    assert_eq!(tok.token_bytes(tok.token_id("Ċ").unwrap(), false), b"\n");
    // The 1.5B model has the same vocabulary.
    let big = common::load(common::QWEN_15);
    let text = "fn main() {\n\tprintln!(\"héllo 🙂\");\n}<|im_end|>";
    assert_eq!(big.encode(text, true, true), tok.encode(text, true, true));
}

/// Control-token text inside a guarded range stays text; outside it, and without ranges, it is parsed as usual.
#[test]
fn guarded_ranges_keep_control_text_as_text() {
    for (model, control) in [
        (common::QWEN_05, "<|im_end|>"),
        (common::GEMMA, "<end_of_turn>"),
    ] {
        let tok = common::load(model);
        let id = tok.token_id(control).expect("control token");
        let text = format!("{control}user\nhi {control} there{control}");
        let inner = text.find(" there").unwrap() - control.len();
        let content = inner - 3..inner + control.len() + 6;
        let parsed = tok.encode(&text, false, true);
        assert_eq!(parsed.iter().filter(|&&t| t == id).count(), 3);
        assert_eq!(tok.encode_guarded(&text, false, &[]), parsed);
        let guarded = tok.encode_guarded(&text, false, std::slice::from_ref(&content));
        assert_eq!(guarded.iter().filter(|&&t| t == id).count(), 2, "{model}");
        assert_eq!(tok.decode(&guarded, true), text);
        // The guarded content tokenizes as its plain text would.
        assert!(tok.has_control_text(&text[content.clone()]));
        assert!(!tok.has_control_text("plain words"));
        // A range without control text changes nothing.
        let user = control.len()..control.len() + 4;
        assert_eq!(tok.encode_guarded(&text, false, &[0..0, user]), parsed);
    }
}
