//! Whole requests on one session: a prompt in, a completion out. `qwenrt arc` and
//! `qwenrt batch` run many of them on one session whose arena is sized once and only reset
//! between requests.

use std::time::Instant;

use super::arc::{grid_regex, score, GridStop, TaskRecord, WorkItem};
use super::batch::{BatchLineError, BatchRecord, BatchRequest, BatchResult, BatchStats};
use qwenrt::engine::constraint::{Constraint, ConstraintError, Grammars};
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionError, StopReason};
use qwenrt::text::template::{ChatTemplate, TemplateError};
use qwenrt::text::tokenizer::Tokenizer;

/// One finished request.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Generated ids, the stop token excluded.
    pub ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Seconds from the start of the prefill to the first sampled token.
    pub ttft_s: f64,
    /// Seconds the prefill took.
    pub prefill_s: f64,
    /// Seconds the decode steps took.
    pub decode_s: f64,
    /// Decode steps (forward passes after the prefill).
    pub steps: usize,
    /// Why generation stopped.
    pub reason: StopReason,
    /// Tokens drafted by prompt lookup, and how many of them were accepted.
    pub drafted: usize,
    /// Drafted tokens greedy decoding agreed with.
    pub accepted: usize,
}

impl Completion {
    /// Prefill tokens per second.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s.max(1e-9)
    }
    /// Decode tokens per second (0 without decode steps): the tokens the decode steps
    /// produced (each step one, plus the drafted tokens it accepted) over their time.
    pub fn decode_tps(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            (self.steps + self.accepted) as f64 / self.decode_s.max(1e-9)
        }
    }
}

