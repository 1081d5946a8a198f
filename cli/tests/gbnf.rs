//! llama.cpp's GBNF grammars through `Grammars::gbnf` over the real tokenizer: llama.cpp's own
//! grammars (tests/fixtures/gbnf, MIT, see its README) compile and accept and reject what they
//! should; grammars where a greedy lexer would go wrong match character by character, as
//! llama.cpp does; bad grammars are refused with the line and column. Over HTTP, on the tiny
//! model: llama-server's `grammar` field constrains chat and completions answers, and a bad
//! one is a 400 naming `grammar` while the server keeps serving.

#[path = "../../server/tests/support/server_kit.rs"]
mod kit;

use kit::{json, opts, post, post_stream, Server, Value};
use qwenrt::engine::constraint::{Constraint, ConstraintError};
use qwenrt::testkit::fuzzing::{grammars, tokenizer};

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gbnf")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn compile(src: &str) -> Constraint {
    grammars()
        .gbnf(src)
        .unwrap_or_else(|e| panic!("{e}\n{src}"))
}

/// Whether the grammar accepts `text` in full: every token of it allowed and committed, and
/// the grammar complete at the end.
fn accepts(src: &str, text: &str) -> bool {
    let mut c = compile(src);
    for t in tokenizer().encode(text).unwrap() {
        if !c.allows(t) || c.commit(t).is_err() {
            return false;
        }
    }
    c.is_accepting()
}

fn check(src: &str, good: &[&str], bad: &[&str]) {
    for g in good {
        assert!(accepts(src, g), "should accept {g:?}\n{src}");
    }
    for b in bad {
        assert!(!accepts(src, b), "should reject {b:?}\n{src}");
    }
}

#[test]
fn llama_cpp_json_grammar() {
    check(
        &fixture("json.gbnf"),
        &[
            "{}",
            "{\"a\": 1}",
            "{\"a\": [1, -2.5e3, true, null, \"x\\n\\u00e9\"], \"b\": {\"c\": {}}}",
            "{\n  \"k\": \"v\"\n}",
        ],
        &[
            "[1]",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": tru}",
            "{\"a\": \"\\q\"}",
            "{'a': 1}",
            "{\"a\": 1",
        ],
    );
}

#[test]
fn llama_cpp_arithmetic_list_chess_japanese_grammars() {
    check(
        &fixture("arithmetic.gbnf"),
        // `ws` may take the line break the rule needs next: only a parser that tries both
        // (not a greedy lexer) accepts these
        &["a=b\n", "(x1 +2)*y = 3\n", "a = b\nc=d\n"],
        &["a=b", "A=b\n", "a==b\n", "=b\n"],
    );
    check(
        &fixture("list.gbnf"),
        &["- milk\n", "- milk\n- eggs and ham\n"],
        &["- \n", "* milk\n", "- milk", "- a\u{2028}b\n"],
    );
    check(
        &fixture("chess.gbnf"),
        &[
            "1. e4 e5\n2. Nf3 Nc6\n",
            "1. d4 d5\n2. c4 dxc4\n3. O-O-O Qxd8+\n",
        ],
        &["1. e4 e5\n", "1. e9 e5\n2. a3 a4\n", "2. e4 e5\n3. a3 a4\n"],
    );
    check(
        &fixture("japanese.gbnf"),
        &["こんにちは", "こんにちは 世界\tカタカナ"],
        &["hello", "こんにちは  世界", ""],
    );
}

#[test]
fn matching_is_per_character_as_in_llama_cpp() {
    // a class run that could also take the next literal
    check(
        "root ::= [a-z]* \"x\"",
        &["x", "abcx", "xxx"],
        &["abc", "xa"],
    );
    // an alternative that is a prefix of another
    check(
        "root ::= (\"a\" | \"ab\") \"bc\"",
        &["abc", "abbc"],
        &["ab", "abcc"],
    );
    // repetition counts, `.`, negated classes and escapes
    check("root ::= \"a\"{5,5}", &["aaaaa"], &["aaaa", "aaaaaa", "b"]);
    check(
        "root ::= ab{2,} \"-\" ab{0,1} \"|\" .? [^\\x41-\\x43\\n]\nab ::= \"ab\"",
        &["abab-|D", "ababab-ab|zZ", "abab-|\u{1F600}"],
        &["ab-|D", "abab-abab|D", "abab-|B", "abab-|\n"],
    );
    // dashed rule names, upper case, comments, a newline after `|`
    check(
        "# greeting\nroot ::= Say-hi |\n  say-bye # either\nSay-hi ::= \"hi\"\nsay-bye ::= \"\\u0062ye\"",
        &["hi", "bye"],
        &["hibye", "Hi"],
    );
}

