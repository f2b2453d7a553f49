//! Which weights a draft model for speculative decoding is loaded with.
//!
//! A draft step reads every weight once, so fewer bytes per weight make it faster, and verification keeps the output
//! the target's whatever the draft proposes. A file whose weights are mostly wider than 4 bits is therefore
//! re-quantized to Q4_0 once, and the copy kept as `<models dir>/derived/<file stem>-<file size>.q4_0.gguf` (the size
//! in the name, so that a changed file gets a new copy).

use std::fs;
use std::path::{Path, PathBuf};

use fulcrum_gguf::{GgmlType, GgufError, GgufFile};
use thiserror::Error;

use crate::registry::models_dir;
use crate::requantize::{requantize, Options, RequantizeError, Silent, Target};

/// How a draft model's weights are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DraftType {
    /// Re-quantized to Q4_0 once and kept in the model cache, if the file's weights are wider than 4 bits: a draft
    /// step reads fewer bytes, and verification keeps the output the target's whatever the draft proposes.
    #[default]
    #[cfg_attr(feature = "clap", value(name = "q4_0"))]
    Q4_0,
    /// As the file holds them.
    Keep,
}

/// The file a draft model is loaded from, and how it was chosen.
#[derive(Debug)]
pub enum DraftWeights {
    /// The file itself: its own weights were asked for, or they are 4 bits wide or narrower.
    Original(PathBuf),
    /// The file's Q4_0 copy in the models directory.
    Copy {
        /// Where the copy is.
        path: PathBuf,
        /// Whether this call wrote it (else an earlier one did).
        written: bool,
    },
    /// The file itself, because its Q4_0 copy could not be written; the caller shows the warning.
    Fallback {
        /// The file itself.
        path: PathBuf,
        /// Why there is no copy.
        warning: CopyWarning,
    },
}

impl DraftWeights {
    /// The file to load.
    pub fn path(&self) -> &Path {
        match self {
            DraftWeights::Original(path)
            | DraftWeights::Copy { path, .. }
            | DraftWeights::Fallback { path, .. } => path,
        }
    }
}

/// A Q4_0 copy of a draft model that could not be written (a read-only cache, a full disk): drafting goes on with
/// the file's own weights.
#[derive(Debug, Error)]
#[error("cannot write a Q4_0 copy of the draft model at {} ({source}); drafting with {}", copy.display(), original.display())]
pub struct CopyWarning {
    /// Where the copy was to go.
    pub copy: PathBuf,
    /// The draft model's own file, used instead.
    pub original: PathBuf,
    /// What went wrong.
    pub source: RequantizeError,
}

/// The file to load the draft model at `path` from, held as `ty` says; writes the Q4_0 copy on first use.
pub fn draft_weights(path: &Path, ty: DraftType) -> Result<DraftWeights, GgufError> {
    draft_weights_in(&models_dir(), path, ty)
}

/// `draft_weights` with the models directory given.
fn draft_weights_in(dir: &Path, path: &Path, ty: DraftType) -> Result<DraftWeights, GgufError> {
    let original = || DraftWeights::Original(path.to_path_buf());
    if ty == DraftType::Keep {
        return Ok(original());
    }
    let file = GgufFile::open(path)?;
    if !wider_than_4_bits(&file) {
        return Ok(original());
    }
    let copy = copy_path(dir, path, file.file_size());
    drop(file);
    if copy.exists() {
        return Ok(DraftWeights::Copy {
            path: copy,
            written: false,
        });
    }
    match write_copy(path, &copy) {
        Ok(()) => Ok(DraftWeights::Copy {
            path: copy,
            written: true,
        }),
        Err(source) => Ok(DraftWeights::Fallback {
            path: path.to_path_buf(),
            warning: CopyWarning {
                copy,
                original: path.to_path_buf(),
                source,
            },
        }),
    }
}

/// Where the Q4_0 copy of the `size`-byte file at `path` lives under `dir`.
fn copy_path(dir: &Path, path: &Path, size: u64) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or("draft".into(), |s| s.to_string_lossy());
    dir.join("derived").join(format!("{stem}-{size}.q4_0.gguf"))
}

/// Re-quantizes `path` to Q4_0 at `copy`, creating its folder.
fn write_copy(path: &Path, copy: &Path) -> Result<(), RequantizeError> {
    if let Some(folder) = copy.parent() {
        fs::create_dir_all(folder).map_err(|source| RequantizeError::Io {
            action: "create the folder",
            path: folder.to_path_buf(),
            source,
        })?;
    }
    let options = Options {
        target: Target::Q4_0,
        threads: 0,
        // Another process may have written the same copy meanwhile; replacing it by rename is harmless.
        replace: true,
    };
    requantize(path, copy, &options, &mut Silent).map(|_| ())
}

/// Whether most of a model's weight bytes are in types of more than 4 bits per weight.
fn wider_than_4_bits(file: &GgufFile) -> bool {
    use GgmlType::*;
    let (mut wide, mut all) = (0u64, 0u64);
    for t in file.tensors().iter().filter(|t| t.dims.len() >= 2) {
        all += t.size_bytes;
        if matches!(
            t.ty,
            F32 | F16 | BF16 | F64 | Q8_0 | Q8_1 | Q8_K | Q6_K | Q5_0 | Q5_1 | Q5_K
        ) {
            wide += t.size_bytes;
        }
    }
    wide * 2 > all
}

#[cfg(test)]
mod tests;
