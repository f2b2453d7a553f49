//! Prints a GGUF file's header, metadata and tensor table: `cargo run -p fulcrum-gguf --example gguf_dump -- FILE`.

use std::path::PathBuf;
use std::time::Instant;

use fulcrum_gguf::{GgufFile, Value};

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gguf_dump FILE.gguf");
        std::process::exit(2);
    };
    let start = Instant::now();
    let file = match GgufFile::open(&path) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    };
    let elapsed = start.elapsed();
    println!(
        "version {} alignment {} data_offset {} file_size {} (opened in {:.1} ms)",
        file.version(),
        file.alignment(),
        file.data_offset(),
        file.file_size(),
        elapsed.as_secs_f64() * 1e3
    );
    for (key, value) in file.metadata() {
        match value {
            Value::Array(array) => {
                println!("{key} = [{}; {}]", array.type_description(), array.len())
            }
            Value::String(s) if s.chars().count() > 60 => {
                println!("{key} = {:?}…", s.chars().take(60).collect::<String>())
            }
            other => println!("{key} = {other:?}"),
        }
    }
    for t in file.tensors() {
        println!(
            "{} {} {:?} @{} +{}",
            t.name, t.ty, t.dims, t.offset, t.size_bytes
        );
    }
}
