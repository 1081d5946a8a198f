//! Constrained decoding on a tiny model with Qwen2's vocabulary and the real tokenizer:
//! - what a constrained sequence generates always matches its grammar (JSON schema, regex,
//!   Lark), greedy and sampled, until a stop token;
//! - exactness: wherever the unconstrained greedy token is allowed, the constrained greedy
//!   token is that token;
//! - a constrained and an unconstrained sequence share steps, and the unconstrained one gets
//!   what it gets alone;
//! - bad and hostile grammars are refused with an error naming the fault, or compile in
//!   bounded time; never a panic or a hang.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use qwenrt::engine::constraint::{Constraint, ConstraintError, Grammars};
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, SeqId, Want};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::{Tokenizer, Weights};
use qwenrt_kernels::Dtype;
use serde_json::{json, Value};

const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 151936,
    hidden: 64,
    ffn: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 2048,
    tied: true,
};

fn weights() -> Arc<Weights> {
    static W: OnceLock<Arc<Weights>> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qwenrt-constraint-{}", std::process::id()));
        write_synthetic_model(&dir, SHAPE, Dtype::BF16, 7).unwrap();
        Arc::new(Weights::load(&dir).unwrap())
    })
    .clone()
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
        Tokenizer::from_file(&p).unwrap()
    })
}

fn stop_ids() -> Vec<u32> {
    qwenrt::text::chat::stop_ids(tokenizer(), &weights().config)
}

fn grammars() -> Arc<Grammars> {
    static G: OnceLock<Arc<Grammars>> = OnceLock::new();
    G.get_or_init(|| Arc::new(Grammars::new(tokenizer(), SHAPE.vocab, &stop_ids()).unwrap()))
        .clone()
}

fn engine(sequences: usize) -> Engine {
    let opts = EngineOptions {
        ctx: 512,
        max_sequences: sequences,
        max_batch_tokens: 64,
        threads: 2,
        ..Default::default()
    };
    Engine::new(weights(), &opts).unwrap()
}

fn prompt(i: usize) -> Vec<u32> {
    tokenizer()
        .encode(&format!(
            "<|im_start|>user\nAnswer number {i} in JSON<|im_end|>\n<|im_start|>assistant\n"
        ))
        .unwrap()
}

/// Generates on one sequence until a stop token or `max` tokens; returns the tokens (stop
/// excluded) and whether a stop token ended it.
fn generate(e: &mut Engine, seq: SeqId, prompt: &[u32], max: usize) -> (Vec<u32>, bool) {
    let stop = stop_ids();
    e.step(
        &[Feed {
            seq,
            tokens: prompt,
            numerics: Numerics::Prefill,
            logits: Want::Last,
        }],
        &mut |_, _, _| {},
    )
    .unwrap();
    let mut out = Vec::new();
    for _ in 0..max {
        let t = e.sample(seq).unwrap();
        if stop.contains(&t) {
            return (out, true);
        }
        out.push(t);
        e.step(
            &[Feed {
                seq,
                tokens: &[t],
                numerics: Numerics::Decode,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    (out, false)
}

fn text(ids: &[u32]) -> String {
    tokenizer().decode(ids).unwrap()
}

fn run(c: Constraint, params: SamplerParams, max: usize) -> (String, bool) {
    let mut e = engine(1);
    let seq = e.create_sequence(params).unwrap();
    e.set_constraint(seq, Some(c)).unwrap();
    let (ids, stopped) = generate(&mut e, seq, &prompt(0), max);
    let c = e.constraint_mut(seq).unwrap().unwrap();
    assert!(c.error().is_none(), "constraint failed: {:?}", c.error());
    (text(&ids), stopped)
}

fn sampled(seed: u64) -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..Default::default()
    }
}

#[test]
fn json_schema_output_parses_and_matches() {
    let g = grammars();
    let schema = json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "ok": {"type": "boolean"}
        },
        "required": ["color", "count", "ok"],
        "additionalProperties": false
    });
    for params in [SamplerParams::greedy(), sampled(1), sampled(2), sampled(3)] {
        let (out, stopped) = run(g.json_schema(&schema).unwrap(), params, 200);
        assert!(stopped, "no stop token after 200 tokens: {out:?}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{out}");
        assert!(
            ["red", "green", "blue"].contains(&o["color"].as_str().unwrap()),
            "{out}"
        );
        let n = o["count"].as_i64().unwrap();
        assert!((0..=99).contains(&n), "{out}");
        assert!(o["ok"].is_boolean(), "{out}");
    }
}

