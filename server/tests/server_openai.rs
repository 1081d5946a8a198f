//! The OpenAI fields of issue 28 over real HTTP: `logit_bias`, `system_fingerprint` and usage,
//! `n > 1`, and `/v1/completions` as scoring tools use it (prompt arrays, `echo`, prompt
//! log-probabilities, `max_tokens: 0`).

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;

/// The text of one token, as the server detokenizes it.
fn piece(s: &Server, id: u32) -> String {
    let (code, v) = post(s, "/detokenize", &json!({"tokens": [id]}));
    assert_eq!(code, 200, "{v}");
    v["content"].as_str().unwrap().to_string()
}

#[test]
fn logit_bias_makes_greedy_pick_a_token_and_bans_another() {
    let s = Server::start(opts());
    let (a, b) = (1000u32, 2000u32);
    let (ta, tb) = (piece(&s, a), piece(&s, b));
    assert_ne!(ta, tb);
    let complete = |bias: Value| {
        let body = json!({"prompt": "one two", "temperature": 0, "max_tokens": 4,
            "logit_bias": bias});
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let plain = complete(Value::Null);
    // +100 on a token: greedy picks it every time, on both endpoints
    assert_eq!(complete(json!({a.to_string(): 100})), ta.repeat(4));
    assert_ne!(plain, ta.repeat(4));
    let mut chat = chat_body("hi", 3);
    chat["logit_bias"] = json!({b.to_string(): 100});
    let (code, v) = post(&s, "/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], json!(tb.repeat(3)));
    // llama-server's array form, and -100 bans: with a and b boosted alike greedy takes one
    // of them; banning that one leaves the other
    let both = complete(json!([[a, 50], [b, 50]]));
    let (first, other) = if both.starts_with(&ta) {
        (a, &tb)
    } else {
        (b, &ta)
    };
    assert!(both.starts_with(&ta) || both.starts_with(&tb), "{both:?}");
    let banned = complete(json!([[a, 50], [b, 50], [first, -100]]));
    assert!(banned.starts_with(other.as_str()), "{banned:?}");
    // the same with a sampling temperature: the ban holds in every mode
    for seed in 0..4 {
        let body = json!({"prompt": "one two", "temperature": 1.5, "max_tokens": 4, "seed": seed,
            "logit_bias": {a.to_string(): 50, b.to_string(): 50, first.to_string(): -100}});
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], json!(other.repeat(4)));
    }
    // a constraint's ban wins over a bias: +100 on a token JSON cannot start with still
    // gives an answer that opens an object
    let body = json!({"prompt": "one two", "temperature": 0, "max_tokens": 4,
        "response_format": {"type": "json_object"}, "logit_bias": {a.to_string(): 100}});
    let (code, v) = post(&s, "/v1/completions", &body);
    assert_eq!(code, 200, "{v}");
    let t = v["choices"][0]["text"].as_str().unwrap();
    assert!(t.trim_start().starts_with('{'), "{ta:?} -> {t:?}");
    // out of range, past the vocabulary: 400 naming the field
    for bad in [json!({"5": 150}), json!({"999999": 1}), json!("x")] {
        let body = json!({"prompt": "x", "max_tokens": 1, "logit_bias": bad});
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["param"], json!("logit_bias"), "{v}");
    }
}

fn texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.get("text")
                .or_else(|| c["message"].get("content"))
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect()
}

fn indices(v: &Value) -> Vec<u64> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect()
}

#[test]
fn system_fingerprint_is_on_every_response_and_chunk() {
    let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let fp = qwenrt_server::system_fingerprint(sha);
    assert_eq!(
        fp,
        format!("qwenrt-{}-0123456789ab", env!("CARGO_PKG_VERSION"))
    );
    let s = Server::start(ServerOptions {
        system_fingerprint: fp.clone(),
        ..opts()
    });
    let chat = chat_body("hi", 3);
    let completion = json!({"prompt": "one", "max_tokens": 3, "temperature": 0});
    for (path, body) in [
        ("/v1/chat/completions", &chat),
        ("/v1/completions", &completion),
    ] {
        let (code, v) = post(&s, path, body);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["system_fingerprint"], json!(fp), "{v}");
        let mut b = body.clone();
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
        let lines = post_stream(&s, path, &b);
        assert!(lines.len() > 3);
        for l in &lines[..lines.len() - 1] {
            let c: Value = serde_json::from_str(l).unwrap();
            assert_eq!(c["system_fingerprint"], json!(fp), "{l}");
        }
    }
}

