//! Tool calls: the `tools` / `tool_choice` / `parallel_tool_calls` fields validated, the
//! grammar that constrains a call to the offered functions, and the parser that turns the
//! model's own call syntax back into OpenAI's `tool_calls`.
//!
//! Two syntaxes, as the chat templates teach them ([`ToolCallFormat`]):
//! - [`ToolCallFormat::HermesJson`] (Qwen2.5, Qwen3):
//!   `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`;
//! - [`ToolCallFormat::Qwen3CoderXml`] (Qwen3-Coder): `<tool_call>\n<function=f>\n<parameter=p>\nvalue\n</parameter>\n</function>\n</tool_call>`.
//!
//! Small models often drop the tags in the JSON syntax and answer with the bare object,
//! `{"name": "f", "arguments": {...}}`, sometimes in a code fence (the default 0.5B model does
//! so with `tool_choice: auto`). An answer that *opens* that way (see [`bare_opener`]) is read
//! as calls too, as llama.cpp reads them.
//!
//! [`CallParser`] reads the generated text as it streams. Text outside calls is content (a
//! possible start of `<tool_call>` is held back, so the tag never leaks into content); inside
//! a call it reports the function's name as soon as it is complete and, for the JSON syntax,
//! the raw text of the `arguments` value as it arrives, so the streamed fragments concatenate
//! to exactly the non-streamed `function.arguments`.

use serde_json::{json, Map, Value};

use crate::engine::constraint::{checked_schema, JSON_WHITESPACE};
use crate::server::api::ApiError;
use crate::text::template::ToolCallFormat;

/// The tag that opens a call in both syntaxes.
pub const OPEN: &str = "<tool_call>";
/// The tag that closes a call.
pub const CLOSE: &str = "</tool_call>";

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

