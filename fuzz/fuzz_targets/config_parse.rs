//! Raw bytes and structured (overflowing) sizes through `Config::from_json` and the arena
//! plan: `qwenrt::testkit::fuzzing::config_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::config_parse(data));
