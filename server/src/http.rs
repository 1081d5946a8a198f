//! The HTTP side: routes, auth, admission, and the OpenAI response shapes (JSON and SSE).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, ApiError, Endpoint, GenRequest};
use crate::call_parser::{Call, CallEvent, CallParser};
use crate::embeddings;
use crate::reasoning::{Piece, ThinkSplitter};
use crate::scheduler::{Event, Finish, Job, Msg, Shared, TokenLogprob};
use qwenrt::engine::constraint::Grammars;
use qwenrt::text::template::ChatTemplate;
use qwenrt::text::tokenizer::Tokenizer;

/// What every handler shares.
pub struct AppInner {
    pub tx: Sender<Msg>,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template requests are rendered with.
    pub template: Arc<ChatTemplate>,
    /// Compiles `response_format` schemas and tool grammars.
    pub grammars: Arc<Grammars>,
    /// Whether chat answers' thinking parts go to `reasoning_content`.
    pub reasoning: bool,
    pub shared: Arc<Shared>,
    pub model_id: String,
    pub ctx: usize,
    pub vocab: usize,
    /// The width of the embeddings `/v1/embeddings` serves (the hidden size); `None`: that
    /// route is off (501).
    pub embedding_width: Option<usize>,
    /// `system_fingerprint` of every response: the qwenrt version and the model's sha256.
    pub fingerprint: String,
    /// Sequences the engine runs at once (`--parallel`).
    pub parallel: usize,
    pub api_key: Option<String>,
    /// Browser origins allowed to call the API (`--cors-origin`; `*` for any); empty: no CORS.
    pub cors_origins: Vec<String>,
    /// The model's names besides its id, and its labels, as `/v1/models` lists them.
    pub aliases: Vec<String>,
    /// Labels of the model (`--tags`).
    pub tags: Vec<String>,
    /// Jobs accepted at once (running plus queued).
    pub limit: usize,
    pub request_timeout: Option<Duration>,
    pub max_body_bytes: usize,
    pub draining: AtomicBool,
    pub started: u64,
}

type App = Arc<AppInner>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new `created` timestamp for the responses.
pub fn now_secs() -> u64 {
    unix_now()
}

/// The router with every endpoint, the body limit, and auth and status counting around it.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings::embeddings))
        // llama-server serves the OpenAI routes without the prefix too
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/models", get(models))
        .route("/embeddings", post(embeddings::embeddings))
        .route("/live", get(health))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/apply-template", post(apply_template))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn_with_state(app.clone(), cors))
        .with_state(app)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Same length and bytes, without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for the origins of `--cors-origin`: a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from an allowed origin is answered 204 without the API key
/// (browsers send none on preflights); every response to an allowed origin names it in
/// `Access-Control-Allow-Origin`. Other origins get no CORS headers, so browsers refuse them.
async fn cors(State(app): State<App>, req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| app.cors_origins.iter().any(|a| origin_allowed(a, o)))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        if preflight && !app.cors_origins.is_empty() {
            // answered, without the headers that would let the page go on
            return StatusCode::OK.into_response();
        }
        return next.run(req).await;
    };
    let mut resp = if preflight {
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, X-Api-Key"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Whether `--cors-origin` entry `allowed` lets a page from `origin` in: `*` any, `localhost`
/// any loopback origin (`http://localhost:3000`, `http://127.0.0.1`, `http://[::1]:8080`, as
/// llama-server reads it), else the origin exactly.
fn origin_allowed(allowed: &str, origin: &str) -> bool {
    match allowed {
        "*" => true,
        "localhost" => {
            let Some(rest) = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
            else {
                return false;
            };
            let (host, tail) = match rest.strip_prefix("[::1]") {
                Some(tail) => ("[::1]", tail),
                None => rest.split_at(rest.find(':').unwrap_or(rest.len())),
            };
            let port_ok = tail.is_empty()
                || tail
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            port_ok && matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        }
        exact => exact == origin,
    }
}

/// Checks the API key (every route but the probes, `/live`, `/health` and `/ready`) and counts
/// responses by status.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/live" | "/health" | "/ready");
    let resp = match (&app.api_key, open) {
        (Some(key), false) => {
            // `Authorization: Bearer KEY`, or `X-Api-Key: KEY` as llama-server also takes it
            let headers = req.headers();
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let given = bearer
                .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
                .unwrap_or("");
            if same_secret(given.trim().as_bytes(), key.as_bytes()) {
                next.run(req).await
            } else {
                let mut r = ApiError::new(
                    401,
                    "authentication_error",
                    "missing or wrong API key (send it as 'Authorization: Bearer KEY')",
                )
                .code("invalid_api_key")
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
        }
        _ => next.run(req).await,
    };
    app.shared.metrics.count_response(resp.status().as_u16());
    resp
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        format!("no such endpoint: {method} {}", uri.path()),
    )
    .code("not_found")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .code("method_not_allowed")
}

