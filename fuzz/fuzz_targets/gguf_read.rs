//! Raw bytes and mutations of a small valid GGUF through the reader, the dequantizers and the
//! converter's metadata readers: `qwenrt::testkit::fuzzing::gguf_read`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::gguf_read(data));
