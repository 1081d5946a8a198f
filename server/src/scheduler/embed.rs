//! Embedding jobs on the engine thread: each input of a `/v1/embeddings` request becomes a
//! prefill-only run on a sequence of its own (no sampling, no decode), its prompt chunks sharing
//! steps with the generating jobs; its last chunk asks the engine for the embedding
//! ([`Want::Embedding`]) instead of logits.
//!
//! A run starts from an empty sequence (a new one, or the least recently used idle one,
//! emptied) rather than from an idle sequence's cached prefix: an input's embedding is then
//! the same whatever the server ran before. The sequence goes idle with its cache when the run
//! ends, like a finished generation's, for a later prompt to reuse. The job's inputs start in
//! order as slots free up, interleaved with the generation queue by arrival; the job answers
//! once all of them are done, or fails as a whole.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Job, Scheduler};
use crate::api::ApiError;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{EngineError, Feed, Numerics, SeqId, Want};

/// What an embedding job answers: every input's final-normed hidden state, in input order
/// (pooled and normalized by the HTTP side), or why it failed.
pub type EmbedReply = Result<Vec<Vec<f32>>, ApiError>;

/// An embedding request for the engine thread.
pub struct EmbedJob {
    /// The inputs' tokens (each non-empty and within the context: checked by the HTTP side).
    pub inputs: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<EmbedReply>,
    pub arrived: Instant,
    pub deadline: Option<Instant>,
}

/// A job being worked on: how many of its inputs have started, and the finished ones.
struct Pending {
    job: EmbedJob,
    started: usize,
    done: usize,
    results: Vec<Vec<f32>>,
}

/// One input being prefilled.
struct Run {
    /// Index of its job in [`Embeds::jobs`] (jobs leave together with all their runs, and
    /// the later runs' indices are renumbered then).
    job: usize,
    input: usize,
    seq: SeqId,
    /// Tokens of the input in the sequence's cache.
    fed: usize,
}

/// The engine thread's embedding jobs.
#[derive(Default)]
pub(super) struct Embeds {
    /// Accepted jobs, oldest first, until they answer.
    jobs: Vec<Pending>,
    runs: Vec<Run>,
}

impl Embeds {
    /// Inputs being prefilled (each holds a sequence).
    pub(super) fn running(&self) -> usize {
        self.runs.len()
    }

