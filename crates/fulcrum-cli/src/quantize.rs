//! `fulcrum quantize`: re-quantizes a model's weight matrices to NF4, Q8_0 or Q4_0, writing a new GGUF file.
//!
//! Weight matrices become the target type (or Q8_0, then F32, where their rows do not fit it); norms, biases and
//! other small or 1-D tensors become F32, as llama.cpp keeps them; metadata is copied. The file is written beside
//! the output under a temporary name, checked by reading it back, then renamed over the output, so the output is
//! either the whole new file or untouched.

use crate::common::{check_threads, CliResult};
use fulcrum_gguf::writer::{GgufWriter, TensorSpec};
use fulcrum_gguf::{GgmlType, GgufFile, TensorInfo, Value};
use fulcrum_models as models;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `fulcrum quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Type of the weight matrices in the output.
    #[arg(long, value_enum)]
    to: Target,
    /// Model name or path to the input .gguf file.
    input: String,
    /// Path of the output .gguf file.
    output: PathBuf,
    /// Replace the output if it exists (the input is never replaced).
    #[arg(long)]
    force: bool,
    /// Threads (default: all cores).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
}

/// The weight types `quantize` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Target {
    /// bitsandbytes' 4-bit NormalFloat with double-quantized absmax (docs/formats.md).
    #[value(name = "nf4")]
    Nf4,
    /// ggml's 8-bit blocks of 32.
    #[value(name = "q8_0")]
    Q8_0,
    /// ggml's 4-bit blocks of 32.
    #[value(name = "q4_0")]
    Q4_0,
}

impl Target {
    fn ty(self) -> GgmlType {
        match self {
            Target::Nf4 => GgmlType::NF4,
            Target::Q8_0 => GgmlType::Q8_0,
            Target::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`); NF4 has none.
    fn file_type(self) -> Option<u32> {
        match self {
            Target::Nf4 => None,
            Target::Q8_0 => Some(7),
            Target::Q4_0 => Some(2),
        }
    }
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

/// True when `a` and `b` name the same file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The output's temporary file, removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs `fulcrum quantize`.
pub fn run(args: Args) -> CliResult {
    let threads = match check_threads(args.threads)? {
        0 => fulcrum_core::threads::default_threads(),
        n => n,
    };
    let input = models::resolve(&args.input, true)?;
    let output = &args.output;
    if same_file(&input, output) {
        return Err(format!(
            "refusing to overwrite the input {}; choose another output path",
            input.display()
        )
        .into());
    }
    if output.exists() && !args.force {
        return Err(format!(
            "{} already exists; pass --force to replace it",
            output.display()
        )
        .into());
    }
    if output.is_dir() {
        return Err(format!("{} is a directory", output.display()).into());
    }
    let started = Instant::now();
    let (size, counts) = write_requantized(&input, output, args.to, threads, true)?;
    let summary: Vec<String> = counts.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
    eprintln!(
        "wrote {} ({:.1} MiB; tensors: {}) in {:.1} s",
        output.display(),
        size as f64 / (1 << 20) as f64,
        summary.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `input` re-quantized to `to` at `output` (through a temporary file, checked by reading it back, then
/// renamed over it), with a progress bar if `progress`; returns the file's size and its tensors' types.
pub(crate) fn write_requantized(
    input: &Path,
    output: &Path,
    to: Target,
    threads: usize,
    progress: bool,
) -> CliResult<(u64, Vec<(GgmlType, usize)>)> {
    let file = GgufFile::open(input)?;
    let target = to.ty();

    let mut metadata: Vec<(String, Value)> = file
        .metadata()
        .iter()
        .filter(|(k, _)| k != "general.file_type")
        .cloned()
        .collect();
    if let Some(ftype) = to.file_type() {
        metadata.push(("general.file_type".into(), Value::U32(ftype)));
    }
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: output_type(t, target),
        })
        .collect();
    for (t, spec) in file.tensors().iter().zip(&specs) {
        if spec.ty != t.ty && !fulcrum_quant::is_supported(t.ty) {
            return Err(format!(
                "tensor '{}' has type {}, which Fulcrum cannot read to re-quantize",
                t.name, t.ty
            )
            .into());
        }
    }

    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .ok_or_else(|| format!("{} is not a file path", output.display()))?;
    let mut temp = TempFile {
        path: dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        done: false,
    };
    let handle = File::create(&temp.path)
        .map_err(|e| format!("cannot create {}: {e}", temp.path.display()))?;

    let progress = match progress {
        true => ProgressBar::new(file.tensors().len() as u64),
        false => ProgressBar::hidden(),
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut writer = GgufWriter::new(BufWriter::new(handle), &metadata, &specs)?;
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for (t, spec) in file.tensors().iter().zip(&specs) {
        progress.set_message(t.name.clone());
        let source = file.tensor_data(t);
        if spec.ty == t.ty {
            writer.write_tensor(&t.name, source)?;
        } else {
            let data = convert(t, source, spec.ty, threads)?;
            writer.write_tensor(&t.name, &data)?;
        }
        match counts.iter_mut().find(|(ty, _)| *ty == spec.ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((spec.ty, 1)),
        }
        progress.inc(1);
    }
    let handle = writer
        .finish()?
        .into_inner()
        .map_err(|e| format!("writing {}: {}", temp.path.display(), e.error()))?;
    handle.sync_all()?;
    drop(handle);
    progress.finish_and_clear();

    // Read the new file back before it replaces anything.
    let written = GgufFile::open(&temp.path)
        .map_err(|e| format!("the written file does not read back: {e}"))?;
    for t in written.tensors() {
        let rows = t.row_len() as usize;
        if fulcrum_quant::is_supported(t.ty) && t.dims.len() >= 2 {
            fulcrum_quant::check_tensor(t.ty, rows, written.tensor_data(t))
                .map_err(|e| format!("tensor '{}' was written wrongly: {e}", t.name))?;
        }
    }
    let size = written.file_size();
    drop(written);
    std::fs::rename(&temp.path, output).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            temp.path.display(),
            output.display()
        )
    })?;
    temp.done = true;
    Ok((size, counts))
}

