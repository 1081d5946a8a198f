//! The engine thread: continuous batching over the engine's sequences.
//!
//! Requests arrive as [`Job`]s on a channel. Up to `parallel` of them run at once; each
//! engine step carries one decode row of every sequence that is generating plus up to
//! `chunk` prompt rows of the sequences still prefilling (oldest first), so a long prompt
//! delays running streams by at most one chunk. New jobs join at the next step and finished
//! ones leave; the rest wait in arrival order.
//!
//! A finished sequence stays in its slot, idle, with its cache: a new job whose prompt starts
//! with the tokens it holds takes it over, truncated to the common prefix, and prefills only
//! the rest. An idle sequence is evicted (least recently used first) only when a slot is
//! needed. Beside it, the prompt cache (`--cache-ram`, see [`pcache`]) keeps prompt prefixes
//! in host memory across requests, for any free sequence to copy in.
//!
//! Embedding requests ([`Msg::Embed`]) run beside them: each input a prefill-only run on a
//! sequence of its own, its chunks sharing the prompt budget of the steps (see [`embed`]).
//!
//! Tokens go back on the job's channel as text (stop strings applied here, so generation stops
//! as soon as one matches). A send that fails means the client went away: the job is
//! cancelled and its sequence leaves at the next step.

mod embed;
mod pcache;

pub use embed::{EmbedJob, EmbedReply};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::api::{ApiError, GenRequest};
use crate::metrics::Metrics;
use crate::text::{logprobs, TextOut};
use crate::tools::{self, Opener};
use qwenrt::engine::lookup::{self, DraftBudget, Verifier};
use qwenrt::engine::prompt_cache::PromptCache;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{Engine, EngineError, Feed, Numerics, SeqId, Want};
use qwenrt::text::tokenizer::Tokenizer;

pub use crate::text::{Alt, TokenLogprob};

/// Why and how a generation ended.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// The choice that ended (its index in the response).
    pub choice: usize,
    /// `"stop"` (a stop token or string) or `"length"` (max_tokens or the context).
    pub reason: &'static str,
    pub completion_tokens: usize,
    /// Prompt tokens taken from an idle sequence's cache or the prompt cache (0 for a choice
    /// forked from another: a prompt is counted once).
    pub cached_tokens: usize,
}

/// What the engine thread sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// One generated token: its text (possibly empty, while a stop string or a UTF-8
    /// character is incomplete) and log-probabilities if asked for.
    Token {
        choice: usize,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end (held back for a stop string that did not complete).
    Text { choice: usize, text: String },
    /// The prompt of the request whose first choice is `index` is in the cache (sent before
    /// its choices' tokens, for `echo`): with `logprobs`, each prompt token's log-probability
    /// given the ones before it (the first has none: `None`).
    Prompt {
        index: usize,
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    },
    /// The end.
    Done(Finish),
    /// The job failed (timeout, shutdown, an engine error).
    Error(ApiError),
}

/// A generation request for the engine thread.
pub struct Job {
    pub req: GenRequest,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
    pub deadline: Option<Instant>,
}

/// Messages to the engine thread.
pub enum Msg {
    /// Run this.
    Job(Box<Job>),
    /// Embed these inputs.
    Embed(Box<EmbedJob>),
    /// Fail every job now (the drain timeout passed).
    Abort,
    /// Fail every job and end the thread.
    Shutdown,
}

/// State shared by the HTTP side and the engine thread.
pub struct Shared {
    pub metrics: Metrics,
    /// Jobs accepted and not yet finished (running and queued).
    pub inflight: AtomicUsize,
}

