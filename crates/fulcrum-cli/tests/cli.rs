//! The `fulcrum` binary end to end: bad input gives a clear message and a non-zero exit, never a panic;
//! `generate --json`, `eval ppl` and `bench --json` produce what they promise.

mod common;

use common::{fulcrum_bin, ids, model};
use std::path::Path;
use std::process::{Command, Output};

fn fulcrum(args: &[&str]) -> Output {
    Command::new(fulcrum_bin())
        .args(args)
        .output()
        .expect("run fulcrum")
}

/// Runs `fulcrum` expecting success and one JSON object on stdout.
fn fulcrum_json(args: &[&str]) -> serde_json::Value {
    let out = fulcrum(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// Asserts a failed run with a message containing `needle` and no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}: {stderr}"
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fulcrum-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A GGUF v3 header with one string key and no tensors.
fn gguf_with_architecture(arch: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // kv pairs
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&(arch.len() as u64).to_le_bytes());
    b.extend_from_slice(arch.as_bytes());
    b
}

#[test]
fn unknown_model_name_lists_known_models() {
    let out = fulcrum(&["info", "no-such-model-7b"]);
    assert_clean_failure(&out, "gemma3-270m");
}

#[test]
fn a_folder_given_as_the_model_is_reported_as_a_folder() {
    let dir = std::env::temp_dir();
    let out = fulcrum(&["info", dir.to_str().unwrap()]);
    assert_clean_failure(&out, "is a folder");
}

/// A reader that closes the pipe early (`| head -c 5`) ends the command quietly: no panic, no error message.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    for args in [
        &[
            "generate",
            "-m",
            "gemma3-270m",
            "--raw",
            "-n",
            "64",
            "--prompt",
            "Once upon a time",
        ][..],
        &["pull", "--list"][..],
    ] {
        let mut child = Command::new(fulcrum_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fulcrum");
        let mut first = [0u8; 5];
        child
            .stdout
            .take()
            .unwrap()
            .read_exact(&mut first)
            .expect("some output");
        // stdout is closed here, with most of the output still to come.
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;

#[test]
fn wrong_magic_is_reported() {
    let path = temp_file(
        "bad-magic.gguf",
        b"GGML\x03\x00\x00\x00 definitely not a model file at all",
    );
    let out = fulcrum(&["info", path.to_str().unwrap()]);
    assert_clean_failure(&out, "magic");
}

#[test]
fn truncated_model_is_reported() {
    let m = model("gemma3-270m");
    let bytes = std::fs::read(&m.path).unwrap();
    for cut in [10, 1000, 4_000_000, bytes.len() - 1] {
        let path = temp_file(&format!("truncated-{cut}.gguf"), &bytes[..cut]);
        let out = fulcrum(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "hi",
            "-n",
            "1",
        ]);
        assert_clean_failure(&out, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error:"), "cut {cut}: {stderr}");
    }
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let path = temp_file("mamba.gguf", &gguf_with_architecture("mamba9"));
    let out = fulcrum(&["info", path.to_str().unwrap()]);
    assert_clean_failure(&out, "mamba9");
    assert_clean_failure(&out, "qwen2");
}

#[test]
fn prompt_longer_than_context_is_reported() {
    let prompt = "word ".repeat(200);
    let out = fulcrum(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--ctx",
        "64",
        "--prompt",
        &prompt,
        "-n",
        "4",
        "--raw",
    ]);
    assert_clean_failure(&out, "context");
}

#[test]
fn invalid_sampling_parameter_is_reported() {
    let out = fulcrum(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--prompt",
        "hi",
        "--top-p",
        "1.5",
    ]);
    assert_clean_failure(&out, "top");
}

