//! `qwenrt serve` as a process, and the probes a load balancer reads: SIGTERM drains (new
//! requests get 503 at once, `/ready` 503, `/health` still 200, the running stream finishes
//! with `data: [DONE]`, exit 0); with a short `--drain-timeout` the running stream is ended
//! with a clear error event and the process still exits 0; while the model loads, the
//! placeholder answers `/live` 200 and `/health` and `/ready` 503. Several `--host` addresses are all served,
//! and `/v1/models` lists `--alias` and `--tags` as llama-server does.

#[path = "../../server/tests/support/server_kit.rs"]
mod kit;

use std::io::{BufRead, BufReader, Lines, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use qwenrt::model::synthetic::write_synthetic_model;
use qwenrt_kernels::Dtype;
use serde_json::{json, Value};

/// A `qwenrt serve` child on the tiny model, listening.
struct Serve {
    child: Child,
    stderr: BufReader<ChildStderr>,
    port: u16,
    dir: PathBuf,
}

impl Serve {
    fn start(name: &str, extra: &[&str]) -> Serve {
        let dir = std::env::temp_dir().join(format!("qwenrt-{name}-{}", std::process::id()));
        write_synthetic_model(&dir, kit::SHAPE, Dtype::BF16, 5).unwrap();
        let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
        std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args(["serve", "--model"])
            .arg(&dir)
            .args(["--port", &port.to_string(), "-t", "1", "--ctx", "2048"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "qwenrt serve exited before listening"
            );
            if line.contains("listening on http://") {
                break;
            }
        }
        Serve {
            child,
            stderr,
            port,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A long greedy stream, read up to its first event.
    fn long_stream(&self) -> Lines<Box<dyn BufRead + Send>> {
        let body = json!({"prompt": "Tell me a story", "max_tokens": 1500, "temperature": 0,
                          "stream": true});
        let resp = ureq::post(&self.url("/v1/completions"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap();
        let reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(resp.into_reader()));
        let mut events = reader.lines();
        let first = events.next().unwrap().unwrap();
        assert!(first.starts_with("data: {"), "{first}");
        events
    }

    fn sigterm(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the exit (at most `limit`); returns the status and the rest of stderr.
    fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < limit, "still running {limit:?} after");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        // nobody listens any more
        assert!(std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
        std::fs::remove_dir_all(&self.dir).ok();
        (status, rest)
    }
}

/// Status and body of a GET (0 when nothing answers).
fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(_) => (0, String::new()),
    }
}

/// Status and body of a POST of `body`.
fn post(url: &str, body: &Value) -> (u16, String) {
    match ureq::post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// The `data:` payloads left in a stream.
fn rest_of(events: Lines<Box<dyn BufRead + Send>>) -> Vec<String> {
    events
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn sigterm_refuses_new_requests_lets_the_running_stream_finish_then_exits_zero() {
    let s = Serve::start("sigterm", &[]);
    assert_eq!(get(&s.url("/ready")).0, 200);
    let events = s.long_stream();
    s.sigterm();

    // from the signal on: not ready, still alive, new work refused with a retryable 503
    let t0 = Instant::now();
    while get(&s.url("/ready")).0 != 503 {
        assert!(t0.elapsed() < Duration::from_secs(10), "/ready stayed 200");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = get(&s.url("/health"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "draining"
    );
    let (code, body) = post(
        &s.url("/v1/completions"),
        &json!({"prompt": "Hi", "max_tokens": 4}),
    );
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "shutting_down",
        "{body}"
    );

    // the running stream goes on to its normal end
    let data = rest_of(events);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.len() > 10,
        "the stream ended right after SIGTERM ({} events): nothing was drained",
        data.len()
    );
    let finish: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        finish["choices"][0]["finish_reason"].is_string(),
        "{finish}"
    );

    let (status, rest) = s.wait(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    assert!(rest.contains("shutting down"), "{rest}");
}

#[test]
fn past_the_drain_timeout_the_running_stream_is_ended_clearly_and_the_exit_is_zero() {
    let s = Serve::start("drain-timeout", &["--drain-timeout", "1"]);
    let events = s.long_stream();
    let t0 = Instant::now();
    s.sigterm();
    let data = rest_of(events);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "drain_timeout", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("drain timeout"),
        "{last}"
    );
    let (status, rest) = s.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(rest.contains("drain timeout (1 s) passed"), "{rest}");
    // one second of drain and a few of closing, not the stream's natural length
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[test]
fn while_loading_the_placeholder_is_alive_but_not_ready_then_hands_the_port_over() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loading = qwenrt_server::Loading::start(&listener).unwrap();
    assert_eq!(get(&format!("{base}/live")).0, 200);
    // /health as llama-server answers it while loading (clients wait for its 200)
    for probe in ["/ready", "/health"] {
        let (code, body) = get(&format!("{base}{probe}"));
        assert_eq!(
            (code, body.as_str()),
            (503, r#"{"status":"loading"}"#),
            "{probe}"
        );
    }
    let (code, body) = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "loading", "{body}");
    loading.stop();

    // the listener still holds the port: a connection now waits for whoever accepts next
    let t = std::thread::spawn(move || get(&format!("{base}/ready")));
    let (mut conn, _) = listener.accept().unwrap();
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "the request was cut");
        request.push(byte[0]);
    }
    assert!(request.starts_with(b"GET /ready "));
    std::io::Write::write_all(
        &mut conn,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .unwrap();
    drop(conn);
    assert_eq!(t.join().unwrap(), (200, "ok".to_string()));
}

#[test]
fn several_addresses_are_served_and_models_lists_the_aliases_and_tags() {
    // IPv6 loopback may be missing on a CI host; then the second address is a second name of
    // the IPv4 loopback's
    let second = if TcpListener::bind("[::1]:0").is_ok() {
        ("::1", "[::1]")
    } else {
        eprintln!("no IPv6 loopback here: serving 127.0.0.1 twice under two names instead");
        ("localhost", "localhost")
    };
    let hosts = format!("127.0.0.1,{}", second.0);
    let s = Serve::start(
        "hosts",
        &[
            "--host",
            &hosts,
            "--alias",
            "tiny-b,tiny-a,tiny-b",
            "--tags",
            "chat,small",
        ],
    );
    for host in ["127.0.0.1", second.1] {
        let url = format!("http://{host}:{}/v1/models", s.port);
        let (status, body) = get(&url);
        assert_eq!(status, 200, "{host}: {body}");
        let models: Value = serde_json::from_str(&body).unwrap();
        let m = &models["data"][0];
        // the id is the first alias in sorted order, as llama-server picks it
        assert_eq!(m["id"], "tiny-a", "{m}");
        assert_eq!(m["aliases"], json!(["tiny-a", "tiny-b"]), "{m}");
        assert_eq!(m["tags"], json!(["chat", "small"]), "{m}");
    }
    s.sigterm();
    let (status, _) = s.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}
