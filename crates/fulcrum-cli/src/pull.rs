//! `fulcrum pull`: fetch a default model into the cache.

use crate::common::CliResult;
use fulcrum_models as models;
use std::io::IsTerminal;

/// Arguments of `fulcrum pull`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name (see `fulcrum pull --list`).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Download again even if the model is cached.
    #[arg(long)]
    force: bool,
    /// List the models that can be pulled.
    #[arg(long)]
    list: bool,
}

/// Runs `fulcrum pull`.
pub fn run(args: Args) -> CliResult {
    if args.list {
        for m in models::known_models() {
            let state = if models::cached_path(m).exists() {
                "cached"
            } else {
                "not cached"
            };
            println!("{:<32} {:<8} {}", m.name, m.arch, state);
        }
        return Ok(());
    }
    let name = args.name.unwrap_or_default();
    let model = models::find_known(&name).ok_or_else(|| {
        let names: Vec<&str> = models::known_models().iter().map(|m| m.name).collect();
        format!("unknown model '{name}'; known models: {}", names.join(", "))
    })?;
    let path = models::pull(model, args.force, std::io::stderr().is_terminal())?;
    println!("{}", path.display());
    Ok(())
}
