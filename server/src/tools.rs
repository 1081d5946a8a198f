//! Tool calls: the `tools` / `tool_choice` / `parallel_tool_calls` fields validated, and the
//! grammar that constrains a call to the offered functions.
//!
//! Three syntaxes, as the chat templates teach them ([`ToolCallFormat`]):
//! - [`ToolCallFormat::HermesJson`] (Qwen2.5, Qwen3):
//!   `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`;
//! - [`ToolCallFormat::Qwen3CoderXml`] (Qwen3-Coder): `<tool_call>\n<function=f>\n<parameter=p>\nvalue\n</parameter>\n</function>\n</tool_call>`;
//! - [`ToolCallFormat::Llama3Json`] (Llama 3.1 to 3.3): the answer is the call, untagged,
//!   `{"name": "f", "parameters": {...}}` (one per answer: the template renders one call per
//!   assistant turn), or 3.1's built-in form `<|python_tag|>f.call(key="value")`.
//!
//! Small models often drop the tags in the JSON syntax and answer with the bare object,
//! `{"name": "f", "arguments": {...}}`, sometimes in a code fence (the default 0.5B model does
//! so with `tool_choice: auto`). An answer that *opens* that way (see [`bare_opener`]) is read
//! as calls too, as llama.cpp reads them.
//!
//! Reading the calls back out of the answer is [`super::call_parser`]'s.

use serde_json::{json, Map, Value};

use crate::api::ApiError;
use qwenrt::engine::constraint::{checked_schema, JSON_WHITESPACE};
use qwenrt::text::template::ToolCallFormat;

/// The tag that opens a call in both syntaxes.
pub const OPEN: &str = "<tool_call>";
/// The tag that closes a call.
pub const CLOSE: &str = "</tool_call>";
/// The token before a Llama 3.x built-in call (`<|python_tag|>brave_search.call(query="x")`),
/// or code for its `python` tool.
pub const PYTHON_TAG: &str = "<|python_tag|>";

/// The key of a JSON call's arguments: `parameters` for Llama 3.x, `arguments` otherwise.
pub fn arguments_key(syntax: ToolCallFormat) -> &'static str {
    match syntax {
        ToolCallFormat::Llama3Json => "parameters",
        _ => "arguments",
    }
}

/// One offered function.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Its name (`[A-Za-z0-9_.-]`, 1 to 64 characters, as OpenAI allows).
    pub name: String,
    /// The JSON schema of its arguments (an object schema; `{}` when none was given).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the tools are not shown to the model and the answer is text.
    None,
    /// The model chooses; once it opens a call, the call is constrained.
    Auto,
    /// At least one call, constrained from the first token.
    Required,
    /// A call of this function, constrained from the first token.
    Named(String),
}

/// The validated tool fields of a chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    /// The offered functions, in order.
    pub functions: Vec<Function>,
    /// The `tools` array as given (what the template renders).
    pub raw: Value,
    /// `tool_choice` (default `auto`).
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call in an answer.
    pub parallel: bool,
}

