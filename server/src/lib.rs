//! `qwenrt serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! [`run`] binds `host:port` (127.0.0.1 by default), prints `listening on http://HOST:PORT`
//! to stderr and serves until the shutdown future resolves; [`run_on`] does the same on a
//! listener the caller bound (port 0 in tests, to learn the address first).
//!
//! Endpoints:
//! - `POST /v1/chat/completions` and `POST /v1/completions`: streaming (SSE chunks ending
//!   with `data: [DONE]`, `stream_options.include_usage` for a last usage chunk) or not;
//!   `usage` with `prompt_tokens_details.cached_tokens` (prompt tokens reused from cache).
//!   Fields: `model` (any string), `messages` (system/developer/user/assistant/tool; content a
//!   string or text parts; assistant `tool_calls`, tool `tool_call_id`; rendered by the model's
//!   own chat template, with `chat_template_kwargs` as extra template variables) or `prompt`
//!   (a string, token ids, or an array of strings and token-id arrays: one choice per prompt),
//!   `max_tokens` / `max_completion_tokens` (0 on completions: nothing generated),
//!   `temperature` (0..=2), `top_p` (0..=1), `top_k`, `min_p`, `repetition_penalty` (the
//!   sampler's multiplicative penalty over the last 64 tokens, prompt included),
//!   `frequency_penalty` and `presence_penalty` (-2..=2, OpenAI's: `logit[t] -= count(t) *
//!   frequency_penalty + (count(t) > 0) * presence_penalty`, counting the completion's own
//!   tokens so far, up to its last 4096), `logit_bias` (token id to -100..=100, added first;
//!   -100 bans), `seed` (choice `j` samples with `seed + j`), `stop` (a string or up to 4; the
//!   text ends before the stop string), `logprobs` and `top_logprobs` (at most 20; on
//!   `/v1/completions` `logprobs` is the number of alternatives; log-probabilities are the
//!   model's, before bias, penalties and constraints), `echo` (completions: the prompt's text,
//!   and with `logprobs` its tokens' log-probabilities, first), `n` (up to `parallel`: the
//!   prompt prefilled once and forked), `response_format` (`text`, `json_object`,
//!   `json_schema`; enforced by constrained decoding), llama-server's `json_schema` or
//!   llama.cpp's GBNF `grammar` (translated by `engine::gbnf`), and on
//!   chat `tools`, `tool_choice` (`none`, `auto`, `required`, a named function) and
//!   `parallel_tool_calls`: calls are parsed out of the model's own syntax into
//!   `message.tool_calls` (streamed as `delta.tool_calls`) with `finish_reason: "tool_calls"`,
//!   and constrained to the offered functions (see `tools`). Fields that would change the
//!   answer and are not done here (`audio`, `functions`, `reasoning_effort`, `suffix`,
//!   ...) are refused with a 400 naming them; other unknown fields
//!   are ignored. Every response and chunk carries `system_fingerprint`.
//! - `POST /v1/embeddings` (and `/embeddings`): OpenAI's embeddings, last-token pooled and
//!   L2-normalized, each input a prefill-only run batched with the generations; on with
//!   [`ServerOptions::embeddings`] or a last-token embedder (see `embeddings`), else 501.
//! - `GET /v1/models`, `GET /live` (liveness: 200 while the process serves, loading and
//!   draining included), `GET /health` (as llama-server's: 503 while loading, then 200,
//!   draining included; `status` is `loading`, `ok` or `draining`, with the active and queued
//!   counts), `GET /ready`
//!   (readiness: 200 when new requests are taken, 503 while draining, and while loading when
//!   the caller started a [`Loading`] placeholder on the listener), `GET /metrics` (Prometheus
//!   text; the names a gateway and an autoscaler read are listed in `metrics`), `POST /tokenize` (`prompt` or
//!   llama-server's `content`, or `messages`; `with_pieces`), `POST /detokenize` (`tokens`;
//!   answers `prompt` and `content`), `POST /apply-template` (a chat request's body; answers
//!   `{"prompt": TEXT}`, what the model would see). `/chat/completions`, `/completions` and
//!   `/models` answer as their `/v1` routes, as llama-server's do.
//! - The API key is taken as `Authorization: Bearer KEY` or `X-Api-Key: KEY`; with
//!   `cors_origins`, browser preflights from those origins are answered and responses name
//!   the origin.
//!
//! Every error is `{"error":{"message","type","param","code"}}` with its status: 400 for a bad
//! body (naming the field), 401 without the API key (when one is set, on every route but
//! `/health` and `/ready`), 404, 405, 408 past `request_timeout`, 413 past `max_body_bytes`, 503 with
//! `Retry-After` past `max_queue`.
//!
//! The engine runs on its own OS thread (see the scheduler): up to `parallel` requests step
//! together, prompts are prefilled in chunks of `prefill_chunk` tokens between decode rows,
//! and a finished sequence keeps its cache so that a later prompt starting with the same
//! tokens (the next turn of a chat) prefills only the rest.
//!
//! Draining: when the shutdown future resolves, generation requests are refused at once (503
//! with `Retry-After`, code `shutting_down`) and `/ready` answers 503, while the listener stays
//! open so that a load balancer's next request gets an answer it can retry elsewhere rather
//! than a refused connection. Requests in flight finish; once none is left, or
//! `shutdown_grace` (`--drain-timeout`) has passed, those still running end with an error
//! (code `drain_timeout`; on a stream an error event, then `data: [DONE]`), the listener
//! closes and [`run_on`] returns `Ok` within a few more seconds.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod call_parser;
mod embeddings;
mod http;
mod loading;
mod metrics;
mod reasoning;
mod scheduler;
mod text;
mod tools;

