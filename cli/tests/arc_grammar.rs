//! ARC answers constrained to grids, on a tiny random model with Qwen2's vocabulary and the real
//! tokenizer (a random model writes no grids by itself, so every grid it writes is the
//! grammar's doing):
//! - the grid grammar, compiled by the constraint compiler, allows exactly the grids of the
//!   prompt's notation, lets an answer end after any complete row, and only the end of turn
//!   after a blank line or the 30th row;
//! - every answer parses as a grid with the grammar, cut by the token limit or not; without it
//!   (`--no-grammar`) the answer is what plain greedy decoding gives, as before;
//! - prompt lookup under a constraint gives exactly constrained greedy decoding, one token a
//!   step, with drafts accepted;
//! - `qwenrt arc` constrains by default, `--no-grammar` does not, and the records and the
//!   summary say which.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use qwenrt::engine::constraint::{Constraint, Grammars};
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{GenerateStats, Session, SessionOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::text::ChatTemplate;
use qwenrt::{Tokenizer, Weights};
use qwenrt_cli::workload::arc::{
    load_tasks, parse_grid, work_items, Split, WorkItem, MAX_GRID_SIDE,
};
use qwenrt_cli::workload::{complete, grid_constraint, prompt_ids, run_arc_item, ArcOptions};
use qwenrt_kernels::Dtype;
use serde_json::Value;

const SHAPE: SyntheticShape = SyntheticShape {
    vocab: 151936,
    hidden: 64,
    ffn: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_positions: 4096,
    tied: true,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The tiny model's directory, with the real tokenizer beside it (for the CLI).
fn model_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qwenrt-arc-grammar-{}", std::process::id()));
        write_synthetic_model(&dir, SHAPE, Dtype::BF16, 11).unwrap();
        std::fs::copy(
            fixtures().join("qwen2.5-coder-0.5b/tokenizer.json"),
            dir.join("tokenizer.json"),
        )
        .unwrap();
        dir
    })
}

fn weights() -> Arc<Weights> {
    static W: OnceLock<Arc<Weights>> = OnceLock::new();
    W.get_or_init(|| Arc::new(Weights::load(model_dir()).unwrap()))
        .clone()
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&model_dir().join("tokenizer.json")).unwrap())
}

fn stop_ids() -> Vec<u32> {
    qwenrt::text::chat::stop_ids(tokenizer(), &weights().config)
}

fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| Grammars::new(tokenizer(), SHAPE.vocab, &stop_ids()).unwrap())
}

/// The grid grammar, compiled once for the whole file.
fn grid() -> &'static Constraint {
    static C: OnceLock<Constraint> = OnceLock::new();
    C.get_or_init(|| grid_constraint(grammars()).unwrap())
}

fn items() -> Vec<WorkItem> {
    let tasks = load_tasks(&fixtures().join("arc"), Split::Eval).unwrap();
    work_items(&tasks)
}

fn session() -> Session {
    let opts = SessionOptions {
        ctx: 2048,
        threads: 2,
        ..Default::default()
    };
    Session::new(weights(), &opts).unwrap()
}

fn template() -> ChatTemplate {
    // the tiny model ships no template: the ChatML fallback
    ChatTemplate::for_model(model_dir(), None).unwrap()
}

fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text).unwrap()
}

/// Feeds `text` to a fresh clone of the grid grammar: how many of its tokens it allows in
/// order, and whether it is complete after them.
fn feed(text: &str) -> (bool, Constraint) {
    let mut c = grid().clone();
    let ids = ids(text);
    if c.valid_prefix(&ids) != ids.len() {
        return (false, c);
    }
    for t in ids {
        c.commit(t).unwrap();
    }
    (true, c)
}

fn grid_text(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| char::from(b'0' + ((r * 3 + c) % 10) as u8))
                .collect()
        })
        .collect::<Vec<String>>()
        .join("\n")
}