#[test]
fn regex_and_lark_outputs_match() {
    let g = grammars();
    let re = regex_lite(r"^[0-9]{3}-[a-z]{2,4}$");
    for params in [SamplerParams::greedy(), sampled(5), sampled(6)] {
        let (out, stopped) = run(g.regex(r"[0-9]{3}-[a-z]{2,4}").unwrap(), params, 50);
        assert!(stopped, "{out:?}");
        assert!(re(&out), "{out:?} does not match");
        let (out, stopped) = run(
            g.lark(r#"start: "yes" | "no" | "maybe: " /[0-9]{1,2}/"#)
                .unwrap(),
            params,
            50,
        );
        assert!(stopped, "{out:?}");
        let ok = out == "yes"
            || out == "no"
            || out.strip_prefix("maybe: ").is_some_and(|d| {
                (1..=2).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
            });
        assert!(ok, "{out:?}");
    }
}

/// `^[0-9]{3}-[a-z]{2,4}$` checked by hand.
fn regex_lite(_: &str) -> impl Fn(&str) -> bool {
    |s: &str| {
        let b = s.as_bytes();
        b.len() >= 6
            && b.len() <= 8
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b'-'
            && b[4..].iter().all(u8::is_ascii_lowercase)
    }
}

/// Where the unconstrained greedy token is allowed, the constrained greedy token is that
/// token; the grammar lets through about half of a random model's choices, so both cases
/// happen many times.
#[test]
fn constrained_greedy_equals_unconstrained_where_allowed() {
    let g = grammars();
    let mut e = engine(1);
    let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
    e.set_constraint(seq, Some(g.regex(r"[a-zA-Z ,.]{1,400}").unwrap()))
        .unwrap();
    let p = prompt(1);
    e.step(
        &[Feed {
            seq,
            tokens: &p,
            numerics: Numerics::Prefill,
            logits: Want::Last,
        }],
        &mut |_, _, _| {},
    )
    .unwrap();
    let (mut same, mut differ) = (0, 0);
    for _ in 0..150 {
        let free = qwenrt_kernels::scalar::argmax(e.logits(seq).unwrap()) as u32;
        let allowed = e.constraint_mut(seq).unwrap().unwrap().allows(free);
        let t = e.sample(seq).unwrap();
        if allowed {
            assert_eq!(t, free, "the unconstrained greedy token was allowed");
            same += 1;
        } else {
            assert_ne!(t, free);
            differ += 1;
        }
        if stop_ids().contains(&t) {
            break;
        }
        e.step(
            &[Feed {
                seq,
                tokens: &[t],
                numerics: Numerics::Decode,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    println!("greedy token allowed {same} times, masked {differ} times");
    assert!(same > 10 && differ > 10, "same {same}, differ {differ}");
}

/// A constrained and an unconstrained sequence stepped together: the unconstrained one gets
/// exactly its tokens alone, the constrained one a valid document.
#[test]
fn constrained_and_free_sequences_share_steps() {
    let g = grammars();
    let alone = {
        let mut e = engine(1);
        let s = e.create_sequence(SamplerParams::greedy()).unwrap();
        generate(&mut e, s, &prompt(2), 40).0
    };
    let mut e = engine(2);
    let free = e.create_sequence(SamplerParams::greedy()).unwrap();
    let held = e.create_sequence(SamplerParams::greedy()).unwrap();
    let schema = json!({"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 1000},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
    }, "required": ["id", "tags"], "additionalProperties": false});
    e.set_constraint(held, Some(g.json_schema(&schema).unwrap()))
        .unwrap();
    let (p_free, p_held) = (prompt(2), prompt(3));
    e.step(
        &[
            Feed {
                seq: free,
                tokens: &p_free,
                numerics: Numerics::Prefill,
                logits: Want::Last,
            },
            Feed {
                seq: held,
                tokens: &p_held,
                numerics: Numerics::Prefill,
                logits: Want::Last,
            },
        ],
        &mut |_, _, _| {},
    )
    .unwrap();
    let stop = stop_ids();
    let (mut out_free, mut out_held) = (Vec::new(), Vec::new());
    let (mut free_on, mut held_on) = (true, true);
    for _ in 0..300 {
        let mut fed = Vec::new();
        if free_on && out_free.len() < alone.len() {
            let t = e.sample(free).unwrap();
            out_free.push(t);
            fed.push((free, t));
        } else {
            free_on = false;
        }
        if held_on {
            let t = e.sample(held).unwrap();
            if stop.contains(&t) {
                held_on = false;
            } else {
                out_held.push(t);
                fed.push((held, t));
            }
        }
        if fed.is_empty() {
            break;
        }
        let rows: Vec<[u32; 1]> = fed.iter().map(|&(_, t)| [t]).collect();
        let feeds: Vec<Feed> = fed
            .iter()
            .zip(&rows)
            .map(|(&(seq, _), r)| Feed {
                seq,
                tokens: r,
                numerics: Numerics::Decode,
                logits: Want::Last,
            })
            .collect();
        e.step(&feeds, &mut |_, _, _| {}).unwrap();
    }
    assert_eq!(out_free, alone, "the unconstrained sequence changed");
    assert!(!held_on, "the JSON document did not end within 300 tokens");
    let doc = text(&out_held);
    let v: Value = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("{e}: {doc:?}"));
    assert!(v["id"].is_u64() && v["tags"].is_array(), "{doc}");
}

/// A constraint attached mid-sequence governs from the next token on; removing it frees the
/// sequence again; release drops it.
#[test]
fn constraint_attaches_mid_sequence_and_detaches() {
    let g = grammars();
    let mut e = engine(1);
    let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
    let (free, _) = generate(&mut e, seq, &prompt(4), 5);
    assert_eq!(free.len(), 5);
    let last = *free.last().unwrap();
    e.step(
        &[Feed {
            seq,
            tokens: &[last],
            numerics: Numerics::Decode,
            logits: Want::Last,
        }],
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(!e.is_constrained(seq).unwrap());
    e.set_constraint(
        seq,
        Some(
            g.lark(r#"start: "<tool_call>" "\n" "{}" "\n" "</tool_call>""#)
                .unwrap(),
        ),
    )
    .unwrap();
    assert!(e.is_constrained(seq).unwrap());
    let mut ids = Vec::new();
    loop {
        let t = e.sample(seq).unwrap();
        if stop_ids().contains(&t) {
            break;
        }
        ids.push(t);
        assert!(ids.len() < 20, "no stop: {:?}", text(&ids));
        e.step(
            &[Feed {
                seq,
                tokens: &[t],
                numerics: Numerics::Decode,
                logits: Want::Last,
            }],
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    assert_eq!(text(&ids), "<tool_call>\n{}\n</tool_call>");
    // <tool_call> is an added, non-special token: the grammar's text allows it
    let tool_call = tokenizer().token_id("<tool_call>").unwrap();
    assert!(ids.contains(&tool_call), "{ids:?}");
    let c = e.set_constraint(seq, None).unwrap().unwrap();
    assert!(c.is_finished() && c.error().is_none());
    let (count, _) = c.mask_stats();
    assert_eq!(count as usize, ids.len() + 1);
    e.set_constraint(seq, Some(g.json_object().unwrap()))
        .unwrap();
    e.release(seq).unwrap();
    let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
    assert!(!e.is_constrained(seq).unwrap());
}

/// A finished grammar allows only stop tokens; a complete but extensible one allows them too.
#[test]
fn finished_grammar_allows_only_stop_tokens() {
    let g = grammars();
    let stop = stop_ids();
    let mut c = g.regex("ab").unwrap();
    assert!(!c.is_accepting());
    for t in tokenizer().encode("ab").unwrap() {
        assert!(c.allows(t));
        c.commit(t).unwrap();
    }
    assert!(c.is_accepting());
    let mask = c.allowed().unwrap();
    let allowed: Vec<u32> = (0..SHAPE.vocab as u32)
        .filter(|&t| mask.is_allowed(t))
        .collect();
    let mut want = stop.clone();
    want.sort();
    assert_eq!(allowed, want);
    let mut c = g.regex("a+").unwrap();
    c.commit(tokenizer().encode("a").unwrap()[0]).unwrap();
    assert!(c.is_accepting() && !c.is_finished());
    let mask = c.allowed().unwrap();
    assert!(stop.iter().all(|&t| mask.is_allowed(t)));
    assert!(mask.is_allowed(tokenizer().encode("aa").unwrap()[0]));
    // a forbidden token is an error, and the constraint stays failed
    let mut c = g.regex("ab").unwrap();
    let b = tokenizer().encode("b").unwrap()[0];
    assert!(!c.allows(b));
    assert!(matches!(c.commit(b), Err(ConstraintError::Matcher(_))));
    assert!(c.error().is_some());
}

fn invalid(r: Result<Constraint, ConstraintError>) -> String {
    match r {
        Err(e @ ConstraintError::Invalid { .. }) => e.to_string(),
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(c) => panic!("expected an error, got {c:?}"),
    }
}

#[test]
fn bad_grammars_are_refused_with_the_fault_named() {
    let g = grammars();
    let cases: Vec<(Result<Constraint, ConstraintError>, &str)> = vec![
        (g.json_schema(&json!({"type": "frobnicate"})), "JSON schema"),
        (g.json_schema(&json!(false)), "accepts no document"),
        (g.json_schema(&json!([1, 2])), "must be a JSON object"),
        (
            g.json_schema(&json!({"$ref": "#/$defs/missing"})),
            "JSON schema",
        ),
        (
            g.json_schema(&json!({"type": "integer", "minimum": 5, "maximum": 1})),
            "JSON schema",
        ),
        // a keyword llguidance cannot enforce is refused, not ignored
        (
            g.json_schema(&json!({"type": "array", "uniqueItems": true})),
            "uniqueItems",
        ),
        (g.regex(""), "empty"),
        (g.regex("(unclosed"), "regex"),
        (g.regex("a{5,2}"), "regex"),
        (g.lark(""), "empty"),
        (g.lark("start: undefined_rule"), "Lark grammar"),
        (g.lark("start: \"a"), "Lark grammar"),
        (g.lark("nostart: \"a\""), "Lark grammar"),
        (
            g.json_schema(&json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})),
            "allows no text",
        ),
    ];
    for (r, want) in cases {
        let msg = invalid(r);
        println!("{msg}");
        assert!(msg.contains(want), "{msg:?} does not name {want:?}");
    }
}

/// Hostile input: each gets an error or a constraint, within a bound far above what a compile
/// takes (this is a hang check, not a speed test).
#[test]
fn hostile_grammars_error_or_compile_in_bounded_time() {
    let g = grammars();
    let bound = Duration::from_secs(20);
    let mut deep = json!({"type": "string"});
    for _ in 0..200 {
        deep = json!({"type": "object", "properties": {"a": deep}, "required": ["a"]});
    }
    let mut deep_array = json!({"type": "integer"});
    for _ in 0..30 {
        deep_array = json!({"type": "array", "items": deep_array});
    }
    let huge_enum: Vec<Value> = (0..20_000).map(|i| json!(format!("value-{i}"))).collect();
    let big_enum: Vec<Value> = (0..2_000).map(|i| json!(format!("v{i}"))).collect();
    let many_props: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (format!("p{i}"), json!({"type": "integer"})))
        .collect();
    let recursive = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}
        }, "required": ["v"]}},
        "$ref": "#/$defs/node"
    });
    let self_ref = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    let mutual = json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    type Compile = Box<dyn Fn() -> Result<Constraint, ConstraintError>>;
    let cases: Vec<(&str, Compile)> = vec![
        (
            "deep object",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&deep)
            }),
        ),
        (
            "deep array",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&deep_array)
            }),
        ),
        (
            "huge enum",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&json!({"enum": huge_enum}))
            }),
        ),
        (
            "big enum",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&json!({"enum": big_enum}))
            }),
        ),
        (
            "many properties",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&json!({"type": "object", "properties": many_props}))
            }),
        ),
        (
            "recursive ref",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&recursive)
            }),
        ),
        (
            "self ref",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&self_ref)
            }),
        ),
        (
            "mutual ref",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&mutual)
            }),
        ),
        (
            "big string bounds",
            Box::new({
                let g = g.clone();
                move || {
                    g.json_schema(
                        &json!({"type": "string", "minLength": 100000, "maxLength": 1000000}),
                    )
                }
            }),
        ),
        (
            "big array bounds",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&json!({"type": "array", "minItems": 100000}))
            }),
        ),
        (
            "pattern blowup",
            Box::new({
                let g = g.clone();
                move || g.json_schema(&json!({"type": "string", "pattern": "^(a|b)*a(a|b){20}$"}))
            }),
        ),
        (
            "giant regex",
            Box::new({
                let g = g.clone();
                move || g.regex(&"(ab|cd)".repeat(100_000))
            }),
        ),
        (
            "counted regex",
            Box::new({
                let g = g.clone();
                move || g.regex("((a{100}){100}){100}")
            }),
        ),
        (
            "regex blowup",
            Box::new({
                let g = g.clone();
                move || g.regex("(a|b)*a(a|b){30}")
            }),
        ),
        (
            "nested regex",
            Box::new({
                let g = g.clone();
                move || g.regex(&format!("{}a{}", "(".repeat(5000), ")".repeat(5000)))
            }),
        ),
        (
            "big lark",
            Box::new({
                let g = g.clone();
                move || {
                    g.lark(
                        &(0..20_000)
                            .map(|i| format!("r{i}: \"x\" r{}\n", i + 1))
                            .collect::<String>(),
                    )
                }
            }),
        ),
        (
            "left-recursive lark",
            Box::new({
                let g = g.clone();
                move || g.lark("start: start start | \"a\"")
            }),
        ),
    ];
    for (name, f) in cases {
        let t0 = Instant::now();
        let r = f();
        let took = t0.elapsed();
        match &r {
            Ok(_) => println!("{name}: compiled in {took:?}"),
            Err(e) => println!("{name}: {e} ({took:?})"),
        }
        assert!(took < bound, "{name} took {took:?}");
        if let Ok(mut c) = r {
            // the first mask is bounded too
            let t0 = Instant::now();
            let m = c.allowed();
            assert!(
                t0.elapsed() < bound,
                "{name}: first mask took {:?}",
                t0.elapsed()
            );
            if let Err(e) = m {
                println!("{name}: first mask: {e}");
            }
        }
    }
}

