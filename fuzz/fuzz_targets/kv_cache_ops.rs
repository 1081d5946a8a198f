//! KV cache bookkeeping against a plain `Vec` model: `qwenrt::testkit::fuzzing::kv_cache_ops`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::kv_cache_ops(data));
