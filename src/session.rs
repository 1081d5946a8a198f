//! A session: the mutable half of inference. It owns the arena (KV cache, activations,
//! logits, sampler scratch; one allocation made in [`Session::new`]), a thread pool, and runs
//! the Qwen2 forward pass over shared, immutable [`Weights`].
//!
//! The forward pass reads top to bottom like the model card:
//! embed; per layer: rmsnorm, q/k/v + bias, rope, cache write, attention, o_proj, residual,
//! rmsnorm, gate/up, silu*mul, down, residual; final norm; lm_head.
//! Every weight matrix is read in its own format (a model may mix bf16, f16 and f32 tensors):
//! each matrix call dispatches once on its tensor's [`Dtype`] to a kernel monomorphized for it.
//!
//! The numerics of a pass are chosen by the caller, never guessed from its length
//! ([`Numerics`]): decode numerics (one exact matvec per row, attention one row at a time, the
//! same arithmetic whether a row comes alone or among others) or prefill numerics (matmuls over
//! the chunk, bf16 gate/up where enabled).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwenrt_kernels::par::{self, KvLayout};
use qwenrt_kernels::{ops, Bf16, Dtype, Isa, ThreadPool, F16, F32};

use crate::arena::{carve, Arena, ArenaError, MemoryPlan};
use crate::config::Config;
use crate::kv_cache::{CacheError, CacheInfo, KvCache, KvShape, KvStore};
use crate::sampler::{Sampler, SamplerError};
use crate::weights::{TensorRef, Weights};

/// Runs `$body` with the type `$W` bound to the marker of the weight format `$d`, so the body
/// is monomorphized once per format and the format is matched once per call.
macro_rules! by_format {
    ($d:expr, $W:ident => $body:expr) => {
        match $d {
            Dtype::BF16 => {
                type $W = Bf16;
                $body
            }
            Dtype::F16 => {
                type $W = F16;
                $body
            }
            Dtype::F32 => {
                type $W = F32;
                $body
            }
        }
    };
}

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
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ctx: 4096,
            max_chunk: 512,
            threads: 1,
            isa: None,
            prefill_bf16: true,
        }
    }
}