#[test]
fn grammars_need_a_stop_token_within_the_vocabulary() {
    let t = tokenizer();
    let e = Grammars::new(t, SHAPE.vocab, &[]).unwrap_err();
    assert!(e.to_string().contains("stop token"), "{e}");
    // Qwen2's stop tokens are past a 1000-token model's logits
    let qwen_stops = ["<|im_end|>", "<|endoftext|>"].map(|s| t.token_id(s).unwrap());
    let e = Grammars::new(t, 1000, &qwen_stops).unwrap_err();
    assert!(e.to_string().contains("stop token"), "{e}");
    // a model with fewer logits than the tokenizer has tokens: masks never go past them
    let g = Grammars::new(t, 1000, &[2]).unwrap();
    let mut c = g.regex("[a-z]{1,3}").unwrap();
    let mask = c.allowed().unwrap();
    assert!(mask.len() <= 1024, "a mask of {} entries", mask.len());
    let allowed: Vec<u32> = (0..mask.len() as u32)
        .filter(|&t| mask.is_allowed(t))
        .collect();
    assert!(
        !allowed.is_empty() && allowed.iter().all(|&t| t < 1000),
        "{allowed:?}"
    );
    let mut logits = vec![0.0f32; 1000];
    c.mask_logits(&mut logits).unwrap();
    assert_eq!(
        logits.iter().filter(|l| l.is_finite()).count(),
        allowed.len()
    );
}

