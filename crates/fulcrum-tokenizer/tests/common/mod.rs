//! Test helper: reads the `tokenizer.*` metadata of the real GGUF models into a `VocabSpec`.
//!
//! A deliberately minimal GGUF metadata reader (GGUF v2/v3 key-value section, little-endian; spec:
//! ggml's docs/gguf.md) so that these tests do not depend on the fulcrum-gguf crate.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use fulcrum_tokenizer::{Tokenizer, VocabSpec};

/// A metadata value, reduced to what the tokenizer keys use.
#[derive(Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

/// The directory of the real models: `$FULCRUM_MODELS_DIR` or `~/.cache/fulcrum/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FULCRUM_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set and FULCRUM_MODELS_DIR is not set");
    PathBuf::from(home).join(".cache/fulcrum/models")
}

fn read_n<const N: usize>(r: &mut impl Read) -> [u8; N] {
    let mut b = [0u8; N];
    r.read_exact(&mut b).expect("truncated GGUF metadata");
    b
}

fn read_u32(r: &mut impl Read) -> u32 {
    u32::from_le_bytes(read_n(r))
}

fn read_u64(r: &mut impl Read) -> u64 {
    u64::from_le_bytes(read_n(r))
}

fn read_string(r: &mut impl Read) -> String {
    let len = read_u64(r) as usize;
    let mut b = vec![0u8; len];
    r.read_exact(&mut b).expect("truncated GGUF string");
    String::from_utf8(b).expect("GGUF string is not UTF-8")
}

fn read_value(r: &mut impl Read, ty: u32) -> Value {
    match ty {
        0 => Value::Int(i64::from(u8::from_le_bytes(read_n(r)))),
        1 => Value::Int(i64::from(i8::from_le_bytes(read_n(r)))),
        2 => Value::Int(i64::from(u16::from_le_bytes(read_n(r)))),
        3 => Value::Int(i64::from(i16::from_le_bytes(read_n(r)))),
        4 => Value::Int(i64::from(read_u32(r))),
        5 => Value::Int(i64::from(i32::from_le_bytes(read_n(r)))),
        6 => Value::Float(f64::from(f32::from_le_bytes(read_n(r)))),
        7 => Value::Bool(read_n::<1>(r)[0] != 0),
        8 => Value::Str(read_string(r)),
        9 => {
            let elem = read_u32(r);
            let n = read_u64(r) as usize;
            Value::Array((0..n).map(|_| read_value(r, elem)).collect())
        }
        10 => Value::Int(read_u64(r) as i64),
        11 => Value::Int(i64::from_le_bytes(read_n(r))),
        12 => Value::Float(f64::from_le_bytes(read_n(r))),
        other => panic!("unknown GGUF value type {other}"),
    }
}

/// All metadata of the file `<models_dir>/<name>.gguf`; panics with the path if it is missing.
pub fn read_metadata(name: &str) -> HashMap<String, Value> {
    let path = models_dir().join(format!("{name}.gguf"));
    let file = File::open(&path).unwrap_or_else(|e| {
        panic!("model file {} is missing ({e}); fetch it with `fulcrum pull {name}` or set FULCRUM_MODELS_DIR", path.display())
    });
    let mut r = BufReader::with_capacity(1 << 20, file);
    assert_eq!(
        &read_n::<4>(&mut r),
        b"GGUF",
        "{} is not a GGUF file",
        path.display()
    );
    let version = read_u32(&mut r);
    assert!(
        version == 2 || version == 3,
        "unsupported GGUF version {version}"
    );
    let _tensors = read_u64(&mut r);
    let kv_count = read_u64(&mut r);
    let mut out = HashMap::new();
    for _ in 0..kv_count {
        let key = read_string(&mut r);
        let ty = read_u32(&mut r);
        out.insert(key, read_value(&mut r, ty));
    }
    out
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, found {other:?}"),
    }
}

/// The `VocabSpec` of model `name`, as the model loader fills it.
pub fn load_spec(name: &str) -> VocabSpec {
    let meta = read_metadata(name);
    let get = |k: &str| meta.get(&format!("tokenizer.ggml.{k}"));
    let string = |k: &str| match get(k) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let strings = |k: &str| match get(k) {
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| match v {
                    Value::Str(s) => s.clone(),
                    other => panic!("expected strings in {k}, found {other:?}"),
                })
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let id = |k: &str| get(k).map(|v| int(v) as u32);
    let flag = |k: &str| match get(k) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    VocabSpec {
        model: string("model").expect("tokenizer.ggml.model missing"),
        pre: string("pre"),
        tokens: strings("tokens").expect("tokenizer.ggml.tokens missing"),
        scores: match get("scores") {
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| match v {
                        Value::Float(f) => *f as f32,
                        Value::Int(i) => *i as f32,
                        other => panic!("bad score {other:?}"),
                    })
                    .collect(),
            ),
            _ => None,
        },
        token_types: match get("token_type") {
            Some(Value::Array(a)) => Some(a.iter().map(|v| int(v) as i32).collect()),
            _ => None,
        },
        merges: strings("merges"),
        bos: id("bos_token_id"),
        eos: id("eos_token_id"),
        eot: id("eot_token_id"),
        eom: id("eom_token_id"),
        unk: id("unknown_token_id"),
        pad: id("padding_token_id"),
        add_bos: flag("add_bos_token"),
        add_eos: flag("add_eos_token"),
        add_space_prefix: flag("add_space_prefix"),
    }
}

/// The tokenizer of model `name`.
pub fn load(name: &str) -> Tokenizer {
    Tokenizer::new(load_spec(name))
        .unwrap_or_else(|e| panic!("building the {name} tokenizer failed: {e}"))
}

/// Model names, as in the golden file.
pub const GEMMA: &str = "gemma3-270m";
pub const QWEN_05: &str = "qwen2.5-coder-0.5b-instruct";
pub const QWEN_15: &str = "qwen2.5-coder-1.5b-instruct";