/// The body bytes, or the error for a body over the limit (413) or one that failed to arrive.
pub(super) fn body_bytes(
    app: &AppInner,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                "invalid_request_error",
                format!("the request body exceeds {} bytes", app.max_body_bytes),
            )
            .code("payload_too_large")
        } else {
            ApiError::new(400, "invalid_request_error", r.body_text())
        }
    })
}

async fn chat(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, Endpoint::Chat, body).await
}

async fn completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, Endpoint::Completion, body).await
}

impl AppInner {
    /// What request parsing needs of the model.
    fn model(&self) -> api::ModelContext<'_> {
        api::ModelContext {
            tokenizer: &self.tokenizer,
            template: &self.template,
            grammars: &self.grammars,
            ctx: self.ctx,
            vocab: self.vocab,
            parallel: self.parallel,
            reasoning: self.reasoning,
        }
    }
}

async fn generate(app: App, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let parsed = body_bytes(&app, body).and_then(|b| {
        let o = api::parse_object(&b)?;
        Ok(o)
    });
    let o = match parsed {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    // rendering and compiling a schema may take milliseconds: off the async workers
    let reqs = {
        let app = app.clone();
        match tokio::task::spawn_blocking(move || api::parse_generation(&o, endpoint, &app.model()))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return e.into_response(),
            Err(_) => {
                return ApiError::new(500, "server_error", "request parsing failed").into_response()
            }
        }
    };
    if reqs.len() > app.limit {
        return ApiError::invalid(
            "prompt",
            format!(
                "'prompt' holds {} prompts; this server takes at most {} at once (--parallel plus --max-queue)",
                reqs.len(),
                app.limit
            ),
        )
        .into_response();
    }
    let first = &reqs[0];
    let n = first.n;
    let (stream_it, include_usage) = (first.stream, first.include_usage);
    // every choice gets its own splitters and tool-call parser
    let choices: Vec<Choice> = (0..reqs.len() * n)
        .map(|_| Choice {
            think: first.thinking.map(ThinkSplitter::new),
            parser: first
                .guide
                .tools
                .as_ref()
                .map(|(t, syntax)| CallParser::new(*syntax, Some(t), rand_id())),
            ..Choice::default()
        })
        .collect();
    let prompts: Vec<PromptOut> = reqs
        .iter()
        .map(|r| {
            let shown = &r.prompt[usize::from(r.added_start)..];
            PromptOut {
                tokens: r.prompt.len(),
                text: if r.echo {
                    app.tokenizer.decode(shown).unwrap_or_default()
                } else {
                    String::new()
                },
                shown: if r.echo { shown.to_vec() } else { Vec::new() },
                start: usize::from(r.added_start),
                logprobs: None,
            }
        })
        .collect();
    let events = match submit(&app, reqs) {
        Ok(rx) => rx,
        Err(r) => return r,
    };
    let id = format!(
        "{}-{:x}",
        if endpoint == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        rand_id()
    );
    let out = Out {
        meta: Meta {
            id,
            created: unix_now(),
            model: app.model_id.clone(),
            fingerprint: app.fingerprint.clone(),
            endpoint,
            include_usage,
        },
        tokenizer: app.tokenizer.clone(),
        n,
        prompts,
        choices,
    };
    if stream_it {
        stream(out, events).into_response()
    } else {
        collect(out, events).await
    }
}

