//! Batch prompts from a JSONL file, independent of the inference engine.
//!
//! Overview:
//! - [`BatchRequest`]: one input line, `{"id": any, "prompt": "...", "max_tokens": N,
//!   "temperature": T, "raw": bool}`; only `prompt` is required (defaults below).
//! - [`parse_batch_line`] / [`parse_batch`]: a malformed line becomes a [`BatchLineError`] for
//!   that line alone, so one bad line never ends the run.
//! - [`BatchRecord`]: one output line, a [`BatchResult`] or a [`BatchLineError`], written in input
//!   order.
//!
//! Unknown fields are rejected rather than ignored: a misspelt `"max_token"` silently running
//! with the default would be worse than an error record.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

use super::arc::json_kind;

/// `max_tokens` when a line does not give it.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// `temperature` when a line does not give it: greedy.
pub const DEFAULT_TEMPERATURE: f32 = 0.0;

const KNOWN_FIELDS: [&str; 5] = ["id", "prompt", "max_tokens", "temperature", "raw"];

/// One request.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRequest {
    /// 1-based line number in the input file.
    pub line: usize,
    /// Any JSON value, echoed back unchanged; `null` if the line has none.
    pub id: Value,
    /// The prompt text.
    pub prompt: String,
    /// Generate at most this many tokens.
    pub max_tokens: usize,
    /// Finite and >= 0; 0 means greedy.
    pub temperature: f32,
    /// `true`: the prompt is fed as is; `false`: it is wrapped in the chat template.
    pub raw: bool,
}

/// A line that could not be used: written as `{"id": id-or-null, "line": n, "error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchLineError {
    /// The line's `id` when the line was a JSON object that had one, else `null`.
    pub id: Value,
    /// 1-based line number in the input file.
    pub line: usize,
    /// What is wrong with the line.
    pub error: String,
}

impl fmt::Display for BatchLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for BatchLineError {}

/// Timing and size of one generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchStats {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (the stop token excluded).
    pub generated_tokens: usize,
    /// Prefill tokens per second.
    pub prefill_tps: f64,
    /// Decode tokens per second.
    pub decode_tps: f64,
    /// Tokens drafted by prompt lookup.
    pub drafted: usize,
    /// Drafted tokens greedy decoding agreed with.
    pub accepted: usize,
}

/// One successful generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchResult {
    /// The request's `id`, echoed back.
    pub id: Value,
    /// The generated text.
    pub text: String,
    /// The generated token ids.
    pub ids: Vec<u32>,
    /// Timing and size.
    pub stats: BatchStats,
}

/// One output line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchRecord {
    /// The request ran.
    Ok(BatchResult),
    /// The line could not be used or the request failed.
    Err(BatchLineError),
}

impl BatchRecord {
    /// This record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("batch records have only plain fields")
    }
}

fn fields(obj: &Map<String, Value>) -> Result<BatchRequest, String> {
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field \"{unknown}\" (known: {})",
            KNOWN_FIELDS.join(", ")
        ));
    }
    let prompt = match obj.get("prompt") {
        None => return Err("missing \"prompt\"".into()),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(format!("\"prompt\" must be a string, got {}", json_kind(v))),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("\"max_tokens\" must be a non-negative integer, got {v}"))?,
    };
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => DEFAULT_TEMPERATURE,
        Some(v) => v
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0 && *t <= f32::MAX as f64)
            .map(|t| t as f32)
            .ok_or_else(|| format!("\"temperature\" must be a number >= 0, got {v}"))?,
    };
    let raw = match obj.get("raw") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(format!(
                "\"raw\" must be true or false, got {}",
                json_kind(v)
            ))
        }
    };
    Ok(BatchRequest {
        line: 0,
        id: Value::Null,
        prompt,
        max_tokens,
        temperature,
        raw,
    })
}

/// Parses line `line_no` (1-based) of a JSONL prompts file.
pub fn parse_batch_line(line_no: usize, line: &str) -> Result<BatchRequest, BatchLineError> {
    let err = |id: Value, error: String| BatchLineError {
        id,
        line: line_no,
        error,
    };
    let value: Value =
        serde_json::from_str(line).map_err(|e| err(Value::Null, format!("invalid JSON: {e}")))?;
    let obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err(err(
                Value::Null,
                format!("expected a JSON object, got {}", json_kind(&other)),
            ))
        }
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let mut request = fields(&obj).map_err(|e| err(id.clone(), e))?;
    request.line = line_no;
    request.id = id;
    Ok(request)
}

