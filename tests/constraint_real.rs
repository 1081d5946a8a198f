//! Constrained decoding on the default model (Qwen2.5-Coder-0.5B-Instruct, its GGUF):
//! - validity: 24 JSON schemas (nesting, arrays with min/maxItems, enums, required, numeric
//!   bounds, strings with patterns and lengths, anyOf/oneOf, `$ref`, recursion), each answered
//!   greedily and sampled; every answer ends with a stop token, parses, and passes the schema
//!   check of `support/schema_check.rs` (written apart from llguidance);
//! - exactness: step by step on one schema, wherever the unconstrained greedy token is allowed
//!   the constrained greedy token is that token.
//!
//! Fetches the model on first use; never skipped.

use std::sync::Arc;

use qwenrt::engine::constraint::Grammars;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionOptions, StopReason};
use qwenrt::text::chat;
use qwenrt::{Tokenizer, Weights};
use serde_json::{json, Value};

#[path = "support/schema_check.rs"]
mod schema_check;

fn model() -> (Arc<Weights>, Tokenizer) {
    let path = qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the default model's GGUF");
    (
        Arc::new(Weights::load(&path).unwrap()),
        Tokenizer::from_gguf(&path).unwrap(),
    )
}

fn session(w: &Arc<Weights>) -> Session {
    let opts = SessionOptions {
        ctx: 1024,
        threads: 2,
        ..Default::default()
    };
    Session::new(w.clone(), &opts).unwrap()
}

/// (what to ask for, the schema).
fn cases() -> Vec<(&'static str, Value)> {
    vec![
        (
            "a person with a name and an age",
            json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        ),
        (
            "the primary colors",
            json!({
            "type": "array", "items": {"enum": ["red", "yellow", "blue", "green"]}, "minItems": 3, "maxItems": 3}),
        ),
        (
            "a traffic light state",
            json!({"enum": ["red", "amber", "green"]}),
        ),
        ("whether water is wet", json!({"type": "boolean"})),
        (
            "pi to two decimals",
            json!({"type": "number", "minimum": 3, "maximum": 4}),
        ),
        (
            "a score out of ten",
            json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
        ),
        (
            "a US zip code",
            json!({"type": "string", "pattern": "^[0-9]{5}$"}),
        ),
        (
            "a hex color",
            json!({"type": "object", "properties": {
            "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}, "required": ["color"], "additionalProperties": false}),
        ),
        (
            "a book with its author and year",
            json!({
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 40},
                "author": {"type": "object", "properties": {
                    "first": {"type": "string", "maxLength": 20}, "last": {"type": "string", "maxLength": 20}},
                    "required": ["first", "last"], "additionalProperties": false},
                "year": {"type": "integer", "minimum": 1400, "maximum": 2030}},
            "required": ["title", "author", "year"], "additionalProperties": false}),
        ),
        (
            "three programming languages with their creation year",
            json!({
            "type": "array", "minItems": 3, "maxItems": 3,
            "items": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20}, "year": {"type": "integer", "minimum": 1950, "maximum": 2025}},
                "required": ["name", "year"], "additionalProperties": false}}),
        ),
        (
            "a server config",
            json!({
            "type": "object", "properties": {
                "host": {"type": "string", "maxLength": 30},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "boolean"},
                "mode": {"enum": ["dev", "prod"]}},
            "required": ["host", "port", "tls", "mode"], "additionalProperties": false}),
        ),
        (
            "a list of one to five small primes",
            json!({
            "type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 31},
            "minItems": 1, "maxItems": 5}),
        ),
        (
            "a point in 2D",
            json!({
            "type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}],
            "minItems": 2, "maxItems": 2, "items": false}),
        ),
        (
            "a shape: a circle with a radius or a square with a side",
            json!({
            "anyOf": [
                {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}},
                 "required": ["kind", "radius"], "additionalProperties": false},
                {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}},
                 "required": ["kind", "side"], "additionalProperties": false}]}),
        ),
        (
            "an id that is either a number or a short code",
            json!({
            "type": "object", "properties": {"id": {"oneOf": [
                {"type": "integer", "minimum": 0, "maximum": 999999},
                {"type": "string", "pattern": "^[A-Z]{3}$"}]}},
            "required": ["id"], "additionalProperties": false}),
        ),
        (
            "a user referencing a shared address definition",
            json!({
            "$defs": {"address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": false}},
            "type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20},
                "home": {"$ref": "#/$defs/address"}, "work": {"$ref": "#/$defs/address"}},
            "required": ["name", "home", "work"], "additionalProperties": false}),
        ),
        (
            "a small file tree",
            json!({
            "$defs": {"node": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 16},
                "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}},
                "required": ["name"], "additionalProperties": false}},
            "$ref": "#/$defs/node"}),
        ),
        (
            "an HTTP status line",
            json!({
            "type": "object", "properties": {
                "code": {"type": "integer", "enum": [200, 301, 404, 500]},
                "reason": {"type": "string", "maxLength": 25}},
            "required": ["code", "reason"], "additionalProperties": false}),
        ),
        (
            "an email address",
            json!({"type": "object", "properties": {
            "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$"}},
            "required": ["email"], "additionalProperties": false}),
        ),
        (
            "temperatures of three days",
            json!({
            "type": "object", "properties": {
                "unit": {"enum": ["C", "F"]},
                "readings": {"type": "array", "minItems": 3, "maxItems": 3,
                    "items": {"type": "number", "minimum": -50, "maximum": 60}}},
            "required": ["unit", "readings"], "additionalProperties": false}),
        ),
        (
            "a matrix of 2x2 small integers",
            json!({
            "type": "array", "minItems": 2, "maxItems": 2,
            "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}),
        ),
        (
            "an optional nickname and a required id",
            json!({
            "type": "object", "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 1000},
                "nickname": {"type": ["string", "null"], "maxLength": 15}},
            "required": ["id"], "additionalProperties": false}),
        ),
        (
            "a version string",
            json!({"type": "object", "properties": {
            "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$", "maxLength": 12}},
            "required": ["version"], "additionalProperties": false}),
        ),
        (
            "a todo item",
            json!({
            "type": "object", "properties": {
                "task": {"type": "string", "minLength": 3, "maxLength": 40},
                "priority": {"type": "integer", "minimum": 1, "maximum": 5},
                "done": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}},
            "required": ["task", "priority", "done", "tags"], "additionalProperties": false}),
        ),
    ]
}