#[path = "../../tests/support/schema_check.rs"]
mod schema_check;

/// The schema check the real-model test relies on rejects what it must.
#[test]
fn schema_check_rejects_invalid_documents() {
    let schema = json!({
        "$defs": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
            "xs": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
            "s": {"type": "string", "maxLength": 3},
            "zip": {"$ref": "#/$defs/zip"},
            "u": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}
        },
        "required": ["n", "xs"],
        "additionalProperties": false
    });
    let ok = json!({"n": 3, "xs": ["a"], "s": "abc", "zip": "12345", "u": null});
    schema_check::check(&ok, &schema, &schema).unwrap();
    for bad in [
        json!({"xs": ["a"]}),
        json!({"n": 0, "xs": ["a"]}),
        json!({"n": 1.5, "xs": ["a"]}),
        json!({"n": 1, "xs": []}),
        json!({"n": 1, "xs": ["a", "b", "a"]}),
        json!({"n": 1, "xs": ["c"]}),
        json!({"n": 1, "xs": ["a"], "s": "abcd"}),
        json!({"n": 1, "xs": ["a"], "zip": "1234"}),
        json!({"n": 1, "xs": ["a"], "u": 3}),
        json!({"n": 1, "xs": ["a"], "extra": 1}),
        json!([1]),
    ] {
        assert!(
            schema_check::check(&bad, &schema, &schema).is_err(),
            "{bad} passed"
        );
    }
    // a keyword the check does not know fails it
    let unknown = json!({"type": "string", "format": "date"});
    assert!(schema_check::check(&json!("x"), &unknown, &unknown).is_err());
}

