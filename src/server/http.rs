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

use crate::engine::constraint::Grammars;
use crate::server::api::{self, ApiError, Endpoint, GenRequest};
use crate::server::call_parser::{Call, CallEvent, CallParser};
use crate::server::embeddings;
use crate::server::reasoning::{Piece, ThinkSplitter};
use crate::server::scheduler::{Event, Finish, Job, Msg, Shared, TokenLogprob};
use crate::text::template::ChatTemplate;
use crate::text::tokenizer::Tokenizer;

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
    pub api_key: Option<String>,
    /// Browser origins allowed to call the API (`--cors-origin`; `*` for any); empty: no CORS.
    pub cors_origins: Vec<String>,
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
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| app.cors_origins.iter().any(|a| a == "*" || a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
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

/// Checks the API key (every route but the probes, `/health` and `/ready`) and counts
/// responses by status.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/health" | "/ready");
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
    let req = {
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
    let parser = req
        .guide
        .tools
        .as_ref()
        .map(|(t, syntax)| CallParser::new(*syntax, Some(t), rand_id()));
    let think = req.thinking.map(ThinkSplitter::new);
    let (stream_it, include_usage) = (req.stream, req.include_usage);
    let events = match submit(&app, req) {
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
    let meta = Meta {
        id,
        created: unix_now(),
        model: app.model_id.clone(),
        endpoint,
        include_usage,
    };
    if stream_it {
        stream(meta, events, think, parser).into_response()
    } else {
        collect(meta, events, think, parser).await
    }
}

/// Admits a job (503 with Retry-After past the queue) and hands it to the engine thread.
#[allow(clippy::result_large_err)]
fn submit(app: &AppInner, req: GenRequest) -> Result<UnboundedReceiver<Event>, Response> {
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
    if app.shared.inflight.fetch_add(1, Ordering::AcqRel) >= app.limit {
        app.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        app.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(busy(
            "the server is busy: the request queue is full, retry later",
            "overloaded",
        ));
    }
    let (tx, rx) = unbounded_channel();
    let arrived = Instant::now();
    let job = Job {
        req,
        events: tx,
        arrived,
        deadline: app.request_timeout.map(|t| arrived + t),
    };
    if app.tx.send(Msg::Job(Box::new(job))).is_err() {
        app.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        return Err(busy("the engine has stopped", "overloaded"));
    }
    Ok(rx)
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
    endpoint: Endpoint,
    include_usage: bool,
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
    })
}

fn alt_json(a: &crate::server::scheduler::Alt) -> Value {
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

/// Completion logprobs (the legacy parallel arrays) of `lps`, offsets from `offset`.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for l in lps {
        tokens.push(Value::from(l.chosen.token.clone()));
        token_logprobs.push(Value::from(l.chosen.logprob));
        let m: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|a| (a.token.clone(), Value::from(a.logprob)))
            .collect();
        top.push(Value::Object(m));
        offsets.push(Value::from(offset));
        offset += l.chosen.token.len();
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

async fn collect(
    meta: Meta,
    mut events: UnboundedReceiver<Event>,
    think: Option<ThinkSplitter>,
    mut parser: Option<CallParser>,
) -> Response {
    let mut text = String::new();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let mut want_lps = false;
    let finish = loop {
        match events.recv().await {
            Some(Event::Token { text: t, logprob }) => {
                text.push_str(&t);
                if let Some(l) = logprob {
                    want_lps = true;
                    lps.push(l);
                }
            }
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(f)) => break f,
            Some(Event::Error(e)) => return e.into_response(),
            None => {
                return ApiError::new(500, "server_error", "the engine stopped").into_response()
            }
        }
    };
    // the same splitters as a stream uses, so both give the same parts
    let mut reasoning = None;
    if let Some(mut t) = think {
        let mut pieces = Vec::new();
        t.push(&text, &mut pieces);
        t.finish(&mut pieces);
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(x) => r.push_str(&x),
                Piece::Content(x) => c.push_str(&x),
            }
        }
        reasoning = Some(r);
        text = c;
    }
    let mut message = json!({"role": "assistant", "content": text});
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        message["reasoning_content"] = Value::from(r);
    }
    let mut reason = finish.reason;
    if let Some(p) = parser.as_mut() {
        // the same parser as a stream uses, so both give the same calls
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
    let body = match meta.endpoint {
        Endpoint::Chat => json!({
            "id": meta.id, "object": "chat.completion", "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": if want_lps { chat_logprobs(&lps) } else { Value::Null },
                "finish_reason": reason,
            }],
            "usage": usage(&finish),
        }),
        Endpoint::Completion => json!({
            "id": meta.id, "object": "text_completion", "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0, "text": text,
                "logprobs": if want_lps { completion_logprobs(&lps, 0) } else { Value::Null },
                "finish_reason": finish.reason,
            }],
            "usage": usage(&finish),
        }),
    };
    json_response(StatusCode::OK, &body)
}

