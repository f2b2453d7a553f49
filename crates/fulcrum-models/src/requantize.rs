//! Re-quantizing a GGUF file into another: weight matrices become the target type (or Q8_0, then F32, where their
//! rows do not fit it); norms, biases and other small or 1-D tensors become F32, as llama.cpp keeps them; metadata is
//! copied. The file is written beside the output under a temporary name, checked by reading it back, then renamed
//! over the output, so the output is either the whole new file or untouched.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use fulcrum_gguf::writer::{GgufWriter, TensorSpec};
use fulcrum_gguf::{GgmlType, GgufError, GgufFile, TensorInfo, Value};
use fulcrum_quant::QuantError;
use thiserror::Error;

/// The weight types re-quantization writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Target {
    /// bitsandbytes' 4-bit NormalFloat with double-quantized absmax (docs/formats.md).
    #[cfg_attr(feature = "clap", value(name = "nf4"))]
    Nf4,
    /// ggml's 8-bit blocks of 32.
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    /// ggml's 4-bit blocks of 32.
    #[cfg_attr(feature = "clap", value(name = "q4_0"))]
    Q4_0,
}

impl Target {
    /// The GGUF type weight matrices become.
    pub fn ty(self) -> GgmlType {
        match self {
            Target::Nf4 => GgmlType::NF4,
            Target::Q8_0 => GgmlType::Q8_0,
            Target::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`) for the output; NF4 has none.
    pub fn file_type(self) -> Option<u32> {
        match self {
            Target::Nf4 => None,
            Target::Q8_0 => Some(7),
            Target::Q4_0 => Some(2),
        }
    }
}

/// How to re-quantize.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Type of the weight matrices in the output.
    pub target: Target,
    /// Threads converting rows; 0 means one per core.
    pub threads: usize,
    /// Whether an existing output may be replaced (the input never is).
    pub replace: bool,
}

/// What [`requantize`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Size of the output file in bytes.
    pub size: u64,
    /// How many tensors of each type the output holds, types in order of first appearance.
    pub counts: Vec<(GgmlType, usize)>,
}

/// Where [`requantize`] reports how far it got; the methods do nothing unless overridden.
pub trait Progress {
    /// Before the first tensor: how many tensors there are.
    fn start(&mut self, _tensors: usize) {}
    /// Before tensor `name` is converted or copied, once `done` tensors are written.
    fn tensor(&mut self, _done: usize, _name: &str) {}
}

/// Progress that goes unreported.
pub struct Silent;

impl Progress for Silent {}

/// Why a file could not be re-quantized; the output is untouched whatever the cause.
#[derive(Debug, Error)]
pub enum RequantizeError {
    /// The output names the input file.
    #[error("refusing to overwrite the input {}; choose another output path", path.display())]
    SameFile {
        /// The input's path.
        path: PathBuf,
    },
    /// The output exists and replacing it was not allowed.
    #[error("{} already exists; pass --force to replace it, or choose another output path", path.display())]
    OutputExists {
        /// The output's path.
        path: PathBuf,
    },
    /// The output is a folder.
    #[error("{} is a directory; name the .gguf file to write", path.display())]
    OutputIsDirectory {
        /// The output's path.
        path: PathBuf,
    },
    /// The output path has no file name.
    #[error("{} is not a file path; name the .gguf file to write", path.display())]
    NotAFilePath {
        /// The output's path.
        path: PathBuf,
    },
    /// The input is not a readable GGUF file.
    #[error(transparent)]
    Input(GgufError),
    /// A tensor whose type Fulcrum cannot decode.
    #[error("tensor '{tensor}' has type {ty}, which Fulcrum cannot read to re-quantize; start from a file whose weights are F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K or NF4")]
    Unsupported {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ty: GgmlType,
    },
    /// A tensor whose rows cannot be laid out in its own or the target type.
    #[error("tensor '{tensor}': {source}")]
    Layout {
        /// The tensor's name.
        tensor: String,
        /// What does not fit.
        source: QuantError,
    },
    /// A weight that is NaN or infinite.
    #[error("tensor '{tensor}' row {row} holds {value}; only finite weights can be quantized (the input is corrupt)")]
    NonFinite {
        /// The tensor's name.
        tensor: String,
        /// The row holding the value.
        row: usize,
        /// The value.
        value: f32,
    },
    /// A converting thread panicked.
    #[error("a quantizing thread panicked on tensor '{tensor}'; this is a bug in Fulcrum, please report it")]
    Panicked {
        /// The tensor being converted.
        tensor: String,
    },
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The GGUF writer refused the file or could not write it.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output's path.
        path: PathBuf,
        /// The writer's error.
        source: GgufError,
    },
    /// The written file does not read back.
    #[error("the written file does not read back ({0}); the output was left untouched")]
    ReadBack(GgufError),
    /// A tensor of the written file fails its format's check.
    #[error("tensor '{tensor}' was written wrongly ({source}); the output was left untouched")]
    WrittenWrongly {
        /// The tensor's name.
        tensor: String,
        /// The failed check.
        source: QuantError,
    },
}

/// Name fragments of tensors llama.cpp never quantizes (norms, routers, position and type embeddings, SSM state).
const KEEP_F32: [&str; 7] = [
    "norm",
    "ffn_gate_inp",
    "pos_embd",
    "token_types",
    "ssm_",
    "rope_freqs",
    ".bias",
];

/// Writes `input` re-quantized as `options` say at `output`, reporting to `progress`; returns what was written.
pub fn requantize(
    input: &Path,
    output: &Path,
    options: &Options,
    progress: &mut dyn Progress,
) -> Result<Summary, RequantizeError> {
    check_output(input, output, options.replace)?;
    let file = GgufFile::open(input).map_err(RequantizeError::Input)?;
    let metadata = output_metadata(&file, options.target);
    let specs = output_specs(&file, options.target.ty())?;
    let mut temp = TempFile::beside(output)?;
    let handle = File::create(&temp.path).map_err(io_error("create", &temp.path))?;
    let write_error = |source| RequantizeError::Write {
        path: output.to_path_buf(),
        source,
    };
    let mut writer =
        GgufWriter::new(BufWriter::new(handle), &metadata, &specs).map_err(write_error)?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    progress.start(specs.len());
    for (done, (t, spec)) in file.tensors().iter().zip(&specs).enumerate() {
        progress.tensor(done, &t.name);
        let source = file.tensor_data(t);
        if spec.ty == t.ty {
            writer.write_tensor(&t.name, source).map_err(write_error)?;
        } else {
            let data = convert(t, source, spec.ty, threads)?;
            writer.write_tensor(&t.name, &data).map_err(write_error)?;
        }
    }
    let handle = writer
        .finish()
        .map_err(write_error)?
        .into_inner()
        .map_err(|e| io_error("write", &temp.path)(e.into_error()))?;
    handle.sync_all().map_err(io_error("write", &temp.path))?;
    drop(handle);

    let size = check_written(&temp.path)?;
    fs::rename(&temp.path, output).map_err(io_error("rename the new file to", output))?;
    temp.done = true;
    Ok(Summary {
        size,
        counts: type_counts(&specs),
    })
}

/// Refuses an output that is the input, exists without `replace`, or is a folder.
fn check_output(input: &Path, output: &Path, replace: bool) -> Result<(), RequantizeError> {
    if same_file(input, output) {
        return Err(RequantizeError::SameFile {
            path: input.to_path_buf(),
        });
    }
    if output.exists() && !replace {
        return Err(RequantizeError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    if output.is_dir() {
        return Err(RequantizeError::OutputIsDirectory {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}

/// True when `a` and `b` name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
    }
}

/// The input's metadata with `general.file_type` set for `target` (or dropped, where it has none).
fn output_metadata(file: &GgufFile, target: Target) -> Vec<(String, Value)> {
    let mut metadata: Vec<(String, Value)> = file
        .metadata()
        .iter()
        .filter(|(k, _)| k != "general.file_type")
        .cloned()
        .collect();
    if let Some(ftype) = target.file_type() {
        metadata.push(("general.file_type".into(), Value::U32(ftype)));
    }
    metadata
}

/// Each tensor's name, shape and output type; a tensor that must change type but cannot be read is an error.
fn output_specs(file: &GgufFile, target: GgmlType) -> Result<Vec<TensorSpec>, RequantizeError> {
    file.tensors()
        .iter()
        .map(|t| {
            let ty = output_type(t, target);
            if ty != t.ty && !fulcrum_quant::is_supported(t.ty) {
                return Err(RequantizeError::Unsupported {
                    tensor: t.name.clone(),
                    ty: t.ty,
                });
            }
            Ok(TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty,
            })
        })
        .collect()
}

/// The type tensor `t` is written as when the weights go to `target`.
fn output_type(t: &TensorInfo, target: GgmlType) -> GgmlType {
    if matches!(
        t.ty,
        GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64
    ) {
        return t.ty;
    }
    let matrix = t.dims.len() >= 2 && t.name.ends_with(".weight");
    if !matrix || KEEP_F32.iter().any(|k| t.name.contains(k)) {
        return GgmlType::F32;
    }
    let row = t.row_len() as usize;
    [target, GgmlType::Q8_0]
        .into_iter()
        .find(|&ty| fulcrum_quant::check_weights(ty, row).is_ok())
        .unwrap_or(GgmlType::F32)
}

/// How many tensors of each type `specs` declare, types in order of first appearance.
fn type_counts(specs: &[TensorSpec]) -> Vec<(GgmlType, usize)> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for spec in specs {
        match counts.iter_mut().find(|(ty, _)| *ty == spec.ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((spec.ty, 1)),
        }
    }
    counts
}

/// Re-encodes tensor `t` (its bytes in `source`) as `to`, row by row on `threads` threads.
fn convert(
    t: &TensorInfo,
    source: &[u8],
    to: GgmlType,
    threads: usize,
) -> Result<Vec<u8>, RequantizeError> {
    let layout = |source| RequantizeError::Layout {
        tensor: t.name.clone(),
        source,
    };
    let n = t.row_len() as usize;
    let rows = t.n_rows() as usize;
    let in_bytes = fulcrum_quant::try_row_bytes(t.ty, n).map_err(layout)?;
    let out_bytes = fulcrum_quant::try_row_bytes(to, n).map_err(layout)?;
    let mut out = vec![0u8; rows * out_bytes];
    let per_thread = rows.div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<(), RequantizeError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = out
            .chunks_mut(per_thread * out_bytes)
            .zip(source.chunks(per_thread * in_bytes))
            .enumerate()
            .map(|(chunk, (dst, src))| {
                scope.spawn(move || {
                    let mut values = vec![0.0f32; n];
                    for (r, (src_row, dst_row)) in src
                        .chunks_exact(in_bytes)
                        .zip(dst.chunks_exact_mut(out_bytes))
                        .enumerate()
                    {
                        fulcrum_quant::dequantize_row(t.ty, src_row, &mut values);
                        if let Some(&value) = values.iter().find(|v| !v.is_finite()) {
                            return Err(RequantizeError::NonFinite {
                                tensor: t.name.clone(),
                                row: chunk * per_thread + r,
                                value,
                            });
                        }
                        fulcrum_quant::quantize_row(to, &values, dst_row);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(RequantizeError::Panicked {
                        tensor: t.name.clone(),
                    })
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(out)
}

/// Reads the file at `path` back and checks every tensor of a supported type; returns the file's size.
fn check_written(path: &Path) -> Result<u64, RequantizeError> {
    let written = GgufFile::open(path).map_err(RequantizeError::ReadBack)?;
    for t in written.tensors() {
        let rows = t.row_len() as usize;
        if fulcrum_quant::is_supported(t.ty) && t.dims.len() >= 2 {
            fulcrum_quant::check_tensor(t.ty, rows, written.tensor_data(t)).map_err(|source| {
                RequantizeError::WrittenWrongly {
                    tensor: t.name.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(written.file_size())
}

/// The output's temporary file, removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl TempFile {
    /// `.<name>.partial-<pid>` in the output's folder, so the final rename stays on one file system.
    fn beside(output: &Path) -> Result<TempFile, RequantizeError> {
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = output
            .file_name()
            .ok_or_else(|| RequantizeError::NotAFilePath {
                path: output.to_path_buf(),
            })?;
        Ok(TempFile {
            path: dir.join(format!(
                ".{}.partial-{}",
                name.to_string_lossy(),
                std::process::id()
            )),
            done: false,
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A closure turning an `io::Error` on `path` into `RequantizeError::Io`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RequantizeError {
    let path = path.to_path_buf();
    move |source| RequantizeError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests;