#[test]
fn generate_json_is_greedy_and_reproducible() {
    let g = common::golden();
    let case = &g["models"]["gemma3-270m"]["cases"]["code"];
    let args = [
        "generate",
        "--model",
        "gemma3-270m",
        "--raw",
        "--json",
        "--temp",
        "0",
        "-n",
        "8",
        "--prompt",
        case["prompt"].as_str().unwrap(),
    ];
    let v = fulcrum_json(&args);
    assert_eq!(ids(&v["prompt_tokens"]), ids(&case["prompt_ids"]));
    assert_eq!(ids(&v["tokens"]), ids(&case["generated_ids"])[..8].to_vec());
    assert!(v["text"].as_str().unwrap().len() > 1);
    assert!(v["timings"]["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["timings"]["gen_tokens_per_s"].as_f64().unwrap() > 0.0);
    // Sampling with a fixed seed is reproducible.
    let sampled = [
        "generate",
        "--model",
        "gemma3-270m",
        "--raw",
        "--json",
        "--seed",
        "7",
        "-n",
        "12",
        "--prompt",
        "Once upon a time",
    ];
    let a: serde_json::Value = fulcrum_json(&sampled);
    let b: serde_json::Value = fulcrum_json(&sampled);
    assert_eq!(a["tokens"], b["tokens"]);
}

#[test]
fn ignore_eos_and_logit_bias_steer_generation() {
    let short = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            "qwen2.5-coder-0.5b-instruct",
            "--json",
            "--temp",
            "0",
            "-n",
            "16",
            "--prompt",
            "Reply with one word: hello.",
        ];
        args.extend_from_slice(extra);
        fulcrum_json(&args)
    };
    let plain = short(&[]);
    assert_eq!(
        plain["finish_reason"], "stop",
        "a one-word answer ends by itself"
    );
    let endless = short(&["--ignore-eos"]);
    assert_eq!(endless["finish_reason"], "length");
    assert_eq!(ids(&endless["tokens"]).len(), 16);
    // Banning the first answer token changes the answer; a positive bias on it keeps it.
    let first = ids(&plain["tokens"])[0];
    let banned = short(&["--logit-bias", &format!("{first}-inf")]);
    assert_ne!(ids(&banned["tokens"])[0], first);
    let kept = short(&["-l", &format!("{first}+5")]);
    assert_eq!(ids(&kept["tokens"])[0], first);
    let bad = fulcrum(&["generate", "-p", "x", "--logit-bias", "abc"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("TOKEN_ID+BIAS") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Perplexity of GPL-3 with 512-token windows, against llama-perplexity's figures in ../shared/golden/README.md.
fn check_ppl(name: &str, reference: f64) {
    let text = Path::new("/usr/share/common-licenses/GPL-3");
    assert!(
        text.exists(),
        "the perplexity text {} is missing (Debian's base-files)",
        text.display()
    );
    model(name);
    let v = fulcrum_json(&[
        "eval",
        "ppl",
        "--model",
        name,
        "--file",
        text.to_str().unwrap(),
        "--ctx",
        "512",
        "--threads",
        "2",
        "--json",
    ]);
    let ppl = v["ppl"].as_f64().unwrap();
    assert_eq!(
        v["chunks"].as_u64(),
        Some(14),
        "GPL-3 gives 14 windows of 512 tokens"
    );
    let rel = (ppl - reference).abs() / reference;
    eprintln!(
        "{name}: ppl {ppl:.4} vs llama.cpp {reference} ({:.3}% off)",
        rel * 100.0
    );
    assert!(
        rel < 0.01,
        "{name}: perplexity {ppl:.4} is {:.2}% from llama.cpp's {reference}",
        rel * 100.0
    );
}

#[test]
fn perplexity_gemma3_270m_matches_llama_cpp() {
    check_ppl("gemma3-270m", 13.8844);
}

#[test]
fn perplexity_qwen25_coder_05b_matches_llama_cpp() {
    check_ppl("qwen2.5-coder-0.5b-instruct", 5.3158);
}

#[test]
fn perplexity_qwen25_coder_15b_matches_llama_cpp() {
    check_ppl("qwen2.5-coder-1.5b-instruct", 1.7583);
}

#[test]
fn invalid_counts_are_reported() {
    let gpl = "/usr/share/common-licenses/GPL-3";
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "generate",
                "--model",
                "gemma3-270m",
                "--prompt",
                "hi",
                "--ctx",
                "0",
            ],
            "ctx",
        ),
        (
            &[
                "generate",
                "--model",
                "gemma3-270m",
                "--prompt",
                "hi",
                "--threads",
                "100000",
            ],
            "threads",
        ),
        (
            &[
                "eval",
                "ppl",
                "--model",
                "gemma3-270m",
                "--file",
                gpl,
                "--chunks",
                "0",
            ],
            "chunks",
        ),
        (
            &[
                "eval",
                "ppl",
                "--model",
                "gemma3-270m",
                "--file",
                gpl,
                "--ctx",
                "10000000",
            ],
            "context length",
        ),
    ];
    for (args, needle) in cases {
        assert_clean_failure(&fulcrum(args), needle);
    }
}

