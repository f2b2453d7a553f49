use std::fs;
use std::path::PathBuf;

use super::*;
use crate::registry::known_models;
use crate::testing::TestDir;

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

    let err =
        resolve_in(dir.0.to_str().expect("utf-8"), &dir.0, true, no_pull).expect_err("a folder");
    assert!(matches!(err, ModelError::NotAFile { .. }), "{err:?}");
    assert!(err.to_string().contains("is a folder"), "{err}");

    let missing = dir.0.join("missing.gguf");
    let err = resolve_in(missing.to_str().expect("utf-8"), &dir.0, true, no_pull)
        .expect_err("missing file");
    assert!(matches!(err, ModelError::FileNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
}
