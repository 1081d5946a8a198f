//! Proof that the decode loop allocates nothing: a counting global allocator, armed after a
//! warm-up, over hundreds of decode steps with 2 threads and non-greedy sampling, then over
//! hundreds of greedy prompt-lookup steps (draft, verify, truncate); with an f32 and a bf16 KV
//! cache, every ISA.
//! This test binary holds only this test, so no other test's allocations are counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use qwenrt::engine::sampler::{LogitBias, SamplerParams};
use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/counting_alloc.rs"]
mod counting;
use counting::*;

#[test]
fn decode_loop_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("qwenrt-noalloc-{}", std::process::id()));
    // bf16 weights, the production dtype; 2048 positions so one generation runs 300 steps
    write_synthetic_model(&dir, SyntheticShape::SMALL, Dtype::BF16, 7).unwrap();
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let runs = Isa::available()
        .into_iter()
        .flat_map(|isa| [Dtype::F32, Dtype::BF16].map(move |kv| (isa, kv)));
    for (isa_only, kv_dtype) in runs {
        let opts = SessionOptions {
            ctx: 1024,
            max_chunk: 64,
            threads: 2,
            isa: Some(isa_only),
            prefill_bf16: true,
            kv_dtype,
        };
        // (the messages below name the ISA and the KV cache's type)
        let isa = format!("{isa_only}, {kv_dtype} KV cache");
        let mut session = Session::new(weights.clone(), &opts).unwrap();
        let params = SamplerParams {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.9,
            min_p: 0.02,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            frequency_penalty: 0.3,
            presence_penalty: 0.2,
            seed: 1234,
            // a logit bias (a boost and a ban) is applied in the counted steps too
            logit_bias: LogitBias::new(&[(3, 5.0), (7, -100.0)]).unwrap(),
        };
        session.set_sampler(params).unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 % 500) as u32).collect();
        let mut out: Vec<u32> = Vec::with_capacity(1024);
        let stop = [u32::MAX];

        // warm-up: the first pass may touch lazily initialised state (thread start-up, etc.)
        session.prefill(&prompt).unwrap();
        session.generate(8, &stop, &mut |_| true).unwrap();
        session.reset();
        session.prefill(&prompt).unwrap();

        ALLOCS.store(0, Ordering::SeqCst);
        REALLOCS.store(0, Ordering::SeqCst);
        ZEROED.store(0, Ordering::SeqCst);
        arm();
        let stats = session
            .generate(300, &stop, &mut |t| {
                out.push(t);
                true
            })
            .unwrap();
        disarm();

        assert_eq!(stats.steps, 299, "isa {isa}: expected 299 decode steps");
        assert_eq!(out.len(), 300);
        let distinct = {
            let mut v = out.clone();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        assert!(
            distinct > 10,
            "isa {isa}: sampling looks degenerate ({distinct} distinct tokens)"
        );
        let (a, r, z) = (
            ALLOCS.load(Ordering::SeqCst),
            REALLOCS.load(Ordering::SeqCst),
            ZEROED.load(Ordering::SeqCst),
        );
        assert_eq!(
            (a, r, z),
            (0, 0, 0),
            "isa {isa}: allocations during decode (alloc, realloc, alloc_zeroed)"
        );

        // Prompt-lookup decoding: drafting, verifying and truncating past rejected rows.
        let repeating: Vec<u32> = (0..60).map(|i| [21, 22, 23, 24, 25][i % 5]).collect();
        session.set_sampler(SamplerParams::greedy()).unwrap();
        session.set_lookup(8);
        session.reset();
        session.prefill(&repeating).unwrap();
        session.generate(16, &stop, &mut |_| true).unwrap();
        session.reset();
        session.prefill(&repeating).unwrap();
        out.clear();
        ALLOCS.store(0, Ordering::SeqCst);
        REALLOCS.store(0, Ordering::SeqCst);
        ZEROED.store(0, Ordering::SeqCst);
        arm();
        let stats = session
            .generate(900, &stop, &mut |t| {
                out.push(t);
                true
            })
            .unwrap();
        disarm();
        session.set_lookup(0);
        assert!(
            stats.steps >= 256 && stats.drafted > 0 && stats.accepted > 0,
            "isa {isa}: lookup run too small: {} steps, {} drafted, {} accepted",
            stats.steps,
            stats.drafted,
            stats.accepted
        );
        let counts = (
            ALLOCS.load(Ordering::SeqCst),
            REALLOCS.load(Ordering::SeqCst),
            ZEROED.load(Ordering::SeqCst),
        );
        assert_eq!(
            counts,
            (0, 0, 0),
            "isa {isa}: allocations during lookup decoding (alloc, realloc, alloc_zeroed)"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
