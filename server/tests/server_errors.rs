//! `qwenrt_server` over real HTTP: every refusal in OpenAI's error shape (validation naming
//! the field, malformed bodies, unknown routes and methods, the body limit, the API key,
//! timeouts) and the small endpoints.

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;

#[test]
fn bad_requests_get_openai_errors_naming_the_field() {
    let s = Server::start(ServerOptions { ctx: 64, ..opts() });
    let chat = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let long = "word ".repeat(100);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}),
            "messages",
        ),
        ("/v1/chat/completions", json!({}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 2.5})),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            "temperature",
        ),
        ("/v1/chat/completions", chat(json!({"top_p": 1.5})), "top_p"),
        (
            "/v1/chat/completions",
            chat(json!({"frequency_penalty": 2.5})),
            "frequency_penalty",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"presence_penalty": -3})),
            "presence_penalty",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        ("/v1/chat/completions", chat(json!({"stop": 3})), "stop"),
        ("/v1/chat/completions", chat(json!({"n": 5})), "n"),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 60})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 1000})),
            "max_completion_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stream": "yes"})),
            "stream",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": long}]})),
            "messages",
        ),
        ("/v1/completions", json!({"prompt": long}), "prompt"),
        ("/v1/completions", json!({}), "prompt"),
        (
            "/v1/completions",
            json!({"prompt": [1, 999999999]}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 50}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "seed": "s"}),
            "seed",
        ),
        ("/detokenize", json!({"tokens": ["a"]}), "tokens"),
        ("/tokenize", json!({"prompt": 1}), "prompt"),
    ];
    for (path, body, param) in cases {
        let (code, v) = post(&s, path, &body);
        assert_eq!(code, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"], param, "{path} {body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // the context message gives both counts
    let (_, v) = post(&s, "/v1/completions", &json!({"prompt": long}));
    let msg = v["error"]["message"].as_str().unwrap();
    let (_, t) = post(&s, "/tokenize", &json!({"prompt": long}));
    let n = t["count"].as_u64().unwrap();
    assert!(n > 64);
    assert!(
        msg.contains("64 tokens") && msg.contains(&format!("{n} tokens")),
        "{msg}"
    );
    // malformed JSON, a non-object body
    for body in ["{\"messages\": [", "[1,2]", ""] {
        let (code, text) = post_raw(&s, "/v1/chat/completions", body, None);
        assert_eq!(code, 400, "{body}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]["message"].is_string());
    }
    // unknown fields are ignored
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 2, "frobnicate": {"a": 1}})),
    );
    assert_eq!(code, 200, "{v}");
    // the server still answers after all that
    assert_eq!(get(&s, "/health").0, 200);
}

#[test]
fn routes_methods_and_body_limit_answer_in_the_error_shape() {
    let s = Server::start(ServerOptions {
        max_body_bytes: 1024,
        ..opts()
    });
    let (code, text) = get(&s, "/v1/nothing");
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].is_string());
    let (code, text) = get(&s, "/v1/chat/completions");
    assert_eq!(code, 405);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["code"],
        "method_not_allowed"
    );
    // small enough that hyper has read all of it with the headers: the 413 cannot be lost to
    // a reset over unread bytes
    let big = json!({"prompt": "a".repeat(2048)}).to_string();
    let (code, text) = post_raw(&s, "/v1/completions", &big, None);
    assert_eq!(code, 413, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["code"],
        "payload_too_large"
    );

    let (code, v) = post(&s, "/tokenize", &json!({"prompt": "hello world"}));
    assert_eq!(code, 200);
    let tokens = v["tokens"].clone();
    assert_eq!(
        v["count"].as_u64(),
        tokens.as_array().map(|a| a.len() as u64)
    );
    let (code, v) = post(&s, "/detokenize", &json!({"tokens": tokens}));
    assert_eq!((code, v["prompt"].as_str()), (200, Some("hello world")));
    let (code, text) = get(&s, "/v1/models");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"][0]["id"],
        "test-model"
    );
    let (_, text) = get(&s, "/metrics");
    assert!(
        text.contains("qwenrt_requests_total{status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("qwenrt_requests_total{status=\"413\"} 1"));
}

