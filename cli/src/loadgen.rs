//! A closed-loop streaming load generator for OpenAI-compatible servers (`qwenrt loadgen`).
//!
//! - [`LoadgenOptions`]: the target URL, the clients, the requests each sends in sequence, the
//!   tokens each asks for. [`LoadgenOptions::validate`] names the option at fault.
//! - [`run`]: `clients` threads, released together; each sends its `requests` chat requests
//!   one after the other (`POST {url}/v1/chat/completions`, `stream: true`, temperature 0,
//!   `stream_options.include_usage`), each with its own prompt from [`prompt`].
//! - [`parse_stream`]: one response's server-sent events measured into a [`RequestResult`]:
//!   time to first token (the first chunk carrying content), the gaps between content chunks,
//!   the tokens (the usage chunk's `completion_tokens` when the server sends one, else the
//!   content chunks, one per token as llama-server sends them), or why it failed (a status
//!   other than 200, a connection error, a chunk that is not JSON, an `error` event, no
//!   `data: [DONE]`).
//! - [`Report`]: aggregate streamed tokens/s (all tokens over the wall time of the whole run),
//!   the median over clients of each client's tokens/s, TTFT and inter-token latency p50 and
//!   p99, requests ok and failed, and the content chunks received in each second of the run
//!   (the rate over time, to see a dip and a recovery); [`Report::table`] for people, serde for
//!   `--json`.
//!
//! The HTTP client is ureq (blocking, one thread per client, plain HTTP: no TLS stack).

use std::fmt;
use std::io::{BufRead, BufReader};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadgenOptions {
    /// The server's base URL, `http://HOST:PORT` (a trailing `/` or `/v1` is dropped).
    pub url: String,
    /// Concurrent clients (threads), each with one request in flight at a time.
    pub clients: usize,
    /// Requests each client sends, one after the other.
    pub requests: usize,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// The request's `model` field (qwenrt and llama-server serve any value).
    pub model: String,
    /// A request still unanswered this long after it was sent (or silent this long between
    /// two reads) fails.
    pub timeout: Duration,
    /// When not 0, every request starts with the same system message of about this many
    /// tokens ([`system_prompt`]), before its own question: a shared prefix, as many
    /// clients of one application send (to measure a prompt cache).
    pub system_tokens: usize,
}

impl Default for LoadgenOptions {
    fn default() -> Self {
        LoadgenOptions {
            url: "http://127.0.0.1:8080".into(),
            clients: 8,
            requests: 3,
            max_tokens: 128,
            api_key: None,
            model: "default".into(),
            timeout: Duration::from_secs(600),
            system_tokens: 0,
        }
    }
}

/// A bad option (the message names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadgenError(pub String);

impl fmt::Display for LoadgenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadgenError {}

impl LoadgenOptions {
    /// Checks the options; returns the chat completions endpoint.
    pub fn validate(&self) -> Result<String, LoadgenError> {
        let bad = |m: String| Err(LoadgenError(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.requests == 0 {
            return bad("--requests must be at least 1".into());
        }
        if self.max_tokens == 0 {
            return bad("--max-tokens must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be at least 1 second".into());
        }
        let url = self.url.trim();
        if url.starts_with("https://") {
            return bad(format!(
                "--url {url}: https is not supported (this client speaks plain HTTP only)"
            ));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return bad(format!(
                "--url {url:?} must start with http:// (for example http://127.0.0.1:8080)"
            ));
        };
        let base = rest.trim_end_matches('/');
        let base = base
            .strip_suffix("/v1")
            .unwrap_or(base)
            .trim_end_matches('/');
        let authority = base.split('/').next().unwrap_or("");
        // HOST, HOST:PORT, [IPV6] or [IPV6]:PORT
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                None => (v6, None),
            },
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if let Some(p) = port {
            if p.parse::<u16>().is_err() {
                return bad(format!("--url {url}: port {p:?} is not a number 0-65535"));
            }
        }
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '@' | '[' | ']'))
        {
            return bad(format!("--url {url}: no valid host in it"));
        }
        Ok(format!("http://{base}/v1/chat/completions"))
    }
}

