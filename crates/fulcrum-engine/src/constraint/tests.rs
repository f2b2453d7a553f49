use super::*;
use fulcrum_core::gguf::GgufFile;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// SplitMix64: a seeded generator for random walks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn logit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
    }
}

/// The Qwen2.5-Coder tokenizer (151k tokens, byte-level BPE) and its factory, built once for every test.
fn qwen() -> &'static (Tokenizer, ConstraintFactory) {
    static QWEN: OnceLock<(Tokenizer, ConstraintFactory)> = OnceLock::new();
    QWEN.get_or_init(|| {
        let path = fulcrum_models::resolve("qwen2.5-coder-0.5b-instruct", true).expect("model");
        let file = GgufFile::open(&path).expect("gguf");
        let tokenizer = fulcrum_core::vocab::tokenizer_from_gguf(&file).expect("tokenizer");
        let start = Instant::now();
        let factory = ConstraintFactory::from_tokenizer(&tokenizer).expect("factory");
        eprintln!(
            "constraint factory for {} tokens built in {:?}",
            factory.vocab_size(),
            start.elapsed()
        );
        (tokenizer, factory)
    })
}

/// A byte-level vocabulary: one token per byte, two longer ones, and a special end token (id 258).
fn bytes_factory() -> &'static ConstraintFactory {
    static BYTES: OnceLock<ConstraintFactory> = OnceLock::new();
    const EOS: u32 = 258;
    BYTES.get_or_init(|| {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.push(b"true".to_vec());
        tokens.push(b"12".to_vec());
        tokens.push(b"\xff<eos>".to_vec());
        ConstraintFactory::new(tokens, &[EOS]).expect("byte factory")
    })
}

/// Whether `text`, fed byte by byte, is allowed throughout and complete at the end.
fn accepts(constraint: &mut Constraint, text: &str) -> bool {
    text.bytes().all(|b| constraint.commit(b as u32).is_ok()) && constraint.is_accepting()
}

fn allowed_ids(mask: &[u32]) -> Vec<u32> {
    let mut ids = Vec::new();
    for (w, &word) in mask.iter().enumerate() {
        for bit in 0..32 {
            if word >> bit & 1 == 1 {
                ids.push((w * 32 + bit) as u32);
            }
        }
    }
    ids
}

fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 12 },
            "color": { "enum": ["red", "green", "blue"] },
            "size": {
                "type": "object",
                "properties": {
                    "width": { "type": "integer", "minimum": 0, "maximum": 999 },
                    "unit": { "enum": ["cm", "in"] }
                },
                "required": ["width", "unit"],
                "additionalProperties": false
            },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 6 }, "maxItems": 3 },
            "ok": { "type": "boolean" }
        },
        "required": ["name", "color", "size", "tags", "ok"],
        "additionalProperties": false
    })
}

#[test]
fn shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ConstraintFactory>();
    send::<Constraint>();
}

#[test]
fn special_tokens_are_marked_and_text_tokens_are_raw_bytes() {
    let (tokenizer, _) = qwen();
    let words = token_words(tokenizer);
    let im_start = tokenizer.token_id("<|im_start|>").expect("<|im_start|>");
    assert_eq!(words[im_start as usize], b"\xff<|im_start|>");
    for &eog in tokenizer.eog_ids() {
        assert_eq!(
            words[eog as usize][0], SPECIAL_TOKEN_MARKER,
            "end token {eog}"
        );
    }
    // Byte-level BPE: "Ġhello" is the bytes " hello".
    let hello = tokenizer.encode(" hello", false, false);
    assert_eq!(hello.len(), 1);
    assert_eq!(words[hello[0] as usize], b" hello");
}

#[test]
fn regex_walk_from_random_logits_gives_only_digits() {
    let (tokenizer, factory) = qwen();
    for seed in 1..=5 {
        let mut rng = Rng(seed);
        let mut constraint = factory
            .compile(&ConstraintSpec::Regex("[0-9]+".into()))
            .unwrap();
        let mut ids = Vec::new();
        let mut logits = vec![0.0f32; factory.vocab_size()];
        while ids.len() < 20 && !(constraint.is_accepting() && constraint.is_stopped()) {
            logits.iter_mut().for_each(|l| *l = rng.logit());
            constraint.apply(&mut logits).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            assert!(constraint.allows(best));
            constraint.commit(best).unwrap();
            ids.push(best);
        }
        let text = tokenizer.decode(&ids, false);
        assert!(
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
            "seed {seed}: {text:?}"
        );
        assert!(constraint.is_accepting());
        if tokenizer.is_eog(*ids.last().unwrap()) {
            assert!(constraint.is_stopped());
        }
    }
}

