//! The webhook's input path: signature, event header, body (raw and JSON-aware) and transport,
//! all from the fuzzer's bytes (the layout is in `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sophons_fuzz::{Input, check};

fuzz_target!(|data: &[u8]| {
    let _ = check(&Input::from_bytes(data));
});
