//! A GGUF file as a model: the tiny random Qwen2 fixture stored as Q8_0 and as Q4_0 (every
//! matrix whose rows are whole blocks; the rest f32) by the test's own GGUF builder, run
//! natively from its blocks, against the f32 path on the same numbers (the blocks dequantized
//! into an f32 safetensors model), under every ISA, through prefill and token-by-token decode.

use std::path::PathBuf;
use std::sync::Arc;

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::convert::hf_tensor_name;
use qwenrt::model::gguf::{GgmlType, GgufFile};
use qwenrt::model::weights::Weights;
use qwenrt::testkit::gguf::quantized_gguf_from_hf;
use qwenrt_kernels::{Format, Isa, QuantType};

fn tiny() -> (Vec<u8>, Vec<u8>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-f32");
    (
        std::fs::read(dir.join("config.json")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
}

/// The GGUF's tensors dequantized into an f32 safetensors model with the fixture's config.
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
    let st = safetensors::serialize(views, None).unwrap();
    Weights::from_bytes(config, st).unwrap()
}

fn all_logits(w: &Arc<Weights>, isa: Isa, threads: usize, ids: &[u32], decode: bool) -> Vec<f32> {
    let opts = SessionOptions {
        ctx: 64,
        max_chunk: 16,
        threads,
        isa: Some(isa),
        prefill_bf16: false,
        ..Default::default()
    };
    let mut s = Session::new(w.clone(), &opts).unwrap();
    let mut out = Vec::new();
    if decode {
        for &t in ids {
            out.extend_from_slice(s.decode_step(t).unwrap());
        }
    } else {
        s.prefill_each(ids, &mut |_, l| out.extend_from_slice(l))
            .unwrap();
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(ty: GgmlType, qt: QuantType) {
    let (config, st) = tiny();
    let gguf = quantized_gguf_from_hf(&config, &st, ty);
    let q = Arc::new(Weights::from_gguf_bytes(gguf.clone()).unwrap());
    // the matrices whose rows are whole blocks are quantized (all but down_proj: ffn 176)
    assert!(
        q.matrix_formats().starts_with(&format!("{qt} x")),
        "{}",
        q.matrix_formats()
    );
    assert_eq!(
        q.layers[0].mlp.dense().unwrap().down_proj.format,
        Format::Float(qwenrt_kernels::Dtype::F32)
    );
    let f = Arc::new(dequantized_model(&gguf, &config));
    let ids: Vec<u32> = (0..37).map(|i| (i * 131 + 7) % 512).collect();
    // the first SIMD ISA's logits, which every other SIMD ISA must reproduce
    let mut simd: Option<(Isa, Vec<f32>)> = None;
    for isa in Isa::available() {
        for threads in [1, 2] {
            for decode in [false, true] {
                let a = all_logits(&q, isa, threads, &ids, decode);
                let b = all_logits(&f, isa, threads, &ids, decode);
                let spread = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(&a, &b);
                // Scalar: both paths dot the very same f32 weights with the f32 input (the
                // reference dequantizes as ggml does), so only summation order could differ;
                // measured 0 (bit-identical); bound 1e-4 as for the tiny models' f32 paths.
                // SIMD: the quantized path dots the input rounded to 8-bit blocks of 32 (each
                // element within half a step, max|x|/254, of itself). Measured here on logits of
                // magnitude up to ~2.5: 0.061 (Q8_0) and 0.041 (Q4_0), the same on every SIMD
                // ISA, thread count and path; the bound 0.1 leaves a margin of 1.6x.
                let tol = if isa == Isa::Scalar { 1e-4 } else { 0.1 };
                eprintln!(
                    "{qt} isa={isa} threads={threads} decode={decode}: max |diff| {d:.2e} (logits up to {spread:.2})"
                );
                assert!(
                    d <= tol,
                    "{qt} isa={isa} threads={threads} decode={decode}: {d} > {tol}"
                );
                if isa == Isa::Scalar || decode {
                    continue;
                }
                // The SIMD ISAs take the same integer dot products of the same 8-bit input and
                // differ only in the order of f32 sums: they agree to f32 rounding, so a wrong
                // scale or bias on one ISA cannot hide under the quantization bound above.
                match &simd {
                    None => simd = Some((isa, a)),
                    Some((first, l)) => {
                        let e = max_abs_diff(l, &a);
                        assert!(e <= 1e-4, "{qt}: {isa} vs {first}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn q8_0_gguf_matches_the_f32_path_on_its_dequantized_weights() {
    check(GgmlType::Q8_0, QuantType::Q8_0);
}

#[test]
fn q4_0_gguf_matches_the_f32_path_on_its_dequantized_weights() {
    check(GgmlType::Q4_0, QuantType::Q4_0);
}

#[test]
fn a_quantized_norm_or_ragged_matrix_is_refused_by_name() {
    use qwenrt::model::gguf::Value;
    use qwenrt::testkit::gguf::GgufBuilder;
    let (config, st) = tiny();
    let good = quantized_gguf_from_hf(&config, &st, GgmlType::Q8_0);
    let file = GgufFile::from_bytes(good).unwrap();
    // rebuild with blk.0.attn_norm.weight stored as Q8_0 (64 elements: two blocks)
    let mut b = GgufBuilder::new();
    for (k, v) in &file.header.metadata {
        b = b.kv(k, v.clone());
    }
    for info in &file.header.tensors {
        let bytes = file.tensor_bytes(info).to_vec();
        if info.name == "blk.0.attn_norm.weight" {
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let q = qwenrt::testkit::gguf::quantize_q8_0(&values);
            b = b.tensor(&info.name, &info.dims, GgmlType::Q8_0, q);
        } else {
            b = b.tensor(&info.name, &info.dims, info.ty, bytes);
        }
    }
    let _ = Value::U32(0);
    let err = Weights::from_gguf_bytes(b.build()).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("model.layers.0.input_layernorm.weight") && msg.contains("Q8_0"),
        "{msg}"
    );
}

#[test]
fn perplexity_kl_divergence_round_trip() {
    use qwenrt_cli::workload::perplexity::{perplexity, KldMode, PerplexityError};
    let (config, st) = tiny();
    let gguf = quantized_gguf_from_hf(&config, &st, GgmlType::Q8_0);
    let f = Arc::new(Weights::from_bytes(&config, st).unwrap());
    let q = Arc::new(Weights::from_gguf_bytes(gguf).unwrap());
    let tokens: Vec<u32> = (0..70).map(|i| (i * 37 + 11) % 512).collect();
    let ctx = 16;
    let session = |w: &Arc<Weights>| {
        let opts = SessionOptions {
            ctx,
            threads: 1,
            isa: Some(Isa::detect()),
            prefill_bf16: false,
            ..Default::default()
        };
        Session::new(w.clone(), &opts).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("qwenrt-kld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.kld");
    let mut chunks_seen = 0;
    let saved = perplexity(
        &mut session(&f),
        &tokens,
        ctx,
        None,
        &KldMode::Save(base.clone()),
        &mut |i, _| chunks_seen = i + 1,
    )
    .unwrap();
    // llama-perplexity's convention: 70 tokens at ctx 16 are 4 chunks, 7 positions each
    assert_eq!((saved.chunks, saved.count, chunks_seen), (4, 4 * 7, 4));
    assert!(saved.kld.is_none() && saved.ppl() > 1.0);
    // the same path against itself: zero divergence, the same top token everywhere
    let same = perplexity(
        &mut session(&f),
        &tokens,
        ctx,
        None,
        &KldMode::Compare(base.clone()),
        &mut |_, _| {},
    )
    .unwrap();
    let (kld, _, top) = same.kld_summary().unwrap();
    assert!(kld.abs() < 1e-6 && top == 1.0, "{kld} {top}");
    assert_eq!(same.ppl(), saved.ppl());
    // the Q8_0 GGUF against the f32 path: a small positive divergence
    let other = perplexity(
        &mut session(&q),
        &tokens,
        ctx,
        None,
        &KldMode::Compare(base.clone()),
        &mut |_, _| {},
    )
    .unwrap();
    let (kld, _, top) = other.kld_summary().unwrap();
    eprintln!("Q8_0 vs f32: KLD {kld:.2e}, same top-1 {:.1}%", 100.0 * top);
    assert!(kld > 0.0 && kld < 0.05 && top > 0.5, "{kld} {top}");
    // a base made for other tokens or another context is refused, naming the file
    let err = perplexity(
        &mut session(&f),
        &tokens[1..],
        ctx,
        None,
        &KldMode::Compare(base.clone()),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, PerplexityError::Mismatch(..)), "{err}");
    assert!(err.to_string().contains("base.kld"), "{err}");
    let short = perplexity(
        &mut session(&f),
        &tokens[..20],
        ctx,
        None,
        &KldMode::None,
        &mut |_, _| {},
    );
    assert!(matches!(
        short,
        Err(PerplexityError::TooShort {
            tokens: 20,
            ctx: 16
        })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
