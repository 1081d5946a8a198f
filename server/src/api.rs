//! Request bodies of the OpenAI-style endpoints, validated into what the scheduler runs, and
//! the OpenAI error shape.
//!
//! Bodies are parsed as untyped JSON and read field by field, so every error names its field
//! and unknown fields are ignored.

use serde_json::{json, Map, Value};

use crate::reasoning::ThinkSplitter;
use crate::tools::{self, ToolChoice, Tools};
use qwenrt::engine::constraint::{Constraint, Grammars};
use qwenrt::engine::sampler::{
    LogitBias, SamplerParams, MAX_ADDITIVE_PENALTY, MAX_BIAS, MAX_LOGIT_BIAS,
};
use qwenrt::text::chat::END_OF_TEXT;
use qwenrt::text::template::{ChatTemplate, ToolCallFormat};
use qwenrt::text::tokenizer::Tokenizer;

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

/// A validated generation request: one prompt and its `n` choices (a completion with several
/// prompts is one of these per prompt).
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// Choices of this prompt, each a fork of the prompt's sequence (1..=`--parallel`).
    pub n: usize,
    /// The index of this prompt's first choice in the response (`prompt index * n`).
    pub index: usize,
    /// `echo` (completions): the prompt's text comes before each choice's text and, with
    /// `logprobs`, its tokens' log-probabilities before the generated ones'.
    pub echo: bool,
    /// The prompt was empty and starts with the end-of-text token this server put there (as
    /// OpenAI's models see a document start); echo leaves it out.
    pub added_start: bool,
    /// Tokens to generate at most (already checked to fit the context after the prompt); 0
    /// only on completions (the prompt is scored, nothing generated).
    pub max_tokens: usize,
    pub params: SamplerParams,
    pub stops: Vec<String>,
    /// `Some(k)`: report each token's log-probability and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// What constrains the answer, and how tool calls are read out of it.
    pub guide: Guide,
    /// `Some(opened)`: split the thinking part off the answer (a chat request to a thinking
    /// model), `opened` when the prompt already opened it.
    pub thinking: Option<bool>,
}

/// The constraints of one answer (`response_format`, `tools`).
#[derive(Debug, Clone, Default)]
pub struct Guide {
    /// Applies from the answer's first token (`response_format`, `tool_choice` `required` or
    /// a named function).
    pub constraint: Option<Constraint>,
    /// Applies from the token that completes [`tools::OPEN`] in the answer (`tool_choice`
    /// `auto`): the rest of the call is constrained, the text before it is free.
    pub on_call: Option<Constraint>,
    /// Applies from the token at which the answer turns out to open a bare call (see
    /// [`tools::bare_opener`]; `tool_choice` `auto`, JSON syntax), replayed over the answer's
    /// tokens so far: the grammar of [`tools::bare_grammar`].
    pub on_bare: Option<Constraint>,
    /// The offered tools and the syntax the model calls them in; `None`: the answer is text.
    pub tools: Option<(Tools, ToolCallFormat)>,
}

impl Guide {
    /// Whether any constraint applies (such answers are not drafted by prompt lookup).
    pub fn constrains(&self) -> bool {
        self.constraint.is_some() || self.on_call.is_some() || self.on_bare.is_some()
    }
}

/// What parsing a request needs of the model.
pub struct ModelContext<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub grammars: &'a Grammars,
    /// Context length of a sequence.
    pub ctx: usize,
    /// Rows of the model's logits.
    pub vocab: usize,
    /// Sequences the engine runs at once (`--parallel`): the most choices `n` may ask for.
    pub parallel: usize,
    /// Whether chat answers' thinking parts go to `reasoning_content`.
    pub reasoning: bool,
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
/// [`MAX_COUNTED_TOKENS`](qwenrt::engine::sampler::MAX_COUNTED_TOKENS) of them);
/// `repetition_penalty` is the sampler's multiplicative penalty over the last 64 tokens,
/// prompt included.
fn sampler_params(
    o: &Map<String, Value>,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<SamplerParams, ApiError> {
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
        logit_bias: logit_bias(o, tok, vocab)?,
    };
    p.validate()
        .map_err(|e| ApiError::invalid(e.name, e.to_string()))?;
    Ok(p)
}