/// Why a session could not be created or a request could not be served.
#[derive(Debug)]
pub enum SessionError {
    /// A bad option (names the option).
    Option(String),
    Arena(ArenaError),
    /// The request does not fit in the context.
    ContextFull {
        needed: usize,
        ctx: usize,
    },
    TokenOutOfRange {
        token: u32,
        vocab: usize,
    },
    EmptyInput,
    /// Generation was asked for before any prompt was processed.
    NoLogits,
    Cache(CacheError),
    Sampler(SamplerError),
    Pool(std::io::Error),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Option(s) => f.write_str(s),
            SessionError::Arena(e) => write!(f, "{e}"),
            SessionError::ContextFull { needed, ctx } => write!(
                f,
                "context full: {needed} tokens do not fit in a context of {ctx} (raise --ctx)"
            ),
            SessionError::TokenOutOfRange { token, vocab } => {
                write!(
                    f,
                    "token id {token} is out of range for a vocabulary of {vocab}"
                )
            }
            SessionError::EmptyInput => f.write_str("empty input: there are no tokens to process"),
            SessionError::NoLogits => f.write_str("no logits yet: process a prompt first"),
            SessionError::Cache(e) => write!(f, "{e}"),
            SessionError::Sampler(e) => write!(f, "{e}"),
            SessionError::Pool(e) => write!(f, "cannot start the thread pool: {e}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<CacheError> for SessionError {
    fn from(e: CacheError) -> Self {
        SessionError::Cache(e)
    }
}

impl From<ArenaError> for SessionError {
    fn from(e: ArenaError) -> Self {
        SessionError::Arena(e)
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled (it is not passed to the callback).
    StopToken(u32),
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
    pub reason: StopReason,
    /// The last sampled token if it has not been fed through the model (it is not in the KV
    /// cache yet); a follow-up turn should process it first.
    pub unfed: Option<u32>,
    /// Time spent in forward passes and sampling.
    pub elapsed: Duration,
    /// Forward passes (decode steps) run.
    pub steps: usize,
}

/// How a forward pass computes its rows, chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// Each row exactly as a lone decode step computes it: the decode matvec for every row
    /// ([`par::matvec_rows`]: each matrix streamed once for all the rows, the same numbers as a
    /// matvec per row), attention per row. Rows given together (a draft to verify, a short
    /// prompt) get the same logits as fed one at a time.
    Decode,
    /// Matmuls over all rows; with [`SessionOptions::prefill_bf16`] on bf16 weights, the MLP's
    /// gate/up input rounded to bf16. The same for a chunk of any length, 1 included.
    Prefill,
}

/// Rows of logits a pass that wants every position's computes at once (the head is streamed
/// once per group of this many rows).
const LOGIT_ROWS: usize = 8;

/// The arena's regions, in order. `carve` hands them back in this order.
const REGIONS: usize = 19;

/// Which logits a forward pass computes.
enum LogitsMode<'f> {
    None,
    Last,
    Each(&'f mut dyn FnMut(usize, &[f32])),
}

/// The mutable state of one inference stream.
pub struct Session {
    weights: Arc<Weights>,
    isa: Isa,
    pool: ThreadPool,
    plan: MemoryPlan,
    arena: Arena,
    kv: KvCache,
    max_chunk: usize,
    prefill_bf16: bool,
    /// Whether the logits region holds the distribution after the last processed token.
    logits_ready: bool,
}

impl Session {
    /// Plans and allocates the arena (the only allocation a session makes for inference) and
    /// starts the thread pool.
    pub fn new(weights: Arc<Weights>, opts: &SessionOptions) -> Result<Session, SessionError> {
        let c = &weights.config;
        let (kv_shape, max_chunk) = Session::shape(c, opts)?;
        let isa = match opts.isa {
            Some(isa) if !isa.is_supported() => {
                return Err(SessionError::Option(format!(
                    "this CPU does not support ISA {isa}"
                )))
            }
            Some(isa) => isa,
            None => Isa::from_env().map_err(SessionError::Option)?,
        };
        let plan = Session::plan(c, kv_shape, max_chunk, opts.threads)?;
        let mut arena = Arena::new(&plan)?;
        let pool = ThreadPool::new(opts.threads).map_err(SessionError::Pool)?;
        {
            let bufs = carve::<REGIONS>(arena.floats_mut(), &plan);
            init_rope(&mut *bufs[15], c.rope_theta, c.head_dim);
        }
        Ok(Session {
            weights,
            isa,
            pool,
            plan,
            arena,
            kv: KvCache::new(kv_shape),
            max_chunk,
            prefill_bf16: opts.prefill_bf16,
            logits_ready: false,
        })
    }

    /// The arena plan of a session of `opts` over a model of `config`, without allocating it
    /// (to report or check its size up front). Checks the options as [`Session::new`] does.
    pub fn plan_for(config: &Config, opts: &SessionOptions) -> Result<MemoryPlan, SessionError> {
        let (kv_shape, max_chunk) = Session::shape(config, opts)?;
        Session::plan(config, kv_shape, max_chunk, opts.threads)
    }

    /// Checks `opts` against the model; returns the KV cache's shape and the chunk size.
    fn shape(c: &Config, opts: &SessionOptions) -> Result<(KvShape, usize), SessionError> {
        if opts.ctx == 0 {
            return Err(SessionError::Option("--ctx must be at least 1".into()));
        }
        if opts.ctx > c.max_position_embeddings {
            return Err(SessionError::Option(format!(
                "--ctx {} exceeds the model's max_position_embeddings ({})",
                opts.ctx, c.max_position_embeddings
            )));
        }
        if opts.threads == 0 || opts.threads > 1024 {
            return Err(SessionError::Option(format!(
                "--threads {} is out of range (1..=1024)",
                opts.threads
            )));
        }
        let max_chunk = opts.max_chunk.clamp(1, opts.ctx);
        let kv_shape = KvShape {
            layers: c.num_hidden_layers,
            kv_heads: c.num_key_value_heads,
            capacity: opts.ctx,
            head_dim: c.head_dim,
        };
        Ok((kv_shape, max_chunk))
    }

