//! Grammar sources through the constraint compiler: the first byte picks a JSON schema (any
//! byte but `r` and `l`), a regex (`r`) or a Lark grammar (`l`); the rest is the source. It
//! compiles or is refused with an error, in bounded time, and a compiled grammar's masks and
//! commits agree for a few steps (see `qwenrt::testkit::fuzzing::constraint_compile`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qwenrt::testkit::fuzzing::constraint_compile(data);
});