/// Admits the jobs of one request, all or none (503 with Retry-After past the queue), and
/// hands them to the engine thread; their events come back on one channel.
#[allow(clippy::result_large_err)]
fn submit(app: &AppInner, reqs: Vec<GenRequest>) -> Result<UnboundedReceiver<Event>, Response> {
    let (tx, rx) = unbounded_channel();
    admit(app, reqs.len(), |arrived, deadline| {
        reqs.into_iter()
            .map(|req| {
                Msg::Job(Box::new(Job {
                    req,
                    events: tx.clone(),
                    arrived,
                    deadline,
                }))
            })
            .collect()
    })?;
    Ok(rx)
}

/// Admits a request that holds `k` places in the queue, all or none: 503 with Retry-After
/// while draining or past the queue; else `make(arrived, deadline)` builds its `k` messages,
/// which go to the engine thread (each counts one place until the engine finishes it).
#[allow(clippy::result_large_err)]
pub(super) fn admit(
    app: &AppInner,
    k: usize,
    make: impl FnOnce(Instant, Option<Instant>) -> Vec<Msg>,
) -> Result<(), Response> {
    let busy = |why: &str, code: &'static str| {
        let mut r = ApiError::new(503, "server_error", why)
            .code(code)
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    };
    if app.draining.load(Ordering::Acquire) {
        return Err(busy(
            "the server is shutting down and takes no new requests",
            "shutting_down",
        ));
    }
    if app.shared.inflight.fetch_add(k, Ordering::AcqRel) + k > app.limit {
        app.shared.inflight.fetch_sub(k, Ordering::AcqRel);
        app.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(busy(
            "the server is busy: the request queue is full, retry later",
            "overloaded",
        ));
    }
    let arrived = Instant::now();
    let msgs = make(arrived, app.request_timeout.map(|t| arrived + t));
    debug_assert_eq!(msgs.len(), k, "one message per place");
    for (i, msg) in msgs.into_iter().enumerate() {
        if app.tx.send(msg).is_err() {
            // the places not sent were never the engine's to count down
            app.shared.inflight.fetch_sub(k - i, Ordering::AcqRel);
            return Err(busy("the engine has stopped", "overloaded"));
        }
    }
    Ok(())
}

fn rand_id() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The fields every response of one request shares.
struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    endpoint: Endpoint,
    include_usage: bool,
}

/// One prompt of a request, as its choices show it.
struct PromptOut {
    /// Tokens fed (counted once in `usage.prompt_tokens`, whatever `n`).
    tokens: usize,
    /// Its text (`echo`; empty otherwise).
    text: String,
    /// Its tokens as echoed (without a start token the server added).
    shown: Vec<u32>,
    /// Tokens of the fed prompt before `shown` (1 when the server added a start token).
    start: usize,
    /// Its tokens' log-probabilities (echo with logprobs), once the engine sent them.
    logprobs: Option<Vec<Option<TokenLogprob>>>,
}

/// One choice of a response.
#[derive(Default)]
struct Choice {
    /// Splits a thinking model's answer into reasoning and content.
    think: Option<ThinkSplitter>,
    /// Splits a chat answer into content and tool calls (requests with tools).
    parser: Option<CallParser>,
    /// The text so far (a collected response).
    text: String,
    /// The generated tokens' log-probabilities (a collected response).
    lps: Vec<TokenLogprob>,
    want_lps: bool,
    finish: Option<Finish>,
    /// Bytes of text before the next token (completions' `text_offset`).
    offset: usize,
}

