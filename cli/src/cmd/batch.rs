//! `qwenrt batch`: the prompts of a JSONL file on one session, one output record per input
//! line in input order; a bad line becomes that line's error record, not the end of the run.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use qwenrt::engine::session::Session;
use qwenrt::text::chat::stop_ids;
use qwenrt_cli::workload::batch::{parse_batch, BatchRecord};
use qwenrt_cli::workload::run_batch_request;

use super::{
    load_tokenizer, load_weights, progress, record_sink, ChatTemplateArg, CliError, LookupArg,
    ModelArg, RunArgs,
};

/// `qwenrt batch`.
#[derive(Args, Debug)]
#[command(
    after_help = "Each input line: {\"id\": any, \"prompt\": \"...\", \"max_tokens\": N, \
\"temperature\": T, \"raw\": bool}; only prompt is required (max_tokens 256, temperature 0: \
greedy). Each output line: {\"id\", \"text\", \"ids\", \"stats\"} or {\"id\", \"line\", \"error\"}."
)]
pub struct BatchArgs {
    /// The JSONL file of requests
    #[arg(long, value_name = "prompts.jsonl", required = true)]
    input: Option<PathBuf>,
    /// Write the records to FILE instead of stdout
    #[arg(long, value_name = "results.jsonl")]
    out: Option<PathBuf>,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    chat_template: ChatTemplateArg,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    lookup: LookupArg,
}

/// Runs `qwenrt batch`.
pub fn run(a: BatchArgs) -> Result<(), CliError> {
    let input = a
        .input
        .as_deref()
        .ok_or_else(|| CliError::usage("batch needs --input prompts.jsonl"))?;
    let shown = input.display();
    let bytes =
        std::fs::read(input).map_err(|e| CliError::fail(format!("cannot read {shown}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError::fail(format!(
            "{shown} is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let requests = parse_batch(&text);
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let template = a.chat_template.load(&dir)?;
    let stop = stop_ids(&tok, &weights.config);
    let opts = a.run.session_options(&weights, 4096, a.prefill_f32);
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    a.lookup.apply(&mut session);
    let mut sink = record_sink(a.out.as_deref())?;
    let (mut ok, mut failed) = (0, 0);
    let bar = progress::items(requests.len() as u64, "requests");
    for req in &requests {
        let record = match req {
            Ok(req) => run_batch_request(&mut session, &tok, &template, req, &stop),
            Err(e) => BatchRecord::Err(e.clone()),
        };
        match record {
            BatchRecord::Ok(_) => ok += 1,
            BatchRecord::Err(_) => failed += 1,
        }
        writeln!(sink, "{}", record.to_json_line()).map_err(CliError::fail)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    sink.flush().map_err(CliError::fail)?;
    eprintln!(
        "batch: {} requests, {ok} completed, {failed} failed",
        requests.len()
    );
    Ok(())
}
