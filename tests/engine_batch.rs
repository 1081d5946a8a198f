//! The engine's batched steps: sequences stepped together get what each gets alone, errors
//! change nothing, and sequence slots are reused safely.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineError, EngineOptions, Feed, Numerics, SeqId, Want};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::{Dtype, Isa};

/// Big enough that every projection is split over the pool (k/v: 128 x 256 weights) and a
/// prefill chunk takes the tiled attention path; small enough for every ISA in seconds.
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

/// A sequence's logits must not depend on the other rows of its step. Decode rows go through
/// the very kernel calls of a lone decode step (bit-identical); the bound is 1e-5.
const TOL: f32 = 1e-5;
const STEPS: usize = 64;

fn model(tag: &str) -> (PathBuf, Arc<Weights>) {
    let dir = std::env::temp_dir().join(format!("qwenrt-engine-{tag}-{}", std::process::id()));
    write_synthetic_model(&dir, SHAPE, Dtype::BF16, 21).unwrap();
    let w = Arc::new(Weights::load(&dir).unwrap());
    (dir, w)
}

fn engine(w: &Arc<Weights>, isa: Isa, sequences: usize) -> Engine {
    let opts = EngineOptions {
        ctx: 256,
        max_sequences: sequences,
        max_batch_tokens: 64,
        threads: 2,
        isa: Some(isa),
        prefill_bf16: true,
        ..Default::default()
    };
    Engine::new(w.clone(), &opts).unwrap()
}

fn prompt(i: usize) -> Vec<u32> {
    (0..5 + 4 * i)
        .map(|t| ((t * 131 + i * 17 + 3) % SHAPE.vocab) as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// What one sequence produces alone: the logits after its prompt and after each of `STEPS`
/// greedy tokens, and the tokens.
fn alone(w: &Arc<Weights>, isa: Isa, p: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut e = engine(w, isa, 1);
    let s = e.create_sequence(SamplerParams::greedy()).unwrap();
    fn feed(seq: SeqId, tokens: &[u32], numerics: Numerics) -> Feed<'_> {
        Feed {
            seq,
            tokens,
            numerics,
            logits: Want::Last,
        }
    }
    e.step(&[feed(s, p, Numerics::Prefill)], &mut |_, _, _| {})
        .unwrap();
    let (mut logits, mut tokens) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        logits.push(e.logits(s).unwrap().to_vec());
        let t = e.sample(s).unwrap();
        tokens.push(t);
        let fed = [t];
        e.step(&[feed(s, &fed, Numerics::Decode)], &mut |_, _, _| {})
            .unwrap();
    }
    (logits, tokens)
}

