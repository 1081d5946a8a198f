//! `POST /v1/embeddings` (and `/embeddings`) in OpenAI's shape.
//!
//! Request fields:
//! - `input`: a string, an array of strings, an array of token ids (one input), or an array
//!   of token-id arrays; an array may mix strings and token-id arrays. Each input gives one
//!   `data[i]`, in order. Strings are tokenized with what the tokenizer adds around a text
//!   (Qwen3-Embedding's appends `<|endoftext|>`; a GGUF's `add_eos_token`); token ids are
//!   taken as they are.
//!   Refused with a 400: no input, an empty array, an empty string or token array, more than
//!   [`MAX_INPUTS`] inputs, a token id past the vocabulary, an input longer than the context.
//! - `encoding_format`: `float` (the default) or `base64` (the f32 values' little-endian bytes,
//!   as OpenAI's Python client decodes them).
//! - `dimensions`: keep the first `d` values (1..=hidden size) and normalize again
//!   (Matryoshka truncation, which Qwen3-Embedding was trained for).
//! - `model`, `user`: accepted and ignored (the answer names the served model).
//!
//! The embedding of an input is the final-normed hidden state of its last token, L2-normalized
//! (Qwen3-Embedding's pooling). Inputs run through the scheduler like prompts: each a
//! prefill-only run on a sequence of its own, batched with the other requests' rows.
//!
//! Embeddings are on with `--embeddings`, or when the model says it is an embedder with
//! last-token pooling (a GGUF's `<arch>.pooling_type` = 3, a sentence-transformers directory's
//! `pooling_mode_lasttoken`); off, the route answers 501 naming `--embeddings`, as
//! llama-server does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::{self, ApiError};
use crate::http::{self, AppInner};
use crate::scheduler::{EmbedJob, Msg};
use qwenrt::text::tokenizer::Tokenizer;

/// The most inputs one request may give (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// Each input's tokens: non-empty, in the vocabulary, within the context.
    pub inputs: Vec<Vec<u32>>,
    /// Values kept of each embedding (`dimensions`), at most the hidden size.
    pub dimensions: usize,
    /// `encoding_format: "base64"`.
    pub base64: bool,
}

/// What parsing needs of the model.
pub struct EmbedContext<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Rows of the model's logits (token ids must be below it).
    pub vocab: usize,
    /// Context length of a sequence (the longest input).
    pub ctx: usize,
    /// Width of the model's hidden state (the longest embedding).
    pub hidden: usize,
}

const INPUT_SHAPE: &str = "'input' must be a string, an array of strings, an array of token ids, or an array of token-id arrays";

/// Validates an embeddings request body.
pub fn parse(o: &Map<String, Value>, m: &EmbedContext<'_>) -> Result<EmbedRequest, ApiError> {
    let base64 = match o.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(v) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("'encoding_format' must be \"float\" or \"base64\", not {v}"),
            ))
        }
    };
    let dimensions = match o.get("dimensions") {
        None | Some(Value::Null) => m.hidden,
        Some(v) => match v.as_u64() {
            Some(d) if d >= 1 && d as usize <= m.hidden => d as usize,
            _ => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!(
                        "'dimensions' must be an integer from 1 to {} (the model's hidden size), not {v}",
                        m.hidden
                    ),
                ))
            }
        },
    };
    let inputs = inputs(o, m)?;
    Ok(EmbedRequest {
        inputs,
        dimensions,
        base64,
    })
}

/// The inputs' tokens, each checked.
fn inputs(o: &Map<String, Value>, m: &EmbedContext<'_>) -> Result<Vec<Vec<u32>>, ApiError> {
    let items: Vec<(String, Vec<u32>)> = match o.get("input") {
        None | Some(Value::Null) => return Err(ApiError::invalid("input", "'input' is required")),
        Some(Value::String(s)) => vec![("input".into(), text_tokens(m.tokenizer, s, "input")?)],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("input", "'input' is an empty array"))
        }
        // token ids: one input
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![("input".into(), api::token_ids(a, "input", m.vocab)?)]
        }
        Some(Value::Array(a)) => {
            if a.len() > MAX_INPUTS {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "'input' has {} items; at most {MAX_INPUTS} are allowed",
                        a.len()
                    ),
                ));
            }
            let mut items = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                let param = format!("input[{i}]");
                let tokens = match v {
                    Value::String(s) => text_tokens(m.tokenizer, s, &param)?,
                    Value::Array(ids) if ids.iter().all(Value::is_number) => {
                        api::token_ids(ids, &param, m.vocab)?
                    }
                    _ => return Err(ApiError::invalid("input", INPUT_SHAPE)),
                };
                items.push((param, tokens));
            }
            items
        }
        Some(_) => return Err(ApiError::invalid("input", INPUT_SHAPE)),
    };
    items
        .into_iter()
        .map(|(param, tokens)| {
            if let Some(&t) = tokens.iter().find(|&&t| t as usize >= m.vocab) {
                // a tokenizer larger than the model's vocabulary
                Err(ApiError::invalid(
                    &param,
                    format!(
                        "'{param}' tokenizes to id {t}, out of range for the model's vocabulary of {}",
                        m.vocab
                    ),
                ))
            } else if tokens.is_empty() {
                Err(ApiError::invalid(
                    &param,
                    format!("'{param}' is empty: there is nothing to embed"),
                ))
            } else if tokens.len() > m.ctx {
                Err(ApiError::invalid(
                    &param,
                    format!(
                        "'{param}' is {} tokens; the context holds {} (raise --ctx)",
                        tokens.len(),
                        m.ctx
                    ),
                )
                .code("context_length_exceeded"))
            } else {
                Ok(tokens)
            }
        })
        .collect()
}