    fn plan(
        c: &Config,
        kv: KvShape,
        chunk: usize,
        threads: usize,
    ) -> Result<MemoryPlan, SessionError> {
        let (h, kvd, f, v, hd) = (
            c.hidden_size,
            c.kv_dim(),
            c.intermediate_size,
            c.vocab_size,
            c.head_dim,
        );
        let mut p = MemoryPlan::default();
        let kvs = "[layer, kv_head, position, head_dim]";
        p.push(
            "kv_cache.k",
            format!(
                "{kvs} = [{}, {}, {}, {}]",
                kv.layers, kv.kv_heads, kv.capacity, kv.head_dim
            ),
            kv.floats(),
        )?;
        p.push(
            "kv_cache.v",
            format!(
                "{kvs} = [{}, {}, {}, {}]",
                kv.layers, kv.kv_heads, kv.capacity, kv.head_dim
            ),
            kv.floats(),
        )?;
        p.push(
            "x",
            format!("[chunk, hidden] = [{chunk}, {h}]"),
            chunk.checked_mul(h),
        )?;
        p.push(
            "x_norm",
            format!("[chunk, hidden] = [{chunk}, {h}]"),
            chunk.checked_mul(h),
        )?;
        p.push(
            "q",
            format!("[chunk, heads*head_dim] = [{chunk}, {h}]"),
            chunk.checked_mul(h),
        )?;
        p.push(
            "k",
            format!("[chunk, kv_heads*head_dim] = [{chunk}, {kvd}]"),
            chunk.checked_mul(kvd),
        )?;
        p.push(
            "v",
            format!("[chunk, kv_heads*head_dim] = [{chunk}, {kvd}]"),
            chunk.checked_mul(kvd),
        )?;
        p.push(
            "attn_out",
            format!("[chunk, hidden] = [{chunk}, {h}]"),
            chunk.checked_mul(h),
        )?;
        p.push(
            "proj_out",
            format!("[chunk, hidden] = [{chunk}, {h}]"),
            chunk.checked_mul(h),
        )?;
        p.push(
            "mlp_gate",
            format!("[chunk, ffn] = [{chunk}, {f}]"),
            chunk.checked_mul(f),
        )?;
        p.push(
            "mlp_up",
            format!("[chunk, ffn] = [{chunk}, {f}]"),
            chunk.checked_mul(f),
        )?;
        let scores = par::scores_len(threads, c.num_attention_heads, kv.capacity);
        p.push(
            "attn_scores",
            format!("[max(threads, heads), ctx] -> {scores}"),
            Some(scores),
        )?;
        let lr = LOGIT_ROWS.min(chunk);
        p.push(
            "logits",
            format!("[min(chunk, {LOGIT_ROWS}), vocab] = [{lr}, {v}]"),
            lr.checked_mul(v),
        )?;
        p.push("sampler.probs", format!("[vocab] = [{v}]"), Some(v))?;
        p.push(
            "sampler.candidates",
            format!("[vocab] u32 = [{v}]"),
            Some(v),
        )?;
        p.push(
            "rope.inv_freq",
            format!("[head_dim/2] = [{}]", hd / 2),
            Some(hd / 2),
        )?;
        p.push(
            "rope.cos",
            format!("[chunk, head_dim/2] = [{chunk}, {}]", hd / 2),
            chunk.checked_mul(hd / 2),
        )?;
        p.push(
            "rope.sin",
            format!("[chunk, head_dim/2] = [{chunk}, {}]", hd / 2),
            chunk.checked_mul(hd / 2),
        )?;
        // the activations prepared for the weights' dot products: the decode matvec's bf16
        // hi/lo split, or prefill's bf16 pairs for the gate/up matmuls
        let split = par::matvec_rows_scratch_len(chunk, h.max(f));
        let pairs = ops::matmul_bf16dot_scratch_len(chunk, h);
        p.push(
            "x_prep",
            format!(
                "max(matvec split [min(chunk, {}), max(hidden, ffn)] = {split}, bf16 pairs [chunk, hidden/2] = {pairs})",
                par::MATVEC_ROWS_MAX
            ),
            Some(split.max(pairs)),
        )?;
        debug_assert_eq!(p.regions().len(), REGIONS);
        Ok(p)
    }

