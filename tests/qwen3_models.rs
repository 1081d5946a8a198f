//! Qwen3 and Qwen3-MoE held to transformers on the tiny random fixtures (`tiny-qwen3-f32-tied`:
//! dense, head_dim 32 with hidden 64, q/k norms, tied head; `tiny-qwen3-moe-bf16`: 8 experts,
//! top-2, layer 1 a dense MLP, one tensor per expert as the hub stores them): logits at every
//! position through prefill and through token-by-token decode, and the 16 greedy tokens, under
//! every ISA this CPU can run, with one and two threads; from the Hugging Face directory and
//! from GGUF files in llama.cpp's naming (F32, and Q8_0 against the same blocks dequantized).
//! Then what a bad config or file gets: an error naming what is wrong.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
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
    assert!(w
        .layers
        .iter()
        .all(|l| l.q_norm.is_some() && l.q_bias.is_none()));
    check_against_transformers(&w, &expected(DENSE), DENSE, TOL_F32);
}

#[test]
fn qwen3_moe_matches_transformers() {
    let w = load(MOE);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Qwen3Moe);
    let m = c.moe.as_ref().unwrap();
    assert_eq!(
        (m.num_experts, m.experts_per_tok, m.norm_topk_prob),
        (8, 2, true)
    );
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

/// Both fixtures as F32 GGUF files in llama.cpp's naming (`qwen3.*` / `qwen3moe.*` keys,
/// `attn_q_norm`, `ffn_gate_inp`, stacked `ffn_*_exps`): the same numbers as the directories,
/// so the same tolerances against transformers.
#[test]
fn f32_gguf_matches_transformers() {
    for (name, tol) in [(DENSE, TOL_F32), (MOE, TOL_BF16)] {
        let (config, st) = files(name);
        let gguf = quantized_gguf_from_hf(&config, &st, GgmlType::F32);
        let header = GgufFile::from_bytes(gguf.clone()).unwrap().header;
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"blk.0.attn_q_norm.weight"), "{names:?}");
        let w = Arc::new(Weights::from_gguf_bytes(gguf).unwrap());
        let hf = Config::from_json(&config).unwrap();
        let c = &w.config;
        assert_eq!(
            (c.arch, c.head_dim, c.q_dim(), &c.moe, c.tie_word_embeddings),
            (
                hf.arch,
                hf.head_dim,
                hf.q_dim(),
                &hf.moe,
                hf.tie_word_embeddings
            ),
            "{name}: the config the GGUF metadata gives"
        );
        assert_eq!(w.matrix_formats(), "F32");
        if name == MOE {
            assert!(names.contains(&"blk.2.ffn_down_exps.weight"), "{names:?}");
            assert!(names.contains(&"blk.1.ffn_down.weight"), "{names:?}");
            assert!(!names.contains(&"blk.1.ffn_gate_inp.weight"), "{names:?}");
        }
        check_against_transformers(&w, &expected(name), &format!("{name} (F32 GGUF)"), tol);
    }
}

