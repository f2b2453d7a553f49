//! Reads the three default models (fetched by `fulcrum pull`) and checks what llama.cpp's gguf-py reports for them.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use fulcrum_gguf::{GgmlType, GgufError, GgufFile};

/// `$FULCRUM_MODELS_DIR/<name>.gguf`, else `$HOME/.cache/fulcrum/models/<name>.gguf`; fails clearly if absent.
fn model_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FULCRUM_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .expect("HOME is not set and FULCRUM_MODELS_DIR is not set");
            PathBuf::from(home).join(".cache/fulcrum/models")
        }
    };
    let path = dir.join(format!("{name}.gguf"));
    assert!(
        path.is_file(),
        "model file {} is missing: run `fulcrum pull {name}` (or set FULCRUM_MODELS_DIR)",
        path.display()
    );
    path
}

fn open(name: &str) -> GgufFile {
    let path = model_path(name);
    let start = Instant::now();
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!(
        "opened {name} in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    file
}

fn check_tensor(file: &GgufFile, name: &str, ty: GgmlType, dims: &[u64]) {
    let t = file
        .tensor(name)
        .unwrap_or_else(|| panic!("tensor {name} missing"));
    assert_eq!((t.ty, t.dims.as_slice()), (ty, dims), "{name}");
    assert_eq!(file.tensor_data(t).len() as u64, t.size_bytes);
}

/// The first `n` bytes of a file.
fn prefix(name: &str, n: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(model_path(name))
        .unwrap()
        .take(n)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// Prefixes cut inside the metadata, the tensor infos and the tensor data all give clean errors (only the first
/// few MB are read, to keep memory small).
fn check_truncations(name: &str, file: &GgufFile) {
    let data = file.data_offset();
    let head = prefix(name, data + (1 << 20));
    for cut in [
        0,
        7,
        100,
        1 << 20,
        data - 100,
        data - 1,
        data,
        data + 1000,
        data + (1 << 20),
    ] {
        let err = GgufFile::from_bytes(head[..cut as usize].to_vec())
            .expect_err("truncated model accepted");
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "{name} cut at {cut}: {err}"
        );
    }
}

#[test]
fn gemma3_270m() {
    let file = open("gemma3-270m");
    assert_eq!(file.version(), 3);
    assert_eq!(
        file.get_str("general.architecture").unwrap(),
        Some("gemma3")
    );
    assert_eq!(file.tensors().len(), 236);
    assert_eq!(file.metadata().len(), 33);
    assert_eq!(file.get_u32("gemma3.embedding_length").unwrap(), Some(640));
    assert_eq!(file.get_u32("gemma3.block_count").unwrap(), Some(18));
    assert_eq!(
        file.get_u32("gemma3.attention.head_count_kv").unwrap(),
        Some(1)
    );
    assert_eq!(
        file.get_f32("gemma3.rope.freq_base").unwrap(),
        Some(1_000_000.0)
    );
    assert_eq!(
        file.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(true)
    );
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    let tokens = file
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap();
    assert_eq!(tokens.len(), 262144);
    assert_eq!(tokens[2], "<bos>");
    assert_eq!(
        file.get_f32_array("tokenizer.ggml.scores")
            .unwrap()
            .unwrap()
            .len(),
        262144
    );
    assert_eq!(
        file.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap()
            .len(),
        262144
    );
    check_tensor(&file, "token_embd.weight", GgmlType::Q8_0, &[640, 262144]);
    check_tensor(&file, "blk.0.attn_q.weight", GgmlType::Q5_0, &[640, 1024]);
    check_tensor(
        &file,
        "blk.0.attn_output.weight",
        GgmlType::Q4_K,
        &[1024, 640],
    );
    check_tensor(&file, "blk.0.ffn_down.weight", GgmlType::Q6_K, &[2048, 640]);
    check_tensor(&file, "blk.17.post_ffw_norm.weight", GgmlType::F32, &[640]);
    let norm = file.tensor_bytes("output_norm.weight").unwrap();
    assert!(norm
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()));
    check_truncations("gemma3-270m", &file);
}

#[test]
fn qwen25_coder_05b() {
    let file = open("qwen2.5-coder-0.5b-instruct");
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("qwen2"));
    assert_eq!(file.tensors().len(), 291);
    assert_eq!(file.get_u32("qwen2.block_count").unwrap(), Some(24));
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        151936
    );
    assert_eq!(
        file.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len(),
        151387
    );
    assert_eq!(
        file.get_u32("tokenizer.ggml.eos_token_id").unwrap(),
        Some(151645)
    );
    assert!(file
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap()
        .contains("<|im_start|>"));
    check_tensor(&file, "token_embd.weight", GgmlType::Q5_0, &[896, 151936]);
    check_tensor(&file, "output.weight", GgmlType::Q8_0, &[896, 151936]);
    check_tensor(&file, "blk.0.attn_k.bias", GgmlType::F32, &[128]);
    check_tensor(&file, "blk.0.ffn_down.weight", GgmlType::Q6_K, &[4864, 896]);
    check_truncations("qwen2.5-coder-0.5b-instruct", &file);
}

#[test]
fn qwen25_coder_15b() {
    let file = open("qwen2.5-coder-1.5b-instruct");
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("qwen2"));
    assert_eq!(file.tensors().len(), 339);
    assert_eq!(file.get_u32("qwen2.embedding_length").unwrap(), Some(1536));
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        151936
    );
    check_tensor(&file, "token_embd.weight", GgmlType::Q4_K, &[1536, 151936]);
    check_tensor(&file, "output.weight", GgmlType::Q6_K, &[1536, 151936]);
    check_tensor(&file, "blk.27.attn_v.weight", GgmlType::Q6_K, &[1536, 256]);
    // Only the metadata and tensor infos: the tensor data is missing.
    let err = GgufFile::from_bytes(prefix("qwen2.5-coder-1.5b-instruct", file.data_offset()))
        .unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
}
