//! The real model's goldens (`tests/fixtures/qwen2.5-coder-0.5b/golden.json`, computed by HF
//! transformers): per case the prompt, its ids, the greedy continuation and, per position,
//! the top-20 logits and the logsumexp. Shared by the tests that check a path against them.
#![allow(dead_code)] // each test reads the fields it needs

use serde::Deserialize;

/// One position: the reference's 20 most likely tokens and their logits, best first.
#[derive(Deserialize)]
pub struct Step {
    pub top_ids: Vec<u32>,
    pub top_logits: Vec<f32>,
    pub logsumexp: f32,
}

/// One prompt and the reference's greedy run on it.
#[derive(Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt: String,
    pub input_ids: Vec<u32>,
    pub greedy: Vec<u32>,
    pub steps: Vec<Step>,
}

/// All of golden.json.
#[derive(Deserialize)]
pub struct Golden {
    pub cases: Vec<Case>,
}

/// Reads golden.json.
pub fn golden() -> Golden {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/qwen2.5-coder-0.5b/golden.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
