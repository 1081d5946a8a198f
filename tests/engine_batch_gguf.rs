//! Many decode rows of the default model's GGUF (Q5_0 and Q8_0 repacked, Q4_K and Q6_K in
//! ggml's layout) stepped together give each sequence bit for bit the logits it gets alone:
//! 9 and 33 rows take the register-tiled kernels where the CPU has AVX512-VNNI (from 8 rows
//! per matrix), the logits head in groups of 8 and a remainder; every SIMD ISA this CPU has
//! (33 rows on AVX-512 only), 1 and 2 threads. A step that mixes a prompt's prefill with the decode rows keeps the decode rows'
//! bits too.
//!
//! Fetches the model on first use; never skipped.

use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::Isa;

fn gguf() -> Arc<Weights> {
    let path = qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the default model's GGUF");
    Arc::new(Weights::load(&path).unwrap())
}

fn engine(w: &Arc<Weights>, isa: Isa, threads: usize, sequences: usize) -> Engine {
    let opts = EngineOptions {
        ctx: 32,
        max_sequences: sequences,
        max_batch_tokens: 64,
        threads,
        isa: Some(isa),
        ..Default::default()
    };
    Engine::new(w.clone(), &opts).unwrap()
}

fn decode(seq: SeqId, tokens: &[u32]) -> Feed<'_> {
    Feed {
        seq,
        tokens,
        numerics: Numerics::Decode,
        logits: Want::Last,
    }
}

/// Sequence `i`'s token at step `s` (teacher-forced, so every run feeds the same tokens).
fn token(i: usize, s: usize) -> u32 {
    ((i * 7919 + s * 104_729) % 150_000) as u32 + 1
}

const STEPS: usize = 3;

/// Per sequence, per step -> per step, per sequence.
fn want_by_step(want: &[Vec<Vec<u32>>]) -> Vec<Vec<Vec<u32>>> {
    (0..STEPS)
        .map(|step| want.iter().map(|per| per[step].clone()).collect())
        .collect()
}

#[test]
fn many_decode_rows_match_each_alone() {
    let w = gguf();
    // the scalar ISA has no many-row kernel and runs this model too slowly for a test; its
    // rows' independence is tested on the synthetic models (engine_batch)
    for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
        let counts: &[usize] = if isa == Isa::Avx512 { &[9, 33] } else { &[9] };
        for threads in [1, 2] {
            for &n in counts {
                // each sequence alone, on one engine reused (reset between sequences)
                let mut alone = engine(&w, isa, threads, 1);
                let mut want: Vec<Vec<Vec<u32>>> = Vec::new();
                for i in 0..n {
                    let s = alone.create_sequence(SamplerParams::greedy()).unwrap();
                    let mut per = Vec::new();
                    for step in 0..STEPS {
                        let t = [token(i, step)];
                        alone.step(&[decode(s, &t)], &mut |_, _, _| {}).unwrap();
                        per.push(
                            alone
                                .logits(s)
                                .unwrap()
                                .iter()
                                .map(|v| v.to_bits())
                                .collect(),
                        );
                    }
                    alone.release(s).unwrap();
                    want.push(per);
                }
                let mut e = engine(&w, isa, threads, n + 1);
                let seqs: Vec<SeqId> = (0..n)
                    .map(|_| e.create_sequence(SamplerParams::greedy()).unwrap())
                    .collect();
                let late = e.create_sequence(SamplerParams::greedy()).unwrap();
                let prompt: Vec<u32> = (0..11).map(|j| token(n, j)).collect();
                for (step, want_step) in want_by_step(&want).iter().enumerate() {
                    let toks: Vec<[u32; 1]> = (0..n).map(|i| [token(i, step)]).collect();
                    let mut feeds: Vec<Feed<'_>> =
                        seqs.iter().zip(&toks).map(|(&s, t)| decode(s, t)).collect();
                    if step == 1 {
                        feeds.push(Feed {
                            seq: late,
                            tokens: &prompt,
                            numerics: Numerics::Prefill,
                            logits: Want::Last,
                        });
                    }
                    e.step(&feeds, &mut |_, _, _| {}).unwrap();
                    for (i, &s) in seqs.iter().enumerate() {
                        let got: Vec<u32> =
                            e.logits(s).unwrap().iter().map(|v| v.to_bits()).collect();
                        assert!(
                            got == want_step[i],
                            "isa {isa}, {threads} threads, {n} rows: sequence {i} step {step}: logits differ from alone"
                        );
                    }
                }
            }
        }
    }
}
