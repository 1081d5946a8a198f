//! The batched-step driver of the allocation proofs: four sequences with staggered prompts,
//! one prompt chunk (prefill numerics) and every decoding sequence's token (decode numerics)
//! per step, each sequence emptied and refilled when it reaches `REFILL_AT`. Included by
//! tests/engine_no_alloc.rs and tests/moe_no_alloc.rs.
#![allow(dead_code)]

use qwenrt::engine::{Engine, Feed, Numerics, SeqId, Want};

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
