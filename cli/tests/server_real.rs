//! `qwenrt serve` on the real default model (its Q4_K_M GGUF, fetched on first use; never
//! skipped): at temperature 0 the server's completions and chat replies are exactly what
//! `qwenrt generate` prints for the same prompt and token count, streamed or not, one request
//! at a time or several together.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwenrt::{Tokenizer, Weights};
use qwenrt_server::{run_on, ServerOptions};
use serde_json::{json, Value};

fn gguf() -> PathBuf {
    qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent).expect("fetch the GGUF")
}

/// `qwenrt generate --temperature 0 --max-tokens N --json [--raw]`: the text.
fn generate(prompt: &str, max_tokens: usize, raw: bool) -> String {
    let n = max_tokens.to_string();
    let mut args = vec![
        "generate",
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-tokens",
        &n,
        "--json",
        "--threads",
        "2",
        "--ctx",
        "1024",
    ];
    if raw {
        args.push("--raw");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(&args)
        .arg("--model")
        .arg(gguf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let path = gguf();
        let weights = Arc::new(Weights::load(&path).unwrap());
        let tokenizer = Tokenizer::from_gguf(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = ServerOptions {
            port: 0,
            parallel: 3,
            ctx: 1024,
            threads: 2,
            ..ServerOptions::default()
        };
        let handle = std::thread::spawn(move || {
            run_on(
                listener,
                weights,
                tokenizer,
                "qwen".into(),
                opts,
                async move {
                    let _ = rx.await;
                },
            )
            .unwrap()
        });
        let t = Instant::now();
        while ureq::get(&format!("{base}/health")).call().is_err() {
            assert!(t.elapsed() < Duration::from_secs(120), "no server");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            base,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let r = ureq::post(&format!("{}{path}", self.base))
            .send_string(&body.to_string())
            .unwrap();
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    }

    /// The text of a streamed request, its chunks concatenated.
    fn stream(&self, path: &str, body: &Value) -> String {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let r = ureq::post(&format!("{}{path}", self.base))
            .send_string(&body.to_string())
            .unwrap();
        let text = r.into_string().unwrap();
        let mut out = String::new();
        let mut done = false;
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let c: Value = serde_json::from_str(data).unwrap();
            let ch = &c["choices"][0];
            out.push_str(
                ch["delta"]["content"]
                    .as_str()
                    .or(ch["text"].as_str())
                    .unwrap_or(""),
            );
        }
        assert!(done, "{text}");
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn completions_equal_qwenrt_generate_at_temperature_zero() {
    let s = Server::start();
    let n = 24;
    let raw = ["def quicksort(arr):", "The capital of France is"];
    let chat = "Write a Rust function that reverses a string.";
    let expected_raw: Vec<String> = raw.iter().map(|p| generate(p, n, true)).collect();
    let expected_chat = generate(chat, n, false);
    assert!(expected_chat.contains("fn"), "{expected_chat}");

    let completion = |p: &str| json!({"prompt": p, "temperature": 0, "max_tokens": n});
    let chat_body = json!({"messages": [{"role": "user", "content": chat}],
        "temperature": 0, "max_tokens": n});
    for (p, want) in raw.iter().zip(&expected_raw) {
        let v = s.post("/v1/completions", &completion(p));
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want, "{p}");
        assert_eq!(v["usage"]["completion_tokens"], n, "{p}");
        assert_eq!(&s.stream("/v1/completions", &completion(p)), want, "{p}");
    }
    let v = s.post("/v1/chat/completions", &chat_body);
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        expected_chat
    );
    assert_eq!(
        &s.stream("/v1/chat/completions", &chat_body),
        &expected_chat
    );

    // the three together, batched in the engine's steps
    let s = Arc::new(s);
    let together: Vec<String> = raw
        .iter()
        .map(|p| ("/v1/completions", completion(p)))
        .chain([("/v1/chat/completions", chat_body.clone())])
        .map(|(path, body)| {
            let s = s.clone();
            std::thread::spawn(move || s.stream(path, &body))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut want = expected_raw.clone();
    want.push(expected_chat);
    assert_eq!(together, want);
}