/// What one response is made of: its metadata, its prompts and its choices
/// (`index = prompt * n + j`).
struct Out {
    meta: Meta,
    tokenizer: Arc<Tokenizer>,
    n: usize,
    prompts: Vec<PromptOut>,
    choices: Vec<Choice>,
}

impl Out {
    /// OpenAI's usage: each prompt counted once, the completion tokens of every choice.
    fn usage(&self) -> Value {
        let prompt: usize = self.prompts.iter().map(|p| p.tokens).sum();
        let (mut completion, mut cached) = (0, 0);
        for f in self.choices.iter().filter_map(|c| c.finish.as_ref()) {
            completion += f.completion_tokens;
            cached += f.cached_tokens;
        }
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// A prompt's echoed tokens as completion log-probability entries (the first has none).
    fn prompt_entries(&self, p: usize) -> Vec<LpEntry> {
        let prompt = &self.prompts[p];
        let Some(lps) = prompt.logprobs.as_ref() else {
            return Vec::new();
        };
        prompt
            .shown
            .iter()
            .enumerate()
            .map(
                |(k, &id)| match lps.get(prompt.start + k).and_then(Option::as_ref) {
                    Some(l) => LpEntry::of(l),
                    None => LpEntry {
                        token: String::from_utf8_lossy(self.tokenizer.token_bytes(id)).into_owned(),
                        logprob: Value::Null,
                        top: Value::Null,
                    },
                },
            )
            .collect()
    }
}

fn alt_json(a: &crate::scheduler::Alt) -> Value {
    json!({"token": a.token, "logprob": a.logprob, "bytes": a.bytes})
}

/// Chat logprob entries (`content` items) of `lps`.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut v = alt_json(&l.chosen);
            v["top_logprobs"] = Value::Array(l.top.iter().map(alt_json).collect());
            v
        })
        .collect();
    json!({ "content": content })
}

/// One token of completion logprobs: its text, log-probability and top alternatives (`null`
/// for a prompt's first token).
struct LpEntry {
    token: String,
    logprob: Value,
    top: Value,
}

impl LpEntry {
    fn of(l: &TokenLogprob) -> LpEntry {
        let m: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|a| (a.token.clone(), Value::from(a.logprob)))
            .collect();
        LpEntry {
            token: l.chosen.token.clone(),
            logprob: Value::from(l.chosen.logprob),
            top: Value::Object(m),
        }
    }
}

