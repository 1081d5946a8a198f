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
    // out of range, past the vocabulary: 400 naming the field
    for bad in [json!({"5": 150}), json!({"999999": 1}), json!("x")] {
        let body = json!({"prompt": "x", "max_tokens": 1, "logit_bias": bad});
        let (code, v) = post(&s, "/v1/completions", &body);
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["param"], json!("logit_bias"), "{v}");
    }
}