/// The GGUF's tensors dequantized into an f32 safetensors model with the fixture's config
/// (the stacked experts keep their stacked name: the loader splits them there too).
fn dequantized_model(gguf: &[u8], config: &[u8]) -> Weights {
    let file = GgufFile::from_bytes(gguf.to_vec()).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for info in &file.header.tensors {
        let values = file.dequantize_tensor(&info.name).unwrap();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = info.row_major_shape().iter().map(|&d| d as usize).collect();
        tensors.push((hf_tensor_name(&info.name).unwrap(), bytes, shape));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, b, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    Weights::from_bytes(config, safetensors::serialize(views, None).unwrap()).unwrap()
}

/// Both fixtures as Q8_0 GGUF files (every matrix whose rows are whole blocks of 32; the
/// experts' down projections, 48 wide, stay F32 beside their Q8_0 gate and up), run from their
/// blocks: against the same blocks dequantized into an f32 model with the Qwen2 GGUF test's
/// bounds (scalar: 1e-4; SIMD, whose activations are quantized to 8 bits: 0.1), on every ISA,
/// 1 and 2 threads, prefill and decode; and close to transformers' logits.
#[test]
fn q8_0_gguf_runs_from_its_blocks() {
    for name in [DENSE, MOE] {
        let (config, st) = files(name);
        let gguf = quantized_gguf_from_hf(&config, &st, GgmlType::Q8_0);
        let mut q = Weights::from_gguf_bytes(gguf.clone()).unwrap();
        // as loading a GGUF does on AVX-512: each expert's slice repacked on its own
        assert!(q.repack_for_decode() > 0);
        let q = Arc::new(q);
        let formats = q.matrix_formats();
        assert!(formats.starts_with("Q8_0"), "{name}: {formats}");
        if name == MOE {
            let Mlp::Moe { experts, .. } = &q.layers[0].mlp else {
                panic!("layer 0 of {name} is sparse")
            };
            assert_eq!(experts[5].gate_proj.format, Format::Quant(QuantType::Q8_0));
            assert_eq!(experts[5].down_proj.format.to_string(), "F32");
        }
        let f = Arc::new(dequantized_model(&gguf, &config));
        let exp = expected(name);
        let mut worst_vs_transformers = 0f32;
        for isa in Isa::available() {
            let tol = if isa == Isa::Scalar { 1e-4 } else { 0.1 };
            for threads in [1, 2] {
                let (mut sq, mut sf) = (session(&q, isa, threads), session(&f, isa, threads));
                for (ci, case) in exp.cases.iter().enumerate() {
                    for decode in [false, true] {
                        let a = all_logits(&mut sq, &case.input_ids, decode);
                        let b = all_logits(&mut sf, &case.input_ids, decode);
                        for (pos, (a, b)) in a.iter().zip(&b).enumerate() {
                            let d = max_abs_diff(a, b);
                            assert!(
                                d <= tol,
                                "{name} Q8_0 isa={isa} threads={threads} case {ci} pos {pos} \
                                 decode={decode}: {d} > {tol}"
                            );
                            let t = max_abs_diff(a, &case.logits[pos]);
                            worst_vs_transformers = worst_vs_transformers.max(t);
                        }
                    }
                }
            }
        }
        println!("{name} Q8_0: worst |logit - transformers'| {worst_vs_transformers}");
        assert!(
            worst_vs_transformers < 0.25,
            "{name} Q8_0 strays {worst_vs_transformers} from transformers"
        );
    }
}

/// A sequence's logits do not depend on which others share its step: four sequences of the MoE
/// model stepped together (two of them joining late, their prompts prefilled in one step beside
/// the others' decode rows, so experts run over rows of several sequences at once) give each
/// one's logits and greedy tokens alone, on every ISA; from bf16 weights and from the Q8_0 GGUF.
#[test]
fn moe_sequences_stepped_together_match_each_alone() {
    use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
    const STEPS: usize = 40;
    const LATE: usize = 3;
    const TOL: f32 = 1e-5;
    fn feed(seq: SeqId, tokens: &[u32], numerics: Numerics) -> Feed<'_> {
        Feed {
            seq,
            tokens,
            numerics,
            logits: Want::Last,
        }
    }
    let (config, st) = files(MOE);
    let q8 = Weights::from_gguf_bytes(quantized_gguf_from_hf(&config, &st, GgmlType::Q8_0));
    let models = [("bf16", load(MOE)), ("Q8_0 GGUF", Arc::new(q8.unwrap()))];
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            (0..5 + 7 * i)
                .map(|t| ((t * 131 + i * 17 + 3) % 512) as u32)
                .collect()
        })
        .collect();
    let engine = |w: &Arc<Weights>, isa: Isa, sequences: usize, prefill_bf16: bool| {
        let opts = EngineOptions {
            ctx: 128,
            max_sequences: sequences,
            max_batch_tokens: 64,
            threads: 2,
            isa: Some(isa),
            prefill_bf16,
            ..Default::default()
        };
        Engine::new(w.clone(), &opts).unwrap()
    };
    for (what, w) in &models {
        for (isa, prefill_bf16) in Isa::available()
            .into_iter()
            .flat_map(|i| [(i, false), (i, true)])
        {
            let what = format!("{what} (prefill_bf16 {prefill_bf16})");
            // each alone: logits after its prompt and after each greedy token
            let alone: Vec<(Vec<Vec<f32>>, Vec<u32>)> = prompts
                .iter()
                .map(|p| {
                    let mut e = engine(w, isa, 1, prefill_bf16);
                    let s = e.create_sequence(SamplerParams::greedy()).unwrap();
                    e.step(&[feed(s, p, Numerics::Prefill)], &mut |_, _, _| {})
                        .unwrap();
                    let (mut logits, mut tokens) = (Vec::new(), Vec::new());
                    for _ in 0..STEPS {
                        logits.push(e.logits(s).unwrap().to_vec());
                        let t = e.sample(s).unwrap();
                        tokens.push(t);
                        e.step(&[feed(s, &[t], Numerics::Decode)], &mut |_, _, _| {})
                            .unwrap();
                    }
                    (logits, tokens)
                })
                .collect();
            let mut e = engine(w, isa, 4, prefill_bf16);
            let seqs: Vec<SeqId> = (0..4)
                .map(|_| e.create_sequence(SamplerParams::greedy()).unwrap())
                .collect();
            let (mut last, mut done) = ([0u32; 4], [0usize; 4]);
            for step in 0..=STEPS + LATE {
                let mut feeds = Vec::new();
                for i in 0..4 {
                    let start = if i >= 2 { LATE } else { 0 };
                    if step == start {
                        feeds.push(feed(seqs[i], &prompts[i], Numerics::Prefill));
                    } else if step > start && done[i] < STEPS {
                        feeds.push(feed(
                            seqs[i],
                            std::slice::from_ref(&last[i]),
                            Numerics::Decode,
                        ));
                    }
                }
                if feeds.is_empty() {
                    break;
                }
                let stepped: Vec<usize> = feeds.iter().map(|f| f.seq.slot()).collect();
                e.step(&feeds, &mut |_, _, _| {}).unwrap();
                for i in stepped {
                    let (logits, tokens) = &alone[i];
                    let d = max_abs_diff(e.logits(seqs[i]).unwrap(), &logits[done[i]]);
                    assert!(
                        d <= TOL,
                        "{what} isa {isa}: sequence {i} step {}: {d} from alone",
                        done[i]
                    );
                    last[i] = e.sample(seqs[i]).unwrap();
                    assert_eq!(last[i], tokens[done[i]], "{what} isa {isa}: sequence {i}");
                    done[i] += 1;
                }
            }
            assert_eq!(done, [STEPS; 4], "{what} isa {isa}");
        }
    }
}

