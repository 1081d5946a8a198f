//! `qwenrt generate`: one prompt in, its completion streamed to stdout, stats on stderr.

use std::io::{Read, Write};
use std::time::Instant;

use clap::Args;
use qwenrt::engine::session::{Session, StopReason};
use qwenrt::text::chat::stop_ids;

use super::constrain::ConstraintArgs;
use super::{
    load_tokenizer, load_weights, ChatTemplateArg, CliError, LookupArg, ModelArg, RunArgs,
    SamplingArgs,
};

/// `qwenrt generate`.
#[derive(Args, Debug)]
#[command(
    after_help = "Without --raw the prompt is the user message of a conversation rendered by \
the model's chat template (or --chat-template-file), after the --system message if one is \
given. With --json, one JSON object with the prompt ids, the \
generated ids and text, and the stats is printed instead of the streamed text. --json-schema, \
--regex, --grammar (Lark) and --gbnf (llama.cpp's GBNF) constrain the answer (the generated \
text, after the template) by masking every token the grammar forbids; generation ends when the grammar is complete and the model \
ends its turn, or at --max-tokens."
)]
pub struct GenerateArgs {
    /// The prompt (or --prompt; without either, stdin is read to its end)
    #[arg(value_name = "PROMPT", allow_negative_numbers = true)]
    positional: Option<String>,
    /// The prompt
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// Feed the prompt as is, without the chat template
    #[arg(long)]
    raw: bool,
    /// The system message [default: none, so a template such as Qwen2.5's adds its own]
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Generate at most N tokens
    #[arg(
        long,
        value_name = "N",
        default_value_t = 512,
        allow_negative_numbers = true
    )]
    max_tokens: usize,
    /// Print one JSON object instead of streaming the text
    #[arg(long)]
    json: bool,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    chat_template: ChatTemplateArg,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    lookup: LookupArg,
    #[command(flatten)]
    constraint: ConstraintArgs,
}

