//! `qwenrt_server` over real HTTP: generation (stream and not, batching, prefix reuse, stops,
//! logprobs), disconnects and shutdown.

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;

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
fn a_presence_penalty_shifts_greedy_decoding_by_what_was_generated() {
    let s = Server::start(opts());
    // greedy, with the model's log-probabilities (before penalties) and the top alternative
    let run = |extra: Value| {
        let mut body = json!({"prompt": "one two one two", "temperature": 0, "max_tokens": 24,
            "logprobs": 1});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 200, "{v}");
        let lp = v["choices"][0]["logprobs"].clone();
        let tokens: Vec<String> = lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        (tokens, lp)
    };
    let (plain, _) = run(json!({}));
    assert_eq!(
        run(json!({"presence_penalty": 0, "frequency_penalty": 0})).0,
        plain
    );
    // The tiny model's greedy text never repeats a token, so a positive penalty would change
    // nothing; a negative one rewards the tokens generated so far.
    let (boosted, lp) = run(json!({"presence_penalty": -2}));
    assert_ne!(boosted, plain);
    // identical up to the first token the penalty made win, which had been generated before
    let d = (0..plain.len().min(boosted.len()))
        .find(|&i| plain[i] != boosted[i])
        .unwrap();
    assert!(
        d > 0 && boosted[..d].contains(&boosted[d]),
        "diverged at {d} on a token not generated before: {plain:?} vs {boosted:?}"
    );
    // there the model itself still ranks plain's token first, by at most the penalty
    let top = lp["top_logprobs"][d].as_object().unwrap();
    let best = top[&plain[d]].as_f64().unwrap();
    let chosen = lp["token_logprobs"][d].as_f64().unwrap();
    assert!(
        best > chosen && best - chosen <= 2.0 + 1e-4,
        "{best} vs {chosen}"
    );
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

#[test]
fn prompt_lookup_leaves_greedy_completions_unchanged() {
    // prompts that repeat, so drafts are found; several at once, so drafted rows share steps
    // with other requests' decode rows and prompt chunks
    let bodies: Vec<Value> = (0..4)
        .map(|i| {
            let line = format!("item {i} = [1, 2, 3, 4, 5, 6, 7, 8]\n");
            json!({"prompt": line.repeat(6 + i), "temperature": 0, "max_tokens": 40 + 8 * i})
        })
        .collect();
    let run = |lookup: usize| {
        let s = Arc::new(Server::start(ServerOptions {
            lookup,
            max_queue: 8,
            ..opts()
        }));
        let handles: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| {
                let s = s.clone();
                std::thread::spawn(move || post(&s, "/v1/completions", &b))
            })
            .collect();
        let out: Vec<Value> = handles
            .into_iter()
            .map(|h| {
                let (code, v) = h.join().unwrap();
                assert_eq!(code, 200, "{v}");
                json!([v["choices"][0]["text"], v["usage"]["completion_tokens"]])
            })
            .collect();
        let drafted = metric(&s, "qwenrt_lookup_drafted_tokens_total");
        let accepted = metric(&s, "qwenrt_lookup_accepted_tokens_total");
        (out, drafted, accepted)
    };
    let (plain, d0, _) = run(0);
    // the comparison's premise: the same requests give the same completions run to run
    let (again, _, _) = run(0);
    assert_eq!(again, plain, "plain decoding twice");
    let (looked, drafted, accepted) = run(8);
    assert_eq!(looked, plain);
    assert_eq!(d0, 0.0);
    assert!(drafted > 0.0, "no drafts on repeating prompts");
    assert!(accepted <= drafted);
    eprintln!("drafted {drafted}, accepted {accepted}");
}
