//! Prompt-lookup decoding gives exactly plain greedy decoding: the same tokens, the same stop
//! reason, the same unfed token and the same cache length, on a synthetic model under every
//! ISA (with budgets and callbacks that stop in the middle of a verified draft) and on the
//! real model with the goldens' prompts and the ARC fixtures.

use std::sync::Arc;

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{GenerateStats, Session, SessionOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt::text::tokenizer::Tokenizer;
use qwenrt_kernels::{Dtype, Isa};

struct Run {
    tokens: Vec<u32>,
    stats: GenerateStats,
    position: usize,
}

/// Prefills `prompt` from an empty cache and generates greedily with drafts of up to `lookup`
/// tokens; `stop_after` makes the callback refuse its n-th token.
fn run(
    s: &mut Session,
    prompt: &[u32],
    lookup: usize,
    max_tokens: usize,
    stop: &[u32],
    stop_after: Option<usize>,
) -> Run {
    s.reset();
    s.set_lookup(lookup);
    s.prefill(prompt).unwrap();
    s.set_sampler(SamplerParams::greedy()).unwrap();
    let mut tokens = Vec::new();
    let stats = s
        .generate(max_tokens, stop, &mut |t| {
            tokens.push(t);
            Some(tokens.len()) != stop_after
        })
        .unwrap();
    Run {
        tokens,
        stats,
        position: s.position(),
    }
}

fn assert_same(plain: &Run, lk: &Run, what: &str) {
    assert_eq!(lk.tokens, plain.tokens, "{what}: tokens");
    assert_eq!(lk.stats.tokens, plain.stats.tokens, "{what}: token count");
    assert_eq!(lk.stats.reason, plain.stats.reason, "{what}: stop reason");
    assert_eq!(lk.stats.unfed, plain.stats.unfed, "{what}: unfed token");
    assert_eq!(lk.position, plain.position, "{what}: cache length");
}

#[test]
fn synthetic_model_lookup_equals_greedy_on_every_isa() {
    let dir = std::env::temp_dir().join(format!("qwenrt-lookup-{}", std::process::id()));
    let shape = SyntheticShape {
        vocab: 512,
        hidden: 128,
        ffn: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        max_positions: 2048,
        tied: false,
    };
    write_synthetic_model(&dir, shape, Dtype::BF16, 7).unwrap();
    let weights = Arc::new(Weights::load(&dir).unwrap());
    // a prompt that repeats, so drafts are found from the first step
    let prompt: Vec<u32> = (0..60).map(|i| [11, 12, 13, 14, 15, 16][i % 6]).collect();
    // an f32 and a bf16 KV cache: truncating past rejected rows works the same on both
    let runs = Isa::available()
        .into_iter()
        .flat_map(|isa| [Dtype::F32, Dtype::BF16].map(move |kv| (isa, kv)));
    for (isa_only, kv_dtype) in runs {
        let opts = SessionOptions {
            ctx: 1024,
            max_chunk: 32,
            threads: 2,
            isa: Some(isa_only),
            prefill_bf16: true,
            kv_dtype,
        };
        let isa = format!("{isa_only}, {kv_dtype} KV cache");
        let mut s = Session::new(weights.clone(), &opts).unwrap();
        let plain = run(&mut s, &prompt, 0, 300, &[], None);
        assert_eq!(plain.stats.drafted, 0);
        let mut accepted = 0;
        for k in [1, 3, 8, 16] {
            let lk = run(&mut s, &prompt, k, 300, &[], None);
            assert_same(&plain, &lk, &format!("{isa} lookup {k}"));
            assert!(lk.stats.accepted <= lk.stats.drafted);
            assert_eq!(
                lk.stats.steps + lk.stats.accepted,
                plain.stats.steps,
                "{isa} lookup {k}: steps"
            );
            accepted += lk.stats.accepted;
            // stops inside a verified draft leave the cache as plain decoding leaves it
            for cut in [1, 2, 5, 17, 64, 151] {
                let p = run(&mut s, &prompt, 0, cut, &[], None);
                let l = run(&mut s, &prompt, k, cut, &[], None);
                assert_same(&p, &l, &format!("{isa} lookup {k} max_tokens {cut}"));
                let p = run(&mut s, &prompt, 0, 300, &[], Some(cut));
                let l = run(&mut s, &prompt, k, 300, &[], Some(cut));
                assert_same(&p, &l, &format!("{isa} lookup {k} callback stop at {cut}"));
                let stop = [plain.tokens[cut]];
                let p = run(&mut s, &prompt, 0, 300, &stop, None);
                let l = run(&mut s, &prompt, k, 300, &stop, None);
                assert_same(&p, &l, &format!("{isa} lookup {k} stop token {}", stop[0]));
            }
        }
        println!("{isa}: accepted {accepted} drafted tokens over 4 draft lengths");
        assert!(
            accepted > 0,
            "{isa}: no draft was ever accepted, the verify path is untested"
        );
        // a context that fills up mid-draft
        let small = SessionOptions { ctx: 100, ..opts };
        let mut s = Session::new(weights.clone(), &small).unwrap();
        let p = run(&mut s, &prompt, 0, 300, &[], None);
        let l = run(&mut s, &prompt, 8, 300, &[], None);
        assert_same(&p, &l, &format!("{isa}: context full"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn real_model_lookup_equals_greedy_on_goldens_and_arc() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).expect("fetch the default model");
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let template = qwenrt::text::ChatTemplate::for_model(&dir, None).unwrap();
    let stop = qwenrt::text::chat::stop_ids(&tok, &weights.config);
    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/qwen2.5-coder-0.5b/golden.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut prompts: Vec<(String, Vec<u32>)> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["input_ids"].as_array().unwrap();
            let ids = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (c["name"].as_str().unwrap().to_string(), ids)
        })
        .collect();
    let arc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arc");
    let tasks = qwenrt_cli::workload::arc::load_tasks(&arc, qwenrt_cli::workload::arc::Split::Eval)
        .unwrap();
    for item in qwenrt_cli::workload::arc::work_items(&tasks) {
        let ids = qwenrt_cli::workload::prompt_ids(&tok, &template, &item.prompt, false).unwrap();
        prompts.push((format!("arc {}", item.task_id), ids));
    }
    let opts = SessionOptions {
        ctx: 1024,
        threads: 2,
        ..Default::default()
    };
    let mut s = Session::new(weights, &opts).unwrap();
    for (name, ids) in &prompts {
        let plain = run(&mut s, ids, 0, 64, &stop, None);
        let lk = run(&mut s, ids, 8, 64, &stop, None);
        assert_same(&plain, &lk, name);
        println!(
            "{name}: {} tokens, drafted {} accepted {}, {} steps instead of {}",
            lk.stats.tokens, lk.stats.drafted, lk.stats.accepted, lk.stats.steps, plain.stats.steps
        );
    }
}

/// The shared verifier under a constraint: a drafted token the model agrees with is accepted
/// and advances the grammar; where the model's favourite is forbidden, the best allowed token
/// follows (not the forbidden one), advancing the grammar too.
#[test]
fn the_verifier_judges_a_draft_on_the_masked_logits() {
    use qwenrt::engine::constraint::Grammars;
    use qwenrt::engine::lookup::Verifier;
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
    let tok = Tokenizer::from_file(&p).unwrap();
    let vocab = 151936;
    let im_end = tok.encode("<|im_end|>").unwrap();
    assert_eq!(im_end.len(), 1, "{im_end:?}");
    let g = Grammars::new(&tok, vocab, &im_end).unwrap();
    let mut c = g.regex("[0-9]{3}").unwrap();
    let id = |s: &str| {
        let ids = tok.encode(s).unwrap();
        assert_eq!(ids.len(), 1, "{s}: {ids:?}");
        ids[0]
    };
    let (one, two, three, x) = (id("1"), id("2"), id("3"), id("x"));
    let logits = |best: u32, second: u32| {
        let mut l = vec![0.0f32; vocab];
        l[best as usize] = 2.0;
        l[second as usize] = 1.0;
        l
    };
    // the draft "1 2" after the newest token; the model agrees with "1", then prefers "x"
    // (forbidden) over "3"
    let mut v = Verifier::new(&[one, one, two], 40);
    v.check(40, &logits(one, x), Some(&mut c));
    v.check(41, &logits(x, three), Some(&mut c));
    v.check(42, &logits(two, x), Some(&mut c)); // past the deciding row: ignored
    let d = v.verdict().unwrap();
    assert_eq!(
        (d.tokens(), d.accepted(), d.drafted()),
        (&[one, three][..], 1, 2)
    );
    // the grammar saw "1 3": one more digit, then only the end
    assert!(c.allows(two) && !c.allows(x));
    c.commit(two).unwrap();
    assert!(!c.allows(one) && c.is_accepting());
}
