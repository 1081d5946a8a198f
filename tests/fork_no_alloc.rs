//! Proof that `Engine::fork` allocates nothing: a counting global allocator armed around forks
//! of a prefilled sequence into others (whole and partial, f32 and bf16 KV caches), and the
//! forks' first samples. This test binary holds only this test.

use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, Want};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::Dtype;

#[path = "support/counting_alloc.rs"]
mod counting;

const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 512,
    hidden: 128,
    ffn: 256,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 512,
    tied: false,
};

#[test]
fn forks_allocate_nothing() {
    let dir = std::env::temp_dir().join(format!("qwenrt-fork-noalloc-{}", std::process::id()));
    write_synthetic_model(&dir, SHAPE, Dtype::BF16, 3).unwrap();
    let w = Arc::new(Weights::load(&dir).unwrap());
    for kv_dtype in [Dtype::F32, Dtype::BF16] {
        let opts = EngineOptions {
            ctx: 128,
            max_sequences: 4,
            max_batch_tokens: 64,
            threads: 1,
            kv_dtype,
            ..Default::default()
        };
        let mut e = Engine::new(w.clone(), &opts).unwrap();
        let seqs: Vec<_> = (0..4)
            .map(|i| {
                e.create_sequence(SamplerParams {
                    seed: i,
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 500) as u32).collect();
        let feed = Feed {
            seq: seqs[0],
            tokens: &prompt,
            numerics: Numerics::Prefill,
            logits: Want::Last,
        };
        e.step(&[feed], &mut |_, _, _| {}).unwrap();
        counting::arm();
        let before = counting::calls();
        for round in 0..50 {
            for &dst in &seqs[1..] {
                // partial forks, then whole ones (with the logits) that are sampled at once
                e.fork(seqs[0], dst, round % prompt.len()).unwrap();
                e.fork(seqs[0], dst, prompt.len()).unwrap();
                e.sample(dst).unwrap();
            }
        }
        let calls = counting::calls() - before;
        counting::disarm();
        assert_eq!(
            calls, 0,
            "{kv_dtype} KV cache: forks allocated {calls} times"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
