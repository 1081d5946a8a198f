//! The hostile-input table: the `qwenrt` binary on corrupt models, bad configs, impossible
//! sizes, bad requests and bad flags. Every case must exit non-zero with one line on stderr,
//! `error: ...`, that names the problem, never panic, and write nothing outside its output
//! directory (each runs in a fresh empty working directory with `QWENRT_HOME` pointed at an
//! empty directory, so a stray default-model fetch or file write is caught too).
//!
//! The "Reliability" table of docs/reliability.md lists these cases and their messages.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::config::Config;
use qwenrt::model::gguf::GgmlType;
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::testkit::gguf::GgufBuilder;
use serde_json::{json, Value};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qwenrt-hostile-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// Runs `qwenrt args` (stdin from `stdin`, or empty) in a fresh working directory, and checks
/// the rules every hostile input must follow; returns the error line.
fn fails(args: &[&str], stdin: Option<&[u8]>, watched: &[&Path]) -> String {
    let cwd = Scratch::new("cwd");
    let home = Scratch::new("home");
    let before: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(args)
        .current_dir(cwd.path())
        .env("QWENRT_HOME", home.path())
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin.unwrap_or(b""));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let what = format!("qwenrt {args:?}");
    assert!(!out.status.success(), "{what} succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked at"), "{what} panicked: {stderr}");
    let line = stderr.trim_end();
    assert!(
        line.starts_with("error: ") && !line.contains('\n'),
        "{what}: stderr is not one `error:` line: {stderr:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what} wrote to stdout: {:?}",
        out.stdout
    );
    assert!(
        snapshot(cwd.path()).is_empty(),
        "{what} wrote into its working directory: {:?}",
        snapshot(cwd.path())
    );
    assert!(
        snapshot(home.path()).is_empty(),
        "{what} wrote into QWENRT_HOME: {:?}",
        snapshot(home.path())
    );
    for (dir, before) in watched.iter().zip(before) {
        assert_eq!(snapshot(dir), before, "{what} changed {}", dir.display());
    }
    eprintln!("{what}\n  -> {line}");
    line.to_string()
}

fn assert_names(line: &str, needles: &[&str]) {
    for n in needles {
        assert!(line.contains(n), "{line:?} should contain {n:?}");
    }
}

/// A copy of the tiny f32 model (with the real tokenizer.json beside it), edited by `edit`.
fn tiny_model(
    edit_config: impl FnOnce(&mut Value),
    edit_weights: impl FnOnce(&mut Vec<u8>),
) -> Scratch {
    let dir = Scratch::new("model");
    let src = fixtures().join("tiny-qwen2-f32");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let mut st = std::fs::read(src.join("model.safetensors")).unwrap();
    edit_weights(&mut st);
    std::fs::write(dir.path().join("model.safetensors"), st).unwrap();
    std::fs::copy(
        fixtures().join("qwen2.5-coder-0.5b/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// Rewrites a safetensors file's JSON header with `edit` (data section unchanged).
fn edit_header(st: &mut Vec<u8>, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&st[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&st[8 + n..]);
    *st = out;
}

fn info(model: &Scratch) -> String {
    let dir = model.path().to_str().unwrap();
    fails(
        &["info", "--model", dir, "--threads", "1"],
        None,
        &[model.path()],
    )
}

// ---- safetensors ---------------------------------------------------------------------------

#[test]
fn truncated_safetensors() {
    let m = tiny_model(|_| {}, |st| st.truncate(st.len() / 2));
    let line = info(&m);
    assert_names(
        &line,
        &[
            "model.safetensors",
            "truncated",
            "describes 633088 bytes",
            "holds 315172",
        ],
    );
    let m = tiny_model(|_| {}, |st| st.truncate(100));
    let line = info(&m);
    assert_names(&line, &["model.safetensors", "invalid safetensors header"]);
}

#[test]
fn overlapping_offsets() {
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                h["model.norm.weight"]["data_offsets"] = json!([632832 - 128, 633088 - 128]);
            })
        },
    );
    let line = info(&m);
    assert_names(
        &line,
        &["model.safetensors", "invalid safetensors header", "offset"],
    );
}

#[test]
fn offsets_past_the_end() {
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                h["model.norm.weight"]["shape"] = json!([64 + 1024]);
                h["model.norm.weight"]["data_offsets"] = json!([632832, 633088 + 4096]);
            })
        },
    );
    let line = info(&m);
    assert_names(&line, &["model.safetensors", "truncated"]);
}