pub use loading::Loading;
pub use reasoning::ReasoningFormat;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qwenrt::engine::arena::available_memory;
use qwenrt::engine::lookup::MAX_DRAFT;
use qwenrt::engine::prompt_cache::{PromptCache, DEFAULT_BLOCK_TOKENS};
use qwenrt_kernels::Dtype;

use qwenrt::engine::constraint::Grammars;
use qwenrt::engine::{Engine, EngineError, EngineOptions};
use qwenrt::model::config::Pooling;
use qwenrt::model::weights::Weights;
use qwenrt::text::chat::stop_ids;
use qwenrt::text::template::ChatTemplate;
use qwenrt::text::tokenizer::Tokenizer;

use scheduler::{Msg, Scheduler, Shared};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to bind ([`run`] only).
    pub host: String,
    /// Port to bind ([`run`] only); 0 picks a free one.
    pub port: u16,
    /// Requests generating at once (engine sequences).
    pub parallel: usize,
    /// Context length of each sequence (prompt plus output).
    pub ctx: usize,
    /// Threads of the engine's forward pass.
    pub threads: usize,
    /// If set, every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests that may wait for a sequence beyond the `parallel` running; past that, 503.
    pub max_queue: usize,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// A generation still unfinished this long after it arrived fails with 408.
    pub request_timeout: Option<Duration>,
    /// Prompt tokens prefilled per engine step (over all prefilling requests).
    pub prefill_chunk: usize,
    /// After the shutdown future resolves, how long in-flight requests may take to finish
    /// before they are failed (`--drain-timeout`).
    pub shutdown_grace: Duration,
    /// Passed to [`EngineOptions::prefill_bf16`].
    pub prefill_bf16: bool,
    /// Prompt-lookup drafting for greedy requests: the most drafted rows per engine step,
    /// shared by the running requests (0, the default, turns it off: with 8 clients asking
    /// short coding questions it measured no faster). Output is unchanged.
    pub lookup: usize,
    /// Passed to [`EngineOptions::kv_dtype`].
    pub kv_dtype: Dtype,
    /// Host memory for the prompt cache across requests, in MiB (`--cache-ram`): KV rows of
    /// prompt prefixes in blocks of [`DEFAULT_BLOCK_TOKENS`] tokens, allocated once at
    /// startup. `Some(0)` turns it off; `None`, the default, takes [`DEFAULT_CACHE_RAM_MIB`]
    /// or a quarter of the memory available after the engine's arena, whichever is less.
    pub cache_ram_mib: Option<usize>,
    /// The chat template that renders messages into prompts (the model's own, see
    /// [`ChatTemplate::for_model`]; the default is the built-in ChatML).
    pub chat_template: Arc<ChatTemplate>,
    /// Browser origins allowed to call the API (CORS; `*` for any); empty, the default, sends
    /// no CORS headers.
    pub cors_origins: Vec<String>,
    /// Further names of the model, listed by `/v1/models` (the id is the one `run` is given).
    pub aliases: Vec<String>,
    /// Labels `/v1/models` shows for the model.
    pub tags: Vec<String>,
    /// Where the thinking part of a thinking model's answer goes (`reasoning_content` by
    /// default, with a template that has a thinking switch).
    pub reasoning_format: ReasoningFormat,
    /// Serve `POST /v1/embeddings` (`--embeddings`). A model that says it is an embedder with
    /// last-token pooling ([`Pooling::Last`]) serves them without it; one that names another
    /// pooling is refused with it.
    pub embeddings: bool,
    /// The `system_fingerprint` of every chat and completion response and chunk: by default
    /// `qwenrt-VERSION`; `qwenrt serve` adds the model file's sha256 prefix (see
    /// [`system_fingerprint`]).
    pub system_fingerprint: String,
}