/// The fixture's config.json with `edit` applied.
fn config_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&files(name).0).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string().into_bytes()
}

#[test]
fn bad_configs_are_refused_by_name() {
    use serde_json::json;
    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            DENSE,
            Box::new(|o| {
                o.insert("model_type".into(), json!("llama"));
            }),
            "`model_type` is \"llama\"; supported: \"qwen2\", \"qwen3\", \"qwen3_moe\"",
        ),
        (
            DENSE,
            Box::new(|o| {
                o.remove("model_type");
                o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
            }),
            "\"LlamaForCausalLM\"",
        ),
        (
            DENSE,
            Box::new(|o| {
                o.insert("architectures".into(), json!(["Qwen3MoeForCausalLM"]));
            }),
            "but model_type is \"qwen3\"",
        ),
        (
            DENSE,
            Box::new(|o| {
                o.remove("head_dim");
            }),
            "missing field `head_dim`",
        ),
        (
            DENSE,
            Box::new(|o| {
                o.insert("head_dim".into(), json!(31));
            }),
            "`head_dim` is 31",
        ),
        (
            DENSE,
            Box::new(|o| {
                o.insert("attention_bias".into(), json!(true));
            }),
            "`attention_bias` is true",
        ),
        (
            MOE,
            Box::new(|o| {
                o.insert("num_experts_per_tok".into(), json!(9));
            }),
            "`num_experts_per_tok` is 9, more than num_experts (8)",
        ),
        (
            MOE,
            Box::new(|o| {
                o.remove("num_experts");
            }),
            "missing field `num_experts`",
        ),
        (
            MOE,
            Box::new(|o| {
                o.insert("mlp_only_layers".into(), json!([3]));
            }),
            "`mlp_only_layers` lists layer 3",
        ),
        (
            MOE,
            Box::new(|o| {
                o.insert("decoder_sparse_step".into(), json!(0));
            }),
            "`decoder_sparse_step` must be greater than 0",
        ),
        (
            MOE,
            Box::new(|o| {
                o.insert("moe_intermediate_size".into(), json!(0));
            }),
            "`moe_intermediate_size` must be greater than 0",
        ),
    ];
    for (name, edit, needle) in cases {
        let config = config_with(name, edit);
        let e = Config::from_json(&config).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e:?} should say {needle:?}");
        let e = Weights::from_bytes(&config, files(name).1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(needle), "{name}: {e:?} should say {needle:?}");
    }
    // decoder_sparse_step 2: layers 1 (and those in mlp_only_layers) dense; 0 and 2 then need
    // their dense MLP tensors, which the fixture does not have
    let c = Config::from_json(&config_with(MOE, |o| {
        o.insert("decoder_sparse_step".into(), json!(2));
        o.insert("mlp_only_layers".into(), json!([]));
    }))
    .unwrap();
    assert_eq!(c.moe.as_ref().unwrap().sparse_layers, [false, true, false]);
    assert_eq!(c.max_ffn(), 176, "dense layers: intermediate_size");
    // every layer sparse: the dense width (e.g. Qwen3-30B-A3B's 6144) plans nothing
    let c = Config::from_json(&config_with(MOE, |o| {
        o.insert("mlp_only_layers".into(), json!([]));
    }))
    .unwrap();
    assert_eq!(c.max_ffn(), 48, "no dense layer: moe_intermediate_size");
}