#[test]
fn the_grid_grammar_allows_grids_and_their_ends_only() {
    let stop = stop_ids();
    let newline = ids("\n")[0];
    for (rows, cols) in [(1, 1), (3, 5), (2, 30), (30, 4)] {
        let g = grid_text(rows, cols);
        // complete after every complete row: the end of turn is allowed there
        for r in 1..=rows {
            let prefix = grid_text(r, cols);
            let (ok, mut c) = feed(&prefix);
            assert!(ok, "{r} rows of {cols}");
            assert!(c.is_accepting(), "{r} rows of {cols} is a whole grid");
            assert!(stop.iter().all(|&t| c.allows(t)), "{r}x{cols}: no end");
            assert!(c.allows(newline), "{r}x{cols}: no newline");
        }
        // a blank line closes the grid: then only the end of turn
        let (ok, mut c) = feed(&format!("{g}\n\n"));
        assert!(
            ok && c.is_accepting(),
            "{rows}x{cols} closed by a blank line"
        );
        let mask = c.allowed().unwrap();
        let mut allowed: Vec<u32> = (0..SHAPE.vocab as u32)
            .filter(|&t| mask.is_allowed(t))
            .collect();
        allowed.sort();
        let mut want = stop.clone();
        want.sort();
        assert_eq!(allowed, want, "{rows}x{cols} + blank line");
    }
    // inside a row (its width known) the grammar is not complete and allows only digits
    let (ok, mut c) = feed("123\n45");
    assert!(ok && !c.is_accepting());
    let mask = c.allowed().unwrap();
    let allowed: Vec<String> = (0..SHAPE.vocab as u32)
        .filter(|&t| mask.is_allowed(t))
        .map(|t| tokenizer().decode(&[t]).unwrap())
        .collect();
    assert!(
        allowed
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())),
        "{allowed:?}"
    );
    // after the 30th row: no 31st
    let (ok, mut c) = feed(&format!("{}\n", grid_text(MAX_GRID_SIDE, 2)));
    assert!(ok && c.is_accepting());
    assert!(!c.allows(ids("1")[0]));
    // not grids: prose, spaces, fences, ragged rows, a blank line inside, 31 columns
    for bad in [
        "The answer",
        "1 2",
        "```\n12",
        "12\n345",
        "12\n\n34",
        "\n12",
        "12.",
    ] {
        let (ok, mut c) = feed(bad);
        assert!(!ok || !c.is_accepting(), "{bad:?} was allowed");
    }
    assert!(!feed(&grid_text(1, MAX_GRID_SIDE + 1)).0, "31 columns");
    assert!(!feed(&grid_text(MAX_GRID_SIDE + 1, 3)).0, "31 rows");
}

fn arc_opts<'a>(
    max_tokens: usize,
    stop: &'a [u32],
    grid: Option<&'a Constraint>,
) -> ArcOptions<'a> {
    ArcOptions {
        max_tokens,
        stop,
        early_stop: true,
        grid,
    }
}

