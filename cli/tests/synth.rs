//! `qwenrt synth` and `qwenrt bench --synthetic`: random-weight GGUFs of real Qwen shapes.
//!
//! - A dense Qwen2 (qwen2.5-0.5b, 2 layers), a dense Qwen3 (qwen3-0.6b, 2 layers) and the MoE
//!   (qwen3-30b-a3b, 1 layer: 128 experts of the real width) in each mix are written, read
//!   back (metadata, tokenizer padded to the vocab, every tensor's type as the spec says) and
//!   run through the normal loader: a prefill and decode steps give finite, non-constant
//!   logits. The MoE files are 0.8-2.5 GB (the 151,936-row embedding and head dominate); each
//!   is deleted once checked, so at most one is on disk at a time.
//! - Q4_K_M's types against llama-quantize's: the whole qwen2.5-0.5b against the default
//!   model's own Q4_K_M GGUF, tensor by tensor (names, order, dims, types; only its untied
//!   head differs), Qwen2.5-7B's counts (Q4_K x169, Q6_K x29, as llama-quantize made them for
//!   the issue), the MoE's expert rules.
//! - Every block valid: each tensor of a file dequantizes to finite values of the intended
//!   magnitude.
//! - Same seed, same bytes (also on one thread); another seed, other bytes.
//! - Bad SHAPE, QUANT and --layers refused by name, by the library and the command line.
//! - `bench --synthetic` writes the file under `$QWENRT_HOME/synthetic/` once and reuses it.
//!
//! The tokenizer is the default model's (fetched on first use, as the other real-model tests
//! do).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::gguf::{GgmlType, GgufFile, GgufHeader, GgufWriter, TensorSpec, Value};
use qwenrt::model::synth::{use_more_bits, write_synth_gguf, SynthQuant, SynthSpec, SHAPES};
use qwenrt::model::weights::Weights;
use qwenrt::testkit::gguf::GgufBuilder;

/// A fresh directory under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qwenrt-synth-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn default_gguf() -> PathBuf {
    qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the default model's GGUF")
}

fn tokenizer() -> GgufFile {
    GgufFile::open(&default_gguf()).unwrap()
}

fn write(dir: &Path, spec: &SynthSpec, tok: &GgufHeader) -> PathBuf {
    let path = dir.join(spec.file_name());
    write_synth_gguf(&path, spec, tok).unwrap();
    path
}

/// Reads `path` back: the metadata and tensors are the spec's, the tokenizer padded.
fn check_file(path: &Path, spec: &SynthSpec, tok: &GgufHeader) -> GgufFile {
    let f = GgufFile::open(path).unwrap();
    let h = &f.header;
    let arch = spec.shape.arch.gguf_name();
    assert_eq!(h.get_str("general.architecture").unwrap(), arch);
    assert_eq!(
        h.get_u64(&format!("{arch}.block_count")).unwrap(),
        spec.shape.layers as u64
    );
    assert_eq!(
        h.get_u64("general.file_type").unwrap(),
        u64::from(spec.quant.file_type())
    );
    let tokens = h.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        tokens.len(),
        spec.shape.vocab,
        "{path:?}: tokens padded to the vocab"
    );
    let types = h.get_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types.len(), spec.shape.vocab);
    let source = tok.get_array("tokenizer.ggml.tokens").unwrap();
    let (src, out) = (source.as_strings().unwrap(), tokens.as_strings().unwrap());
    assert_eq!(&out[..src.len()], src, "the tokenizer's own tokens kept");
    for (i, t) in out.iter().enumerate().skip(src.len()) {
        assert_eq!(t, &format!("[PAD{i}]"));
    }
    assert_eq!(
        h.get_array("tokenizer.ggml.merges").unwrap().len(),
        tok.get_array("tokenizer.ggml.merges").unwrap().len()
    );
    let want = spec.tensors();
    let got: Vec<TensorSpec> = h
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    assert_eq!(got, want, "{path:?}: tensors as the spec says");
    f
}