fn text_tokens(tok: &Tokenizer, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode_with_special(text)
        .map_err(|e| ApiError::invalid(param, format!("cannot tokenize '{param}': {e}")))
}

/// Last-token pooling's vector of `hidden` (a sequence's final-normed hidden state): its first
/// `dimensions` values, L2-normalized (left as they are if all zero).
pub fn pool(hidden: &[f32], dimensions: usize) -> Vec<f32> {
    let v = &hidden[..dimensions.min(hidden.len())];
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

/// `bytes` in standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One `data` item.
#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// An embedding as floats (serialized as f32, shortest round-trip) or base64 of their bytes.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct Answer<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: Usage,
}

/// The handler of `POST /v1/embeddings`.
pub async fn embeddings(
    State(app): State<Arc<AppInner>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(hidden) = app.embedding_width else {
        return ApiError::new(
            501,
            "not_supported_error",
            "this server does not serve embeddings: start it with --embeddings (a model whose \
             GGUF sets <arch>.pooling_type to 3, last-token pooling, turns them on by itself)",
        )
        .code("embeddings_off")
        .into_response();
    };
    let o = match http::body_bytes(&app, body).and_then(|b| api::parse_object(&b)) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    // tokenizing up to MAX_INPUTS strings: off the async workers
    let req = {
        let app = app.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let m = EmbedContext {
                tokenizer: &app.tokenizer,
                vocab: app.vocab,
                ctx: app.ctx,
                hidden,
            };
            parse(&o, &m)
        })
        .await;
        match parsed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return e.into_response(),
            Err(_) => {
                return ApiError::new(500, "server_error", "request parsing failed").into_response()
            }
        }
    };
    let prompt_tokens = req.inputs.iter().map(Vec::len).sum();
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(r) = submit(&app, req.inputs, tx) {
        return r;
    }
    let states = match rx.await {
        Ok(Ok(states)) => states,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::new(500, "server_error", "the engine stopped").into_response(),
    };
    let data = states
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let v = pool(state, req.dimensions);
            let embedding = if req.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64(&bytes))
            } else {
                Vector::Float(v)
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let answer = Answer {
        object: "list",
        data,
        model: &app.model_id,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    match serde_json::to_string(&answer) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(500, "server_error", format!("cannot write the answer: {e}"))
            .into_response(),
    }
}

/// Admits an embedding job as one request (503 with Retry-After while draining or past the
/// queue, as a generation is) and hands it to the engine thread.
#[allow(clippy::result_large_err)]
fn submit(
    app: &AppInner,
    inputs: Vec<Vec<u32>>,
    reply: tokio::sync::oneshot::Sender<crate::scheduler::EmbedReply>,
) -> Result<(), Response> {
    http::admit(app, 1, |arrived, deadline| {
        vec![Msg::Embed(Box::new(EmbedJob {
            inputs,
            reply,
            arrived,
            deadline,
        }))]
    })
}

#[cfg(test)]
mod tests {
    use super::{base64, pool};

    #[test]
    fn base64_matches_rfc_4648() {
        // RFC 4648, section 10
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn pool_truncates_then_normalizes() {
        let v = pool(&[3.0, 4.0, 12.0], 2);
        assert_eq!(v, [0.6, 0.8]);
        let v = pool(&[3.0, 4.0, 12.0], 3);
        assert!((v[2] - 12.0 / 13.0).abs() < 1e-7, "{v:?}");
        assert_eq!(pool(&[0.0, 0.0], 2), [0.0, 0.0]);
    }
}
