//! ARC end to end on the real model: three small tasks from `tests/fixtures/arc`, run on one
//! session (library) and through `qwenrt arc` (CLI). One well-formed record per test input;
//! the arena's address and size are the same before and after the run; with the grid grammar
//! every answer is a grid, with or without prompt lookup.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::weights::Weights;
use qwenrt::text::chat::stop_ids;
use qwenrt::text::tokenizer::Tokenizer;
use qwenrt_cli::workload::arc::{load_tasks, work_items, Split};
use qwenrt_cli::workload::ArcOptions;

/// Options for answers without the grid grammar (as `--no-grammar`).
fn free(max_tokens: usize, stop: &[u32], early_stop: bool) -> ArcOptions<'_> {
    ArcOptions {
        max_tokens,
        stop,
        early_stop,
        grid: None,
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arc")
}

#[test]
fn one_session_serves_every_task_without_moving_its_arena() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).unwrap();
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let template = qwenrt::text::ChatTemplate::for_model(&dir, None).unwrap();
    let tasks = load_tasks(&fixtures(), Split::Eval).unwrap();
    assert_eq!(tasks.len(), 3);
    let items = work_items(&tasks);
    let stop = stop_ids(&tok, &weights.config);
    let opts = SessionOptions {
        ctx: 512,
        threads: 2,
        ..Default::default()
    };
    let mut session = Session::new(weights, &opts).unwrap();
    let before = session.arena_address();
    for item in &items {
        let r = qwenrt_cli::workload::run_arc_item(
            &mut session,
            &tok,
            &template,
            item,
            &free(48, &stop, false),
        )
        .unwrap();
        assert_eq!(r.task_id, item.task_id);
        assert_eq!(r.test_index, item.test_index);
        assert!(r.skipped.is_none(), "{}: skipped", r.task_id);
        assert!(
            r.prompt_tokens > 50,
            "{}: prompt_tokens {}",
            r.task_id,
            r.prompt_tokens
        );
        assert!(r.generated_tokens >= 1 && r.generated_tokens <= 48);
        assert!(r.prefill_tps > 0.0 && r.ttft_ms > 0.0);
        assert_eq!(r.arena_bytes as usize, before.1);
        assert!(r.kv_bytes_used > 0 && (r.kv_bytes_used as usize) < before.1);
        if let Some(g) = &r.grid {
            assert!(!g.is_empty() && g.iter().all(|row| row.len() == g[0].len()));
            assert_eq!(r.correct, Some(g) == item.expected.as_ref());
        } else {
            assert!(!r.correct);
        }
        assert_eq!(session.arena_address(), before, "the arena moved");
    }
    // a prompt that does not fit is a skipped record with its token count, not an error
    let small = Session::new(
        session.weights().clone(),
        &SessionOptions {
            ctx: 64,
            threads: 1,
            ..Default::default()
        },
    );
    let mut small = small.unwrap();
    let r = qwenrt_cli::workload::run_arc_item(
        &mut small,
        &tok,
        &template,
        &items[0],
        &free(8, &stop, true),
    )
    .unwrap();
    let reason = r
        .skipped
        .expect("a prompt longer than the context is skipped");
    assert!(
        reason.contains(&r.prompt_tokens.to_string()) && reason.contains("64"),
        "{reason}"
    );
}

