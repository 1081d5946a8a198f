//! Raw bytes and mutations of the tiny fixture model through the validating loader and a
//! forward pass: `qwenrt::testkit::fuzzing::safetensors_load`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::safetensors_load(data));
