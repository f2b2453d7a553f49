//! A mutation fuzzer that runs on the stable toolchain, shared by the fuzz targets of several crates (included with
//! `#[path]`): inputs are seeds changed by byte-level mutations (flips, interesting integers, dictionary tokens,
//! inserts, deletes, splices, truncations), each run under `catch_unwind`. A panic saves the input under
//! `target/fuzz-crashes/` and fails the test; saved regressions (`tests/fuzz-regressions/<target>/`) run first.
//!
//! Budget: `FULCRUM_FUZZ_SECONDS` per target (default 2, the CI smoke run) or `FULCRUM_FUZZ_CASES`; the seed is
//! `FULCRUM_FUZZ_SEED` (default 1, so the test suite's run is reproducible; printed). With `FULCRUM_FUZZ_STATS=FILE`
//! a line `target executions seconds` is appended per run, for `scripts/fuzz.sh`.

#![allow(dead_code)]

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, fast and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that break length and count fields.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX,
];

thread_local! {
    /// Whether this thread is running a fuzz input (whose panics the fuzzer reports itself).
    static FUZZING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs, once, a panic hook that is silent for fuzz inputs and the default one for everything else.
fn quiet_fuzz_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FUZZING.get() {
                default(info);
            }
        }));
    });
}

/// A dictionary of text tokens, as the mutator inserts them.
pub fn words(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// What a target is given, and how long it runs.
pub struct Fuzz<'a> {
    /// The target's name (for messages, crash files and statistics).
    pub name: &'a str,
    /// Valid inputs to start from.
    pub seeds: Vec<Vec<u8>>,
    /// Tokens the mutator may insert (keywords, field names, magic numbers).
    pub dictionary: Vec<Vec<u8>>,
    /// The crate's folder (for its regressions).
    pub crate_dir: &'a str,
    /// Largest input.
    pub max_len: usize,
}

impl Fuzz<'_> {
    /// Runs `target` on the regressions, the seeds and mutated inputs until the budget is spent; panics (after
    /// saving the input) on the first input that makes `target` panic. Returns the executions.
    pub fn run(&self, target: impl Fn(&[u8])) -> u64 {
        let started = Instant::now();
        let regressions = Path::new(self.crate_dir)
            .join("tests/fuzz-regressions")
            .join(self.name);
        let mut executions = 0u64;
        if let Ok(entries) = std::fs::read_dir(&regressions) {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            paths.sort();
            for path in paths {
                let input = std::fs::read(&path).expect("read a regression");
                self.execute(&target, &input);
                executions += 1;
            }
        }
        for seed in &self.seeds {
            self.execute(&target, seed);
            executions += 1;
        }
        let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<f64>().ok());
        let cases = env("FULCRUM_FUZZ_CASES").map(|c| c as u64);
        let budget = Duration::from_secs_f64(env("FULCRUM_FUZZ_SECONDS").unwrap_or(2.0));
        // A fixed seed by default, so the test suite's smoke run is reproducible; scripts/fuzz.sh picks new ones.
        let seed = env("FULCRUM_FUZZ_SEED").map_or(1, |s| s as u64) | 1;
        let mut rng = Rng(seed);
        let mut input = Vec::new();
        let mut n = 0u64;
        loop {
            let done = match cases {
                Some(c) => n >= c,
                // The clock is read once per 64 inputs.
                None => n.is_multiple_of(64) && started.elapsed() >= budget,
            };
            if done {
                break;
            }
            self.mutate(&mut rng, &mut input);
            self.execute(&target, &input);
            n += 1;
        }
        executions += n;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "fuzz {}: {executions} executions in {seconds:.1} s ({:.0}/s), seed {seed}, no crash",
            self.name,
            executions as f64 / seconds
        );
        if let Ok(stats) = std::env::var("FULCRUM_FUZZ_STATS") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(stats)
            {
                let _ = writeln!(f, "{} {executions} {seconds:.1}", self.name);
            }
        }
        executions
    }

    /// Runs one input; on a panic saves it and fails with its path.
    fn execute(&self, target: &impl Fn(&[u8]), input: &[u8]) {
        quiet_fuzz_panics();
        FUZZING.set(true);
        let result = catch_unwind(AssertUnwindSafe(|| target(input)));
        FUZZING.set(false);
        if let Err(payload) = result {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let dir = Path::new(self.crate_dir).join("../../target/fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let path = dir.join(format!("{}-{hash:016x}.bin", self.name));
            let _ = std::fs::write(&path, input);
            panic!(
                "fuzz {}: a panic ({message}) on the input saved at {} ({} bytes); add it to tests/fuzz-regressions/{}/ once fixed",
                self.name,
                path.display(),
                input.len(),
                self.name
            );
        }
    }

    /// Replaces `input` with a seed changed by one to eight mutations.
    fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>) {
        input.clear();
        if !self.seeds.is_empty() {
            input.extend_from_slice(&self.seeds[rng.below(self.seeds.len())]);
        }
        for _ in 0..1 + rng.below(8) {
            let len = input.len();
            match rng.below(10) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    input[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    input[i] = rng.next() as u8;
                }
                2 if len > 0 => {
                    // An interesting integer, 1, 2, 4 or 8 bytes little-endian.
                    let width = 1 << rng.below(4);
                    let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                    let i = rng.below(len);
                    let end = (i + width).min(len);
                    input[i..end].copy_from_slice(&value[..end - i]);
                }
                3 if !self.dictionary.is_empty() => {
                    let token = &self.dictionary[rng.below(self.dictionary.len())];
                    let i = rng.below(len + 1);
                    input.splice(i..i, token.iter().copied());
                }
                4 => {
                    let i = rng.below(len + 1);
                    let n = 1 + rng.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    input.splice(i..i, bytes);
                }
                5 if len > 0 => {
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(64));
                    input.drain(i..i + n);
                }
                6 if len > 0 => {
                    // Duplicate a range (repeated structures, deep nesting).
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(64));
                    let copy = input[i..i + n].to_vec();
                    let at = rng.below(len + 1);
                    input.splice(at..at, copy);
                }
                7 if !self.seeds.is_empty() => {
                    // Splice: this input's head with another seed's tail.
                    let other = &self.seeds[rng.below(self.seeds.len())];
                    let cut = rng.below(len + 1);
                    let from = rng.below(other.len() + 1);
                    input.truncate(cut);
                    input.extend_from_slice(&other[from..]);
                }
                8 if len > 0 => input.truncate(rng.below(len)),
                _ => {
                    if let Some(token) = self.dictionary.first() {
                        let i = rng.below(len + 1);
                        input.splice(i..i, token.iter().copied());
                    }
                }
            }
        }
        input.truncate(self.max_len);
    }
}