/// The prompt cache's size when `--cache-ram` is not given, at most (llama-server's default).
pub const DEFAULT_CACHE_RAM_MIB: usize = 8192;

/// The prompt cache of `opts` for `engine`: `None` when it is off or too small for one block.
/// Refused when `--cache-ram` asks for more than the memory available.
fn prompt_cache(opts_mib: Option<usize>, engine: &Engine) -> Result<Option<PromptCache>, String> {
    let row = engine.kv_row_bytes();
    let available = available_memory();
    let bytes = match opts_mib {
        Some(mib) => {
            let bytes = mib.checked_mul(1 << 20).ok_or_else(|| {
                format!("--cache-ram {mib} MiB does not fit in this machine's address space")
            })?;
            if let Some(a) = available.filter(|&a| bytes as u64 > a) {
                return Err(format!(
                    "--cache-ram {mib} MiB exceeds the memory available ({} MiB); lower it or pass --cache-ram 0",
                    a >> 20
                ));
            }
            bytes
        }
        None => {
            let cap = DEFAULT_CACHE_RAM_MIB << 20;
            available.map_or(cap, |a| cap.min((a / 4) as usize))
        }
    };
    let blocks = PromptCache::blocks_for(bytes, DEFAULT_BLOCK_TOKENS, row);
    if blocks == 0 {
        return Ok(None);
    }
    PromptCache::new(blocks, DEFAULT_BLOCK_TOKENS, row)
        .map(Some)
        .ok_or_else(|| format!("cannot allocate the prompt cache of --cache-ram ({bytes} bytes)"))
}

