//! The batched-step driver of the allocation proofs: four sequences with staggered prompts,
//! one prompt chunk (prefill numerics) and every decoding sequence's token (decode numerics)
//! per step, each sequence emptied and refilled when it reaches `REFILL_AT`. Included by
//! tests/engine_no_alloc.rs and tests/moe_no_alloc.rs.
#![allow(dead_code)]

use std::sync::atomic::Ordering;

use qwenrt::engine::sampler::LogitBias;
use qwenrt::engine::{Engine, Feed, Numerics, SeqId, Want};
use qwenrt::SamplerParams;

use crate::counting::{arm, disarm, ALLOCS, REALLOCS, ZEROED};

pub const SEQS: usize = 4;
pub const CHUNK: usize = 16;
pub const PROMPT: usize = 48;
/// A sequence that reaches this many positions is reset and prefills its prompt again.
pub const REFILL_AT: usize = 120;

/// The workload's state between steps: where each sequence is, and its last sampled token.
pub struct Driver<const V: usize> {
    pub seqs: [SeqId; SEQS],
    pub prompt: [u32; PROMPT],
    /// Prompt tokens already fed, per sequence (`PROMPT` once decoding).
    pub fed: [usize; SEQS],
    pub last: [u32; SEQS],
    pub steps: usize,
    pub prefill_rows: usize,
    pub decode_rows: usize,
    pub refills: usize,
    pub distinct: [bool; V],
}

impl<const V: usize> Driver<V> {
    /// One step: the first sequence still in its prompt contributes a chunk of it (prefill
    /// numerics), every decoding sequence its last token (decode numerics); then every
    /// sequence that finished its prompt or decoded samples its next token.
    pub fn step(&mut self, e: &mut Engine) {
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

/// Runs the driver 20 steps to warm up, then 300 steps counting allocations, over four
/// sequences of `e` (a vocabulary of `V` tokens), and checks the workload was what it claims
/// (prefill and decode rows, refills, varied samples) and allocated nothing. `label` names
/// the model and the ISA in the messages.
pub fn prove_steps_allocate_nothing<const V: usize>(e: &mut Engine, label: &str) {
    let isa = label;
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
        // a logit bias (a boost and a ban) is applied in the counted steps too
        logit_bias: LogitBias::new(&[(3, 5.0), (7, -100.0)]).unwrap(),
    };
    let seqs: [SeqId; SEQS] = std::array::from_fn(|i| e.create_sequence(params(i as u64)).unwrap());
    let mut d = Driver {
        seqs,
        prompt: std::array::from_fn(|t| ((t * 37 + 11) % V) as u32),
        // staggered: the sequences reach their prompts' ends at different steps
        fed: [0, PROMPT - CHUNK, PROMPT - 2 * CHUNK, 0],
        last: [0; SEQS],
        steps: 0,
        prefill_rows: 0,
        decode_rows: 0,
        refills: 0,
        distinct: [false; V],
    };
    // warm-up: the first steps may touch lazily initialised state (thread start-up)
    for _ in 0..20 {
        d.step(e);
    }
    let (steps0, prefill0, decode0, refills0) = (d.steps, d.prefill_rows, d.decode_rows, d.refills);

    ALLOCS.store(0, Ordering::SeqCst);
    REALLOCS.store(0, Ordering::SeqCst);
    ZEROED.store(0, Ordering::SeqCst);
    arm();
    for _ in 0..300 {
        d.step(e);
    }
    disarm();

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
