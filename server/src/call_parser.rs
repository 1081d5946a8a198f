//! The parser that turns the model's own tool-call syntax (see [`super::tools`]) back into
//! OpenAI's `tool_calls`.
//!
//! [`CallParser`] reads the generated text as it streams. Text outside calls is content (a
//! possible start of `<tool_call>` is held back, so the tag never leaks into content); inside
//! a call it reports the function's name as soon as it is complete and, for the JSON syntax,
//! the raw text of the `arguments` value as it arrives, so the streamed fragments concatenate
//! to exactly the non-streamed `function.arguments`. An answer that opens with a bare call
//! ([`call_opener`]) is read as calls too: that is the Llama 3.x syntax's only JSON form (its
//! arguments under `parameters`). Llama 3.x's `<|python_tag|>` takes the place of the tag: a
//! JSON call after it streams as a bare one; a built-in call (`NAME.call(KEY=VALUE, ...)`) or
//! code for an offered `python`/`code_interpreter` tool is read whole when the text ends.

use serde_json::{Map, Value};

use crate::tools::{arguments_key, call_opener, Opener, Tools, CLOSE, OPEN, PYTHON_TAG};
use qwenrt::text::template::ToolCallFormat;

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
    /// Outside a call; `held` may be the start of the tag (see [`CallParser::open_tag`]).
    Text,
    /// After Llama 3.x's [`PYTHON_TAG`]: what follows it so far, until it is seen to be a JSON
    /// call (then [`State::Call`]) or the text ends (then a built-in call or code).
    Tagged { buf: String },
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

    /// The text that opens a call in this syntax.
    fn open_tag(&self) -> &'static str {
        match self.syntax {
            ToolCallFormat::Llama3Json => PYTHON_TAG,
            _ => OPEN,
        }
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
                        match call_opener(self.held.as_bytes(), self.syntax) {
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
                    let open = self.open_tag();
                    if let Some(p) = self.held.find(open) {
                        // whitespace before a call separates, it is not content
                        let before = self.held[..p].trim_end();
                        if !before.is_empty() {
                            out.push(CallEvent::Content(before.to_string()));
                        }
                        self.held.drain(..p + open.len());
                        self.state = if open == PYTHON_TAG {
                            State::Tagged { buf: String::new() }
                        } else {
                            State::Call {
                                bare: false,
                                buf: String::new(),
                                name: None,
                                sent: 0,
                            }
                        };
                        continue;
                    }
                    // hold back a possible start of the tag and the whitespace before it
                    let keep = partial_suffix(&self.held, open);
                    let n = self.held[..self.held.len() - keep].trim_end().len();
                    if n > 0 {
                        out.push(CallEvent::Content(self.held.drain(..n).collect()));
                    }
                    return;
                }
                State::Tagged { buf } => {
                    buf.push_str(&self.held);
                    self.held.clear();
                    let t = buf.trim_start();
                    if t.starts_with('{') {
                        // a JSON call after the tag (Llama 3.2 writes them so): a bare call
                        self.held = t.to_string();
                        self.state = State::Call {
                            bare: true,
                            buf: String::new(),
                            name: None,
                            sent: 0,
                        };
                        continue;
                    }
                    // a built-in call or code, read whole when the text ends
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
                ToolCallFormat::HermesJson | ToolCallFormat::Llama3Json | ToolCallFormat::None => {
                    value_offset(body, "name").and_then(|o| {
                        let v = &body[o..];
                        let e = json_value_end(v)?;
                        serde_json::from_str::<String>(&v[..e]).ok()
                    })
                }
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
            if let Some(o) = value_offset(body, arguments_key(syntax)) {
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
            ToolCallFormat::HermesJson | ToolCallFormat::Llama3Json | ToolCallFormat::None => {
                let v = value_offset(&buf, arguments_key(self.syntax))
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
            State::Tagged { ref mut buf } => {
                let text = std::mem::take(buf);
                self.state = State::Text;
                match self.tagged_call(&text) {
                    Some((name, arguments)) => {
                        let (index, id) = (self.calls.len(), self.new_id());
                        out.push(CallEvent::Start {
                            index,
                            id: id.clone(),
                            name: name.clone(),
                        });
                        out.push(CallEvent::Arguments {
                            index,
                            fragment: arguments.clone(),
                        });
                        self.calls.push(Call {
                            id,
                            name,
                            arguments,
                        });
                    }
                    // not a call after all: the tag and its text are content
                    None => out.push(CallEvent::Content(format!("{PYTHON_TAG}{text}"))),
                }
            }
            State::Call { .. } => {
                let end = match &self.state {
                    State::Call { buf, .. } => buf.len(),
                    _ => 0,
                };
                self.progress(end, out);
                self.close(out);
            }
        }
    }

    /// The call in what followed [`PYTHON_TAG`] (not JSON): a built-in call
    /// `NAME.call(KEY=VALUE, ...)`, or else code, a call of the offered `python` (or
    /// `code_interpreter`) tool with `{"code": ...}`, as llama.cpp reads them. `(name,
    /// arguments)`.
    fn tagged_call(&self, text: &str) -> Option<(String, String)> {
        let text = text.trim();
        if let Some(call) = dot_call(text) {
            return Some(call);
        }
        let python = self
            .params
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| *n == "python" || *n == "code_interpreter")?;
        (!text.is_empty()).then(|| {
            (
                python.to_string(),
                serde_json::json!({ "code": text }).to_string(),
            )
        })
    }
}

