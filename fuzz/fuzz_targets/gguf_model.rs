//! Raw bytes and mutations of a small complete quantized model (the tiny fixture as a Q8_0
//! GGUF) through the GGUF model loader and a forward pass: `qwenrt::testkit::fuzzing::gguf_model`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::gguf_model(data));
