//! `qwenrt serve`: the OpenAI-compatible HTTP server ([`qwenrt_server`]) on one model.

use clap::{Args, ValueEnum};
use qwenrt_server::{self as server, ReasoningFormat, ServerOptions};

use super::{
    load_tokenizer, load_weights, threads_or_cores, ChatTemplateArg, CliError, KvDtypeArg, ModelArg,
};

/// `qwenrt serve`.
#[derive(Args, Debug)]
#[command(
    after_help = "Endpoints: POST /v1/chat/completions, POST /v1/completions (stream or not), \
GET /v1/models, GET /health (liveness), GET /ready (readiness), GET /metrics, POST /tokenize, \
POST /detokenize, POST /apply-template (and the /v1 routes without the prefix). The port is \
bound before the model loads: meanwhile /health answers 200 and /ready 503. SIGINT or SIGTERM \
drains: new requests get 503 at once (and /ready 503), running ones finish for up to \
--drain-timeout seconds (those still running are then ended with an error), and it exits 0."
)]
pub struct ServeArgs {
    /// Address to bind; several, comma-separated, are all served (`127.0.0.1,::1`, as llama-server takes them)
    #[arg(long, value_name = "HOST", default_value_t = ServerOptions::default().host)]
    host: String,
    /// Port to bind
    #[arg(long, value_name = "PORT", default_value_t = ServerOptions::default().port)]
    port: u16,
    /// Requests generating together (engine sequences)
    #[arg(
        long,
        value_name = "N",
        default_value_t = ServerOptions::default().parallel,
        allow_negative_numbers = true
    )]
    parallel: usize,
    /// Context length of each sequence, in tokens
    #[arg(
        long,
        value_name = "N",
        default_value_t = ServerOptions::default().ctx,
        allow_negative_numbers = true
    )]
    ctx: usize,
    /// Worker threads [default: the number of physical cores]
    #[arg(short = 't', long, value_name = "N", allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Require `Authorization: Bearer KEY` (also from QWENRT_API_KEY)
    #[arg(
        long,
        value_name = "KEY",
        env = "QWENRT_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Requests that may wait beyond --parallel; past that, 503 with Retry-After
    #[arg(
        long,
        value_name = "N",
        default_value_t = ServerOptions::default().max_queue,
        allow_negative_numbers = true
    )]
    max_queue: usize,
    /// Prompt tokens prefilled per engine step, over all prefilling requests (a running
    /// stream waits at most one such chunk between two tokens)
    #[arg(
        long,
        value_name = "N",
        default_value_t = ServerOptions::default().prefill_chunk,
        allow_negative_numbers = true
    )]
    prefill_chunk: usize,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    kv: KvDtypeArg,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    chat_template: ChatTemplateArg,
    /// Where a thinking model's <think>...</think> goes: `auto` puts it in
    /// message.reasoning_content (delta.reasoning_content when streaming) when the chat
    /// template has a thinking switch; `none` leaves it in content
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = Reasoning::Auto)]
    reasoning_format: Reasoning,
    /// Allow browser pages from ORIGIN (e.g. http://localhost:3000; `localhost` for any
    /// loopback origin; `*` for any) to call the API: preflights answered, responses carry
    /// Access-Control-Allow-Origin (repeatable)
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Prompt-lookup drafting for greedy requests without penalties: up to N drafted rows per
    /// engine step, shared by the running requests (output unchanged); 0, the default, turns
    /// it off: on chat answers under load the rejected rows measured slower
    #[arg(
        long,
        value_name = "N",
        default_value_t = ServerOptions::default().lookup,
        allow_negative_numbers = true
    )]
    lookup: usize,
    /// After SIGTERM or SIGINT, how long running requests may take to finish before they are
    /// ended (new requests get 503 from the signal on)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = ServerOptions::default().shutdown_grace.as_secs(),
        allow_negative_numbers = true
    )]
    drain_timeout: u64,
    /// Host memory for the prompt cache across requests, in MiB: KV rows of finished and
    /// running requests' prompt prefixes (blocks of 16 tokens, least recently used out
    /// first), allocated once at startup; a request copies in the longest cached prefix of
    /// its prompt instead of computing it (output unchanged). 0 turns it off [default: 8192,
    /// capped at a quarter of the memory available]
    #[arg(long, value_name = "MiB", allow_negative_numbers = true)]
    cache_ram: Option<usize>,
    /// Serve POST /v1/embeddings (last-token pooling, L2-normalized, as Qwen3-Embedding);
    /// on without it when the model says it is a last-token embedder (a GGUF's
    /// <arch>.pooling_type, a sentence-transformers directory's pooling module)
    #[arg(long)]
    embeddings: bool,
    /// Names the model answers to (comma-separated, as llama-server's --alias): /v1/models
    /// lists them, and its id is the first in sorted order [default: the model's file or
    /// directory name]
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    alias: Vec<String>,
    /// Labels /v1/models shows for the model (comma-separated, as llama-server's --tags)
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    tags: Vec<String>,
}

/// Runs `qwenrt serve` until SIGINT or SIGTERM.
pub fn run(a: ServeArgs) -> Result<(), CliError> {
    let dir = a.model.dir()?;
    // bound first, so that probes get "alive, not ready" while the model loads
    let listeners = server::bind_all(&a.host, a.port).map_err(CliError::fail)?;
    let mut loading = Vec::with_capacity(listeners.len());
    for listener in &listeners {
        loading.push(server::Loading::start(listener).map_err(CliError::fail)?);
        if let Ok(addr) = listener.local_addr() {
            eprintln!("loading the model; http://{addr}/ready answers 503 until it is ready");
        }
    }
    let weights = load_weights(&dir)?;
    if a.ctx > weights.config.max_position_embeddings {
        return Err(CliError::usage(format!(
            "--ctx {} exceeds the model's max_position_embeddings ({})",
            a.ctx, weights.config.max_position_embeddings
        )));
    }
    let tok = load_tokenizer(&dir)?;
    let chat_template = std::sync::Arc::new(a.chat_template.load(&dir)?);
    let mut aliases: Vec<String> = a
        .alias
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .collect();
    aliases.sort();
    aliases.dedup();
    let model_id = aliases.first().cloned().unwrap_or_else(|| {
        dir.file_name().map_or_else(
            || "qwenrt".to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    // computed once: every response names the runtime and the weights behind it
    let sha = qwenrt_cli::hub::model_sha256(&dir).map_err(CliError::fail)?;
    let opts = ServerOptions {
        system_fingerprint: server::system_fingerprint(&sha),
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        ctx: a.ctx,
        threads: threads_or_cores(a.threads),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_queue: a.max_queue,
        prefill_chunk: a.prefill_chunk,
        prefill_bf16: !a.prefill_f32,
        lookup: a.lookup,
        kv_dtype: a.kv.dtype(),
        cache_ram_mib: a.cache_ram,
        cors_origins: a.cors_origins,
        reasoning_format: match a.reasoning_format {
            Reasoning::Auto => ReasoningFormat::Auto,
            Reasoning::None => ReasoningFormat::None,
        },
        chat_template,
        shutdown_grace: std::time::Duration::from_secs(a.drain_timeout),
        embeddings: a.embeddings,
        aliases,
        tags: a.tags,
        ..ServerOptions::default()
    };
    loading.into_iter().for_each(server::Loading::stop);
    server::run_on_all(listeners, weights, tok, model_id, opts, shutdown_signal())
        .map_err(CliError::fail)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down: finishing running requests");
}

/// The values of `--reasoning-format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Reasoning {
    Auto,
    None,
}
