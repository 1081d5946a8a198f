//! Grammar sources through the constraint compiler: the first byte picks a JSON schema (any
//! byte but `r`, `l` and `g`), a regex (`r`), a Lark grammar (`l`) or a GBNF grammar (`g`);
//! the rest is the source. It
//! compiles or is refused with an error, in bounded time, and a compiled grammar's masks and
//! commits agree for a few steps (see `qwenrt::testkit::fuzzing::constraint_compile`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qwenrt::testkit::fuzzing::constraint_compile_bytes(data));
