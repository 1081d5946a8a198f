//! qwenrt: a CPU runtime for Qwen2-family language models.
//!
//! Overview:
//! - [`config::Config`]: config.json, classic and newer hub styles, validated.
//! - [`weights::Weights`]: the memory-mapped safetensors (single file or sharded), every tensor
//!   checked against the config before anything runs. Immutable and shared between sessions.
//! - [`session::Session`]: the mutable side: one arena (KV cache, activations, logits, sampler
//!   buffers) allocated once, a thread pool, and the forward pass.
//! - [`kv_cache::KvCache`]: the fixed KV cache that never grows.
//! - [`sampler::Sampler`]: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded RNG.
#![deny(unsafe_code)]

pub mod arc;
pub mod arena;
pub mod batch;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod config;
pub mod convert;
pub mod engine;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
pub mod kv_cache;
pub mod sampler;
pub mod session;
pub mod testing;
pub mod tokenizer;
pub mod weights;
pub mod workload;