/// `logit_bias`: OpenAI's object of token id (a decimal string key) to a bias in -100..=100,
/// or llama-server's array of `[token, bias]` pairs; as llama-server, a key or token that is
/// not an id is text whose every token gets the bias, and a bias of `false` bans (-100). At
/// most [`MAX_LOGIT_BIAS`] tokens in all; every error names `logit_bias`.
fn logit_bias(
    o: &Map<String, Value>,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<LogitBias, ApiError> {
    const P: &str = "logit_bias";
    let pairs: Vec<(Value, &Value)> = match field(o, P) {
        None => return Ok(LogitBias::default()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), v))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| match e.as_array().map(Vec::as_slice) {
                Some([t, b]) => Ok((t.clone(), b)),
                _ => Err(ApiError::invalid(
                    P,
                    "an array 'logit_bias' must hold [token, bias] pairs",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                P,
                "'logit_bias' must be an object of token ids to biases",
            ))
        }
    };
    let mut out: Vec<(u32, f32)> = Vec::new();
    for (key, bias) in pairs {
        let b = match bias {
            Value::Bool(false) => -MAX_BIAS,
            v => match v.as_f64() {
                Some(x) if x.abs() <= f64::from(MAX_BIAS) => x as f32,
                Some(x) => {
                    return Err(ApiError::invalid(
                        P,
                        format!("'logit_bias' of {key} is {x}; it must be between -100 and 100"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        P,
                        format!("'logit_bias' of {key} must be a number"),
                    ))
                }
            },
        };
        let id = match &key {
            Value::String(s) => s.trim().parse::<u64>().ok(),
            v => v.as_u64().or_else(|| {
                // an integer too large (or negative) for an id: out of range below
                v.as_i64().map(|_| u64::MAX)
            }),
        };
        match (id, &key) {
            (Some(t), _) if (t as usize) < vocab && t <= u64::from(u32::MAX) => {
                out.push((t as u32, b))
            }
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    P,
                    format!(
                        "'logit_bias' names token {key}, out of range for a vocabulary of {vocab}"
                    ),
                ))
            }
            (None, Value::String(text)) => {
                let ids = tok.encode(text).map_err(|e| {
                    ApiError::invalid(P, format!("cannot tokenize 'logit_bias' key {key}: {e}"))
                })?;
                out.extend(ids.into_iter().map(|t| (t, b)));
            }
            (None, _) => {
                return Err(ApiError::invalid(
                    P,
                    format!("'logit_bias' key {key} is neither a token id nor text"),
                ))
            }
        }
        if out.len() > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid(
                P,
                format!("'logit_bias' names more than {MAX_LOGIT_BIAS} tokens (the most one request may bias)"),
            ));
        }
    }
    LogitBias::new(&out).map_err(|e| ApiError::invalid(P, format!("'logit_bias' {}", e.why)))
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
        None | Some(Value::Null) if role == "assistant" || role == "tool" => Ok(String::new()),
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

/// The `messages` of a chat request checked and put in the shape chat templates read (as
/// transformers passes them): every message an object with a known `role` and `content` a
/// string (text parts joined; `null` on an assistant message that calls tools becomes "");
/// `developer` is OpenAI's newer name for `system`; an assistant's `tool_calls` keep `id`,
/// `type` and `function`, with `function.arguments` (a JSON string on the wire) parsed into
/// the object templates print with `tojson`; a `tool` message keeps `tool_call_id`.
pub fn chat_messages(messages: &Value) -> Result<Value, ApiError> {
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
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let m = m.as_object().ok_or_else(|| {
            ApiError::invalid(&format!("messages[{i}]"), "a message must be an object")
        })?;
        let role = match m.get("role").and_then(Value::as_str) {
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some(r) => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "unknown role '{r}'; expected system, developer, user, assistant or tool"
                    ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "a message needs a string 'role'",
                ))
            }
        };
        let calls = match m.get("tool_calls").filter(|v| !v.is_null()) {
            None => None,
            Some(_) if role != "assistant" => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry 'tool_calls'",
                ))
            }
            Some(v) => Some(tool_calls(v, i)?),
        };
        let text = content(m.get("content"), i, role)?;
        let mut msg = Map::new();
        msg.insert("role".into(), Value::from(role));
        msg.insert("content".into(), Value::from(text));
        if let Some(c) = calls {
            msg.insert("tool_calls".into(), c);
        }
        if role == "tool" {
            match m.get("tool_call_id") {
                Some(Value::String(id)) => {
                    msg.insert("tool_call_id".into(), Value::from(id.clone()));
                }
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].tool_call_id"),
                        "'tool_call_id' must be a string",
                    ))
                }
            }
        }
        for key in ["name", "reasoning_content"] {
            match m.get(key) {
                Some(Value::String(s)) => {
                    msg.insert(key.into(), Value::from(s.clone()));
                }
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].{key}"),
                        format!("'{key}' must be a string"),
                    ))
                }
            }
        }
        out.push(Value::Object(msg));
    }
    Ok(Value::Array(out))
}