/// The JSON schema of one call in the JSON syntax: `name` first, then `arguments` valid for
/// that function, nothing else; one alternative per function. `compact`: spaced exactly as
/// the template prints a call; otherwise the blank space of any constrained JSON.
fn call_schema(functions: &[&Function], compact: bool) -> Value {
    let alts: Vec<Value> = functions
        .iter()
        .map(|f| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": f.parameters,
                },
                "required": ["name", "arguments"],
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
    for word in [&b"{"[..], b"\"name\"", b":"] {
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
/// when parallel), the closing fence.
pub fn bare_grammar(tools: &Tools) -> String {
    let more = if tools.parallel {
        format!("({} call)*", lit("\n"))
    } else {
        String::new()
    };
    format!(
        "start: LEAD? call {more} TAIL?\nLEAD: /[ \\t\\r\\n]*```(json)?[ \\t\\r\\n]*|[ \\t\\r\\n]+/\nTAIL: /[ \\t\\r\\n]*```/\ncall: %json {}\n",
        call_schema(&callable(tools), false)
    )
}

/// A Lark string literal of `s`.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The Lark grammar (llguidance's dialect) of the calls `tools` allows. With `opened`, the
/// grammar starts right after an `<tool_call>` the model wrote itself (`tool_choice: auto`);
/// otherwise it starts at the first token of the answer (`required` or a named function).
/// After the last call only the end of the turn may follow. `None` for the XML syntax with
/// `opened` (its parameters are free text; the parser still checks the result).
pub fn grammar(tools: &Tools, syntax: ToolCallFormat, opened: bool) -> String {
    let chosen = callable(tools);
    let body = match syntax {
        ToolCallFormat::HermesJson | ToolCallFormat::None => {
            format!("body: {} %json {}\n", lit("\n"), call_schema(&chosen, true))
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

/// One change to the answer's tool calls, in OpenAI's delta terms.
#[derive(Clone, Debug, PartialEq)]
pub enum CallEvent {
    /// Text of the answer outside any call.
    Content(String),
    /// A call began: its index in `tool_calls`, its id and its function's name.
    Start {
        /// Position in `tool_calls`.
        index: usize,
        /// `call_...`.
        id: String,
        /// The function.
        name: String,
    },
    /// More of call `index`'s `arguments` (a JSON text; the fragments concatenate).
    Arguments {
        /// Position in `tool_calls`.
        index: usize,
        /// The next piece.
        fragment: String,
    },
}

/// A finished call.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `call_...`.
    pub id: String,
    /// The function.
    pub name: String,
    /// Its arguments as a JSON text.
    pub arguments: String,
}

/// Where the parser is.
#[derive(Debug)]
enum State {
    /// Outside a call; `held` may be the start of [`OPEN`].
    Text,
    /// Inside a call: everything after the opening tag so far (for a bare call, its text
    /// from the `{`).
    Call {
        /// A bare call: it ends where its JSON object closes, not at a closing tag.
        bare: bool,
        buf: String,
        /// The name, once reported.
        name: Option<String>,
        /// Bytes of the arguments' raw text reported so far (JSON syntax).
        sent: usize,
    },
}

/// Splits the generated text into content and calls as it streams (see the module docs).
#[derive(Debug)]
pub struct CallParser {
    syntax: ToolCallFormat,
    state: State,
    held: String,
    calls: Vec<Call>,
    /// Whether the answer may still be (more) bare calls: nothing but blank space and bare
    /// calls so far.
    bare_ok: bool,
    /// The last call was bare (its closing code fence is not content).
    after_bare: bool,
    /// Parameter schemas by function, to type XML parameter values.
    params: Vec<(String, Value)>,
    id_seed: u64,
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag` (what to hold
/// back while a tag may be starting).
pub(crate) fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// Where the JSON value starting at `s[0]` ends (exclusive), or `None` if it is not complete
/// yet; strings and escapes are skipped, brackets counted.
fn json_value_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => {
                    in_str = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            // a scalar at depth 0 ends at the first delimiter
            b',' | b'\n' | b' ' | b'\r' | b'\t' if depth == 0 && i > 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The offset of the value of key `key` in the JSON object text `s` (top level only), once
/// the key and its colon are complete.
fn value_offset(s: &str, key: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (mut depth, mut in_str, mut esc, mut start) = (0usize, false, false, 0usize);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => {
                    in_str = false;
                    if depth == 1 && &s[start + 1..i] == key {
                        // skip whitespace and the colon
                        let rest = &s[i + 1..];
                        let t = rest.trim_start();
                        let t = t.strip_prefix(':')?;
                        let t2 = t.trim_start();
                        if t2.is_empty() {
                            return None;
                        }
                        return Some(s.len() - t2.len());
                    }
                }
                _ => {}
            }
        } else {
            match c {
                b'"' => {
                    in_str = true;
                    start = i;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

impl CallParser {
    /// A parser for `syntax`; `tools` gives the XML syntax its parameter types.
    pub fn new(syntax: ToolCallFormat, tools: Option<&Tools>, id_seed: u64) -> CallParser {
        CallParser {
            syntax,
            state: State::Text,
            held: String::new(),
            calls: Vec::new(),
            bare_ok: syntax != ToolCallFormat::Qwen3CoderXml,
            after_bare: false,
            params: tools
                .map(|t| {
                    t.functions
                        .iter()
                        .map(|f| (f.name.clone(), f.parameters.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            id_seed,
        }
    }

    /// The calls finished so far.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    fn new_id(&self) -> String {
        let x = self
            .id_seed
            .wrapping_add(self.calls.len() as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!("call_{:016x}", x ^ (x >> 29))
    }

    /// Takes the next piece of generated text; appends what it completes to `out`.
    pub fn push(&mut self, text: &str, out: &mut Vec<CallEvent>) {
        self.held.push_str(text);
        loop {
            match &mut self.state {
                State::Text => {
                    if self.after_bare {
                        // the code fence that closes bare calls is not content
                        let t = self.held.trim_start();
                        if let Some(rest) = t.strip_prefix("```") {
                            self.held = rest.to_string();
                            self.after_bare = false;
                        } else if "```".starts_with(t) {
                            return;
                        } else {
                            self.after_bare = false;
                        }
                    }
                    if self.bare_ok {
                        match bare_opener(self.held.as_bytes()) {
                            Opener::Maybe => return,
                            Opener::Yes => {
                                let p = self.held.find('{').unwrap_or(0);
                                self.held.drain(..p);
                                self.state = State::Call {
                                    bare: true,
                                    buf: String::new(),
                                    name: None,
                                    sent: 0,
                                };
                                continue;
                            }
                            Opener::No => self.bare_ok = false,
                        }
                    }
                    if let Some(p) = self.held.find(OPEN) {
                        // whitespace before a call separates, it is not content
                        let before = self.held[..p].trim_end();
                        if !before.is_empty() {
                            out.push(CallEvent::Content(before.to_string()));
                        }
                        self.held.drain(..p + OPEN.len());
                        self.state = State::Call {
                            bare: false,
                            buf: String::new(),
                            name: None,
                            sent: 0,
                        };
                        continue;
                    }
                    // hold back a possible start of the tag and the whitespace before it
                    let keep = partial_suffix(&self.held, OPEN);
                    let n = self.held[..self.held.len() - keep].trim_end().len();
                    if n > 0 {
                        out.push(CallEvent::Content(self.held.drain(..n).collect()));
                    }
                    return;
                }
                State::Call { bare, buf, .. } => {
                    buf.push_str(&self.held);
                    self.held.clear();
                    // (where the call's text ends, where what follows it starts)
                    let closed = if *bare {
                        json_value_end(buf).map(|e| (e, e))
                    } else {
                        buf.find(CLOSE).map(|c| (c, c + CLOSE.len()))
                    };
                    let bare = *bare;
                    let visible_end = closed.map_or(buf.len(), |(e, _)| e);
                    self.progress(visible_end, out);
                    if let Some((end, next)) = closed {
                        let State::Call { buf, .. } = &mut self.state else {
                            return;
                        };
                        let rest = buf[next..].to_string();
                        buf.truncate(end);
                        self.close(out);
                        self.held = rest;
                        self.after_bare = bare;
                        self.bare_ok = bare;
                        continue;
                    }
                    return;
                }
            }
        }
    }

    /// Reports the name and argument text of the open call within `buf[..end]`.
    fn progress(&mut self, end: usize, out: &mut Vec<CallEvent>) {
        let index = self.calls.len();
        let id = self.new_id();
        let syntax = self.syntax;
        let State::Call {
            buf, name, sent, ..
        } = &mut self.state
        else {
            return;
        };
        let body = &buf[..end];
        if name.is_none() {
            let found = match syntax {
                ToolCallFormat::HermesJson | ToolCallFormat::None => value_offset(body, "name")
                    .and_then(|o| {
                        let v = &body[o..];
                        let e = json_value_end(v)?;
                        serde_json::from_str::<String>(&v[..e]).ok()
                    }),
                ToolCallFormat::Qwen3CoderXml => body.find("<function=").and_then(|o| {
                    let r = &body[o + "<function=".len()..];
                    r.find('>').map(|e| r[..e].to_string())
                }),
            };
            if let Some(n) = found {
                out.push(CallEvent::Start {
                    index,
                    id,
                    name: n.clone(),
                });
                *name = Some(n);
            }
        }
        if name.is_some() && syntax != ToolCallFormat::Qwen3CoderXml {
            if let Some(o) = value_offset(body, "arguments") {
                let v = &body[o..];
                let upto = json_value_end(v).unwrap_or_else(|| {
                    // while incomplete, keep back trailing whitespace (it may end the value)
                    v.trim_end().len()
                });
                if upto > *sent {
                    out.push(CallEvent::Arguments {
                        index,
                        fragment: v[*sent..upto].to_string(),
                    });
                    *sent = upto;
                }
            }
        }
    }

    /// Ends the open call (its closing tag seen, or the text ended).
    fn close(&mut self, out: &mut Vec<CallEvent>) {
        let index = self.calls.len();
        let State::Call {
            bare,
            buf,
            name,
            sent,
        } = std::mem::replace(&mut self.state, State::Text)
        else {
            return;
        };
        let Some(name) = name else {
            // never named: not a call after all; its text is content
            let t = if bare { buf } else { format!("{OPEN}{buf}") };
            out.push(CallEvent::Content(t));
            return;
        };
        let id = self.new_id();
        let arguments = match self.syntax {
            ToolCallFormat::HermesJson | ToolCallFormat::None => {
                let v = value_offset(&buf, "arguments")
                    .map(|o| &buf[o..])
                    .unwrap_or("");
                let end = json_value_end(v).unwrap_or(v.trim_end().len());
                let args = &v[..end];
                if args.len() > sent {
                    out.push(CallEvent::Arguments {
                        index,
                        fragment: args[sent..].to_string(),
                    });
                } else if sent == 0 {
                    out.push(CallEvent::Arguments {
                        index,
                        fragment: "{}".into(),
                    });
                    self.calls.push(Call {
                        id,
                        name,
                        arguments: "{}".into(),
                    });
                    return;
                }
                args.to_string()
            }
            ToolCallFormat::Qwen3CoderXml => {
                let schema = self
                    .params
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| s.clone())
                    .unwrap_or(Value::Null);
                let args = xml_arguments(&buf, &schema).to_string();
                out.push(CallEvent::Arguments {
                    index,
                    fragment: args.clone(),
                });
                args
            }
        };
        self.calls.push(Call {
            id,
            name,
            arguments,
        });
    }

    /// Ends the text: flushes held-back content and closes an unterminated call.
    pub fn finish(&mut self, out: &mut Vec<CallEvent>) {
        match self.state {
            State::Text => {
                let t = std::mem::take(&mut self.held);
                // after a call, trailing whitespace is separation
                let t = if self.calls.is_empty() {
                    &t[..]
                } else {
                    t.trim_end()
                };
                if !t.is_empty() {
                    out.push(CallEvent::Content(t.to_string()));
                }
            }
            State::Call { .. } => {
                let end = match &self.state {
                    State::Call { buf, .. } => buf.len(),
                    State::Text => 0,
                };
                self.progress(end, out);
                self.close(out);
            }
        }
    }
}