/// Reads `NAME.call(KEY=VALUE, ...)`, each value JSON, the whole of `text`: the name and the
/// arguments as a JSON object text.
fn dot_call(text: &str) -> Option<(String, String)> {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let (name, mut rest) = text.split_once(".call(")?;
    let name = name.trim();
    if !word(name) {
        return None;
    }
    let mut args = Map::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(')') {
            return after
                .trim()
                .is_empty()
                .then(|| (name.to_string(), Value::Object(args).to_string()));
        }
        let (key, value) = rest.split_once('=')?;
        let key = key.trim();
        if !word(key) {
            return None;
        }
        let value = value.trim_start();
        // a string, array or object ends where it closes; a number or literal at `,` or `)`
        let end = if value.starts_with(['"', '[', '{']) {
            json_value_end(value)?
        } else {
            value.find([',', ')'])?
        };
        let parsed: Value = serde_json::from_str(value[..end].trim()).ok()?;
        args.insert(key.to_string(), parsed);
        rest = value[end..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with(')') {
            return None;
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
    use crate::tools::{bare_opener, parse};
    use serde_json::json;

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
        // Llama 3.x's calls may name their type first; Hermes's may not
        let typed = b"{\"type\": \"function\", \"name\":";
        assert_eq!(call_opener(typed, ToolCallFormat::Llama3Json), Opener::Yes);
        assert_eq!(
            call_opener(&typed[..12], ToolCallFormat::Llama3Json),
            Opener::Maybe
        );
        assert_eq!(
            call_opener(b"{\"type\": \"obj", ToolCallFormat::Llama3Json),
            Opener::No
        );
        assert_eq!(call_opener(typed, ToolCallFormat::HermesJson), Opener::No);
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

    /// `pieces` of `text` split every `n` characters.
    fn split(text: &str, n: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }

    fn llama3(text: &str, n: usize, tools: Option<&Tools>) -> (String, Vec<(String, String)>) {
        let pieces = split(text, n);
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let mut p = CallParser::new(ToolCallFormat::Llama3Json, tools, 1);
        let events = run(&mut p, &pieces);
        let merged = merged(&events);
        assert_eq!(p.calls().len(), merged.1.len());
        merged
    }

    #[test]
    fn llama3_json_calls_parse_the_same_whatever_the_split() {
        let args = "{\"city\": \"Paris \\\"}\\\"\", \"days\": 2}";
        let want = vec![("get_weather".to_string(), args.to_string())];
        for text in [
            format!("{{\"name\": \"get_weather\", \"parameters\": {args}}}"),
            format!(
                "\n{{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {args}}}"
            ),
            format!("<|python_tag|>{{\"name\": \"get_weather\", \"parameters\": {args}}}"),
            format!("```json\n{{\n  \"name\": \"get_weather\",\n  \"parameters\": {args}\n}}\n```"),
        ] {
            for n in [1, 2, 5, text.len()] {
                assert_eq!(
                    llama3(&text, n, None),
                    (String::new(), want.clone()),
                    "{text:?} / {n}"
                );
            }
        }
        // Hermes's key is not Llama's: such an object is a call without arguments
        let (content, calls) = llama3("{\"name\": \"f\", \"arguments\": {\"x\": 1}}", 3, None);
        assert_eq!(
            (content.as_str(), calls),
            ("", vec![("f".into(), "{}".into())])
        );
        // JSON that is not a call, and text before a would-be call, stay content
        for text in [
            "{\"type\": \"object\", \"name\": 1}",
            "{\"city\": \"Paris\"}",
            "Here: {\"name\": \"f\", \"parameters\": {}}",
            "<tool_call>\n{\"name\": \"f\", \"parameters\": {}}\n</tool_call>",
        ] {
            for n in [1, 4, text.len()] {
                assert_eq!(
                    llama3(text, n, None),
                    (text.to_string(), vec![]),
                    "{text:?} / {n}"
                );
            }
        }
    }

    #[test]
    fn llama3_builtin_calls_and_code_after_the_python_tag() {
        let text = "Searching.<|python_tag|>brave_search.call(query=\"a, b) c\", n=3, deep=true)";
        for n in [1, 3, text.len()] {
            let (content, calls) = llama3(text, n, None);
            assert_eq!(content, "Searching.");
            assert_eq!(calls.len(), 1, "{calls:?}");
            assert_eq!(calls[0].0, "brave_search");
            let args: Value = serde_json::from_str(&calls[0].1).unwrap();
            assert_eq!(args, json!({"query": "a, b) c", "n": 3, "deep": true}));
        }
        assert_eq!(
            llama3("<|python_tag|>wolfram_alpha.call()", 2, None).1,
            vec![("wolfram_alpha".to_string(), "{}".to_string())]
        );
        // code: a call of the offered python tool, else content as written
        let code = "<|python_tag|>print('hello world')";
        assert_eq!(llama3(code, 4, None), (code.to_string(), vec![]));
        let python = json!({"tools": [{"type": "function", "function": {"name": "python",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}}]});
        let tools = parse(python.as_object().unwrap()).unwrap().unwrap();
        let (content, calls) = llama3(code, 4, Some(&tools));
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![(
                "python".to_string(),
                "{\"code\":\"print('hello world')\"}".to_string()
            )]
        );
        // a malformed built-in call is not one
        for bad in [
            "x.call(q=)",
            "x.call(q=\"a\"",
            "x.call(q=\"a\") extra",
            "a b.call()",
        ] {
            let text = format!("<|python_tag|>{bad}");
            assert_eq!(llama3(&text, 3, None), (text.clone(), vec![]), "{bad}");
        }
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
}