/// An assistant message's `tool_calls`, checked, with each `function.arguments` string
/// parsed into JSON (kept as the string when it is not JSON).
fn tool_calls(v: &Value, i: usize) -> Result<Value, ApiError> {
    let param = format!("messages[{i}].tool_calls");
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::invalid(&param, "'tool_calls' must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let at = |k: &str| format!("{param}[{j}]{k}");
        let f = c
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::invalid(&at(".function"), "a tool call needs a 'function' object")
            })?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(&at(".function.name"), "a tool call needs a string 'name'")
        })?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) => {
                serde_json::from_str(s).unwrap_or_else(|_| Value::from(s.clone()))
            }
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    &at(".function.arguments"),
                    "'arguments' must be a JSON string",
                ))
            }
        };
        let mut call = Map::new();
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            call.insert("id".into(), Value::from(id));
        }
        call.insert("type".into(), Value::from("function"));
        call.insert(
            "function".into(),
            json!({"name": name, "arguments": arguments}),
        );
        out.push(Value::Object(call));
    }
    Ok(Value::Array(out))
}

/// What the answer must be: `response_format` (OpenAI's `text`, `json_object` and
/// `json_schema`, and llama-server's `json_object` with a `schema`), llama-server's
/// top-level `json_schema`, or llama.cpp's GBNF `grammar`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
    /// Text derived by this GBNF grammar (llama.cpp's `grammar`).
    Gbnf(String),
}

/// Reads `response_format` / `json_schema` / `grammar`; every error names the field at fault.
/// A `grammar` (a GBNF source; `""`, llama-server's default, is none) excludes the other two.
pub fn response_format(o: &Map<String, Value>) -> Result<ResponseFormat, ApiError> {
    match field(o, "grammar") {
        None => {}
        Some(Value::String(g)) if g.trim().is_empty() => {}
        Some(Value::String(g)) => {
            for other in ["response_format", "json_schema"] {
                if field(o, other).is_some() {
                    return Err(ApiError::invalid(
                        "grammar",
                        format!("give 'grammar' or '{other}', not both"),
                    ));
                }
            }
            return Ok(ResponseFormat::Gbnf(g.clone()));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "grammar",
                "'grammar' must be a string (a GBNF grammar)",
            ))
        }
    }
    let schema_object = |v: &Value, param: &str| match v {
        Value::Object(_) | Value::Bool(true) => Ok(v.clone()),
        _ => Err(ApiError::invalid(
            param,
            format!("'{param}' must be a JSON schema object"),
        )),
    };
    let from_rf = match field(o, "response_format") {
        None => None,
        Some(Value::Object(rf)) => {
            let p = "response_format";
            Some(match rf.get("type").and_then(Value::as_str) {
                Some("text") => ResponseFormat::Text,
                Some("json_object") => match rf.get("schema").filter(|v| !v.is_null()) {
                    None => ResponseFormat::JsonObject,
                    Some(v) => ResponseFormat::JsonSchema(schema_object(v, p)?),
                },
                Some("json_schema") => {
                    let js = rf.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                        ApiError::invalid(p, "'response_format' of type 'json_schema' needs a 'json_schema' object with a 'schema'")
                    })?;
                    if let Some(n) = js.get("name").filter(|v| !v.is_null()) {
                        if !n.is_string() {
                            return Err(ApiError::invalid(p, "'response_format.json_schema.name' must be a string"));
                        }
                    }
                    if let Some(st) = js.get("strict").filter(|v| !v.is_null()) {
                        if !st.is_boolean() {
                            return Err(ApiError::invalid(p, "'response_format.json_schema.strict' must be a boolean"));
                        }
                    }
                    match js.get("schema").filter(|v| !v.is_null()) {
                        Some(v) => ResponseFormat::JsonSchema(schema_object(v, p)?),
                        // OpenAI's schema is optional: without one, any JSON object
                        None => ResponseFormat::JsonObject,
                    }
                }
                Some(other) => {
                    return Err(ApiError::invalid(
                        p,
                        format!("'response_format' type '{other}' is not supported; expected 'text', 'json_object' or 'json_schema'"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        p,
                        "'response_format' needs a 'type': 'text', 'json_object' or 'json_schema'",
                    ))
                }
            })
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "response_format",
                "'response_format' must be an object",
            ))
        }
    };
    let from_js = match field(o, "json_schema") {
        None => None,
        Some(v) => Some(ResponseFormat::JsonSchema(schema_object(v, "json_schema")?)),
    };
    match (from_rf, from_js) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "json_schema",
            "give 'response_format' or 'json_schema', not both",
        )),
        (Some(f), None) | (None, Some(f)) => Ok(f),
        (None, None) => Ok(ResponseFormat::Text),
    }
}