#[test]
fn bad_grammars_name_the_line_and_column() {
    for (src, want) in [
        (
            "root ::= \"a\"\nitem ::= [a-",
            "line 2, column 13: unexpected end",
        ),
        (
            "root ::= x",
            "line 1, column 10: the rule 'x' is used but not defined",
        ),
        ("item ::= \"a\"", "no 'root' rule"),
        ("root ::= \"a\"{3,2}", "maximum below its minimum"),
    ] {
        match grammars().gbnf(src) {
            Err(
                e @ ConstraintError::Invalid {
                    what: "GBNF grammar",
                    ..
                },
            ) => {
                assert!(e.to_string().contains(want), "{src:?}: {e}")
            }
            other => panic!("{src:?}: {other:?}"),
        }
    }
    // a grammar that parses but derives nothing is refused by the compiler, not at a sample
    assert!(grammars().gbnf("root ::= root").is_err());
}

fn content(v: &Value) -> &str {
    let c = &v["choices"][0];
    c.get("text")
        .or_else(|| c["message"].get("content"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text in {v}"))
}

#[test]
fn http_grammar_field_constrains_chat_and_completions() {
    let s = Server::start(opts());
    let five_a = "root ::= \"a\"{5,5}";
    let chat = |extra: Value| {
        let mut b = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "max_tokens": 6});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let completion = |extra: Value| {
        let mut b = json!({"model": "x", "prompt": "Once upon", "temperature": 0,
            "max_tokens": 6});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (path, body) in [
        ("/v1/chat/completions", chat(json!({"grammar": five_a}))),
        ("/v1/completions", completion(json!({"grammar": five_a}))),
    ] {
        let (code, v) = post(&s, path, &body);
        assert_eq!(code, 200, "{path}: {v}");
        assert_eq!(content(&v), "aaaaa", "{path}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{path}: {v}");
        // sampled too: the grammar holds whatever the seed
        let mut sampled = body.clone();
        sampled["temperature"] = json!(1.0);
        sampled["seed"] = json!(9);
        let (code, v) = post(&s, path, &sampled);
        assert_eq!((code, content(&v)), (200, "aaaaa"), "{path}: {v}");
    }
    // streamed: the deltas add up to the same
    let mut streamed = chat(json!({"grammar": five_a}));
    streamed["stream"] = json!(true);
    let text: String = post_stream(&s, "/v1/chat/completions", &streamed)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "aaaaa");
    // an empty grammar is none (llama-server's default): the answer is the plain one
    let (_, plain) = post(&s, "/v1/completions", &completion(json!({})));
    let (code, v) = post(&s, "/v1/completions", &completion(json!({"grammar": ""})));
    assert_eq!((code, content(&v)), (200, content(&plain)));

    // bad grammars and bad combinations: 400 naming `grammar`, and what is wrong
    for (path, body, want) in [
        (
            "/v1/chat/completions",
            chat(json!({"grammar": "root ::= \"a"})),
            "line 1, column 12: unterminated string",
        ),
        (
            "/v1/completions",
            completion(json!({"grammar": "root ::= item"})),
            "the rule 'item' is used but not defined",
        ),
        (
            "/v1/completions",
            completion(json!({"grammar": 5})),
            "must be a string",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"grammar": five_a, "response_format": {"type": "json_object"}})),
            "'grammar' or 'response_format'",
        ),
        (
            "/v1/completions",
            completion(json!({"grammar": five_a, "json_schema": {"type": "object"}})),
            "'grammar' or 'json_schema'",
        ),
    ] {
        let (code, v) = post(&s, path, &body);
        assert_eq!(code, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"], "grammar", "{path} {body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{path} {body}: {msg}");
    }
    // the server still serves
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &chat(json!({"grammar": five_a})),
    );
    assert_eq!((code, content(&v)), (200, "aaaaa"), "{v}");
}

/// `qwenrt generate --gbnf FILE` on the tiny model (512 logits, byte-level tokens): the answer
/// is one the grammar derives; a bad file is an `error:` naming the flag, the file and the
/// line, with exit status 2.
#[test]
fn generate_gbnf_flag() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let dir = std::env::temp_dir().join(format!("qwenrt-gbnf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("tiny-qwen2-f32").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures.join("qwen2.5-coder-0.5b/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("yn.gbnf"),
        "root ::= answer \"!\"\nanswer ::= \"yes\" | \"no\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.gbnf"),
        "root ::= answer\nanswer ::= (\"yes\"\n",
    )
    .unwrap();
    let run = |file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qwenrt"))
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
                "20",
                "--json",
            ])
            .args(["--gbnf", dir.join(file).to_str().unwrap(), "a"])
            .output()
            .unwrap()
    };
    let out = run("yn.gbnf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ["yes!", "no!"].contains(&v["text"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(v["stats"]["constraint"]["kind"], "GBNF grammar", "{v}");
    assert_eq!(v["stats"]["constraint"]["complete"], true, "{v}");
    let out = run("bad.gbnf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in ["--gbnf", "bad.gbnf", "line 3, column 1", "expected ')'"] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