#[test]
fn arc_command_writes_one_record_per_test_input() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).unwrap();
    let out = std::env::temp_dir().join(format!("qwenrt-arc-e2e-{}.jsonl", std::process::id()));
    let res = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(["arc", "--model"])
        .arg(&dir)
        .arg("--data")
        .arg(fixtures())
        .args(["--max-tokens", "32", "--threads", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "qwenrt arc failed: {stderr}");
    assert!(
        stderr.contains("ARC: 3 tasks, 3 test inputs"),
        "summary missing: {stderr}"
    );
    assert!(
        stderr.contains("peak RSS") && stderr.contains("arena"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["00576224", "66e6c45b", "be03b35f"]);
    for l in &lines {
        for key in [
            "prompt_tokens",
            "generated_tokens",
            "ttft_ms",
            "prefill_tps",
            "decode_tps",
            "kv_bytes_used",
            "arena_bytes",
            "grid",
            "correct",
            "stop_reason",
            "drafted",
            "accepted",
        ] {
            assert!(l.get(key).is_some(), "record lacks {key}: {l}");
        }
        assert!(l["prompt_tokens"].as_u64().unwrap() > 50);
        assert!(l["correct"].is_boolean());
    }
    // one arena for the run: every record reports the same size
    assert!(lines
        .iter()
        .all(|l| l["arena_bytes"] == lines[0]["arena_bytes"]));
}

/// Early stop ends an answer after its first complete grid without changing the grid that is
/// scored; prompt lookup (on by default for this greedy decoding) leaves the tokens unchanged.
#[test]
fn early_stop_and_lookup_keep_every_grid() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).unwrap();
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let template = qwenrt::text::ChatTemplate::for_model(&dir, None).unwrap();
    let tasks = load_tasks(&fixtures(), Split::Eval).unwrap();
    let items = work_items(&tasks);
    let stop = stop_ids(&tok, &weights.config);
    let opts = SessionOptions {
        ctx: 768,
        threads: 2,
        ..Default::default()
    };
    let mut session = Session::new(weights, &opts).unwrap();
    for item in &items {
        session.set_lookup(0);
        let full = qwenrt_cli::workload::run_arc_item(
            &mut session,
            &tok,
            &template,
            item,
            &free(160, &stop, false),
        )
        .unwrap();
        session.set_lookup(8);
        let early = qwenrt_cli::workload::run_arc_item(
            &mut session,
            &tok,
            &template,
            item,
            &free(160, &stop, true),
        )
        .unwrap();
        let id = &item.task_id;
        assert_eq!(full.drafted, 0, "{id}");
        assert_eq!(early.grid, full.grid, "{id}: the scored grid changed");
        assert_eq!(early.correct, full.correct, "{id}");
        assert!(early.generated_tokens <= full.generated_tokens, "{id}");
        match early.stop_reason.as_deref() {
            Some("grid") => assert!(early.grid.is_some(), "{id}: stopped at a grid it lacks"),
            other => assert_eq!(other, full.stop_reason.as_deref(), "{id}"),
        }
        println!(
            "{id}: {} tokens without early stop ({:?}), {} with ({:?}); lookup drafted {} accepted {}",
            full.generated_tokens,
            full.stop_reason,
            early.generated_tokens,
            early.stop_reason,
            early.drafted,
            early.accepted
        );
    }
}

/// With the grid grammar the real model's every answer is a grid, and prompt lookup (which
/// drafts under the grammar) leaves each answer token for token as it is without lookup.
#[test]
fn grid_grammar_answers_are_grids_with_and_without_lookup() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).unwrap();
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let template = qwenrt::text::ChatTemplate::for_model(&dir, None).unwrap();
    let items = work_items(&load_tasks(&fixtures(), Split::Eval).unwrap());
    let stop = stop_ids(&tok, &weights.config);
    let grammars =
        qwenrt::engine::constraint::Grammars::new(&tok, weights.config.vocab_size, &stop).unwrap();
    let grid = qwenrt_cli::workload::grid_constraint(&grammars).unwrap();
    let opts = SessionOptions {
        ctx: 768,
        threads: 2,
        ..Default::default()
    };
    let mut session = Session::new(weights, &opts).unwrap();
    let arc_opts = ArcOptions {
        grid: Some(&grid),
        ..free(160, &stop, true)
    };
    for item in &items {
        let id = &item.task_id;
        session.set_lookup(0);
        let plain =
            qwenrt_cli::workload::run_arc_item(&mut session, &tok, &template, item, &arc_opts)
                .unwrap();
        session.set_lookup(8);
        let lk = qwenrt_cli::workload::run_arc_item(&mut session, &tok, &template, item, &arc_opts)
            .unwrap();
        assert!(plain.grammar && lk.grammar, "{id}");
        let g = plain
            .grid
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: no grid"));
        assert!(g.iter().all(|row| row.len() == g[0].len()), "{id}");
        assert_eq!(plain.correct, Some(g) == item.expected.as_ref(), "{id}");
        assert_eq!(lk.grid, plain.grid, "{id}: lookup changed the grid");
        assert_eq!(lk.generated_tokens, plain.generated_tokens, "{id}");
        assert_eq!(lk.stop_reason, plain.stop_reason, "{id}");
        println!(
            "{id}: {}x{} grid (correct {}), {} tokens ({:?}); lookup drafted {} accepted {}",
            g.len(),
            g[0].len(),
            plain.correct,
            plain.generated_tokens,
            plain.stop_reason,
            lk.drafted,
            lk.accepted
        );
    }
}
