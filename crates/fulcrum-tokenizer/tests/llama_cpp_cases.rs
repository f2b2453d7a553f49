//! Differential cases: edge-case and seeded random texts with the ids llama.cpp's `llama_tokenize` gave
//! them (tests/data/*.cases.json, made by tools/gen_llama_cpp_cases.py), for both flag settings.
//! Variant files ("<model>+<key>=<value>") were made from the real vocabulary with one metadata key
//! changed, to cover the other pre-tokenizers and the SentencePiece space prefix.

mod common;

use std::path::PathBuf;

use fulcrum_tokenizer::{Tokenizer, VocabSpec};

fn check(model: &str) {
    check_variant(model, model, |_| {});
}

fn check_variant(name: &str, model: &str, change: impl FnOnce(&mut VocabSpec)) {
    // FULCRUM_TOKENIZER_CASES_DIR points at a larger, regenerated set (see the generator's CASES_* variables).
    let dir = std::env::var_os("FULCRUM_TOKENIZER_CASES_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
        PathBuf::from,
    );
    let path = dir.join(format!("{name}.cases.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("cases file is not JSON");
    let mut spec = common::load_spec(model);
    change(&mut spec);
    let tok = Tokenizer::new(spec).expect("tokenizer");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{name}: no cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let add_special = case["add_special"].as_bool().expect("add_special");
        let parse_special = case["parse_special"].as_bool().expect("parse_special");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, add_special, parse_special);
        if got != want {
            failures.push(format!("{text:?} (add_special={add_special}, parse_special={parse_special})\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn gemma3_matches_llama_cpp() {
    check(common::GEMMA);
}

#[test]
fn qwen2_matches_llama_cpp() {
    check(common::QWEN_05);
}

#[test]
fn gemma3_with_space_prefix_matches_llama_cpp() {
    check_variant("gemma3-270m+add_space_prefix=true", common::GEMMA, |s| {
        s.add_space_prefix = Some(true)
    });
}

fn check_pre(pre: &str) {
    let name = format!("{}+pre={pre}", common::QWEN_05);
    check_variant(&name, common::QWEN_05, |s| s.pre = Some(pre.to_string()));
}

#[test]
fn llama3_pre_tokenizer_matches_llama_cpp() {
    check_pre("llama-bpe");
}

#[test]
fn dbrx_pre_tokenizer_matches_llama_cpp() {
    check_pre("dbrx");
}

#[test]
fn gpt2_pre_tokenizer_matches_llama_cpp() {
    check_pre("gpt-2");
}

#[test]
fn starcoder_pre_tokenizer_matches_llama_cpp() {
    check_pre("starcoder");
}

#[test]
fn default_pre_tokenizer_matches_llama_cpp() {
    check_pre("default");
}