/// Completion logprobs (the legacy parallel arrays) of `entries`, offsets from `offset`.
fn completion_logprobs(entries: impl IntoIterator<Item = LpEntry>, mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for l in entries {
        offsets.push(Value::from(offset));
        offset += l.token.len();
        tokens.push(Value::from(l.token));
        token_logprobs.push(l.logprob);
        top.push(l.top);
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// OpenAI's `tool_calls` entries of `calls`.
fn tool_calls_json(calls: &[Call]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect(),
    )
}

/// A generation that ended normally with tool calls ends with `tool_calls`.
fn finish_reason(reason: &'static str, calls: usize) -> &'static str {
    if calls > 0 && reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

async fn collect(mut out: Out, mut events: UnboundedReceiver<Event>) -> Response {
    while !out.done() {
        match events.recv().await {
            Some(Event::Token {
                choice,
                text,
                logprob,
            }) => {
                let c = &mut out.choices[choice];
                c.text.push_str(&text);
                if let Some(l) = logprob {
                    c.want_lps = true;
                    c.lps.push(l);
                }
            }
            Some(Event::Text { choice, text }) => out.choices[choice].text.push_str(&text),
            Some(Event::Prompt { index, logprobs }) => {
                out.prompts[index / out.n].logprobs = logprobs;
            }
            Some(Event::Done(f)) => out.choices[f.choice].finish = Some(f),
            Some(Event::Error(e)) => return e.into_response(),
            None => {
                return ApiError::new(500, "server_error", "the engine stopped").into_response()
            }
        }
    }
    let usage = out.usage();
    let mut all = std::mem::take(&mut out.choices);
    let mut choices = Vec::with_capacity(all.len());
    for (index, c) in all.iter_mut().enumerate() {
        let finish = c.finish.expect("every choice finished");
        let v = match out.meta.endpoint {
            Endpoint::Chat => chat_choice(index, c, finish),
            Endpoint::Completion => {
                let p = index / out.n;
                let prompt = &out.prompts[p];
                let echoed = prompt.logprobs.is_some();
                let logprobs = if c.want_lps || echoed {
                    let mut entries = out.prompt_entries(p);
                    entries.extend(c.lps.iter().map(LpEntry::of));
                    completion_logprobs(entries, 0)
                } else {
                    Value::Null
                };
                json!({
                    "index": index,
                    "text": format!("{}{}", prompt.text, c.text),
                    "logprobs": logprobs,
                    "finish_reason": finish.reason,
                })
            }
        };
        choices.push(v);
    }
    let object = match out.meta.endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completion => "text_completion",
    };
    let body = json!({
        "id": out.meta.id, "object": object, "created": out.meta.created,
        "model": out.meta.model, "system_fingerprint": out.meta.fingerprint,
        "choices": choices,
        "usage": usage,
    });
    json_response(StatusCode::OK, &body)
}

/// A collected chat choice: the same splitters and parser as a stream uses, so both give the
/// same parts and calls.
fn chat_choice(index: usize, c: &mut Choice, finish: Finish) -> Value {
    let mut text = std::mem::take(&mut c.text);
    let mut reasoning = None;
    if let Some(t) = c.think.as_mut() {
        let mut pieces = Vec::new();
        t.push(&text, &mut pieces);
        t.finish(&mut pieces);
        let (mut r, mut content) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(x) => r.push_str(&x),
                Piece::Content(x) => content.push_str(&x),
            }
        }
        reasoning = Some(r);
        text = content;
    }
    let mut message = json!({"role": "assistant", "content": text});
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        message["reasoning_content"] = Value::from(r);
    }
    let mut reason = finish.reason;
    if let Some(p) = c.parser.as_mut() {
        let mut out = Vec::new();
        p.push(&text, &mut out);
        p.finish(&mut out);
        let content: String = out
            .iter()
            .filter_map(|e| match e {
                CallEvent::Content(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        message["content"] = if content.is_empty() && !p.calls().is_empty() {
            Value::Null
        } else {
            Value::from(content)
        };
        if !p.calls().is_empty() {
            message["tool_calls"] = tool_calls_json(p.calls());
        }
        reason = finish_reason(reason, p.calls().len());
    }
    json!({
        "index": index,
        "message": message,
        "logprobs": if c.want_lps { chat_logprobs(&c.lps) } else { Value::Null },
        "finish_reason": reason,
    })
}

/// The state of one SSE stream.
struct Streamer {
    out: Out,
    events: UnboundedReceiver<Event>,
    lines: VecDeque<String>,
    ended: bool,
    /// Scratch for a parser's events.
    parsed: Vec<CallEvent>,
    /// Scratch for a splitter's pieces.
    pieces: Vec<Piece>,
}

impl Streamer {
    /// A chunk of choice `index` with `delta` (chat) or its `content` as `text` (completions);
    /// `logprobs` already in the endpoint's shape.
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> String {
        let meta = &self.out.meta;
        let mut v = match meta.endpoint {
            Endpoint::Chat => json!({
                "id": meta.id, "object": "chat.completion.chunk",
                "created": meta.created, "model": meta.model,
                "system_fingerprint": meta.fingerprint,
                "choices": [{"index": index, "delta": delta,
                    "logprobs": logprobs, "finish_reason": finish}],
            }),
            Endpoint::Completion => json!({
                "id": meta.id, "object": "text_completion",
                "created": meta.created, "model": meta.model,
                "system_fingerprint": meta.fingerprint,
                "choices": [{"index": index,
                    "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                    "logprobs": logprobs, "finish_reason": finish}],
            }),
        };
        if meta.include_usage {
            v["usage"] = Value::Null;
        }
        v.to_string()
    }

    /// A generated token's log-probabilities in the endpoint's shape (advancing the choice's
    /// text offset).
    fn lp_json(&mut self, index: usize, lp: Option<&TokenLogprob>) -> Value {
        let Some(l) = lp else {
            return Value::Null;
        };
        match self.out.meta.endpoint {
            Endpoint::Chat => chat_logprobs(std::slice::from_ref(l)),
            Endpoint::Completion => {
                let c = &mut self.out.choices[index];
                let v = completion_logprobs([LpEntry::of(l)], c.offset);
                c.offset += l.chosen.token.len();
                v
            }
        }
    }

    /// Chunks for a piece of choice `index`'s text: its thinking part (a thinking model's) as
    /// `reasoning_content` deltas, the rest through [`Streamer::content`].
    fn text(&mut self, index: usize, text: &str, lp: Option<&TokenLogprob>, end: bool) {
        let mut pieces = std::mem::take(&mut self.pieces);
        let Some(think) = self.out.choices[index].think.as_mut() else {
            self.pieces = pieces;
            return self.content(index, text, lp, end);
        };
        think.push(text, &mut pieces);
        if end {
            think.finish(&mut pieces);
        }
        let mut lp = lp;
        let mut content = String::new();
        for p in pieces.drain(..) {
            match p {
                Piece::Reasoning(r) => {
                    let l = self.lp_json(index, lp.take());
                    let c = self.chunk(index, json!({"reasoning_content": r}), l, None);
                    self.lines.push_back(c);
                }
                Piece::Content(c) => content.push_str(&c),
            }
        }
        self.pieces = pieces;
        if !content.is_empty() || end || lp.is_some() {
            self.content(index, &content, lp, end);
        }
    }

    /// Chunks for a piece of choice `index`'s content: as it is, or through the tool-call
    /// parser (content deltas, then per call its id and name and its argument fragments).
    fn content(&mut self, index: usize, text: &str, lp: Option<&TokenLogprob>, end: bool) {
        let mut parsed = std::mem::take(&mut self.parsed);
        let Some(parser) = self.out.choices[index].parser.as_mut() else {
            self.parsed = parsed;
            if !text.is_empty() || lp.is_some() {
                let l = self.lp_json(index, lp);
                let c = self.chunk(index, json!({"content": text}), l, None);
                self.lines.push_back(c);
            }
            return;
        };
        parser.push(text, &mut parsed);
        if end {
            parser.finish(&mut parsed);
        }
        let mut lp = lp;
        for e in parsed.drain(..) {
            let delta = match e {
                CallEvent::Content(t) => json!({"content": t}),
                CallEvent::Start { index, id, name } => json!({"tool_calls": [{
                    "index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                CallEvent::Arguments { index, fragment } => json!({"tool_calls": [{
                    "index": index, "function": {"arguments": fragment}}]}),
            };
            let l = self.lp_json(index, lp.take());
            let c = self.chunk(index, delta, l, None);
            self.lines.push_back(c);
        }
        if let Some(l) = lp {
            let l = self.lp_json(index, Some(l));
            let c = self.chunk(index, json!({}), l, None);
            self.lines.push_back(c);
        }
        self.parsed = parsed;
    }

    /// Turns the next engine event into SSE data lines.
    fn on(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Token {
                choice,
                text,
                logprob,
            }) => self.text(choice, &text, logprob.as_ref(), false),
            Some(Event::Text { choice, text }) => self.text(choice, &text, None, false),
            Some(Event::Prompt { index, logprobs }) => {
                // echo: each choice of the prompt starts with its text (and its tokens'
                // log-probabilities)
                let p = index / self.out.n;
                self.out.prompts[p].logprobs = logprobs;
                for j in 0..self.out.n {
                    let i = index + j;
                    let lps = if self.out.prompts[p].logprobs.is_some() {
                        let v = completion_logprobs(self.out.prompt_entries(p), 0);
                        self.out.choices[i].offset = self.out.prompts[p].text.len();
                        v
                    } else {
                        Value::Null
                    };
                    let text = self.out.prompts[p].text.clone();
                    let c = self.chunk(i, json!({"content": text}), lps, None);
                    self.lines.push_back(c);
                }
            }
            Some(Event::Done(f)) => {
                let i = f.choice;
                self.text(i, "", None, true);
                let calls = self.out.choices[i]
                    .parser
                    .as_ref()
                    .map_or(0, |p| p.calls().len());
                let c = self.chunk(
                    i,
                    json!({}),
                    Value::Null,
                    Some(finish_reason(f.reason, calls)),
                );
                self.lines.push_back(c);
                self.out.choices[i].finish = Some(f);
                if !self.out.done() {
                    return;
                }
                if self.out.meta.include_usage {
                    let meta = &self.out.meta;
                    let object = match meta.endpoint {
                        Endpoint::Chat => "chat.completion.chunk",
                        Endpoint::Completion => "text_completion",
                    };
                    let u = json!({"id": meta.id, "object": object,
                        "created": meta.created, "model": meta.model,
                        "system_fingerprint": meta.fingerprint,
                        "choices": [], "usage": self.out.usage()});
                    self.lines.push_back(u.to_string());
                }
                self.end();
            }
            Some(Event::Error(e)) => {
                self.lines.push_back(e.body().to_string());
                self.end();
            }
            None => {
                let e = ApiError::new(500, "server_error", "the engine stopped");
                self.lines.push_back(e.body().to_string());
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.lines.push_back("[DONE]".into());
        self.ended = true;
    }
}

fn stream(
    out: Out,
    events: UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut s = Streamer {
        out,
        events,
        lines: VecDeque::new(),
        ended: false,
        parsed: Vec::new(),
        pieces: Vec::new(),
    };
    if s.out.meta.endpoint == Endpoint::Chat {
        for i in 0..s.out.choices.len() {
            // the role alone, content null (llama-server's and vLLM's first chunk)
            let first = s.chunk(
                i,
                json!({"role": "assistant", "content": null}),
                Value::Null,
                None,
            );
            s.lines.push_back(first);
        }
    }
    let body = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(data) = s.lines.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            let ev = s.events.recv().await;
            s.on(ev);
        }
    });
    Sse::new(body)
}

async fn models(State(app): State<App>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": app.model_id, "object": "model", "created": app.started,
            "owned_by": "qwenrt", "max_model_len": app.ctx,
            "aliases": if app.aliases.is_empty() { vec![app.model_id.clone()] } else { app.aliases.clone() },
            "tags": app.tags,
        }]}),
    )
}

