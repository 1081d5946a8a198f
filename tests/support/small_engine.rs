//! A small synthetic Qwen2 (bf16 weights, 2 layers) on a one-thread engine with three
//! sequences of 64 positions, for the engine-level tests of cache copies (fork, prompt cache).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::Weights;
use qwenrt_kernels::Dtype;

/// The model's shape.
pub const SMALL: SyntheticShape = SyntheticShape {
    vocab: 512,
    hidden: 128,
    ffn: 256,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 512,
    tied: false,
};

/// The model written with `seed` under a temporary directory named by `tag`, and loaded.
pub fn small_model(tag: &str, seed: u64) -> (PathBuf, Arc<Weights>) {
    let dir = std::env::temp_dir().join(format!("qwenrt-small-{tag}-{}", std::process::id()));
    write_synthetic_model(&dir, SMALL, Dtype::BF16, seed).unwrap();
    let w = Arc::new(Weights::load(&dir).unwrap());
    (dir, w)
}

/// An engine over `w` with a KV cache of `kv_dtype`.
pub fn engine(w: &Arc<Weights>, kv_dtype: Dtype) -> Engine {
    let opts = EngineOptions {
        ctx: 64,
        max_sequences: 3,
        max_batch_tokens: 64,
        threads: 1,
        kv_dtype,
        ..Default::default()
    };
    Engine::new(w.clone(), &opts).unwrap()
}

/// Prefills `tokens` into `seq` in one step, wanting the last row's logits.
pub fn prefill(e: &mut Engine, seq: SeqId, tokens: &[u32]) {
    let feed = Feed {
        seq,
        tokens,
        numerics: Numerics::Prefill,
        logits: Want::Last,
    };
    e.step(&[feed], &mut |_, _, _| {}).unwrap();
}

/// The bit patterns of `l`, for exact comparisons with readable failures.
pub fn bits(l: &[f32]) -> Vec<u32> {
    l.iter().map(|x| x.to_bits()).collect()
}