/// The safetensors bytes of `name` without the tensor `drop`.
fn without(name: &str, drop: &str) -> Vec<u8> {
    let bytes = files(name).1;
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .names()
        .into_iter()
        .filter(|n| *n != drop)
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    assert_eq!(views.len() + 1, st.len(), "{drop} is in {name}");
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn missing_and_misshapen_tensors_are_refused_by_name() {
    for (name, drop) in [
        (DENSE, "model.layers.1.self_attn.k_norm.weight"),
        (DENSE, "model.layers.0.self_attn.q_norm.weight"),
        (MOE, "model.layers.2.mlp.experts.5.up_proj.weight"),
        (MOE, "model.layers.0.mlp.gate.weight"),
        (MOE, "model.layers.1.mlp.down_proj.weight"),
    ] {
        let e = Weights::from_bytes(&files(name).0, without(name, drop))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, format!("missing tensor `{drop}`"), "{name}");
    }

    // GGUF: an architecture qwenrt does not run, a missing stacked tensor, a stacked tensor
    // whose expert count is not the metadata's
    let (config, st) = files(MOE);
    let base = quantized_gguf_builder_from_hf(&config, &st, GgmlType::Q8_0);
    let mut b = base.clone();
    for (k, v) in &mut b.kvs {
        if k == "general.architecture" {
            *v = qwenrt::model::gguf::Value::String("llama".into());
        }
    }
    let e = Weights::from_gguf_bytes(b.build())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "general.architecture \"llama\" is not supported (supported: qwen2, qwen3, qwen3moe)"
        ),
        "{e}"
    );
    let mut b = base.clone();
    b.tensors.retain(|t| t.name != "blk.2.ffn_up_exps.weight");
    let e = Weights::from_gguf_bytes(b.build())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "missing tensor `model.layers.2.mlp.experts.0.up_proj.weight`"
    );
    let mut b = base;
    for (k, v) in &mut b.kvs {
        if k == "qwen3moe.expert_count" {
            *v = qwenrt::model::gguf::Value::U32(7);
        }
    }
    let e = Weights::from_gguf_bytes(b.build())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.experts.")
            && e.contains("[8, 48, 64]")
            && e.contains("[7, 48, 64]"),
        "{e}"
    );
}
