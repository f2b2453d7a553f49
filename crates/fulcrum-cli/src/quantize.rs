//! `fulcrum quantize`: re-quantizes a model's weight matrices to NF4, Q8_0 or Q4_0, writing a new GGUF file.
//!
//! `fulcrum_models::requantize` does the work (which tensors change type, the checked write); this parses the
//! arguments, draws the progress bar and prints the summary.

use crate::common::{check_threads, CliResult};
use fulcrum_models as models;
use fulcrum_models::requantize::{requantize, Options, Progress, Target};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
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

/// The tensors done so far, as a bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&mut self, tensors: usize) {
        self.0.set_length(tensors as u64);
    }

    fn tensor(&mut self, done: usize, name: &str) {
        self.0.set_position(done as u64);
        self.0.set_message(name.to_owned());
    }
}

/// Runs `fulcrum quantize`.
pub fn run(args: Args) -> CliResult {
    let options = Options {
        target: args.to,
        threads: check_threads(args.threads)?,
        replace: args.force,
    };
    let input = models::resolve(&args.input, true)?;
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let written = requantize(&input, &args.output, &options, &mut Bar(bar.clone()));
    bar.finish_and_clear();
    let summary = written?;
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(ty, n)| format!("{n} {ty}"))
        .collect();
    eprintln!(
        "wrote {} ({:.1} MiB; tensors: {}) in {:.1} s",
        args.output.display(),
        summary.size as f64 / (1 << 20) as f64,
        counts.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