/// The probes' body: `status` (`ok` or `draining`) with the active and queued counts.
fn probe_body(app: &AppInner) -> (bool, Value) {
    let m = &app.shared.metrics;
    let active = m.active.load(Ordering::Relaxed);
    let queued = m.queue_depth.load(Ordering::Relaxed);
    let draining = app.draining.load(Ordering::Acquire);
    let word = if draining { "draining" } else { "ok" };
    (
        draining,
        json!({"status": word, "active": active, "queued": queued}),
    )
}

/// `/live` and `/health` once loaded: 200 while the process serves, draining included (the
/// loading placeholder answers `/live` 200 and `/health` 503).
async fn health(State(app): State<App>) -> Response {
    json_response(StatusCode::OK, &probe_body(&app).1)
}

/// Readiness: 200 while new requests are taken, 503 once draining.
async fn ready(State(app): State<App>) -> Response {
    let (draining, body) = probe_body(&app);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, &body)
}

async fn metrics(State(app): State<App>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.shared.metrics.render(),
    )
        .into_response()
}

async fn tokenize(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = body_bytes(&app, body).and_then(|b| {
        let o = api::parse_object(&b)?;
        // vLLM's `prompt` or llama-server's `content`
        let given = o
            .get("prompt")
            .map(|v| ("prompt", v))
            .or(o.get("content").map(|v| ("content", v)));
        let text = match (given, o.get("messages")) {
            (Some((_, Value::String(s))), _) => s.clone(),
            (Some((name, _)), _) => {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' must be a string"),
                ))
            }
            (None, Some(_)) => api::render_chat(&o, &app.template)?,
            (None, None) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "give 'prompt' or 'content' (a string) or 'messages'",
                ))
            }
        };
        // llama-server's `add_special`: Qwen's tokenizer adds no BOS or EOS either way
        for flag in ["with_pieces", "add_special"] {
            if o.get(flag).is_some_and(|v| !v.is_boolean() && !v.is_null()) {
                return Err(ApiError::invalid(
                    flag,
                    format!("'{flag}' must be a boolean"),
                ));
            }
        }
        let tokens = api::encode(&app.tokenizer, &text)?;
        let listed: Vec<Value> = if o.get("with_pieces").and_then(Value::as_bool) == Some(true) {
            // each token with its text, or its bytes where they are not UTF-8 on their own
            tokens
                .iter()
                .map(|&id| {
                    let bytes = app.tokenizer.token_bytes(id);
                    let piece = match std::str::from_utf8(bytes) {
                        Ok(t) => Value::from(t),
                        Err(_) => Value::from(bytes.to_vec()),
                    };
                    json!({"id": id, "piece": piece})
                })
                .collect()
        } else {
            tokens.iter().map(|&id| Value::from(id)).collect()
        };
        Ok(json!({"tokens": listed, "count": tokens.len(), "max_model_len": app.ctx}))
    });
    match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// `POST /apply-template` (as llama-server has it): the body of a chat completion request,