struct Active {
    seq: SeqId,
    job: Job,
    /// This choice's index in the response.
    choice: usize,
    /// Sequences reserved for the job's other choices, forked from this one when its prompt is
    /// in; each with its choice number (1..n).
    forks: Vec<(SeqId, usize)>,
    /// The prompt's log-probabilities so far (echo with logprobs), one per prompt token.
    prompt_lps: Option<Vec<Option<TokenLogprob>>>,
    /// Prompt tokens in the cache (reused ones included).
    fed: usize,
    /// The prompt cache's version when this job last looked it up (see [`pcache`]).
    looked: u64,
    /// Decode phase: `row[0]` is the sampled token to feed next and `row[1..row_len]` the
    /// tokens drafted after it by prompt lookup; `row_len` is 0 while prefilling.
    row: [u32; lookup::MAX_DRAFT + 1],
    row_len: usize,
    /// How many tokens this job's next draft may hold.
    budget: DraftBudget,
    generated: usize,
    text: TextOut,
    last_token: Option<Instant>,
    reused: usize,
    /// The last bytes of the answer, while a tool call may still open (`tool_choice: auto`):
    /// the call's constraint attaches at the token that completes [`tools::OPEN`].
    call_tail: Vec<u8>,
    /// The answer's tokens while it may still open a bare call (see [`tools::bare_opener`]).
    opener: Option<Vec<u32>>,
}