#[test]
fn end_tokens_only_once_complete_and_other_specials_never() {
    let (tokenizer, factory) = qwen();
    let mut constraint = factory
        .compile(&ConstraintSpec::Regex("[0-9]+".into()))
        .unwrap();
    let eos = tokenizer.eos().unwrap();
    let im_start = tokenizer.token_id("<|im_start|>").unwrap();
    assert!(!constraint.allows(eos) && !constraint.allows(im_start));
    let allowed = allowed_ids(constraint.mask().unwrap());
    assert!(allowed.iter().all(|&id| tokenizer
        .decode(&[id], false)
        .bytes()
        .all(|b| b.is_ascii_digit())));
    let seven = tokenizer.encode("7", false, false)[0];
    assert_eq!(
        constraint.commit(eos),
        Err(ConstraintError::Rejected { token: eos })
    );
    constraint.commit(seven).unwrap();
    assert!(constraint.allows(eos) && !constraint.allows(im_start));
    constraint.commit(eos).unwrap();
    assert!(constraint.is_stopped() && constraint.is_accepting());
    assert_eq!(allowed_ids(constraint.mask().unwrap()), tokenizer.eog_ids());
}

#[test]
fn random_walks_under_a_schema_give_valid_json() {
    let (tokenizer, factory) = qwen();
    let spec = ConstraintSpec::JsonSchema(schema());
    let mut mask_time = Duration::ZERO;
    let mut masks = 0u32;
    for seed in 1..=6 {
        let mut rng = Rng(seed);
        let mut constraint = factory.compile(&spec).unwrap();
        let mut ids = Vec::new();
        while !constraint.is_stopped() {
            assert!(ids.len() < 400, "seed {seed}: no end after 400 tokens");
            let start = Instant::now();
            let allowed = allowed_ids(constraint.mask().unwrap());
            mask_time += start.elapsed();
            masks += 1;
            let token = allowed[rng.below(allowed.len())];
            constraint.commit(token).unwrap();
            ids.push(token);
        }
        let text_ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| !tokenizer.is_eog(id))
            .collect();
        let text = tokenizer.decode(&text_ids, false);
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        let object = value.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["color", "name", "ok", "size", "tags"],
            "seed {seed}: {text}"
        );
        assert!(
            ["red", "green", "blue"].contains(&object["color"].as_str().unwrap()),
            "{text}"
        );
        assert!(
            object["name"].as_str().unwrap().chars().count() <= 12,
            "{text}"
        );
        assert!(object["ok"].is_boolean(), "{text}");
        let size = object["size"].as_object().unwrap();
        assert_eq!(size.len(), 2, "{text}");
        assert!(size["width"].as_u64().unwrap() <= 999, "{text}");
        assert!(
            ["cm", "in"].contains(&size["unit"].as_str().unwrap()),
            "{text}"
        );
        // The bounded-whitespace default: one blank, or a newline and at most 20 blanks, between two lexemes.
        for run in text
            .split(|c: char| !c.is_whitespace())
            .filter(|r| !r.is_empty())
        {
            assert!(
                run == " " || (run.starts_with('\n') && run.len() <= 21),
                "{run:?} in {text}"
            );
        }
        let tags = object["tags"].as_array().unwrap();
        assert!(tags.len() <= 3, "{text}");
        assert!(
            tags.iter()
                .all(|t| t.as_str().unwrap().chars().count() <= 6),
            "{text}"
        );
        eprintln!("seed {seed}: {} tokens: {text}", ids.len());
    }
    eprintln!(
        "mask time over {} tokens of a {}-token vocabulary: {:?} per token",
        masks,
        factory.vocab_size(),
        mask_time / masks
    );
}

#[test]
fn any_json_object_parses() {
    let (tokenizer, factory) = qwen();
    let mut rng = Rng(7);
    let mut constraint = factory.compile(&ConstraintSpec::JsonObject).unwrap();
    let document = r#"{"a": [1, 2.5, {"b": null}], "c": "d"}"#;
    let ids = tokenizer.encode(document, false, false);
    assert_eq!(constraint.valid_prefix(&ids), ids.len());
    for &id in &ids {
        constraint.commit(id).unwrap();
    }
    assert!(constraint.is_accepting() && constraint.is_stopped());
    let mut other = factory.compile(&ConstraintSpec::JsonObject).unwrap();
    let not_object = tokenizer.encode("[1]", false, false);
    assert_eq!(other.valid_prefix(&not_object), 0);
    assert!(!other.allows(not_object[0]));
    let _ = rng.next();
}

