//! The official OpenAI Python client (openai 3.60.0 with pydantic, and `jsonschema` to check
//! answers independently) against the server on the real default model: structured output with
//! `chat.completions.parse`, a tool round trip, a streamed call, and 24 JSON schemas whose
//! answers must all validate. See tests/openai_client/check.py.
//!
//! The Python packages are installed from PyPI on first use into the test's temporary
//! directory (`pip install --target`), as the model itself is fetched on first use.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwenrt::text::template::ChatTemplate;
use qwenrt::{Tokenizer, Weights};
use qwenrt_server::{run_on, ServerOptions};

const PACKAGES: &[&str] = &["openai==3.60.0", "jsonschema==4.25.1"];

/// A directory with the Python packages installed (once per build directory).
fn python_packages() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pydeps-openai-3.60.0");
    let marker = dir.join(".complete");
    if !marker.exists() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(PACKAGES)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "pip install {PACKAGES:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, "").unwrap();
    }
    dir
}

#[test]
fn the_openai_python_client_parses_calls_tools_and_streams() {
    let packages = python_packages();
    let gguf = qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the GGUF");
    let weights = Arc::new(Weights::load(&gguf).unwrap());
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let template = ChatTemplate::for_model(&gguf, None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ServerOptions {
        port: 0,
        parallel: 4,
        ctx: 2048,
        threads: 2,
        chat_template: Arc::new(template),
        ..ServerOptions::default()
    };
    let server = std::thread::spawn(move || {
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
    });
    let t = Instant::now();
    while ureq::get(&format!("{base}/health")).call().is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/openai_client/check.py"))
        .arg(&base)
        .arg(root.join("../tests/fixtures/schemas.json"))
        .env("PYTHONPATH", &packages)
        .output()
        .expect("python3 runs");
    let _ = stop.send(());
    server.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the OpenAI client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all OpenAI client checks passed"),
        "{stdout}"
    );
}
