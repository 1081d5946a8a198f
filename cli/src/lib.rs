//! What the `qwenrt` binary runs besides the engine, as a library (the commands themselves are
//! in the binary, `src/main.rs` and `src/cmd/`):
//!
//! - [`hub`]: fetching, converting and verifying the default model under `$QWENRT_HOME`.
//! - [`workload`]: the workloads of the commands: [`workload::arc`] (ARC tasks: loading,
//!   prompts, grid parsing, scoring), [`workload::batch`] (JSONL batch requests),
//!   [`workload::perplexity`], [`workload::conversation`] (multi-turn chat) and
//!   [`workload::complete`](mod@workload::complete) (one request on a session).
//! - [`loadgen`]: a closed-loop streaming load generator for OpenAI-compatible servers.
//!
//! The engine is the `qwenrt` crate and the HTTP server `qwenrt-server`; this crate is where
//! the network clients (`ureq`) and archive readers (`zip`) live, so the engine stays free of
//! them.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod hub;
pub mod loadgen;
pub mod workload;
