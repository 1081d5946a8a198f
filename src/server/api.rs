//! Request bodies of the OpenAI-style endpoints, validated into what the scheduler runs, and
//! the OpenAI error shape.
//!
//! Bodies are parsed as untyped JSON and read field by field, so every error names its field
//! and unknown fields are ignored.

use serde_json::{json, Map, Value};

use crate::engine::sampler::{SamplerParams, MAX_ADDITIVE_PENALTY};
use crate::text::chat::DEFAULT_SYSTEM_PROMPT;
use crate::text::tokenizer::Tokenizer;

/// The most stop strings a request may give.
pub const MAX_STOPS: usize = 4;
/// The most alternatives `top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An error answered in OpenAI's shape `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// An error of any status, about no particular field.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// With a machine-readable code.
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Which endpoint a generation came from (it decides the response shapes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (already checked to fit the context after the prompt).
    pub max_tokens: usize,
    pub params: SamplerParams,
    pub stops: Vec<String>,
    /// `Some(k)`: report each token's log-probability and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a body as a JSON object (a 400 otherwise).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::new(
            400,
            "invalid_request_error",
            "the request body must be a JSON object",
        )),
    }
}

/// A present, non-null field.
fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn number(o: &Map<String, Value>, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => {
            let x = v
                .as_f64()
                .ok_or_else(|| ApiError::invalid(name, format!("'{name}' must be a number")))?;
            if !(lo..=hi).contains(&x) {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' is {x}; it must be between {lo} and {hi}"),
                ));
            }
            Ok(Some(x))
        }
    }
}

fn integer(o: &Map<String, Value>, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => {
            let x = v
                .as_i64()
                .ok_or_else(|| ApiError::invalid(name, format!("'{name}' must be an integer")))?;
            if !(lo..=hi).contains(&x) {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' is {x}; it must be between {lo} and {hi}"),
                ));
            }
            Ok(Some(x))
        }
    }
}

fn boolean(o: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match field(o, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("'{name}' must be a boolean"),
        )),
    }
}

/// A time-based seed for requests that give none.
fn fresh_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
}

/// The sampling fields. Defaults are OpenAI's (temperature 1, top_p 1, no top-k, min-p or
/// penalty). `frequency_penalty` and `presence_penalty` (-2..=2) are OpenAI's: `logit[t] -=
/// count(t) * frequency_penalty + (count(t) > 0) * presence_penalty` over the tokens generated
/// so far in this completion (the last
/// [`MAX_COUNTED_TOKENS`](crate::engine::sampler::MAX_COUNTED_TOKENS) of them);
/// `repetition_penalty` is the sampler's multiplicative penalty over the last 64 tokens,
/// prompt included.
fn sampler_params(o: &Map<String, Value>) -> Result<SamplerParams, ApiError> {
    let temperature = number(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = number(o, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
    let top_k = integer(o, "top_k", -1, 1 << 20)?.unwrap_or(0);
    let min_p = number(o, "min_p", 0.0, 1.0)?.unwrap_or(0.0);
    let rep = number(o, "repetition_penalty", 0.0, 10.0)?.unwrap_or(1.0);
    if rep <= 0.0 {
        return Err(ApiError::invalid(
            "repetition_penalty",
            "'repetition_penalty' must be greater than 0",
        ));
    }
    let lim = f64::from(MAX_ADDITIVE_PENALTY);
    let frequency_penalty = number(o, "frequency_penalty", -lim, lim)?.unwrap_or(0.0);
    let presence_penalty = number(o, "presence_penalty", -lim, lim)?.unwrap_or(0.0);
    let seed = match field(o, "seed") {
        None => fresh_seed(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64,
            _ => return Err(ApiError::invalid("seed", "'seed' must be an integer")),
        },
    };
    // top_p = 0 keeps only the most likely token: the sampler's top_p must be > 0, so that is
    // top-k 1
    let (top_p, top_k) = if top_p == 0.0 {
        (1.0, 1)
    } else {
        (top_p as f32, top_k.max(0) as usize)
    };
    let p = SamplerParams {
        temperature: temperature as f32,
        top_k,
        top_p,
        min_p: min_p as f32,
        repeat_penalty: rep as f32,
        repeat_last_n: 64,
        frequency_penalty: frequency_penalty as f32,
        presence_penalty: presence_penalty as f32,
        seed,
    };
    p.validate()
        .map_err(|e| ApiError::invalid(e.name, e.to_string()))?;
    Ok(p)
}

fn stops(o: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match field(o, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(_)) => vec![&o["stop"]],
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("'stop' has {} entries; at most {MAX_STOPS}", list.len()),
        ));
    }
    list.into_iter()
        .map(|v| match v.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            Some(_) => Err(ApiError::invalid("stop", "stop strings must not be empty")),
            None => Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or an array of strings",
            )),
        })
        .collect()
}

