//! The 16-bit KV caches (`--kv-dtype bf16|f16`) against the f32 cache on the real model
//! (Qwen2.5-Coder-0.5B-Instruct, bf16) over the golden cases
//! (`tests/fixtures/qwen2.5-coder-0.5b/golden.json`): every case's prompt and reference
//! continuation teacher-forced through prefill (logits at every position) and through decode
//! (one token per step), with f32 prefill projections so the cache is the only difference.
//! Per path and type: the largest difference from the f32 cache's logits over the f32 cache's
//! top 20 tokens at every position; the argmax equal to the f32 cache's wherever its top-1
//! minus top-2 gap is at least 0.5, and to transformers' reference wherever the reference's
//! gap is. Fetches and converts the model on first use; never skipped.

use std::sync::Arc;

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::{Dtype, Isa};

#[path = "support/golden.rs"]
mod golden_data;
use golden_data::{golden, Golden};
use qwenrt_kernels::scalar::argmax;

/// Argmax must agree wherever the top-1 minus top-2 gap is at least this.
const GAP: f32 = 0.5;
/// Worst top-20 logit error against the f32 cache, over 4 cases x ~85 positions. Measured on
/// Zen 4 (AVX-512), prefill and decode alike: bf16 0.545, f16 0.119 (mean over all top-20
/// logits: bf16 0.021, f16 0.0027; bf16 keeps 8 significant bits, f16 11). The bounds are
/// about 1.5x the worst measured, tight enough that a rounding mode off by one bit (2x the
/// error) fails.
const TOL_BF16: f32 = 0.8;
const TOL_F16: f32 = 0.18;

/// The ids of the `k` largest logits, largest first.
fn top(x: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..x.len()).collect();
    ids.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    ids.truncate(k);
    ids
}

/// The logits at every position of every case (prompt and reference continuation), from
/// prefill or from decode, with a KV cache of `kv_dtype`.
fn logits(weights: &Arc<Weights>, g: &Golden, kv_dtype: Dtype, decode: bool) -> Vec<Vec<Vec<f32>>> {
    let opts = SessionOptions {
        ctx: 256,
        max_chunk: 128,
        threads: 2,
        isa: Some(Isa::detect()),
        prefill_bf16: false,
        kv_dtype,
    };
    let mut s = Session::new(weights.clone(), &opts).unwrap();
    assert_eq!(s.kv_dtype(), kv_dtype);
    g.cases
        .iter()
        .map(|case| {
            let mut seq = case.input_ids.clone();
            seq.extend(&case.greedy);
            let mut out = Vec::new();
            s.reset();
            if decode {
                for &t in &seq {
                    out.push(s.decode_step(t).unwrap().to_vec());
                }
            } else {
                s.prefill_each(&seq, &mut |_, l| out.push(l.to_vec()))
                    .unwrap();
            }
            out
        })
        .collect()
}

#[test]
fn sixteen_bit_kv_cache_stays_close_to_f32_on_goldens() {
    let dir =
        qwenrt_cli::hub::ensure_default_model(false).expect("fetch and convert the default model");
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let g = golden();
    assert_eq!(g.cases.len(), 4);
    let mut failures = Vec::new();
    for decode in [false, true] {
        let path = if decode { "decode" } else { "prefill" };
        let base = logits(&weights, &g, Dtype::F32, decode);
        for (kv_dtype, tol) in [(Dtype::BF16, TOL_BF16), (Dtype::F16, TOL_F16)] {
            let ours = logits(&weights, &g, kv_dtype, decode);
            let (mut worst, mut firm, mut firm_ref) = (0f32, 0, 0);
            let (mut sum, mut count) = (0f64, 0usize);
            for (c, case) in g.cases.iter().enumerate() {
                let first = case.input_ids.len() - 1;
                for (pos, (b, o)) in base[c].iter().zip(&ours[c]).enumerate() {
                    let label = format!("{} {path} {kv_dtype} KV, position {pos}", case.name);
                    let ids = top(b, 20);
                    for &id in &ids {
                        worst = worst.max((o[id] - b[id]).abs());
                        sum += f64::from((o[id] - b[id]).abs());
                        count += 1;
                    }
                    if b[ids[0]] - b[ids[1]] >= GAP {
                        firm += 1;
                        if argmax(o) != ids[0] {
                            failures.push(format!(
                                "{label}: argmax {} != f32 cache's {}",
                                argmax(o),
                                ids[0]
                            ));
                        }
                    }
                    // transformers' reference, from the last prompt token on
                    if let Some(st) = pos.checked_sub(first).and_then(|i| case.steps.get(i)) {
                        if st.top_logits[0] - st.top_logits[1] >= GAP {
                            firm_ref += 1;
                            if argmax(o) != st.top_ids[0] as usize {
                                failures.push(format!(
                                    "{label}: argmax {} != reference {}",
                                    argmax(o),
                                    st.top_ids[0]
                                ));
                            }
                        }
                    }
                }
            }
            eprintln!(
                "{path} {kv_dtype} KV cache: top-20 logit error against the f32 cache: worst {worst:.4} (bound {tol}), mean {:.4}; argmax checked at {firm} positions (f32 cache gap >= {GAP}) and {firm_ref} (reference gap >= {GAP})",
                sum / count as f64
            );
            if firm < 150 || firm_ref < 100 {
                failures.push(format!(
                    "{path} {kv_dtype} KV: too few firm positions: {firm}, {firm_ref}"
                ));
            }
            if worst > tol {
                failures.push(format!(
                    "{path} {kv_dtype} KV: worst top-20 error {worst} > {tol}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
