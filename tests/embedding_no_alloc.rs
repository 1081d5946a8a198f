//! Proof that steps computing embeddings allocate nothing: a counting global allocator, armed
//! after a warm-up, over 200 steps of the tiny Qwen3 fixture in which one sequence decodes
//! with logits and sampling while others prefill inputs in chunks and take their embeddings
//! (`Want::Embedding`, read with `Engine::embedding`), 2 threads, every ISA.
//! This test binary holds only this test, so no other test's allocations are counted.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::{Engine, EngineOptions, Feed, Numerics, Want, Weights};
use qwenrt_kernels::Isa;

#[path = "support/counting_alloc.rs"]
mod counting;

#[test]
fn embedding_steps_allocate_nothing() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3-f32-tied");
    let w = Arc::new(Weights::load(&dir).unwrap());
    let inputs: [Vec<u32>; 3] = [(1..=11).collect(), vec![42], (100..137).collect()];
    for isa in Isa::available() {
        let opts = EngineOptions {
            ctx: 256,
            max_sequences: 4,
            max_batch_tokens: 32,
            threads: 2,
            isa: Some(isa),
            ..EngineOptions::default()
        };
        let mut e = Engine::new(w.clone(), &opts).unwrap();
        let gen = e.create_sequence(SamplerParams::default()).unwrap();
        let embedders = [
            e.create_sequence(SamplerParams::greedy()).unwrap(),
            e.create_sequence(SamplerParams::greedy()).unwrap(),
        ];
        let first = [5u32, 6, 7];
        e.step(
            &[Feed {
                seq: gen,
                tokens: &first,
                numerics: Numerics::Prefill,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
        // per embedding sequence: which input it embeds and how much of it is fed
        let mut job = [(0usize, 0usize), (1, 0)];
        let mut next = [0u32; 1];
        let mut sum = 0f32;
        let mut done = 0;
        for step in 0..250 {
            if step == 50 {
                counting::arm();
            }
            next[0] = e.sample(gen).unwrap();
            if e.position(gen).unwrap() + 1 >= e.ctx() {
                e.reset(gen).unwrap();
            }
            let mut feeds = [Feed {
                seq: gen,
                tokens: &next,
                numerics: Numerics::Decode,
                logits: Want::Last,
            }; 3];
            for (k, &(input, fed)) in job.iter().enumerate() {
                let tokens = &inputs[input];
                let n = (tokens.len() - fed).min(8);
                feeds[k + 1] = Feed {
                    seq: embedders[k],
                    tokens: &tokens[fed..fed + n],
                    numerics: Numerics::Prefill,
                    logits: if fed + n == tokens.len() {
                        Want::Embedding
                    } else {
                        Want::None
                    },
                };
            }
            e.step(&feeds, &mut |_, _, _| {}).unwrap();
            for k in 0..2 {
                let (input, fed) = job[k];
                let n = (inputs[input].len() - fed).min(8);
                if fed + n < inputs[input].len() {
                    job[k].1 += n;
                    continue;
                }
                sum += e.embedding(embedders[k]).unwrap()[0];
                done += 1;
                e.reset(embedders[k]).unwrap();
                job[k] = ((input + 1) % inputs.len(), 0);
            }
        }
        counting::disarm();
        assert!(sum.is_finite() && done > 50, "isa {isa}: {done} embeddings");
        assert_eq!(
            counting::calls(),
            0,
            "isa {isa}: {} allocations ({} bytes) in steps with embeddings",
            counting::calls(),
            counting::BYTES.load(Ordering::SeqCst)
        );
    }
}