const TASKS: [&str; 20] = [
    "reverses a string",
    "checks whether a number is prime",
    "returns the n-th Fibonacci number",
    "counts the vowels in a string",
    "merges two sorted lists",
    "removes duplicates from a list",
    "finds the largest element of an array",
    "converts Celsius to Fahrenheit",
    "checks whether a string is a palindrome",
    "computes the factorial of n",
    "sums the digits of an integer",
    "flattens a nested list",
    "returns the greatest common divisor of two numbers",
    "parses a comma-separated line into fields",
    "counts the words in a sentence",
    "rotates an array by k positions",
    "checks whether two strings are anagrams",
    "computes the mean of a list of numbers",
    "converts a binary string to an integer",
    "capitalizes the first letter of every word",
];

const LANGUAGES: [&str; 8] = [
    "Python",
    "Rust",
    "Go",
    "JavaScript",
    "C",
    "Java",
    "Ruby",
    "TypeScript",
];

/// The user message of request `request` of client `client` (of `requests` each): a small
/// coding question, distinct for the first 160 requests of a run, the varying words first so
/// that two prompts share little more than the chat template's prefix.
pub fn prompt(client: usize, request: usize, requests: usize) -> String {
    let i = client * requests + request;
    let task = TASKS[i % TASKS.len()];
    let lang = LANGUAGES[(i + i / TASKS.len()) % LANGUAGES.len()];
    format!("{lang}: write a short function that {task}. Reply with the code only.")
}

/// Words of the shared system message: common English words, one token each for Qwen's (and
/// most BPE) tokenizers when a space comes before them.
const SYSTEM_WORDS: [&str; 16] = [
    "the", "code", "you", "write", "must", "be", "clear", "and", "short", "with", "good", "names",
    "for", "every", "small", "part",
];

/// The shared system message of about `tokens` tokens: an opening sentence, then common words
/// in a fixed order (the same text in every run and from every client).
pub fn system_prompt(tokens: usize) -> String {
    let mut s = String::from("You are a careful programming assistant. Style notes:");
    // the opening is about 10 tokens
    for i in 0..tokens.saturating_sub(10) {
        s.push(' ');
        s.push_str(SYSTEM_WORDS[(i * 7 + i / 16) % SYSTEM_WORDS.len()]);
    }
    s
}

