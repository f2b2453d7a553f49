//! Optional dump of intermediate activations, to compare a forward pass with llama.cpp's layer by layer.
//!
//! Set `FULCRUM_TRACE=FILE` and every forward pass appends its named tensors to FILE in the record format that
//! `tools/llama-reference/llama_trace.c` writes for llama.cpp: `step: i32, name_len: u32, name, ne: [i64; 4]`,
//! then the f32 values. Names follow llama.cpp's graph (`attn_norm-3`, `kqv_out-3`, `l_out-3`, ...). A forward pass
//! holds a [`Tracer`], which off returns from every `record` at once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

static SINK: OnceLock<Option<Mutex<BufWriter<File>>>> = OnceLock::new();
static STEP: AtomicI32 = AtomicI32::new(0);

fn sink() -> Option<&'static Mutex<BufWriter<File>>> {
    SINK.get_or_init(|| {
        let path = std::env::var_os("FULCRUM_TRACE")?;
        let file = File::create(&path).ok()?;
        Some(Mutex::new(BufWriter::new(file)))
    })
    .as_ref()
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    sink().is_some()
}

/// Where the steps of a forward pass send their tensors: nowhere, or the `FULCRUM_TRACE` file. Made once per pass,
/// so that a step records without asking whether tracing is on.
#[derive(Clone, Copy)]
pub struct Tracer {
    sink: Option<&'static Mutex<BufWriter<File>>>,
}

impl Tracer {
    /// The tracer of this process: the trace file when `FULCRUM_TRACE` names one, else off.
    pub fn from_env() -> Tracer {
        Tracer { sink: sink() }
    }

    /// Records `data`, `rows` rows of `data.len() / rows` values, under `name` (with `-layer` appended if given);
    /// returns at once when off.
    #[inline]
    pub fn record(&self, name: &str, layer: Option<usize>, data: &[f32], rows: usize) {
        if let Some(sink) = self.sink {
            write_record(sink, name, layer, data, rows);
        }
    }
}

#[cold]
fn write_record(
    sink: &Mutex<BufWriter<File>>,
    name: &str,
    layer: Option<usize>,
    data: &[f32],
    rows: usize,
) {
    let name = match layer {
        Some(l) => format!("{name}-{l}"),
        None => name.to_string(),
    };
    let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
    let mut record = Vec::with_capacity(48 + name.len() + data.len() * 4);
    record.extend_from_slice(&STEP.load(Ordering::Relaxed).to_le_bytes());
    record.extend_from_slice(&(name.len() as u32).to_le_bytes());
    record.extend_from_slice(name.as_bytes());
    for ne in [(data.len() / rows.max(1)) as i64, rows as i64, 1, 1] {
        record.extend_from_slice(&ne.to_le_bytes());
    }
    for v in data {
        record.extend_from_slice(&v.to_le_bytes());
    }
    // A failed write only loses the trace, never the computation.
    let _ = out.write_all(&record).and_then(|_| out.flush());
}

/// Marks the end of one forward pass (llama.cpp's trace counts decode calls the same way).
pub fn next_step() {
    if enabled() {
        STEP.fetch_add(1, Ordering::Relaxed);
    }
}
