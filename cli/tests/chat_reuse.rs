//! Multi-turn KV reuse with rendered templates (qwenrt_cli::workload::conversation): each turn the
//! whole conversation is rendered and tokenized, the cache keeps the common prefix, and the
//! logits after the rest are those of the whole prompt prefilled from an empty cache. A tiny
//! synthetic model with Qwen2's vocabulary: the model does not matter here, the tokens do.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::text::template::{ChatTemplate, TemplateOrigin};
use qwenrt::{Tokenizer, Weights};
use qwenrt_cli::workload::conversation::{feed_reusing, Conversation};
use qwenrt_kernels::Dtype;

const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 151936,
    hidden: 64,
    ffn: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 1024,
    tied: true,
};

fn weights() -> Arc<Weights> {
    static W: OnceLock<Arc<Weights>> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qwenrt-chat-reuse-{}", std::process::id()));
        write_synthetic_model(&dir, SHAPE, Dtype::F32, 7).unwrap();
        Arc::new(Weights::load(&dir).unwrap())
    })
    .clone()
}

fn tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
    Tokenizer::from_file(&p).unwrap()
}

fn session(w: &Arc<Weights>) -> Session {
    let opts = SessionOptions {
        ctx: 512,
        threads: 1,
        prefill_bf16: false,
        ..Default::default()
    };
    Session::new(w.clone(), &opts).unwrap()
}

fn fixture_template(name: &str) -> ChatTemplate {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates/renders.json");
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    ChatTemplate::from_source(
        f["templates"][name].as_str().unwrap(),
        TemplateOrigin::Source,
        "",
        "<|im_end|>",
    )
    .unwrap()
}

/// Logits after `ids` prefilled from an empty cache.
fn fresh_logits(w: &Arc<Weights>, ids: &[u32]) -> Vec<f32> {
    let mut s = session(w);
    s.prefill(ids).unwrap().to_vec()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4 * scale,
        "{what}: logits differ by {worst} (scale {scale})"
    );
}

/// Plays two turns with `template`: the first reply's tokens are fed as if generated. Returns
/// (tokens cached after turn one, tokens reused for turn two, turn two's prompt length).
fn two_turns(template: &ChatTemplate, reply: &str) -> (usize, usize, usize) {
    let w = weights();
    let tok = tokenizer();
    let mut s = session(&w);
    let mut c = Conversation::new(Some("You are terse."));
    c.push("user", "Name a prime.");
    let first = c.prompt_ids(template, &tok).unwrap();
    assert_eq!(
        feed_reusing(&mut s, &first).unwrap(),
        0,
        "an empty cache reuses nothing"
    );
    assert_close(s.logits().unwrap(), &fresh_logits(&w, &first), "turn one");
    // the reply, as generation leaves it: every token but the stop token in the cache
    let reply_ids = tok.encode(reply).unwrap();
    s.prefill(&reply_ids).unwrap();
    let cached = first.len() + reply_ids.len();
    assert_eq!(s.position(), cached);
    c.push("assistant", reply);
    c.push("user", "Another.");
    let second = c.prompt_ids(template, &tok).unwrap();
    let reused = feed_reusing(&mut s, &second).unwrap();
    assert_eq!(s.position(), second.len());
    assert_close(s.logits().unwrap(), &fresh_logits(&w, &second), "turn two");
    (cached, reused, second.len())
}

#[test]
fn a_stable_template_reuses_every_cached_token() {
    // Qwen2.5's template renders the first turn the same way again: the whole cache is reused
    let (cached, reused, total) = two_turns(&ChatTemplate::chatml(), "Seven.");
    assert_eq!(reused, cached);
    assert!(total > cached);
    let (cached, reused, _) = two_turns(&fixture_template("Qwen-Qwen2.5-7B-Instruct"), "Seven.");
    assert_eq!(reused, cached);
}

#[test]
fn a_template_that_rewrites_past_turns_reuses_less_and_stays_exact() {
    // Qwen3's drops the reasoning of answered turns: the cache is kept only up to the reply
    let (cached, reused, _) = two_turns(
        &fixture_template("Qwen-Qwen3-0.6B"),
        "<think>\nsmall primes\n</think>\n\nSeven.",
    );
    assert!(reused < cached, "reused {reused} of {cached}");
    assert!(
        reused > 10,
        "the system and user turn are still shared: {reused}"
    );
}

#[test]
fn a_prompt_equal_to_the_cache_still_yields_fresh_logits() {
    let w = weights();
    let tok = tokenizer();
    let mut s = session(&w);
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n").unwrap();
    feed_reusing(&mut s, &ids).unwrap();
    // the same prompt again: all but its last token is reused, that one is fed again
    assert_eq!(feed_reusing(&mut s, &ids).unwrap(), ids.len() - 1);
    assert_close(s.logits().unwrap(), &fresh_logits(&w, &ids), "same prompt");
    // a shorter one rewinds the cache
    assert_eq!(feed_reusing(&mut s, &ids[..3]).unwrap(), 2);
    assert_eq!(s.position(), 3);
    assert!(feed_reusing(&mut s, &[]).is_err());
}
