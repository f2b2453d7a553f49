//! The HTTP server end to end: `fulcrum serve` driven by the official `openai` Python package (installed into a
//! virtual environment under `target/` on first use), covering chat and completions, streaming, stop strings,
//! logprobs, usage, errors, concurrency, prefix caching, cancellation and metrics (see `server/openai_client.py`).

mod common;

use common::{free_port, fulcrum_bin};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python packages the client scripts use.
const PACKAGES: &[&str] = &[
    "openai",
    "selenium",
    "prometheus_client",
    "sglang-router",
    "pyzmq",
    "msgspec",
    "helm-python-sdk",
    "kubernetes-validate",
    "dockerfile",
    "pyyaml",
];

/// A Python with the packages of [`PACKAGES`]: `$FULCRUM_TEST_PYTHON`, or a venv in `target/pyenv` created on first use; where
/// venvs are unavailable, the package goes into `target/pylib` on the system Python's path. Returns the interpreter
/// and a `PYTHONPATH` to set, if any.
fn python() -> (PathBuf, Option<PathBuf>) {
    if let Some(p) = std::env::var_os("FULCRUM_TEST_PYTHON") {
        return (p.into(), None);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let has_openai = |py: &Path, path: Option<&Path>| {
        let mut c = Command::new(py);
        if let Some(p) = path {
            c.env("PYTHONPATH", p);
        }
        c.args([
            "-c",
            "import openai, selenium, prometheus_client, sglang_router, zmq, msgspec, helm_python, kubernetes_validate, dockerfile, yaml",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    };
    let venv = target.join("pyenv");
    let py = venv.join("bin/python");
    if has_openai(&py, None) {
        return (py, None);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    if made.is_ok_and(|s| s.success()) {
        let pip = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet"])
            .args(PACKAGES)
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install {PACKAGES:?} failed");
        return (py, None);
    }
    let lib = target.join("pylib");
    let system = PathBuf::from("python3");
    if !has_openai(&system, Some(&lib)) {
        let pip = |extra: &[&str]| {
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&lib)
                .args(extra)
                .args(PACKAGES)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            pip(&[]) || pip(&["--break-system-packages"]),
            "cannot install the openai package (needs python3 with venv or pip)"
        );
    }
    (system, Some(lib))
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A text every Debian machine has, for perplexity.
const PPL_TEXT: &str = "/usr/share/common-licenses/GPL-3";

/// One server test at a time: two models' servers on two cores would slow each other's timings.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs Python script `script` with `args` and `env`, failing with its output.
fn run_python(
    (py, pythonpath): (&Path, Option<&Path>),
    script: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, String)],
) {
    let mut command = Command::new(py);
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    if let Some(p) = pythonpath {
        command.env("PYTHONPATH", p);
    }
    let out = command
        .arg(script)
        .args(args)
        .output()
        .expect("run a Python script");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{} checks failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs client script `name` (in tests/server) against the server at `port`, with `env` set.
fn run_script(py: &Path, pythonpath: Option<&Path>, name: &str, port: u16, env: &[(&str, String)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/server")
        .join(name);
    let url = format!("http://127.0.0.1:{port}");
    run_python((py, pythonpath), &script, &[url.as_ref()], env);
}

/// Waits until the server at `port` reports healthy.
fn wait_healthy(port: u16) {
    let start = Instant::now();
    while get(port, "/health").is_none_or(|r| !r.contains("ok")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replicas_behind_the_sglang_router() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (py, pythonpath) = python();
    // The router's executable: beside the venv's Python, or in the package directory's bin/.
    let router = match &pythonpath {
        None => py.with_file_name("sglang-router"),
        Some(lib) => lib.join("bin/sglang-router"),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/cluster");
    let fulcrum = fulcrum_bin();
    let args = [
        "--smoke".as_ref(),
        "--fulcrum".as_ref(),
        fulcrum.as_os_str(),
        "--router".as_ref(),
        router.as_os_str(),
    ];
    run_python((&py, pythonpath.as_deref()), &script, &args, &[]);
}

/// Runs the Python script at `path` (relative to this crate) with `args`, which start its own servers.
fn run_crate_script(path: &str, args: &[&std::ffi::OsStr]) {
    let (py, pythonpath) = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    run_python((&py, pythonpath.as_deref()), &script, args, &[]);
}

#[test]
fn the_helm_chart_renders_valid_objects_that_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fulcrum = fulcrum_bin();
    run_crate_script(
        "../../deploy/check",
        &["--fulcrum".as_ref(), fulcrum.as_os_str()],
    );
}

#[test]
fn kv_events_let_a_router_follow_the_prefix_cache() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fulcrum = fulcrum_bin();
    run_crate_script("tests/server/kv_events.py", &[fulcrum.as_os_str()]);
}

#[test]
fn structured_output_and_tool_calls_on_the_larger_model() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (py, pythonpath) = python();
    let port = free_port();
    let server = Server(
        Command::new(fulcrum_bin())
            .args(["serve", "-m", "qwen2.5-coder-1.5b-instruct", "-t", "2"])
            .args([
                "--ctx",
                "1024",
                "--kv-memory",
                "64",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start fulcrum serve"),
    );
    wait_healthy(port);
    run_script(&py, pythonpath.as_deref(), "second_model.py", port, &[]);
    drop(server);
}

#[test]
fn openai_client_against_fulcrum_serve() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (py, pythonpath) = python();
    let port = free_port();
    let server = Server(
        Command::new(fulcrum_bin())
            .args(["serve", "-m", "qwen2.5-coder-0.5b-instruct", "-t", "2"])
            // Requests for exactly 29 tokens make the engine panic (the client checks the recovery).
            .env("FULCRUM_INJECT_PANIC_MAX_TOKENS", "29")
            .args([
                "--ctx",
                "512",
                "--kv-memory",
                "64",
                // The model drafting for itself, weights as they are: every draft must be accepted (the client
                // checks).
                "--draft-model",
                "qwen2.5-coder-0.5b-instruct",
                "--draft-type",
                "keep",
                // DEL always drafts (its shadow rows are checked); otherwise whether it drafts hangs on this host's
                // measured timings.
                "--spec-gamma-min",
                "1",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start fulcrum serve"),
    );
    // `fulcrum eval ppl` of a licence text's first window, which the client's echo scores must reproduce.
    let ppl = Command::new(fulcrum_bin())
        .args([
            "eval",
            "ppl",
            "-m",
            "qwen2.5-coder-0.5b-instruct",
            "-t",
            "2",
            "--ctx",
            "128",
        ])
        .args(["--chunks", "1", "--json", "--file", PPL_TEXT])
        .output()
        .expect("run fulcrum eval ppl");
    assert!(
        ppl.status.success(),
        "{}",
        String::from_utf8_lossy(&ppl.stderr)
    );
    let ppl: serde_json::Value = serde_json::from_slice(&ppl.stdout).expect("eval ppl --json");
    wait_healthy(port);
    let env = [
        ("FULCRUM_TEST_PPL_FILE", PPL_TEXT.to_string()),
        ("FULCRUM_TEST_PPL_128", ppl["ppl"].to_string()),
    ];
    run_script(&py, pythonpath.as_deref(), "openai_client.py", port, &env);
    // The chat page, in a real headless browser (scripts/test.sh installs Debian's chromium and chromium-driver).
    assert!(
        Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists(),
        "the chat page test needs Chromium: apt-get install chromium chromium-driver (scripts/test.sh does)"
    );
    run_script(&py, pythonpath.as_deref(), "chat_page.py", port, &[]);
    drop(server);
}