/// Content of one chat message: a string, or an array of `{"type":"text","text":...}` parts.
fn content(v: Option<&Value>, i: usize, role: &str) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str);
                match (ty, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some("text"), None) => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{j}].text"),
                            "a text part needs a string 'text'",
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{j}].type"),
                            "only content parts of type 'text' are supported",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid(
            &param,
            "'content' must be a string or an array of text parts",
        )),
    }
}

/// The ChatML transcript of `messages`, ending with the assistant header. Like Qwen2.5's
/// template, a conversation that does not open with a system message gets the default one.
pub fn render_chat(messages: &Value) -> Result<String, ApiError> {
    let list = match messages {
        Value::Array(a) => a,
        Value::Null => return Err(ApiError::invalid("messages", "'messages' is required")),
        _ => return Err(ApiError::invalid("messages", "'messages' must be an array")),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = String::new();
    for (i, m) in list.iter().enumerate() {
        let m = m.as_object().ok_or_else(|| {
            ApiError::invalid(&format!("messages[{i}]"), "a message must be an object")
        })?;
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some(r) => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("unknown role '{r}'; expected system, user or assistant"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "a message needs a string 'role'",
                ))
            }
        };
        let text = content(m.get("content"), i, role)?;
        if i == 0 && role != "system" {
            out.push_str(&format!(
                "<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
            ));
        }
        out.push_str(&format!("<|im_start|>{role}\n{text}<|im_end|>\n"));
    }
    out.push_str("<|im_start|>assistant\n");
    Ok(out)
}

/// The prompt of a completion: a string, an array of one string, or an array of token ids.
fn completion_prompt(
    o: &Map<String, Value>,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of one string, or an array of token ids",
        )
    };
    match field(o, "prompt") {
        None => Err(ApiError::invalid("prompt", "'prompt' is required")),
        Some(Value::String(s)) => encode(tok, s),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            encode(tok, a[0].as_str().unwrap_or_default())
        }
        Some(Value::Array(a)) => token_ids(a, "prompt", vocab).map_err(|e| {
            if a.iter().any(|v| !v.is_u64()) {
                bad()
            } else {
                e
            }
        }),
        Some(_) => Err(bad()),
    }
}

/// Token ids from a JSON array, each checked against the vocabulary.
pub fn token_ids(a: &[Value], param: &str, vocab: usize) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .map(|v| match v.as_u64() {
            Some(t) if (t as usize) < vocab => Ok(t as u32),
            Some(t) => Err(ApiError::invalid(
                param,
                format!("token id {t} is out of range for a vocabulary of {vocab}"),
            )),
            None => Err(ApiError::invalid(
                param,
                format!("'{param}' must be an array of token ids"),
            )),
        })
        .collect()
}

/// Tokens of `text` (a 400 if the tokenizer refuses it).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode(text)
        .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))
}