/// The request body of [`prompt`]`(client, request, requests)`, after the shared system
/// message when [`LoadgenOptions::system_tokens`] is set.
pub fn request_body(opts: &LoadgenOptions, client: usize, request: usize) -> Value {
    let user = json!({"role": "user", "content": prompt(client, request, opts.requests)});
    let messages = match opts.system_tokens {
        0 => vec![user],
        n => vec![json!({"role": "system", "content": system_prompt(n)}), user],
    };
    json!({
        "model": opts.model,
        "messages": messages,
        "max_tokens": opts.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// One request, measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestResult {
    /// The client that sent it.
    pub client: usize,
    /// From sending the request to the first chunk carrying content (`None` if none came).
    pub ttft: Option<Duration>,
    /// The gaps between consecutive content chunks.
    pub itl: Vec<Duration>,
    /// Tokens generated: the usage chunk's `completion_tokens`, else the content chunks.
    pub tokens: usize,
    /// From sending the request to the end of its stream.
    pub elapsed: Duration,
    /// When it was sent, from the clients' release.
    pub sent: Duration,
    /// Why it failed; `None` if it succeeded.
    pub error: Option<String>,
}

impl RequestResult {
    /// When each content chunk arrived, from the clients' release.
    pub fn chunk_times(&self) -> impl Iterator<Item = Duration> + '_ {
        let first = self.ttft.map(|t| self.sent + t);
        first
            .into_iter()
            .chain(self.itl.iter().scan(first, |at, gap| {
                *at = at.map(|a| a + *gap);
                *at
            }))
    }
}

/// Reads one streamed chat completion (the response body, after a 200) from `body`, timing
/// chunks against `start` (when the request was sent). Ends at `data: [DONE]`.
pub fn parse_stream(body: impl BufRead, start: Instant) -> RequestResult {
    let mut r = RequestResult::default();
    let mut content_chunks = 0usize;
    let mut usage_tokens: Option<usize> = None;
    let mut last: Option<Instant> = None;
    let mut done = false;
    for line in body.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                r.error = Some(format!("reading the stream failed: {e}"));
                break;
            }
        };
        // blank lines end events; `:` comments, `event:`, `id:` and `retry:` carry no data
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.strip_prefix(' ').unwrap_or(data).trim_end();
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(Value::Object(o)) => Value::Object(o),
            _ => {
                r.error = Some(format!("a chunk is not a JSON object: {}", clip(data)));
                break;
            }
        };
        if let Some(e) = chunk.get("error") {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            r.error = Some(format!(
                "error event: {}",
                clip(if msg.is_empty() { data } else { msg })
            ));
            break;
        }
        if let Some(n) = chunk
            .get("usage")
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
        {
            usage_tokens = Some(n as usize);
        }
        let has_content = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                choices.iter().any(|c| {
                    let text = c
                        .get("delta")
                        .and_then(|d| d.get("content"))
                        .or_else(|| c.get("text"));
                    text.and_then(Value::as_str).is_some_and(|t| !t.is_empty())
                })
            });
        if has_content {
            let now = Instant::now();
            match last {
                None => r.ttft = Some(now - start),
                Some(t) => r.itl.push(now - t),
            }
            last = Some(now);
            content_chunks += 1;
        }
    }
    if r.error.is_none() && !done {
        r.error = Some("the stream ended without data: [DONE]".into());
    }
    r.tokens = usage_tokens.unwrap_or(content_chunks);
    r.elapsed = start.elapsed();
    r
}

/// At most 200 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Sends one streamed request and measures it.
fn send(agent: &ureq::Agent, url: &str, key: Option<&str>, body: &Value) -> RequestResult {
    let mut req = agent.post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let start = Instant::now();
    let failed = |error: String| RequestResult {
        elapsed: start.elapsed(),
        error: Some(error),
        ..RequestResult::default()
    };
    match req.send_string(&body.to_string()) {
        Ok(resp) if resp.status() == 200 => parse_stream(BufReader::new(resp.into_reader()), start),
        Ok(resp) => failed(format!("HTTP {}", resp.status())),
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            failed(format!("HTTP {code}: {}", clip(msg.trim())))
        }
        Err(e) => failed(format!("connection error: {e}")),
    }
}

