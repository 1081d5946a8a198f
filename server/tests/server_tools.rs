//! Tool calls and structured output over real HTTP on the tiny synthetic model (its words are
//! noise; what is checked holds whatever it says): `tool_choice: required` and a named function
//! always give a call that parses and validates, streamed calls reassemble to the non-streamed
//! ones, `response_format` output parses, bad `tools` / `response_format` and hostile schemas
//! are 400s (or compile in bounded time) while the server keeps serving, `/apply-template`
//! shows the rendered prompt, and a client that leaves a constrained stream frees its sequence.

#[path = "support/server_kit.rs"]
mod kit;

use kit::*;
use qwenrt::text::template::{ChatTemplate, TemplateOrigin};

/// The server options of these tests: the tiny model with Qwen2.5's real chat template (from
/// the chat-template fixture), so tools are rendered and called as with the default model.
fn opts() -> ServerOptions {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates/renders.json");
    let renders: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let source = renders["templates"]["Qwen-Qwen2.5-7B-Instruct"]
        .as_str()
        .unwrap();
    let template =
        ChatTemplate::from_source(source, TemplateOrigin::Source, "", "<|im_end|>").unwrap();
    ServerOptions {
        chat_template: Arc::new(template),
        ..kit::opts()
    }
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather", "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {
            "name": "get_time", "description": "The local time in a timezone.",
            "parameters": {"type": "object", "properties": {
                "zone": {"type": "string", "enum": ["UTC", "CET"]}},
                "required": ["zone"]}}}
    ])
}

fn tool_body(choice: Value, parallel: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Weather in Paris, and the time?"}],
        "tools": weather_tools(),
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
        "temperature": 0,
        "max_tokens": 120,
    })
}

/// Checks one call against the offered tools: a known name, arguments a JSON object with
/// every required key, enum values for the declared keys, and other keys only where the
/// schema does not forbid them (`get_time` leaves `additionalProperties` open).
fn check_call(call: &Value) -> (String, Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_")),
        "{call}"
    );
    let name = call["function"]["name"].as_str().unwrap().to_string();
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {call}"));
    let tools = weather_tools();
    let tool = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("unknown function {name}"));
    let params = &tool["function"]["parameters"];
    let props = params["properties"].as_object().unwrap();
    for req in params["required"].as_array().unwrap() {
        assert!(
            args.get(req.as_str().unwrap()).is_some(),
            "{args} lacks {req}"
        );
    }
    for (k, v) in args.as_object().unwrap() {
        match props.get(k) {
            Some(p) => {
                let allowed = p["enum"].as_array().unwrap();
                assert!(allowed.contains(v), "{k} = {v} is not one of {allowed:?}");
            }
            None => assert!(
                params["additionalProperties"] != false,
                "extra key {k} in {args}"
            ),
        }
    }
    (name, args)
}

#[test]
fn required_and_named_tool_choices_always_give_valid_calls() {
    let s = Server::start(opts());
    for (choice, parallel) in [
        (json!("required"), true),
        (json!("required"), false),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            true,
        ),
    ] {
        let (code, v) = post(
            &s,
            "/v1/chat/completions",
            &tool_body(choice.clone(), parallel),
        );
        assert_eq!(code, 200, "{v}");
        let choice0 = &v["choices"][0];
        let calls = choice0["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert!(!calls.is_empty());
        if !parallel {
            assert_eq!(calls.len(), 1, "{v}");
        }
        for c in calls {
            let (name, _) = check_call(c);
            if choice.is_object() {
                assert_eq!(name, "get_time");
            }
        }
        // ids are distinct
        let ids: std::collections::HashSet<&str> =
            calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), calls.len());
        assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
        assert!(choice0["message"]["content"].is_null(), "{v}");
    }
}

