//! A session: one sequence over its own [`Engine`], the convenience the CLI and most library
//! users want (one prompt, one stream of tokens). It owns an engine sized for one sequence
//! (its arena, KV cache and thread pool) over shared, immutable [`Weights`]. Several streams
//! in one process should share one [`Engine`] instead, which steps them together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qwenrt_kernels::{Cpu, Dtype, Isa};

use crate::engine::arena::MemoryPlan;
use crate::engine::constraint::Constraint;
use crate::engine::kv_cache::CacheInfo;
use crate::engine::lookup;
use crate::engine::sampler::{Sampler, SamplerParams};
use crate::engine::{Engine, EngineOptions, Feed, SeqId, Want};
use crate::model::config::Config;
use crate::model::weights::Weights;

pub use crate::engine::{EngineError as SessionError, Numerics};

/// How a session is sized and run.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Context length: the KV cache's capacity in positions.
    pub ctx: usize,
    /// The most prompt tokens processed in one forward pass; longer prompts go in chunks.
    pub max_chunk: usize,
    /// Threads for the forward pass (the calling thread counts).
    pub threads: usize,
    /// The kernels' instruction set; `None` means `QWENRT_ISA` or the best the CPU has.
    pub isa: Option<Isa>,
    /// Prefill on bf16 weights with AVX512-BF16 dot products for the MLP's gate and up
    /// projections (58% of the FLOPs): their input, the RMS-normalized residual, is rounded to
    /// bf16. Every other projection, attention, and every decode step stay in f32. Measured on
    /// the real-model goldens (worst top-5 logit / logsumexp error against transformers):
    /// f32 0.0008; this split 0.031; also rounding q/k/v 0.041 to 0.054 depending on the
    /// attention kernel's summation order, which is too close to the goldens' 0.05 to rely on;
    /// all projections 0.051. Only takes effect where the CPU has AVX512-BF16.
    pub prefill_bf16: bool,
    /// The KV cache's element type (see [`EngineOptions::kv_dtype`]).
    pub kv_dtype: Dtype,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ctx: 4096,
            max_chunk: 512,
            threads: 1,
            isa: None,
            prefill_bf16: true,
            kv_dtype: Dtype::F32,
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled (it is not passed to the callback).
    StopToken(u32),
    /// The token limit was reached.
    MaxTokens,
    /// The callback asked to stop.
    Callback,
    /// The KV cache is full.
    ContextFull,
}

/// What one [`Session::generate`] call did.
#[derive(Clone, Copy, Debug)]
pub struct GenerateStats {
    /// Tokens sampled, the stop token included.
    pub tokens: usize,
    /// Why generation stopped.
    pub reason: StopReason,
    /// The last sampled token if it has not been fed through the model (it is not in the KV
    /// cache yet); a follow-up turn should process it first.
    pub unfed: Option<u32>,
    /// Time spent in forward passes and sampling.
    pub elapsed: Duration,
    /// Forward passes (decode steps) run.
    pub steps: usize,
    /// Tokens drafted by prompt lookup (see [`Session::set_lookup`]).
    pub drafted: usize,
    /// Drafted tokens that greedy decoding agreed with (each saved a decode step).
    pub accepted: usize,
}

/// One sequence and the engine that runs it.
pub struct Session {
    engine: Engine,
    seq: SeqId,
    max_chunk: usize,
    lookup: usize,
}

impl SessionOptions {
    fn engine(&self) -> EngineOptions {
        EngineOptions {
            ctx: self.ctx,
            max_sequences: 1,
            max_batch_tokens: self.max_chunk.clamp(1, self.ctx.max(1)),
            threads: self.threads,
            isa: self.isa,
            prefill_bf16: self.prefill_bf16,
            kv_dtype: self.kv_dtype,
        }
    }
}

impl Session {
    /// Plans and allocates the arena (the only allocation a session makes for inference) and
    /// starts the thread pool.
    pub fn new(weights: Arc<Weights>, opts: &SessionOptions) -> Result<Session, SessionError> {
        let mut engine = Engine::new(weights, &opts.engine())?;
        let seq = engine.create_sequence(SamplerParams::greedy())?;
        let max_chunk = engine.max_batch_tokens();
        Ok(Session {
            engine,
            seq,
            max_chunk,
            lookup: 0,
        })
    }

