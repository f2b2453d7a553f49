//! Helpers for this crate's unit tests: a scratch folder deleted on drop, a folder's listing, and a tiny model.

use std::fs;
use std::path::{Path, PathBuf};

use fulcrum_gguf::writer::{to_bytes, TensorSpec};
use fulcrum_gguf::{GgmlType, Value};

/// A fresh folder under the system temp dir, deleted on drop.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    pub(crate) fn new(label: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("fulcrum-models-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Names of the files left in `dir`, sorted, but for pulls' lock files (which stay, empty).
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    names.sort();
    names
}

/// `rows` rows of `n` F32 values, varied so that no two blocks quantize alike.
pub(crate) fn values(n: usize, rows: usize, seed: f32) -> Vec<f32> {
    (0..n * rows)
        .map(|i| (i as f32 * 0.37 + seed).sin() * (1.0 + (i % 7) as f32))
        .collect()
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The F32 tensors of the tiny model: (name, dims, values).
pub(crate) fn tiny_tensors() -> Vec<(&'static str, Vec<u64>, Vec<f32>)> {
    vec![
        ("blk.0.attn_q.weight", vec![64, 3], values(64, 3, 0.0)),
        ("blk.0.attn_norm.weight", vec![64], values(64, 1, 1.0)),
        ("blk.0.odd.weight", vec![48, 2], values(48, 2, 2.0)),
        ("blk.0.ffn_up.weight", vec![512, 2], values(512, 2, 3.0)),
    ]
}

/// Writes a tiny all-F32 model to `path` (`general.file_type` 0, "all F32").
pub(crate) fn write_tiny_model(path: &Path, tensors: &[(&'static str, Vec<u64>, Vec<f32>)]) {
    let metadata = [
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("general.file_type".to_string(), Value::U32(0)),
    ];
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    let specs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dims, _), data)| {
            let spec = TensorSpec {
                name: name.to_string(),
                dims: dims.clone(),
                ty: GgmlType::F32,
            };
            (spec, &data[..])
        })
        .collect();
    fs::write(path, to_bytes(&metadata, &specs).expect("tiny GGUF")).expect("write tiny model");
}