/// Loads `path` through the normal loader and runs a prefill and three decode steps on one
/// thread: the logits are the vocab's width, finite and not constant.
fn check_runs(path: &Path, vocab: usize) {
    let w = Arc::new(Weights::load(path).unwrap());
    let opts = SessionOptions {
        ctx: 16,
        max_chunk: 4,
        threads: 1,
        ..Default::default()
    };
    let mut s = Session::new(w, &opts).unwrap();
    let check = |what: &str, logits: &[f32]| {
        assert_eq!(logits.len(), vocab, "{path:?} {what}");
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{path:?} {what}: non-finite logits"
        );
        let (lo, hi) = logits
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(
            hi - lo > 1e-3,
            "{path:?} {what}: constant logits {lo}..{hi}"
        );
    };
    check("prefill", s.prefill(&[9707, 11, 1879]).unwrap());
    for t in [13, 576, 151_643] {
        check("decode", s.decode_step(t).unwrap());
    }
}

#[test]
fn each_family_in_each_mix_loads_and_runs_with_finite_logits() {
    let tok = tokenizer();
    let dir = Scratch::new();
    for (shape, layers) in [("qwen2.5-0.5b", 2), ("qwen3-0.6b", 2), ("qwen3-30b-a3b", 1)] {
        for quant in SynthQuant::ALL {
            let spec = SynthSpec::new(shape, quant, Some(layers), 3).unwrap();
            let path = write(dir.path(), &spec, &tok.header);
            check_file(&path, &spec, &tok.header);
            check_runs(&path, spec.shape.vocab);
            std::fs::remove_file(&path).unwrap();
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "temporaries left behind: {left:?}");
}

fn types_of(spec: &SynthSpec) -> Vec<(String, GgmlType)> {
    spec.tensors().into_iter().map(|t| (t.name, t.ty)).collect()
}

#[test]
fn q4_k_m_of_qwen2_5_0_5b_is_the_default_models_mix() {
    // Qwen's own Q4_K_M of Qwen2.5-Coder-0.5B: same shape, made by llama-quantize; it has an
    // untied head (output.weight), so its embedding is Q4_K's fallback and ours the head's
    let real = tokenizer();
    let spec = SynthSpec::new("qwen2.5-0.5b", SynthQuant::Q4KM, None, 1).unwrap();
    let ours = spec.tensors();
    let theirs: Vec<&_> = real
        .header
        .tensors
        .iter()
        .filter(|t| t.name != "output.weight")
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(
            (&o.name, &o.dims),
            (&t.name, &t.dims),
            "file order and dims"
        );
        if o.name == "token_embd.weight" {
            // tied: the head's Q6_K, falling back to Q8_0 at width 896; untied: Q4_K's Q5_0
            assert_eq!((o.ty, t.ty), (GgmlType::Q8_0, GgmlType::Q5_0));
        } else {
            assert_eq!(o.ty, t.ty, "{}", o.name);
        }
    }
    let out = real.header.tensor("output.weight").unwrap();
    assert_eq!(out.ty, GgmlType::Q8_0, "the untied head: Q6_K's fallback");
}