#[test]
fn wrong_dtype() {
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                h["model.norm.weight"]["dtype"] = json!("U8");
                h["model.norm.weight"]["shape"] = json!([256]);
            })
        },
    );
    let line = info(&m);
    assert_names(&line, &["model.norm.weight", "U8"]);
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                h["model.norm.weight"]["dtype"] = json!("I32");
            })
        },
    );
    assert_names(&info(&m), &["model.norm.weight", "I32"]);
}

#[test]
fn wrong_shape() {
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                h["model.layers.0.self_attn.q_proj.weight"]["shape"] = json!([32, 128]);
            })
        },
    );
    let line = info(&m);
    assert_names(
        &line,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "[32, 128]",
            "[64, 64]",
        ],
    );
}

#[test]
fn missing_tensor() {
    let name = "model.layers.1.mlp.down_proj.weight";
    let m = tiny_model(
        |_| {},
        |st| {
            edit_header(st, |h| {
                let t = h.remove(name).unwrap();
                h.insert(format!("{name}.renamed"), t);
            })
        },
    );
    assert_names(&info(&m), &["missing tensor", name]);
}

// ---- config.json ---------------------------------------------------------------------------

#[test]
fn config_with_zero_heads() {
    let m = tiny_model(|c| c["num_attention_heads"] = json!(0), |_| {});
    assert_names(
        &info(&m),
        &["config.json", "num_attention_heads", "greater than 0"],
    );
}

#[test]
fn config_heads_do_not_divide() {
    let m = tiny_model(|c| c["num_attention_heads"] = json!(3), |_| {});
    assert_names(
        &info(&m),
        &[
            "num_attention_heads",
            "(3) does not divide hidden_size (64)",
        ],
    );
    let m = tiny_model(|c| c["num_key_value_heads"] = json!(3), |_| {});
    assert_names(&info(&m), &["num_key_value_heads", "does not divide"]);
}

#[test]
fn config_sizes_overflow_the_arena() {
    let m = tiny_model(
        |c| {
            for (k, v) in [
                ("hidden_size", 1u64 << 16),
                ("num_attention_heads", 1 << 9),
                ("num_key_value_heads", 1 << 9),
                ("num_hidden_layers", 1 << 24),
                ("max_position_embeddings", 1 << 24),
                ("intermediate_size", 1),
                ("vocab_size", 1),
            ] {
                c[k] = json!(v);
            }
        },
        |_| {},
    );
    assert_names(
        &info(&m),
        &[
            "max_position_embeddings",
            "KV cache whose size overflows usize",
        ],
    );
    // a product that overflows the parameter count
    let m = tiny_model(
        |c| {
            c["hidden_size"] = json!(1u64 << 24);
            c["num_attention_heads"] = json!(1);
            c["num_key_value_heads"] = json!(1);
            c["num_hidden_layers"] = json!(1u64 << 24);
        },
        |_| {},
    );
    assert_names(&info(&m), &["hidden_size", "multiply past usize"]);
}