#[test]
fn invalid_formats_are_errors_not_panics() {
    let (_, factory) = qwen();
    let cases = [
        ConstraintSpec::JsonSchema(serde_json::json!({ "type": "strnig" })),
        ConstraintSpec::JsonSchema(serde_json::json!({ "$ref": "#/$defs/missing" })),
        ConstraintSpec::JsonSchema(
            serde_json::json!({ "type": "integer", "minimum": 5, "maximum": 1 }),
        ),
        ConstraintSpec::Regex("[0-9".into()),
        ConstraintSpec::Regex("(abc".into()),
        ConstraintSpec::Lark("start: undefined_rule".into()),
        ConstraintSpec::Gbnf("root ::= \"a".into()),
        ConstraintSpec::Gbnf("root ::= missing".into()),
        ConstraintSpec::Gbnf("item ::= \"a\"".into()),
    ];
    for spec in cases {
        match factory.compile(&spec) {
            Err(error @ ConstraintError::Invalid { .. }) => {
                let message = error.to_string();
                assert!(
                    message.starts_with(&format!("invalid {}: ", spec.kind())),
                    "{message}"
                );
                eprintln!("{message}");
            }
            Err(other) => panic!("{spec:?}: wrong error {other}"),
            Ok(_) => panic!("{spec:?} compiled"),
        }
    }
}

#[test]
fn rollback_restores_the_earlier_mask() {
    let (tokenizer, factory) = qwen();
    let mut constraint = factory
        .compile(&ConstraintSpec::JsonSchema(schema()))
        .unwrap();
    let ids = tokenizer.encode(r#"{"name": "Bob", "color": "red""#, false, false);
    constraint.commit(ids[0]).unwrap();
    let after_one = constraint.mask().unwrap().to_vec();
    constraint.commit(ids[1]).unwrap();
    constraint.commit(ids[2]).unwrap();
    let after_three = constraint.mask().unwrap().to_vec();
    assert_ne!(
        after_one, after_three,
        "the test needs positions with different masks"
    );
    assert_eq!(
        constraint.rollback(4),
        Err(ConstraintError::Rollback {
            asked: 4,
            committed: 3
        })
    );
    constraint.rollback(2).unwrap();
    assert_eq!(constraint.committed(), 1);
    assert_eq!(constraint.mask().unwrap(), &after_one[..]);
    // The same tokens again, then the rest of the prefix.
    for &id in &ids[1..] {
        constraint.commit(id).unwrap();
    }
    assert!(!constraint.is_accepting());
}

#[test]
fn rollback_undoes_the_end_and_tokens_after_the_stop() {
    let (tokenizer, factory) = qwen();
    let mut constraint = factory
        .compile(&ConstraintSpec::Regex("ab".into()))
        .unwrap();
    let ids = tokenizer.encode("ab", false, false);
    for &id in &ids {
        constraint.commit(id).unwrap();
    }
    assert!(constraint.is_stopped());
    let eos = tokenizer.eos().unwrap();
    assert_eq!(constraint.valid_prefix(&[eos, eos, ids[0]]), 2);
    constraint.commit(eos).unwrap();
    constraint.commit(eos).unwrap();
    assert_eq!(
        constraint.commit(ids[0]),
        Err(ConstraintError::Rejected { token: ids[0] })
    );
    constraint.rollback(2 + ids.len()).unwrap();
    assert!(!constraint.is_stopped() && !constraint.is_accepting());
    assert!(constraint.allows(ids[0]));
}

#[test]
fn a_rejected_token_leaves_the_constraint_usable() {
    let mut constraint = bytes_factory()
        .compile(&ConstraintSpec::Regex("[0-9]+".into()))
        .unwrap();
    assert_eq!(
        constraint.commit(b'x' as u32),
        Err(ConstraintError::Rejected { token: b'x' as u32 })
    );
    assert_eq!(
        constraint.commit(9999),
        Err(ConstraintError::Rejected { token: 9999 })
    );
    assert!(accepts(&mut constraint, "42"));
    // Multi-byte token "12" continues the number.
    constraint.commit(257).unwrap();
    assert_eq!(constraint.committed(), 3);
}

#[test]
fn apply_masks_disallowed_and_out_of_vocabulary_logits() {
    let mut constraint = bytes_factory()
        .compile(&ConstraintSpec::Regex("[ab]".into()))
        .unwrap();
    let mut logits = vec![1.0f32; 300];
    constraint.apply(&mut logits).unwrap();
    let kept: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] == 1.0).collect();
    assert_eq!(kept, [b'a' as usize, b'b' as usize]);
    assert!(logits.iter().all(|&l| l == 1.0 || l == f32::NEG_INFINITY));
}