    /// The arena's regions and total.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Address and size of the arena (it never changes for the life of the session).
    pub fn arena_address(&self) -> (usize, usize) {
        self.arena.address()
    }

    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Context length (KV cache capacity).
    pub fn ctx(&self) -> usize {
        self.kv.capacity()
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.kv.used()
    }

    pub fn cache_info(&self) -> CacheInfo {
        self.kv.info()
    }

    /// Empties the KV cache; the arena stays where it is.
    pub fn reset(&mut self) {
        self.kv.reset();
        self.logits_ready = false;
    }

    /// Rewinds the KV cache to its first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
        self.logits_ready = false;
    }

    /// The logits after the last processed token.
    pub fn logits(&mut self) -> Result<&[f32], SessionError> {
        if !self.logits_ready {
            return Err(SessionError::NoLogits);
        }
        let plan = &self.plan;
        let bufs = carve::<REGIONS>(self.arena.floats_mut(), plan);
        let [.., logits, _, _, _, _, _, _] = bufs;
        Ok(&logits[..self.weights.config.vocab_size])
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), SessionError> {
        if tokens.is_empty() {
            return Err(SessionError::EmptyInput);
        }
        let vocab = self.weights.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(SessionError::TokenOutOfRange { token, vocab });
        }
        let needed = self.kv.used() + tokens.len();
        if needed > self.kv.capacity() {
            return Err(SessionError::ContextFull {
                needed,
                ctx: self.kv.capacity(),
            });
        }
        Ok(())
    }

    /// Appends `tokens` to the context (in chunks of at most `max_chunk`) and computes the
    /// logits of the token after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], SessionError> {
        self.check_tokens(tokens)?;
        let chunks = tokens.len().div_ceil(self.max_chunk);
        for (i, chunk) in tokens.chunks(self.max_chunk).enumerate() {
            let mode = if i + 1 == chunks {
                LogitsMode::Last
            } else {
                LogitsMode::None
            };
            self.forward(chunk, mode, Numerics::Prefill)?;
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
        self.check_tokens(tokens)?;
        for chunk in tokens.chunks(self.max_chunk) {
            self.forward(chunk, LogitsMode::Each(each), numerics)?;
        }
        Ok(())
    }

    /// One decode step: appends `token` and computes the next logits.
    pub fn decode_step(&mut self, token: u32) -> Result<&[f32], SessionError> {
        self.check_tokens(&[token])?;
        self.forward(&[token], LogitsMode::Last, Numerics::Decode)?;
        self.logits()
    }

    /// Samples from the current logits (modifying them) with the arena's sampler scratch.
    pub fn sample(&mut self, sampler: &mut Sampler) -> Result<u32, SessionError> {
        if !self.logits_ready {
            return Err(SessionError::NoLogits);
        }
        let plan = &self.plan;
        let [.., logits, probs, candidates, _, _, _, _] =
            carve::<REGIONS>(self.arena.floats_mut(), plan);
        let candidates: &mut [u32] = bytemuck::cast_slice_mut(candidates);
        let vocab = self.weights.config.vocab_size;
        let token = sampler.sample(&mut logits[..vocab], probs, candidates);
        // the logits were modified (penalty); they no longer describe the distribution
        self.logits_ready = false;
        Ok(token)
    }

    /// The decode loop: from the current logits (after a prefill), samples up to `max_tokens`
    /// tokens, stopping at any of `stop` (not passed to `on_token`), when `on_token` returns
    /// false, or when the context is full. Allocates nothing.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
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
        };
        if max_tokens > 0 && !self.logits_ready {
            return Err(SessionError::NoLogits);
        }
        while stats.tokens < max_tokens {
            let token = self.sample(sampler)?;
            sampler.observe(token);
            stats.tokens += 1;
            stats.unfed = Some(token);
            if stop.contains(&token) {
                stats.reason = StopReason::StopToken(token);
                break;
            }
            if !on_token(token) {
                stats.reason = StopReason::Callback;
                break;
            }
            if stats.tokens == max_tokens {
                break;
            }
            if self.kv.used() >= self.kv.capacity() {
                stats.reason = StopReason::ContextFull;
                break;
            }
            self.forward(&[token], LogitsMode::Last, Numerics::Decode)?;
            stats.steps += 1;
            stats.unfed = None;
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// One forward pass over `tokens` (at most `max_chunk`) at the next positions.
    fn forward(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode<'_>,
        numerics: Numerics,
    ) -> Result<(), SessionError> {
        self.check_tokens(tokens)?;
        debug_assert!(tokens.len() <= self.max_chunk);
        let result = self.forward_layers(tokens, mode, numerics);
        match result {
            Ok(()) => {
                self.kv.commit();
                Ok(())
            }
            Err(e) => {
                self.kv.rollback();
                self.logits_ready = false;
                Err(e)
            }
        }
    }

    fn forward_layers(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode<'_>,
        numerics: Numerics,
    ) -> Result<(), SessionError> {
        let weights = &*self.weights;
        let c = &weights.config;
        let (isa, pool, kv) = (self.isa, &self.pool, &mut self.kv);
        let prefill_bf16 = self.prefill_bf16;
        let decode = numerics == Numerics::Decode;
        let n = tokens.len();
        let pos0 = kv.used();
        let (h, kvd, f, hd) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        let (nh, nkv, eps) = (c.num_attention_heads, c.num_key_value_heads, c.rms_norm_eps);
        let [kv_k, kv_v, x, x_norm, q, k, v, attn_out, proj_out, mlp_gate, mlp_up, attn_scores, logits, _probs, _candidates, inv_freq, rope_cos, rope_sin, x_prep] =
            carve::<REGIONS>(self.arena.floats_mut(), &self.plan);
        let x = &mut x[..n * h]; // [n, hidden]: the residual stream
        let x_norm = &mut x_norm[..n * h]; // [n, hidden]
        let q = &mut q[..n * h]; // [n, heads * head_dim]
        let k = &mut k[..n * kvd]; // [n, kv_heads * head_dim]
        let v = &mut v[..n * kvd]; // [n, kv_heads * head_dim]
        let attn_out = &mut attn_out[..n * h]; // [n, hidden]
        let proj_out = &mut proj_out[..n * h]; // [n, hidden]
        let mlp_gate = &mut mlp_gate[..n * f]; // [n, ffn]
        let mlp_up = &mut mlp_up[..n * f]; // [n, ffn]
        let wb = |t: &TensorRef| weights.bytes(t);
        // `out = input · wᵀ` over the pass's rows, in w's own format: under decode numerics the
        // decode matvec for each row (matvec_rows), under prefill numerics one matmul (bf16 dot products for the MLP's
        // gate/up on bf16 weights when enabled).
        let linear = |w: &TensorRef,
                      input: &[f32],
                      k_in: usize,
                      out: &mut [f32],
                      gate_up: bool,
                      prep: &mut [f32]| {
            let wbytes = weights.bytes(w);
            if decode {
                // every row through the decode matvec, the weights streamed once for all rows
                by_format!(w.dtype, W => par::matvec_rows::<W>(pool, isa, wbytes, k_in, input, prep, out))
            } else if gate_up && prefill_bf16 && w.dtype == Dtype::BF16 {
                par::matmul_bf16dot(pool, isa, wbytes, k_in, input, prep, out)
            } else {
                by_format!(w.dtype, W => par::matmul::<W>(pool, isa, wbytes, k_in, input, out))
            }
        };
        let layout = KvLayout {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            cap: kv.capacity(),
        };

        // rope angles of this chunk's positions, once for every layer: [n, head_dim/2] each
        let half = hd / 2;
        let rope_cos = &mut rope_cos[..n * half];
        let rope_sin = &mut rope_sin[..n * half];
        for (t, (c, s)) in rope_cos
            .chunks_exact_mut(half)
            .zip(rope_sin.chunks_exact_mut(half))
            .enumerate()
        {
            rope_at(inv_freq, c, s, pos0 + t);
        }

        // embed: x[t] = embed_tokens[token]
        let embed = wb(&weights.embed_tokens);
        let (ed, es) = (
            weights.embed_tokens.dtype,
            weights.embed_tokens.dtype.size(),
        );
        for (t, &token) in tokens.iter().enumerate() {
            let row = token as usize * h * es;
            ed.to_f32(&embed[row..row + h * es], &mut x[t * h..(t + 1) * h]);
        }

        for (l, layer) in weights.layers.iter().enumerate() {
            // attention block
            rmsnorm_rows(isa, x, x_norm, h, &layer.input_layernorm, weights, eps);
            let qkv_format = layer.q_proj.dtype;
            if n == 1 && decode && [layer.k_proj.dtype, layer.v_proj.dtype] == [qkv_format; 2] {
                // one row: q, k and v read the same activations, so one dispatch streams all
                // three (the same kernel calls per row as three matvecs: the same numbers)
                by_format!(qkv_format, W => par::matvec3::<W>(
                    pool,
                    isa,
                    x_norm,
                    x_prep,
                    wb(&layer.q_proj),
                    q,
                    wb(&layer.k_proj),
                    k,
                    wb(&layer.v_proj),
                    v,
                ));
            } else {
                linear(&layer.q_proj, x_norm, h, q, false, x_prep);
                linear(&layer.k_proj, x_norm, h, k, false, x_prep);
                linear(&layer.v_proj, x_norm, h, v, false, x_prep);
            }
            bias_rows(isa, q, h, &layer.q_bias, weights);
            bias_rows(isa, k, kvd, &layer.k_bias, weights);
            bias_rows(isa, v, kvd, &layer.v_bias, weights);
            for t in 0..n {
                let (cos, sin) = (
                    &rope_cos[t * half..(t + 1) * half],
                    &rope_sin[t * half..(t + 1) * half],
                );
                ops::rope(isa, &mut q[t * h..(t + 1) * h], hd, cos, sin);
                ops::rope(isa, &mut k[t * kvd..(t + 1) * kvd], hd, cos, sin);
            }
            kv.write(&mut KvStore { k: kv_k, v: kv_v }, l, pos0, k, v)?;
            let (layer_k, layer_v) = kv.view(kv_k, kv_v, l, pos0 + n)?;
            if decode {
                // each row as a lone decode step attends: one query at its own position
                for t in 0..n {
                    par::attention(
                        pool,
                        isa,
                        layout,
                        pos0 + t,
                        &q[t * h..(t + 1) * h],
                        layer_k,
                        layer_v,
                        attn_scores,
                        &mut attn_out[t * h..(t + 1) * h],
                    );
                }
            } else {
                par::attention(
                    pool,
                    isa,
                    layout,
                    pos0,
                    q,
                    layer_k,
                    layer_v,
                    attn_scores,
                    attn_out,
                );
            }
            linear(&layer.o_proj, attn_out, h, proj_out, false, x_prep);
            ops::add(isa, x, proj_out);

            // MLP block
            rmsnorm_rows(
                isa,
                x,
                x_norm,
                h,
                &layer.post_attention_layernorm,
                weights,
                eps,
            );
            let gu_format = layer.gate_proj.dtype;
            if n == 1 && decode && layer.up_proj.dtype == gu_format {
                by_format!(gu_format, W => par::matvec2::<W>(
                    pool,
                    isa,
                    x_norm,
                    x_prep,
                    wb(&layer.gate_proj),
                    mlp_gate,
                    wb(&layer.up_proj),
                    mlp_up,
                ));
            } else {
                linear(&layer.gate_proj, x_norm, h, mlp_gate, true, x_prep);
                linear(&layer.up_proj, x_norm, h, mlp_up, true, x_prep);
            }
            ops::silu_mul(isa, mlp_gate, mlp_up);
            linear(&layer.down_proj, mlp_gate, f, proj_out, false, x_prep);
            ops::add(isa, x, proj_out);
        }

        // final norm and lm_head
        let norm = (wb(&weights.norm), weights.norm.dtype);
        let vocab = c.vocab_size;
        let (head, hdt) = (wb(&weights.lm_head), weights.lm_head.dtype);
        match mode {
            LogitsMode::None => {
                self.logits_ready = false;
            }
            LogitsMode::Last => {
                let last = &x[(n - 1) * h..n * h];
                ops::rmsnorm(isa, last, norm.0, norm.1, eps, &mut x_norm[..h]);
                matvec(
                    pool,
                    isa,
                    hdt,
                    head,
                    &x_norm[..h],
                    x_prep,
                    &mut logits[..vocab],
                );
                self.logits_ready = true;
            }
            LogitsMode::Each(each) => {
                // up to LOGIT_ROWS rows at a time through the head, which is streamed once per
                // group (the same numbers as one matvec per row)
                let mut last_row = 0;
                for t0 in (0..n).step_by(LOGIT_ROWS) {
                    let g = LOGIT_ROWS.min(n - t0);
                    rmsnorm_rows(
                        isa,
                        &x[t0 * h..(t0 + g) * h],
                        &mut x_norm[..g * h],
                        h,
                        &weights.norm,
                        weights,
                        eps,
                    );
                    by_format!(hdt, W => par::matvec_rows::<W>(pool, isa, head, h, &x_norm[..g * h], x_prep, &mut logits[..g * vocab]));
                    for (j, row) in logits[..g * vocab].chunks_exact(vocab).enumerate() {
                        each(pos0 + t0 + j, row);
                    }
                    last_row = g - 1;
                }
                // the logits after the last position are what `logits` and `sample` read
                logits.copy_within(last_row * vocab..(last_row + 1) * vocab, 0);
                self.logits_ready = true;
            }
        }
        Ok(())
    }
}

