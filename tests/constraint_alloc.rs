//! What the constrained path allocates, measured with a counting global allocator, and proof
//! that it stays with the constrained sequence: in an engine where one sequence carries a
//! JSON-schema constraint, the steps and the free sequence's samples still allocate nothing.
//! This test binary holds only this test, so no other test's allocations are counted.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qwenrt::engine::constraint::Grammars;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, Want};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::{Tokenizer, Weights};
use qwenrt_kernels::Dtype;

#[path = "support/counting_alloc.rs"]
mod counting;
use counting::*;

/// Allocations and bytes while `f` runs.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (a0, b0) = (calls(), BYTES.load(Ordering::SeqCst));
    arm();
    let r = f();
    disarm();
    (r, calls() - a0, BYTES.load(Ordering::SeqCst) - b0)
}

#[test]
fn constrained_allocations_stay_with_the_constrained_sequence() {
    let shape = SyntheticShape {
        vocab: 151936,
        hidden: 64,
        ffn: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        max_positions: 1024,
        tied: true,
    };
    let dir = std::env::temp_dir().join(format!("qwenrt-constraint-alloc-{}", std::process::id()));
    write_synthetic_model(&dir, shape, Dtype::BF16, 11).unwrap();
    let w = Arc::new(Weights::load(&dir).unwrap());
    let tok = Tokenizer::from_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json"),
    )
    .unwrap();
    let stop = qwenrt::text::chat::stop_ids(&tok, &w.config);
    let g = Grammars::new(&tok, shape.vocab, &stop).unwrap();
    let opts = EngineOptions {
        ctx: 512,
        max_sequences: 2,
        max_batch_tokens: 64,
        threads: 2,
        ..Default::default()
    };
    let mut e = Engine::new(w.clone(), &opts).unwrap();
    let free = e.create_sequence(SamplerParams::default()).unwrap();
    let held = e.create_sequence(SamplerParams::greedy()).unwrap();
    // a schema that never finishes within the test: an array of many small objects
    let schema = serde_json::json!({"type": "array", "minItems": 400, "items": {
        "type": "object", "properties": {"k": {"enum": ["ab", "cd"]}, "v": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["k", "v"], "additionalProperties": false}});
    e.set_constraint(held, Some(g.json_schema(&schema).unwrap()))
        .unwrap();
    let prompt = tok.encode("Numbers as JSON:").unwrap();
    for seq in [free, held] {
        e.step(
            &[Feed {
                seq,
                tokens: &prompt,
                numerics: Numerics::Prefill,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    let (mut free_allocs, mut step_allocs) = (0, 0);
    let (mut held_allocs, mut held_bytes, mut held_tokens) = (0, 0, 0);
    for i in 0..120 {
        let (a, n_a, _) = counted(|| e.sample(free).unwrap());
        let (b, n_b, bytes_b) = counted(|| e.sample(held).unwrap());
        let rows = [[a], [b]];
        let feeds = [
            Feed {
                seq: free,
                tokens: &rows[0],
                numerics: Numerics::Decode,
                logits: Want::Last,
            },
            Feed {
                seq: held,
                tokens: &rows[1],
                numerics: Numerics::Decode,
                logits: Want::Last,
            },
        ];
        let (_, n_step, _) = counted(|| e.step(&feeds, &mut |_, _, _| {}).unwrap());
        if i >= 20 {
            // after a warm-up (the engine's own first-step setup, llguidance's caches)
            free_allocs += n_a;
            step_allocs += n_step;
            held_allocs += n_b;
            held_bytes += bytes_b;
            held_tokens += 1;
        }
    }
    // the free sequence's samples, measured on their own
    for _ in 0..20 {
        let (_, n, _) = counted(|| e.sample(free).unwrap());
        free_allocs += n;
        let t = [0u32];
        e.step(
            &[Feed {
                seq: free,
                tokens: &t,
                numerics: Numerics::Decode,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    println!(
        "constrained sample: {:.1} allocations, {:.1} KiB per token over {held_tokens} tokens",
        held_allocs as f64 / held_tokens as f64,
        held_bytes as f64 / held_tokens as f64 / 1024.0
    );
    assert_eq!(
        step_allocs, 0,
        "steps allocated with a constrained sequence in them"
    );
    assert_eq!(free_allocs, 0, "the free sequence's samples allocated");
    assert!(
        held_allocs > 0,
        "the constrained path was expected to allocate (the mask)"
    );
    let c = e.constraint_mut(held).unwrap().unwrap();
    assert!(c.error().is_none() && !c.is_finished());
    let _ = std::fs::remove_dir_all(&dir);
}
