//! Golden tokenization: every prompt of the golden file (llama.cpp's `llama_tokenize(add_special = true,
//! parse_special = true)`; the repository's copy of ../shared/golden/golden.json is in the core's tests) must give
//! exactly its `prompt_ids`.

mod common;

use std::path::PathBuf;

fn golden_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FULCRUM_GOLDEN") {
        return PathBuf::from(p);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [
        repo.join("crates/fulcrum-core/tests/data/golden.json"),
        repo.join("shared/golden/golden.json"),
        repo.join("../shared/golden/golden.json"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("/work/shared/golden/golden.json")
}

#[test]
fn golden_prompts_tokenize_exactly() {
    let path = golden_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing ({e}); set FULCRUM_GOLDEN",
            path.display()
        )
    });
    let golden: serde_json::Value = serde_json::from_str(&text).expect("golden.json is not JSON");
    let models = golden["models"]
        .as_object()
        .expect("golden.json has no models");
    assert!(
        models.len() >= 3,
        "expected the three default models in golden.json"
    );
    let mut checked = 0;
    for (name, model) in models {
        let tok = common::load(name);
        for (case, data) in model["cases"].as_object().expect("model has no cases") {
            let prompt = data["prompt"].as_str().expect("prompt");
            let want: Vec<u32> = data["prompt_ids"]
                .as_array()
                .expect("prompt_ids")
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(prompt, true, true);
            assert_eq!(got, want, "{name}/{case}: {prompt:?}");
            // The ids decode back to the prompt (special tokens as text, BOS skipped).
            let body: Vec<u32> = got
                .iter()
                .copied()
                .filter(|&id| Some(id) != tok.bos() || !tok.add_bos())
                .collect();
            assert_eq!(tok.decode(&body, true), prompt, "{name}/{case} round trip");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} golden cases found");
}