/// Validates a generation body of `endpoint` for a context of `ctx` and a model vocabulary of
/// `vocab`.
pub fn parse_generation(
    o: &Map<String, Value>,
    endpoint: Endpoint,
    tok: &Tokenizer,
    ctx: usize,
    vocab: usize,
) -> Result<GenRequest, ApiError> {
    if let Some(m) = field(o, "model") {
        if !m.is_string() {
            return Err(ApiError::invalid("model", "'model' must be a string"));
        }
    }
    let stream = boolean(o, "stream")?;
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => boolean(so, "include_usage").map_err(|_| {
            ApiError::invalid(
                "stream_options.include_usage",
                "'include_usage' must be a boolean",
            )
        })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "'stream_options' must be an object",
            ))
        }
    };
    if let Some(n) = integer(o, "n", i64::MIN, i64::MAX)? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("'n' is {n}; only n = 1 is supported"),
            ));
        }
    }
    let params = sampler_params(o)?;
    let stops = stops(o)?;
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let top = integer(o, "top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
            match (boolean(o, "logprobs")?, top) {
                (true, top) => Some(top.unwrap_or(0) as usize),
                (false, Some(_)) => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "'top_logprobs' needs 'logprobs' set to true",
                    ))
                }
                (false, None) => None,
            }
        }
        Endpoint::Completion => {
            integer(o, "logprobs", 0, MAX_TOP_LOGPROBS as i64)?.map(|k| k as usize)
        }
    };
    let max_tokens = match integer(o, "max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some((m, "max_completion_tokens")),
        None => integer(o, "max_tokens", 1, i64::MAX)?.map(|m| (m, "max_tokens")),
    };
    let prompt = match endpoint {
        Endpoint::Chat => {
            let text = render_chat(o.get("messages").unwrap_or(&Value::Null))?;
            encode(tok, &text).map_err(|e| ApiError {
                param: Some("messages".into()),
                ..e
            })?
        }
        Endpoint::Completion => completion_prompt(o, tok, vocab)?,
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
    }
    let (param, what) = match endpoint {
        Endpoint::Chat => ("messages", "messages"),
        Endpoint::Completion => ("prompt", "prompt"),
    };
    if prompt.len() >= ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "this model's maximum context length is {ctx} tokens, but your {what} resulted in {} tokens (it must be at most {} to leave room for one token of output)",
                prompt.len(),
                ctx - 1
            ),
        )
        .code("context_length_exceeded"));
    }
    let room = ctx - prompt.len();
    let max_tokens = match max_tokens {
        None => room,
        Some((m, name)) if m as u64 > room as u64 => {
            return Err(ApiError::invalid(
                name,
                format!(
                    "'{name}' is {m}, but the context of {ctx} tokens holds only {room} after the {} tokens of your {what}",
                    prompt.len()
                ),
            )
            .code("context_length_exceeded"))
        }
        Some((m, _)) => m as usize,
    };
    Ok(GenRequest {
        prompt,
        max_tokens,
        params,
        stops,
        logprobs,
        stream,
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_adds_the_default_system_prompt_once() {
        let m = json!([{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]);
        let s = render_chat(&m).unwrap();
        assert_eq!(
            s,
            format!("<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n")
        );
        let s =
            render_chat(&json!([{"role":"system","content":"S"},{"role":"user","content":"u"}]))
                .unwrap();
        assert!(s.starts_with("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu"));
        assert_eq!(
            render_chat(&json!([])).unwrap_err().param.as_deref(),
            Some("messages")
        );
        let e = render_chat(&json!([{"role":"tool","content":"x"}])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn sampling_fields_are_range_checked() {
        let o = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            sampler_params(&o(json!({"temperature": 2.5})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            sampler_params(&o(json!({"top_p": "x"})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("top_p")
        );
        assert_eq!(
            sampler_params(&o(json!({"presence_penalty": -3})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("presence_penalty")
        );
        let p = sampler_params(&o(json!({"temperature": 0, "top_p": 0, "seed": 7}))).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p, p.seed), (0.0, 1, 1.0, 7));
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.0, 0.0));
        assert!(p.validate().is_ok());
        let p = sampler_params(&o(
            json!({"frequency_penalty": 0.5, "presence_penalty": -2}),
        ))
        .unwrap();
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.5, -2.0));
        assert!(!p.is_plain_greedy());
    }
}