/// The compiler is shared between threads (the server's request handlers compile, the engine
/// thread samples); a constraint moves with its sequence.
#[test]
fn grammars_are_shared_and_constraints_move() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    sync::<Grammars>();
    send::<Constraint>();
    send::<Engine>();
}

/// `qwenrt generate --regex/--json-schema/--grammar` on the tiny model (512 logits, stop token
/// 2): the answer matches, and `--json` reports the constraint.
#[test]
fn generate_flags_constrain_the_answer() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let dir = std::env::temp_dir().join(format!("qwenrt-constraint-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("tiny-qwen2-f32").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures.join("qwen2.5-coder-0.5b/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.join("s.json"), r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": false}"#).unwrap();
    std::fs::write(dir.join("g.lark"), "start: \"yes\" | \"no\"\n").unwrap();
    let run = |flag: &str, value: String| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args([
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--threads",
                "1",
            ])
            .args([
                "--raw",
                "--temperature",
                "0",
                "--max-tokens",
                "60",
                "--json",
                flag,
                &value,
                // one byte-level token, inside the tiny model's 512
                "a",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = run("--regex", "[0-9]{3}-[a-z]{2}".into());
    let text = v["text"].as_str().unwrap();
    let b = text.as_bytes();
    assert!(
        b.len() == 6
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b'-'
            && b[4..].iter().all(u8::is_ascii_lowercase),
        "{text:?}"
    );
    assert_eq!(v["stats"]["stop_reason"], "stop_token", "{v}");
    assert_eq!(v["stats"]["constraint"]["kind"], "regex");
    assert_eq!(v["stats"]["constraint"]["complete"], true);
    let v = run("--json-schema", dir.join("s.json").to_str().unwrap().into());
    let doc: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(doc["n"].as_u64().unwrap() <= 9, "{doc}");
    let v = run("--grammar", dir.join("g.lark").to_str().unwrap().into());
    assert!(["yes", "no"].contains(&v["text"].as_str().unwrap()), "{v}");
    assert!(v["stats"]["constraint"]["masks"].as_u64().unwrap() >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whitespace between JSON tokens is bounded (a model cannot loop on blanks), and a schema
/// embedded in a Lark grammar through `checked_schema` gets the same bounds.
#[test]
fn json_whitespace_is_bounded_and_schemas_embed_in_lark() {
    let g = grammars();
    let t = tokenizer();
    let token =
        |text: &str| (0..t.vocab_size() as u32).find(|&id| t.token_bytes(id) == text.as_bytes());
    let brace = t.encode("{").unwrap()[0];
    let mut c = g.json_object().unwrap();
    c.commit(brace).unwrap();
    // one space, or a line break and an indent of at most 20 blanks; not a run on one line
    assert!(c.allows(token(" ").unwrap()), "a space after {{");
    assert!(c.allows(token("\n").unwrap()), "a line break after {{");
    // (Qwen's pre-tokenizer keeps a line break and the blanks after it apart)
    let mut after_break = c.clone();
    after_break.commit(token("\n").unwrap()).unwrap();
    let blanks =
        |n: usize| token(&" ".repeat(n)).unwrap_or_else(|| panic!("no token of {n} spaces"));
    assert!(after_break.allows(blanks(16)), "an indent of 16");
    after_break.commit(blanks(16)).unwrap();
    assert!(after_break.allows(blanks(4)), "an indent of 20");
    assert!(!after_break.allows(blanks(8)), "an indent of 24");
    for n in [2, 4, 16] {
        assert!(!c.allows(blanks(n)), "{n} blanks on one line after {{");
    }

    let schema = json!({"type": "object", "properties": {"name": {"enum": ["get_weather"]},
        "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false});
    let checked = qwenrt::engine::constraint::checked_schema(&schema).unwrap();
    let mut c = g
        .lark(&format!(
            "start: \"<tool_call>\\n\" %json {checked} \"\\n</tool_call>\""
        ))
        .unwrap();
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    for id in t.encode(text).unwrap() {
        assert!(c.allows(id), "{:?} refused", t.decode(&[id]).unwrap());
        c.commit(id).unwrap();
    }
    assert!(c.is_accepting());
    let mut c = g
        .lark(&format!("start: \"<tool_call>\\n\" %json {checked}"))
        .unwrap();
    let wrong = t.encode("<tool_call>\n{\"name\": \"other").unwrap();
    let ok = wrong
        .iter()
        .take_while(|&&id| {
            let a = c.allows(id);
            if a {
                c.commit(id).unwrap();
            }
            a
        })
        .count();
    assert!(
        ok < wrong.len(),
        "a function name outside the enum was allowed"
    );
}