#[test]
fn every_constrained_answer_parses_and_validates() {
    let (w, tok) = model();
    let stop = qwenrt::text::chat::stop_ids(&tok, &w.config);
    let g = Grammars::new(&tok, w.config.vocab_size, &stop).unwrap();
    let mut s = session(&w);
    let cases = cases();
    assert!(cases.len() >= 20);
    let sampled = SamplerParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: 7,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let (mut masks, mut mask_time) = (0u64, std::time::Duration::ZERO);
    for (i, (what, schema)) in cases.iter().enumerate() {
        for params in [
            SamplerParams::greedy(),
            SamplerParams {
                seed: 7 + i as u64,
                ..sampled
            },
        ] {
            let prompt = chat::first_turn(
                chat::DEFAULT_SYSTEM_PROMPT,
                &format!("Give {what} as JSON matching this schema: {schema}"),
            );
            let ids = tok.encode(&prompt).unwrap();
            s.reset();
            s.prefill(&ids).unwrap();
            s.set_constraint(Some(g.json_schema(schema).unwrap()));
            s.set_sampler(params).unwrap();
            let mut out = Vec::new();
            let stats = s
                .generate(300, &stop, &mut |t| {
                    out.push(t);
                    true
                })
                .unwrap();
            let mut c = s.set_constraint(None).unwrap();
            let (m, t) = c.mask_stats();
            masks += m;
            mask_time += t;
            let text = tok.decode(&out).unwrap();
            let mode = if params.temperature == 0.0 {
                "greedy"
            } else {
                "sampled"
            };
            println!("{i:2} {mode:7} {text}");
            if !matches!(stats.reason, StopReason::StopToken(_)) {
                failures.push(format!(
                    "{i} {mode}: no stop token ({:?}): {text}",
                    stats.reason
                ));
                continue;
            }
            assert!(
                c.is_accepting(),
                "{i} {mode}: stopped before the grammar was complete"
            );
            match serde_json::from_str::<Value>(&text) {
                Err(e) => failures.push(format!("{i} {mode}: not JSON ({e}): {text}")),
                Ok(v) => {
                    if let Err(e) = schema_check::check(&v, schema, schema) {
                        failures.push(format!("{i} {mode}: {e}"));
                    }
                }
            }
        }
    }
    println!(
        "{masks} masks, {:.3} ms each on average",
        mask_time.as_secs_f64() * 1e3 / masks.max(1) as f64
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn constrained_greedy_equals_unconstrained_where_allowed_on_the_real_model() {
    let (w, tok) = model();
    let stop = qwenrt::text::chat::stop_ids(&tok, &w.config);
    let g = Grammars::new(&tok, w.config.vocab_size, &stop).unwrap();
    let schema = &cases()[8].1; // the book: nested object, strings, bounded integer
    let mut s = session(&w);
    let prompt = chat::first_turn(
        chat::DEFAULT_SYSTEM_PROMPT,
        "Describe a famous novel as JSON with keys title, author (first, last) and year.",
    );
    s.prefill(&tok.encode(&prompt).unwrap()).unwrap();
    s.set_constraint(Some(g.json_schema(schema).unwrap()));
    s.set_sampler(SamplerParams::greedy()).unwrap();
    let (mut same, mut differ) = (0, 0);
    let mut out = Vec::new();
    for _ in 0..200 {
        let free = qwenrt_kernels::scalar::argmax(s.logits().unwrap()) as u32;
        let allowed = s.constraint_mut().unwrap().allows(free);
        let t = s.sample().unwrap();
        if allowed {
            assert_eq!(
                t,
                free,
                "step {}: the free greedy token was allowed",
                out.len()
            );
            same += 1;
        } else {
            differ += 1;
        }
        if stop.contains(&t) {
            break;
        }
        out.push(t);
        s.decode_step(t).unwrap();
    }
    let text = tok.decode(&out).unwrap();
    println!("{text}\nfree greedy token allowed at {same} steps, masked at {differ}");
    let v: Value = serde_json::from_str(&text).unwrap();
    schema_check::check(&v, schema, schema).unwrap();
    assert!(same > 10, "too few comparable steps: {same}");
}
