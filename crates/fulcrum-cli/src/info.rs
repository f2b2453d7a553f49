//! `fulcrum info`: describe a model file.

use crate::common::{load_model, CliResult};
use fulcrum_gguf::GgufFile;
use serde_json::json;
use std::collections::BTreeMap;

/// Arguments of `fulcrum info`.
#[derive(clap::Args)]
pub struct Args {
    /// Model name or path to a .gguf file.
    model: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What of a file Fulcrum cannot run, read from its header alone: the architecture (if not one Fulcrum runs) and
/// each unsupported tensor type with its tensor count.
fn unsupported(file: &GgufFile) -> (Option<String>, BTreeMap<String, usize>) {
    let arch = file
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("(none)");
    let arch =
        (!fulcrum_core::config::SUPPORTED_ARCHITECTURES.contains(&arch)).then(|| arch.to_string());
    let mut types = BTreeMap::new();
    for t in file.tensors() {
        if !fulcrum_quant::is_supported(t.ty) {
            *types.entry(t.ty.name().to_string()).or_default() += 1;
        }
    }
    (arch, types)
}

/// Runs `fulcrum info`.
pub fn run(args: Args) -> CliResult {
    // Before loading: a file Fulcrum cannot run is described, with what is missing, and is an error.
    let path = fulcrum_models::resolve(&args.model, true)?;
    let header = GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (arch, types) = unsupported(&header);
    if arch.is_some() || !types.is_empty() {
        let supported = fulcrum_core::config::SUPPORTED_ARCHITECTURES.join(", ");
        let mut missing = Vec::new();
        if let Some(a) = &arch {
            missing.push(format!("architecture '{a}' (Fulcrum runs {supported})"));
        }
        for (ty, n) in &types {
            missing.push(format!("tensor type {ty} ({n} tensors)"));
        }
        if args.json {
            let out = json!({
                "path": path.display().to_string(),
                "architecture": header.get_str("general.architecture").ok().flatten(),
                "tensor_count": header.tensors().len(),
                "supported": false,
                "unsupported": {"architecture": arch, "tensor_types": types},
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("path:            {}", path.display());
            println!("supported:       no");
            for m in &missing {
                println!("  not supported: {m}");
            }
        }
        return Err(format!(
            "{} cannot run here: {} not supported",
            path.display(),
            missing.join("; ")
        )
        .into());
    }
    drop(header);
    let model = load_model(&args.model, false)?;
    let c = &model.config;
    let file = &model.file;
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut params = 0u64;
    for t in file.tensors() {
        let e = types.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.size_bytes;
        params += t.n_elements();
    }
    let tok = &model.tokenizer;
    let template = model.chat_template();
    let str_key = |k: &str| file.get_str(k).ok().flatten().map(str::to_string);
    let info = json!({
        "path": model.path.display().to_string(),
        "file_bytes": file.file_size(),
        "gguf_version": file.version(),
        "name": str_key("general.name"),
        "architecture": c.arch_name,
        "parameters": params,
        "layers": c.n_layers,
        "embedding_length": c.d_model,
        "feed_forward_length": c.d_ff,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "context_length": c.context_length,
        "rope_base": c.rope_base,
        "sliding_window": c.sliding_window,
        "vocab_size": c.vocab_size,
        "tensor_count": file.tensors().len(),
        "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "tokenizer": {
            "model": str_key("tokenizer.ggml.model"),
            "pre": str_key("tokenizer.ggml.pre"),
            "tokens": tok.vocab_size(),
            "bos": tok.bos(),
            "eos": tok.eos(),
            "end_of_generation": tok.eog_ids(),
            "add_bos": tok.add_bos(),
        },
        "chat_template": template,
        "supported": true,
        "simd": fulcrum_core::ops::simd_level(),
        "tiles": crate::kernels::tiles_json(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("path:            {}", model.path.display());
    println!("supported:       yes (architecture and every tensor type)");
    println!(
        "name:            {}",
        str_key("general.name").unwrap_or_else(|| "-".into())
    );
    println!("architecture:    {}", c.arch_name);
    println!(
        "file:            {:.1} MiB, GGUF v{}, {} tensors",
        file.file_size() as f64 / 1048576.0,
        file.version(),
        file.tensors().len()
    );
    println!("parameters:      {:.1} M", params as f64 / 1e6);
    println!("layers:          {}", c.n_layers);
    println!("embedding:       {} (feed-forward {})", c.d_model, c.d_ff);
    println!(
        "heads:           {} query, {} key/value, head width {}",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("context length:  {}", c.context_length);
    if let Some(w) = c.sliding_window {
        println!(
            "sliding window:  {w} (every {}th layer global)",
            c.sliding_pattern
        );
    }
    println!("rope base:       {}", c.rope_base);
    println!("tensor types:");
    for (name, (n, bytes)) in &types {
        println!(
            "  {name:<6} {n:>4} tensors, {:>8.1} MiB",
            *bytes as f64 / 1048576.0
        );
    }
    println!(
        "tokenizer:       {} (pre: {}), {} tokens, bos {:?}, eos {:?}, add_bos {}",
        str_key("tokenizer.ggml.model").unwrap_or_default(),
        str_key("tokenizer.ggml.pre").unwrap_or_else(|| "-".into()),
        tok.vocab_size(),
        tok.bos(),
        tok.eos(),
        tok.add_bos()
    );
    match template {
        Some(t) => println!("chat template:   {} characters", t.len()),
        None => println!("chat template:   none (chat uses a plain fallback)"),
    }
    println!(
        "kernels:         {}{}",
        fulcrum_core::ops::simd_level(),
        fulcrum_quant::tile_choice()
            .map(|c| format!(
                " (tiles for 1 row / 2-8 / 9+: {})",
                crate::kernels::describe(&c)
            ))
            .unwrap_or_default()
    );
    Ok(())
}
