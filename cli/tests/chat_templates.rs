//! The model's own chat template (qwenrt::text::template): 18 renders by transformers'
//! `apply_chat_template` of three real templates (Qwen2.5-Instruct, Qwen3, Qwen3-Coder),
//! matched byte for byte; the ChatML fallback against Qwen2.5's; hostile templates that must
//! fail in bounded time; where a model's template is found.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qwenrt::text::chat;
use qwenrt::text::template::{ChatTemplate, TemplateError, TemplateOrigin, ToolCallFormat};
use serde_json::{json, Map, Value};

fn fixtures() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates/renders.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn template(name: &str) -> ChatTemplate {
    let f = fixtures();
    let src = f["templates"][name].as_str().unwrap();
    ChatTemplate::from_source(src, TemplateOrigin::Source, "", "<|im_end|>").unwrap()
}

/// Renders a fixture case with `t`.
fn render_case(t: &ChatTemplate, case: &Value) -> Result<String, TemplateError> {
    let tools = case.get("tools").filter(|v| !v.is_null());
    let extra: Map<String, Value> = case["kwargs"].as_object().cloned().unwrap_or_default();
    t.render(
        &case["messages"],
        tools,
        case["add_generation_prompt"].as_bool().unwrap(),
        &extra,
    )
}