#[test]
fn api_key_is_required_when_set() {
    let s = Server::start(ServerOptions {
        api_key: Some("sekrit".into()),
        ..opts()
    });
    let body = chat_body("hi", 2).to_string();
    for key in [None, Some("wrong"), Some("sekri")] {
        let (code, text) = post_raw(&s, "/v1/chat/completions", &body, key);
        assert_eq!(code, 401, "{key:?}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    assert_eq!(get(&s, "/v1/models").0, 401);
    assert_eq!(get(&s, "/health").0, 200);
    let (code, text) = post_raw(&s, "/v1/chat/completions", &body, Some("sekrit"));
    assert_eq!(code, 200, "{text}");
    // llama-server's header works too
    let r = agent()
        .post(&format!("{}/v1/chat/completions", s.base))
        .set("Content-Type", "application/json")
        .set("X-Api-Key", "sekrit")
        .send_string(&body);
    assert_eq!(answer(r).0, 200);
    let r = agent()
        .post(&format!("{}/v1/chat/completions", s.base))
        .set("X-Api-Key", "wrong")
        .send_string(&body);
    assert_eq!(answer(r).0, 401);
}

#[test]
fn llama_server_conventions() {
    let s = Server::start(opts());
    // the OpenAI routes without the /v1 prefix
    let (code, v) = post(&s, "/chat/completions", &chat_body("hi", 2));
    assert_eq!(
        (code, v["object"].as_str()),
        (200, Some("chat.completion")),
        "{v}"
    );
    let (code, v) = post(&s, "/completions", &json!({"prompt": "a", "max_tokens": 2}));
    assert_eq!(
        (code, v["object"].as_str()),
        (200, Some("text_completion")),
        "{v}"
    );
    assert_eq!(get(&s, "/models").0, 200);
    // /tokenize with `content` and `with_pieces`; /detokenize answers `content`
    let (code, v) = post(
        &s,
        "/tokenize",
        &json!({"content": "hello wörld", "with_pieces": true}),
    );
    assert_eq!(code, 200, "{v}");
    let pieces = v["tokens"].as_array().unwrap();
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for p in pieces {
        ids.push(p["id"].clone());
        match &p["piece"] {
            Value::String(t) => bytes.extend_from_slice(t.as_bytes()),
            Value::Array(b) => bytes.extend(b.iter().map(|x| x.as_u64().unwrap() as u8)),
            other => panic!("piece {other}"),
        }
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), "hello wörld");
    let (code, v) = post(&s, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(
        (code, v["content"].as_str()),
        (200, Some("hello wörld")),
        "{v}"
    );
    let (code, v) = post(&s, "/tokenize", &json!({"content": 5}));
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("content")),
        "{v}"
    );
    let (code, v) = post(
        &s,
        "/tokenize",
        &json!({"content": "x", "with_pieces": "yes"}),
    );
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("with_pieces")),
        "{v}"
    );
}

#[test]
fn a_request_past_its_timeout_fails_with_408() {
    let s = Server::start(ServerOptions {
        request_timeout: Some(Duration::from_millis(1)),
        ..opts()
    });
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "count: 1 2 3", "max_tokens": 400}),
    );
    assert_eq!(code, 408, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    wait_for("the sequence to leave", || {
        metric(&s, "qwenrt_active_sequences") == 0.0
    });
}

#[test]
fn past_the_queue_requests_get_503_with_retry_after() {
    let s = Server::start(ServerOptions {
        parallel: 1,
        max_queue: 1,
        ..opts()
    });
    let long =
        json!({"prompt": "count: 1 2 3", "max_tokens": 400, "stream": true, "temperature": 0.7});
    let open = |s: &Server| {
        let r = agent()
            .post(&format!("{}/v1/completions", s.base))
            .send_string(&long.to_string())
            .unwrap();
        BufReader::new(r.into_reader())
    };
    let mut running = open(&s);
    let mut line = String::new();
    running.read_line(&mut line).unwrap();
    // the second waits in the queue (its response headers come once it runs; don't wait)
    let base = s.base.clone();
    let queued = std::thread::spawn(move || {
        let body = json!({"prompt": "x", "max_tokens": 1});
        agent()
            .post(&format!("{base}/v1/completions"))
            .send_string(&body.to_string())
            .map(|r| r.status())
            .ok()
    });
    wait_for("the queue to fill", || {
        metric(&s, "qwenrt_queue_depth") == 1.0
    });
    let (code, retry) = post_header(
        &s,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
        "retry-after",
    );
    assert_eq!((code, retry.as_deref()), (503, Some("1")));
    assert_eq!(metric(&s, "qwenrt_requests_rejected_total"), 1.0);
    drop(running);
    assert_eq!(queued.join().unwrap(), Some(200));
}

#[test]
fn cors_answers_preflights_and_names_allowed_origins_only() {
    let s = Server::start(ServerOptions {
        api_key: Some("sekrit".into()),
        cors_origins: vec!["http://app.example".into()],
        ..opts()
    });
    let url = format!("{}/v1/chat/completions", s.base);
    // a preflight from the allowed origin: 200 without the key, the methods and headers
    let r = agent()
        .request("OPTIONS", &url)
        .set("Origin", "http://app.example")
        .set("Access-Control-Request-Method", "POST")
        .set(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("http://app.example")
    );
    assert!(r
        .header("Access-Control-Allow-Methods")
        .unwrap()
        .contains("POST"));
    assert!(r
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("Authorization"));
    // the request itself carries the origin back
    let r = agent()
        .post(&url)
        .set("Origin", "http://app.example")
        .set("Authorization", "Bearer sekrit")
        .send_string(&chat_body("hi", 2).to_string())
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("http://app.example")
    );
    // another origin: no CORS headers; its preflight is answered without them (as
    // llama-server does), so the browser stops there
    let r = agent()
        .post(&url)
        .set("Origin", "http://evil.example")
        .set("Authorization", "Bearer sekrit")
        .send_string(&chat_body("hi", 2).to_string())
        .unwrap();
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    let r = agent()
        .request("OPTIONS", &url)
        .set("Origin", "http://evil.example")
        .set("Access-Control-Request-Method", "POST")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    assert_eq!(r.header("Access-Control-Allow-Methods"), None);
}