/// `qwenrt-VERSION-SHA12`: the qwenrt version and the first 12 hex digits of the model's
/// sha256 (the `qwenrt` binary's `hub::model_sha256`), so a client can tell when the weights or the
/// runtime behind an answer changed.
pub fn system_fingerprint(model_sha256: &str) -> String {
    let short: String = model_sha256.chars().take(12).collect();
    format!("qwenrt-{}-{short}", env!("CARGO_PKG_VERSION"))
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            ctx: 4096,
            threads: 1,
            api_key: None,
            max_queue: 64,
            max_body_bytes: 4 << 20,
            request_timeout: Some(Duration::from_secs(600)),
            prefill_chunk: 128,
            shutdown_grace: Duration::from_secs(30),
            prefill_bf16: true,
            lookup: 0,
            kv_dtype: Dtype::F32,
            cache_ram_mib: None,
            chat_template: Arc::new(ChatTemplate::chatml()),
            reasoning_format: ReasoningFormat::Auto,
            cors_origins: Vec::new(),
            aliases: Vec::new(),
            tags: Vec::new(),
            embeddings: false,
            system_fingerprint: format!("qwenrt-{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
pub enum ServerError {
    /// A bad option (names it).
    Option(String),
    /// The engine could not be made.
    Engine(EngineError),
    /// Binding or serving failed.
    Io(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Option(s) => f.write_str(s),
            ServerError::Engine(e) => write!(f, "cannot start the engine: {e}"),
            ServerError::Io(e) => write!(f, "server I/O error: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

/// Binds `opts.host:opts.port` and serves until `shutdown` resolves (see [`run_on`]).
pub fn run(
    weights: Arc<Weights>,
    tokenizer: Tokenizer,
    model_id: String,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = bind(&opts.host, opts.port)?;
    run_on(listener, weights, tokenizer, model_id, opts, shutdown)
}

/// Binds `host:port`; the error names the address.
pub fn bind(host: &str, port: u16) -> Result<TcpListener, ServerError> {
    TcpListener::bind((host, port)).map_err(|e| {
        ServerError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot bind {host}:{port}: {e}"),
        ))
    })
}

/// Binds each of the comma-separated `hosts` (`127.0.0.1,::1`, as llama-server's `--host`
/// takes them) on `port`; the error names the address that failed.
pub fn bind_all(hosts: &str, port: u16) -> Result<Vec<TcpListener>, ServerError> {
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(ServerError::Option(format!(
            "--host {hosts:?}: an empty address in the list"
        )));
    }
    hosts.iter().map(|h| bind(h, port)).collect()
}

/// Serves on `listener` until `shutdown` resolves, then drains (see the module's docs): new
/// requests get 503 at once, in-flight ones finish for up to `opts.shutdown_grace` (those
/// still running after it are failed), the listener closes, the engine thread stops and it
/// returns `Ok`. Prints `listening on http://ADDR` to stderr once the engine is ready.
pub fn run_on(
    listener: TcpListener,
    weights: Arc<Weights>,
    tokenizer: Tokenizer,
    model_id: String,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_on_all(vec![listener], weights, tokenizer, model_id, opts, shutdown)
}

/// [`run_on`] on several listeners at once (one server, every address).
pub fn run_on_all(
    listeners: Vec<TcpListener>,
    weights: Arc<Weights>,
    tokenizer: Tokenizer,
    model_id: String,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if listeners.is_empty() {
        return Err(ServerError::Option("no address to listen on".into()));
    }
    if opts.parallel == 0 {
        return Err(ServerError::Option("--parallel must be at least 1".into()));
    }
    if opts.max_body_bytes == 0 {
        return Err(ServerError::Option(
            "max_body_bytes must be at least 1".into(),
        ));
    }
    if opts.prefill_chunk == 0 {
        return Err(ServerError::Option(
            "--prefill-chunk must be at least 1".into(),
        ));
    }
    let embeddings = embeddings_on(opts.embeddings, weights.config.pooling)?;
    let chunk = opts.prefill_chunk.min(opts.ctx.max(1));
    let lookup = opts.lookup.min(MAX_DRAFT);
    let engine_opts = EngineOptions {
        ctx: opts.ctx,
        max_sequences: opts.parallel,
        max_batch_tokens: opts.parallel + chunk + lookup,
        threads: opts.threads,
        isa: None,
        prefill_bf16: opts.prefill_bf16,
        kv_dtype: opts.kv_dtype,
    };
    let config = &weights.config;
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    let stop_ids = stop_ids(&tokenizer, config);
    let grammars = Grammars::new(&tokenizer, vocab, &stop_ids)
        .map_err(|e| ServerError::Option(format!("cannot prepare constrained decoding: {e}")))?;
    let template = opts.chat_template.clone();
    let tokenizer = Arc::new(tokenizer);
    let shared = Arc::new(Shared {
        metrics: metrics::Metrics::default(),
        inflight: AtomicUsize::new(0),
    });

    // the engine is made on its own thread, which it then never leaves
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
    let engine_thread = {
        let (tokenizer, shared) = (tokenizer.clone(), shared.clone());
        let cache_ram = opts.cache_ram_mib;
        std::thread::Builder::new()
            .name("qwenrt-engine".into())
            .spawn(move || {
                let made = Engine::new(weights, &engine_opts).and_then(|engine| {
                    let cache = prompt_cache(cache_ram, &engine).map_err(EngineError::Option)?;
                    Ok((engine, cache))
                });
                match made {
                    Ok((engine, cache)) => {
                        eprintln!("{}", memory_summary(&engine, cache.as_ref()));
                        let _ = ready_tx.send(Ok(()));
                        Scheduler::new(engine, tokenizer, stop_ids, shared, chunk, lookup, cache)
                            .run(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = engine_thread.join();
            return Err(ServerError::Engine(e));
        }
        Err(_) => {
            let _ = engine_thread.join();
            return Err(ServerError::Option(
                "the engine thread died while starting".into(),
            ));
        }
    }

    let app = Arc::new(http::AppInner {
        tx: tx.clone(),
        tokenizer,
        reasoning: opts.reasoning_format == ReasoningFormat::Auto && template.thinking(),
        template,
        grammars: Arc::new(grammars),
        shared,
        model_id,
        ctx: opts.ctx,
        vocab,
        embedding_width: embeddings.then_some(hidden),
        fingerprint: opts.system_fingerprint.clone(),
        parallel: opts.parallel,
        api_key: opts.api_key.clone().filter(|k| !k.is_empty()),
        cors_origins: opts.cors_origins.clone(),
        aliases: opts.aliases.clone(),
        tags: opts.tags.clone(),
        limit: opts.parallel + opts.max_queue,
        request_timeout: opts.request_timeout,
        max_body_bytes: opts.max_body_bytes,
        draining: AtomicBool::new(false),
        started: http::now_secs(),
    });
    let served = serve(listeners, app, opts.shutdown_grace, &tx, shutdown);
    let _ = tx.send(Msg::Shutdown);
    let _ = engine_thread.join();
    served
}

/// After the drain, how long the last responses may take to reach their clients.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Whether `/v1/embeddings` is served: asked for (`flag`), or the model says it is a
/// last-token embedder. A model that names another pooling cannot be served with `flag`: qwenrt
/// pools the last token only.
fn embeddings_on(flag: bool, pooling: Option<Pooling>) -> Result<bool, ServerError> {
    match pooling {
        Some(Pooling::Last) => Ok(true),
        Some(p) if flag && p != Pooling::None => Err(ServerError::Option(format!(
            "--embeddings: the model's pooling type is `{}` (GGUF <arch>.pooling_type); qwenrt \
             pools the last token only (`last`, as Qwen3-Embedding)",
            p.name()
        ))),
        _ => Ok(flag),
    }
}

/// The tokio side of [`run_on`].
fn serve(
    listeners: Vec<TcpListener>,
    app: Arc<http::AppInner>,
    grace: Duration,
    engine: &std::sync::mpsc::Sender<Msg>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qwenrt-http")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // polled once before any address is announced: a signal future (tokio's) registers its
        // handler on its first poll, and a SIGTERM sent by whoever read the announcement must
        // find it there, not the default action
        let shutdown = shutdown;
        tokio::pin!(shutdown);
        if futures_util::FutureExt::now_or_never(&mut shutdown).is_some() {
            return Ok(());
        }
        // one server per address, all closed by one signal
        let (close_tx, close_rx) = tokio::sync::watch::channel(false);
        let mut servers = Vec::with_capacity(listeners.len());
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            eprintln!("listening on http://{addr}");
            let mut closed = close_rx.clone();
            servers.push(
                axum::serve(listener, http::router(app.clone()))
                    .with_graceful_shutdown(async move {
                        let _ = closed.wait_for(|&c| c).await;
                    })
                    .into_future(),
            );
        }
        let server = futures_util::future::try_join_all(servers);
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r.map(drop).map_err(ServerError::Io),
            () = &mut shutdown => {}
        }
        // draining: the listener stays open, new work is refused, running work goes on
        app.draining.store(true, Ordering::Release);
        let inflight = || app.shared.inflight.load(Ordering::Acquire);
        let drained = async {
            while inflight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            r = &mut server => return r.map(drop).map_err(ServerError::Io),
            _ = tokio::time::timeout(grace, drained) => {}
        }
        let left = inflight();
        if left > 0 {
            eprintln!(
                "drain timeout ({} s) passed with {left} request(s) running: ending them",
                grace.as_secs_f64()
            );
            let _ = engine.send(Msg::Abort);
        }
        // close the listener and the idle connections; let the open responses end
        let _ = close_tx.send(true);
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut server).await;
        Ok(())
    })
}

/// The memory plan serve prints at startup: the engine's arena (its KV cache of every
/// sequence and the step scratch) and the prompt cache.
pub fn memory_summary(engine: &Engine, cache: Option<&PromptCache>) -> String {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let plan = engine.memory_plan();
    let mut out = format!(
        "memory plan: arena {:.1} MiB ({} sequences x {} positions of KV cache, {})",
        mib(plan.total_bytes()),
        engine.max_sequences(),
        engine.ctx(),
        engine.kv_dtype()
    );
    match cache.map(PromptCache::stats) {
        Some(s) => out.push_str(&format!(
            "; prompt cache {:.1} MiB ({} blocks of {} tokens, --cache-ram)",
            mib(s.capacity_bytes),
            s.capacity_blocks,
            s.block_tokens
        )),
        None => out.push_str("; prompt cache off"),
    }
    out
}