#[test]
fn arena_larger_than_memory_fails_fast_with_its_size() {
    let dir = Scratch::new("huge-ctx");
    let shape = SyntheticShape {
        vocab: 32,
        hidden: 256,
        ffn: 16,
        layers: 8,
        heads: 2,
        kv_heads: 2,
        max_positions: 1 << 24,
        tied: true,
    };
    write_synthetic_model(dir.path(), shape, qwenrt_kernels::Dtype::BF16, 1).unwrap();
    let ctx = 1usize << 24;
    let config = Config::from_file(&dir.path().join("config.json")).unwrap();
    let plan = Session::plan_for(
        &config,
        &SessionOptions {
            ctx,
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let bytes = plan.total_bytes();
    assert!(bytes > 1 << 38, "the plan is only {bytes} bytes");
    let t0 = std::time::Instant::now();
    let line = fails(
        &[
            "info",
            "--model",
            dir.path().to_str().unwrap(),
            "--ctx",
            &ctx.to_string(),
            "--threads",
            "1",
        ],
        None,
        &[dir.path()],
    );
    assert_names(
        &line,
        &["the arena needs", &format!("{bytes} bytes"), "lower --ctx"],
    );
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
}

// ---- requests ------------------------------------------------------------------------------

#[test]
fn prompt_longer_than_ctx() {
    let m = tiny_model(|_| {}, |_| {});
    let prompt = "one two three four five six seven eight nine ten";
    let line = fails(
        &[
            "generate",
            "--model",
            m.path().to_str().unwrap(),
            "--raw",
            "--ctx",
            "8",
            "--threads",
            "1",
            "--prompt",
            prompt,
        ],
        None,
        &[m.path()],
    );
    assert_names(&line, &["the prompt is 10 tokens", "--ctx 8"]);
}

#[test]
fn ctx_above_max_position_embeddings() {
    let m = tiny_model(|_| {}, |_| {});
    let line = fails(
        &[
            "info",
            "--model",
            m.path().to_str().unwrap(),
            "--ctx",
            "100000",
        ],
        None,
        &[m.path()],
    );
    assert_names(&line, &["--ctx 100000", "max_position_embeddings (256)"]);
}

#[test]
fn empty_prompt() {
    let m = tiny_model(|_| {}, |_| {});
    let dir = m.path().to_str().unwrap();
    for args in [
        &["generate", "--model", dir, "--prompt", ""][..],
        &["generate", "--model", dir, "--prompt", " \n\t "][..],
        &["generate", "--model", dir][..],
    ] {
        assert_names(
            &fails(args, Some(b""), &[m.path()]),
            &["the prompt is empty"],
        );
    }
}

#[test]
fn non_utf8_stdin() {
    let m = tiny_model(|_| {}, |_| {});
    let line = fails(
        &["generate", "--model", m.path().to_str().unwrap()],
        Some(b"hello \xff\xfe world"),
        &[m.path()],
    );
    assert_names(&line, &["stdin", "not valid UTF-8", "offset 6"]);
}

// ---- flags ---------------------------------------------------------------------------------

#[test]
fn bad_flags() {
    let m = tiny_model(|_| {}, |_| {});
    let dir = m.path().to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["generate", "--bogus", "x"], &["unknown flag --bogus"]),
        (
            &["info", "--model", dir, "--ctx"],
            &["flag --ctx needs a value"],
        ),
        (
            &["info", "--model", dir, "--ctx", "many"],
            &["invalid value \"many\" for --ctx"],
        ),
        (
            &["info", "--model", dir, "--threads", "-2"],
            &["invalid value \"-2\" for --threads"],
        ),
        (
            &[
                "generate",
                "--model",
                dir,
                "--max-tokens",
                "1e3",
                "--prompt",
                "hi",
            ],
            &["invalid value \"1e3\" for --max-tokens"],
        ),
        (
            &["info", "--model", dir, "--ctx", "99999999999999999999999"],
            &["invalid value", "--ctx"],
        ),
        (
            &["info", "--model", dir, "--kv-dtype", "fp8"],
            &[
                "invalid value \"fp8\" for --kv-dtype",
                "expected one of: f32, bf16, f16",
            ],
        ),
        (
            &["serve", "--model", dir, "--kv-dtype", "BF16x"],
            &["invalid value \"BF16x\" for --kv-dtype"],
        ),
        (&["frobnicate"], &["unknown command \"frobnicate\""]),
    ];
    for (args, needles) in cases {
        assert_names(&fails(args, None, &[m.path()]), needles);
    }
}

#[test]
fn bad_constraint_flags() {
    let m = tiny_model(|_| {}, |_| {});
    let dir = m.path().to_str().unwrap();
    let files = Scratch::new("grammars");
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let missing = files.path().join("missing.json");
    let missing = missing.to_str().unwrap();
    let not_json = write("notjson.json", "{type: object");
    let bad_schema = write("bad.json", r#"{"type": "frobnicate"}"#);
    let too_deep = write(
        "deep.json",
        &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
    );
    let bad_lark = write("bad.lark", "start: undefined_rule");
    let gen = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "generate",
            "--model",
            dir,
            "--threads",
            "1",
            "--max-tokens",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("hi".into());
        v
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            gen(&["--json-schema", missing]),
            vec!["--json-schema", "missing.json", "cannot read"],
        ),
        (
            gen(&["--json-schema", &not_json]),
            vec!["--json-schema", "notjson.json", "not JSON"],
        ),
        (
            gen(&["--json-schema", &bad_schema]),
            vec![
                "--json-schema",
                "bad.json",
                "invalid JSON schema",
                "frobnicate",
            ],
        ),
        (
            gen(&["--json-schema", &too_deep]),
            vec!["--json-schema", "deep.json", "nests 100 levels", "64"],
        ),
        (
            gen(&["--regex", "a("]),
            vec!["--regex", "invalid regex", "unclosed group"],
        ),
        (gen(&["--regex", ""]), vec!["--regex", "empty"]),
        (
            gen(&["--grammar", &bad_lark]),
            vec![
                "--grammar",
                "bad.lark",
                "invalid Lark grammar",
                "undefined_rule",
            ],
        ),
        (
            gen(&["--regex", "a", "--json-schema", &bad_schema]),
            vec!["--regex", "--json-schema"],
        ),
    ];
    for (args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_names(&fails(&args, None, &[m.path(), files.path()]), &needles);
    }
}