/// Runs the load: `clients` threads released together, each sending its `requests` one after
/// the other. Returns every request's result (in client, then request order) and the wall
/// time from the release to the last response's end.
pub fn run_requests(opts: &LoadgenOptions) -> Result<(Vec<RequestResult>, Duration), LoadgenError> {
    let url = opts.validate()?;
    let barrier = Barrier::new(opts.clients + 1);
    // the release: the first thread past the barrier sets it, every one reads it
    let origin = OnceLock::new();
    let (results, wall) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..opts.clients)
            .map(|client| {
                let (url, barrier, origin) = (&url, &barrier, &origin);
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout_connect(Duration::from_secs(10).min(opts.timeout))
                        .timeout_read(opts.timeout)
                        .timeout(opts.timeout)
                        .build();
                    barrier.wait();
                    let release = *origin.get_or_init(Instant::now);
                    (0..opts.requests)
                        .map(|request| {
                            let body = request_body(opts, client, request);
                            let sent = release.elapsed();
                            RequestResult {
                                client,
                                sent,
                                ..send(&agent, url, opts.api_key.as_deref(), &body)
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        barrier.wait();
        let start = *origin.get_or_init(Instant::now);
        let results: Vec<RequestResult> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        (results, start.elapsed())
    });
    Ok((results, wall))
}

/// [`run_requests`], summarized.
pub fn run(opts: &LoadgenOptions) -> Result<Report, LoadgenError> {
    let (results, wall) = run_requests(opts)?;
    Ok(Report::new(opts, &results, wall))
}

/// The `q` quantile (0..=1) of `sorted` by nearest rank (the smallest value with at least a
/// fraction `q` of the values at or below it); `None` if empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The summary of a run. Latencies in milliseconds; a percentile is `null` in JSON when
/// there is nothing to take it of (no content chunk, or no second one).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The server's base URL, as given.
    pub url: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests per client.
    pub requests_per_client: usize,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
    /// Requests that streamed to `data: [DONE]`.
    pub requests_ok: usize,
    /// Requests that failed.
    pub requests_failed: usize,
    /// Tokens of the successful requests.
    pub tokens: usize,
    /// Seconds from the clients' release to the last response's end.
    pub wall_s: f64,
    /// `tokens / wall_s`.
    pub tokens_per_s: f64,
    /// The median over clients of each client's tokens over its time spent in requests.
    pub client_tokens_per_s_median: f64,
    /// Time to first token, median (ms).
    pub ttft_p50_ms: Option<f64>,
    /// Time to first token, 99th percentile (ms).
    pub ttft_p99_ms: Option<f64>,
    /// Gap between content chunks, median (ms).
    pub itl_p50_ms: Option<f64>,
    /// Gap between content chunks, 99th percentile (ms).
    pub itl_p99_ms: Option<f64>,
    /// Up to five distinct failure messages, each with how often it occurred.
    pub errors: Vec<String>,
    /// Content chunks received (by every request, failed ones included) in each whole second
    /// from the clients' release: element `i` counts those that arrived in `[i, i + 1)` s. A
    /// chunk is one token on qwenrt and llama-server.
    pub chunks_per_second: Vec<usize>,
}

impl Report {
    /// Summarizes `results` of a run of `opts` that took `wall`.
    pub fn new(opts: &LoadgenOptions, results: &[RequestResult], wall: Duration) -> Report {
        let ok: Vec<&RequestResult> = results.iter().filter(|r| r.error.is_none()).collect();
        let tokens: usize = ok.iter().map(|r| r.tokens).sum();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft.as_ref().map(ms)).collect();
        let mut itl: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().map(ms)).collect();
        ttft.sort_by(f64::total_cmp);
        itl.sort_by(f64::total_cmp);
        let mut per_client: Vec<f64> = (0..opts.clients)
            .map(|c| {
                let mine = results.iter().filter(|r| r.client == c);
                let (mut t, mut busy) = (0usize, 0.0f64);
                for r in mine {
                    busy += r.elapsed.as_secs_f64();
                    if r.error.is_none() {
                        t += r.tokens;
                    }
                }
                if busy > 0.0 {
                    t as f64 / busy
                } else {
                    0.0
                }
            })
            .collect();
        per_client.sort_by(f64::total_cmp);
        let median = match per_client.len() {
            0 => 0.0,
            n if n % 2 == 1 => per_client[n / 2],
            n => (per_client[n / 2 - 1] + per_client[n / 2]) / 2.0,
        };
        let mut errors: Vec<(String, usize)> = Vec::new();
        for e in results.iter().filter_map(|r| r.error.as_ref()) {
            match errors.iter_mut().find(|(m, _)| m == e) {
                Some((_, n)) => *n += 1,
                None => errors.push((e.clone(), 1)),
            }
        }
        let wall_s = wall.as_secs_f64();
        let mut chunks_per_second = vec![0usize; wall_s.ceil() as usize];
        for t in results.iter().flat_map(RequestResult::chunk_times) {
            let i = t.as_secs() as usize;
            if i >= chunks_per_second.len() {
                chunks_per_second.resize(i + 1, 0);
            }
            chunks_per_second[i] += 1;
        }
        Report {
            url: opts.url.clone(),
            clients: opts.clients,
            requests_per_client: opts.requests,
            max_tokens: opts.max_tokens,
            requests_ok: ok.len(),
            requests_failed: results.len() - ok.len(),
            tokens,
            wall_s,
            tokens_per_s: if wall_s > 0.0 {
                tokens as f64 / wall_s
            } else {
                0.0
            },
            client_tokens_per_s_median: median,
            ttft_p50_ms: percentile(&ttft, 0.5),
            ttft_p99_ms: percentile(&ttft, 0.99),
            itl_p50_ms: percentile(&itl, 0.5),
            itl_p99_ms: percentile(&itl, 0.99),
            errors: errors
                .into_iter()
                .take(5)
                .map(|(m, n)| format!("{n} x {m}"))
                .collect(),
            chunks_per_second,
        }
    }

    /// A readable table, one line per measure.
    pub fn table(&self) -> String {
        let ms = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
        let mut s = format!(
            "loadgen: {} clients x {} requests, max_tokens {}, {}\n",
            self.clients, self.requests_per_client, self.max_tokens, self.url
        );
        let rows = [
            (
                "requests",
                format!("{} ok, {} failed", self.requests_ok, self.requests_failed),
            ),
            ("tokens", format!("{} in {:.2} s", self.tokens, self.wall_s)),
            ("aggregate", format!("{:.1} tokens/s", self.tokens_per_s)),
            (
                "per client (median)",
                format!("{:.1} tokens/s", self.client_tokens_per_s_median),
            ),
            (
                "TTFT",
                format!(
                    "p50 {:>9}   p99 {:>9}",
                    ms(self.ttft_p50_ms),
                    ms(self.ttft_p99_ms)
                ),
            ),
            (
                "ITL",
                format!(
                    "p50 {:>9}   p99 {:>9}",
                    ms(self.itl_p50_ms),
                    ms(self.itl_p99_ms)
                ),
            ),
        ];
        for (k, v) in rows {
            s.push_str(&format!("  {k:<20} {v}\n"));
        }
        let per_s: Vec<String> = self
            .chunks_per_second
            .iter()
            .map(usize::to_string)
            .collect();
        s.push_str(&format!(
            "  {:<20} {}\n",
            "chunks each second",
            per_s.join(" ")
        ));
        for e in &self.errors {
            s.push_str(&format!("  failed: {e}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RequestResult {
        parse_stream(text.as_bytes(), Instant::now())
    }

    #[test]
    fn qwenrt_stream_with_usage() {
        let r = parse(concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(r.error, None);
        assert_eq!(r.tokens, 3);
        assert!(r.ttft.is_some());
        assert_eq!(r.itl.len(), 1);
    }

    #[test]
    fn llama_server_stream_without_usage_counts_content_chunks() {
        let r = parse(concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            ": keep-alive\n",
            "data:{\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}],\"timings\":{}}\n\n",
            "data: [DONE]\n",
        ));
        assert_eq!(r.error, None);
        assert_eq!((r.tokens, r.itl.len()), (3, 2));
    }

    #[test]
    fn broken_streams_fail() {
        let no_done = parse("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert!(no_done.error.unwrap().contains("[DONE]"));
        let junk = parse("data: {\"choices\":[\ndata: [DONE]\n");
        assert!(junk.error.unwrap().contains("not a JSON object"));
        let err = parse("data: {\"error\":{\"message\":\"engine error: boom\"}}\n\ndata: [DONE]\n");
        assert!(err.error.unwrap().contains("boom"));
        assert!(parse("").error.is_some());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn report_counts_tokens_of_successes_and_failures() {
        let opts = LoadgenOptions {
            clients: 2,
            requests: 2,
            ..LoadgenOptions::default()
        };
        let ok = |client, tokens| RequestResult {
            client,
            ttft: Some(Duration::from_millis(100)),
            itl: vec![Duration::from_millis(10); tokens - 1],
            tokens,
            elapsed: Duration::from_secs(1),
            sent: Duration::from_millis(500) * client as u32,
            error: None,
        };
        let failed = RequestResult {
            client: 1,
            elapsed: Duration::from_secs(1),
            error: Some("HTTP 401: bad key".into()),
            ..RequestResult::default()
        };
        let results = [ok(0, 10), ok(0, 30), ok(1, 20), failed];
        let r = Report::new(&opts, &results, Duration::from_secs(4));
        assert_eq!((r.requests_ok, r.requests_failed, r.tokens), (3, 1, 60));
        assert_eq!(r.tokens_per_s, 15.0);
        // client 0: 40 tokens in 2 s, client 1: 20 in 2 s
        assert_eq!(r.client_tokens_per_s_median, 15.0);
        assert_eq!((r.ttft_p50_ms, r.itl_p99_ms), (Some(100.0), Some(10.0)));
        assert_eq!(r.errors, vec!["1 x HTTP 401: bad key".to_string()]);
        let table = r.table();
        assert!(table.contains("3 ok, 1 failed") && table.contains("15.0 tokens/s"));
        // client 0's chunks: 0.1 s, then every 10 ms (10 and 30 tokens); client 1's from 0.6 s
        assert_eq!(r.chunks_per_second, vec![60, 0, 0, 0]);
        assert!(table.contains("chunks each second   60 0 0 0"), "{table}");
    }

    #[test]
    fn chunks_are_placed_in_the_second_they_arrived() {
        let opts = LoadgenOptions {
            clients: 1,
            requests: 1,
            ..LoadgenOptions::default()
        };
        // sent at 1.5 s, first chunk 0.4 s later (1.9 s), then at 2.2 s, 2.5 s and 4.0 s
        let r = RequestResult {
            sent: Duration::from_millis(1500),
            ttft: Some(Duration::from_millis(400)),
            itl: [300, 300, 1500].map(Duration::from_millis).to_vec(),
            tokens: 4,
            elapsed: Duration::from_millis(2600),
            ..RequestResult::default()
        };
        let times: Vec<u128> = r.chunk_times().map(|t| t.as_millis()).collect();
        assert_eq!(times, vec![1900, 2200, 2500, 4000]);
        let report = Report::new(&opts, &[r], Duration::from_millis(4100));
        assert_eq!(report.chunks_per_second, vec![0, 1, 2, 0, 1]);
        // no chunk at all: one zero per second of the run
        let none = Report::new(&opts, &[], Duration::from_millis(2500));
        assert_eq!(none.chunks_per_second, vec![0, 0, 0]);
    }

    #[test]
    fn options_are_checked_and_name_the_flag() {
        let with = |f: fn(&mut LoadgenOptions)| {
            let mut o = LoadgenOptions::default();
            f(&mut o);
            o.validate()
        };
        assert_eq!(
            with(|_| {}),
            Ok("http://127.0.0.1:8080/v1/chat/completions".into())
        );
        assert_eq!(
            with(|o| o.url = "http://localhost:9000/v1/".into()),
            Ok("http://localhost:9000/v1/chat/completions".into())
        );
        for (f, needle) in [
            ((|o| o.clients = 0) as fn(&mut LoadgenOptions), "--clients"),
            (|o| o.requests = 0, "--requests"),
            (|o| o.max_tokens = 0, "--max-tokens"),
            (|o| o.url = "localhost:8080".into(), "http://"),
            (|o| o.url = "https://example.com".into(), "https"),
            (|o| o.url = "http://:8080".into(), "host"),
            (|o| o.url = "http://host:99999".into(), "port"),
            (|o| o.url = "http://host:http".into(), "port"),
        ] {
            let e = with(f).unwrap_err();
            assert!(e.0.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn a_shared_system_message_comes_first_in_every_request() {
        let opts = LoadgenOptions {
            system_tokens: 1500,
            ..LoadgenOptions::default()
        };
        let (a, b) = (request_body(&opts, 0, 0), request_body(&opts, 3, 1));
        assert_eq!(a["messages"][0], b["messages"][0]);
        assert_eq!(a["messages"][0]["role"], "system");
        assert_ne!(a["messages"][1], b["messages"][1]);
        let words = system_prompt(1500).split(' ').count();
        assert!((1490..=1500).contains(&words), "{words} words");
        let plain = request_body(&LoadgenOptions::default(), 0, 0);
        assert_eq!(plain["messages"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn prompts_differ_across_clients_and_requests() {
        let mut all: Vec<String> = (0..8)
            .flat_map(|c| (0..20).map(move |r| prompt(c, r, 20)))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