/// How a job left.
enum Exit {
    Done(&'static str),
    Failed(ApiError),
    Cancelled,
}

/// The engine thread's state.
pub struct Scheduler {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    shared: Arc<Shared>,
    parallel: usize,
    chunk: usize,
    /// The most drafted rows in one step, over all jobs (0: no prompt lookup).
    lookup: usize,
    active: Vec<Active>,
    pending: VecDeque<Job>,
    /// Finished sequences keeping their cache, with when they finished (for LRU eviction).
    idle: Vec<(SeqId, u64)>,
    clock: u64,
    /// Embedding jobs and their inputs being prefilled.
    embeds: embed::Embeds,
    /// KV rows of prompt prefixes across requests (`--cache-ram`; `None`: off).
    pcache: Option<PromptCache>,
    /// Per sequence slot: its leading positions whose rows a prefill computed or the prompt
    /// cache copied (the rows a prompt cache may keep; see [`pcache`]).
    clean: Vec<usize>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Scheduler {
    /// A scheduler over `engine` (sized for `parallel` sequences and `parallel + chunk +
    /// lookup` rows). Greedy jobs without penalties or log-probabilities draft by
    /// prompt lookup, `lookup` rows per step in all (the verified rows cost about a third of a
    /// step each on quantized weights, so the budget is shared rather than per job). Prompt
    /// prefixes are kept across requests in `pcache` when given.
    pub fn new(
        engine: Engine,
        tokenizer: Arc<Tokenizer>,
        stop_ids: Vec<u32>,
        shared: Arc<Shared>,
        chunk: usize,
        lookup: usize,
        pcache: Option<PromptCache>,
    ) -> Scheduler {
        let parallel = engine.max_sequences();
        shared
            .metrics
            .kv_capacity
            .store((parallel * engine.ctx()) as u64, Ordering::Relaxed);
        Scheduler {
            engine,
            tokenizer,
            stop_ids,
            shared,
            parallel,
            chunk: chunk.max(1),
            lookup: lookup.min(lookup::MAX_DRAFT),
            active: Vec::new(),
            pending: VecDeque::new(),
            idle: Vec::new(),
            clock: 0,
            embeds: embed::Embeds::default(),
            pcache,
            clean: vec![0; parallel],
        }
    }

    /// Runs until [`Msg::Shutdown`] or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Msg>) {
        loop {
            if self.active.is_empty() && self.pending.is_empty() && self.embeds.is_idle() {
                self.publish();
                match rx.recv() {
                    Ok(m) => {
                        if !self.handle(m) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            while let Ok(m) = rx.try_recv() {
                if !self.handle(m) {
                    return;
                }
            }
            self.sweep();
            self.admit();
            self.publish();
            if !self.active.is_empty() || self.embeds.running() > 0 {
                self.step();
            }
        }
    }

    /// Takes a message; false to end the thread.
    fn handle(&mut self, m: Msg) -> bool {
        match m {
            Msg::Job(job) => {
                self.pending.push_back(*job);
                true
            }
            Msg::Embed(job) => {
                self.queue_embedding(*job);
                true
            }
            Msg::Abort => {
                let why = "the server is shutting down and its drain timeout passed before this request finished";
                self.fail_all(ApiError::new(503, "server_error", why).code("drain_timeout"));
                true
            }
            Msg::Shutdown => {
                self.fail_all(ApiError::new(
                    503,
                    "server_error",
                    "the server is shutting down",
                ));
                self.publish();
                false
            }
        }
    }

    fn fail_all(&mut self, err: ApiError) {
        for job in std::mem::take(&mut self.pending) {
            let _ = job.events.send(Event::Error(err.clone()));
            self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        while !self.active.is_empty() {
            self.leave(0, Exit::Failed(err.clone()));
        }
        self.fail_embeddings(&err);
    }

    /// Drops queued jobs whose client left or whose deadline passed; cancels such active ones.
    fn sweep(&mut self) {
        let now = Instant::now();
        let expired = |j: &Job| j.deadline.is_some_and(|d| now >= d);
        let timeout = || ApiError::new(408, "timeout", "the request timed out").code("timeout");
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for job in std::mem::take(&mut self.pending) {
            if job.events.is_closed() {
                self.shared
                    .metrics
                    .cancelled
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
            } else if expired(&job) {
                let _ = job.events.send(Event::Error(timeout()));
                self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
            } else {
                kept.push_back(job);
            }
        }
        self.pending = kept;
        let mut i = 0;
        while i < self.active.len() {
            let job = &self.active[i].job;
            if job.events.is_closed() {
                self.leave(i, Exit::Cancelled);
            } else if expired(job) {
                self.leave(i, Exit::Failed(timeout()));
            } else {
                i += 1;
            }
        }
        self.sweep_embeddings(now);
    }

    /// Sequences in use: the active jobs' (their own and those reserved for their forks) and
    /// the embedding runs'.
    fn busy(&self) -> usize {
        self.active.iter().map(|a| 1 + a.forks.len()).sum::<usize>() + self.embeds.running()
    }

    /// Starts queued jobs and embedding inputs, by arrival, while there are free slots for all
    /// of a job's choices.
    fn admit(&mut self) {
        while self.busy() < self.parallel {
            if self.embeds.goes_before(self.pending.front()) {
                self.admit_embedding();
                continue;
            }
            if self
                .pending
                .front()
                .is_none_or(|j| self.busy() + j.req.n.max(1) > self.parallel)
            {
                return;
            }
            let Some(mut job) = self.pending.pop_front() else {
                return;
            };
            let constraint = job.req.guide.constraint.take();
            let job_watches_opener = job.req.guide.on_bare.is_some();
            let placed = self.place(&job).and_then(|(seq, reused)| {
                let mut taken = vec![seq];
                let mut forks = Vec::with_capacity(job.req.n.saturating_sub(1));
                let attach = || -> Result<(), EngineError> {
                    for j in 1..job.req.n {
                        let params = fork_params(&job.req.params, j);
                        let dst = self.spare(&job.req.prompt, params)?;
                        taken.push(dst);
                        forks.push((dst, j));
                        self.engine.set_constraint(dst, constraint.clone())?;
                    }
                    self.engine.set_constraint(seq, constraint)?;
                    Ok(())
                };
                match attach() {
                    Ok(()) => Ok((seq, reused, forks)),
                    Err(e) => {
                        // the sequences go back to the idle ones rather than being lost
                        for s in taken {
                            self.clock += 1;
                            self.idle.push((s, self.clock));
                        }
                        Err(e)
                    }
                }
            });
            match placed {
                Ok((seq, reused, forks)) => {
                    let m = &self.shared.metrics;
                    m.prompt_tokens
                        .fetch_add(job.req.prompt.len() as u64, Ordering::Relaxed);
                    m.prompt_tokens_reused
                        .fetch_add(reused as u64, Ordering::Relaxed);
                    let text = TextOut {
                        decoder: self.tokenizer.stream_decoder(),
                        held: String::new(),
                        stops: job.req.stops.clone(),
                    };
                    let prompt_lps =
                        (job.req.echo && job.req.logprobs.is_some()).then(|| vec![None]);
                    self.active.push(Active {
                        seq,
                        choice: job.req.index,
                        forks,
                        prompt_lps,
                        job,
                        fed: reused,
                        looked: u64::MAX,
                        row: [0; lookup::MAX_DRAFT + 1],
                        row_len: 0,
                        budget: DraftBudget::new(self.lookup),
                        generated: 0,
                        text,
                        last_token: None,
                        reused,
                        call_tail: Vec::new(),
                        opener: job_watches_opener.then(Vec::new),
                    });
                }
                Err(e) => {
                    let err = ApiError::new(500, "server_error", format!("engine error: {e}"));
                    let _ = job.events.send(Event::Error(err));
                    self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// A sequence for `job`: the idle one sharing the longest prefix with its prompt
    /// (truncated to that prefix, keeping at least one prompt token to prefill), unless the
    /// prompt cache holds a longer one; else a new one, else the least recently used idle one,
    /// emptied (with the prompt cache's longest prefix copied in). Returns it and the reused
    /// count.
    fn place(&mut self, job: &Job) -> Result<(SeqId, usize), EngineError> {
        let prompt = &job.req.prompt;
        let mut best: Option<(usize, usize)> = None;
        // scoring the prompt needs the logits after each of its tokens: nothing reused
        let scoring = job.req.echo && job.req.logprobs.is_some();
        for (i, &(seq, _)) in self.idle.iter().enumerate().filter(|_| !scoring) {
            let c = common_prefix(self.engine.tokens(seq)?, prompt);
            if c > 0 && best.is_none_or(|(_, b)| c > b) {
                best = Some((i, c));
            }
        }
        let cached = if scoring {
            0
        } else {
            self.cache_lookup(prompt)
        };
        if best.is_some_and(|(_, c)| c.min(prompt.len() - 1) < cached) {
            best = None;
        }
        let (seq, reused) = if let Some((i, c)) = best {
            let (seq, _) = self.idle.swap_remove(i);
            (seq, c.min(prompt.len() - 1))
        } else {
            (self.new_or_lru(job.req.params)?, 0)
        };
        self.engine.truncate(seq, reused)?;
        let clean = &mut self.clean[seq.slot()];
        *clean = (*clean).min(reused);
        let reused = if cached > reused {
            match self.cache_load(seq, prompt, reused) {
                Ok(held) => held,
                Err(e) => {
                    self.clock += 1;
                    self.idle.push((seq, self.clock));
                    return Err(e);
                }
            }
        } else {
            reused
        };
        self.engine.set_sampler(seq, job.req.params)?;
        let sampler = self.engine.sampler_mut(seq)?;
        for &t in prompt {
            sampler.observe(t);
        }
        Ok((seq, reused))
    }

    /// A new sequence (sampling with `params`) while the engine has room, else the least
    /// recently used idle one, taken from the idle list as it is (cache and sampler).
    fn new_or_lru(&mut self, params: SamplerParams) -> Result<SeqId, EngineError> {
        if self.engine.live_sequences() < self.engine.max_sequences() {
            return self.engine.create_sequence(params);
        }
        let lru = (0..self.idle.len()).min_by_key(|&i| self.idle[i].1).ok_or(
            EngineError::NoFreeSequence {
                max: self.engine.max_sequences(),
            },
        )?;
        Ok(self.idle.swap_remove(lru).0)
    }

    /// A sequence for another choice of a job whose prompt is `prompt` (it will be forked from
    /// the job's own): a new one, else the least recently used idle one; its sampler set to
    /// `params`, having seen the prompt (for the repetition penalty).
    fn spare(&mut self, prompt: &[u32], params: SamplerParams) -> Result<SeqId, EngineError> {
        let seq = self.new_or_lru(params)?;
        self.engine.truncate(seq, 0)?;
        self.clean[seq.slot()] = 0;
        self.engine.set_sampler(seq, params)?;
        let sampler = self.engine.sampler_mut(seq)?;
        for &t in prompt {
            sampler.observe(t);
        }
        Ok(seq)
    }

    /// Job `i`'s prompt is in its cache: sends its prompt event (echo) and forks its sequence
    /// into the sequences reserved for its other choices, which join as active jobs of their
    /// own (they sample at once: the fork carries the logits).
    fn prompt_done(&mut self, i: usize) -> Result<Vec<usize>, EngineError> {
        self.cache_count_misses(i);
        let a = &mut self.active[i];
        if a.job.req.echo {
            let logprobs = a.prompt_lps.take();
            let _ = a.job.events.send(Event::Prompt {
                index: a.job.req.index,
                logprobs,
            });
        }
        let forks = std::mem::take(&mut a.forks);
        let (src, len) = (a.seq, a.job.req.prompt.len());
        let mut joined = Vec::with_capacity(forks.len());
        for (dst, j) in forks {
            if let Err(e) = self.engine.fork(src, dst, len) {
                // this choice and those not yet forked are lost with the job: their sequences
                // go idle (the job fails)
                self.clock += 1;
                self.idle.push((dst, self.clock));
                return Err(e);
            }
            self.clean[dst.slot()] = self.clean[src.slot()].min(len);
            let a = &self.active[i];
            let job = Job {
                req: a.job.req.clone(),
                events: a.job.events.clone(),
                arrived: a.job.arrived,
                deadline: a.job.deadline,
            };
            let text = TextOut {
                decoder: self.tokenizer.stream_decoder(),
                held: String::new(),
                stops: job.req.stops.clone(),
            };
            let opener = a.opener.clone();
            self.shared.inflight.fetch_add(1, Ordering::AcqRel);
            self.active.push(Active {
                seq: dst,
                choice: a.choice + j,
                forks: Vec::new(),
                prompt_lps: None,
                job,
                fed: len,
                looked: u64::MAX,
                row: [0; lookup::MAX_DRAFT + 1],
                row_len: 0,
                budget: DraftBudget::new(self.lookup),
                generated: 0,
                text,
                last_token: None,
                reused: 0,
                call_tail: Vec::new(),
                opener,
            });
            joined.push(self.active.len() - 1);
        }
        Ok(joined)
    }

    /// Removes active job `i`, telling its client how it ended; its sequence goes idle.
    fn leave(&mut self, i: usize, exit: Exit) {
        if matches!(exit, Exit::Done(_)) {
            // its prompt's chain is marked recently used (and any block evicted since, saved)
            self.cache_save(i);
        }
        let mut a = self.active.swap_remove(i);
        // sequences reserved for forks that never happened go idle, empty
        for (s, _) in std::mem::take(&mut a.forks) {
            let _ = self.engine.truncate(s, 0);
            self.clean[s.slot()] = 0;
            self.clock += 1;
            self.idle.push((s, self.clock));
        }
        let m = &self.shared.metrics;
        match exit {
            Exit::Done(reason) => {
                let rest = a.text.finish();
                if !rest.is_empty() {
                    let _ = a.job.events.send(Event::Text {
                        choice: a.choice,
                        text: rest,
                    });
                }
                let _ = a.job.events.send(Event::Done(Finish {
                    choice: a.choice,
                    reason,
                    completion_tokens: a.generated,
                    cached_tokens: a.reused,
                }));
            }
            Exit::Failed(e) => {
                let _ = a.job.events.send(Event::Error(e));
            }
            Exit::Cancelled => {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        self.clock += 1;
        self.idle.push((a.seq, self.clock));
    }

    /// Publishes the gauges.
    fn publish(&mut self) {
        let m = &self.shared.metrics;
        m.active.store(self.active.len() as u64, Ordering::Relaxed);
        m.queue_depth
            .store(self.pending.len() as u64, Ordering::Relaxed);
        let rows = |seq: SeqId| self.engine.position(seq).unwrap_or(0);
        let active: usize = self.active.iter().map(|a| rows(a.seq)).sum();
        let idle: usize = self.idle.iter().map(|i| rows(i.0)).sum();
        m.kv_active.store(active as u64, Ordering::Relaxed);
        m.kv_used.store((active + idle) as u64, Ordering::Relaxed);
        self.cache_publish();
    }

    /// Drafts by prompt lookup for the generating jobs that may (greedy without penalties, no
    /// log-probabilities), at most `self.lookup` tokens in all, oldest job first.
    fn draft(&mut self) {
        let mut left = self.lookup;
        let ctx = self.engine.ctx();
        for a in &mut self.active {
            if a.row_len == 0 {
                continue;
            }
            a.row_len = 1;
            // a constrained answer is not drafted: a drafted token the grammar forbids would
            // be accepted whenever the unconstrained model agrees with it
            if left == 0
                || !a.job.req.params.is_plain_greedy()
                || a.job.req.logprobs.is_some()
                || a.job.req.guide.constrains()
            {
                continue;
            }
            let Ok(history) = self.engine.tokens(a.seq) else {
                continue;
            };
            // the step yields up to k + 1 tokens: no further than the budget and the context
            let room = (ctx - history.len() - 1).min(a.job.req.max_tokens - a.generated - 1);
            let cap = a.budget.take().min(left).min(room);
            if cap == 0 {
                continue;
            }
            let (head, drafts) = a.row.split_at_mut(1);
            let k = lookup::draft(history, head[0], &mut drafts[..cap]);
            a.row_len = 1 + k;
            left -= k;
        }
    }

    /// One engine step: the decode rows of every generating job (its next token and any
    /// draft), prompt chunks of the others, then chunks of the embedding inputs.
    fn step(&mut self) {
        self.cache_refill();
        self.draft();
        let mut budget = self.chunk;
        // (index into active, prompt rows fed; 0 for a decode row)
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.active.len());
        // per active job with a draft: its sequence and the draft's verifier
        let mut verifying: Vec<(SeqId, Verifier)> = Vec::new();
        for a in &self.active {
            if a.row_len > 1 {
                let pos0 = self.engine.position(a.seq).unwrap_or(0);
                verifying.push((a.seq, Verifier::new(&a.row[..a.row_len], pos0)));
            }
        }
        // (index into the embedding runs, rows fed)
        let mut embed_plan: Vec<(usize, usize)> = Vec::new();
        // prompts being scored (echo with logprobs): (sequence, index into active), and the
        // log-probabilities of their prompt tokens this step computes (index, position, value)
        let mut scoring: Vec<(SeqId, usize)> = Vec::new();
        let mut scored: Vec<(usize, usize, TokenLogprob)> = Vec::new();
        let result = {
            let mut feeds: Vec<Feed<'_>> = Vec::with_capacity(self.active.len());
            for (i, a) in self.active.iter().enumerate() {
                if a.row_len > 0 {
                    feeds.push(Feed {
                        seq: a.seq,
                        tokens: &a.row[..a.row_len],
                        numerics: Numerics::Decode,
                        logits: if a.row_len > 1 { Want::All } else { Want::Last },
                    });
                    plan.push((i, 0));
                }
            }
            for (i, a) in self.active.iter().enumerate() {
                if a.row_len > 0 || budget == 0 {
                    continue;
                }
                let prompt = &a.job.req.prompt;
                let n = (prompt.len() - a.fed).min(budget);
                budget -= n;
                let last = a.fed + n == prompt.len();
                let logits = if a.prompt_lps.is_some() {
                    scoring.push((a.seq, i));
                    Want::All
                } else if last {
                    Want::Last
                } else {
                    Want::None
                };
                feeds.push(Feed {
                    seq: a.seq,
                    tokens: &prompt[a.fed..a.fed + n],
                    numerics: Numerics::Prefill,
                    logits,
                });
                plan.push((i, n));
            }
            self.embeds.feeds(&mut budget, &mut feeds, &mut embed_plan);
            let (active, tokenizer) = (&self.active, &self.tokenizer);
            self.engine.step(&feeds, &mut |seq, pos, logits| {
                if let Some((_, v)) = verifying.iter_mut().find(|(s, _)| *s == seq) {
                    // drafting jobs are unconstrained (see `draft`)
                    v.check(pos, logits, None);
                } else if let Some(&(_, i)) = scoring.iter().find(|&&(s, _)| s == seq) {
                    // the logits after position `pos` score the prompt's next token
                    let req = &active[i].job.req;
                    if let Some(&next) = req.prompt.get(pos + 1) {
                        let k = req.logprobs.unwrap_or(0);
                        scored.push((i, pos + 1, logprobs(logits, next, k, tokenizer)));
                    }
                }
            })
        };
        self.shared.metrics.steps.fetch_add(1, Ordering::Relaxed);
        self.after_embedding_step(&result, &embed_plan);
        let mut exits: Vec<(usize, Exit)> = Vec::new();
        match result {
            Err(e) => {
                for &(i, _) in &plan {
                    let err = ApiError::new(500, "server_error", format!("engine error: {e}"));
                    exits.push((i, Exit::Failed(err)));
                }
            }
            Ok(()) => {
                for (i, pos, lp) in scored {
                    if let Some(lps) = self.active[i].prompt_lps.as_mut() {
                        // positions arrive in order, from the prompt's second token on
                        debug_assert_eq!(lps.len(), pos);
                        lps.push(Some(lp));
                    }
                }
                for &(i, n) in &plan {
                    let a = &mut self.active[i];
                    let clean = &mut self.clean[a.seq.slot()];
                    if n > 0 && *clean >= a.fed {
                        // prefilled rows right after clean ones
                        *clean = a.fed + n;
                    }
                    a.fed += n;
                    if n > 0 {
                        self.cache_save(i);
                    }
                    let a = &self.active[i];
                    if a.row_len == 0 && a.fed < a.job.req.prompt.len() {
                        continue;
                    }
                    if a.row_len == 0 {
                        // the prompt is in: fork it for the other choices, which sample now too
                        match self.prompt_done(i) {
                            Ok(joined) => {
                                for j in joined {
                                    if let Some(exit) = self.produce(j) {
                                        exits.push((j, exit));
                                    }
                                }
                            }
                            Err(e) => {
                                exits.push((i, engine_failure(e)));
                                continue;
                            }
                        }
                    }
                    let a = &self.active[i];
                    let exit = match verifying.iter_mut().find(|(s, _)| *s == a.seq) {
                        Some((_, v)) => self.accept(i, v),
                        None => self.produce(i),
                    };
                    if let Some(exit) = exit {
                        exits.push((i, exit));
                    }
                }
            }
        }
        // highest index first, so swap_remove leaves the other indices valid
        exits.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, exit) in exits {
            if matches!(exit, Exit::Failed(_)) {
                // an engine error leaves the sequence in an unknown state: empty it
                let _ = self.engine.reset(self.active[i].seq);
                self.clean[self.active[i].seq.slot()] = 0;
            }
            self.leave(i, exit);
        }
    }

    /// Job `i` fed its token and a draft, whose rows `verifier` checked. Keeps the drafted
    /// tokens greedy decoding agrees with and the token after them, sends them, and truncates
    /// the cache to what plain decoding would hold: every token sent but the last. `Some` if
    /// the job ends.
    fn accept(&mut self, i: usize, verifier: &mut Verifier) -> Option<Exit> {
        let seq = self.active[i].seq;
        let verdict = match verifier.verdict() {
            Ok(v) => v,
            Err(e) => return Some(engine_failure(e)),
        };
        let (pos0, k, agree) = (verifier.pos0(), verdict.drafted(), verdict.accepted());
        self.active[i].budget.verified(k, agree);
        let m = &self.shared.metrics;
        m.drafted.fetch_add(k as u64, Ordering::Relaxed);
        m.accepted.fetch_add(agree as u64, Ordering::Relaxed);
        for (j, &token) in verdict.tokens().iter().enumerate() {
            if let Ok(sampler) = self.engine.sampler_mut(seq) {
                sampler.observe_generated(token);
            }
            // with token j the unfed one, plain decoding's cache holds pos0 + 1 + j tokens
            let exit = self.emit(i, token, None, pos0 + 1 + j);
            if exit.is_some() || j == agree {
                if let Err(e) = self.engine.truncate(seq, pos0 + 1 + j) {
                    return Some(engine_failure(e));
                }
                return exit;
            }
        }
        None
    }

    /// Samples job `i`'s next token and sends it; `Some` if the job ends (at once with
    /// `max_tokens: 0`: the prompt only was asked for).
    fn produce(&mut self, i: usize) -> Option<Exit> {
        if self.active[i].job.req.max_tokens == 0 {
            return Some(Exit::Done("length"));
        }
        let seq = self.active[i].seq;
        let top = self.active[i].job.req.logprobs;
        let saved = match top {
            Some(_) => match self.engine.logits(seq) {
                Ok(l) => Some(l.to_vec()),
                Err(e) => return Some(engine_failure(e)),
            },
            None => None,
        };
        let token = match self.engine.sample(seq) {
            Ok(t) => t,
            Err(e) => return Some(engine_failure(e)),
        };
        let logprob = saved.map(|l| logprobs(&l, token, top.unwrap_or(0), &self.tokenizer));
        let pos = self.engine.position(seq).unwrap_or(usize::MAX);
        self.emit(i, token, logprob, pos)
    }

    /// Sends job `i`'s next token, with `pos` tokens in its cache before it (every earlier
    /// one); `Some` if the job ends.
    fn emit(
        &mut self,
        i: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
        pos: usize,
    ) -> Option<Exit> {
        let now = Instant::now();
        let m = &self.shared.metrics;
        let a = &mut self.active[i];
        match a.last_token {
            None => m.ttft.observe(now - a.job.arrived),
            Some(t) => m.itl.observe(now - t),
        }
        a.last_token = Some(now);
        if self.stop_ids.contains(&token) {
            return Some(Exit::Done("stop"));
        }
        a.generated += 1;
        m.completion_tokens.fetch_add(1, Ordering::Relaxed);
        if let Some(tokens) = a.opener.as_mut() {
            tokens.push(token);
            let text: Vec<u8> = tokens
                .iter()
                .flat_map(|&t| self.tokenizer.token_bytes(t))
                .copied()
                .collect();
            match tools::bare_opener(&text) {
                // an opening is a few tokens; past that it is not one
                Opener::Maybe if tokens.len() < 64 => {}
                Opener::Yes => {
                    // the bare-call grammar starts at the answer's first token: replay them
                    let mut c = a.job.req.guide.on_bare.take();
                    let replayed = c.as_mut().is_some_and(|c| {
                        tokens.iter().all(|&t| c.allows(t) && c.commit(t).is_ok())
                    });
                    if replayed {
                        a.job.req.guide.on_call = None;
                        if let Err(e) = self.engine.set_constraint(a.seq, c) {
                            return Some(engine_failure(e));
                        }
                    }
                    a.opener = None;
                }
                _ => {
                    a.opener = None;
                    a.job.req.guide.on_bare = None;
                }
            }
        }
        if a.job.req.guide.on_call.is_some() {
            let open = tools::OPEN.as_bytes();
            a.call_tail
                .extend_from_slice(self.tokenizer.token_bytes(token));
            if a.call_tail.ends_with(open) {
                // the answer opened a call at this token: the rest of it is constrained
                let c = a.job.req.guide.on_call.take();
                if let Err(e) = self.engine.set_constraint(a.seq, c) {
                    return Some(engine_failure(e));
                }
            } else if a.call_tail.windows(open.len()).any(|w| w == open) {
                // opened inside a token that goes on past the tag: the grammar would start
                // out of step with the text, so this answer stays unconstrained
                a.job.req.guide.on_call = None;
            }
            let keep = a.call_tail.len().saturating_sub(open.len());
            a.call_tail.drain(..keep);
        }
        let (text, stopped) = a.text.push(token);
        let choice = a.choice;
        if a.job
            .events
            .send(Event::Token {
                choice,
                text,
                logprob,
            })
            .is_err()
        {
            return Some(Exit::Cancelled);
        }
        if stopped {
            return Some(Exit::Done("stop"));
        }
        if a.generated >= a.job.req.max_tokens || pos >= self.engine.ctx() {
            return Some(Exit::Done("length"));
        }
        a.row[0] = token;
        a.row_len = 1;
        None
    }
}

/// The sampler of a job's choice `j` (0 is the job's own): the request's parameters with seed
/// `seed + j`, so every choice has its own reproducible stream.
fn fork_params(params: &SamplerParams, j: usize) -> SamplerParams {
    SamplerParams {
        seed: params.seed.wrapping_add(j as u64),
        ..*params
    }
}

fn engine_failure(e: EngineError) -> Exit {
    Exit::Failed(ApiError::new(
        500,
        "server_error",
        format!("engine error: {e}"),
    ))
}
