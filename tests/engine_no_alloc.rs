//! Proof that the engine's batched steps allocate nothing: a counting global allocator, armed
//! after a warm-up, over 300 steps of 4 sequences that mix a prefill chunk with decode rows,
//! with 2 threads, non-greedy sampling, and sequences reset and refilled along the way; on a
//! bf16 model and on a Q4_0 GGUF (its quantized and repacked kernels), each with an f32 and a
//! 16-bit KV cache (bf16, f16), every ISA.
//! This test binary holds only this test, so no other test's allocations are counted.

use std::sync::Arc;

use qwenrt::engine::{Engine, EngineOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/counting_alloc.rs"]
mod counting;

/// Every projection goes through the pool (k/v are 128 x 256: above the kernels' serial
/// threshold even for one row) and a 16-row prefill chunk takes the tiled attention path.
const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 1024,
    hidden: 256,
    ffn: 512,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 2048,
    tied: false,
};
#[path = "support/step_driver.rs"]
mod step_driver;
use step_driver::*;

#[test]
fn batched_steps_allocate_nothing() {
    let dir = std::env::temp_dir().join(format!("qwenrt-engine-noalloc-{}", std::process::id()));
    write_synthetic_model(&dir, SHAPE, Dtype::BF16, 5).unwrap();
    let bf16 = Arc::new(Weights::load(&dir).unwrap());
    check(bf16.clone(), "bf16", Dtype::F32);
    // a 16-bit KV cache: rows rounded as they are written, attention reading bf16
    check(bf16, "bf16", Dtype::BF16);
    std::fs::remove_dir_all(&dir).ok();
    // the same shape as a Q4_0 GGUF run from its blocks (and, on AVX-512, from the decode
    // layout it is repacked into): the quantized matvecs, matmul and input quantization
    write_synthetic_model(&dir, SHAPE, Dtype::F32, 5).unwrap();
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let gguf = qwenrt::testkit::gguf::quantized_gguf_from_hf(
        &config,
        &st,
        qwenrt::model::gguf::GgmlType::Q4_0,
    );
    let mut q = Weights::from_gguf_bytes(gguf).unwrap();
    assert!(
        q.matrix_formats().starts_with("Q4_0"),
        "{}",
        q.matrix_formats()
    );
    assert!(q.repack_for_decode() > 0);
    let q = Arc::new(q);
    check(q.clone(), "Q4_0 GGUF", Dtype::F32);
    check(q, "Q4_0 GGUF", Dtype::F16);
    std::fs::remove_dir_all(&dir).ok();
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
        prove_steps_allocate_nothing::<1024>(&mut e, &label);
    }
}
