//! `qwenrt chat`: a conversation on one session, one user message per line of stdin; the
//! cache keeps every turn, and a full context ends the chat with a message.

use std::io::{IsTerminal, Write};

use clap::Args;
use qwenrt::engine::sampler::Sampler;
use qwenrt::engine::session::{Session, StopReason};
use qwenrt::text::chat;
use qwenrt::workload::stop_ids;

use super::{load_tokenizer, load_weights, CliError, LookupArg, ModelArg, RunArgs, SamplingArgs};

/// `qwenrt chat`.
#[derive(Args, Debug)]
#[command(
    after_help = "On a terminal an empty line or Ctrl-D ends the chat; from a pipe every \
non-empty line is one turn, until the end of the input."
)]
pub struct ChatArgs {
    /// The system prompt [default: Qwen's]
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Generate at most N tokens per reply
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        allow_negative_numbers = true
    )]
    max_tokens: usize,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    lookup: LookupArg,
}

/// Runs `qwenrt chat`.
pub fn run(a: ChatArgs) -> Result<(), CliError> {
    let params = a.sampling.params()?;
    let max_tokens = a.max_tokens;
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let opts = a.run.session_options(&weights, 8192, a.prefill_f32);
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    a.lookup.apply(&mut session);
    let mut sampler = Sampler::new(params).map_err(|e| CliError::usage(e.to_string()))?;
    let stop = stop_ids(&tok, &weights);
    let system = a
        .system
        .as_deref()
        .unwrap_or(chat::DEFAULT_SYSTEM_PROMPT)
        .to_string();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "qwenrt chat: context {} tokens; empty line or Ctrl-D to quit",
            session.ctx()
        );
    }
    let mut pending: Option<u32> = None;
    let mut first = true;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush().ok();
        }
        line.clear();
        if stdin
            .read_line(&mut line)
            .map_err(|e| CliError::fail(format!("cannot read stdin: {e}")))?
            == 0
        {
            break;
        }
        let user = line.trim_end_matches(['\n', '\r']);
        if user.trim().is_empty() {
            if interactive {
                break;
            }
            continue;
        }
        let text = if first {
            chat::first_turn(&system, user)
        } else {
            chat::next_turn(user)
        };
        let mut ids = Vec::new();
        if let Some(p) = pending.take() {
            ids.push(p); // the previous reply's end token, not yet in the cache
        }
        ids.extend(tok.encode(&text).map_err(CliError::fail)?);
        let room = session.ctx() - session.position();
        if ids.len() + 1 > room {
            eprintln!(
                "[context full: this turn needs {} tokens but only {room} of {} are left; start a new chat]",
                ids.len() + 1,
                session.ctx()
            );
            break;
        }
        for &t in &ids {
            sampler.observe(t);
        }
        // each reply is its own completion for the frequency and presence penalties
        sampler.clear_generated();
        session.prefill(&ids).map_err(CliError::fail)?;
        first = false;
        let mut stream = tok.stream_decoder();
        let mut out = std::io::stdout().lock();
        let stats = session
            .generate(&mut sampler, max_tokens, &stop, &mut |t| {
                let _ = out.write_all(stream.push(t).as_bytes());
                let _ = out.flush();
                true
            })
            .map_err(CliError::fail)?;
        let _ = writeln!(out, "{}", stream.finish());
        pending = stats.unfed;
        match stats.reason {
            StopReason::StopToken(_) => {}
            StopReason::ContextFull => {
                eprintln!(
                    "[context full after {} tokens; start a new chat]",
                    session.ctx()
                );
                break;
            }
            _ => {
                // the reply was cut short: close the turn so the transcript stays well formed
                if let Some(end) = tok.token_id(chat::IM_END) {
                    if let Some(p) = pending.take() {
                        if session.ctx() - session.position() < 2 {
                            eprintln!("[context full; start a new chat]");
                            break;
                        }
                        session.prefill(&[p]).map_err(CliError::fail)?;
                    }
                    pending = Some(end);
                }
            }
        }
    }
    Ok(())
}
