//! `/v1/completions` as evaluation harnesses use it, held to the engine's own logits on the
//! real default model (its Q4_K_M GGUF, fetched on first use; never skipped): `echo` with
//! `logprobs` and `max_tokens: 0` returns each prompt token's log-probability, which must be
//! the log-softmax of the logits a prefill of the same tokens gives. The server prefills with
//! the same numerics (one chunk here), so the logits are the same, and it sums the softmax in
//! f64 as this test does: what is left is the f32 rounding of each value (values are within
//! about 20 of 0, so under 1e-5 with room). Also the
//! `system_fingerprint` `qwenrt serve` derives from the model's sha256.

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, Want};
use qwenrt::{Tokenizer, Weights};

#[test]
fn echoed_prompt_logprobs_are_the_engines_on_the_default_model() {
    let path = qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the GGUF");
    // the verified download's sha256 comes from the hub's marker, not a second hashing
    let sha = qwenrt_cli::hub::model_sha256(&path).unwrap();
    assert_eq!(sha, qwenrt_cli::hub::GGUF_SHA256);
    let fingerprint = qwenrt_server::system_fingerprint(&sha);
    let weights = Arc::new(Weights::load(&path).unwrap());
    let tokenizer = Tokenizer::from_gguf(&path).unwrap();
    let prompt = "The capital of France is Paris. The capital of Italy is Rome.";
    let ids = tokenizer.encode(prompt).unwrap();

    // the engine's own log-softmax after every prompt token
    let mut expected: Vec<Vec<f64>> = Vec::new();
    {
        let mut e = Engine::new(
            weights.clone(),
            &EngineOptions {
                ctx: 256,
                max_sequences: 1,
                max_batch_tokens: 130,
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
        let feed = Feed {
            seq,
            tokens: &ids,
            numerics: Numerics::Prefill,
            logits: Want::All,
        };
        e.step(&[feed], &mut |_, _, l| expected.push(log_softmax(l)))
            .unwrap();
    }

    let opts = ServerOptions {
        port: 0,
        parallel: 1,
        ctx: 256,
        threads: 2,
        system_fingerprint: fingerprint.clone(),
        ..ServerOptions::default()
    };
    let s = Server::start_serving(weights, tokenizer, opts);
    let body = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 5});
    let (status, v) = post(&s, "/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["system_fingerprint"], json!(fingerprint));
    assert!(fingerprint.ends_with(&qwenrt_cli::hub::GGUF_SHA256[..12]));
    let c = &v["choices"][0];
    assert_eq!(c["text"], json!(prompt));
    assert_eq!(v["usage"]["completion_tokens"], json!(0));
    let lp = &c["logprobs"];
    let values = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(values.len(), ids.len());
    assert!(values[0].is_null() && lp["top_logprobs"][0].is_null());
    let mut worst = 0.0f64;
    for k in 1..ids.len() {
        let want = expected[k - 1][ids[k] as usize];
        let got = values[k].as_f64().unwrap();
        worst = worst.max((got - want).abs());
        let top = lp["top_logprobs"][k].as_object().unwrap();
        assert_eq!(top.len(), 5);
        let mut best = expected[k - 1].clone();
        best.sort_by(|a, b| b.total_cmp(a));
        let mut got_top: Vec<f64> = top.values().map(|x| x.as_f64().unwrap()).collect();
        got_top.sort_by(|a, b| b.total_cmp(a));
        for (g, w) in got_top.iter().zip(&best) {
            assert!((g - w).abs() < 1e-5, "token {k}: top {g} vs {w}");
        }
    }
    assert!(
        worst < 1e-5,
        "prompt logprobs differ from the engine's by {worst}"
    );
    // the model finds "Rome" after "The capital of Italy is" likely
    let rome = ids.len() - 2;
    assert!(values[rome].as_f64().unwrap() > -2.0, "{}", values[rome]);
}
