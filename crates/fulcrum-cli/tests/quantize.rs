//! `fulcrum quantize` end to end on gemma3-270m: the NF4 file loads, generates text and keeps the perplexity close
//! to the original's; the input is never overwritten; failures leave no file behind; a corrupt NF4 tensor is a clear
//! error at load.

mod common;

use common::fulcrum_bin;
use fulcrum_gguf::{GgmlType, GgufFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fulcrum(args: &[&str]) -> Output {
    Command::new(fulcrum_bin())
        .args(args)
        .output()
        .expect("run fulcrum")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a failed run with a message containing `needle` and no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}: {stderr}"
    );
}

/// Names of the files in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Perplexity over the first 128-token window of GPL-3.
fn short_ppl(model: &str) -> f64 {
    let out = fulcrum(&[
        "eval",
        "ppl",
        "--model",
        model,
        "--file",
        "/usr/share/common-licenses/GPL-3",
        "--ctx",
        "128",
        "--chunks",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["ppl"].as_f64().expect("ppl")
}

#[test]
fn nf4_requantization_of_gemma3_270m() {
    common::model("gemma3-270m");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("fulcrum-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nf4 = dir.join("gemma3-270m-nf4.gguf");
    let nf4_arg = nf4.to_str().unwrap();

    assert_success(&fulcrum(&[
        "quantize",
        "--to",
        "nf4",
        "gemma3-270m",
        nf4_arg,
    ]));
    assert_eq!(
        listing(&dir),
        ["gemma3-270m-nf4.gguf"],
        "no temporary file left"
    );
    let file = GgufFile::open(&nf4).unwrap();
    let types = |ty| file.tensors().iter().filter(|t| t.ty == ty).count();
    assert!(types(GgmlType::NF4) > 100, "weight matrices are NF4");
    assert_eq!(
        types(GgmlType::NF4) + types(GgmlType::F32),
        file.tensors().len()
    );
    assert!(
        file.get("general.architecture").is_some(),
        "metadata copied"
    );
    drop(file);

    // It generates sensible text greedily.
    let out = fulcrum(&[
        "generate",
        "--model",
        nf4_arg,
        "--raw",
        "--json",
        "--temp",
        "0",
        "-n",
        "8",
        "--prompt",
        "The capital of France is",
    ]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.trim().len() > 3, "generated {text:?}");

    // Perplexity stays within a sane bound of the original's (a broken kernel gives thousands). This small model is
    // sensitive to 4-bit weights, most of all on GPL-3's preamble: NF4 and Q4_0 requantizations both about double
    // it there. The original's figure, 15.897, is `fulcrum eval ppl -m gemma3-270m` with the same flags
    // (bit-exact with llama.cpp, so fixed).
    let original = 15.897;
    let requantized = short_ppl(nf4_arg);
    eprintln!("ppl: original {original:.3}, nf4 {requantized:.3}");
    assert!(
        requantized < original * 3.0 && requantized > original * 0.8,
        "NF4 perplexity {requantized} vs original {original}"
    );

    // The input is never overwritten, even with --force; an existing output needs --force.
    let size = std::fs::metadata(&nf4).unwrap().len();
    for force in [false, true] {
        let mut args = vec!["quantize", "--to", "q8_0", nf4_arg, nf4_arg];
        if force {
            args.push("--force");
        }
        assert_clean_failure(&fulcrum(&args), "refusing to overwrite the input");
    }
    assert_eq!(std::fs::metadata(&nf4).unwrap().len(), size);
    let other = dir.join("other.gguf");
    std::fs::write(&other, b"keep me").unwrap();
    assert_clean_failure(
        &fulcrum(&["quantize", "--to", "q4_0", nf4_arg, other.to_str().unwrap()]),
        "already exists",
    );
    assert_eq!(std::fs::read(&other).unwrap(), b"keep me");

    // An output that cannot be written leaves nothing.
    let missing = dir.join("no-such-dir").join("out.gguf");
    assert_clean_failure(
        &fulcrum(&[
            "quantize",
            "--to",
            "q4_0",
            nf4_arg,
            missing.to_str().unwrap(),
        ]),
        "cannot create",
    );

    // A corrupt NF4 tensor (a non-finite absmax offset) is refused at load with the tensor's name, and a failure in
    // the middle of quantizing leaves no file behind.
    let corrupt = dir.join("corrupt.gguf");
    let file = GgufFile::open(&nf4).unwrap();
    let victim = file
        .tensors()
        .iter()
        .find(|t| t.ty == GgmlType::NF4)
        .unwrap()
        .clone();
    drop(file);
    let mut bytes = std::fs::read(&nf4).unwrap();
    let at = victim.offset as usize;
    bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(&corrupt, &bytes).unwrap();
    drop(bytes);
    let out = fulcrum(&[
        "generate",
        "--model",
        corrupt.to_str().unwrap(),
        "-n",
        "1",
        "--prompt",
        "x",
    ]);
    assert_clean_failure(&out, &victim.name);
    assert_clean_failure(&out, "corrupt");
    let out_path = dir.join("from-corrupt.gguf");
    assert_clean_failure(
        &fulcrum(&[
            "quantize",
            "--to",
            "q8_0",
            corrupt.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]),
        "finite",
    );
    assert_eq!(
        listing(&dir),
        ["corrupt.gguf", "gemma3-270m-nf4.gguf", "other.gguf"],
        "no output or temporary file after a failure"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
