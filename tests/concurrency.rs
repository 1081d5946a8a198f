//! One loaded model shared by four sessions on four threads gives exactly what the same four
//! requests give one after another: `Weights` is immutable and shared (`Arc`), everything
//! mutable lives in each `Session`. Each session has a pool of one thread, so its arithmetic
//! order is fixed and the comparison is bit for bit (logits and tokens), under greedy and
//! seeded sampling. Checked on the tiny fixture model and on the real default model.

use std::path::Path;
use std::sync::{Arc, Barrier};

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::weights::Weights;

/// One request: a prompt, how to sample, how many tokens.
#[derive(Clone)]
struct Request {
    prompt: Vec<u32>,
    params: SamplerParams,
    max_tokens: usize,
}

/// What a request produced: the logits after the prompt (as bits) and the sampled tokens.
#[derive(Debug, PartialEq, Eq)]
struct Output {
    prompt_logits: Vec<u32>,
    tokens: Vec<u32>,
}

fn serve(weights: &Arc<Weights>, req: &Request, start: Option<&Barrier>) -> Output {
    let opts = SessionOptions {
        ctx: req.prompt.len() + req.max_tokens + 1,
        threads: 1,
        max_chunk: 3, // several prefill chunks, so the cache bookkeeping is exercised too
        isa: None,
        prefill_bf16: true,
        ..Default::default()
    };
    let mut session = Session::new(weights.clone(), &opts).unwrap();
    session.set_sampler(req.params).unwrap();
    if let Some(b) = start {
        b.wait();
    }
    let prompt_logits = session
        .prefill(&req.prompt)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    for &t in &req.prompt {
        session.sampler_mut().observe(t);
    }
    let mut tokens = Vec::new();
    session
        .generate(req.max_tokens, &[], &mut |t| {
            tokens.push(t);
            true
        })
        .unwrap();
    Output {
        prompt_logits,
        tokens,
    }
}

/// Runs `reqs` one after another, then all at once on their own threads (started together
/// at a barrier, each twice), and compares.
fn concurrent_equals_sequential(weights: Weights, reqs: &[Request]) {
    let weights = Arc::new(weights);
    let sequential: Vec<Output> = reqs.iter().map(|r| serve(&weights, r, None)).collect();
    // different requests must give different outputs, or the comparison proves little
    for (i, a) in sequential.iter().enumerate() {
        assert_eq!(
            a.tokens.len(),
            reqs[i].max_tokens,
            "request {i} stopped early"
        );
        for b in &sequential[i + 1..] {
            assert_ne!(a, b);
        }
    }
    let barrier = Barrier::new(reqs.len());
    let concurrent: Vec<Vec<Output>> = std::thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (w, b) = (&weights, &barrier);
                s.spawn(move || vec![serve(w, r, Some(b)), serve(w, r, None)])
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (seq, conc)) in sequential.iter().zip(&concurrent).enumerate() {
        for c in conc {
            assert_eq!(
                c.tokens, seq.tokens,
                "request {i}: tokens differ when run concurrently"
            );
            assert!(
                c.prompt_logits == seq.prompt_logits,
                "request {i}: prompt logits differ when run concurrently"
            );
        }
    }
    assert_eq!(Arc::strong_count(&weights), 1, "a session kept the weights");
}

fn seeded(seed: u64) -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..Default::default()
    }
}

fn four_requests(vocab: u32, max_tokens: usize, params: [SamplerParams; 4]) -> Vec<Request> {
    let prompts = [
        vec![1, 2, 3, 4, 5, 6, 7],
        vec![17 % vocab, 400 % vocab, 9],
        vec![vocab - 1, 0, vocab / 2, 33, 34],
        vec![250 % vocab; 6],
    ];
    prompts
        .into_iter()
        .zip(params)
        .map(|(prompt, params)| Request {
            prompt,
            params,
            max_tokens,
        })
        .collect()
}

fn tiny() -> Weights {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-f32");
    Weights::load(&dir).unwrap()
}

#[test]
fn tiny_model_greedy() {
    let g = SamplerParams::greedy();
    concurrent_equals_sequential(tiny(), &four_requests(512, 40, [g; 4]));
}

#[test]
fn tiny_model_seeded_sampling() {
    let reqs = four_requests(512, 40, [seeded(1), seeded(2), seeded(3), seeded(4)]);
    concurrent_equals_sequential(tiny(), &reqs);
    // the same prompt under two seeds, side by side
    let mut same = reqs.clone();
    same[1].prompt = same[0].prompt.clone();
    concurrent_equals_sequential(tiny(), &same);
}

#[test]
fn real_model_greedy_and_seeded() {
    let dir =
        qwenrt_cli::hub::ensure_default_model(false).expect("fetch and convert the default model");
    let weights = Weights::load(&dir).unwrap();
    let vocab = weights.config.vocab_size as u32;
    let g = SamplerParams::greedy();
    // "Hello world", "def add(a, b):", ... as ids, two greedy and two sampled
    let mut reqs = four_requests(vocab, 8, [g, seeded(7), g, seeded(8)]);
    reqs[0].prompt = vec![9707, 1879];
    reqs[1].prompt = vec![750, 912, 2877, 11, 293];
    concurrent_equals_sequential(weights, &reqs);
}
