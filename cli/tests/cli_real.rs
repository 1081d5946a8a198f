//! The CLI contract on the real model: the exact forms scripts depend on.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn model() -> PathBuf {
    qwenrt_cli::hub::ensure_default_model(false).expect("fetch and convert the default model")
}

fn qwenrt(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qwenrt"));
    cmd.args(args)
        .arg("--model")
        .arg(model())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "failed: stdout {o}\nstderr {e}");
    assert!(!e.contains("panicked"), "{e}");
    (o, e)
}

#[test]
fn generate_json_has_the_documented_shape() {
    let (o, e) = ok(&qwenrt(
        &[
            "generate",
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--json",
            "--threads",
            "2",
        ],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    let prompt_ids = v["prompt_ids"].as_array().unwrap();
    let ids = v["ids"].as_array().unwrap();
    assert!(prompt_ids.len() > 20, "chat template applied");
    assert!(!ids.is_empty() && ids.len() <= 12);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    for key in [
        "prompt_tokens",
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "arena_bytes",
    ] {
        assert!(v["stats"].get(key).is_some(), "stats lacks {key}");
    }
    assert!(
        e.contains("prompt tokens")
            && e.contains("prefill")
            && e.contains("decode")
            && e.contains("arena"),
        "{e}"
    );
}

#[test]
fn generate_streams_text_and_reads_stdin_raw() {
    let (o, _) = ok(&qwenrt(
        &[
            "generate",
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ],
        Some(b"The capital of France is"),
    ));
    assert!(o.contains("Paris"), "{o}");
    // the golden's greedy continuation of this raw prompt starts " Paris."
}

#[test]
fn tokenize_prints_a_json_array() {
    let (o, _) = ok(&qwenrt(&["tokenize", "Hello world"], None));
    assert_eq!(o.trim(), "[9707,1879]");
}

#[test]
fn logits_lines_follow_the_contract_and_the_reference() {
    // raw_code golden: "def fibonacci(n):" -> first greedy token 198, logit 17.6265
    let (o, _) = ok(&qwenrt(
        &[
            "logits",
            "--ids",
            "750,75698,1445,1648",
            "--top",
            "5",
            "--prefill-f32",
        ],
        None,
    ));
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("{{\"pos\":{i},\"top\":[[")), "{l}");
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["top"].as_array().unwrap().len(), 5);
        assert!(v["logsumexp"].as_f64().unwrap() > v["top"][0][1].as_f64().unwrap());
    }
    let last: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(last["top"][0][0], 198);
    assert!(
        (last["top"][0][1].as_f64().unwrap() - 17.6265).abs() < 0.05,
        "{last}"
    );
}

#[test]
fn info_prints_config_dtypes_and_arena_plan() {
    let (o, _) = ok(&qwenrt(&["info", "--ctx", "1024"], None));
    for needle in [
        "vocab 151936",
        "hidden 896",
        "layers 24",
        "BF16",
        "kv_cache.k",
        "[1, 24, 2, 1024, 64]",
        "total",
    ] {
        assert!(o.contains(needle), "info lacks {needle}: {o}");
    }
}

#[test]
fn chat_keeps_context_across_turns_and_says_when_full() {
    let (o, _) = ok(&qwenrt(
        &[
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--ctx",
            "512",
        ],
        Some(b"My name is Ada. Reply with OK.\nWhat is my name? One word.\n"),
    ));
    assert!(o.contains("Ada"), "the second turn must see the first: {o}");
    let (_, e) = ok(&qwenrt(
        &[
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--ctx",
            "64",
        ],
        Some(b"Hello there, how are you?\nTell me more.\n"),
    ));
    assert!(e.contains("context full"), "{e}");
}

#[test]
fn batch_keeps_input_order_and_survives_a_bad_line() {
    let dir = std::env::temp_dir().join(format!("qwenrt-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("prompts.jsonl");
    let out = dir.join("results.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"prompt\":\"The capital of France is\",\"max_tokens\":4,\"raw\":true}\n\
         {\"id\":\"b\",\"prompt\":\n\
         {\"id\":3,\"prompt\":\"Say hi.\",\"max_tokens\":6,\"temperature\":0.7}\n",
    )
    .unwrap();
    let (_, e) = ok(&qwenrt(
        &[
            "batch",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "2",
        ],
        None,
    ));
    assert!(e.contains("3 requests, 2 completed, 1 failed"), "{e}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["id"], "a");
    assert!(
        recs[0]["text"].as_str().unwrap().contains("Paris"),
        "{}",
        recs[0]
    );
    assert!(recs[0]["ids"].as_array().unwrap().len() <= 4);
    assert_eq!(recs[1]["line"], 2);
    assert!(recs[1]["error"].as_str().is_some());
    assert_eq!(recs[2]["id"], 3);
    assert!(recs[2]["stats"]["prompt_tokens"].as_u64().unwrap() > 10);
}

/// The binary without `--model`: the default model's GGUF, run natively.
fn qwenrt_default(args: &[&str]) -> Output {
    qwenrt_cli::hub::ensure_default_gguf_with(&mut qwenrt_cli::hub::Silent)
        .expect("fetch the GGUF");
    Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_default_model_is_the_gguf_run_natively() {
    let (o, _) = ok(&qwenrt_default(&["info", "--ctx", "256", "-t", "2"]));
    assert!(o.contains("q4_k_m.gguf"), "{o}");
    assert!(
        o.contains("weight matrices: Q5_0 x133, Q8_0 x13, Q6_K x12, Q4_K x12"),
        "{o}"
    );
    assert!(o.contains("quant_scratch"), "{o}");
    let (o, _) = ok(&qwenrt_default(&[
        "generate",
        "--raw",
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "-t",
        "2",
    ]));
    assert!(o.contains("Paris"), "{o}");
    let (o, _) = ok(&qwenrt_default(&["fetch"]));
    assert!(
        o.trim()
            .ends_with("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "{o}"
    );
}

#[test]
fn perplexity_prints_running_values_and_the_final_estimate() {
    let text = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/text/aho-corasick-design.md"
    );
    let (o, e) = ok(&qwenrt_default(&[
        "perplexity",
        text,
        "--ctx",
        "128",
        "--chunks",
        "3",
        "-t",
        "2",
    ]));
    assert!(e.contains("5579 tokens, 3 chunks of 128"), "{e}");
    let lines: Vec<&str> = o.lines().collect();
    assert!(
        lines[0].starts_with("[1]") && lines[0].contains(",[3]"),
        "{o}"
    );
    let last = lines.last().unwrap();
    let rest = last
        .strip_prefix("Final estimate: PPL = ")
        .unwrap_or_else(|| panic!("{o}"));
    let (ppl, unc) = rest.split_once(" +/- ").unwrap();
    let (ppl, unc): (f64, f64) = (ppl.parse().unwrap(), unc.parse().unwrap());
    // a code-savvy 0.5B model on English prose about code: single digits to tens
    assert!(ppl > 2.0 && ppl < 100.0 && unc > 0.0 && unc < ppl, "{last}");
    // a text shorter than two chunks is refused by name
    let out = qwenrt_default(&["perplexity", text, "--ctx", "4096", "-t", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("needs at least 8192 (two chunks)"), "{e}");
}
