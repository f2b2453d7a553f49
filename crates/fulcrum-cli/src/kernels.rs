//! Which tile kernels this CPU runs fastest, per kernel family and batch size: measured once per CPU model (about a
//! second), kept in the cache beside the models (`kernels.json`), and handed to the kernel table before any kernel
//! runs. `FULCRUM_TILE_ISA` overrides it; `fulcrum bench --kernels` measures again and shows the figures.

use fulcrum_quant::calibrate::{calibrate_tiles, TileTiming};
use fulcrum_quant::{TileChoice, TileIsa, CLASSES, FAMILY_NAMES};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Weight matrix per timing, MiB: larger than the caches, as a model's matrices are.
const MATRIX_MIB: usize = 64;
/// Passes per instruction set and class.
const REPS: usize = 3;

/// The cache file of measured choices, one per CPU model, in the model cache (writable wherever models are pulled).
fn cache_file() -> PathBuf {
    fulcrum_models::registry::models_dir().join("kernels.json")
}

/// What identifies this CPU for the cache: vendor, family, model, stepping and name, the instruction sets allowed,
/// and Fulcrum's version (kernels change between versions).
fn cpu_key() -> String {
    let info = cpuinfo();
    let field = |name: &str| cpuinfo_field(&info, name);
    let isas: Vec<&str> = fulcrum_quant::tile_isas()
        .into_iter()
        .map(TileIsa::name)
        .collect();
    format!(
        "{}|family {}|model {}|stepping {}|{}|{}|fulcrum {}",
        field("vendor_id"),
        field("cpu family"),
        field("model"),
        field("stepping"),
        field("model name"),
        isas.join(","),
        env!("CARGO_PKG_VERSION")
    )
}

fn choice_json(choice: &TileChoice) -> Value {
    Value::Array(
        choice
            .iter()
            .map(|c| Value::Array(c.iter().map(|i| json!(i.name())).collect()))
            .collect(),
    )
}

fn choice_from(v: &Value) -> Option<TileChoice> {
    let families = v.as_array()?;
    let mut out = [[TileIsa::Avx2; CLASSES]; 2];
    if families.len() != out.len() {
        return None;
    }
    for (f, classes) in families.iter().enumerate() {
        let classes = classes.as_array()?;
        if classes.len() != CLASSES {
            return None;
        }
        for (c, isa) in classes.iter().enumerate() {
            out[f][c] = TileIsa::parse(isa.as_str()?)?;
        }
    }
    Some(out)
}

/// The tiles in use, per family, as JSON (`{"32-element": ["avx2", …], …}`; null for scalar kernels).
pub fn tiles_json() -> Value {
    match fulcrum_quant::tile_choice() {
        Some(c) => Value::Object(
            FAMILY_NAMES
                .iter()
                .zip(c)
                .map(|(n, per)| (n.to_string(), json!(per.map(TileIsa::name))))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// This CPU's model name.
pub fn cpu_name() -> String {
    cpuinfo_field(&cpuinfo(), "model name")
}

/// `/proc/cpuinfo` (empty where there is none).
fn cpuinfo() -> String {
    std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
}

/// The first value of field `name` in `info` (`/proc/cpuinfo`'s text).
fn cpuinfo_field(info: &str, name: &str) -> String {
    info.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// The choice as one line: per family, the instruction set for 1 row, 2–8 and 9+.
pub fn describe(choice: &TileChoice) -> String {
    FAMILY_NAMES
        .iter()
        .zip(choice)
        .map(|(name, c)| format!("{name} {}/{}/{}", c[0].name(), c[1].name(), c[2].name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Measures, stores under this CPU's key, and returns the choice with its timings.
pub fn measure() -> Option<(TileChoice, Vec<TileTiming>)> {
    let (choice, timings) = calibrate_tiles(MATRIX_MIB, REPS)?;
    let file = cache_file();
    let mut all: serde_json::Map<String, Value> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    all.insert(cpu_key(), json!({"tiles": choice_json(&choice)}));
    // Written whole and renamed, so that concurrent processes never read half a file; a failure only costs a
    // measurement next time.
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&Value::Object(all)).unwrap_or_default(),
    )
    .is_ok()
    {
        let _ = std::fs::rename(&tmp, &file);
    }
    Some((choice, timings))
}

/// `fulcrum bench --kernels`: measures, stores, and prints every timing and the choice.
pub fn bench(as_json: bool) -> crate::common::CliResult {
    let (choice, timings) =
        measure().ok_or("this CPU has no SIMD tile kernels: nothing to choose")?;
    if as_json {
        let rows: Vec<Value> = timings
            .iter()
            .map(|t| {
                json!({"family": FAMILY_NAMES[t.family], "tokens": t.tokens, "isa": t.isa.name(),
                       "seconds": t.seconds, "weight_gb_per_s": t.weight_gb_per_s})
            })
            .collect();
        let out = json!({"cpu": cpu_key(), "tiles": choice_json(&choice), "timings": rows});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("cpu: {}", cpu_key());
    println!("| family | activation rows | instruction set | ms per pass | weight GB/s | chosen |");
    println!("|---|---|---|---|---|---|");
    for t in &timings {
        let chosen = choice[t.family][t.class] == t.isa;
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {} |",
            FAMILY_NAMES[t.family],
            t.tokens,
            t.isa.name(),
            t.seconds * 1e3,
            t.weight_gb_per_s,
            if chosen { "yes" } else { "" }
        );
    }
    println!(
        "chosen (1 row / 2-8 / 9+): {}; stored in {}",
        describe(&choice),
        cache_file().display()
    );
    Ok(())
}

/// Sets the kernel table's tile choice before any kernel runs: `FULCRUM_TILE_ISA` if set (the table reads it), else
/// this CPU's cached measurement, else a new measurement (cached).
pub fn configure() {
    // The kernel table reads the variable itself; here it is only checked, so that a bad value is not silent.
    if let Some(parsed) = fulcrum_quant::env_tile_choice() {
        if let Err(e) = parsed {
            eprintln!("warning: {e}; using the widest");
        }
        return;
    }
    if fulcrum_quant::tile_isas().len() < 2 {
        return;
    }
    let cached = std::fs::read(cache_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get(cpu_key()).and_then(|e| choice_from(&e["tiles"])));
    let choice = match cached {
        Some(c) => c,
        None => {
            let start = std::time::Instant::now();
            let Some((c, _)) = measure() else { return };
            eprintln!(
                "kernels: measured the tile kernels for this CPU in {:.1} s: {} (cached in {})",
                start.elapsed().as_secs_f64(),
                describe(&c),
                cache_file().display()
            );
            c
        }
    };
    if let Err(e) = fulcrum_quant::choose_tiles(choice) {
        eprintln!("warning: tile kernels: {e}; using the defaults");
    }
}