/// Re-encodes tensor `t` (its bytes in `source`) as `to`, row by row on `threads` threads.
fn convert(t: &TensorInfo, source: &[u8], to: GgmlType, threads: usize) -> CliResult<Vec<u8>> {
    let n = t.row_len() as usize;
    let rows = t.n_rows() as usize;
    let (in_bytes, out_bytes) = (
        fulcrum_quant::try_row_bytes(t.ty, n)?,
        fulcrum_quant::try_row_bytes(to, n)?,
    );
    let mut out = vec![0u8; rows * out_bytes];
    let per_thread = rows.div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
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
                        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                            return Err(format!(
                                "tensor '{}' row {} holds {bad}; only finite weights can be quantized",
                                t.name,
                                chunk * per_thread + r
                            ));
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
                w.join()
                    .unwrap_or_else(|_| Err("a quantizing thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dims: &[u64], ty: GgmlType) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            offset: 0,
            size_bytes: 0,
        }
    }

    #[test]
    fn weights_go_to_the_target_and_the_rest_to_f32() {
        let nf4 = GgmlType::NF4;
        let q5 = GgmlType::Q5_0;
        assert_eq!(
            output_type(&info("blk.0.attn_q.weight", &[640, 1024], q5), nf4),
            nf4
        );
        assert_eq!(
            output_type(&info("token_embd.weight", &[896, 151936], q5), nf4),
            nf4
        );
        assert_eq!(
            output_type(&info("blk.0.attn_norm.weight", &[640], GgmlType::F32), nf4),
            GgmlType::F32
        );
        assert_eq!(
            output_type(&info("blk.0.attn_q.bias", &[896], GgmlType::F16), nf4),
            GgmlType::F32
        );
        // Rows NF4 cannot hold (shorter than 512, or not whole blocks of 64) fall back to Q8_0, then F32.
        assert_eq!(
            output_type(&info("blk.0.x.weight", &[256, 8], q5), nf4),
            GgmlType::Q8_0
        );
        assert_eq!(
            output_type(&info("blk.0.x.weight", &[544, 8], q5), nf4),
            GgmlType::Q8_0
        );
        assert_eq!(
            output_type(&info("blk.0.x.weight", &[100, 8], GgmlType::F16), nf4),
            GgmlType::F32
        );
        assert_eq!(
            output_type(&info("positions", &[4], GgmlType::I32), nf4),
            GgmlType::I32
        );
        assert_eq!(
            output_type(
                &info("blk.0.attn_q.weight", &[640, 1024], q5),
                GgmlType::Q4_0
            ),
            GgmlType::Q4_0
        );
    }
}
