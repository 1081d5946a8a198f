//! The forward pass held to transformers on the tiny random Qwen2 fixtures: logits at every
//! position through prefill and through token-by-token decode, and the 16 greedy tokens, under
//! every ISA this CPU can run (scalar, avx2, avx512), with one and two threads.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionOptions, StopReason};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::Isa;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy_16: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

fn fixture(name: &str) -> (Arc<Weights>, Expected) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let w = Weights::load(&dir).unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let exp: Expected =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (Arc::new(w), exp)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_model(name: &str, tol: f32) {
    let (w, exp) = fixture(name);
    for isa in Isa::available() {
        for threads in [1, 2] {
            // a small max_chunk makes the 37-token case run in several chunks
            let opts = SessionOptions {
                ctx: 64,
                max_chunk: 16,
                threads,
                isa: Some(isa),
                prefill_bf16: false,
                ..Default::default()
            };
            let mut s = Session::new(w.clone(), &opts).unwrap();
            let label = format!("{name} isa={isa} threads={threads}");
            for (ci, case) in exp.cases.iter().enumerate() {
                // prefill, every position
                s.reset();
                let mut worst = 0.0f32;
                let mut seen = 0;
                s.prefill_each(&case.input_ids, &mut |pos, logits| {
                    worst = worst.max(max_abs_diff(logits, &case.logits[pos]));
                    seen += 1;
                })
                .unwrap();
                assert_eq!(seen, case.input_ids.len());
                assert!(
                    worst <= tol,
                    "{label} case {ci}: prefill max |diff| {worst} > {tol}"
                );

                // token by token
                s.reset();
                for (pos, &tok) in case.input_ids.iter().enumerate() {
                    let logits = s.decode_step(tok).unwrap();
                    let d = max_abs_diff(logits, &case.logits[pos]);
                    assert!(
                        d <= tol,
                        "{label} case {ci} pos {pos}: decode max |diff| {d} > {tol}"
                    );
                }

                // greedy continuation
                s.reset();
                s.prefill(&case.input_ids).unwrap();
                s.set_sampler(SamplerParams::greedy()).unwrap();
                let mut out = Vec::new();
                let stats = s
                    .generate(16, &[], &mut |t| {
                        out.push(t);
                        true
                    })
                    .unwrap();
                assert_eq!(stats.reason, StopReason::MaxTokens);
                assert_eq!(out, case.greedy_16, "{label} case {ci}: greedy tokens");
                assert_eq!(s.position(), case.input_ids.len() + 15);
            }
        }
    }
}

#[test]
fn tiny_f32_matches_transformers() {
    check_model("tiny-qwen2-f32", 1e-4);
}

#[test]
fn tiny_bf16_tied_matches_transformers() {
    check_model("tiny-qwen2-bf16-tied", 2e-3);
}

#[test]
fn tied_model_uses_embeddings_as_head() {
    let (w, _) = fixture("tiny-qwen2-bf16-tied");
    assert!(w.tied);
    let (w, _) = fixture("tiny-qwen2-f32");
    assert!(!w.tied);
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let (w, _) = fixture("tiny-qwen2-f32");
    let mut s = Session::new(
        w,
        &SessionOptions {
            ctx: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let e = s.prefill(&[1; 9]).unwrap_err().to_string();
    assert!(
        e.contains("context full") && e.contains('9') && e.contains('8'),
        "{e}"
    );
    assert_eq!(s.position(), 0);
    let e = s.prefill(&[600]).unwrap_err().to_string();
    assert!(e.contains("600") && e.contains("512"), "{e}");
    assert!(s.prefill(&[]).is_err());
    // ctx above max_position_embeddings (256)
    let (w, _) = fixture("tiny-qwen2-f32");
    let e = Session::new(
        w,
        &SessionOptions {
            ctx: 257,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
}

#[test]
fn arena_never_moves_across_prompts() {
    let (w, exp) = fixture("tiny-qwen2-f32");
    let mut s = Session::new(
        w,
        &SessionOptions {
            ctx: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let addr = s.arena_address();
    assert_eq!(addr.1, s.memory_plan().total_bytes());
    for case in &exp.cases {
        s.reset();
        s.prefill(&case.input_ids).unwrap();
        s.set_sampler(SamplerParams::default()).unwrap();
        s.generate(10, &[], &mut |_| true).unwrap();
        assert_eq!(s.arena_address(), addr);
    }
}

/// Splits the tiny f32 model into two safetensors shards plus model.safetensors.index.json,
/// the layout the hub uses for large checkpoints, and checks it loads to the same logits.
#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    use std::collections::BTreeMap;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-f32");
    let dir = std::env::temp_dir().join(format!("qwenrt-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut weight_map = BTreeMap::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = Arc::new(Weights::load(&dir).unwrap());
    assert_eq!(sharded.files().count(), 2);
    let (single, exp) = fixture("tiny-qwen2-f32");
    let case = &exp.cases[1];
    let run = |w: Arc<Weights>| {
        let mut s = Session::new(
            w,
            &SessionOptions {
                ctx: 16,
                ..Default::default()
            },
        )
        .unwrap();
        s.prefill(&case.input_ids).unwrap().to_vec()
    };
    assert_eq!(run(sharded), run(single));
    // a shard name that leaves the model directory is refused
    let bad = serde_json::json!({"weight_map": {"model.norm.weight": "../model.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let e = Weights::load(&dir)
        .err()
        .expect("a shard outside the directory must be refused")
        .to_string();
    assert!(e.contains("not a plain file name"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// f16 weights end to end: a synthetic f16 model gives the same logits on every ISA (SIMD
/// against the scalar reference) and through prefill and decode, and they track the same model
/// written in f32 (f16 rounds each weight to 11 significant bits).
#[test]
fn f16_weights_run_on_every_isa() {
    use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
    use qwenrt_kernels::Dtype;
    let base = std::env::temp_dir().join(format!("qwenrt-f16-{}", std::process::id()));
    let load = |dtype: Dtype| {
        let dir = base.join(format!("{dtype}"));
        write_synthetic_model(&dir, SyntheticShape::SMALL, dtype, 3).unwrap();
        Arc::new(Weights::load(&dir).unwrap())
    };
    let (f16, f32) = (load(Dtype::F16), load(Dtype::F32));
    assert_eq!(f16.matrix_formats(), "F16");
    let prompt: Vec<u32> = (0..12).map(|i| (i * 41 % 500) as u32).collect();
    let run = |w: &Arc<Weights>, isa: Isa, stepwise: bool| {
        let opts = SessionOptions {
            ctx: 32,
            isa: Some(isa),
            ..Default::default()
        };
        let mut s = Session::new(w.clone(), &opts).unwrap();
        if stepwise {
            let mut last = Vec::new();
            for &t in &prompt {
                last = s.decode_step(t).unwrap().to_vec();
            }
            last
        } else {
            s.prefill(&prompt).unwrap().to_vec()
        }
    };
    let reference = run(&f16, Isa::Scalar, false);
    for isa in Isa::available() {
        for stepwise in [false, true] {
            let d = max_abs_diff(&run(&f16, isa, stepwise), &reference);
            assert!(
                d <= 1e-4,
                "f16 on {isa} (stepwise {stepwise}): max |diff| {d}"
            );
        }
    }
    let d = max_abs_diff(&run(&f32, Isa::Scalar, false), &reference);
    assert!(d > 0.0 && d < 0.05, "f16 vs f32 weights: max |diff| {d}");
    std::fs::remove_dir_all(&base).ok();
}
