//! Test-only code, behind the `testkit` feature: the fuzz harnesses (shared by `fuzz/` and the
//! seeded tests) and a builder of GGUF bytes, valid or deliberately broken.

pub mod fuzzing;
pub mod gguf;