/// The calls of a stream: `(index, id, name, arguments)` reassembled from the deltas.
fn reassemble(chunks: &[Value]) -> (String, Vec<(String, String, String)>, String) {
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for c in chunks {
        let ch = &c["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            content.push_str(t);
        }
        for d in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = d["index"].as_u64().unwrap() as usize;
            if let Some(id) = d["id"].as_str() {
                assert_eq!(i, calls.len(), "a new call comes with the next index");
                calls.push((
                    id.into(),
                    d["function"]["name"].as_str().unwrap().into(),
                    String::new(),
                ));
            }
            calls[i]
                .2
                .push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = f.into();
        }
    }
    (content, calls, finish)
}

#[test]
fn streamed_tool_calls_reassemble_to_the_non_streamed_ones() {
    let s = Server::start(opts());
    let mut body = tool_body(json!("required"), true);
    let (code, full) = post(&s, "/v1/chat/completions", &body);
    assert_eq!(code, 200, "{full}");
    let want: Vec<(String, String)> = full["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["function"]["name"].as_str().unwrap().into(),
                c["function"]["arguments"].as_str().unwrap().into(),
            )
        })
        .collect();
    body["stream"] = json!(true);
    let data = post_stream(&s, "/v1/chat/completions", &body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        let text = c["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        assert!(
            !text.contains("<tool_call>") && !text.contains("</tool_call>"),
            "{c}"
        );
    }
    let (content, calls, finish) = reassemble(&chunks);
    assert_eq!(content, "");
    assert_eq!(finish, "tool_calls");
    let got: Vec<(String, String)> = calls.into_iter().map(|(_, n, a)| (n, a)).collect();
    assert_eq!(got, want);
}

#[test]
fn response_format_output_parses_and_validates() {
    let s = Server::start(opts());
    let schema = json!({"type": "object", "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}},
        "required": ["answer", "confidence", "tags"], "additionalProperties": false});
    for (stream, seed) in [(false, 1), (true, 2), (false, 3)] {
        let body = json!({
            "messages": [{"role": "user", "content": "Is it raining?"}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema, "strict": true}},
            "temperature": if seed == 1 { 0.0 } else { 1.0 }, "seed": seed,
            "max_tokens": 400, "stream": stream,
        });
        let text = if stream {
            let data = post_stream(&s, "/v1/chat/completions", &body);
            let chunks: Vec<Value> = data[..data.len() - 1]
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            reassemble(&chunks).0
        } else {
            let (code, v) = post(&s, "/v1/chat/completions", &body);
            assert_eq!(code, 200, "{v}");
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            ["yes", "no", "maybe"].contains(&v["answer"].as_str().unwrap()),
            "{v}"
        );
        assert!((0..=9).contains(&v["confidence"].as_i64().unwrap()), "{v}");
        let tags = v["tags"].as_array().unwrap();
        assert!(
            (1..=3).contains(&tags.len()) && tags.iter().all(Value::is_boolean),
            "{v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    }
    // json_object: any object
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "{", "response_format": {"type": "json_object"}, "max_tokens": 40,
            "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    if v["choices"][0]["finish_reason"] == "stop" {
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(
            serde_json::from_str::<Value>(text).unwrap().is_object(),
            "{text}"
        );
    }
}

