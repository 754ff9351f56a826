//! Fuzz target: any byte string given to the reader yields Ok or an error, never a panic, and an
//! accepted file's tensors are all readable in full.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = autoglm_gguf::GgufFile::from_bytes(data.to_vec()) {
        for t in f.tensors() {
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        }
        for (_, v) in f.metadata() {
            let _ = v.summary(80);
        }
    }
});