#[test]
fn n_choices_fork_one_prefill() {
    let s = Server::start(opts());
    let complete = |extra: Value| {
        let mut body = json!({"prompt": "one two three", "max_tokens": 10});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 200, "{v}");
        v
    };
    // greedy: every choice is n = 1's output
    let one = complete(json!({"temperature": 0}));
    let three = complete(json!({"temperature": 0, "n": 3}));
    assert_eq!(indices(&three), vec![0, 1, 2]);
    assert_eq!(texts(&three), vec![texts(&one)[0].clone(); 3]);
    // usage: the prompt once, the completions of all choices
    let (u1, u3) = (&one["usage"], &three["usage"]);
    assert_eq!(u3["prompt_tokens"], u1["prompt_tokens"]);
    assert_eq!(
        u3["completion_tokens"].as_u64().unwrap(),
        3 * u1["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        u3["total_tokens"].as_u64().unwrap(),
        u3["prompt_tokens"].as_u64().unwrap() + u3["completion_tokens"].as_u64().unwrap()
    );
    // sampled with a seed: the choices differ, the whole answer is reproducible, and choice
    // j samples with seed + j (choice 0 is the n = 1 answer of the same seed)
    let sampled = json!({"temperature": 1.0, "seed": 77, "n": 3});
    let a = complete(sampled.clone());
    assert_eq!(texts(&a), texts(&complete(sampled)));
    let t = texts(&a);
    assert!(t[0] != t[1] || t[1] != t[2], "{t:?}");
    for j in 0..3 {
        let alone = complete(json!({"temperature": 1.0, "seed": 77 + j}));
        assert_eq!(texts(&alone)[0], t[j as usize], "choice {j}");
    }
    // chat too
    let mut chat = chat_body("hello", 6);
    let (_, c1) = post(&s, "/v1/chat/completions", &chat);
    chat["n"] = json!(2);
    let (code, c2) = post(&s, "/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{c2}");
    assert_eq!(indices(&c2), vec![0, 1]);
    assert_eq!(texts(&c2), vec![texts(&c1)[0].clone(); 2]);
    // streamed: every chunk names its choice; per choice the text and one finish
    let mut body = json!({"prompt": "one two three", "max_tokens": 10, "temperature": 1.0,
        "seed": 77, "n": 3, "stream": true});
    let lines = post_stream(&s, "/v1/completions", &body);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = vec![String::new(); 3];
    let mut finishes = [0; 3];
    for l in &lines[..lines.len() - 1] {
        let c: Value = serde_json::from_str(l).unwrap();
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        streamed[i].push_str(choice["text"].as_str().unwrap());
        if !choice["finish_reason"].is_null() {
            finishes[i] += 1;
        }
    }
    assert_eq!(streamed, t);
    assert_eq!(finishes, [1, 1, 1]);
    body["n"] = json!(2);
    body["messages"] = json!([{"role": "user", "content": "hello"}]);
    let lines = post_stream(&s, "/v1/chat/completions", &body);
    let idx: std::collections::BTreeSet<u64> = lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["choices"][0]["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(idx.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    // bounded by --parallel (4 here): 400 naming n and the limit
    let (code, v) = post(&s, "/v1/completions", &json!({"prompt": "x", "n": 5}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], json!("n"));
    assert!(v["error"]["message"].as_str().unwrap().contains('4'), "{v}");
    let (code, v) = post(&s, "/v1/completions", &json!({"prompt": "x", "n": 0}));
    assert_eq!((code, &v["error"]["param"]), (400, &json!("n")));
}

#[test]
fn completion_prompts_as_scoring_tools_send_them() {
    let s = Server::start(opts());
    let tok = tokenizer();
    let complete = |body: Value| {
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 200, "{v}");
        v
    };
    let (p0, p1) = ("one two three", "The quick brown fox");
    let alone = |p: &str| {
        texts(&complete(
            json!({"prompt": p, "max_tokens": 6, "temperature": 0}),
        ))[0]
            .clone()
    };
    let (a0, a1) = (alone(p0), alone(p1));
    let (ids0, ids1) = (tok.encode(p0).unwrap(), tok.encode(p1).unwrap());
    // an array of strings, of token-id arrays, or both mixed; with n: index = prompt * n + j
    for prompt in [json!([p0, p1]), json!([ids0, ids1]), json!([ids0, p1])] {
        let v = complete(json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "n": 2}));
        assert_eq!(indices(&v), vec![0, 1, 2, 3]);
        assert_eq!(
            texts(&v),
            vec![a0.clone(), a0.clone(), a1.clone(), a1.clone()]
        );
        assert_eq!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            ids0.len() + ids1.len()
        );
    }
    // a flat array of ids is one prompt
    let v = complete(json!({"prompt": ids0, "max_tokens": 6, "temperature": 0}));
    assert_eq!(texts(&v), vec![a0.clone()]);
    // echo: the prompt's text first
    let v = complete(json!({"prompt": [p0, p1], "max_tokens": 6, "temperature": 0, "echo": true}));
    assert_eq!(texts(&v), vec![format!("{p0}{a0}"), format!("{p1}{a1}")]);
    // max_tokens 0 with echo: the prompt alone; without echo: nothing
    let v = complete(json!({"prompt": p0, "max_tokens": 0, "echo": true}));
    assert_eq!(texts(&v), vec![p0.to_string()]);
    assert_eq!(v["choices"][0]["finish_reason"], json!("length"));
    assert_eq!(v["usage"]["completion_tokens"], json!(0));
    let v = complete(json!({"prompt": p0, "max_tokens": 0}));
    assert_eq!(texts(&v), vec![String::new()]);
    // an empty prompt starts a document (OpenAI's and llama-server's answer is a 200)
    let v = complete(json!({"prompt": "", "max_tokens": 3, "temperature": 0, "echo": true}));
    assert_eq!(v["usage"]["prompt_tokens"], json!(1));
    assert_eq!(v["usage"]["completion_tokens"], json!(3));
    // streamed echo: each choice's first chunk is its prompt
    let lines = post_stream(
        &s,
        "/v1/completions",
        &json!({"prompt": [p0, p1], "max_tokens": 4, "temperature": 0, "echo": true,
            "stream": true}),
    );
    let mut firsts = std::collections::BTreeMap::new();
    for l in &lines[..lines.len() - 1] {
        let c: Value = serde_json::from_str(l).unwrap();
        let ch = &c["choices"][0];
        firsts
            .entry(ch["index"].as_u64().unwrap())
            .or_insert_with(|| ch["text"].as_str().unwrap().to_string());
    }
    assert_eq!(firsts.into_values().collect::<Vec<_>>(), vec![p0, p1]);
    // refused, naming the field
    for (body, param) in [
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [[1, 2], 3]}), "prompt"),
        (json!({"prompt": [{"a": 1}]}), "prompt"),
        (json!({"prompt": [[999999]]}), "prompt[0]"),
        (json!({"prompt": "x", "max_tokens": -1}), "max_tokens"),
        (json!({"prompt": "x", "logprobs": 21}), "logprobs"),
    ] {
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], json!(param), "{body}: {v}");
    }
    let mut chat = chat_body("x", 1);
    chat["max_tokens"] = json!(0);
    let (code, v) = post(&s, "/v1/chat/completions", &chat);
    assert_eq!(
        (code, &v["error"]["param"]),
        (400, &json!("max_tokens")),
        "{v}"
    );
}