    /// The arena plan of a session of `opts` over a model of `config`, without allocating it
    /// (to report or check its size up front). Checks the options as [`Session::new`] does.
    pub fn plan_for(config: &Config, opts: &SessionOptions) -> Result<MemoryPlan, SessionError> {
        Engine::plan_for(config, &opts.engine())
    }

    /// The arena's regions and total.
    pub fn memory_plan(&self) -> &MemoryPlan {
        self.engine.memory_plan()
    }

    /// Address and size of the arena (it never changes for the life of the session).
    pub fn arena_address(&self) -> (usize, usize) {
        self.engine.arena_address()
    }

    /// The shared weights.
    pub fn weights(&self) -> &Arc<Weights> {
        self.engine.weights()
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.engine.isa()
    }

    /// What the kernels run on: the instruction set and the extensions in use.
    pub fn cpu(&self) -> Cpu {
        self.engine.cpu()
    }

    /// Threads in the engine's pool.
    pub fn threads(&self) -> usize {
        self.engine.threads()
    }

    /// The engine underneath (one sequence).
    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The session's sequence in [`Session::engine`].
    pub fn sequence(&self) -> SeqId {
        self.seq
    }

    /// Context length (KV cache capacity).
    pub fn ctx(&self) -> usize {
        self.engine.ctx()
    }

    /// The KV cache's element type.
    pub fn kv_dtype(&self) -> Dtype {
        self.engine.kv_dtype()
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.engine.position(self.seq).unwrap_or(0)
    }

    /// How full the sequence's cache is.
    pub fn cache_info(&self) -> CacheInfo {
        self.engine
            .cache_info(self.seq)
            .expect("a session's sequence lives as long as the session")
    }

    /// Empties the KV cache and drops the constraint; the arena stays where it is, and so does
    /// the sampler (its recorded tokens and RNG: [`Session::set_sampler`] starts a fresh one).
    pub fn reset(&mut self) {
        let _ = self.engine.truncate(self.seq, 0);
        let _ = self.engine.set_constraint(self.seq, None);
    }

    /// Gives the session a fresh sampler for `params` (no recorded tokens, the RNG at its
    /// seed); an error names the parameter out of range, and then the old one stays. A new
    /// session samples greedily.
    pub fn set_sampler(&mut self, params: SamplerParams) -> Result<(), SessionError> {
        self.engine.set_sampler(self.seq, params)
    }