/// Parses a whole JSONL prompts file, one entry per non-blank line, in input order.
/// Blank (whitespace-only) lines are skipped; line numbers still count them.
pub fn parse_batch(text: &str) -> Vec<Result<BatchRequest, BatchLineError>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_batch_line(i + 1, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn good_line_with_all_fields() {
        let r = parse_batch_line(
            3,
            r#"{"id":"q1","prompt":"Hi","max_tokens":8,"temperature":0.7,"raw":true}"#,
        )
        .unwrap();
        assert_eq!(r.line, 3);
        assert_eq!(r.id, json!("q1"));
        assert_eq!(r.prompt, "Hi");
        assert_eq!(r.max_tokens, 8);
        assert!((r.temperature - 0.7).abs() < 1e-6);
        assert!(r.raw);
    }

    #[test]
    fn defaults_and_any_id() {
        let r = parse_batch_line(1, r#"{"prompt":""}"#).unwrap();
        assert_eq!(
            (r.id.clone(), r.max_tokens, r.temperature, r.raw),
            (Value::Null, DEFAULT_MAX_TOKENS, 0.0, false)
        );
        let r = parse_batch_line(1, r#"{"id":{"k":[1,2]},"prompt":"x","temperature":1}"#).unwrap();
        assert_eq!(r.id, json!({"k": [1, 2]}));
        assert_eq!(r.temperature, 1.0);
        assert_eq!(
            parse_batch_line(1, r#"{"id":7,"prompt":"x","max_tokens":null}"#)
                .unwrap()
                .max_tokens,
            DEFAULT_MAX_TOKENS
        );
    }

    #[test]
    fn missing_prompt() {
        let e = parse_batch_line(5, r#"{"id":42,"max_tokens":3}"#).unwrap_err();
        assert_eq!(
            e,
            BatchLineError {
                id: json!(42),
                line: 5,
                error: "missing \"prompt\"".into()
            }
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"id": 42, "line": 5, "error": "missing \"prompt\""})
        );
    }

    #[test]
    fn bad_json() {
        let e = parse_batch_line(2, r#"{"id":1,"prompt":"x""#).unwrap_err();
        assert_eq!((e.id.clone(), e.line), (Value::Null, 2));
        assert!(e.error.starts_with("invalid JSON"), "{}", e.error);
        let e = parse_batch_line(4, "[1,2]").unwrap_err();
        assert!(e.error.contains("expected a JSON object"), "{}", e.error);
        let e = parse_batch_line(4, "").unwrap_err();
        assert!(e.error.starts_with("invalid JSON"), "{}", e.error);
    }

    #[test]
    fn wrong_types() {
        let cases = [
            (r#"{"id":"a","prompt":5}"#, "\"prompt\" must be a string"),
            (
                r#"{"id":"a","prompt":"x","max_tokens":"10"}"#,
                "\"max_tokens\" must be",
            ),
            (
                r#"{"id":"a","prompt":"x","max_tokens":-1}"#,
                "\"max_tokens\" must be",
            ),
            (
                r#"{"id":"a","prompt":"x","max_tokens":2.5}"#,
                "\"max_tokens\" must be",
            ),
            (
                r#"{"id":"a","prompt":"x","temperature":"hot"}"#,
                "\"temperature\" must be",
            ),
            (
                r#"{"id":"a","prompt":"x","temperature":-0.5}"#,
                "\"temperature\" must be",
            ),
            (
                r#"{"id":"a","prompt":"x","temperature":1e300}"#,
                "\"temperature\" must be",
            ),
            (r#"{"id":"a","prompt":"x","raw":"yes"}"#, "\"raw\" must be"),
            (
                r#"{"id":"a","prompt":"x","max_token":5}"#,
                "unknown field \"max_token\"",
            ),
        ];
        for (line, want) in cases {
            let e = parse_batch_line(9, line).unwrap_err();
            assert!(e.error.contains(want), "{line}: {}", e.error);
            assert_eq!(e.id, json!("a"), "{line}");
        }
    }

    #[test]
    fn whole_file_keeps_order_and_survives_bad_lines() {
        let text =
            "{\"id\":1,\"prompt\":\"a\"}\n\nnot json\n{\"id\":3}\r\n{\"id\":4,\"prompt\":\"d\"}\n";
        let out = parse_batch(text);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].as_ref().unwrap().line, 1);
        assert_eq!(out[1].as_ref().unwrap_err().line, 3);
        assert_eq!(out[2].as_ref().unwrap_err().id, json!(3));
        assert_eq!(out[3].as_ref().unwrap().line, 5);
        assert_eq!(out[3].as_ref().unwrap().prompt, "d");
    }

    #[test]
    fn record_lines() {
        let ok = BatchRecord::Ok(BatchResult {
            id: json!("q1"),
            text: "hello".into(),
            ids: vec![1, 2],
            stats: BatchStats {
                prompt_tokens: 5,
                generated_tokens: 2,
                prefill_tps: 100.0,
                decode_tps: 20.0,
                drafted: 0,
                accepted: 0,
            },
        });
        let v: Value = serde_json::from_str(&ok.to_json_line()).unwrap();
        assert_eq!(
            v,
            json!({"id":"q1","text":"hello","ids":[1,2],
                   "stats":{"prompt_tokens":5,"generated_tokens":2,"prefill_tps":100.0,"decode_tps":20.0,
                            "drafted":0,"accepted":0}})
        );
        let err = BatchRecord::Err(BatchLineError {
            id: Value::Null,
            line: 2,
            error: "bad".into(),
        });
        assert_eq!(err.to_json_line(), r#"{"id":null,"line":2,"error":"bad"}"#);
    }
}
