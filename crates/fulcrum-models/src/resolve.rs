//! A model named on the command line or in a request, turned into a GGUF file: a path as it is, a default model's
//! cached file, pulled first if it is missing.

use std::path::{Path, PathBuf};

use crate::pull::pull;
use crate::registry::{cached_path_in, find_known, known_names, models_dir, KnownModel};
use crate::ModelError;

/// Turns a file path or a known model name into the path of a GGUF file, pulling a known
/// model first if it is missing and `pull_if_missing` allows it.
pub fn resolve(name_or_path: &str, pull_if_missing: bool) -> Result<PathBuf, ModelError> {
    let dir = models_dir();
    resolve_in(name_or_path, &dir, pull_if_missing, |model| {
        pull(model, false, true)
    })
}

/// `resolve` with the models directory and the pull step injected.
fn resolve_in(
    name_or_path: &str,
    dir: &Path,
    pull_if_missing: bool,
    pull: impl FnOnce(&KnownModel) -> Result<PathBuf, ModelError>,
) -> Result<PathBuf, ModelError> {
    let path = Path::new(name_or_path);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        return Err(ModelError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if let Some(model) = find_known(name_or_path) {
        let cached = cached_path_in(dir, model);
        return if cached.is_file() {
            Ok(cached)
        } else if pull_if_missing {
            pull(model)
        } else {
            Err(ModelError::NotDownloaded {
                name: model.name.to_owned(),
            })
        };
    }
    let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.contains('/')
        || name_or_path.ends_with(".gguf");
    if looks_like_path {
        Err(ModelError::FileNotFound {
            path: path.to_path_buf(),
            known: known_names(),
        })
    } else {
        Err(ModelError::Unknown {
            name: name_or_path.to_owned(),
            known: known_names(),
        })
    }
}

#[cfg(test)]
mod tests;