/// Even a random model's every answer is a grid with the grammar: rectangular, at most 30 by
/// 30, written in the prompt's notation, whether it ended by itself or was cut by the token
/// limit (inside a row or not); with lookup on or off, the same answers.
#[test]
fn every_answer_is_a_grid_with_the_grammar() {
    let stop = stop_ids();
    let template = template();
    let mut s = session();
    let mut drafted = 0;
    let mut accepted = 0;
    for item in &items() {
        for max_tokens in [1, 7, 40, 150] {
            s.set_lookup(0);
            let plain = run_arc_item(
                &mut s,
                tokenizer(),
                &template,
                item,
                &arc_opts(max_tokens, &stop, Some(grid())),
            )
            .unwrap();
            let id = format!("{} with {max_tokens} tokens", item.task_id);
            assert!(plain.grammar, "{id}");
            let g = plain
                .grid
                .as_ref()
                .unwrap_or_else(|| panic!("{id}: no grid"));
            assert!(!g.is_empty() && g.len() <= MAX_GRID_SIDE, "{id}: {g:?}");
            assert!(
                g.iter()
                    .all(|r| r.len() == g[0].len() && r.len() <= MAX_GRID_SIDE),
                "{id}: {g:?}"
            );
            assert!(plain.generated_tokens <= max_tokens, "{id}");
            assert_eq!(plain.correct, Some(g) == item.expected.as_ref(), "{id}");
            println!(
                "{id}: {}x{} grid, {} tokens, {:?}",
                g.len(),
                g[0].len(),
                plain.generated_tokens,
                plain.stop_reason
            );
            // lookup: the same answer
            s.set_lookup(8);
            let lk = run_arc_item(
                &mut s,
                tokenizer(),
                &template,
                item,
                &arc_opts(max_tokens, &stop, Some(grid())),
            )
            .unwrap();
            assert_eq!(lk.grid, plain.grid, "{id}: lookup changed the grid");
            assert_eq!(lk.generated_tokens, plain.generated_tokens, "{id}");
            assert_eq!(lk.stop_reason, plain.stop_reason, "{id}");
            assert_eq!(lk.kv_bytes_used, plain.kv_bytes_used, "{id}");
            drafted += lk.drafted;
            accepted += lk.accepted;
        }
    }
    println!("lookup drafted {drafted}, accepted {accepted}");
    // drafting happens under the grammar (whether the random model agrees is another matter:
    // the test below shows drafts accepted)
    assert!(drafted > 0, "lookup drafted nothing under the grammar");
}

/// Without the grammar an answer is plain greedy decoding, as before `--no-grammar` existed:
/// the same tokens as an unconstrained completion, scored by the same parser.
#[test]
fn no_grammar_keeps_plain_greedy_answers() {
    let stop = stop_ids();
    let template = template();
    let mut s = session();
    s.set_lookup(0);
    let mut grids = 0;
    for item in &items() {
        let free = run_arc_item(
            &mut s,
            tokenizer(),
            &template,
            item,
            &ArcOptions {
                early_stop: false,
                ..arc_opts(48, &stop, None)
            },
        )
        .unwrap();
        assert!(!free.grammar);
        let prompt = prompt_ids(tokenizer(), &template, &item.prompt, false).unwrap();
        let c = complete(
            &mut s,
            tokenizer(),
            &prompt,
            SamplerParams::greedy(),
            48,
            &stop,
        )
        .unwrap();
        assert_eq!(free.generated_tokens, c.ids.len(), "{}", item.task_id);
        assert_eq!(free.grid, parse_grid(&c.text), "{}", item.task_id);
        grids += usize::from(free.grid.is_some());
    }
    // the random model writes no grid by itself: the grammar's grids above are its doing
    assert_eq!(grids, 0);
}

struct Run {
    tokens: Vec<u32>,
    stats: GenerateStats,
    position: usize,
    accepting: bool,
}

/// Prefills `prompt`, attaches `constraint` and generates greedily with drafts of up to
/// `lookup` tokens; `stop_after` makes the callback refuse its n-th token.
fn run(
    s: &mut Session,
    prompt: &[u32],
    constraint: &Constraint,
    lookup: usize,
    max_tokens: usize,
    stop_after: Option<usize>,
) -> Run {
    s.reset();
    s.set_lookup(lookup);
    s.prefill(prompt).unwrap();
    s.set_constraint(Some(constraint.clone()));
    s.set_sampler(SamplerParams::greedy()).unwrap();
    let mut tokens = Vec::new();
    let stats = s
        .generate(max_tokens, &stop_ids(), &mut |t| {
            tokens.push(t);
            Some(tokens.len()) != stop_after
        })
        .unwrap();
    let position = s.position();
    let c = s.constraint_mut().unwrap();
    assert!(c.error().is_none(), "{:?}", c.error());
    Run {
        tokens,
        stats,
        position,
        accepting: c.is_accepting(),
    }
}