#[test]
fn zero_max_tokens_generates_nothing() {
    let v = fulcrum_json(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--raw",
        "--json",
        "-n",
        "0",
        "--prompt",
        "hi",
    ]);
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(0));
}

#[test]
fn generate_applies_the_chat_template_unless_raw() {
    let prompt = "Write a haiku about Rust.";
    let templated = fulcrum_json(&[
        "generate",
        "--model",
        "qwen2.5-coder-0.5b-instruct",
        "--json",
        "--temp",
        "0",
        "-n",
        "4",
        "--prompt",
        prompt,
    ]);
    let model = model("qwen2.5-coder-0.5b-instruct");
    let im_start = model
        .tokenizer
        .token_id("<|im_start|>")
        .expect("Qwen has <|im_start|>");
    let ids = ids(&templated["prompt_tokens"]);
    assert_eq!(
        ids.first(),
        Some(&im_start),
        "the template opens with <|im_start|>"
    );
    let text = model.tokenizer.decode(&ids, true);
    assert!(
        text.contains("<|im_start|>user\nWrite a haiku about Rust.<|im_end|>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let raw = fulcrum_json(&[
        "generate",
        "--model",
        "qwen2.5-coder-0.5b-instruct",
        "--json",
        "--raw",
        "--temp",
        "0",
        "-n",
        "1",
        "--prompt",
        prompt,
    ]);
    assert_eq!(
        common::ids(&raw["prompt_tokens"]),
        model.tokenizer.encode(prompt, true, true)
    );
}

