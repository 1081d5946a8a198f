//! Nothing silently ignored (issue 28): every request field of OpenAI's chat and completions
//! APIs, sent with a value that would change the answer, has its documented effect or is a 400
//! naming it. Fields that change nothing on a one-model server (`user`, `metadata`, `store`,
//! ...) may be accepted: for those the answer must equal the plain one.

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;
use qwenrt::text::template::{ChatTemplate, TemplateOrigin};

/// The tiny model with Qwen2.5's chat template (it has a tool-call syntax), so `tools` work.
fn server() -> Server {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates/renders.json");
    let renders: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let source = renders["templates"]["Qwen-Qwen2.5-7B-Instruct"]
        .as_str()
        .unwrap();
    let template =
        ChatTemplate::from_source(source, TemplateOrigin::Source, "", "<|im_end|>").unwrap();
    Server::start(ServerOptions {
        chat_template: Arc::new(template),
        ..opts()
    })
}

/// What a field must do.
enum Expect {
    /// 200, and this holds of (the plain answer, this answer).
    Effect(fn(&Value, &Value) -> bool),
    /// 200, and the same answer as without the field (it changes nothing here).
    Same,
    /// 400 naming the field.
    Refused,
}
use Expect::*;

fn text(v: &Value) -> String {
    let c = &v["choices"][0];
    c.get("text")
        .or_else(|| c["message"].get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn tool_calls(v: &Value) -> usize {
    v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map_or(0, Vec::len)
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string",
            "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}])
}

/// Every field of OpenAI's chat completions request (as of the API reference), with a value
/// that would change the answer and what must happen. `stream` and `stream_options` are
/// checked apart (their answer is SSE).
fn chat_fields() -> Vec<(&'static str, Value, Expect)> {
    vec![
        (
            "messages",
            json!({"messages": [{"role": "user", "content": "something else"}]}),
            Effect(|p, v| text(p) != text(v)),
        ),
        ("model", json!({"model": "any-name"}), Same),
        (
            "frequency_penalty",
            json!({"frequency_penalty": -2, "max_tokens": 24}),
            Effect(|p, v| !text(p).is_empty() && text(p) != text(v)),
        ),
        (
            "presence_penalty",
            json!({"presence_penalty": -2, "max_tokens": 24}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "logit_bias",
            json!({"logit_bias": {"1000": 100}}),
            Effect(|p, v| text(p) != text(v) && v["choices"][0]["finish_reason"] == "length"),
        ),
        (
            "logprobs",
            json!({"logprobs": true}),
            Effect(|p, v| {
                p["choices"][0]["logprobs"].is_null()
                    && v["choices"][0]["logprobs"]["content"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty())
            }),
        ),
        (
            "top_logprobs",
            json!({"logprobs": true, "top_logprobs": 3}),
            Effect(|_, v| {
                v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                    .as_array()
                    .is_some_and(|t| t.len() == 3)
            }),
        ),
        (
            "max_tokens",
            json!({"max_tokens": 2}),
            Effect(|_, v| v["usage"]["completion_tokens"] == 2),
        ),
        (
            "max_completion_tokens",
            json!({"max_tokens": null, "max_completion_tokens": 3}),
            Effect(|_, v| v["usage"]["completion_tokens"] == 3),
        ),
        (
            "n",
            json!({"n": 2}),
            Effect(|_, v| v["choices"].as_array().unwrap().len() == 2),
        ),
        (
            "response_format",
            json!({"response_format": {"type": "json_object"}, "max_tokens": 60}),
            Effect(|_, v| {
                v["choices"][0]["finish_reason"] == "length"
                    || serde_json::from_str::<Value>(&text(v)).is_ok_and(|j| j.is_object())
            }),
        ),
        (
            "seed",
            json!({"temperature": 1.0, "seed": 1}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "stop",
            json!({"stop": " "}),
            Effect(|p, v| !text(v).contains(' ') && text(p).starts_with(&text(v))),
        ),
        (
            "temperature",
            json!({"temperature": 1.5, "seed": 3}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "top_p",
            json!({"temperature": 1.5, "seed": 3, "top_p": 0}),
            Effect(|p, v| text(p) == text(v)),
        ),
        (
            "tools",
            json!({"tools": tools(), "tool_choice": "required", "max_tokens": 60}),
            Effect(|_, v| tool_calls(v) > 0),
        ),
        (
            "tool_choice",
            json!({"tools": tools(), "tool_choice": "none"}),
            Effect(|p, v| text(p) == text(v) && tool_calls(v) == 0),
        ),
        (
            "parallel_tool_calls",
            json!({"tools": tools(), "tool_choice": "required",
            "parallel_tool_calls": false, "max_tokens": 60}),
            Effect(|_, v| tool_calls(v) == 1),
        ),
        ("user", json!({"user": "u-1"}), Same),
        ("metadata", json!({"metadata": {"k": "v"}}), Same),
        ("store", json!({"store": true}), Same),
        ("service_tier", json!({"service_tier": "flex"}), Same),
        ("prompt_cache_key", json!({"prompt_cache_key": "k"}), Same),
        ("safety_identifier", json!({"safety_identifier": "s"}), Same),
        // a prediction speeds OpenAI's answer up; it does not change it
        (
            "prediction",
            json!({"prediction": {"type": "content", "content": "x"}}),
            Same,
        ),
        (
            "modalities",
            json!({"modalities": ["text", "audio"]}),
            Refused,
        ),
        (
            "audio",
            json!({"audio": {"voice": "alloy", "format": "wav"}}),
            Refused,
        ),
        (
            "reasoning_effort",
            json!({"reasoning_effort": "low"}),
            Refused,
        ),
        (
            "web_search_options",
            json!({"web_search_options": {}}),
            Refused,
        ),
        ("verbosity", json!({"verbosity": "low"}), Refused),
        (
            "functions",
            json!({"functions": [{"name": "f", "parameters": {}}]}),
            Refused,
        ),
        ("function_call", json!({"function_call": "auto"}), Refused),
        ("echo", json!({"echo": true}), Refused),
        ("best_of", json!({"best_of": 3}), Refused),
    ]
}

/// Every field of OpenAI's (legacy) completions request.
fn completion_fields() -> Vec<(&'static str, Value, Expect)> {
    vec![
        (
            "prompt",
            json!({"prompt": "something else"}),
            Effect(|p, v| text(p) != text(v)),
        ),
        ("model", json!({"model": "any-name"}), Same),
        ("best_of", json!({"best_of": 3}), Refused),
        (
            "echo",
            json!({"echo": true}),
            Effect(|p, v| text(v) == format!("one two three{}", text(p))),
        ),
        (
            "frequency_penalty",
            json!({"frequency_penalty": -2, "max_tokens": 24}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "presence_penalty",
            json!({"presence_penalty": -2, "max_tokens": 24}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "logit_bias",
            json!({"logit_bias": {"1000": 100}}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "logprobs",
            json!({"logprobs": 2}),
            Effect(|_, v| {
                v["choices"][0]["logprobs"]["top_logprobs"][0]
                    .as_object()
                    .is_some_and(|t| t.len() == 2)
            }),
        ),
        (
            "max_tokens",
            json!({"max_tokens": 2}),
            Effect(|_, v| v["usage"]["completion_tokens"] == 2),
        ),
        (
            "n",
            json!({"n": 2}),
            Effect(|_, v| v["choices"].as_array().unwrap().len() == 2),
        ),
        (
            "seed",
            json!({"temperature": 1.0, "seed": 1}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "stop",
            json!({"stop": " "}),
            Effect(|p, v| !text(v).contains(' ') && text(p).starts_with(&text(v))),
        ),
        ("suffix", json!({"suffix": "end"}), Refused),
        (
            "temperature",
            json!({"temperature": 1.5, "seed": 3}),
            Effect(|p, v| text(p) != text(v)),
        ),
        (
            "top_p",
            json!({"temperature": 1.5, "seed": 3, "top_p": 0}),
            Effect(|p, v| text(p) == text(v)),
        ),
        ("user", json!({"user": "u-1"}), Same),
        ("tools", json!({"tools": tools()}), Refused),
    ]
}

fn check(s: &Server, path: &str, base: Value, fields: Vec<(&'static str, Value, Expect)>) {
    let with = |extra: &Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        post(s, path, &b)
    };
    let (code, plain) = with(&json!({}));
    assert_eq!(code, 200, "{plain}");
    for (name, extra, expect) in fields {
        let (code, v) = with(&extra);
        match expect {
            Effect(holds) => {
                assert_eq!(code, 200, "{path} {name}: {v}");
                assert!(
                    holds(&plain, &v),
                    "{path} {name}: no effect: {plain} vs {v}"
                );
            }
            Same => {
                assert_eq!(code, 200, "{path} {name}: {v}");
                assert_eq!(text(&v), text(&plain), "{path} {name}");
            }
            Refused => {
                assert_eq!(code, 400, "{path} {name}: silently accepted: {v}");
                assert_eq!(v["error"]["param"], json!(name), "{path} {name}: {v}");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains(name),
                    "{v}"
                );
            }
        }
    }
    // stream and stream_options: an SSE answer with the same text, and a usage chunk
    let mut b = base.clone();
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let lines = post_stream(s, path, &b);
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| {
            let ch = c["choices"].get(0)?;
            ch.get("text")
                .or_else(|| ch["delta"].get("content"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text(&plain), "{path} stream");
    // (the prompt is cached by now: compare the counts)
    let usage = &chunks.last().unwrap()["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(
            usage[k], plain["usage"][k],
            "{path} stream_options: {usage}"
        );
    }
}

#[test]
fn every_chat_field_is_implemented_or_refused() {
    let s = server();
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "one two three"}],
        "temperature": 0, "max_tokens": 8});
    check(&s, "/v1/chat/completions", base, chat_fields());
}

#[test]
fn every_completions_field_is_implemented_or_refused() {
    let s = server();
    let base = json!({"model": "m", "prompt": "one two three", "temperature": 0, "max_tokens": 8});
    check(&s, "/v1/completions", base, completion_fields());
}