#[test]
fn lark_grammars_constrain() {
    let lark = r#"
        start: "let " NAME " = " (NUMBER | "true") ";"
        NAME: /[a-z]+/
        NUMBER: /[0-9]+/
    "#;
    let factory = bytes_factory();
    let spec = ConstraintSpec::Lark(lark.into());
    assert!(accepts(&mut factory.compile(&spec).unwrap(), "let x = 12;"));
    assert!(accepts(
        &mut factory.compile(&spec).unwrap(),
        "let abc = true;"
    ));
    assert!(!accepts(&mut factory.compile(&spec).unwrap(), "let X = 1;"));
    assert!(!accepts(&mut factory.compile(&spec).unwrap(), "let x = 1"));
}

const JSON_GBNF: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

#[test]
fn llama_cpp_json_gbnf_constrains() {
    let factory = bytes_factory();
    let spec = ConstraintSpec::Gbnf(JSON_GBNF.into());
    for good in [
        r#"{"a": [1, -2.5e3, "x\n\u00e9"], "b": {}}"#,
        "{}",
        r#"{"k": null}"#,
    ] {
        assert!(
            accepts(&mut factory.compile(&spec).unwrap(), good),
            "{good}"
        );
    }
    for bad in [r#"{"a" 1}"#, "[1]", r#"{"a": tru}"#, "{\"a\": \"\x01\"}"] {
        assert!(!accepts(&mut factory.compile(&spec).unwrap(), bad), "{bad}");
    }
}

#[test]
fn gbnf_converts_to_lark() {
    let gbnf = r#"
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t]*
anyChar-x ::= . "\x41" [^\]]
"#;
    let expected = r#"%llguidance {}

start: (expr "=" WS term "\n")+
expr: term (/[\x{2d}\x{2b}\x{2a}\x{2f}]/ term)*
term: IDENT
    | NUM
    | "(" WS expr ")" WS
IDENT: /[a-z]/ /[a-z0-9\x{5f}]/* WS
NUM: /[0-9]/+ WS
WS: /[\x{20}\x{9}]/*
ANY_CHAR_X: /(?s:.)/ "A" /[^\x{5d}]/
"#;
    assert_eq!(gbnf_to_lark(gbnf).unwrap(), expected);
    let factory = bytes_factory();
    let spec = ConstraintSpec::Gbnf(gbnf.into());
    assert!(accepts(
        &mut factory.compile(&spec).unwrap(),
        "a=(b+1)\nx = 2\n"
    ));
    assert!(!accepts(&mut factory.compile(&spec).unwrap(), "a=\n"));
}

#[test]
fn gbnf_errors_name_the_place() {
    let error = gbnf_to_lark("root ::= \"a\"\nitem ::= [z-a]\n").unwrap_err();
    assert!(error.contains("line 2"), "{error}");
    let error = gbnf_to_lark("root ::= <[1234]>").unwrap_err();
    assert!(error.contains("token references"), "{error}");
    let error = gbnf_to_lark("root ::= a-b\na-b ::= \"x\"\na_b ::= \"y\"").unwrap_err();
    assert!(error.contains("rename"), "{error}");
}

/// The converter's one change of meaning: a terminal rule is one greedy lexeme, so it never gives back a character
/// that what follows needs (llguidance's lexer, as with its own `gbnf_to_lark.py`). A rule rather than a terminal
/// (here, one that refers to a rule) keeps GBNF's meaning.
#[test]
fn gbnf_terminal_rules_match_greedily() {
    let factory = bytes_factory();
    let greedy = ConstraintSpec::Gbnf("root ::= [0-9]+ ws \"\\n\"\nws ::= [ \\n]*".into());
    assert!(accepts(&mut factory.compile(&greedy).unwrap(), "12\n"));
    assert!(!accepts(&mut factory.compile(&greedy).unwrap(), "12 \n"));
    let exact = ConstraintSpec::Gbnf("root ::= [0-9]+ ws \"\\n\"\nws ::= ([ \\n] ws)?".into());
    assert!(accepts(&mut factory.compile(&exact).unwrap(), "12 \n"));
}