    /// The session's sampler (the engine's sampler of its sequence): to observe prompt tokens
    /// for the repetition penalty, forget the generated ones between turns, or change its
    /// parameters ([`Sampler::set_params`]).
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        self.engine
            .sampler_mut(self.seq)
            .expect("a session's sequence lives as long as the session")
    }

    /// The session's sampler, to read its parameters.
    pub fn sampler(&self) -> &Sampler {
        self.engine
            .sampler(self.seq)
            .expect("a session's sequence lives as long as the session")
    }

    /// Rewinds the KV cache to its first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        let _ = self.engine.truncate(self.seq, len);
    }

    /// The logits after the last processed token.
    pub fn logits(&mut self) -> Result<&[f32], SessionError> {
        self.engine.logits(self.seq)
    }

    /// Checks a whole request up front, so a long prompt is refused before any chunk runs.
    fn check_fits(&self, tokens: &[u32]) -> Result<(), SessionError> {
        if tokens.is_empty() {
            return Err(SessionError::EmptyInput);
        }
        let vocab = self.engine.weights().config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(SessionError::TokenOutOfRange { token, vocab });
        }
        let needed = self.position() + tokens.len();
        if needed > self.ctx() {
            return Err(SessionError::ContextFull {
                needed,
                ctx: self.ctx(),
            });
        }
        Ok(())
    }

    fn feed(
        &mut self,
        tokens: &[u32],
        numerics: Numerics,
        logits: Want,
        each: &mut dyn FnMut(SeqId, usize, &[f32]),
    ) -> Result<(), SessionError> {
        let feed = Feed {
            seq: self.seq,
            tokens,
            numerics,
            logits,
        };
        self.engine.step(&[feed], each)
    }

    /// Appends `tokens` to the context (in chunks of at most `max_chunk`) and computes the
    /// logits of the token after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], SessionError> {
        self.check_fits(tokens)?;
        let chunks = tokens.len().div_ceil(self.max_chunk);
        for (i, chunk) in tokens.chunks(self.max_chunk).enumerate() {
            let want = if i + 1 == chunks {
                Want::Last
            } else {
                Want::None
            };
            self.feed(chunk, Numerics::Prefill, want, &mut |_, _, _| {})?;
        }
        self.logits()
    }

    /// Appends `tokens` with [`Numerics::Decode`] (the same logits as feeding them one at a
    /// time through [`Session::decode_step`], in one pass per chunk) and calls `each(pos,
    /// logits)` with the logits after every position, as for verifying drafted tokens.
    pub fn decode_each(
        &mut self,
        tokens: &[u32],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), SessionError> {
        self.forward_each(tokens, each, Numerics::Decode)
    }

    /// Like [`Session::prefill`], but calls `each(pos, logits)` with the logits after every
    /// position (teacher forcing), through the same batched forward pass.
    pub fn prefill_each(
        &mut self,
        tokens: &[u32],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), SessionError> {
        self.forward_each(tokens, each, Numerics::Prefill)
    }

    /// `tokens` in chunks of at most `max_chunk`, the logits of every position to `each`.
    fn forward_each(
        &mut self,
        tokens: &[u32],
        each: &mut dyn FnMut(usize, &[f32]),
        numerics: Numerics,
    ) -> Result<(), SessionError> {
        self.check_fits(tokens)?;
        for chunk in tokens.chunks(self.max_chunk) {
            self.feed(chunk, numerics, Want::All, &mut |_, pos, l| each(pos, l))?;
        }
        Ok(())
    }

    /// One decode step: appends `token` and computes the next logits.
    pub fn decode_step(&mut self, token: u32) -> Result<&[f32], SessionError> {
        self.feed(&[token], Numerics::Decode, Want::Last, &mut |_, _, _| {})?;
        self.logits()
    }

    /// Attaches a constraint to the session's sequence (`None` removes it) and returns the one
    /// it replaced: from the next sample on, every token is one it allows (see
    /// [`Engine::set_constraint`]). With prompt lookup on, [`Session::generate`] drafts only
    /// tokens the constraint allows and verifies them against the masked logits, so the output
    /// is token for token that of constrained greedy decoding one token a step.
    pub fn set_constraint(&mut self, constraint: Option<Constraint>) -> Option<Constraint> {
        self.engine
            .set_constraint(self.seq, constraint)
            .expect("a session's sequence lives as long as the session")
    }

    /// The session's constraint, if one is attached.
    pub fn constraint_mut(&mut self) -> Option<&mut Constraint> {
        self.engine
            .constraint_mut(self.seq)
            .expect("a session's sequence lives as long as the session")
    }

    /// Samples from the current logits (consuming them) with the session's sampler, which
    /// records the token as generated (masked by the session's constraint, if any, which the
    /// token advances).
    pub fn sample(&mut self) -> Result<u32, SessionError> {
        self.engine.sample(self.seq)
    }

    /// The most tokens [`Session::generate`] drafts by prompt lookup per step (0: off).
    pub fn lookup(&self) -> usize {
        self.lookup
    }

    /// Turns prompt-lookup decoding on with drafts of up to `n` tokens (capped at
    /// [`lookup::MAX_DRAFT`] and at the engine's rows per step less one), or off with 0. It
    /// only takes effect for a greedy sampler without penalties, where its output is token for
    /// token that of plain greedy decoding (constrained greedy decoding with a constraint
    /// attached); otherwise it decodes one token a step.
    pub fn set_lookup(&mut self, n: usize) {
        self.lookup = n
            .min(lookup::MAX_DRAFT)
            .min(self.engine.max_batch_tokens().saturating_sub(1));
    }

    /// The decode loop: from the current logits (after a prefill), samples up to `max_tokens`
    /// tokens with the session's sampler (see [`Session::set_sampler`]), stopping at any of
    /// `stop` (not passed to `on_token`), when `on_token` returns false, or when the context is
    /// full. With lookup on (see [`Session::set_lookup`]) and a greedy sampler, each step feeds
    /// the newest token plus a draft found by [`lookup::draft`], with decode numerics, keeps
    /// the drafted tokens greedy decoding agrees with and the token after them
    /// ([`lookup::Verifier`]; with a constraint, drafts are cut to what it allows and agreement
    /// is judged on the masked logits), and truncates the cache past the rest. Allocates
    /// nothing without a constraint (see [`crate::engine::constraint`] for what one allocates
    /// per token).
    pub fn generate(
        &mut self,
        max_tokens: usize,
        stop: &[u32],
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<GenerateStats, SessionError> {
        let start = Instant::now();
        let mut stats = GenerateStats {
            tokens: 0,
            reason: StopReason::MaxTokens,
            unfed: None,
            elapsed: Duration::ZERO,
            steps: 0,
            drafted: 0,
            accepted: 0,
        };
        if max_tokens > 0 && self.logits().is_err() {
            return Err(SessionError::NoLogits);
        }
        let plain_greedy = self.sampler().params().is_plain_greedy();
        let constrained = self.engine.is_constrained(self.seq)?;
        let lookup = if plain_greedy { self.lookup } else { 0 };
        // Tokens chosen but not yet passed on: `pending[..n_pending]`, in order. Plain decoding
        // holds one (just sampled); a verified draft can yield up to MAX_DRAFT + 1.
        let mut budget = lookup::DraftBudget::new(lookup);
        let mut pending = [0u32; lookup::MAX_DRAFT + 1];
        let mut n_pending = 0;
        // whether the sampler has recorded the pending tokens (it records those it samples;
        // verified ones are recorded as they are passed on)
        let mut recorded = true;
        if max_tokens > 0 {
            pending[0] = self.sample()?;
            n_pending = 1;
        }
        // `pending[i]` for i < n_pending - 1 is in the cache already (a verified draft token);
        // the last one is not.
        'outer: while n_pending > 0 {
            for (i, &token) in pending[..n_pending].iter().enumerate() {
                if !recorded {
                    self.sampler_mut().observe_generated(token);
                }
                stats.tokens += 1;
                stats.unfed = Some(token);
                let stopped = if stop.contains(&token) {
                    stats.reason = StopReason::StopToken(token);
                    true
                } else if !on_token(token) {
                    stats.reason = StopReason::Callback;
                    true
                } else {
                    stats.tokens == max_tokens
                };
                if stopped {
                    // Keep the cache exactly as plain decoding would leave it: `token` unfed,
                    // everything before it fed.
                    let fed = n_pending - 1 - i;
                    if fed > 0 {
                        let len = self.position() - fed;
                        self.truncate(len);
                    }
                    break 'outer;
                }
            }
            let token = pending[n_pending - 1];
            if self.position() >= self.ctx() {
                stats.reason = StopReason::ContextFull;
                break;
            }
            // Draft no further than the context and the token budget reach: the step yields
            // up to (draft + 1) tokens.
            let room = (self.ctx() - self.position() - 1).min(max_tokens - stats.tokens - 1);
            let mut row = [0u32; lookup::MAX_DRAFT + 1];
            row[0] = token;
            let cap = if lookup > 0 { budget.take() } else { 0 };
            let mut k = if cap > 0 {
                let history = self.engine.tokens(self.seq)?;
                lookup::draft(history, token, &mut row[1..1 + cap.min(room)])
            } else {
                0
            };
            if constrained && k > 0 {
                // a drafted token the grammar forbids could never be accepted: cut the draft
                // before it costs rows
                if let Some(c) = self.engine.constraint_mut(self.seq)? {
                    k = c.valid_prefix(&row[1..1 + k]);
                }
            }
            stats.steps += 1;
            stats.unfed = None;
            if k == 0 {
                self.feed(&[token], Numerics::Decode, Want::Last, &mut |_, _, _| {})?;
                pending[0] = self.sample()?;
                n_pending = 1;
                recorded = true;
                continue;
            }
            // Verify: the drafted tokens greedy decoding agrees with and the token after them
            // (with a constraint, judged on the masked logits and advancing it).
            let pos0 = self.position();
            let mut verifier = lookup::Verifier::new(&row[..k + 1], pos0);
            // the constraint leaves the engine for the step (the step's callback needs it while
            // the engine runs) and goes back whatever happens
            let mut c = if constrained {
                self.engine.set_constraint(self.seq, None)?
            } else {
                None
            };
            let fed = self.feed(
                &row[..k + 1],
                Numerics::Decode,
                Want::All,
                &mut |_, pos, l| verifier.check(pos, l, c.as_mut()),
            );
            if c.is_some() {
                self.engine.set_constraint(self.seq, c)?;
            }
            fed?;
            let verdict = verifier.verdict()?;
            let agree = verdict.accepted();
            budget.verified(k, agree);
            stats.drafted += k;
            stats.accepted += agree;
            // The fed rows past the agreed drafts are not part of the text.
            self.truncate(pos0 + 1 + agree);
            pending[..agree + 1].copy_from_slice(verdict.tokens());
            n_pending = agree + 1;
            recorded = false;
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }
}
