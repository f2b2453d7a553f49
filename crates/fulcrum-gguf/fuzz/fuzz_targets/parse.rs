//! Any byte string must give `Ok` or a clean `Err` from the GGUF reader, never a panic or a huge allocation.

#![no_main]

use fulcrum_gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        for (key, _) in file.metadata() {
            let _ = file.get_u64(key);
            let _ = file.get_str_array(key);
            let _ = file.get_i32_array(key);
        }
        for tensor in file.tensors() {
            assert_eq!(file.tensor_data(tensor).len() as u64, tensor.size_bytes);
        }
    }
});
