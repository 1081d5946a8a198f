//! How the default prompt-lookup setting was chosen: replay greedy traces under each drafting
//! policy with a measured step-cost model.
//!
//! Greedy output does not depend on drafting, so which drafts are accepted is fixed by the
//! plain greedy trace: at each step the draft is [`lookup::draft`] over the text so far, and
//! the accepted prefix is where it agrees with the trace. Only the time differs, and a step of
//! `r` decode rows costs `a + b * r` (fitted from `qwenrt bench --verify 1,2,4,8` on the same
//! model). So one plain run per prompt scores every policy and draft limit exactly, free of
//! the run-to-run noise of timing each one.
//!
//! ```sh
//! # 1. traces: plain greedy decoding of the ARC eval tasks and the code-edit prompt
//! cargo run --release --example lookup_policy -- trace MODEL.gguf ARC_JSON_OR_DIR 10 300 traces.json
//! # 2. score: step cost a + b*rows in ms (from bench --verify)
//! cargo run --release --example lookup_policy -- score traces.json 9.0 4.4
//! ```

use std::sync::Arc;

use qwenrt::engine::lookup::{self, DraftBudget};
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::weights::Weights;
use qwenrt::text::chat::stop_ids;
use qwenrt::text::tokenizer::Tokenizer;
use qwenrt_cli::workload::{arc, prompt_ids};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("trace") if args.len() == 6 => trace(&args[1..]),
        Some("score") if args.len() == 4 => score(&args[1], args[2].parse()?, args[3].parse()?),
        _ => Err(
            "usage: lookup_policy trace MODEL DATA LIMIT MAX_TOKENS OUT | score TRACES A_MS B_MS"
                .into(),
        ),
    }
}

/// One plain greedy run: the prompt and the tokens generated after it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Trace {
    name: String,
    prompt: Vec<u32>,
    output: Vec<u32>,
}

fn trace(a: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let model = std::path::Path::new(&a[0]);
    let weights = Arc::new(Weights::load(model)?);
    let tok = Tokenizer::from_gguf(model)?;
    let template = qwenrt::text::ChatTemplate::for_model(model, None)?;
    let stop = stop_ids(&tok, &weights.config);
    let tasks = arc::load_tasks(std::path::Path::new(&a[1]), arc::Split::Eval)?;
    let tasks = arc::select_tasks(tasks, None, Some(a[2].parse()?))?;
    let max_tokens: usize = a[3].parse()?;
    let mut prompts: Vec<(String, Vec<u32>)> = Vec::new();
    for item in arc::work_items(&tasks) {
        prompts.push((
            item.task_id.clone(),
            prompt_ids(&tok, &template, &item.prompt, false)?,
        ));
    }
    let code = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/prompts/code_edit.txt"),
    )?;
    prompts.push((
        "code_edit".into(),
        prompt_ids(&tok, &template, &code, false)?,
    ));
    let longest = prompts.iter().map(|p| p.1.len()).max().unwrap_or(0);
    let opts = SessionOptions {
        ctx: longest + max_tokens + 1,
        threads: 2,
        ..Default::default()
    };
    let mut s = Session::new(weights, &opts)?;
    let mut traces = Vec::new();
    for (name, prompt) in prompts {
        s.reset();
        s.set_lookup(0);
        s.prefill(&prompt)?;
        s.set_sampler(SamplerParams::greedy())?;
        let mut output = Vec::new();
        s.generate(max_tokens, &stop, &mut |t| {
            output.push(t);
            true
        })?;
        eprintln!(
            "{name}: {} prompt tokens, {} generated",
            prompt.len(),
            output.len()
        );
        traces.push(Trace {
            name,
            prompt,
            output,
        });
    }
    std::fs::write(&a[4], serde_json::to_string(&traces)?)?;
    Ok(())
}

/// Replays `t` with drafts limited by `budget`: (steps, rows fed, drafted, accepted).
fn replay(t: &Trace, mut budget: DraftBudget) -> (usize, usize, usize, usize) {
    let mut ctx = t.prompt.clone();
    let (mut steps, mut rows, mut drafted, mut accepted) = (0, 0, 0, 0);
    // ctx holds the prompt and output[..i]; output[i - 1] is the newest, unfed token
    let mut i = 1;
    let mut draft = [0u32; lookup::MAX_DRAFT];
    while i < t.output.len() {
        let room = t.output.len() - i;
        let cap = budget.take().min(room);
        let last = t.output[i - 1];
        let k = lookup::draft(&ctx, last, &mut draft[..cap]);
        let agree = (0..k).take_while(|&j| draft[j] == t.output[i + j]).count();
        if k > 0 {
            budget.verified(k, agree);
        }
        steps += 1;
        rows += k + 1;
        drafted += k;
        accepted += agree;
        ctx.push(last);
        ctx.extend_from_slice(&t.output[i..i + agree]);
        i += agree + 1;
    }
    (steps, rows, drafted, accepted)
}

fn score(path: &str, a_ms: f64, b_ms: f64) -> Result<(), Box<dyn std::error::Error>> {
    let traces: Vec<Trace> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let cost = |steps: usize, rows: usize| steps as f64 * a_ms + rows as f64 * b_ms;
    println!("speedup of decode time over plain decoding (step cost {a_ms} + {b_ms} * rows ms)");
    print!("{:<10}", "policy");
    for t in &traces {
        print!(" {:>9}", &t.name[..t.name.len().min(9)]);
    }
    println!(" {:>9} {:>9}", "arc total", "drafted/acc");
    for adaptive in [false, true] {
        for n in [1, 2, 3, 4, 6, 8, 12, 16] {
            let label = format!("{}{n}", if adaptive { "adapt " } else { "fixed " });
            print!("{label:<10}");
            let (mut arc_plain, mut arc_look, mut d, mut acc) = (0.0, 0.0, 0, 0);
            for t in &traces {
                let budget = if adaptive {
                    DraftBudget::new(n)
                } else {
                    DraftBudget::fixed(n)
                };
                let (steps, rows, dr, ac) = replay(t, budget);
                // plain decoding: one step per token after the first (prefill gives that)
                let n = t.output.len().saturating_sub(1);
                let plain = cost(n, n);
                let look = cost(steps, rows);
                print!(" {:>9.2}", plain / look);
                if t.name != "code_edit" {
                    arc_plain += plain;
                    arc_look += look;
                    d += dr;
                    acc += ac;
                }
            }
            println!(" {:>9.2} {d:>5}/{acc}", arc_plain / arc_look);
        }
    }
    Ok(())
}
