//! qwenrt: a CPU runtime for Qwen2, Qwen3 and Qwen3-MoE language models.
//!
//! The crate is an engine to embed: load a model, plan all working memory once, and step many
//! sequences through the model together.
//!
//! - [`model`]: what a model is made of. [`model::config::Config`] (config.json, both hub
//!   styles, the architecture and, for Qwen3-MoE, the experts, validated), [`model::weights::Weights`] (memory-mapped safetensors, one file or
//!   sharded, every tensor checked against the config; each tensor in its own format:
//!   bf16, f16 or f32), [`model::gguf`] (a validating GGUF reader and ggml-exact
//!   dequantization), [`model::convert`] (GGUF to a Hugging Face directory) and
//!   [`model::synthetic`] (seeded random models of any shape, for benchmarks and tests),
//!   [`model::synth`] (random-weight GGUFs of real Qwen shapes in llama.cpp's tensor types).
//! - [`engine`]: the mutable side. [`Engine`] holds the shared [`Weights`], one thread pool
//!   and one arena sized at startup for `max_sequences x ctx` positions of KV cache plus the
//!   scratch of one step; [`Engine::step`] runs [`Feed`]s of many sequences ([`SeqId`]) at
//!   once, each weight matrix streamed once per step. [`Session`] is one sequence over its
//!   own engine, for the simple case. [`engine::kv_cache::KvCache`] is the fixed cache that
//!   never grows; [`engine::sampler::Sampler`] is greedy, temperature, top-k, top-p, min-p,
//!   repetition penalty and OpenAI's frequency and presence penalties with a seeded RNG.
//! - [`text`]: [`text::tokenizer::Tokenizer`] (the model's tokenizer.json, special tokens,
//!   a UTF-8-safe streaming decoder) and [`text::chat`] (the ChatML template and
//!   [`text::chat::stop_ids`], the tokens that end a turn).
//!
//! The crate needs no async runtime, HTTP stack or archive reader: the HTTP server is the
//! `qwenrt-server` crate, and the command line with its model hub, workloads and load
//! generator is `qwenrt-cli` (the `qwenrt` executable).
//!
//! ```no_run
//! use std::sync::Arc;
//! use qwenrt::{Engine, EngineOptions, Feed, Numerics, SamplerParams, Want, Weights};
//!
//! let weights = Arc::new(Weights::load("model-dir".as_ref())?);
//! let opts = EngineOptions { max_sequences: 2, ..EngineOptions::default() };
//! let mut engine = Engine::new(weights, &opts)?;
//! let seq = engine.create_sequence(SamplerParams::greedy())?;
//! let prompt = [9707u32, 11, 1879];
//! let feed = Feed { seq, tokens: &prompt, numerics: Numerics::Prefill, logits: Want::Last };
//! engine.step(&[feed], &mut |_, _, _| {})?;
//! let next = engine.sample(seq)?;
//! # let _ = next;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Test-only code (fuzz harnesses, the GGUF builder) is in `qwenrt::testkit`, behind the
//! `testkit` feature.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod engine;
pub mod model;
// test-only: fuzz inputs and builders, not the embedding API (the items say what they do)
#[cfg(any(test, feature = "testkit"))]
#[allow(missing_docs)]
pub mod testkit;
pub mod text;

pub use engine::sampler::{Sampler, SamplerParams};
pub use engine::session::{Session, SessionOptions};
pub use engine::{Engine, EngineError, EngineOptions, Feed, Numerics, SeqId, Want};
pub use model::config::Config;
pub use model::weights::Weights;
pub use text::tokenizer::Tokenizer;