#[test]
fn bench_json_reports_the_decode_roofline() {
    let m = model("gemma3-270m");
    let path = m.path.to_str().unwrap();
    let out = fulcrum_json(&[
        "bench",
        "-m",
        path,
        "-t",
        "2",
        "-p",
        "0",
        "-n",
        "4",
        "-d",
        "600",
        "-r",
        "1",
        "--bandwidth-mib",
        "64",
        "--json",
    ]);
    let result = &out["results"][0];
    assert_eq!(result["test"], "tg4 @ d600");
    let roofline = &result["roofline"];
    // Gemma 3's output matrix is its embedding table (tied): every matrix is read once per token, and the
    // embedding lookup adds one row.
    assert!(m.file.tensor("output.weight").is_none());
    let matrices: u64 = m
        .file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| m.file.tensor_data(t).len() as u64)
        .sum();
    let embd_row = m.weights.token_embd.row_bytes as u64;
    assert_eq!(roofline["weight_bytes_per_token"], matrices + embd_row);
    // Positions 600..604 attend to themselves and everything before on global layers (every sixth), to the last
    // 512 positions on sliding-window layers; f16 keys and values.
    let c = &m.config;
    let row = (2 * c.kv_dim() * 2) as f64;
    let global = (c.n_layers / 6) as f64;
    let sliding = c.n_layers as f64 - global;
    let mean_seen = (601.0 + 602.0 + 603.0 + 604.0) / 4.0;
    let kv = roofline["kv_bytes_per_token"].as_f64().unwrap();
    assert_eq!(kv, (sliding * 512.0 + global * mean_seen) * row);
    let rate = result["tokens_per_s"]["mean"].as_f64().unwrap();
    let achieved = roofline["achieved_gb_s"].as_f64().unwrap();
    let total = (matrices + embd_row) as f64 + kv;
    assert!((achieved - total * rate / 1e9).abs() < 1e-6 * achieved);
    let measured = out["read_bandwidth"]["gb_s"].as_f64().unwrap();
    assert_eq!(out["read_bandwidth"]["buffer_bytes"], 64 << 20);
    assert!(measured > 0.0 && roofline["measured_read_gb_s"] == measured);
    assert!(out["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn a_wide_draft_model_is_requantized_once_and_drafting_stays_lossless() {
    let source = model("qwen2.5-coder-0.5b-instruct").path.clone();
    let source = source.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("fulcrum-draft-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |spec: &str, draft_type: &str| {
        let out = Command::new(fulcrum_bin())
            .env("FULCRUM_MODELS_DIR", &dir)
            .args([
                "generate", "-m", source, "--raw", "--json", "--temp", "0", "-n", "24",
            ])
            .args(["--spec", spec, "--draft-type", draft_type])
            .args(["--prompt", "def fibonacci(n):"])
            .output()
            .expect("run fulcrum");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids(&v["tokens"])
    };
    let plain = run("off", "q4_0");
    let draft_spec = format!("draft:{source},4");
    assert_eq!(
        run(&draft_spec, "q4_0"),
        plain,
        "a Q4_0 draft changed greedy output"
    );
    let derived: Vec<_> = std::fs::read_dir(dir.join("derived"))
        .expect("the Q4_0 copy is in the cache")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(derived.len(), 1, "{derived:?}");
    let written = std::fs::metadata(&derived[0]).unwrap();
    assert!(written.len() * 4 < std::fs::metadata(source).unwrap().len() * 3);
    // The copy is reused, and the original weights are there for the asking.
    assert_eq!(run(&draft_spec, "q4_0"), plain);
    assert_eq!(
        std::fs::metadata(&derived[0]).unwrap().modified().unwrap(),
        written.modified().unwrap()
    );
    assert_eq!(run(&draft_spec, "keep"), plain);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_delta_settings_name_the_flag() {
    let m = model("gemma3-270m");
    let path = m.path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "-m", path, "--prompt", "hi", "-n", "1"];
        args.extend_from_slice(extra);
        fulcrum(&args)
    };
    assert_clean_failure(
        &run(&["--attention", "delta", "--delta-layers", "0,1,99"]),
        "--delta-layers: layer 99 is outside the model's 18 layers",
    );
    assert_clean_failure(&run(&["--delta-budget", "0"]), "--delta-budget");
    assert_clean_failure(&run(&["--delta-layers", "3,7"]), "layer 0 must be");
    let out = run(&["--attention", "sparse"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown attention mode 'sparse'"),
        "{stderr}"
    );
    assert_clean_failure(
        &fulcrum(&[
            "eval",
            "needle",
            "-m",
            path,
            "--lengths",
            "4096",
            "--depths",
            "1.5",
        ]),
        "--depths: 1.5 is outside 0 to 1",
    );
}

#[test]
fn chat_commands_stay_out_of_the_conversation_and_ctrl_c_stops_only_the_reply() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let saved = std::env::temp_dir().join(format!("fulcrum-chat-test-{}.json", std::process::id()));
    let mut child = Command::new(fulcrum_bin())
        .args([
            "chat",
            "-m",
            "qwen2.5-coder-0.5b-instruct",
            "-t",
            "2",
            "--temp",
            "0",
            "-n",
            "400",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fulcrum chat");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"/system You are a storyteller.\n/bogus\n/set temp hot\nTell a long story about a dragon, at least 300 words.\n")
        .unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).expect("the reply starts");
    // Ctrl-C while the reply is written: the reply stops, the chat goes on.
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    stdin
        .write_all(
            format!(
                "//set is text for the model\n/save {}\n/exit\n",
                saved.display()
            )
            .as_bytes(),
        )
        .unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    assert!(stderr.contains("temp must be a number"), "{stderr}");
    assert!(
        stderr.contains("[stopped: "),
        "the reply was stopped: {stderr}"
    );
    assert!(
        stderr.contains("tokens/s"),
        "a timing line per reply: {stderr}"
    );
    let conversation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).expect("saved")).unwrap();
    let _ = std::fs::remove_file(&saved);
    let roles: Vec<&str> = conversation
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "user", "assistant"],
        "{conversation}"
    );
    let story = conversation[2]["content"].as_str().unwrap();
    assert!(
        !story.is_empty() && story.split_whitespace().count() < 300,
        "a partial story: {story}"
    );
    assert_eq!(conversation[3]["content"], "/set is text for the model");
}

