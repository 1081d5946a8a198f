//! Proof that batched steps of a Qwen3-MoE model allocate nothing: the router, the top-k, the
//! rows gathered per expert and the experts' outputs all live in the arena. A counting global
//! allocator, armed after a warm-up, over 300 steps of 4 sequences that mix a prefill chunk with
//! decode rows, with 2 threads, non-greedy sampling, and sequences reset and refilled along the
//! way; on the tiny MoE fixture (bf16, 8 experts, top-2, a dense layer between two sparse ones)
//! and on its Q8_0 GGUF (stacked experts, Q8_0 gate/up beside F32 down), each with an f32 and a
//! 16-bit KV cache, every ISA. This test binary holds only this test.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, SeqId};
use qwenrt::model::gguf::GgmlType;
use qwenrt::model::weights::Weights;
use qwenrt::testkit::gguf::quantized_gguf_from_hf;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/counting_alloc.rs"]
mod counting;
use counting::*;

#[path = "support/step_driver.rs"]
mod step_driver;
use step_driver::*;

/// The fixture's vocabulary.
const VOCAB: usize = 512;

#[test]
fn moe_batched_steps_allocate_nothing() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3-moe-bf16");
    let bf16 = Arc::new(Weights::load(&dir).unwrap());
    assert!(bf16.config.moe.is_some());
    check(bf16.clone(), "MoE bf16", Dtype::F32);
    check(bf16, "MoE bf16", Dtype::BF16);
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut q =
        Weights::from_gguf_bytes(quantized_gguf_from_hf(&config, &st, GgmlType::Q8_0)).unwrap();
    assert!(
        q.matrix_formats().starts_with("Q8_0"),
        "{}",
        q.matrix_formats()
    );
    assert!(q.repack_for_decode() > 0);
    let q = Arc::new(q);
    check(q.clone(), "MoE Q8_0 GGUF", Dtype::F32);
    check(q, "MoE Q8_0 GGUF", Dtype::F16);
}

fn check(weights: Arc<Weights>, what: &str, kv_dtype: Dtype) {
    for isa in Isa::available() {
        let label = format!("{what}, {kv_dtype} KV cache, {isa}");
        let opts = EngineOptions {
            ctx: 256,
            max_sequences: SEQS,
            max_batch_tokens: CHUNK + SEQS,
            threads: 2,
            isa: Some(isa),
            prefill_bf16: true,
            kv_dtype,
        };
        let mut e = Engine::new(weights.clone(), &opts).unwrap();
        assert_eq!(e.kv_dtype(), kv_dtype);
        // (the messages below name the model and the ISA)
        let isa = &label;
        let params = |seed| SamplerParams {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.9,
            min_p: 0.02,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            frequency_penalty: 0.3,
            presence_penalty: 0.2,
            seed,
        };
        let seqs: [SeqId; SEQS] =
            std::array::from_fn(|i| e.create_sequence(params(i as u64)).unwrap());
        let mut d = Driver {
            seqs,
            prompt: std::array::from_fn(|t| ((t * 37 + 11) % VOCAB) as u32),
            // staggered: the sequences reach their prompts' ends at different steps
            fed: [0, PROMPT - CHUNK, PROMPT - 2 * CHUNK, 0],
            last: [0; SEQS],
            steps: 0,
            prefill_rows: 0,
            decode_rows: 0,
            refills: 0,
            distinct: [false; VOCAB],
        };
        // warm-up: the first steps may touch lazily initialised state (thread start-up)
        for _ in 0..20 {
            d.step(&mut e);
        }
        let (steps0, prefill0, decode0, refills0) =
            (d.steps, d.prefill_rows, d.decode_rows, d.refills);

        ALLOCS.store(0, Ordering::SeqCst);
        REALLOCS.store(0, Ordering::SeqCst);
        ZEROED.store(0, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        for _ in 0..300 {
            d.step(&mut e);
        }
        ARMED.store(false, Ordering::SeqCst);

        let (a, r, z) = (
            ALLOCS.load(Ordering::SeqCst),
            REALLOCS.load(Ordering::SeqCst),
            ZEROED.load(Ordering::SeqCst),
        );
        let (prefill, decode, refills) = (
            d.prefill_rows - prefill0,
            d.decode_rows - decode0,
            d.refills - refills0,
        );
        println!(
            "isa {isa}: {} steps, {prefill} prefill rows, {decode} decode rows, {refills} refills",
            d.steps - steps0
        );
        assert!(
            prefill >= 300,
            "isa {isa}: too little prefill ({prefill} rows)"
        );
        assert!(
            decode >= 600,
            "isa {isa}: too little decode ({decode} rows)"
        );
        assert!(
            refills >= 8,
            "isa {isa}: sequences were not reset and refilled ({refills})"
        );
        let distinct = d.distinct.iter().filter(|&&s| s).count();
        assert!(
            distinct > 50,
            "isa {isa}: sampling looks degenerate ({distinct} distinct tokens)"
        );
        assert_eq!(
            (a, r, z),
            (0, 0, 0),
            "isa {isa}: allocations during batched steps (alloc, realloc, alloc_zeroed)"
        );
    }
}