/// The prompts of a completion, each its own choice(s) in order: `prompt` as a string, an
/// array of token ids, or an array whose entries are strings or arrays of token ids (one
/// prompt each, as OpenAI takes them). An empty string is an empty prompt (see
/// [`parse_generation`]); an empty array is refused.
fn completion_prompts(
    o: &Map<String, Value>,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of token ids, or an array of strings and token-id arrays",
        )
    };
    match field(o, "prompt") {
        None => Err(ApiError::invalid("prompt", "'prompt' is required")),
        Some(Value::String(s)) => Ok(vec![encode(tok, s)?]),
        Some(Value::Array(a)) if a.is_empty() => Err(ApiError::invalid(
            "prompt",
            "'prompt' is an empty array; give a string or at least one prompt",
        )),
        Some(Value::Array(a)) if a.iter().all(|v| v.is_number()) => {
            Ok(vec![token_ids(a, "prompt", vocab)?])
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => encode(tok, s),
                Value::Array(ids) if ids.iter().all(|v| v.is_number()) => {
                    token_ids(ids, &format!("prompt[{i}]"), vocab)
                }
                _ => Err(bad()),
            })
            .collect(),
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

/// `chat_template_kwargs` (vLLM's and llama-server's): extra variables for the template, such
/// as `enable_thinking`.
pub fn template_kwargs(o: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match field(o, "chat_template_kwargs") {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ApiError::invalid(
            "chat_template_kwargs",
            "'chat_template_kwargs' must be an object",
        )),
    }
}

/// The validated tools of a chat request with the syntax the model's template teaches
/// (`None` without tools or with `tool_choice: none`, whose tools are not shown to the
/// model); a 400 naming `tools` when the template teaches no tool-call syntax.
fn active_tools(
    o: &Map<String, Value>,
    template: &ChatTemplate,
) -> Result<Option<(Tools, ToolCallFormat)>, ApiError> {
    let Some(t) = tools::parse(o)? else {
        return Ok(None);
    };
    if t.choice == ToolChoice::None {
        return Ok(None);
    }
    match template.tool_format() {
        ToolCallFormat::None => Err(ApiError::invalid(
            "tools",
            format!(
                "the chat template in use ({}) has no tool-call format; give a template that has one (--chat-template-file)",
                template.origin()
            ),
        )),
        f => Ok(Some((t, f))),
    }
}

/// The prompt text of a chat request: its messages (and tools) rendered by the model's chat
/// template with the generation prompt (what a chat completion feeds the model).
pub fn render_chat(o: &Map<String, Value>, template: &ChatTemplate) -> Result<String, ApiError> {
    let messages = chat_messages(o.get("messages").unwrap_or(&Value::Null))?;
    render_with(o, &messages, template, active_tools(o, template)?.as_ref())
}

/// The prompt text `/apply-template` shows: as [`render_chat`], but the tools (validated) are
/// rendered even by a template whose tool-call syntax this server cannot read back, since
/// nothing is generated.
pub fn render_template(
    o: &Map<String, Value>,
    template: &ChatTemplate,
) -> Result<String, ApiError> {
    let messages = chat_messages(o.get("messages").unwrap_or(&Value::Null))?;
    let tools = match tools::parse(o)? {
        Some(t) if t.choice != ToolChoice::None => Some((t, template.tool_format())),
        _ => None,
    };
    render_with(o, &messages, template, tools.as_ref())
}

