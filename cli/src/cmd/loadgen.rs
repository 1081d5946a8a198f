//! `qwenrt loadgen`: closed-loop streaming load against an OpenAI-compatible server
//! ([`qwenrt_cli::loadgen`]).

use std::time::Duration;

use clap::Args;
use qwenrt_cli::loadgen::{self, LoadgenOptions};

use super::CliError;

/// `qwenrt loadgen`.
#[derive(Args, Debug)]
#[command(
    after_help = "Each client sends its requests one after the other (POST \
URL/v1/chat/completions, stream: true, temperature 0, stream_options.include_usage), each \
with its own short coding question. Reported: aggregate streamed tokens/s (all tokens over \
the wall time of the run), the median client's tokens/s, time to first token (TTFT, to the \
first chunk carrying content) and inter-token latency (ITL, between content chunks) p50 and \
p99, requests ok and failed, and the content chunks received in each second of the run (the \
rate over time: chunks_per_second in --json). Tokens are the usage chunk's completion_tokens, or the content \
chunks when the server sends no usage. A request fails on a status other than 200, a \
connection error, a chunk that is not JSON, an error event, or a stream without \
data: [DONE]; the exit status is then 1."
)]
pub struct LoadgenArgs {
    /// The server's base URL (plain HTTP; a trailing /v1 is fine)
    #[arg(long, value_name = "URL", default_value_t = LoadgenOptions::default().url)]
    url: String,
    /// Concurrent clients, each with one request in flight
    #[arg(
        short = 'c',
        long,
        value_name = "C",
        default_value_t = LoadgenOptions::default().clients,
        allow_negative_numbers = true
    )]
    clients: usize,
    /// Requests each client sends, one after the other
    #[arg(
        short = 'r',
        long,
        value_name = "R",
        default_value_t = LoadgenOptions::default().requests,
        allow_negative_numbers = true
    )]
    requests: usize,
    /// max_tokens of every request
    #[arg(
        short = 'n',
        long,
        value_name = "N",
        default_value_t = LoadgenOptions::default().max_tokens,
        allow_negative_numbers = true
    )]
    max_tokens: usize,
    /// Send `Authorization: Bearer KEY` (also from QWENRT_API_KEY)
    #[arg(
        long,
        value_name = "KEY",
        env = "QWENRT_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// The requests' `model` field
    #[arg(long, value_name = "NAME", default_value_t = LoadgenOptions::default().model)]
    model_name: String,
    /// Seconds a request may take (and a stream may stay silent) before it fails
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = LoadgenOptions::default().timeout.as_secs(),
        allow_negative_numbers = true
    )]
    timeout: u64,
    /// Start every request with the same system message of about N tokens (a shared prefix,
    /// to measure a prompt cache); 0 sends none
    #[arg(
        long,
        value_name = "N",
        default_value_t = LoadgenOptions::default().system_tokens,
        allow_negative_numbers = true
    )]
    system_tokens: usize,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

/// Runs `qwenrt loadgen`.
pub fn run(a: LoadgenArgs) -> Result<(), CliError> {
    let opts = LoadgenOptions {
        url: a.url,
        clients: a.clients,
        requests: a.requests,
        max_tokens: a.max_tokens,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        model: a.model_name,
        timeout: Duration::from_secs(a.timeout),
        system_tokens: a.system_tokens,
    };
    // a bad option is a usage error before anything is sent
    opts.validate()
        .map_err(|e| CliError::usage(e.to_string()))?;
    let report = loadgen::run(&opts).map_err(|e| CliError::usage(e.to_string()))?;
    if a.json {
        let line = serde_json::to_string(&report).map_err(CliError::fail)?;
        println!("{line}");
    } else {
        print!("{}", report.table());
    }
    if report.requests_failed > 0 {
        return Err(CliError::fail(format!(
            "{} of {} requests failed",
            report.requests_failed,
            report.requests_failed + report.requests_ok
        )));
    }
    Ok(())
}