#[test]
fn a_chat_without_a_template_ends_at_the_next_turn() {
    use std::io::Write;
    use std::process::Stdio;
    // gemma3-270m has no chat template: the plain format, which the greedy model goes on with ("\n\nuser: …").
    let mut child = Command::new(fulcrum_bin())
        .args([
            "chat",
            "-m",
            "gemma3-270m",
            "-t",
            "2",
            "--temp",
            "0",
            "-n",
            "48",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fulcrum chat");
    child.stdin.take().unwrap().write_all(b"Say hi\n").unwrap();
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("plain 'role: text' format"), "{stderr}");
    assert!(!stdout.trim().is_empty(), "a reply: {stderr}");
    assert!(
        !stdout.contains("user:") && !stdout.contains("assistant:"),
        "no fake turns: {stdout:?}"
    );
    assert!(
        stderr.contains("tokens/s") && !stderr.contains("48 tokens"),
        "ended before the limit: {stderr}"
    );
}

#[test]
fn tile_kernels_are_measured_once_per_cpu_and_then_read_from_the_cache() {
    let gguf = model("gemma3-270m").path.clone();
    let dir = std::env::temp_dir().join(format!("fulcrum-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let models = dir.join("models");
    let run = |args: &[&str]| {
        let out = Command::new(fulcrum_bin())
            .env("FULCRUM_MODELS_DIR", &models)
            .env_remove("FULCRUM_TILE_ISA")
            .args(args)
            .output()
            .expect("run fulcrum");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let measured = Command::new(fulcrum_bin())
        .env("FULCRUM_MODELS_DIR", &models)
        .env_remove("FULCRUM_TILE_ISA")
        .args(["bench", "--kernels", "--json"])
        .output()
        .expect("run fulcrum");
    if String::from_utf8_lossy(&measured.stderr).contains("nothing to choose") {
        // A CPU without SIMD tile kernels: no choice to make or cache.
        return;
    }
    assert!(
        measured.status.success(),
        "{}",
        String::from_utf8_lossy(&measured.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&measured.stdout).unwrap();
    let timings = v["timings"].as_array().unwrap();
    assert!(timings.iter().all(|t| t["seconds"].as_f64().unwrap() > 0.0));
    // Every class of both families was timed, and the choice is the fastest of each.
    for (f, family) in ["32-element", "k-quant"].iter().enumerate() {
        for (c, tokens) in [1, 4, 16].iter().enumerate() {
            let of: Vec<&serde_json::Value> = timings
                .iter()
                .filter(|t| t["family"] == *family && t["tokens"] == *tokens)
                .collect();
            assert!(!of.is_empty(), "{family} × {tokens}");
            let fastest = of
                .iter()
                .min_by(|a, b| {
                    a["seconds"]
                        .as_f64()
                        .unwrap()
                        .total_cmp(&b["seconds"].as_f64().unwrap())
                })
                .unwrap();
            assert_eq!(v["tiles"][f][c], fastest["isa"], "{family} × {tokens}");
        }
    }
    let cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("kernels.json")).unwrap()).unwrap();
    assert_eq!(cache[v["cpu"].as_str().unwrap()]["tiles"], v["tiles"]);
    // The next process takes the cached choice without measuring.
    let info = run(&["info", gguf.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&info.stderr).contains("measured"));
    let line = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find(|l| l.starts_with("kernels:"))
        .unwrap()
        .to_string();
    let want = format!(
        "32-element {}/{}/{}",
        v["tiles"][0][0].as_str().unwrap(),
        v["tiles"][0][1].as_str().unwrap(),
        v["tiles"][0][2].as_str().unwrap()
    );
    assert!(line.contains(&want), "{line} lacks {want}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_names_what_a_file_needs_that_fulcrum_lacks_before_loading_it() {
    use fulcrum_gguf::writer::{to_bytes, TensorSpec};
    use fulcrum_gguf::{GgmlType, Value};
    let dir = std::env::temp_dir().join(format!("fulcrum-info-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Header-only checks: the tensors' contents are never read, so zeros do.
    let file = |name: &str, arch: &str, types: &[GgmlType]| {
        let specs: Vec<TensorSpec> = types
            .iter()
            .enumerate()
            .map(|(i, &ty)| TensorSpec {
                name: format!("blk.{i}.ffn_down.weight"),
                dims: vec![256, 4],
                ty,
            })
            .collect();
        let data: Vec<Vec<u8>> = specs
            .iter()
            .map(|s| vec![0u8; fulcrum_quant::row_bytes(s.ty, 256) * 4])
            .collect();
        let tensors: Vec<(TensorSpec, &[u8])> = specs
            .iter()
            .cloned()
            .zip(data.iter().map(Vec::as_slice))
            .collect();
        let metadata = vec![(
            "general.architecture".to_string(),
            Value::String(arch.into()),
        )];
        let path = dir.join(name);
        std::fs::write(&path, to_bytes(&metadata, &tensors).unwrap()).unwrap();
        path
    };
    let phi = file(
        "phi.gguf",
        "phi3",
        &[GgmlType::Q8_0, GgmlType::Q3_K, GgmlType::Q3_K],
    );
    let out = fulcrum(&["info", phi.to_str().unwrap()]);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("supported:       no"), "{stdout}");
    assert!(
        stdout.contains("architecture 'phi3'") && stdout.contains("tensor type Q3_K (2 tensors)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("phi3") && stderr.contains("Q3_K") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let out = fulcrum(&["info", "--json", phi.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["supported"], false);
    assert_eq!(v["unsupported"]["architecture"], "phi3");
    assert_eq!(v["unsupported"]["tensor_types"]["Q3_K"], 2);
    assert!(v["unsupported"]["tensor_types"].get("Q8_0").is_none());
    // A known architecture with one unsupported type names only the type.
    let q2 = file("q2.gguf", "llama", &[GgmlType::Q2_K]);
    let v = fulcrum_json_allow_failure(&["info", "--json", q2.to_str().unwrap()]);
    assert_eq!(v["unsupported"]["architecture"], serde_json::Value::Null);
    assert_eq!(v["unsupported"]["tensor_types"]["Q2_K"], 1);
    // A real model is supported.
    let gguf = model("gemma3-270m").path.clone();
    let v = fulcrum_json(&["info", "--json", gguf.to_str().unwrap()]);
    assert_eq!(v["supported"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The JSON a command prints, whether or not it succeeds.
fn fulcrum_json_allow_failure(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&fulcrum(args).stdout).expect("JSON on stdout")
}