/// answered with the prompt the model would see, `{"prompt": TEXT}`.
async fn apply_template(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = body_bytes(&app, body).and_then(|b| {
        let o = api::parse_object(&b)?;
        let prompt = api::render_template(&o, &app.template)?;
        Ok(json!({ "prompt": prompt }))
    });
    match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

async fn detokenize(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = body_bytes(&app, body).and_then(|b| {
        let o = api::parse_object(&b)?;
        let ids = match o.get("tokens") {
            Some(Value::Array(a)) => api::token_ids(a, "tokens", app.vocab)?,
            _ => {
                return Err(ApiError::invalid(
                    "tokens",
                    "'tokens' must be an array of token ids",
                ))
            }
        };
        let text = app
            .tokenizer
            .decode(&ids)
            .map_err(|e| ApiError::invalid("tokens", format!("cannot decode: {e}")))?;
        // vLLM's field and llama-server's
        Ok(json!({"prompt": text, "content": text}))
    });
    match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn the_localhost_entry_allows_loopback_origins_only() {
        for o in [
            "http://localhost",
            "http://localhost:8080",
            "http://127.0.0.1",
            "http://127.0.0.1:3000",
            "http://[::1]",
            "http://[::1]:3000",
            "https://localhost:1",
        ] {
            assert!(origin_allowed("localhost", o), "{o}");
        }
        for o in [
            "http://web.mydomain.fr",
            "http://evil.com",
            "http://notlocalhost",
            "http://localhost.evil.com",
            "http://localhost:",
            "http://localhost:80x",
            "localhost",
            "http://[::2]",
            "http://127.0.0.1.evil.com",
        ] {
            assert!(!origin_allowed("localhost", o), "{o}");
        }
        assert!(origin_allowed("*", "http://evil.com"));
        assert!(origin_allowed("http://a.b", "http://a.b"));
        assert!(!origin_allowed("http://a.b", "http://a.b:1"));
    }
}