#[test]
fn sequences_stepped_together_match_each_alone() {
    let (dir, w) = model("together");
    for isa in Isa::available() {
        let expected: Vec<_> = (0..4).map(|i| alone(&w, isa, &prompt(i))).collect();
        let mut e = engine(&w, isa, 4);
        let seqs: Vec<SeqId> = (0..4)
            .map(|_| e.create_sequence(SamplerParams::greedy()).unwrap())
            .collect();
        let prompts: Vec<Vec<u32>> = (0..4).map(prompt).collect();
        // sequence 3 joins late: its prompt is prefilled in the step where the others decode
        // their 6th token, so that step mixes a prefill chunk with decode rows
        const LATE: usize = 5;
        let mut last = [0u32; 4];
        let mut done = [0usize; 4];
        let mut worst = 0f32;
        for step in 0..=STEPS + LATE {
            let mut feeds = Vec::new();
            for i in 0..4 {
                let start = if i == 3 { LATE } else { 0 };
                if step == start {
                    feeds.push(Feed {
                        seq: seqs[i],
                        tokens: &prompts[i][..],
                        numerics: Numerics::Prefill,
                        logits: Want::Last,
                    });
                } else if step > start && done[i] < STEPS {
                    feeds.push(Feed {
                        seq: seqs[i],
                        tokens: std::slice::from_ref(&last[i]),
                        numerics: Numerics::Decode,
                        logits: Want::Last,
                    });
                }
            }
            if feeds.is_empty() {
                break;
            }
            let stepped: Vec<usize> = feeds.iter().map(|f| f.seq.slot()).collect();
            e.step(&feeds, &mut |_, _, _| {}).unwrap();
            for i in stepped {
                if done[i] == STEPS {
                    continue;
                }
                let (logits, tokens) = &expected[i];
                let d = max_abs_diff(e.logits(seqs[i]).unwrap(), &logits[done[i]]);
                assert!(
                    d <= TOL,
                    "isa {isa}: sequence {i} step {}: logits differ by {d} from alone",
                    done[i]
                );
                worst = worst.max(d);
                last[i] = e.sample(seqs[i]).unwrap();
                assert_eq!(
                    last[i], tokens[done[i]],
                    "isa {isa}: sequence {i} token {} differs from alone",
                    done[i]
                );
                done[i] += 1;
            }
        }
        assert_eq!(done, [STEPS; 4], "isa {isa}");
        for (i, s) in seqs.iter().enumerate() {
            let history = e.tokens(*s).unwrap().to_vec();
            let mut want = prompts[i].clone();
            want.extend_from_slice(&expected[i].1[..STEPS - 1]);
            assert_eq!(history, want, "isa {isa}: sequence {i}'s token history");
        }
        println!("isa {isa}: worst logit difference together vs alone: {worst:e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_refused_step_changes_nothing() {
    let (dir, w) = model("refused");
    let isa = Isa::detect();
    let mut e = engine(&w, isa, 2);
    let a = e.create_sequence(SamplerParams::greedy()).unwrap();
    let b = e.create_sequence(SamplerParams::greedy()).unwrap();
    let p = prompt(1);
    let feed = |seq, tokens| Feed {
        seq,
        tokens,
        numerics: Numerics::Prefill,
        logits: Want::Last,
    };
    e.step(&[feed(a, &p)], &mut |_, _, _| {}).unwrap();
    let before = e.logits(a).unwrap().to_vec();

    let long = vec![1u32; 65];
    let full = vec![1u32; 256 - p.len() + 1];
    let bad = [SHAPE.vocab as u32];
    let cases: [(&[Feed], &str); 5] = [
        (&[feed(a, &[2]), feed(a, &[3])], "appears twice"),
        (&[feed(b, &long)], "max_batch_tokens"),
        (
            &[feed(a, &full[..60]), feed(b, &full[..10])],
            "max_batch_tokens",
        ),
        (&[feed(b, &[4]), feed(a, &bad)], "out of range"),
        (&[feed(b, &[])], "empty input"),
    ];
    for (feeds, needle) in cases {
        let err = e.step(feeds, &mut |_, _, _| {}).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        assert_eq!(e.position(a).unwrap(), p.len(), "{needle}: a moved");
        assert_eq!(e.position(b).unwrap(), 0, "{needle}: b moved");
    }
    // context: a's cache holds p; 256 - p.len() more fit, one more does not
    let mut e2 = Engine::new(
        w.clone(),
        &EngineOptions {
            ctx: 16,
            max_sequences: 1,
            max_batch_tokens: 64,
            threads: 1,
            isa: Some(isa),
            prefill_bf16: true,
            ..Default::default()
        },
    )
    .unwrap();
    let c = e2.create_sequence(SamplerParams::greedy()).unwrap();
    let err = e2.step(&[feed(c, &full[..17])], &mut |_, _, _| {});
    assert!(matches!(
        err,
        Err(EngineError::ContextFull {
            needed: 17,
            ctx: 16
        })
    ));
    assert!(matches!(
        e2.create_sequence(SamplerParams::greedy()),
        Err(EngineError::NoFreeSequence { max: 1 })
    ));
    // a's logits survived every refusal and are those of its prompt
    assert_eq!(e.logits(a).unwrap(), &before[..]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncate_and_slot_reuse() {
    let (dir, w) = model("reuse");
    let isa = Isa::detect();
    let mut e = engine(&w, isa, 2);
    let a = e.create_sequence(SamplerParams::greedy()).unwrap();
    let p = prompt(3);
    let decode = |seq, tokens| Feed {
        seq,
        tokens,
        numerics: Numerics::Decode,
        logits: Want::Last,
    };
    e.step(&[decode(a, &p)], &mut |_, _, _| {}).unwrap();
    let full = e.logits(a).unwrap().to_vec();
    // roll back the last 4 positions (as after a rejected draft) and feed them again: the
    // same cache contents, so the same logits
    e.truncate(a, p.len() - 4).unwrap();
    assert_eq!(e.position(a).unwrap(), p.len() - 4);
    assert!(matches!(e.logits(a), Err(EngineError::NoLogits)));
    assert_eq!(e.tokens(a).unwrap(), &p[..p.len() - 4]);
    e.step(&[decode(a, &p[p.len() - 4..])], &mut |_, _, _| {})
        .unwrap();
    assert_eq!(e.logits(a).unwrap(), &full[..]);

    // a released id is refused, even once its slot is reused
    e.release(a).unwrap();
    assert!(matches!(
        e.position(a),
        Err(EngineError::UnknownSequence(_))
    ));
    let b = e.create_sequence(SamplerParams::greedy()).unwrap();
    assert_eq!(b.slot(), a.slot(), "the freed slot is reused");
    assert_ne!(a, b);
    assert!(matches!(
        e.step(&[decode(a, &p)], &mut |_, _, _| {}),
        Err(EngineError::UnknownSequence(_))
    ));
    assert_eq!(e.position(b).unwrap(), 0, "a reused slot starts empty");
    // and the reused slot computes what a fresh one does
    e.step(&[decode(b, &p)], &mut |_, _, _| {}).unwrap();
    assert_eq!(e.logits(b).unwrap(), &full[..]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn want_all_reports_every_position_of_every_feed() {
    let (dir, w) = model("all");
    let isa = Isa::detect();
    let mut e = engine(&w, isa, 2);
    let a = e.create_sequence(SamplerParams::greedy()).unwrap();
    let b = e.create_sequence(SamplerParams::greedy()).unwrap();
    let (pa, pb) = (prompt(0), prompt(2));
    let mut seen: Vec<(SeqId, usize)> = Vec::new();
    let feeds = [
        Feed {
            seq: a,
            tokens: &pa,
            numerics: Numerics::Prefill,
            logits: Want::All,
        },
        Feed {
            seq: b,
            tokens: &pb,
            numerics: Numerics::Decode,
            logits: Want::All,
        },
    ];
    e.step(&feeds, &mut |s, pos, l| {
        assert_eq!(l.len(), SHAPE.vocab);
        seen.push((s, pos));
    })
    .unwrap();
    let mut want: Vec<(SeqId, usize)> = (0..pb.len()).map(|p| (b, p)).collect();
    want.extend((0..pa.len()).map(|p| (a, p)));
    assert_eq!(
        seen, want,
        "decode feeds' rows first, each feed's positions in order"
    );
    std::fs::remove_dir_all(&dir).ok();
}