#[test]
fn bad_tools_and_response_formats_are_400s_naming_the_field() {
    let s = Server::start(opts());
    let base = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let cases = [
        (json!({"tools": {"type": "function"}}), "tools"),
        (
            json!({"tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}),
            "tools[0].function.parameters",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": weather_tools(), "parallel_tool_calls": "yes"}),
            "parallel_tool_calls",
        ),
        (
            json!({"tools": weather_tools(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": 7, "schema": {}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": "string"}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/missing"}}}}),
            "response_format",
        ),
        (
            json!({"tools": weather_tools(), "grammar": "root ::= \"x\""}),
            "grammar",
        ),
        (json!({"grammar": "root ::= \"x"}), "grammar"),
        (
            json!({"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]}),
            "messages[0].tool_call_id",
        ),
    ];
    for (extra, param) in cases {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, v) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let (code, v) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "x", "tools": weather_tools()}),
    );
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("tools")),
        "{v}"
    );
    // still serving
    let (code, _) = post(&s, "/v1/chat/completions", &base);
    assert_eq!(code, 200);
}

#[test]
fn hostile_schemas_are_refused_or_compile_in_bounded_time() {
    let s = Server::start(opts());
    // as deep as a request body may nest (the JSON parser's own limit is 128 levels)
    let mut deep = json!({"type": "integer"});
    for _ in 0..40 {
        deep = json!({"type": "object", "properties": {"a": deep}, "required": ["a"]});
    }
    let huge_enum: Vec<Value> = (0..200_000).map(|i| json!(format!("v{i}"))).collect();
    let recursive = json!({"$ref": "#/$defs/n", "$defs": {"n": {"type": "object",
        "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}}});
    let long_pattern = json!({"type": "string", "pattern": "(a|b|c|d)*".repeat(2000)});
    let many_props: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("k{i}"), json!({"type": "integer"})))
        .collect();
    let wide = json!({"type": "object", "properties": many_props});
    for schema in [
        deep,
        json!({"enum": huge_enum}),
        recursive,
        long_pattern,
        wide,
    ] {
        let body = json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": schema}}});
        let t = Instant::now();
        let (code, v) = post(&s, "/v1/chat/completions", &body);
        let took = t.elapsed();
        assert!(code == 200 || code == 400, "{code}: {v}");
        if code == 400 {
            assert_eq!(v["error"]["param"], "response_format", "{v}");
        }
        // bounded: the compiler's limits, not the client's patience, end it (the bound is
        // far above a normal compile, a few ms, and far below a hang)
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }
    // deeper than the JSON parser takes: refused as a body, not parsed
    let deeper = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"go\"}}], \"response_format\": {{\"type\": \"json_schema\", \"json_schema\": {{\"schema\": {}{}}}}}}}",
        "{\"items\": ".repeat(5000),
        "}".repeat(5000)
    );
    let (code, v) = post_raw(&s, "/v1/chat/completions", &deeper, None);
    assert_eq!(code, 400, "{v}");
    let (code, _) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    );
    assert_eq!(code, 200);
}

#[test]
fn apply_template_shows_the_prompt_with_tools_and_tool_results() {
    let s = Server::start(opts());
    let body = json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}],
        "tools": weather_tools(),
    });
    let (code, v) = post(&s, "/apply-template", &body);
    assert_eq!(code, 200, "{v}");
    let prompt = v["prompt"].as_str().unwrap();
    // Qwen2.5's template: the tools in the system turn, the call with its arguments as JSON,
    // the result in a user turn
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    assert!(prompt.contains("\"name\": \"get_weather\""), "{prompt}");
    assert!(
        prompt.contains("<tool_response>\n{\"temp\": 21}\n</tool_response>"),
        "{prompt}"
    );
    assert!(prompt.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>"), "{prompt}");
    let (code, v) = post(&s, "/apply-template", &json!({"messages": []}));
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("messages"))
    );
}