/// The prompt text: `--prompt`, a positional argument, or stdin (which must be UTF-8).
fn read_prompt(a: &GenerateArgs) -> Result<String, CliError> {
    let text = if let Some(p) = &a.prompt {
        p.clone()
    } else if let Some(p) = &a.positional {
        p.clone()
    } else {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::fail(format!("cannot read the prompt from stdin: {e}")))?;
        String::from_utf8(bytes).map_err(|e| {
            CliError::fail(format!(
                "the prompt on stdin is not valid UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?
    };
    if text.trim().is_empty() {
        return Err(CliError::usage("the prompt is empty"));
    }
    Ok(text)
}

/// Runs `qwenrt generate`.
pub fn run(a: GenerateArgs) -> Result<(), CliError> {
    let params = a.sampling.params()?;
    let max_tokens = a.max_tokens;
    let prompt = read_prompt(&a)?;
    a.constraint.precheck()?;
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let text = if a.raw {
        prompt
    } else {
        a.chat_template
            .load(&dir)?
            .render_turn(a.system.as_deref(), &prompt)
            .map_err(CliError::fail)?
    };
    let prompt_ids = tok.encode(&text).map_err(CliError::fail)?;
    if prompt_ids.is_empty() {
        return Err(CliError::usage("the prompt encodes to no tokens"));
    }
    let opts = a.run.session_options(&weights, 4096, a.prefill_f32);
    if prompt_ids.len() >= opts.ctx {
        return Err(CliError::fail(format!(
            "the prompt is {} tokens, which does not fit in --ctx {} (leave room to generate)",
            prompt_ids.len(),
            opts.ctx
        )));
    }
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    a.lookup.apply(&mut session);
    session
        .set_sampler(params)
        .map_err(|e| CliError::usage(e.to_string()))?;
    for &t in &prompt_ids {
        session.sampler_mut().observe(t);
    }
    let stop = stop_ids(&tok, &weights.config);
    let json = a.json;
    let constraint = a.constraint.build(&tok, &weights)?.map(|(_, c)| c);

    let t0 = Instant::now();
    session.prefill(&prompt_ids).map_err(CliError::fail)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    // the grammar governs the answer: it starts at the first sampled token
    let constraint_kind = constraint.as_ref().map(|c| c.kind());
    session.set_constraint(constraint);

    let mut ids = Vec::with_capacity(max_tokens);
    let mut stream = tok.stream_decoder();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let stats = session
        .generate(max_tokens, &stop, &mut |t| {
            ids.push(t);
            if !json {
                let piece = stream.push(t);
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_err = Some(e);
                    return false;
                }
            }
            true
        })
        .map_err(CliError::fail)?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CliError::fail(format!("cannot write to stdout: {e}")));
        }
    }
    let text = tok.decode(&ids).map_err(CliError::fail)?;
    let decode_s = stats.elapsed.as_secs_f64();
    let prefill_tps = prompt_ids.len() as f64 / prefill_s.max(1e-9);
    // tokens the decode steps produced: one per step plus the drafted tokens they accepted
    let decode_tps = if stats.steps > 0 {
        (stats.steps + stats.accepted) as f64 / decode_s.max(1e-9)
    } else {
        0.0
    };
    let arena = session.memory_plan().total_bytes();
    // (complete, masks, seconds masking) of the constraint, if there was one
    let constraint = session.set_constraint(None).map(|mut c| {
        let (masks, t) = c.mask_stats();
        (c.is_accepting(), c.error(), masks, t.as_secs_f64())
    });
    if let Some((complete, error, _, _)) = &constraint {
        if let Some(e) = error {
            eprintln!("warning: the constraint failed: {e}");
        } else if !complete {
            eprintln!(
                "warning: the answer stopped ({}) before the {} was complete",
                match stats.reason {
                    StopReason::MaxTokens => "at --max-tokens",
                    StopReason::ContextFull => "with the context full",
                    _ => "early",
                },
                constraint_kind.unwrap_or("grammar")
            );
        }
    }
    let stop_reason = match stats.reason {
        StopReason::StopToken(_) => "stop_token",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Callback => "callback",
        StopReason::ContextFull => "context_full",
    };
    if json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": ids,
            "text": text,
            "stats": {
                "prompt_tokens": prompt_ids.len(),
                "generated_tokens": ids.len(),
                "prefill_seconds": prefill_s,
                "prefill_tokens_per_second": prefill_tps,
                "decode_seconds": decode_s,
                "decode_tokens_per_second": decode_tps,
                "arena_bytes": arena,
                "threads": session.threads(),
                "isa": session.isa().to_string(),
                "stop_reason": stop_reason,
                "lookup": session.lookup(),
                "drafted_tokens": stats.drafted,
                "accepted_tokens": stats.accepted,
                "decode_steps": stats.steps,
                "constraint": constraint.as_ref().map(|(complete, error, masks, secs)| serde_json::json!({
                    "kind": constraint_kind,
                    "complete": complete,
                    "error": error,
                    "masks": masks,
                    "mask_seconds": secs,
                    "mask_ms_per_token": if *masks > 0 { 1e3 * secs / *masks as f64 } else { 0.0 },
                })),
            }
        });
        writeln!(out, "{v}").map_err(CliError::fail)?;
    } else {
        let tail = stream.finish();
        let _ = writeln!(out, "{tail}");
    }
    let masking = match &constraint {
        Some((_, _, masks, secs)) if *masks > 0 => format!(
            " | {}: {:.3} ms mask/token",
            constraint_kind.unwrap_or("constraint"),
            1e3 * secs / *masks as f64
        ),
        _ => String::new(),
    };
    eprintln!(
        "prompt tokens: {} | prefill: {:.1} t/s | decode: {:.1} t/s ({} tokens, {stop_reason}) | lookup: {} drafted, {} accepted{masking} | arena: {:.1} MiB | threads: {} | isa: {}",
        prompt_ids.len(),
        prefill_tps,
        decode_tps,
        ids.len(),
        stats.drafted,
        stats.accepted,
        arena as f64 / (1 << 20) as f64,
        session.threads(),
        session.isa()
    );
    Ok(())
}
