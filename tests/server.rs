//! `qwenrt::server` over real HTTP: a synthetic model (the real tokenizer's vocabulary size,
//! tiny layers) served on an ephemeral port, driven with a blocking HTTP client.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::server::{run_on, ServerError, ServerOptions};
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
        let dir = std::env::temp_dir().join(format!("qwenrt-server-{}", std::process::id()));
        write_synthetic_model(&dir, SHAPE, Dtype::BF16, 5).unwrap();
        Arc::new(Weights::load(&dir).unwrap())
    })
    .clone()
}

fn tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
    Tokenizer::from_file(&p).unwrap()
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    fn start(opts: ServerOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let w = weights();
        let handle = std::thread::spawn(move || {
            run_on(
                listener,
                w,
                tokenizer(),
                "test-model".into(),
                opts,
                async move {
                    let _ = rx.await;
                },
            )
        });
        let s = Server {
            base,
            stop: Some(stop),
            handle: Some(handle),
        };
        let t = Instant::now();
        while get(&s, "/health").0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn shutdown(&mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn opts() -> ServerOptions {
    ServerOptions {
        port: 0,
        parallel: 4,
        ctx: 512,
        threads: 1,
        prefill_chunk: 32,
        shutdown_grace: Duration::from_secs(20),
        ..ServerOptions::default()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn get(s: &Server, path: &str) -> (u16, String) {
    match agent().get(&format!("{}{path}", s.base)).call() {
        Err(ureq::Error::Transport(_)) => (0, String::new()),
        r => answer(r),
    }
}

fn post_raw(s: &Server, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent()
        .post(&format!("{}{path}", s.base))
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    answer(req.send_string(body))
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = post_raw(s, path, &body.to_string(), None);
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of a streamed request, `[DONE]` included.
fn post_stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let r = agent()
        .post(&format!("{}{path}", s.base))
        .send_string(&body.to_string())
        .unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    BufReader::new(r.into_reader())
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

fn chat_body(user: &str, max_tokens: usize) -> Value {
    json!({"model": "x", "messages": [{"role": "user", "content": user}],
        "temperature": 0, "max_tokens": max_tokens})
}

fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = get(s, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .parse()
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stream_equals_non_stream_at_temperature_zero() {
    let s = Server::start(opts());
    for (path, mut body) in [
        ("/v1/chat/completions", chat_body("Tell me a story", 16)),
        (
            "/v1/completions",
            json!({"prompt": "def fib(n):", "temperature": 0, "max_tokens": 16}),
        ),
    ] {
        let (code, full) = post(&s, path, &body);
        assert_eq!(code, 200, "{full}");
        let choice = &full["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .or(choice["text"].as_str())
            .unwrap()
            .to_string();
        let usage = &full["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 3);
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=16).contains(&completion));
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + completion
        );

        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let data = post_stream(&s, path, &body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let mut streamed = String::new();
        let mut finish = None;
        for c in &chunks[..chunks.len() - 1] {
            let ch = &c["choices"][0];
            streamed.push_str(
                ch["delta"]["content"]
                    .as_str()
                    .or(ch["text"].as_str())
                    .unwrap_or(""),
            );
            if !ch["finish_reason"].is_null() {
                finish = ch["finish_reason"].as_str().map(str::to_string);
            }
        }
        assert_eq!(streamed, text, "{path}");
        assert_eq!(finish.as_deref(), choice["finish_reason"].as_str());
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"]["completion_tokens"].as_u64(),
            Some(completion)
        );
        if path.contains("chat") {
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        }
    }
}

#[test]
fn concurrent_requests_equal_the_same_requests_one_by_one() {
    let s = Server::start(ServerOptions {
        max_queue: 8,
        ..opts()
    });
    let bodies: Vec<Value> = (0..8)
        .map(|i| {
            // different lengths, so prefill chunks and decode rows mix in steps
            chat_body(&format!("request {i}: {}", "word ".repeat(i * 7)), 10 + i)
        })
        .collect();
    let one_by_one: Vec<Value> = bodies
        .iter()
        .map(|b| post(&s, "/v1/chat/completions", b).1["choices"][0].clone())
        .collect();
    let s = Arc::new(s);
    let together: Vec<Value> = bodies
        .iter()
        .cloned()
        .map(|b| {
            let s = s.clone();
            std::thread::spawn(move || post(&s, "/v1/chat/completions", &b))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| {
            let (code, v) = h.join().unwrap();
            assert_eq!(code, 200, "{v}");
            v["choices"][0].clone()
        })
        .collect();
    assert_eq!(together, one_by_one);
    assert!(metric(&s, "qwenrt_engine_steps_total") > 0.0);
}

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
            json!({"messages": [{"role": "tool", "content": "x"}]}),
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
        ("/v1/chat/completions", chat(json!({"n": 2})), "n"),
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
        max_body_bytes: 32 << 10,
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
    let big = json!({"prompt": "a".repeat(80 << 10)}).to_string();
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
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    let s = Server::start(ServerOptions {
        parallel: 1,
        max_queue: 0,
        ..opts()
    });
    let body =
        json!({"prompt": "count: 1 2 3", "max_tokens": 400, "stream": true, "temperature": 0.7});
    let r = agent()
        .post(&format!("{}/v1/completions", s.base))
        .send_string(&body.to_string())
        .unwrap();
    let mut reader = BufReader::new(r.into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: {"), "{line}");
    // it is running: the one slot is taken and the queue holds nothing, so another is refused
    let (code, text) = post_raw(
        &s,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}).to_string(),
        None,
    );
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("queue"));
    drop(reader);
    wait_for("the sequence to be cancelled", || {
        metric(&s, "qwenrt_active_sequences") == 0.0
    });
    assert_eq!(metric(&s, "qwenrt_requests_cancelled_total"), 1.0);
    assert!(metric(&s, "qwenrt_completion_tokens_total") < 400.0);
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(code, 200, "{v}");
}

#[test]
fn shutdown_lets_running_streams_finish_then_returns_ok() {
    let mut s = Server::start(opts());
    let base = s.base.clone();
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0, "stream": true});
    let client = std::thread::spawn(move || {
        let r = agent()
            .post(&format!("{base}/v1/completions"))
            .send_string(&body.to_string())
            .unwrap();
        BufReader::new(r.into_reader())
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect::<Vec<_>>()
    });
    wait_for("the stream to start", || {
        metric(&s, "qwenrt_active_sequences") == 1.0
    });
    s.shutdown().expect("run returns Ok");
    let data = client.join().unwrap();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        finish["choices"][0]["finish_reason"].is_string(),
        "{finish}"
    );
    // nothing listens any more
    assert_eq!(get(&s, "/health").0, 0);
}

#[test]
fn the_next_chat_turn_reuses_the_cached_prefix() {
    let s = Server::start(opts());
    let turn1 = json!({"messages": [{"role": "user", "content": "What is a monad?"}],
        "temperature": 0, "max_tokens": 8});
    let (code, v1) = post(&s, "/v1/chat/completions", &turn1);
    assert_eq!(code, 200);
    let reply = v1["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let reused_before = metric(&s, "qwenrt_prompt_tokens_reused_total");
    let turn2 = json!({"messages": [{"role": "user", "content": "What is a monad?"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "Shorter, please."}],
        "temperature": 0, "max_tokens": 8});
    let (code, v2) = post(&s, "/v1/chat/completions", &turn2);
    assert_eq!(code, 200, "{v2}");
    let prompt = v2["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let first = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= first && cached < prompt,
        "cached {cached} of {prompt} (turn 1: {first})"
    );
    let reused = metric(&s, "qwenrt_prompt_tokens_reused_total") - reused_before;
    assert_eq!(reused, cached as f64);
}

#[test]
fn stop_strings_logprobs_and_metrics() {
    let s = Server::start(opts());
    let body = json!({"prompt": "The list: a, b, c,", "temperature": 0, "max_tokens": 24});
    let (_, v) = post(&s, "/v1/completions", &body);
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(
        chars.len() >= 6,
        "too little output to test stops: {text:?}"
    );
    let stop: String = chars[3..5].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut b = body.clone();
        b["stop"] = json!(["\u{1}never", stop]);
        b["stream"] = json!(stream);
        let got = if stream {
            post_stream(&s, "/v1/completions", &b)
                .iter()
                .filter(|d| *d != "[DONE]")
                .map(|d| {
                    serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect::<String>()
        } else {
            let (_, v) = post(&s, "/v1/completions", &b);
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            v["choices"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(got, cut, "stream {stream}");
    }

    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}],
        "temperature": 0, "max_tokens": 4, "logprobs": true, "top_logprobs": 3}),
    );
    assert_eq!(code, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for c in content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lp = c["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        // greedy: the chosen token is the most likely one
        assert_eq!(top[0]["token"], c["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-4);
        assert!(top[1]["logprob"].as_f64().unwrap() <= lp);
    }
    let (_, text) = get(&s, "/metrics");
    for name in [
        "qwenrt_time_to_first_token_seconds_bucket",
        "qwenrt_inter_token_latency_seconds_count",
        "qwenrt_kv_cache_usage_ratio",
        "qwenrt_queue_depth",
        "qwenrt_prompt_tokens_total",
    ] {
        assert!(text.contains(name), "{name}");
    }
    assert!(metric(&s, "qwenrt_time_to_first_token_seconds_count") >= 4.0);
    assert!(metric(&s, "qwenrt_kv_cache_used_positions") > 0.0);
}
