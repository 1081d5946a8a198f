//! Text (the input as lossy UTF-8) through encode and decode of the real tokenizer (the
//! committed tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json): it comes back as its NFC form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::tokenizer_roundtrip_bytes(data));