/// [`render_chat`] with the request's messages and tools already read.
fn render_with(
    o: &Map<String, Value>,
    messages: &Value,
    template: &ChatTemplate,
    tools: Option<&(Tools, ToolCallFormat)>,
) -> Result<String, ApiError> {
    let kwargs = template_kwargs(o)?;
    // vLLM's (and transformers') switches: the generation prompt (on unless turned off), or
    // the final assistant message continued rather than closed
    let generation_prompt =
        field(o, "add_generation_prompt").is_none() || boolean(o, "add_generation_prompt")?;
    let continue_final = boolean(o, "continue_final_message")?;
    if generation_prompt && continue_final {
        return Err(ApiError::invalid(
            "continue_final_message",
            "'continue_final_message' continues the final assistant message, so it needs 'add_generation_prompt': false",
        ));
    }
    let rendered = template
        .render(
            messages,
            tools.map(|(t, _)| &t.raw),
            generation_prompt,
            &kwargs,
        )
        .map_err(|e| {
            ApiError::invalid("messages", format!("cannot render the chat template: {e}"))
        })?;
    if !continue_final {
        return Ok(rendered);
    }
    continue_final_message(rendered, messages)
}

/// The rendered conversation cut right after the final message's text, so the answer goes on
/// from it (`continue_final_message`): the final message must be the assistant's, and its text
/// must appear in the rendering as written.
fn continue_final_message(mut rendered: String, messages: &Value) -> Result<String, ApiError> {
    let last = messages.as_array().and_then(|m| m.last());
    let text = match last {
        Some(m) if m.get("role").and_then(Value::as_str) == Some("assistant") => {
            m.get("content").and_then(Value::as_str).unwrap_or("")
        }
        _ => {
            return Err(ApiError::invalid(
                "continue_final_message",
                "'continue_final_message' needs the final message to be the assistant's",
            ))
        }
    };
    // the template may trim the text's ends; continue from its last non-blank character
    let text = text.trim_end();
    match rendered.rfind(text) {
        Some(at) if !text.is_empty() => {
            rendered.truncate(at + text.len());
            Ok(rendered)
        }
        _ if text.is_empty() => Err(ApiError::invalid(
            "continue_final_message",
            "the final assistant message is empty: there is nothing to continue",
        )),
        _ => Err(ApiError::invalid(
            "continue_final_message",
            "the chat template does not render the final assistant message's text as written, so it cannot be continued",
        )),
    }
}

/// The constraints of an answer, compiled: a 400 names the field whose schema or tools do not
/// compile (or, for hostile input, exceed the compiler's limits).
fn guide(
    format: ResponseFormat,
    tools: Option<(Tools, ToolCallFormat)>,
    grammars: &Grammars,
) -> Result<Guide, ApiError> {
    let compile_error = |param: &str, e: &dyn std::fmt::Display| {
        ApiError::invalid(param, format!("'{param}' cannot be enforced: {e}"))
    };
    let constraint = match &format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(
            grammars
                .json_object()
                .map_err(|e| compile_error("response_format", &e))?,
        ),
        ResponseFormat::JsonSchema(schema) => Some(
            grammars
                .json_schema(schema)
                .map_err(|e| compile_error("response_format", &e))?,
        ),
        ResponseFormat::Gbnf(src) => Some(
            grammars
                .gbnf(src)
                .map_err(|e| compile_error("grammar", &e))?,
        ),
    };
    let Some((t, syntax)) = tools else {
        return Ok(Guide {
            constraint,
            ..Guide::default()
        });
    };
    if constraint.is_some() {
        let field = match format {
            ResponseFormat::Gbnf(_) => "grammar",
            _ => "response_format",
        };
        return Err(ApiError::invalid(
            field,
            format!("'{field}' cannot be combined with 'tools' (unless 'tool_choice' is 'none')"),
        ));
    }
    let compile = |g: String| grammars.lark(&g).map_err(|e| compile_error("tools", &e));
    let (constraint, on_call, on_bare) = match t.choice {
        ToolChoice::Auto => {
            let on_bare = match syntax {
                ToolCallFormat::Qwen3CoderXml => None,
                _ => Some(compile(tools::bare_grammar(&t, syntax))?),
            };
            // Llama 3.x's calls have no opening tag: only a bare call is constrained
            let on_call = match syntax {
                ToolCallFormat::Llama3Json => None,
                _ => Some(compile(tools::grammar(&t, syntax, true))?),
            };
            (None, on_call, on_bare)
        }
        _ => (
            Some(compile(tools::grammar(&t, syntax, false))?),
            None,
            None,
        ),
    };
    Ok(Guide {
        constraint,
        on_call,
        on_bare,
        tools: Some((t, syntax)),
    })
}