/// Why a request could not run.
#[derive(Debug)]
pub enum RequestError {
    /// The prompt leaves no room to generate in the context.
    TooLong {
        /// The prompt's length in tokens.
        prompt_tokens: usize,
        /// The session's context length.
        ctx: usize,
    },
    /// The tokenizer failed.
    Tokenizer(String),
    /// The chat template failed.
    Template(TemplateError),
    /// The session failed.
    Session(SessionError),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::TooLong { prompt_tokens, ctx } => write!(
                f,
                "prompt of {prompt_tokens} tokens does not fit in the context of {ctx} tokens"
            ),
            RequestError::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            RequestError::Template(e) => write!(f, "{e}"),
            RequestError::Session(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The prompt's ids: `prompt` as the user message of a one-turn conversation rendered by
/// `template` (no system message, so a template such as Qwen2.5's adds its default), unless
/// `raw`.
pub fn prompt_ids(
    tok: &Tokenizer,
    template: &ChatTemplate,
    prompt: &str,
    raw: bool,
) -> Result<Vec<u32>, RequestError> {
    let text = if raw {
        prompt.to_string()
    } else {
        template
            .render_turn(None, prompt)
            .map_err(RequestError::Template)?
    };
    tok.encode(&text)
        .map_err(|e| RequestError::Tokenizer(e.to_string()))
}

/// Runs one request from an empty cache: prefill, then up to `max_tokens` sampled tokens.
pub fn complete(
    session: &mut Session,
    tok: &Tokenizer,
    prompt_ids: &[u32],
    params: SamplerParams,
    max_tokens: usize,
    stop: &[u32],
) -> Result<Completion, RequestError> {
    complete_until(
        session,
        tok,
        prompt_ids,
        params,
        max_tokens,
        stop,
        None,
        &mut |_| true,
    )
}

/// [`complete`], with `constraint` (if any) governing the answer (attached after the prompt's
/// prefill; it stays attached until the session is reset), also stopping once
/// `keep_going(token)` returns false (that token is kept).
#[allow(clippy::too_many_arguments)]
pub fn complete_until(
    session: &mut Session,
    tok: &Tokenizer,
    prompt_ids: &[u32],
    params: SamplerParams,
    max_tokens: usize,
    stop: &[u32],
    constraint: Option<Constraint>,
    keep_going: &mut dyn FnMut(u32) -> bool,
) -> Result<Completion, RequestError> {
    if prompt_ids.len() >= session.ctx() {
        return Err(RequestError::TooLong {
            prompt_tokens: prompt_ids.len(),
            ctx: session.ctx(),
        });
    }
    session.reset();
    session.set_sampler(params).map_err(RequestError::Session)?;
    for &t in prompt_ids {
        session.sampler_mut().observe(t);
    }
    let t0 = Instant::now();
    session.prefill(prompt_ids).map_err(RequestError::Session)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    if constraint.is_some() {
        session.set_constraint(constraint);
    }
    let mut ids = Vec::with_capacity(max_tokens);
    let mut first: Option<f64> = None;
    let stats = session
        .generate(max_tokens, stop, &mut |t| {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            ids.push(t);
            keep_going(t)
        })
        .map_err(RequestError::Session)?;
    let text = tok
        .decode(&ids)
        .map_err(|e| RequestError::Tokenizer(e.to_string()))?;
    Ok(Completion {
        prompt_tokens: prompt_ids.len(),
        ttft_s: first.unwrap_or(prefill_s),
        ids,
        text,
        prefill_s,
        decode_s: stats.elapsed.as_secs_f64(),
        steps: stats.steps,
        reason: stats.reason,
        drafted: stats.drafted,
        accepted: stats.accepted,
    })
}

/// The grid grammar (see [`grid_regex`]) compiled by `grammars`: compile it once per run and
/// give each answer a clone.
pub fn grid_constraint(grammars: &Grammars) -> Result<Constraint, ConstraintError> {
    grammars.regex(&grid_regex())
}

/// How [`run_arc_item`] answers a test input.
#[derive(Clone, Copy, Debug)]
pub struct ArcOptions<'a> {
    /// The most tokens an answer may have.
    pub max_tokens: usize,
    /// End-of-turn ids (see [`qwenrt::text::chat::stop_ids`]).
    pub stop: &'a [u32],
    /// End the answer once its first complete grid is followed by a line that is not one of
    /// its rows (see [`GridStop`]).
    pub early_stop: bool,
    /// The compiled grid grammar (see [`grid_constraint`]): each answer gets a clone, so it
    /// is always a grid. `None` leaves the answer free.
    pub grid: Option<&'a Constraint>,
}

/// Runs one ARC test input greedily and scores it. With `early_stop`, generation ends once
/// the first complete grid is followed by a line that is not one of its rows (see
/// [`GridStop`]), which leaves the scored grid unchanged. With the grid grammar the answer is
/// a grid by construction; one cut by the token limit inside a row is scored on its complete
/// rows. A prompt that does not fit is a skipped record with its token count, not an error.
pub fn run_arc_item(
    session: &mut Session,
    tok: &Tokenizer,
    template: &ChatTemplate,
    item: &WorkItem,
    opts: &ArcOptions<'_>,
) -> Result<TaskRecord, RequestError> {
    let ids = prompt_ids(tok, template, &item.prompt, false)?;
    let arena_bytes = session.memory_plan().total_bytes() as u64;
    if ids.len() >= session.ctx() {
        let mut r = TaskRecord::skipped(
            &item.task_id,
            item.test_index,
            ids.len(),
            format!(
                "prompt of {} tokens does not fit in the context of {}",
                ids.len(),
                session.ctx()
            ),
        );
        r.arena_bytes = arena_bytes;
        return Ok(r);
    }
    let mut grid_stop = GridStop::new();
    let mut decoder = tok.stream_decoder();
    let mut grid_done = false;
    let early_stop = opts.early_stop;
    let c = complete_until(
        session,
        tok,
        &ids,
        SamplerParams::greedy(),
        opts.max_tokens,
        opts.stop,
        opts.grid.cloned(),
        &mut |t| {
            grid_done = early_stop && grid_stop.push(decoder.push(t));
            !grid_done
        },
    )?;
    let mut answer = c.text.as_str();
    if opts.grid.is_some() {
        if let Some(g) = session.constraint_mut() {
            if let Some(e) = g.error() {
                return Err(RequestError::Session(SessionError::Constraint(
                    ConstraintError::Matcher(e),
                )));
            }
            // The grammar is complete after every complete row; where it is not, the answer
            // was cut inside a row (by the token limit), and that row is not part of the grid.
            if !g.is_accepting() {
                answer = answer.rsplit_once('\n').map_or("", |(rows, _)| rows);
            }
        }
    }
    let (grid, correct) = score(answer, item.expected.as_ref());
    let stop_reason = match c.reason {
        StopReason::Callback if grid_done => "grid",
        StopReason::Callback => "callback",
        StopReason::StopToken(_) => "stop_token",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
    };
    Ok(TaskRecord {
        task_id: item.task_id.clone(),
        test_index: item.test_index,
        prompt_tokens: c.prompt_tokens,
        generated_tokens: c.ids.len(),
        ttft_ms: c.ttft_s * 1e3,
        prefill_tps: c.prefill_tps(),
        decode_tps: c.decode_tps(),
        kv_bytes_used: session.cache_info().used_bytes as u64,
        arena_bytes,
        grid,
        correct,
        skipped: None,
        stop_reason: Some(stop_reason.to_string()),
        drafted: c.drafted,
        accepted: c.accepted,
        grammar: opts.grid.is_some(),
    })
}

/// Runs one batch request; a failure becomes that line's error record.
pub fn run_batch_request(
    session: &mut Session,
    tok: &Tokenizer,
    template: &ChatTemplate,
    req: &BatchRequest,
    stop: &[u32],
) -> BatchRecord {
    let fail = |e: RequestError| {
        BatchRecord::Err(BatchLineError {
            id: req.id.clone(),
            line: req.line,
            error: e.to_string(),
        })
    };
    let ids = match prompt_ids(tok, template, &req.prompt, req.raw) {
        Ok(ids) if ids.is_empty() => {
            return BatchRecord::Err(BatchLineError {
                id: req.id.clone(),
                line: req.line,
                error: "the prompt encodes to no tokens".into(),
            })
        }
        Ok(ids) => ids,
        Err(e) => return fail(e),
    };
    let params = if req.temperature == 0.0 {
        SamplerParams::greedy()
    } else {
        SamplerParams {
            temperature: req.temperature,
            ..SamplerParams::default()
        }
    };
    match complete(session, tok, &ids, params, req.max_tokens, stop) {
        Ok(c) => BatchRecord::Ok(BatchResult {
            id: req.id.clone(),
            text: c.text.clone(),
            stats: BatchStats {
                prompt_tokens: c.prompt_tokens,
                generated_tokens: c.ids.len(),
                prefill_tps: c.prefill_tps(),
                decode_tps: c.decode_tps(),
                drafted: c.drafted,
                accepted: c.accepted,
            },
            ids: c.ids,
        }),
        Err(e) => fail(e),
    }
}