/// The most functions one request may offer.
pub const MAX_TOOLS: usize = 128;

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tools are given
/// (then a `tool_choice` other than `none`/`auto` is refused: there is nothing to call).
pub fn parse(o: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let field = |k: &str| o.get(k).filter(|v| !v.is_null());
    let parallel = match field("parallel_tool_calls") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                "'parallel_tool_calls' must be a boolean",
            ))
        }
    };
    let list = match field("tools") {
        None => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => {
            return Err(ApiError::invalid(
                "tools",
                "'tools' must be an array of tools",
            ))
        }
    };
    let mut functions = Vec::new();
    for (i, t) in list.into_iter().flatten().enumerate() {
        let at = |k: &str| format!("tools[{i}]{k}");
        let t = t
            .as_object()
            .ok_or_else(|| ApiError::invalid(&at(""), "a tool must be an object"))?;
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    &at(".type"),
                    format!("tool type '{other}' is not supported; only 'function' is"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &at(".type"),
                    "a tool needs 'type': 'function'",
                ))
            }
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::invalid(&at(".function"), "a tool needs a 'function' object")
            })?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(&at(".function.name"), "a function needs a string 'name'")
        })?;
        if !valid_name(name) {
            return Err(ApiError::invalid(
                &at(".function.name"),
                format!("function name '{name}' must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' or '.'"),
            ));
        }
        if functions.iter().any(|g: &Function| g.name == name) {
            return Err(ApiError::invalid(
                &at(".function.name"),
                format!("function '{name}' is offered twice"),
            ));
        }
        if let Some(d) = f.get("description").filter(|v| !v.is_null()) {
            if !d.is_string() {
                return Err(ApiError::invalid(
                    &at(".function.description"),
                    "'description' must be a string",
                ));
            }
        }
        let parameters = match f.get("parameters").filter(|v| !v.is_null()) {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(m)) => {
                if let Some(ty) = m.get("type") {
                    if ty != "object" {
                        return Err(ApiError::invalid(
                            &at(".function.parameters"),
                            "'parameters' must be a JSON schema of type 'object'",
                        ));
                    }
                }
                // the bounds every schema the constraint engine takes is held to
                checked_schema(p).map_err(|e| {
                    ApiError::invalid(&at(".function.parameters"), format!("'parameters': {e}"))
                })?;
                p.clone()
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    &at(".function.parameters"),
                    "'parameters' must be a JSON schema object",
                ))
            }
        };
        functions.push(Function {
            name: name.to_string(),
            parameters,
        });
    }
    if functions.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!("{} tools given; at most {MAX_TOOLS}", functions.len()),
        ));
    }
    let choice = match field("tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("'tool_choice' is '{other}'; expected 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                ))
            }
        },
        Some(Value::Object(c)) => {
            let name = (c.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| c.get("function")?.get("name")?.as_str())
                .flatten()
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        "a named 'tool_choice' is {\"type\": \"function\", \"function\": {\"name\": NAME}}",
                    )
                })?;
            if !functions.iter().any(|f| f.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("'tool_choice' names function '{name}', which is not in 'tools'"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "'tool_choice' must be a string or an object",
            ))
        }
    };
    if functions.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "'tool_choice' asks for a call, but no 'tools' are given",
            )),
        };
    }
    Ok(Some(Tools {
        functions,
        raw: Value::Array(list.cloned().unwrap_or_default()),
        choice,
        parallel,
    }))
}

/// The JSON schema of one call in the JSON syntax: `name` first, then the arguments (under
/// `key`, see [`arguments_key`]) valid for that function, nothing else; one alternative per
/// function. `compact`: spaced exactly as the template prints a call; otherwise the blank
/// space of any constrained JSON.
fn call_schema(functions: &[&Function], key: &str, compact: bool) -> Value {
    let alts: Vec<Value> = functions
        .iter()
        .map(|f| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({"const": f.name}));
            properties.insert(key.into(), f.parameters.clone());
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = if alts.len() == 1 {
        alts.into_iter().next().unwrap_or_default()
    } else {
        json!({ "anyOf": alts })
    };
    schema["x-guidance"] = if compact {
        // the call exactly as the template prints one (`{"name": "f", "arguments": {"k": 1}}`):
        // single spaces after separators and no other whitespace, so a model cannot wander
        // into blank space inside a call
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
    } else {
        // a bare call is laid out as the model chose to begin it (often pretty-printed)
        json!({ "whitespace_pattern": JSON_WHITESPACE })
    };
    schema
}

/// The functions a call may name under `tool_choice`.
fn callable(tools: &Tools) -> Vec<&Function> {
    match &tools.choice {
        ToolChoice::Named(n) => tools.functions.iter().filter(|f| &f.name == n).collect(),
        _ => tools.functions.iter().collect(),
    }
}

/// How far the start of an answer is into a bare call's opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// It is not one.
    No,
    /// It may still become one.
    Maybe,
    /// It is one: blank space, an optional code fence, `{`, `"name"`, `:` are complete.
    Yes,
}

/// Whether `text`, the start of an answer, opens a bare JSON call: optional blank space, an
/// optional code fence (```` ``` ```` or ```` ```json ````) and blank space, then `{`, blank
/// space, `"name"`, blank space and `:`.
pub fn bare_opener(text: &[u8]) -> Opener {
    opens_with(text, &[b"{", b"\"name\"", b":"])
}