/// The state of one SSE stream.
struct Streamer {
    meta: Meta,
    events: UnboundedReceiver<Event>,
    out: VecDeque<String>,
    ended: bool,
    offset: usize,
    /// Splits a chat answer into content and tool-call deltas (requests with tools).
    parser: Option<CallParser>,
    /// Scratch for the parser's events.
    parsed: Vec<CallEvent>,
    /// Splits a thinking model's answer into reasoning and content.
    think: Option<ThinkSplitter>,
    /// Scratch for the splitter's pieces.
    pieces: Vec<Piece>,
}

impl Streamer {
    /// A chunk with `delta` (chat) or `text` (completions).
    fn chunk(&self, delta: Value, lp: Option<&TokenLogprob>, finish: Option<&str>) -> String {
        let mut v = match self.meta.endpoint {
            Endpoint::Chat => json!({
                "id": self.meta.id, "object": "chat.completion.chunk",
                "created": self.meta.created, "model": self.meta.model,
                "choices": [{"index": 0, "delta": delta,
                    "logprobs": lp.map_or(Value::Null, |l| chat_logprobs(std::slice::from_ref(l))),
                    "finish_reason": finish}],
            }),
            Endpoint::Completion => json!({
                "id": self.meta.id, "object": "text_completion",
                "created": self.meta.created, "model": self.meta.model,
                "choices": [{"index": 0, "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                    "logprobs": lp.map_or(Value::Null, |l| completion_logprobs(std::slice::from_ref(l), self.offset)),
                    "finish_reason": finish}],
            }),
        };
        if self.meta.include_usage {
            v["usage"] = Value::Null;
        }
        v.to_string()
    }

    /// Chunks for a piece of the answer's text: its thinking part (a thinking model's) as
    /// `reasoning_content` deltas, the rest through [`Streamer::content`].
    fn text(&mut self, text: &str, lp: Option<&TokenLogprob>, end: bool) {
        let Some(think) = self.think.as_mut() else {
            return self.content(text, lp, end);
        };
        let mut pieces = std::mem::take(&mut self.pieces);
        think.push(text, &mut pieces);
        if end {
            think.finish(&mut pieces);
        }
        let mut lp = lp;
        let mut content = String::new();
        for p in pieces.drain(..) {
            match p {
                Piece::Reasoning(r) => {
                    let c = self.chunk(json!({"reasoning_content": r}), lp.take(), None);
                    self.out.push_back(c);
                }
                Piece::Content(c) => content.push_str(&c),
            }
        }
        self.pieces = pieces;
        if !content.is_empty() || end || lp.is_some() {
            self.content(&content, lp, end);
        }
    }

    /// Chunks for a piece of the answer's content: as it is, or through the tool-call parser
    /// (content deltas, then per call its id and name and its argument fragments).
    fn content(&mut self, text: &str, lp: Option<&TokenLogprob>, end: bool) {
        let Some(parser) = self.parser.as_mut() else {
            if !text.is_empty() || lp.is_some() {
                let c = self.chunk(json!({"content": text}), lp, None);
                self.out.push_back(c);
            }
            return;
        };
        let mut parsed = std::mem::take(&mut self.parsed);
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
            let c = self.chunk(delta, lp.take(), None);
            self.out.push_back(c);
        }
        if let Some(l) = lp {
            let c = self.chunk(json!({}), Some(l), None);
            self.out.push_back(c);
        }
        self.parsed = parsed;
    }

    /// Turns the next engine event into SSE data lines.
    fn on(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Token { text, logprob }) => {
                self.text(&text, logprob.as_ref(), false);
                if let Some(l) = &logprob {
                    self.offset += l.chosen.token.len();
                }
            }
            Some(Event::Text(text)) => self.text(&text, None, false),
            Some(Event::Done(f)) => {
                self.text("", None, true);
                let calls = self.parser.as_ref().map_or(0, |p| p.calls().len());
                let c = self.chunk(json!({}), None, Some(finish_reason(f.reason, calls)));
                self.out.push_back(c);
                if self.meta.include_usage {
                    let object = match self.meta.endpoint {
                        Endpoint::Chat => "chat.completion.chunk",
                        Endpoint::Completion => "text_completion",
                    };
                    let u = json!({"id": self.meta.id, "object": object,
                        "created": self.meta.created, "model": self.meta.model,
                        "choices": [], "usage": usage(&f)});
                    self.out.push_back(u.to_string());
                }
                self.end();
            }
            Some(Event::Error(e)) => {
                self.out.push_back(e.body().to_string());
                self.end();
            }
            None => {
                let e = ApiError::new(500, "server_error", "the engine stopped");
                self.out.push_back(e.body().to_string());
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.out.push_back("[DONE]".into());
        self.ended = true;
    }
}

fn stream(
    meta: Meta,
    events: UnboundedReceiver<Event>,
    think: Option<ThinkSplitter>,
    parser: Option<CallParser>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut s = Streamer {
        meta,
        events,
        out: VecDeque::new(),
        ended: false,
        offset: 0,
        parser,
        parsed: Vec::new(),
        think,
        pieces: Vec::new(),
    };
    if s.meta.endpoint == Endpoint::Chat {
        let first = s.chunk(json!({"role": "assistant", "content": ""}), None, None);
        s.out.push_back(first);
    }
    let body = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(data) = s.out.pop_front() {
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

/// Liveness: 200 while the process serves, draining included.
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
        let prompt = api::render_chat(&o, &app.template)?;
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
