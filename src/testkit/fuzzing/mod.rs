//! Harnesses for untrusted input, shared by the cargo-fuzz targets in `fuzz/` and by the
//! seeded-random tests in `tests/fuzz_harnesses.rs`, so plain `cargo test` runs the same checks
//! without a fuzzer. Each harness panics only when the code under test breaks its contract.
//!
//! Overview:
//! - [`kv_cache_ops`] / [`run_kv_program`]: [`KvProgram`]s (create, prefill and step writes,
//!   views, commit, rollback, reset, truncate over small shapes) against a plain nested-`Vec`
//!   model of the cache.
//! - [`safetensors_load`]: raw bytes, and [`StMutation`]s of the tiny fixture model and its
//!   config, through the validating loader ([`Weights::from_bytes`]) and, when that accepts
//!   them, one forward pass.
//! - [`config_parse`]: raw bytes and structured [`ConfigSizes`] through [`Config::from_json`],
//!   then the arena plan of every accepted config.
//! - [`gguf_read`]: raw bytes, and [`GgufMutation`]s of [`tiny_gguf`], through the GGUF reader,
//!   the dequantizers and the converter's metadata readers.
//! - [`gguf_model`]: raw bytes, and [`GgufMutation`]s of the tiny fixture model stored as a
//!   Q8_0 GGUF, through the GGUF model loader and, when it accepts them, a forward pass.
//! - [`tokenizer_roundtrip`]: text through encode and decode of the real tokenizer
//!   ([`tokenizer`], from the committed copy of the default model's tokenizer.json).
//! - [`constraint_compile`]: JSON schemas, regexes and Lark grammars through the constraint
//!   compiler over that tokenizer, then a few masked steps.
//!
//! [`TARGETS`] names each cargo-fuzz target with the harness it runs.

mod config;
mod constraint;
mod gguf;
mod kv_cache;
mod safetensors;
mod tokenizer;

pub use config::*;
pub use constraint::*;
pub use gguf::*;
pub use kv_cache::*;
pub use safetensors::*;
pub use tokenizer::*;

pub(crate) use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use qwenrt_kernels::Dtype;

use crate::engine::kv_cache::{CacheError, KvCache, KvShape, KvStore};
use crate::engine::sampler::SamplerParams;
use crate::engine::session::{Session, SessionOptions};
use crate::model::config::Config;
use crate::model::gguf::{GgmlType, GgufFile, Value, ValueType};
use crate::model::weights::{LoadError, Weights};
use crate::testkit::gguf::{array_of, GgufBuilder};
use crate::text::tokenizer::Tokenizer;

/// A fuzz target's harness: the function its cargo-fuzz binary calls with the raw input.
pub type Harness = fn(&[u8]);

/// Every fuzz target, by its name (`fuzz/fuzz_targets/NAME.rs`, the `[[bin]]` of that name in
/// `fuzz/Cargo.toml`), with the harness it runs: the one list of them. `tests/fuzz_regressions.rs`
/// replays every target's kept inputs through it and fails when `fuzz/fuzz_targets/` or
/// `fuzz/Cargo.toml` names a target it does not (or the reverse); `fuzz/seed.sh` and `.ci/run`
/// take the targets from `fuzz/`.
pub const TARGETS: [(&str, Harness); 7] = [
    ("kv_cache_ops", kv_cache_ops),
    ("safetensors_load", safetensors_load),
    ("config_parse", config_parse),
    ("gguf_read", gguf_read),
    ("gguf_model", gguf_model),
    ("tokenizer_roundtrip", tokenizer_roundtrip_bytes),
    ("constraint_compile", constraint_compile_bytes),
];

/// The `constraint_compile` fuzz target's input through [`constraint_compile`] (its outcome
/// is for the seeded tests; the harness asserts the contract itself).
pub fn constraint_compile_bytes(data: &[u8]) {
    constraint_compile(data);
}

/// The repository's `tests/fixtures` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