/// [`bare_opener`] for the syntax a parser reads: Llama 3.x's calls may also open with
/// `{"type": "function", "name":` (as llama.cpp reads them).
pub fn call_opener(text: &[u8], syntax: ToolCallFormat) -> Opener {
    let plain = bare_opener(text);
    if syntax != ToolCallFormat::Llama3Json || plain == Opener::Yes {
        return plain;
    }
    let typed = &[
        &b"{"[..],
        b"\"type\"",
        b":",
        b"\"function\"",
        b",",
        b"\"name\"",
        b":",
    ];
    match (plain, opens_with(text, typed)) {
        (_, Opener::Yes) => Opener::Yes,
        (Opener::Maybe, _) | (_, Opener::Maybe) => Opener::Maybe,
        _ => Opener::No,
    }
}

/// Whether `text` is blank space, an optional code fence and blank space, then `words` with
/// blank space between them.
fn opens_with(text: &[u8], words: &[&[u8]]) -> Opener {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < text.len() && text[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // `Some(true)` matched, `Some(false)` mismatched, `None` ran out of text
    let word_at = |i: &mut usize, word: &[u8]| -> Option<bool> {
        for &c in word {
            match text.get(*i) {
                None => return None,
                Some(&b) if b == c => *i += 1,
                Some(_) => return Some(false),
            }
        }
        Some(true)
    };
    skip_ws(&mut i);
    if text.get(i) == Some(&b'`') {
        match word_at(&mut i, b"```") {
            None => return Opener::Maybe,
            Some(false) => return Opener::No,
            Some(true) => {}
        }
        if text.get(i) == Some(&b'j') {
            match word_at(&mut i, b"json") {
                None => return Opener::Maybe,
                Some(false) => return Opener::No,
                Some(true) => {}
            }
        }
    }
    for word in words {
        skip_ws(&mut i);
        match word_at(&mut i, word) {
            None => return Opener::Maybe,
            Some(false) => return Opener::No,
            Some(true) => {}
        }
    }
    Opener::Yes
}

/// The Lark grammar of an answer that is bare calls (see [`bare_opener`]), from the answer's
/// first token: blank space and a code fence as the opening allows, the calls (one per line
/// when parallel; always one in the Llama 3.x syntax), the closing fence.
pub fn bare_grammar(tools: &Tools, syntax: ToolCallFormat) -> String {
    let more = if tools.parallel && syntax != ToolCallFormat::Llama3Json {
        format!("({} call)*", lit("\n"))
    } else {
        String::new()
    };
    format!(
        "start: LEAD? call {more} TAIL?\nLEAD: /[ \\t\\r\\n]*```(json)?[ \\t\\r\\n]*|[ \\t\\r\\n]+/\nTAIL: /[ \\t\\r\\n]*```/\ncall: %json {}\n",
        call_schema(&callable(tools), arguments_key(syntax), false)
    )
}

/// A Lark string literal of `s`.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The Lark grammar (llguidance's dialect) of the calls `tools` allows. With `opened`, the
/// grammar starts right after an `<tool_call>` the model wrote itself (`tool_choice: auto`);
/// otherwise it starts at the first token of the answer (`required` or a named function).
/// After the last call only the end of the turn may follow. The Llama 3.x syntax has no tag:
/// its grammar is one call from the first token, `opened` or not.
pub fn grammar(tools: &Tools, syntax: ToolCallFormat, opened: bool) -> String {
    let chosen = callable(tools);
    let body = match syntax {
        ToolCallFormat::Llama3Json => {
            // one call, as the template prints it: the model's next turn renders one call
            return format!(
                "start: call\ncall: %json {}\n",
                call_schema(&chosen, arguments_key(syntax), true)
            );
        }
        ToolCallFormat::HermesJson | ToolCallFormat::None => {
            format!(
                "body: {} %json {}\n",
                lit("\n"),
                call_schema(&chosen, arguments_key(syntax), true)
            )
        }
        ToolCallFormat::Qwen3CoderXml => {
            // one alternative per function: its name, then its declared parameters as
            // `<parameter=KEY>` blocks whose values are free text without a closing tag
            let alts: Vec<String> = chosen
                .iter()
                .map(|f| {
                    let keys: Vec<String> = f
                        .parameters
                        .get("properties")
                        .and_then(Value::as_object)
                        .map(|p| p.keys().map(|k| lit(k)).collect())
                        .unwrap_or_default();
                    let params = if keys.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} ({}) {} VALUE {})*",
                            lit("<parameter="),
                            keys.join(" | "),
                            lit(">\n"),
                            lit("</parameter>\n")
                        )
                    };
                    format!(
                        "{}{params} {}",
                        lit(&format!("\n<function={}>\n", f.name)),
                        lit("</function>")
                    )
                })
                .collect();
            format!(
                "body: {}\nVALUE: /([^<]|<[^\\/])*/\n",
                alts.join("\n    | ")
            )
        }
    };
    let call = format!("call: {} body {}\n", lit(OPEN), lit(&format!("\n{CLOSE}")));
    let first = format!("first: body {}\n", lit(&format!("\n{CLOSE}")));
    let more = if tools.parallel {
        format!("({} call)*", lit("\n"))
    } else {
        String::new()
    };
    let start = if opened {
        format!("start: first {more}\n")
    } else {
        format!("start: call {more}\n")
    };
    format!("{start}{first}{call}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Map<String, Value> {
        json!({"tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "days": {"type": "integer"}}, "required": ["city"]}}}]})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn tool_fields_are_validated_by_name() {
        let o = |v: Value| v.as_object().unwrap().clone();
        let err = |v: Value| parse(&o(v)).unwrap_err().param.unwrap();
        assert_eq!(err(json!({"tools": 3})), "tools");
        assert_eq!(
            err(json!({"tools": [{"type": "retrieval"}]})),
            "tools[0].type"
        );
        assert_eq!(
            err(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})),
            "tools[0].function.name"
        );
        assert_eq!(
            err(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]})
            ),
            "tools[0].function.parameters"
        );
        assert_eq!(err(json!({"tool_choice": "required"})), "tool_choice");
        let mut w = weather();
        w.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": "nope"}}),
        );
        assert_eq!(parse(&w).unwrap_err().param.unwrap(), "tool_choice");
        w.insert("tool_choice".into(), json!("sometimes"));
        assert_eq!(parse(&w).unwrap_err().param.unwrap(), "tool_choice");
        w.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        );
        w.insert("parallel_tool_calls".into(), json!(false));
        let t = parse(&w).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Named("get_weather".into()));
        assert!(!t.parallel);
        assert_eq!(parse(&o(json!({"tools": []}))).unwrap(), None);
    }

    #[test]
    fn the_grammar_names_every_offered_function() {
        let tools = parse(&weather()).unwrap().unwrap();
        let g = grammar(&tools, ToolCallFormat::HermesJson, false);
        assert!(g.starts_with("start: call (\"\\n\" call)*"), "{g}");
        assert!(g.contains("\"const\":\"get_weather\""), "{g}");
        let g = grammar(&tools, ToolCallFormat::HermesJson, true);
        assert!(g.starts_with("start: first"), "{g}");
        // Llama 3.x: one untagged call, its arguments under "parameters", parallel or not
        for opened in [false, true] {
            let g = grammar(&tools, ToolCallFormat::Llama3Json, opened);
            assert!(g.starts_with("start: call\ncall: %json {"), "{g}");
            assert!(g.contains("\"parameters\":{"), "{g}");
            assert!(!g.contains("arguments") && !g.contains(OPEN), "{g}");
        }
        let g = bare_grammar(&tools, ToolCallFormat::Llama3Json);
        assert!(g.starts_with("start: LEAD? call  TAIL?"), "{g}");
        assert!(g.contains("\"required\":[\"name\",\"parameters\"]"), "{g}");
        let g = bare_grammar(&tools, ToolCallFormat::HermesJson);
        assert!(
            g.starts_with("start: LEAD? call (\"\\n\" call)* TAIL?"),
            "{g}"
        );
    }
}