/// [`par::matvec`] on a matrix of format `d`.
#[allow(clippy::too_many_arguments)]
fn matvec(
    pool: &ThreadPool,
    isa: Isa,
    d: Dtype,
    w: &[u8],
    x: &[f32],
    prep: &mut [f32],
    y: &mut [f32],
) {
    by_format!(d, W => par::matvec::<W>(pool, isa, w, x, prep, y))
}

/// `out[t] = rmsnorm(x[t]) * weight` for every row.
fn rmsnorm_rows(
    isa: Isa,
    x: &[f32],
    out: &mut [f32],
    width: usize,
    weight: &TensorRef,
    weights: &Weights,
    eps: f32,
) {
    let wb = weights.bytes(weight);
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        ops::rmsnorm(isa, xr, wb, weight.dtype, eps, or);
    }
}

/// `y[t] += bias` for every row.
fn bias_rows(isa: Isa, y: &mut [f32], width: usize, bias: &TensorRef, weights: &Weights) {
    let b = weights.bytes(bias);
    for row in y.chunks_exact_mut(width) {
        ops::add_bias(isa, row, b, bias.dtype);
    }
}

/// `inv_freq[i] = 1 / theta^(2i / head_dim)`, in f32 as transformers computes it.
fn init_rope(inv_freq: &mut [f32], theta: f32, head_dim: usize) {
    for (i, f) in inv_freq.iter_mut().enumerate() {
        let exponent = (2 * i) as f32 / head_dim as f32;
        *f = 1.0 / theta.powf(exponent);
    }
}

/// The cos/sin of each frequency at position `pos` (the angle rounded to f32 first, as
/// transformers does).
fn rope_at(inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32], pos: usize) {
    for ((f, c), s) in inv_freq.iter().zip(cos.iter_mut()).zip(sin.iter_mut()) {
        let angle = pos as f32 * f;
        *c = (angle as f64).cos() as f32;
        *s = (angle as f64).sin() as f32;
    }
}
