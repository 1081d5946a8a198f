//! Shared by the server's tests (server/tests/*.rs) and those in cli/tests that serve: a
//! synthetic model (the real tokenizer's vocabulary size, tiny layers) served by
//! `qwenrt_server` on an ephemeral port, and a blocking HTTP client.
#![allow(dead_code)] // each test binary uses part of it

pub use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
pub use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
pub use std::time::{Duration, Instant};

use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::{Tokenizer, Weights};
use qwenrt_kernels::Dtype;
pub use qwenrt_server::{run_on, ServerError, ServerOptions};
pub use serde_json::{json, Value};

/// The tiny model the server tests run: Qwen2's vocabulary (so the real tokenizer fits), a
/// small body.
pub const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 151936,
    hidden: 64,
    ffn: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 2048,
    tied: true,
};

pub fn weights() -> Arc<Weights> {
    static W: OnceLock<Arc<Weights>> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qwenrt-server-{}", std::process::id()));
        write_synthetic_model(&dir, SHAPE, Dtype::BF16, 5).unwrap();
        Arc::new(Weights::load(&dir).unwrap())
    })
    .clone()
}

pub fn tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
    Tokenizer::from_file(&p).unwrap()
}

pub struct Server {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    pub fn start(opts: ServerOptions) -> Server {
        Server::start_with(weights(), opts)
    }

    /// A server of `w` (with the real tokenizer) instead of the synthetic model.
    pub fn start_with(w: Arc<Weights>, opts: ServerOptions) -> Server {
        Server::start_serving(w, tokenizer(), opts)
    }

    /// A server of `w` with `tok`.
    pub fn start_serving(w: Arc<Weights>, tok: Tokenizer, opts: ServerOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            run_on(listener, w, tok, "test-model".into(), opts, async move {
                let _ = rx.await;
            })
        });
        let s = Server {
            base,
            stop: Some(stop),
            handle: Some(handle),
        };
        let t = Instant::now();
        while get(&s, "/health").0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn shutdown(&mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn opts() -> ServerOptions {
    ServerOptions {
        port: 0,
        parallel: 4,
        ctx: 512,
        threads: 1,
        prefill_chunk: 32,
        shutdown_grace: Duration::from_secs(20),
        ..ServerOptions::default()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

pub fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

pub fn get(s: &Server, path: &str) -> (u16, String) {
    match agent().get(&format!("{}{path}", s.base)).call() {
        Err(ureq::Error::Transport(_)) => (0, String::new()),
        r => answer(r),
    }
}

pub fn post_raw(s: &Server, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent()
        .post(&format!("{}{path}", s.base))
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    answer(req.send_string(body))
}

pub fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = post_raw(s, path, &body.to_string(), None);
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of a streamed request, `[DONE]` included.
pub fn post_stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let r = agent()
        .post(&format!("{}{path}", s.base))
        .send_string(&body.to_string())
        .unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    BufReader::new(r.into_reader())
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

pub fn chat_body(user: &str, max_tokens: usize) -> Value {
    json!({"model": "x", "messages": [{"role": "user", "content": user}],
        "temperature": 0, "max_tokens": max_tokens})
}

pub fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = get(s, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .parse()
        .unwrap()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status and one response header of a POST.
pub fn post_header(s: &Server, path: &str, body: &Value, name: &str) -> (u16, Option<String>) {
    let r = agent()
        .post(&format!("{}{path}", s.base))
        .send_string(&body.to_string());
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    (r.status(), r.header(name).map(str::to_string))
}

/// The log-softmax of `logits`, summed in f64: the reference the servers' log-probabilities
/// are held to.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}
