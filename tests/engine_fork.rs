//! `Engine::fork` (a sequence's cache prefix copied into another, for `n` completions of one
//! prompt) and `logit_bias` at the engine: a fork continues exactly as its source, and a bias
//! moves what every sampler mode picks.

#[path = "support/small_engine.rs"]
mod small;

use qwenrt::engine::sampler::{LogitBias, SamplerParams, MAX_LOGIT_BIAS};
use qwenrt::engine::{EngineError, Feed, Numerics, Want};
use qwenrt_kernels::Dtype;
use small::*;

const PROMPT: [u32; 11] = [3, 141, 59, 26, 5, 358, 97, 93, 238, 46, 264];

#[test]
fn a_fork_continues_bit_for_bit_as_its_source() {
    let (dir, w) = small_model("fork-bits", 7);
    for kv in [Dtype::F32, Dtype::BF16] {
        let mut e = engine(&w, kv);
        let src = e.create_sequence(SamplerParams::greedy()).unwrap();
        let dst = e.create_sequence(SamplerParams::greedy()).unwrap();
        // dst held something else before: the fork replaces it
        prefill(&mut e, dst, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        prefill(&mut e, src, &PROMPT);
        e.fork(src, dst, PROMPT.len()).unwrap();
        assert_eq!(e.position(dst).unwrap(), PROMPT.len());
        assert_eq!(e.tokens(dst).unwrap(), &PROMPT);
        let after_prompt = bits(e.logits(src).unwrap());
        assert_eq!(bits(e.logits(dst).unwrap()), after_prompt, "{kv}");
        // both decode the same tokens, in one step and then apart: the same logits, bit for bit
        let mut t = e.sample(src).unwrap();
        assert_eq!(e.sample(dst).unwrap(), t);
        for _ in 0..4 {
            let row = [t];
            let feeds = [
                Feed {
                    seq: src,
                    tokens: &row,
                    numerics: Numerics::Decode,
                    logits: Want::Last,
                },
                Feed {
                    seq: dst,
                    tokens: &row,
                    numerics: Numerics::Decode,
                    logits: Want::Last,
                },
            ];
            e.step(&feeds, &mut |_, _, _| {}).unwrap();
            assert_eq!(
                bits(e.logits(dst).unwrap()),
                bits(e.logits(src).unwrap()),
                "{kv}"
            );
            t = e.sample(src).unwrap();
            assert_eq!(e.sample(dst).unwrap(), t);
        }
        // against a sequence that was never forked: a fresh prefill of the same prompt
        let fresh = e.create_sequence(SamplerParams::greedy()).unwrap();
        prefill(&mut e, fresh, &PROMPT);
        assert_eq!(bits(e.logits(fresh).unwrap()), after_prompt, "{kv}");
        // a partial fork holds the prefix and no logits
        e.fork(src, fresh, 4).unwrap();
        assert_eq!(e.tokens(fresh).unwrap(), &PROMPT[..4]);
        assert!(matches!(e.logits(fresh), Err(EngineError::NoLogits)));
        // refused, nothing changed: past the source's length, onto itself, a released sequence
        let len = e.position(src).unwrap();
        assert!(e.fork(src, fresh, len + 1).is_err());
        assert_eq!(e.position(fresh).unwrap(), 4);
        assert!(matches!(
            e.fork(src, src, 1),
            Err(EngineError::DuplicateSequence(_))
        ));
        e.release(fresh).unwrap();
        assert!(matches!(
            e.fork(src, fresh, 1),
            Err(EngineError::UnknownSequence(_))
        ));
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn argmax(l: &[f32]) -> u32 {
    qwenrt_kernels::scalar::argmax(l) as u32
}

#[test]
fn logit_bias_moves_what_every_sampler_mode_picks() {
    let (dir, w) = small_model("fork-bias", 7);
    let mut e = engine(&w, Dtype::F32);
    let probe = e.create_sequence(SamplerParams::greedy()).unwrap();
    prefill(&mut e, probe, &PROMPT);
    let logits = e.logits(probe).unwrap().to_vec();
    let best = argmax(&logits);
    // the least likely token
    let worst = logits
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32;
    e.release(probe).unwrap();
    let sampled = SamplerParams {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: 11,
        ..Default::default()
    };
    for base in [SamplerParams::greedy(), sampled] {
        // +100 on the least likely token: it is picked (its logit then leads by ~100)
        let up = LogitBias::new(&[(worst, 100.0)]).unwrap();
        // -100 on the most likely: never picked, in any mode
        let ban = LogitBias::new(&[(best, -100.0)]).unwrap();
        for (bias, check) in [
            (up, &(|t: u32| t == worst) as &dyn Fn(u32) -> bool),
            (ban, &|t: u32| t != best),
        ] {
            let seq = e
                .create_sequence(SamplerParams {
                    logit_bias: bias,
                    ..base
                })
                .unwrap();
            for _ in 0..20 {
                e.reset(seq).unwrap();
                prefill(&mut e, seq, &PROMPT);
                let t = e.sample(seq).unwrap();
                assert!(
                    check(t),
                    "token {t} (best {best}, worst {worst}) with {bias:?}",
                    bias = bias.entries()
                );
            }
            e.release(seq).unwrap();
        }
    }
    // without a bias greedy picks the argmax (the bias is what moved it)
    let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
    prefill(&mut e, seq, &PROMPT);
    assert_eq!(e.sample(seq).unwrap(), best);
    // a bias is refused beyond its range and its limit, naming it
    assert_eq!(
        LogitBias::new(&[(1, 100.5)]).unwrap_err().name,
        "logit-bias"
    );
    assert_eq!(
        LogitBias::new(&[(1, f32::NAN)]).unwrap_err().name,
        "logit-bias"
    );
    let many: Vec<(u32, f32)> = (0..=MAX_LOGIT_BIAS as u32).map(|t| (t, 1.0)).collect();
    let err = LogitBias::new(&many).unwrap_err();
    assert!(
        err.to_string().contains(&MAX_LOGIT_BIAS.to_string()),
        "{err}"
    );
    assert!(LogitBias::new(&many[..MAX_LOGIT_BIAS]).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}
