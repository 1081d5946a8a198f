//! `qwenrt serve` as a process: SIGTERM while a stream is running stops new connections, lets
//! the stream finish with `data: [DONE]`, and exits 0.

#[path = "support/server_kit.rs"]
mod kit;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwenrt::model::synthetic::write_synthetic_model;
use qwenrt_kernels::Dtype;
use serde_json::json;

#[test]
fn sigterm_lets_the_running_stream_finish_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("qwenrt-sigterm-{}", std::process::id()));
    write_synthetic_model(&dir, kit::SHAPE, Dtype::BF16, 5).unwrap();
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(["serve", "--model"])
        .arg(&dir)
        .args(["--port", &port.to_string(), "-t", "1", "--ctx", "2048"])
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

    let url = format!("http://127.0.0.1:{port}/v1/completions");
    let body = json!({"prompt": "Tell me a story", "max_tokens": 1500, "temperature": 0,
                      "stream": true});
    let resp = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .unwrap();
    let mut events = BufReader::new(resp.into_reader()).lines();
    let first = events.next().unwrap().unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // the stream goes on to its end
    let mut after = 0;
    let mut last = String::new();
    for l in events {
        let l = l.unwrap();
        if l.starts_with("data: ") {
            after += 1;
            last = l;
        }
    }
    assert_eq!(last, "data: [DONE]");
    assert!(
        after > 10,
        "the stream ended right after SIGTERM ({after} events): nothing was drained"
    );

    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still running after the stream ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
    // nobody listens any more
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
