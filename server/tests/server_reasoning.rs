//! Reasoning output over real HTTP on the tiny synthetic model: with a template that opens the
//! thinking part in the prompt, what the model writes before `</think>` comes back as
//! `reasoning_content` (streamed as `delta.reasoning_content`, the same text), `--reasoning-format
//! none` leaves it in `content`, and `chat_template_kwargs` reaches the template (Qwen3's
//! `enable_thinking: false` closes the thinking part in the prompt).

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;
use qwenrt::text::template::{ChatTemplate, TemplateOrigin};
use qwenrt_server::ReasoningFormat;

/// A template whose generation prompt ends inside `<think>`, as reasoning models' do.
const OPENS_THINKING: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

fn opts_with(source: &str, format: ReasoningFormat) -> ServerOptions {
    let t = ChatTemplate::from_source(source, TemplateOrigin::Source, "", "<|im_end|>").unwrap();
    assert!(t.thinking());
    ServerOptions {
        chat_template: Arc::new(t),
        reasoning_format: format,
        ..opts()
    }
}

fn body(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "Think."}], "temperature": 0,
        "max_tokens": 12, "stream": stream})
}

#[test]
fn the_thinking_part_is_reasoning_content_streamed_or_not() {
    let s = Server::start(opts_with(OPENS_THINKING, ReasoningFormat::Auto));
    let (code, v) = post(&s, "/v1/chat/completions", &body(false));
    assert_eq!(code, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    // the random model never closes the thinking part: all it wrote is reasoning
    let reasoning = msg["reasoning_content"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(!reasoning.is_empty());
    assert_eq!(msg["content"], "");
    let data = post_stream(&s, "/v1/chat/completions", &body(true));
    let (mut r, mut c) = (String::new(), String::new());
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        r.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        c.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!((r.as_str(), c.as_str()), (reasoning, ""));

    // --reasoning-format none: the same words, in content
    let s2 = Server::start(opts_with(OPENS_THINKING, ReasoningFormat::None));
    let (code, v2) = post(&s2, "/v1/chat/completions", &body(false));
    assert_eq!(code, 200, "{v2}");
    let msg2 = &v2["choices"][0]["message"];
    assert!(msg2.get("reasoning_content").is_none(), "{v2}");
    assert_eq!(msg2["content"].as_str().unwrap().trim(), reasoning.trim());
}

#[test]
fn chat_template_kwargs_reach_the_template() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates/renders.json");
    let renders: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let qwen3 = renders["templates"]["Qwen-Qwen3-0.6B"].as_str().unwrap();
    let s = Server::start(opts_with(qwen3, ReasoningFormat::Auto));
    let msgs = json!([{"role": "user", "content": "Quick: capital of Italy?"}]);
    let (code, v) = post(
        &s,
        "/apply-template",
        &json!({"messages": msgs, "chat_template_kwargs": {"enable_thinking": false}}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        v["prompt"]
            .as_str()
            .unwrap()
            .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{v}"
    );
    let (_, v) = post(&s, "/apply-template", &json!({"messages": msgs}));
    assert!(
        v["prompt"]
            .as_str()
            .unwrap()
            .ends_with("<|im_start|>assistant\n"),
        "{v}"
    );
    // the thinking part closed in the prompt: the answer is all content
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 6,
        "temperature": 0, "chat_template_kwargs": {"enable_thinking": false}}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{v}"
    );
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": msgs, "chat_template_kwargs": "x"}),
    );
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("chat_template_kwargs"))
    );
}