    /// Whether there is nothing to do.
    pub(super) fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether an input of an embedding job should start before `next` (the generation queue's
    /// head): it has one waiting that arrived no later.
    pub(super) fn goes_before(&self, next: Option<&Job>) -> bool {
        let waiting = self
            .jobs
            .iter()
            .find(|p| p.started < p.job.inputs.len())
            .map(|p| p.job.arrived);
        match (waiting, next) {
            (Some(a), Some(j)) => a <= j.arrived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The runs' feeds for the next step, the oldest first, taking prompt rows from `budget`;
    /// records `(run, rows)` of each in `plan`. The last chunk of an input wants its embedding.
    pub(super) fn feeds<'a>(
        &'a self,
        budget: &mut usize,
        feeds: &mut Vec<Feed<'a>>,
        plan: &mut Vec<(usize, usize)>,
    ) {
        for (r, run) in self.runs.iter().enumerate() {
            if *budget == 0 {
                return;
            }
            let input = &self.jobs[run.job].job.inputs[run.input];
            let n = (input.len() - run.fed).min(*budget);
            *budget -= n;
            let last = run.fed + n == input.len();
            feeds.push(Feed {
                seq: run.seq,
                tokens: &input[run.fed..run.fed + n],
                numerics: Numerics::Prefill,
                logits: if last { Want::Embedding } else { Want::None },
            });
            plan.push((r, n));
        }
    }
}

impl Scheduler {
    /// Takes an embedding job.
    pub(super) fn queue_embedding(&mut self, job: EmbedJob) {
        let n = job.inputs.len();
        self.embeds.jobs.push(Pending {
            job,
            started: 0,
            done: 0,
            results: vec![Vec::new(); n],
        });
    }

    /// Starts the next waiting input of the oldest embedding job that has one, on an empty
    /// sequence (the caller checked that a slot is free).
    pub(super) fn admit_embedding(&mut self) {
        let Some(j) = self
            .embeds
            .jobs
            .iter()
            .position(|p| p.started < p.job.inputs.len())
        else {
            return;
        };
        match self.empty_sequence() {
            Ok(seq) => {
                let p = &mut self.embeds.jobs[j];
                self.embeds.runs.push(Run {
                    job: j,
                    input: p.started,
                    seq,
                    fed: 0,
                });
                p.started += 1;
            }
            Err(e) => self.end_embedding(
                j,
                Err(ApiError::new(
                    500,
                    "server_error",
                    format!("engine error: {e}"),
                )),
            ),
        }
    }

    /// A new sequence, else the least recently used idle one, emptied.
    fn empty_sequence(&mut self) -> Result<SeqId, EngineError> {
        let seq = self.new_or_lru(SamplerParams::greedy())?;
        self.engine.reset(seq)?;
        // its rows are not a generation prompt's: the prompt cache does not take them
        self.clean[seq.slot()] = 0;
        Ok(seq)
    }

    /// After a step that carried the runs of `plan` (`(run, rows)`): advances them, collects
    /// the embeddings of the inputs that ended, and answers the jobs that are complete. On an
    /// engine error, every job with a run in the step fails.
    pub(super) fn after_embedding_step(
        &mut self,
        result: &Result<(), EngineError>,
        plan: &[(usize, usize)],
    ) {
        let engine_error =
            |e: &EngineError| ApiError::new(500, "server_error", format!("engine error: {e}"));
        // (job, its answer), each job once
        let mut ended: Vec<(usize, EmbedReply)> = Vec::new();
        let mut end = |job: usize, reply: EmbedReply| {
            if !ended.iter().any(|(j, _)| *j == job) {
                ended.push((job, reply));
            }
        };
        // per run: whether it leaves now (its input is done, or the step failed)
        let mut leaves = vec![false; self.embeds.runs.len()];
        for &(r, n) in plan {
            let run = &mut self.embeds.runs[r];
            if let Err(e) = result {
                leaves[r] = true;
                end(run.job, Err(engine_error(e)));
                continue;
            }
            run.fed += n;
            let p = &mut self.embeds.jobs[run.job];
            if run.fed < p.job.inputs[run.input].len() {
                continue;
            }
            leaves[r] = true;
            match self.engine.embedding(run.seq) {
                Ok(v) => {
                    p.results[run.input] = v.to_vec();
                    p.done += 1;
                    if p.done == p.job.inputs.len() {
                        end(run.job, Ok(Vec::new()));
                    }
                }
                Err(e) => end(run.job, Err(engine_error(&e))),
            }
        }
        // their sequences go idle: a finished input's with its cache, a failed step's emptied
        // (an engine error leaves a sequence in an unknown state)
        let failed = result.is_err();
        for (run, leave) in std::mem::take(&mut self.embeds.runs)
            .into_iter()
            .zip(leaves)
        {
            if !leave {
                self.embeds.runs.push(run);
                continue;
            }
            if failed {
                let _ = self.engine.reset(run.seq);
            }
            self.clock += 1;
            self.idle.push((run.seq, self.clock));
        }
        // highest job index first, so removing one leaves the others' indices valid
        ended.sort_by_key(|&(j, _)| std::cmp::Reverse(j));
        for (j, reply) in ended {
            let reply = reply.map(|_| std::mem::take(&mut self.embeds.jobs[j].results));
            self.end_embedding(j, reply);
        }
    }

    /// Drops embedding jobs whose client left, fails those whose deadline passed.
    pub(super) fn sweep_embeddings(&mut self, now: Instant) {
        let mut j = self.embeds.jobs.len();
        while j > 0 {
            j -= 1;
            let job = &self.embeds.jobs[j].job;
            if job.reply.is_closed() {
                self.shared
                    .metrics
                    .cancelled
                    .fetch_add(1, Ordering::Relaxed);
                self.end_embedding(j, Err(ApiError::new(499, "cancelled", "")));
            } else if job.deadline.is_some_and(|d| now >= d) {
                let timeout =
                    ApiError::new(408, "timeout", "the request timed out").code("timeout");
                self.end_embedding(j, Err(timeout));
            }
        }
    }

    /// Fails every embedding job with `err`.
    pub(super) fn fail_embeddings(&mut self, err: &ApiError) {
        while !self.embeds.jobs.is_empty() {
            let last = self.embeds.jobs.len() - 1;
            self.end_embedding(last, Err(err.clone()));
        }
    }

    /// Removes job `j` with its runs (their sequences go idle, emptied: an unfinished input's
    /// cache is of no use), answers it, and renumbers the later jobs' runs.
    fn end_embedding(&mut self, j: usize, reply: EmbedReply) {
        let mut i = 0;
        while i < self.embeds.runs.len() {
            if self.embeds.runs[i].job == j {
                let seq = self.embeds.runs.swap_remove(i).seq;
                let _ = self.engine.reset(seq);
                self.clock += 1;
                self.idle.push((seq, self.clock));
            } else {
                i += 1;
            }
        }
        for run in &mut self.embeds.runs {
            if run.job > j {
                run.job -= 1;
            }
        }
        let p = self.embeds.jobs.remove(j);
        let _ = p.job.reply.send(reply);
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