#[test]
fn a_client_leaving_a_constrained_stream_frees_its_sequence() {
    let s = Server::start(ServerOptions {
        parallel: 1,
        max_queue: 4,
        ..opts()
    });
    // a schema the random model can go on in for long: an array of free strings
    let body = json!({"messages": [{"role": "user", "content": "list"}], "stream": true,
        "max_tokens": 400, "temperature": 1.0, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "l",
            "schema": {"type": "array", "items": {"type": "string"}}}}});
    let resp = agent()
        .post(&format!("{}/v1/chat/completions", s.base))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .unwrap();
    let mut reader = BufReader::new(resp.into_reader());
    let mut line = String::new();
    for _ in 0..6 {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    // with one sequence, the next request runs only once the first has let go of it
    let t = Instant::now();
    let (code, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(60));
    let (_, metrics) = get(&s, "/metrics");
    let cancelled = metrics
        .lines()
        .find(|l| l.starts_with("qwenrt_requests_cancelled_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(cancelled >= 1.0, "{metrics}");
}

#[test]
fn the_turn_after_a_tool_call_reuses_the_cached_prefix() {
    let s = Server::start(opts());
    let mut body = tool_body(json!("required"), false);
    let (code, v1) = post(&s, "/v1/chat/completions", &body);
    assert_eq!(code, 200, "{v1}");
    let call = v1["choices"][0]["message"]["tool_calls"][0].clone();
    let first = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    let messages = body["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call.clone()]}));
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 21}"}));
    body["tool_choice"] = json!("auto");
    body["max_tokens"] = json!(4);
    let (code, v3) = post(&s, "/v1/chat/completions", &body);
    assert_eq!(code, 200, "{v3}");
    let cached = v3["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first,
        "cached {cached}, turn 1 prompt {first}: {v3}"
    );
}

/// The server options with a template from llama.cpp's `models/templates` (in the fixtures).
fn opts_with(file: &str) -> ServerOptions {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chat_templates")
        .join(file);
    let template = ChatTemplate::from_file(&path, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    ServerOptions {
        chat_template: Arc::new(template),
        ..kit::opts()
    }
}

/// Llama 3.3's template: its untagged `{"name", "parameters"}` calls are constrained and read
/// back, one per answer (its template renders one call per turn), streamed as not; the tools
/// are shown in the first user message.
#[test]
fn llama3_calls_are_constrained_and_read_back() {
    let s = Server::start(opts_with("meta-llama-Llama-3.3-70B-Instruct.jinja"));
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ] {
        let mut body = tool_body(choice.clone(), true);
        let (code, full) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(code, 200, "{full}");
        let choice0 = &full["choices"][0];
        let calls = choice0["message"]["tool_calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{full}"));
        assert_eq!(calls.len(), 1, "{full}");
        let (name, _) = check_call(&calls[0]);
        if choice.is_object() {
            assert_eq!(name, "get_time");
        }
        assert_eq!(choice0["finish_reason"], "tool_calls", "{full}");
        assert!(choice0["message"]["content"].is_null(), "{full}");
        body["stream"] = json!(true);
        let data = post_stream(&s, "/v1/chat/completions", &body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let (content, streamed, finish) = reassemble(&chunks);
        assert_eq!((content.as_str(), finish.as_str()), ("", "tool_calls"));
        let streamed: Vec<(String, String)> =
            streamed.into_iter().map(|(_, n, a)| (n, a)).collect();
        let whole = vec![(
            name,
            calls[0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string(),
        )];
        assert_eq!(streamed, whole);
    }
    // auto: whatever the model says, a 200 whose calls (if any) validate
    let (code, v) = post(&s, "/v1/chat/completions", &tool_body(json!("auto"), true));
    assert_eq!(code, 200, "{v}");
    for c in v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        check_call(c);
    }
    let (code, v) = post(
        &s,
        "/apply-template",
        &json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": weather_tools()}),
    );
    assert_eq!(code, 200, "{v}");
    let prompt = v["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("\"parameters\": dictionary of argument name"),
        "{prompt}"
    );
    assert!(prompt.contains("\"name\": \"get_time\""), "{prompt}");
}

/// A template whose call syntax qwenrt cannot read back (FireFunction v2's `functools[...]`):
/// tools that may be called are a 400 naming `tools`; with `tool_choice: none` the tools are
/// not shown and the answer is text; `/apply-template` still renders them.
#[test]
fn tools_with_an_unknown_call_syntax_are_refused_by_name() {
    let s = Server::start(opts_with("fireworks-ai-llama-3-firefunction-v2.jinja"));
    for choice in [
        json!("required"),
        json!("auto"),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ] {
        let (code, v) = post(&s, "/v1/chat/completions", &tool_body(choice, true));
        assert_eq!(
            (code, v["error"]["param"].as_str()),
            (400, Some("tools")),
            "{v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("has no tool-call format"), "{msg}");
    }
    let (code, v) = post(&s, "/v1/chat/completions", &tool_body(json!("none"), true));
    assert_eq!(code, 200, "{v}");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    let (code, v) = post(
        &s,
        "/apply-template",
        &json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": weather_tools()}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["prompt"].as_str().unwrap().contains("Today is "), "{v}");
}