/// OpenAI request fields that would change the answer and that this server does not do: each
/// is refused with a 400 naming it (never silently ignored), with why. Fields that change
/// nothing here (`user`, `metadata`, `store`, `service_tier`, `prompt_cache_key`,
/// `safety_identifier`, `prediction`) are accepted and ignored.
fn refuse_unsupported(o: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let refuse = |f: &str, why: &str| {
        Err(ApiError::invalid(
            f,
            format!("'{f}' is not supported: {why}"),
        ))
    };
    for (f, why) in [
        ("audio", "this server answers in text only"),
        ("functions", "use 'tools'"),
        ("function_call", "use 'tool_choice'"),
        ("web_search_options", "this server does not search the web"),
        (
            "reasoning_effort",
            "set 'chat_template_kwargs': {\"enable_thinking\": false} to answer without thinking",
        ),
        (
            "verbosity",
            "the answer's length is the model's (bound it with 'max_tokens')",
        ),
    ] {
        if field(o, f).is_some() {
            return refuse(f, why);
        }
    }
    match field(o, "modalities") {
        None => {}
        Some(Value::Array(m)) if m.iter().all(|x| x == "text") => {}
        Some(_) => {
            return refuse(
                "modalities",
                "this server answers in text only (modalities [\"text\"])",
            )
        }
    }
    if endpoint == Endpoint::Completion {
        match field(o, "suffix") {
            None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(_) => {
                return refuse(
                    "suffix",
                    "the models served here are not asked to fill in the middle",
                )
            }
        }
    }
    Ok(())
}

/// Validates a generation body of `endpoint` for `model`: one request per prompt (chat has
/// one; a completion one per entry of a `prompt` array), in order.
pub fn parse_generation(
    o: &Map<String, Value>,
    endpoint: Endpoint,
    model: &ModelContext<'_>,
) -> Result<Vec<GenRequest>, ApiError> {
    let (tok, ctx, vocab) = (model.tokenizer, model.ctx, model.vocab);
    if let Some(m) = field(o, "model") {
        if !m.is_string() {
            return Err(ApiError::invalid("model", "'model' must be a string"));
        }
    }
    refuse_unsupported(o, endpoint)?;
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
    let n = match integer(o, "n", i64::MIN, i64::MAX)? {
        None => 1,
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                "n",
                format!("'n' is {n}; it must be at least 1"),
            ))
        }
        Some(n) if n as u64 > model.parallel as u64 => {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "'n' is {n}; this server generates at most {} sequences at once (--parallel)",
                    model.parallel
                ),
            ))
        }
        Some(n) => n as usize,
    };
    // best_of picks the best of several by log-probability: not done here
    if let Some(b) = integer(o, "best_of", i64::MIN, i64::MAX)? {
        if b as u64 != n as u64 {
            return Err(ApiError::invalid(
                "best_of",
                format!("'best_of' is {b}; only best_of equal to n ({n}) is supported"),
            ));
        }
    }
    let params = sampler_params(o, tok, vocab)?;
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
    // 0 scores a completion's prompt without generating (with echo and logprobs)
    let least = match endpoint {
        Endpoint::Chat => 1,
        Endpoint::Completion => 0,
    };
    let max_tokens = match integer(o, "max_completion_tokens", least, i64::MAX)? {
        Some(m) => Some((m, "max_completion_tokens")),
        None => integer(o, "max_tokens", least, i64::MAX)?.map(|m| (m, "max_tokens")),
    };
    let echo = boolean(o, "echo")?;
    if echo && endpoint == Endpoint::Chat {
        return Err(ApiError::invalid(
            "echo",
            "'echo' is a /v1/completions field; chat does not take it",
        ));
    }
    let format = response_format(o)?;
    let mut thinking = None;
    let (prompts, tools) = match endpoint {
        Endpoint::Chat => {
            // the tools are read (and their schemas checked) once, for the prompt and the guide
            let messages = chat_messages(o.get("messages").unwrap_or(&Value::Null))?;
            let tools = active_tools(o, model.template)?;
            let text = render_with(o, &messages, model.template, tools.as_ref())?;
            if model.reasoning {
                thinking = Some(ThinkSplitter::prompt_opens(&text));
            }
            let ids = encode(tok, &text).map_err(|e| ApiError {
                param: Some("messages".into()),
                ..e
            })?;
            (vec![ids], tools)
        }
        Endpoint::Completion => {
            for f in ["tools", "tool_choice"] {
                if field(o, f).is_some() {
                    return Err(ApiError::invalid(
                        f,
                        format!("'{f}' is a chat field; /v1/completions does not take it"),
                    ));
                }
            }
            (completion_prompts(o, tok, vocab)?, None)
        }
    };
    let guide = guide(format, tools, model.grammars)?;
    let mut reqs = Vec::with_capacity(prompts.len());
    for (i, mut prompt) in prompts.into_iter().enumerate() {
        // an empty prompt starts a document, as OpenAI's completions do: the end-of-text token
        let added_start = prompt.is_empty();
        if added_start {
            let start = tok.token_id(END_OF_TEXT).ok_or_else(|| {
                ApiError::invalid(
                    "prompt",
                    "the prompt is empty and this tokenizer has no end-of-text token to start one",
                )
            })?;
            prompt.push(start);
        }
        let max_tokens = fit(endpoint, &prompt, max_tokens, ctx)?;
        reqs.push(GenRequest {
            prompt,
            n,
            index: i * n,
            echo,
            added_start,
            max_tokens,
            params,
            stops: stops.clone(),
            logprobs,
            stream,
            include_usage,
            guide: guide.clone(),
            thinking,
        });
    }
    Ok(reqs)
}