/// Prompt lookup under a constraint is constrained greedy decoding: the same tokens, stop
/// reason, unfed token, cache length and grammar state as one token a step, for the grid
/// grammar and a JSON schema, with callbacks that stop inside a verified draft; and drafts
/// are accepted.
#[test]
fn constrained_lookup_equals_constrained_greedy() {
    let template = template();
    let mut s = session();
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "string", "enum": ["0101", "1010"]}}},
        "required": ["rows"]
    });
    let json = grammars().json_schema(&schema).unwrap();
    let mut drafted = 0;
    let mut accepted = 0;
    let items = items();
    let cases: [(&str, &Constraint, &str); 3] = [
        ("grid", grid(), &items[0].prompt),
        ("grid", grid(), &items[2].prompt),
        (
            "json",
            &json,
            "Write {\"rows\": [\"0101\", \"1010\", \"0101\", \"1010\"]} again, longer.",
        ),
    ];
    for (what, c, prompt) in cases {
        let prompt = prompt_ids(tokenizer(), &template, prompt, false).unwrap();
        let plain = run(&mut s, &prompt, c, 0, 120, None);
        assert_eq!(plain.stats.drafted, 0);
        for lookup in [1, 3, 8, 16] {
            let lk = run(&mut s, &prompt, c, lookup, 120, None);
            let id = format!("{what} with lookup {lookup}");
            assert_eq!(lk.tokens, plain.tokens, "{id}: tokens");
            assert_eq!(lk.stats.reason, plain.stats.reason, "{id}: stop reason");
            assert_eq!(lk.stats.unfed, plain.stats.unfed, "{id}: unfed token");
            assert_eq!(lk.position, plain.position, "{id}: cache length");
            assert_eq!(lk.accepting, plain.accepting, "{id}: grammar state");
            drafted += lk.stats.drafted;
            accepted += lk.stats.accepted;
            // stopping at every point of the answer, inside verified drafts too
            for stop_after in (1..plain.tokens.len()).step_by(7) {
                let cut = run(&mut s, &prompt, c, lookup, 120, Some(stop_after));
                let cut_plain = run(&mut s, &prompt, c, 0, 120, Some(stop_after));
                assert_eq!(
                    cut.tokens, cut_plain.tokens,
                    "{id}, stop after {stop_after}"
                );
                assert_eq!(
                    cut.position, cut_plain.position,
                    "{id}, stop after {stop_after}"
                );
                assert_eq!(
                    cut.stats.unfed, cut_plain.stats.unfed,
                    "{id}, stop after {stop_after}"
                );
            }
        }
        println!("{what}: {:?}", tokenizer().decode(&plain.tokens).unwrap());
    }
    println!("lookup drafted {drafted}, accepted {accepted}");
    assert!(
        accepted > 0,
        "no drafted token was accepted (drafted {drafted})"
    );
}

fn arc_cli(extra: &[&str]) -> (Vec<Value>, String) {
    let out = std::env::temp_dir().join(format!(
        "qwenrt-arc-grammar-{}-{}.jsonl",
        std::process::id(),
        extra.len()
    ));
    let res = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(["arc", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(fixtures().join("arc"))
        .args(["--max-tokens", "24", "--threads", "2", "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(
        res.status.success(),
        "qwenrt arc {extra:?} failed: {stderr}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (records, stderr)
}

#[test]
fn arc_command_constrains_by_default_and_says_so() {
    let (records, stderr) = arc_cli(&[]);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["grammar"], true, "{r}");
        assert!(r["grid"].is_array(), "no grid: {r}");
    }
    assert!(
        stderr.contains("3 of 3 answers parse as a grid (grid grammar on)"),
        "{stderr}"
    );
    let (records, stderr) = arc_cli(&["--no-grammar"]);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["grammar"], false, "{r}");
    }
    assert!(stderr.contains("(grid grammar off)"), "{stderr}");
}