#[test]
fn q4_k_m_types_follow_llama_quantize() {
    // Qwen2.5-7B: llama-quantize gave Q4_K x169, Q6_K x29 over its 198 matrices
    let spec = SynthSpec::new("qwen2.5-7b", SynthQuant::Q4KM, None, 1).unwrap();
    let t = types_of(&spec);
    let count = |ty| t.iter().filter(|(_, x)| *x == ty).count();
    assert_eq!(count(GgmlType::Q4K), 169);
    assert_eq!(count(GgmlType::Q6K), 29);
    assert_eq!(count(GgmlType::F32), 28 * 5 + 1, "norms and biases f32");
    let ty = |name: &str| t.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(ty("output.weight"), GgmlType::Q6K);
    assert_eq!(
        ty("token_embd.weight"),
        GgmlType::Q4K,
        "the untied embedding"
    );
    // the i-th attn_v in file order (blk.0, blk.1, blk.10, ...) gets the i-th decision
    let order: Vec<usize> = t
        .iter()
        .filter_map(|(n, _)| {
            n.strip_suffix(".attn_v.weight")?
                .strip_prefix("blk.")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(&order[..4], &[0, 1, 10, 11]);
    for (i, layer) in order.iter().enumerate() {
        let want = if use_more_bits(i, 28) {
            GgmlType::Q6K
        } else {
            GgmlType::Q4K
        };
        assert_eq!(ty(&format!("blk.{layer}.attn_v.weight")), want);
        assert_eq!(ty(&format!("blk.{layer}.ffn_down.weight")), want);
    }
    // a tied head takes the embedding's place: qwen3-4b (width 2560, whole 256-blocks)
    let spec = SynthSpec::new("qwen3-4b", SynthQuant::Q4KM, None, 1).unwrap();
    let t4 = types_of(&spec);
    assert!(!t4.iter().any(|(n, _)| n == "output.weight"));
    assert_eq!(
        t4.iter().find(|(n, _)| n == "token_embd.weight").unwrap().1,
        GgmlType::Q6K
    );

    // the MoE: ffn_down_exps by the layer in its name, the router f32, the rest Q4_K
    let spec = SynthSpec::new("qwen3-30b-a3b", SynthQuant::Q4KM, None, 1).unwrap();
    let tensors = spec.tensors();
    let ty = |name: &str| tensors.iter().find(|t| t.name == name).unwrap().ty;
    for l in 0..48 {
        let more = if use_more_bits(l, 48) {
            GgmlType::Q6K
        } else {
            GgmlType::Q4K
        };
        assert_eq!(
            ty(&format!("blk.{l}.ffn_down_exps.weight")),
            more,
            "layer {l}"
        );
        assert_eq!(ty(&format!("blk.{l}.ffn_gate_exps.weight")), GgmlType::Q4K);
        assert_eq!(ty(&format!("blk.{l}.ffn_up_exps.weight")), GgmlType::Q4K);
        assert_eq!(ty(&format!("blk.{l}.ffn_gate_inp.weight")), GgmlType::F32);
        assert_eq!(ty(&format!("blk.{l}.attn_k.weight")), GgmlType::Q4K);
        assert_eq!(ty(&format!("blk.{l}.attn_q_norm.weight")), GgmlType::F32);
    }
    let gate = tensors
        .iter()
        .find(|t| t.name == "blk.0.ffn_gate_exps.weight")
        .unwrap();
    assert_eq!(
        gate.dims,
        vec![2048, 768, 128],
        "3-D experts, fastest-first"
    );
    let down = tensors
        .iter()
        .find(|t| t.name == "blk.0.ffn_down_exps.weight")
        .unwrap();
    assert_eq!(down.dims, vec![768, 2048, 128]);
    assert_eq!(ty("output.weight"), GgmlType::Q6K);
    // about llama.cpp's 18.6 GB for the whole model
    let gb = spec.data_bytes() as f64 / 1e9;
    assert!((17.5..19.0).contains(&gb), "{gb} GB");

    // q8_0 and bf16: every matrix, router and vectors f32
    for (quant, want) in [
        (SynthQuant::Q8_0, GgmlType::Q8_0),
        (SynthQuant::BF16, GgmlType::BF16),
    ] {
        let spec = SynthSpec::new("qwen3-30b-a3b", quant, Some(2), 1).unwrap();
        for t in spec.tensors() {
            let vector = t.dims.len() == 1 || t.name.contains("ffn_gate_inp");
            let expected = if vector { GgmlType::F32 } else { want };
            assert_eq!(t.ty, expected, "{} in {}", t.name, quant.name());
        }
    }
}

#[test]
fn every_block_is_finite_and_of_the_intended_magnitude() {
    let tok = tokenizer();
    let dir = Scratch::new();
    for quant in SynthQuant::ALL {
        let spec = SynthSpec::new("qwen3-0.6b", quant, Some(1), 5).unwrap();
        let f = GgufFile::open(&write(dir.path(), &spec, &tok.header)).unwrap();
        for t in &f.header.tensors {
            let v = f.dequantize_tensor(&t.name).unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
            let rms = (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
                as f32;
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            if t.name.ends_with("norm.weight") {
                assert!(v.iter().all(|x| (0.89..=1.11).contains(x)), "{}", t.name);
                continue;
            }
            // 1.7 / sqrt(fan_in): uniform within it has rms 0.58 of it
            let amp = 1.7 / (t.dims[0] as f32).sqrt();
            assert!(
                max <= 1.5 * amp,
                "{} {:?}: max {max} over {amp}",
                t.name,
                t.ty
            );
            assert!(
                (0.35 * amp..0.8 * amp).contains(&rms),
                "{} {:?}: rms {rms} for amplitude {amp}",
                t.name,
                t.ty
            );
        }
    }
}

#[test]
fn same_seed_same_bytes_whatever_the_threads() {
    let tok = tokenizer();
    let dir = Scratch::new();
    let spec = SynthSpec::new("qwen3-0.6b", SynthQuant::Q4KM, Some(1), 7).unwrap();
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    let c = dir.path().join("c.gguf");
    write_synth_gguf(&a, &spec, &tok.header).unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| write_synth_gguf(&b, &spec, &tok.header).unwrap());
    let other = SynthSpec { seed: 8, ..spec };
    write_synth_gguf(&c, &other, &tok.header).unwrap();
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "the same seed gave different bytes");
    assert_eq!(a.len(), c.len());
    let differ = a.iter().zip(&c).filter(|(x, y)| x != y).count();
    assert!(differ > a.len() / 4, "seed 8 changed only {differ} bytes");
}

#[test]
fn bad_shape_quant_and_layers_are_refused_by_name() {
    let e = SynthSpec::new("qwen9-1b", SynthQuant::Q4KM, None, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"qwen9-1b\"") && e.contains("qwen3-30b-a3b"),
        "{e}"
    );
    let e = SynthQuant::by_name("q5_k_s").unwrap_err().to_string();
    assert!(
        e.contains("\"q5_k_s\"") && e.contains("q4_k_m, q8_0, bf16"),
        "{e}"
    );
    assert_eq!(SynthQuant::by_name("Q4_K_M").unwrap(), SynthQuant::Q4KM);
    for layers in [0, 29] {
        let e = SynthSpec::new("qwen3-0.6b", SynthQuant::BF16, Some(layers), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("--layers {layers}")) && e.contains("1..=28"),
            "{e}"
        );
    }
    assert_eq!(
        SynthSpec::new("qwen3-0.6b", SynthQuant::BF16, Some(28), 1)
            .unwrap()
            .shape
            .layers,
        28
    );
    assert_eq!(SHAPES.len(), 10);

    // the command line: usage errors (status 2), nothing written
    let dir = Scratch::new();
    let out = dir.path().join("x.gguf");
    let out = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["synth", "qwen9-1b", "--out", out],
            "unknown shape \"qwen9-1b\"",
        ),
        (
            vec!["synth", "qwen3-0.6b", "--quant", "q2_k", "--out", out],
            "unknown quant \"q2_k\"",
        ),
        (
            vec!["synth", "qwen3-0.6b", "--layers", "0", "--out", out],
            "--layers 0",
        ),
        (
            vec!["synth", "qwen3-0.6b", "--layers", "-1", "--out", out],
            "--layers",
        ),
        (vec!["synth", "qwen3-0.6b"], "--out"),
        (
            vec!["bench", "--synthetic", "qwen3-0.6b:q3_k"],
            "--synthetic: unknown quant \"q3_k\"",
        ),
        (
            vec!["bench", "--synthetic", "qwen2.5-7b", "--layers", "29"],
            "--layers 29",
        ),
        (
            vec!["bench", "--layers", "2"],
            "--layers cuts a --synthetic model",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args(&args)
            .env("QWENRT_HOME", dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bench_synthetic_writes_the_file_once_and_reuses_it() {
    let home = Scratch::new();
    // the default model's GGUF and its verified marker, so nothing is fetched
    let gguf = default_gguf();
    let downloads = home.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let name = gguf.file_name().unwrap();
    std::os::unix::fs::symlink(&gguf, downloads.join(name)).unwrap();
    let marker = gguf.with_extension("gguf.verified");
    std::fs::copy(&marker, downloads.join(marker.file_name().unwrap())).unwrap();
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args(["bench", "--synthetic", "qwen3-0.6b:q8_0", "--layers", "1"])
            .args(["-p", "4", "-n", "2", "-r", "1", "-t", "1"])
            .env("QWENRT_HOME", home.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let file = home.path().join("synthetic/qwen3-0.6b-1L-q8_0.gguf");
    let (out, err) = run();
    assert!(err.contains("writing qwen3-0.6b"), "{err}");
    assert!(
        out.contains("qwen3 ") && out.contains("Q8_0") && out.contains("tg2"),
        "{out}"
    );
    let first = std::fs::metadata(&file).unwrap().modified().unwrap();
    let spec = SynthSpec::new("qwen3-0.6b", SynthQuant::Q8_0, Some(1), 1).unwrap();
    check_file(&file, &spec, &GgufFile::open(&gguf).unwrap().header);
    let (_, err) = run();
    assert!(!err.contains("writing"), "{err}");
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), first);
    let names: Vec<_> = std::fs::read_dir(home.path().join("synthetic"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("qwen3-0.6b-1L-q8_0.gguf")]
    );
}

#[test]
fn the_writer_matches_the_test_builder_and_checks_the_byte_counts() {
    let kvs = vec![
        (
            "general.architecture".to_string(),
            Value::String("qwen2".into()),
        ),
        ("x.n".to_string(), Value::U32(7)),
    ];
    let tensors = vec![
        TensorSpec {
            name: "a".into(),
            dims: vec![3],
            ty: GgmlType::F32,
        },
        TensorSpec {
            name: "b".into(),
            dims: vec![32, 2],
            ty: GgmlType::Q8_0,
        },
    ];
    let data: [Vec<u8>; 2] = [(0..12).collect(), (0..68).map(|i| i as u8 * 3).collect()];
    let mut builder = GgufBuilder::new();
    builder.kvs = kvs.clone();
    for (t, d) in tensors.iter().zip(&data) {
        builder = builder.tensor(&t.name, &t.dims, t.ty, d.clone());
    }
    let mut w = GgufWriter::new(Vec::new(), &kvs, &tensors).unwrap();
    // in pieces that straddle the tensors
    let all: Vec<u8> = data.concat();
    for piece in all.chunks(5) {
        w.write(piece).unwrap();
    }
    let written = w.finish().unwrap();
    let mut built = builder.build();
    // the builder does not pad after the last tensor
    built.resize(written.len(), 0);
    assert_eq!(written, built);
    assert!(GgufFile::from_bytes(written).is_ok());

    let mut w = GgufWriter::new(Vec::new(), &kvs, &tensors).unwrap();
    w.write(&all[..70]).unwrap();
    let e = w.finish().err().unwrap().to_string();
    assert!(e.contains("tensor 1 of 2 is incomplete"), "{e}");
    let mut w = GgufWriter::new(Vec::new(), &kvs, &tensors).unwrap();
    assert!(w.write(&[0; 81]).is_err());
    let bad = [TensorSpec {
        name: "c".into(),
        dims: vec![30, 2],
        ty: GgmlType::Q8_0,
    }];
    let e = GgufWriter::new(Vec::new(), &kvs, &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tensor `c`"), "{e}");
}

/// One decode row of the MoE (its experts' gates and ups in one dispatch, their downs in
/// another) gives bit for bit the logits it gets beside another sequence's row (each expert
/// over the rows routed to it), on the real shape's Q4_K / Q6_K experts, for every ISA.
#[test]
fn moe_decode_row_alone_equals_it_beside_another() {
    use qwenrt::engine::sampler::SamplerParams;
    use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
    let tok = tokenizer();
    let dir = Scratch::new();
    let spec = SynthSpec::new("qwen3-30b-a3b", SynthQuant::Q4KM, Some(1), 11).unwrap();
    let w = Arc::new(Weights::load(&write(dir.path(), &spec, &tok.header)).unwrap());
    fn feed(seq: SeqId, tokens: &[u32]) -> Feed<'_> {
        Feed {
            seq,
            tokens,
            numerics: Numerics::Decode,
            logits: Want::Last,
        }
    }
    for isa in qwenrt_kernels::Isa::available() {
        let opts = EngineOptions {
            ctx: 16,
            max_sequences: 2,
            max_batch_tokens: 4,
            threads: 2,
            isa: Some(isa),
            ..Default::default()
        };
        let (mut alone, mut pair) = (
            Engine::new(w.clone(), &opts).unwrap(),
            Engine::new(w.clone(), &opts).unwrap(),
        );
        let a = alone.create_sequence(SamplerParams::greedy()).unwrap();
        let p = pair.create_sequence(SamplerParams::greedy()).unwrap();
        let other = pair.create_sequence(SamplerParams::greedy()).unwrap();
        for (i, t) in [9707u32, 11, 1879, 13, 576].into_iter().enumerate() {
            let (mine, o) = ([t], [(t * 7 + 5) % 151_000]);
            alone.step(&[feed(a, &mine)], &mut |_, _, _| {}).unwrap();
            pair.step(&[feed(p, &mine), feed(other, &o)], &mut |_, _, _| {})
                .unwrap();
            let (x, y) = (alone.logits(a).unwrap(), pair.logits(p).unwrap());
            assert!(x.iter().all(|v| v.is_finite()));
            assert!(
                x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
                "isa {isa} step {i}: a lone row's logits differ from the same row beside another"
            );
        }
    }
}
