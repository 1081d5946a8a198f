//! `qwenrt chat`: a conversation on one session, one user message per line of stdin. Each
//! turn the whole conversation is rendered by the model's chat template; the cache keeps the
//! tokens it shares with the new prompt and only the rest is processed. A full context ends
//! the chat with a message.

use std::io::{IsTerminal, Write};

use clap::Args;
use qwenrt::engine::session::{Session, StopReason};
use qwenrt::text::chat::stop_ids;
use qwenrt_cli::workload::conversation::{feed_reusing, Conversation};

use super::{
    load_tokenizer, load_weights, ChatTemplateArg, CliError, LookupArg, ModelArg, RunArgs,
    SamplingArgs,
};

/// `qwenrt chat`.
#[derive(Args, Debug)]
#[command(
    after_help = "On a terminal an empty line or Ctrl-D ends the chat; from a pipe every \
non-empty line is one turn, until the end of the input. The conversation is rendered by the \
model's chat template (or --chat-template-file)."
)]
pub struct ChatArgs {
    /// The system message [default: none, so a template such as Qwen2.5's adds its own]
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
    chat_template: ChatTemplateArg,
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
    let template = a.chat_template.load(&dir)?;
    let opts = a.run.session_options(&weights, 8192, a.prefill_f32);
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    a.lookup.apply(&mut session);
    session
        .set_sampler(params)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let stop = stop_ids(&tok, &weights.config);
    let mut conversation = Conversation::new(a.system.as_deref());
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "qwenrt chat: context {} tokens; empty line or Ctrl-D to quit",
            session.ctx()
        );
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut reply = Vec::new();
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
        conversation.push("user", user);
        let ids = conversation
            .prompt_ids(&template, &tok)
            .map_err(CliError::fail)?;
        if ids.len() + 1 > session.ctx() {
            eprintln!(
                "[context full: the conversation is {} tokens with this turn, the context holds {}; start a new chat]",
                ids.len() + 1,
                session.ctx()
            );
            break;
        }
        let reused = feed_reusing(&mut session, &ids).map_err(CliError::fail)?;
        for &t in &ids[reused..] {
            session.sampler_mut().observe(t);
        }
        // each reply is its own completion for the frequency and presence penalties
        session.sampler_mut().clear_generated();
        let mut stream = tok.stream_decoder();
        let mut out = std::io::stdout().lock();
        reply.clear();
        let stats = session
            .generate(max_tokens, &stop, &mut |t| {
                reply.push(t);
                let _ = out.write_all(stream.push(t).as_bytes());
                let _ = out.flush();
                true
            })
            .map_err(CliError::fail)?;
        let _ = writeln!(out, "{}", stream.finish());
        // the reply joins the conversation as text; the next render closes its turn, and the
        // cache keeps whatever of it the new prompt shares
        conversation.push("assistant", &tok.decode(&reply).map_err(CliError::fail)?);
        if stats.reason == StopReason::ContextFull {
            eprintln!(
                "[context full after {} tokens; start a new chat]",
                session.ctx()
            );
            break;
        }
    }
    Ok(())
}