/// The server's prompt log-probabilities are the engine's: the log-softmax of the logits a
/// prefill of the same prompt gives (the server runs the same prefill numerics, and its
/// log-sum-exp is summed in f64 there as here, so what is left is each value's f32 rounding:
/// 1e-5 covers it).
#[test]
fn echoed_prompt_logprobs_are_the_engines() {
    use qwenrt::engine::sampler::SamplerParams;
    use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, Want};
    let s = Server::start(opts());
    let tok = tokenizer();
    let prompt = "def add(a, b):\n    return a + b";
    let ids = tok.encode(prompt).unwrap();
    assert!(ids.len() < 32, "one prefill chunk");
    let mut e = Engine::new(
        weights(),
        &EngineOptions {
            ctx: 512,
            max_sequences: 1,
            max_batch_tokens: 64,
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let seq = e.create_sequence(SamplerParams::greedy()).unwrap();
    let mut expected: Vec<Vec<f64>> = Vec::new();
    let feed = Feed {
        seq,
        tokens: &ids,
        numerics: Numerics::Prefill,
        logits: Want::All,
    };
    e.step(&[feed], &mut |_, _, l| expected.push(log_softmax(l)))
        .unwrap();
    let v = {
        let (code, v) = post(
            &s,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 3}),
        );
        assert_eq!(code, 200, "{v}");
        v
    };
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let values = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(tokens.len(), ids.len());
    assert_eq!(values[0], Value::Null);
    assert_eq!(tops[0], Value::Null);
    let text: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(text, prompt);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    for k in 1..ids.len() {
        let want = expected[k - 1][ids[k] as usize];
        let got = values[k].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "token {k}: {got} vs {want}");
        // the 3 alternatives are the 3 most likely, with their values
        let top = tops[k].as_object().unwrap();
        assert_eq!(top.len(), 3, "{top:?}");
        let mut best: Vec<f64> = expected[k - 1].clone();
        best.sort_by(|a, b| b.total_cmp(a));
        let mut got_top: Vec<f64> = top.values().map(|x| x.as_f64().unwrap()).collect();
        got_top.sort_by(|a, b| b.total_cmp(a));
        for (g, w) in got_top.iter().zip(&best) {
            assert!((g - w).abs() < 1e-5, "token {k}: top {g} vs {w}");
        }
        assert_eq!(
            offsets[k] as usize,
            tokens[..k]
                .iter()
                .map(|t| t.as_str().unwrap().len())
                .sum::<usize>()
        );
    }
    // generated tokens follow the prompt's, in one list
    let (_, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 3, "echo": true, "logprobs": 1,
            "temperature": 0}),
    );
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len() + 3);
    for k in 1..ids.len() {
        let got = lp["token_logprobs"][k].as_f64().unwrap();
        assert!((got - expected[k - 1][ids[k] as usize]).abs() < 1e-5);
    }
}

/// A model directory's sha256 (for `system_fingerprint`) is that of its weight files in name
/// order as one stream; other files do not count.
#[test]
fn a_model_directory_is_hashed_by_its_weight_files() {
    use sha2::{Digest, Sha256};
    let dir = std::env::temp_dir().join(format!("qwenrt-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.safetensors"), b"second").unwrap();
    std::fs::write(dir.join("a.safetensors"), b"first").unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let want = hex(&Sha256::digest(b"firstsecond"));
    assert_eq!(qwenrt_cli::hub::model_sha256(&dir).unwrap(), want);
    std::fs::write(dir.join("config.json"), b"{\"x\": 1}").unwrap();
    assert_eq!(qwenrt_cli::hub::model_sha256(&dir).unwrap(), want);
    std::fs::write(dir.join("a.safetensors"), b"First").unwrap();
    assert_ne!(qwenrt_cli::hub::model_sha256(&dir).unwrap(), want);
    // a single file: its own sha256
    let f = dir.join("b.safetensors");
    assert_eq!(
        qwenrt_cli::hub::model_sha256(&f).unwrap(),
        hex(&Sha256::digest(b"second"))
    );
    std::fs::remove_dir_all(&dir).ok();
}