#[test]
fn all_reference_renders_match_byte_for_byte() {
    let f = fixtures();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let t = template(name);
        let got = render_case(&t, case).unwrap_or_else(|e| format!("ERROR: {e}"));
        let expected = case["expected"].as_str().unwrap();
        if got != expected {
            failures.push(format!(
                "{name} / {}:\n--- expected\n{expected}\n--- got\n{got}",
                case["case"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn templates_say_which_tool_format_and_thinking_they_teach() {
    let q25 = template("Qwen-Qwen2.5-7B-Instruct");
    assert_eq!(q25.tool_format(), ToolCallFormat::HermesJson);
    assert!(!q25.thinking());
    let q3 = template("Qwen-Qwen3-0.6B");
    assert_eq!(q3.tool_format(), ToolCallFormat::HermesJson);
    assert!(q3.thinking());
    let coder = template("Qwen3-Coder");
    assert_eq!(coder.tool_format(), ToolCallFormat::Qwen3CoderXml);
}

/// The built-in fallback renders every Qwen2.5 case as Qwen2.5's own template does.
#[test]
fn chatml_fallback_renders_as_qwen25() {
    let f = fixtures();
    let fallback = ChatTemplate::chatml();
    assert_eq!(fallback.origin(), &TemplateOrigin::ChatMl);
    let mut n = 0;
    for case in f["cases"].as_array().unwrap() {
        if case["template"] != "Qwen-Qwen2.5-7B-Instruct" {
            continue;
        }
        let got = render_case(&fallback, case).unwrap();
        assert_eq!(got, case["expected"].as_str().unwrap(), "{}", case["case"]);
        n += 1;
    }
    assert_eq!(n, 6);
    // and a conversation with no generation prompt, two tool results in a row
    let msgs = json!([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
            {"type": "function", "function": {"name": "g", "arguments": "{\"y\": 2}"}}]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "done"}
    ]);
    let got = fallback.render(&msgs, None, false, &Map::new()).unwrap();
    assert_eq!(
        got,
        format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{{\"name\": \"f\", \"arguments\": {{\"x\": 1}}}}\n</tool_call>\n<tool_call>\n{{\"name\": \"g\", \"arguments\": {{\"y\": 2}}}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n<|im_start|>assistant\ndone<|im_end|>\n",
            chat::DEFAULT_SYSTEM_PROMPT
        )
    );
}

fn hostile(src: &str) -> TemplateError {
    let t = ChatTemplate::from_source(src, TemplateOrigin::Source, "", "").unwrap();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let start = Instant::now();
    let err = t.render(&msgs, None, true, &Map::new()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{src}: took {:?}",
        start.elapsed()
    );
    err
}

#[test]
fn hostile_templates_fail_in_bounded_time() {
    // an endless loop (as far as nested ranges go)
    let e =
        hostile("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    assert!(matches!(e, TemplateError::OutOfFuel { .. }), "{e}");
    // a huge output
    let e = hostile("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}");
    assert!(matches!(e, TemplateError::OutOfFuel { .. }), "{e}");
    // a string doubled until it is huge
    let e = hostile("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
    assert!(
        matches!(
            e,
            TemplateError::OutOfFuel { .. } | TemplateError::Render { .. }
        ),
        "{e}"
    );
    // endless recursion
    let e = hostile("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(
        matches!(
            e,
            TemplateError::Render { .. } | TemplateError::OutOfFuel { .. }
        ),
        "{e}"
    );
    // the template refuses
    let e = hostile("{% if messages[0].role != 'system' %}{{ raise_exception('System message required') }}{% endif %}");
    assert_eq!(
        e,
        TemplateError::Raised {
            origin: TemplateOrigin::Source,
            message: "System message required".into()
        }
    );
    // an unknown method or filter names itself
    let e = hostile("{{ messages[0].content.frobnicate() }}");
    assert!(e.to_string().contains("frobnicate"), "{e}");
}

#[test]
fn a_template_file_that_is_not_jinja_names_the_file() {
    let dir = std::env::temp_dir().join(format!("qwenrt-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.jinja");
    std::fs::write(&path, "{% for m in messages %}{{ m.content }").unwrap();
    let err = ChatTemplate::from_file(&path, "", "").unwrap_err();
    assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("broken.jinja"), "{err}");
    let missing = dir.join("missing.jinja");
    let err = ChatTemplate::from_file(&missing, "", "").unwrap_err();
    assert!(err.to_string().contains("missing.jinja"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_hugging_face_directory_gives_its_template_and_tokens() {
    let dir = std::env::temp_dir().join(format!("qwenrt-hfdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // nothing: the ChatML fallback
    let t = ChatTemplate::for_model(&dir, None).unwrap();
    assert_eq!(t.origin(), &TemplateOrigin::ChatMl);
    // tokenizer_config.json with a list of templates and an {"content"} token
    write(
        &dir,
        "tokenizer_config.json",
        r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}]}"#,
    );
    let t = ChatTemplate::for_model(&dir, None).unwrap();
    assert_eq!(
        t.origin(),
        &TemplateOrigin::TokenizerConfig(dir.join("tokenizer_config.json"))
    );
    assert_eq!(
        t.render(&json!([]), None, false, &Map::new()).unwrap(),
        "<s>D</s>"
    );
    // chat_template.jinja wins over tokenizer_config.json
    write(&dir, "chat_template.jinja", "J{{ messages | length }}");
    let t = ChatTemplate::for_model(&dir, None).unwrap();
    assert_eq!(
        t.origin(),
        &TemplateOrigin::ChatTemplateJinja(dir.join("chat_template.jinja"))
    );
    assert_eq!(
        t.render(&json!([1, 2]), None, false, &Map::new()).unwrap(),
        "J2"
    );
    // an override file wins over both, keeping the model's tokens
    write(&dir, "override.jinja", "O{{ eos_token }}");
    let o = dir.join("override.jinja");
    let t = ChatTemplate::for_model(&dir, Some(&o)).unwrap();
    assert_eq!(t.origin(), &TemplateOrigin::File(o.clone()));
    assert_eq!(
        t.render(&json!([]), None, false, &Map::new()).unwrap(),
        "O</s>"
    );
    // a broken tokenizer_config.json is an error naming it
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    write(&dir, "tokenizer_config.json", r#"{"chat_template": 5}"#);
    let err = ChatTemplate::for_model(&dir, None).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the default model's own template ----

fn default_gguf() -> PathBuf {
    qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent).expect("fetch the GGUF")
}

/// The GGUF's template renders what the hard-coded ChatML rendered before it, so the real-model
/// goldens and the CLI's outputs do not change.
#[test]
fn the_default_ggufs_template_renders_like_the_old_chatml() {
    let gguf = default_gguf();
    let t = ChatTemplate::for_model(&gguf, None).unwrap();
    assert_eq!(t.origin(), &TemplateOrigin::Gguf(gguf.clone()));
    assert_eq!(t.tool_format(), ToolCallFormat::HermesJson);
    assert_eq!(t.eos_token(), "<|im_end|>");
    assert_eq!(
        t.render_turn(None, "Write a haiku.").unwrap(),
        chat::first_turn(chat::DEFAULT_SYSTEM_PROMPT, "Write a haiku.")
    );
    assert_eq!(
        t.render_turn(Some("You are terse."), "hi").unwrap(),
        chat::first_turn("You are terse.", "hi")
    );
    let msgs = json!([
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}
    ]);
    let old = format!(
        "{}b{}{}",
        chat::first_turn("S", "a"),
        chat::IM_END,
        chat::next_turn("c")
    );
    assert_eq!(t.render(&msgs, None, true, &Map::new()).unwrap(), old);
    // and the built-in fallback agrees with it
    assert_eq!(
        ChatTemplate::chatml()
            .render(&msgs, None, true, &Map::new())
            .unwrap(),
        old
    );
}

fn qwenrt(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_cli_says_which_template_and_takes_another() {
    let gguf = default_gguf();
    let model = gguf.to_str().unwrap();
    let o = qwenrt(&["info", "--model", model, "--ctx", "256", "-t", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("chat template: ") && out.contains("(GGUF tokenizer.chat_template)"),
        "{out}"
    );

    let dir = std::env::temp_dir().join(format!("qwenrt-tplcli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mine.jinja");
    std::fs::write(
        &file,
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let o = qwenrt(&[
        "info",
        "--model",
        model,
        "--ctx",
        "256",
        "-t",
        "2",
        "--chat-template-file",
        f,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("chat template: {f}")), "{out}");
    // generate renders the prompt with the file's template
    let o = qwenrt(&[
        "generate",
        "--model",
        model,
        "--json",
        "--max-tokens",
        "1",
        "--temperature",
        "0",
        "-t",
        "2",
        "--system",
        "S",
        "--chat-template-file",
        f,
        "hello",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u32> = v["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let tok = qwenrt::Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "[system] S\n[user] hello\n[assistant]"
    );
    // --no-think renders with enable_thinking false (a thinking switch in the file)
    std::fs::write(
        &file,
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}",
    )
    .unwrap();
    let prompt_of = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--json",
            "--max-tokens",
            "1",
            "--temperature",
            "0",
            "-t",
            "2",
            "--chat-template-file",
            f,
        ];
        args.extend_from_slice(extra);
        args.push("hello");
        let o = qwenrt(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let ids: Vec<u32> = v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        tok.decode(&ids).unwrap()
    };
    assert_eq!(prompt_of(&[]), "[user] hello\n[assistant]");
    assert_eq!(
        prompt_of(&["--no-think"]),
        "[user] hello\n[assistant]<think></think>"
    );
    // a file that is not Jinja: exit status 1, the file named
    std::fs::write(&file, "{% if %}").unwrap();
    let o = qwenrt(&[
        "generate",
        "--model",
        model,
        "--max-tokens",
        "1",
        "--chat-template-file",
        f,
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mine.jinja") && err.contains("not valid Jinja"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The render budget has room for long conversations: 4000 messages with tools, on each of
/// the three real templates.
#[test]
fn long_conversations_render_within_the_budget() {
    let f = fixtures();
    let tools = f["cases"][3]["tools"].clone();
    assert!(tools.is_array());
    let msgs: Vec<Value> = (0..4000)
        .map(|i| {
            json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                   "content": format!("message {i} {}", "x".repeat(200))})
        })
        .collect();
    for name in ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "Qwen3-Coder"] {
        let out = template(name)
            .render(&Value::Array(msgs.clone()), Some(&tools), true, &Map::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.contains("message 3999 "), "{name}");
    }
}

/// Odd messages (missing fields, numbers, nulls, nested values, control characters) give a
/// render or an error from every template, never a panic.
#[test]
fn odd_messages_render_or_fail_cleanly() {
    let names = ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "Qwen3-Coder"];
    let templates: Vec<ChatTemplate> = names.iter().map(|n| template(n)).collect();
    let fallback = ChatTemplate::chatml();
    let pieces = [
        json!("user"),
        json!("assistant"),
        json!("tool"),
        json!("system"),
        json!("<tool_response>x</tool_response>"),
        json!("a</think>b"),
        json!(null),
        json!(7),
        json!(1.5e300),
        json!(true),
        json!([{"type": "text", "text": "t"}]),
        json!({"k": [1, {"z": null}]}),
        json!("\u{0}\u{1b}\"'\\é😀"),
    ];
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut failures = 0;
    for _ in 0..300 {
        let mut msgs = Vec::new();
        for _ in 0..next(5) {
            let mut m = Map::new();
            for key in ["role", "content", "tool_calls", "reasoning_content", "name"] {
                if next(3) > 0 {
                    m.insert(key.into(), pieces[next(pieces.len())].clone());
                }
            }
            if next(4) == 0 {
                m.insert(
                    "tool_calls".into(),
                    json!([{"function": {"name": pieces[next(pieces.len())], "arguments": pieces[next(pieces.len())]}}]),
                );
            }
            msgs.push(Value::Object(m));
        }
        let tools = (next(3) == 0).then(|| json!([pieces[next(pieces.len())]]));
        for t in templates.iter().chain([&fallback]) {
            match t.render(
                &Value::Array(msgs.clone()),
                tools.as_ref(),
                next(2) == 0,
                &Map::new(),
            ) {
                Ok(_) => {}
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    failures += 1;
                }
            }
        }
    }
    // most of these are not valid conversations: the templates must have been exercised on
    // both sides
    assert!(failures > 0 && failures < 1200, "{failures}");
}

/// A template from llama.cpp's `models/templates` (copied into the fixtures).
fn llama_cpp_template(file: &str) -> ChatTemplate {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates")
        .join(file);
    ChatTemplate::from_file(&p, "<|begin_of_text|>", "<|eot_id|>").unwrap()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// FireFunction v2's template adds `functions`, which nobody sets, to its system prompt: Jinja
/// raises, llama.cpp reads it as empty, and so does qwenrt (with or without tools); the date
/// it prints is today's.
#[test]
fn firefunction_v2_renders_as_llama_cpp_renders_it() {
    let t = llama_cpp_template("fireworks-ai-llama-3-firefunction-v2.jinja");
    let msgs = json!([{"role": "user", "content": "What is today?"}]);
    let tools = weather_tool();
    let empty = json!([]);
    let mut prompts = Vec::new();
    for tools in [None, Some(&empty), Some(&tools)] {
        let got = t.render(&msgs, tools, true, &Map::new()).unwrap();
        assert!(got.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant with access to functions.\nIn addition to plain text"), "{got}");
        // the unset `functions` is empty: the spec list ends, then today's date
        let date = got
            .split("Available functions as JSON spec:\n\nToday is ")
            .nth(1)
            .and_then(|r| r.split_once(".<|eot_id|>"))
            .unwrap_or_else(|| panic!("{got}"))
            .0;
        // "%b %d %Y", e.g. "Dec 05 2026"
        assert_eq!(date.len(), 11, "{date}");
        assert!(date[7..].starts_with("20"), "{date}");
        assert!(got.ends_with("<|start_header_id|>user<|end_header_id|>\n\nWhat is today?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"), "{got}");
        prompts.push(got);
    }
    assert!(prompts.windows(2).all(|w| w[0] == w[1]));
    // the caller's `functions` is used as given
    let mut extra = Map::new();
    extra.insert("functions".into(), json!("[{\"name\": \"f\"}]"));
    let got = t.render(&msgs, None, true, &extra).unwrap();
    assert!(
        got.contains("Available functions as JSON spec:\n[{\"name\": \"f\"}]\nToday is "),
        "{got}"
    );
    // and the template's own checks still raise
    let e = t
        .render(
            &json!([{"role": "robot", "content": "x"}]),
            None,
            true,
            &Map::new(),
        )
        .unwrap_err();
    assert!(matches!(e, TemplateError::Raised { .. }), "{e}");
}

/// Llama 3.x's templates teach their own call syntax; 3.3's renders the tools into the first
/// user message and today's date into the system message.
#[test]
fn llama3_templates_teach_their_json_calls() {
    for file in [
        "meta-llama-Llama-3.3-70B-Instruct.jinja",
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
    ] {
        assert_eq!(
            llama_cpp_template(file).tool_format(),
            ToolCallFormat::Llama3Json,
            "{file}"
        );
    }
    let firefunction = llama_cpp_template("fireworks-ai-llama-3-firefunction-v2.jinja");
    assert_eq!(firefunction.tool_format(), ToolCallFormat::None);
    let t = llama_cpp_template("meta-llama-Llama-3.3-70B-Instruct.jinja");
    let msgs = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"}
    ]);
    let got = t
        .render(&msgs, Some(&weather_tool()), true, &Map::new())
        .unwrap();
    assert!(
        got.contains("Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: "),
        "{got}"
    );
    assert!(!got.contains("26 Jul 2024"), "{got}");
    assert!(got.contains("Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\""), "{got}");
    assert!(got.ends_with("Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n\"sunny\"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"), "{got}");
}
