//! Proof that batched steps of a Qwen3-MoE model allocate nothing: the router, the top-k, the
//! rows gathered per expert and the experts' outputs all live in the arena. A counting global
//! allocator, armed after a warm-up, over 300 steps of 4 sequences that mix a prefill chunk with
//! decode rows, with 2 threads, non-greedy sampling, and sequences reset and refilled along the
//! way; on the tiny MoE fixture (bf16, 8 experts, top-2, a dense layer between two sparse ones)
//! and on its Q8_0 GGUF (stacked experts, Q8_0 gate/up beside F32 down), each with an f32 and a
//! 16-bit KV cache, every ISA. This test binary holds only this test.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::{Engine, EngineOptions};
use qwenrt::model::gguf::GgmlType;
use qwenrt::model::weights::Weights;
use qwenrt::testkit::gguf::quantized_gguf_from_hf;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/counting_alloc.rs"]
mod counting;

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
        prove_steps_allocate_nothing::<VOCAB>(&mut e, &label);
    }
}