#[test]
fn out_of_range_sampling_parameters() {
    let m = tiny_model(|_| {}, |_| {});
    let dir = m.path().to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--temperature", "-1"], &["--temperature is -1", ">= 0"]),
        (&["--temperature", "NaN"], &["--temperature is NaN"]),
        (&["--top-p", "1.5"], &["--top-p is 1.5", "(0, 1]"]),
        (&["--top-p", "0"], &["--top-p is 0"]),
        (&["--min-p", "-0.1"], &["--min-p is -0.1"]),
        (&["--repeat-penalty", "0"], &["--repeat-penalty is 0"]),
        (
            &["--frequency-penalty", "2.5"],
            &["--frequency-penalty is 2.5", "between -2 and 2"],
        ),
        (&["--presence-penalty", "-3"], &["--presence-penalty is -3"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["generate", "--model", dir, "--prompt", "hi"];
        args.extend_from_slice(flags);
        assert_names(&fails(&args, None, &[m.path()]), needles);
    }
}

// ---- GGUF ----------------------------------------------------------------------------------

/// Writes `b` as bad.gguf in a scratch directory and converts it into `out` (relative to the
/// fresh working directory, which must stay empty: no half-written output).
fn convert_fails(b: &GgufBuilder) -> String {
    let dir = Scratch::new("gguf");
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b.build()).unwrap();
    fails(
        &["convert", path.to_str().unwrap(), "out"],
        None,
        &[dir.path()],
    )
}

#[test]
fn gguf_with_a_lying_tensor_count() {
    let mut b = qwenrt::testkit::fuzzing::tiny_gguf_builder();
    b.tensor_count_override = Some(1 << 40);
    assert_names(
        &convert_fails(&b),
        &["tensor count 1099511627776", "impossible"],
    );
    // a count only a little too large runs out of bytes mid-table
    let mut b = qwenrt::testkit::fuzzing::tiny_gguf_builder();
    b.tensor_count_override = Some(b.tensors.len() as u64 + 1);
    assert_names(&convert_fails(&b), &["GGUF"]);
}

#[test]
fn gguf_with_an_unknown_tensor_type() {
    let mut b = qwenrt::testkit::fuzzing::tiny_gguf_builder();
    b.tensors[1].type_id = 99;
    let name = b.tensors[1].name.clone();
    assert_names(
        &convert_fails(&b),
        &["bad.gguf: ", &name, "unknown ggml type 99"],
    );
}

#[test]
fn gguf_with_misaligned_data() {
    let mut b = qwenrt::testkit::fuzzing::tiny_gguf_builder();
    b.tensors[2].offset_override = Some(3);
    let name = b.tensors[2].name.clone();
    assert_names(
        &convert_fails(&b),
        &[&name, "data offset 3", "not a multiple of the alignment 32"],
    );
}

#[test]
fn gguf_failing_mid_conversion_leaves_no_output() {
    // a valid file whose Q2_K tensor cannot be dequantized: found after the output directory
    // is made, which must then be removed again
    let b = qwenrt::testkit::fuzzing::tiny_gguf_builder().tensor(
        "blk.0.attn_v.weight",
        &[256],
        GgmlType::Q2K,
        vec![0; GgmlType::Q2K.bytes_for(256).unwrap() as usize],
    );
    assert_names(
        &convert_fails(&b),
        &["\"blk.0.attn_v.weight\" is Q2K", "cannot dequantize"],
    );
}

#[test]
fn threads_past_the_physical_cores_run_with_a_warning() {
    let m = tiny_model(|_| {}, |_| {});
    let info_with_threads = |threads: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args([
                "info",
                "--model",
                m.path().to_str().unwrap(),
                "--threads",
                threads,
            ])
            .env("QWENRT_HOME", m.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "info --threads {threads} failed: {stderr}"
        );
        stderr
    };
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let too_many = (logical + 1).to_string();
    let stderr = info_with_threads(&too_many);
    assert!(
        stderr.contains(&format!("warning: --threads {too_many} is more than the")),
        "no warning: {stderr}"
    );
    // at the physical cores or fewer there is none
    assert!(!info_with_threads("1").contains("warning: --threads"));
}
