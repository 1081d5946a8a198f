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
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
use qwenrt::model::gguf::GgmlType;
use qwenrt::model::weights::Weights;
use qwenrt::testkit::gguf::quantized_gguf_from_hf;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/counting_alloc.rs"]
mod counting;
use counting::*;

const SEQS: usize = 4;
const CHUNK: usize = 16;
const PROMPT: usize = 48;
/// A sequence that reaches this many positions is reset and prefills its prompt again.
const REFILL_AT: usize = 120;

/// The workload's state between steps: where each sequence is, and its last sampled token.
struct Driver {
    seqs: [SeqId; SEQS],
    prompt: [u32; PROMPT],
    /// Prompt tokens already fed, per sequence (`PROMPT` once decoding).
    fed: [usize; SEQS],
    last: [u32; SEQS],
    steps: usize,
    prefill_rows: usize,
    decode_rows: usize,
    refills: usize,
    distinct: [bool; VOCAB],
}

impl Driver {
    /// One step: the first sequence still in its prompt contributes a chunk of it (prefill
    /// numerics), every decoding sequence its last token (decode numerics); then every
    /// sequence that finished its prompt or decoded samples its next token.
    fn step(&mut self, e: &mut Engine) {
        let mut feeds = [Feed {
            seq: self.seqs[0],
            tokens: &[],
            numerics: Numerics::Decode,
            logits: Want::None,
        }; SEQS];
        let mut n = 0;
        let mut prefilling = None;
        for i in 0..SEQS {
            if self.fed[i] < PROMPT {
                if prefilling.is_some() {
                    continue;
                }
                let end = (self.fed[i] + CHUNK).min(PROMPT);
                feeds[n] = Feed {
                    seq: self.seqs[i],
                    tokens: &self.prompt[self.fed[i]..end],
                    numerics: Numerics::Prefill,
                    logits: if end == PROMPT {
                        Want::Last
                    } else {
                        Want::None
                    },
                };
                prefilling = Some((i, end));
                self.prefill_rows += end - self.fed[i];
            } else {
                feeds[n] = Feed {
                    seq: self.seqs[i],
                    tokens: std::slice::from_ref(&self.last[i]),
                    numerics: Numerics::Decode,
                    logits: Want::Last,
                };
                self.decode_rows += 1;
            }
            n += 1;
        }
        e.step(&feeds[..n], &mut |_, _, _| {}).unwrap();
        self.steps += 1;
        if let Some((i, end)) = prefilling {
            self.fed[i] = end;
            if end < PROMPT {
                // still prefilling: no logits to sample from yet
                self.sample_decoders(e, Some(i));
                return;
            }
        }
        self.sample_decoders(e, None);
    }

    fn sample_decoders(&mut self, e: &mut Engine, skip: Option<usize>) {
        for i in 0..SEQS {
            if Some(i) == skip || self.fed[i] < PROMPT {
                continue;
            }
            let t = e.sample(self.seqs[i]).unwrap();
            self.distinct[t as usize] = true;
            self.last[i] = t;
            if e.position(self.seqs[i]).unwrap() >= REFILL_AT {
                e.reset(self.seqs[i]).unwrap();
                self.fed[i] = 0;
                self.refills += 1;
            }
        }
    }
}

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