/// The arguments object of an XML call body: each `<parameter=KEY>\nVALUE\n</parameter>`,
/// the value parsed as JSON where the parameter's schema type is not `string` and it parses.
fn xml_arguments(body: &str, schema: &Value) -> Value {
    let mut args = Map::new();
    let mut rest = body;
    while let Some(p) = rest.find("<parameter=") {
        let r = &rest[p + "<parameter=".len()..];
        let Some(k) = r.find('>') else { break };
        let key = r[..k].to_string();
        let r = &r[k + 1..];
        let (raw, next) = match r.find("</parameter>") {
            Some(e) => (&r[..e], &r[e + "</parameter>".len()..]),
            None => (r, ""),
        };
        let raw = raw.strip_prefix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let ty = schema
            .get("properties")
            .and_then(|p| p.get(&key))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        let value = match ty {
            Some("string") => Value::String(raw.to_string()),
            _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        };
        args.insert(key, value);
        rest = next;
    }
    Value::Object(args)
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

    fn run(p: &mut CallParser, pieces: &[&str]) -> Vec<CallEvent> {
        let mut out = Vec::new();
        for s in pieces {
            p.push(s, &mut out);
        }
        p.finish(&mut out);
        out
    }

    /// Content and argument fragments merged, for comparing a split against a whole.
    fn merged(events: &[CallEvent]) -> (String, Vec<(String, String)>) {
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for e in events {
            match e {
                CallEvent::Content(t) => content.push_str(t),
                CallEvent::Start { name, index, .. } => {
                    assert_eq!(*index, calls.len());
                    calls.push((name.clone(), String::new()));
                }
                CallEvent::Arguments { index, fragment } => calls[*index].1.push_str(fragment),
            }
        }
        (content, calls)
    }

    #[test]
    fn json_calls_parse_the_same_whatever_the_split() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"<x>\\\"\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>";
        let whole = run(
            &mut CallParser::new(ToolCallFormat::HermesJson, None, 1),
            &[text],
        );
        let (content, calls) = merged(&whole);
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![
                (
                    "get_weather".to_string(),
                    "{\"city\": \"Paris \\\"<x>\\\"\", \"days\": 2}".to_string()
                ),
                (
                    "get_weather".to_string(),
                    "{\"city\": \"Rome\"}".to_string()
                )
            ]
        );
        // every split point of the text, one byte at a time as a worst case
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let mut p = CallParser::new(ToolCallFormat::HermesJson, None, 1);
        let bytewise = run(&mut p, &pieces);
        assert_eq!(merged(&bytewise), (content, calls));
        assert_eq!(p.calls().len(), 2);
        // the name is reported before the arguments are complete
        let mut p = CallParser::new(ToolCallFormat::HermesJson, None, 1);
        let mut out = Vec::new();
        p.push(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci",
            &mut out,
        );
        assert!(matches!(&out[0], CallEvent::Start { name, .. } if name == "get_weather"));
        assert!(matches!(&out[1], CallEvent::Arguments { fragment, .. } if fragment == "{\"ci"));
    }

    #[test]
    fn bare_calls_are_calls_in_a_fence_or_not() {
        assert_eq!(bare_opener(b"  "), Opener::Maybe);
        assert_eq!(bare_opener(b"```js"), Opener::Maybe);
        assert_eq!(bare_opener(b"```python"), Opener::No);
        assert_eq!(bare_opener(b"{\n  \"na"), Opener::Maybe);
        assert_eq!(bare_opener(b"{\"city\":"), Opener::No);
        assert_eq!(bare_opener(b"Sure"), Opener::No);
        assert_eq!(bare_opener(b"```json\n{\n  \"name\":"), Opener::Yes);
        let args = "{\"city\": \"Paris\"}";
        for text in [
            format!("{{\"name\": \"get_weather\", \"arguments\": {args}}}"),
            format!("```json\n{{\n  \"name\": \"get_weather\",\n  \"arguments\": {args}\n}}\n```"),
        ] {
            for split in [1, 3, 7, text.len()] {
                let chars: Vec<char> = text.chars().collect();
                let pieces: Vec<String> = chars.chunks(split).map(|c| c.iter().collect()).collect();
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let mut p = CallParser::new(ToolCallFormat::HermesJson, None, 1);
                let (content, calls) = merged(&run(&mut p, &pieces));
                assert_eq!(content, "", "{text:?} split {split}");
                assert_eq!(calls, vec![("get_weather".to_string(), args.to_string())]);
            }
        }
        // JSON that is not a call stays content
        let mut p = CallParser::new(ToolCallFormat::HermesJson, None, 1);
        let (content, calls) = merged(&run(&mut p, &["{\"city\": 1}"]));
        assert_eq!((content.as_str(), calls.len()), ("{\"city\": 1}", 0));
    }

    #[test]
    fn the_open_tag_never_leaks_into_content() {
        let mut p = CallParser::new(ToolCallFormat::HermesJson, None, 1);
        let mut out = Vec::new();
        p.push("Sure <tool", &mut out);
        assert_eq!(out, vec![CallEvent::Content("Sure".into())]);
        p.push("box> is fine", &mut out);
        p.finish(&mut out);
        assert_eq!(merged(&out).0, "Sure <toolbox> is fine");
        assert!(p.calls().is_empty());
    }

    #[test]
    fn xml_calls_type_their_values_by_the_schema() {
        let tools = parse(&weather()).unwrap().unwrap();
        let text = "<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
        let mut p = CallParser::new(ToolCallFormat::Qwen3CoderXml, Some(&tools), 5);
        let events = run(&mut p, &[&text[..20], &text[20..]]);
        let (content, calls) = merged(&events);
        assert_eq!(content, "");
        let args: Value = serde_json::from_str(&calls[0].1).unwrap();
        assert_eq!(args, json!({"city": "42", "days": 3}));
        assert_eq!(p.calls()[0].name, "get_weather");
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
    }
}
