//! Helpers shared by the integration tests of the core, the engine and the CLI (the other two include this file): the
//! default models (pulled on first use), llama.cpp's golden outputs, and the greedy pick.

#![allow(dead_code)]

use fulcrum_core::Model;
use std::path::PathBuf;
use std::sync::Arc;

/// Loads a default model by name, pulling it into the cache if it is missing.
pub fn model(name: &str) -> Arc<Model> {
    let path = fulcrum_models::resolve(name, true).unwrap_or_else(|e| panic!("model {name}: {e}"));
    Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

/// The llama.cpp reference outputs (a copy of ../shared/golden/golden.json, kept with the core's tests).
pub fn golden() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fulcrum-core/tests/data/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json"))
        .expect("valid golden.json")
}

/// Token ids of a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Floats of a JSON array.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The greedy pick of `logits`: the largest, the lowest id on ties, never a NaN (the sampler's rule).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (id, &logit) in logits.iter().enumerate() {
        if !logit.is_nan() && best.is_none_or(|(_, b)| logit > b) {
            best = Some((id, logit));
        }
    }
    best.map_or(0, |(id, _)| id as u32)
}