/// The most tokens to generate after `prompt`: `max_tokens` (name and value) if given, else all
/// the context has left; a 400 when the prompt leaves no room (`max_tokens: 0` needs none).
fn fit(
    endpoint: Endpoint,
    prompt: &[u32],
    max_tokens: Option<(i64, &str)>,
    ctx: usize,
) -> Result<usize, ApiError> {
    let (param, what) = match endpoint {
        Endpoint::Chat => ("messages", "messages"),
        Endpoint::Completion => ("prompt", "prompt"),
    };
    if max_tokens.is_some_and(|(m, _)| m == 0) && prompt.len() <= ctx {
        return Ok(0);
    }
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
    Ok(max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json"
        )))
        .unwrap()
    }

    fn sampler_params_t(o: &Map<String, Value>) -> Result<SamplerParams, ApiError> {
        sampler_params(o, &tokenizer(), 1000)
    }

    #[test]
    fn logit_bias_forms_are_read_and_bad_ones_named() {
        let o = |v: Value| v.as_object().unwrap().clone();
        let tok = tokenizer();
        let lb = |v: Value| logit_bias(&o(json!({ "logit_bias": v })), &tok, 1000);
        assert_eq!(
            lb(json!({"5": 10, "7": -100})).unwrap().entries(),
            &[(5, 10.0), (7, -100.0)]
        );
        // llama-server's pairs, `false` as a ban
        assert_eq!(
            lb(json!([[5, 2.5], [9, false]])).unwrap().entries(),
            &[(5, 2.5), (9, -100.0)]
        );
        // text: every token of it
        let ids = tok.encode(" hello world").unwrap();
        let got: Vec<u32> = lb(json!({" hello world": -1}))
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(got, ids);
        for (bad, what) in [
            (json!({"5": 101}), "between -100 and 100"),
            (json!({"1000": 1}), "out of range"),
            (json!([[1000, 1]]), "out of range"),
            (json!([[-1, 1]]), "out of range"),
            (json!({"5": "x"}), "must be a number"),
            (json!([5]), "pairs"),
            (json!("x"), "must be an object"),
        ] {
            let e = lb(bad.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("logit_bias"), "{bad}");
            assert!(e.message.contains(what), "{bad}: {}", e.message);
        }
        let many: Map<String, Value> = (0..=MAX_LOGIT_BIAS)
            .map(|t| (t.to_string(), json!(1)))
            .collect();
        let e = lb(Value::Object(many)).unwrap_err();
        assert!(
            e.message.contains(&MAX_LOGIT_BIAS.to_string()),
            "{}",
            e.message
        );
    }

    #[test]
    fn messages_are_put_in_the_shape_templates_read() {
        let m = json!([{"role":"developer","content":"S"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                "function":{"name":"f","arguments":"{\"x\": 1}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"42"}]);
        let n = chat_messages(&m).unwrap();
        assert_eq!(n[0], json!({"role":"system","content":"S"}));
        assert_eq!(n[1], json!({"role":"user","content":"ab"}));
        // the arguments string is parsed, as templates print them with tojson
        assert_eq!(
            n[2]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(n[2]["content"], json!(""));
        assert_eq!(
            n[3],
            json!({"role":"tool","content":"42","tool_call_id":"call_1"})
        );
        let param = |v: Value| chat_messages(&v).unwrap_err().param.unwrap();
        assert_eq!(param(json!([])), "messages");
        assert_eq!(
            param(json!([{"role":"robot","content":"x"}])),
            "messages[0].role"
        );
        assert_eq!(
            param(json!([{"role":"user","content":"x","tool_calls":[]}])),
            "messages[0].tool_calls"
        );
        assert_eq!(
            param(json!([{"role":"assistant","tool_calls":[{"function":{}}]}])),
            "messages[0].tool_calls[0].function.name"
        );
        assert_eq!(
            param(json!([{"role":"user","content":[{"type":"image_url"}]}])),
            "messages[0].content[0].type"
        );
    }

    #[test]
    fn response_formats_are_read_or_refused_by_name() {
        let o = |v: Value| v.as_object().unwrap().clone();
        let rf = |v: Value| response_format(&o(v));
        assert_eq!(rf(json!({})).unwrap(), ResponseFormat::Text);
        assert_eq!(
            rf(json!({"response_format": {"type": "json_object"}})).unwrap(),
            ResponseFormat::JsonObject
        );
        assert_eq!(
            rf(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "integer"}, "strict": true}}}))
            .unwrap(),
            ResponseFormat::JsonSchema(json!({"type": "integer"}))
        );
        for bad in [
            json!({"response_format": {"type": "xml"}}),
            json!({"response_format": {"type": "json_schema"}}),
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
            json!({"response_format": "json"}),
            json!({"response_format": {}}),
        ] {
            assert_eq!(
                rf(bad).unwrap_err().param.as_deref(),
                Some("response_format")
            );
        }
        // llama.cpp's GBNF `grammar`: a string, alone; "" is none
        assert_eq!(
            rf(json!({"grammar": "root ::= \"a\""})).unwrap(),
            ResponseFormat::Gbnf("root ::= \"a\"".into())
        );
        assert_eq!(rf(json!({"grammar": ""})).unwrap(), ResponseFormat::Text);
        for bad in [
            json!({"grammar": 3}),
            json!({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
            json!({"grammar": "root ::= \"a\"", "json_schema": {"type": "object"}}),
        ] {
            let e = rf(bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("grammar"));
        }
        let e = rf(json!({"grammar": "root ::= \"a\"", "response_format": {"type": "text"}}))
            .unwrap_err();
        assert!(
            e.message.contains("'grammar' or 'response_format'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn sampling_fields_are_range_checked() {
        let o = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            sampler_params_t(&o(json!({"temperature": 2.5})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            sampler_params_t(&o(json!({"top_p": "x"})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("top_p")
        );
        assert_eq!(
            sampler_params_t(&o(json!({"presence_penalty": -3})))
                .unwrap_err()
                .param
                .as_deref(),
            Some("presence_penalty")
        );
        let p = sampler_params_t(&o(json!({"temperature": 0, "top_p": 0, "seed": 7}))).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p, p.seed), (0.0, 1, 1.0, 7));
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.0, 0.0));
        assert!(p.validate().is_ok());
        let p = sampler_params_t(&o(
            json!({"frequency_penalty": 0.5, "presence_penalty": -2}),
        ))
        .unwrap();
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.5, -2.0));
        assert!(!p.is_plain_greedy());
    }

    #[test]
    fn a_final_assistant_message_is_continued_or_closed() {
        let t = ChatTemplate::chatml();
        let body = |extra: Value| {
            let mut o = json!({"messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, wor"},
            ]});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            o.as_object().unwrap().clone()
        };
        let closed = render_chat(&body(json!({})), &t).unwrap();
        assert!(closed.ends_with("<|im_start|>assistant\n"), "{closed:?}");
        let cont = body(json!({"add_generation_prompt": false, "continue_final_message": true}));
        let cont = render_chat(&cont, &t).unwrap();
        assert!(
            cont.ends_with("<|im_start|>assistant\nHello, wor"),
            "{cont:?}"
        );
        let both = body(json!({"continue_final_message": true}));
        assert_eq!(
            render_chat(&both, &t).unwrap_err().param.as_deref(),
            Some("continue_final_message")
        );
        let mut user_last =
            body(json!({"add_generation_prompt": false, "continue_final_message": true}));
        user_last["messages"] = json!([{"role": "user", "content": "Hi"}]);
        assert!(render_chat(&user_last, &t).is_err());
        let bad = body(json!({"add_generation_prompt": 1}));
        assert_eq!(
            render_chat(&bad, &t).unwrap_err().param.as_deref(),
            Some("add_generation_prompt")
        );
    }
}
