//! The engine: one model's shared weights, one thread pool, and one arena sized at startup for
//! `max_sequences` sequences of `ctx` positions each plus the scratch of a step of
//! `max_batch_tokens` rows. It runs steps over many [`SeqId`]s at once: every weight matrix is
//! streamed once per step for all of the step's rows, which is where a CPU server's decode
//! throughput comes from (decode is bound by reading the weights).
//!
//! A step ([`Engine::step`]) takes, per sequence, the tokens it contributes ([`Feed`]): one
//! for decode, a chunk for prefill, several to verify a draft, each with its [`Numerics`]
//! chosen explicitly. RoPE and the KV write happen per row at that row's position; attention
//! runs per sequence over its own cache. A sequence's logits never depend on which other
//! sequences share its step.
//!
//! Sequences live in slots made at startup: creating, resetting, truncating and releasing one
//! moves bookkeeping only, so none of it allocates, and neither does a step or a sample.
//! [`Engine::fork`] copies a sequence's cache prefix into another (`n` completions of one
//! prompt, prefilled once), within the arena.
//!
//! A feed may ask for its sequence's embedding instead of logits ([`Want::Embedding`]): the
//! final-normed hidden state of its last row (transformers' `last_hidden_state` there), kept
//! in the arena's `seq.embedding` region until the sequence's next step and read with
//! [`Engine::embedding`]. The head is not run for such a feed; a step without one computes
//! nothing more than before. Pooling it (Qwen3-Embedding: this last row, L2-normalized) is
//! the caller's.
//!
//! A sequence may carry a [`Constraint`] ([`Engine::set_constraint`]): a JSON schema, regex or
//! grammar that masks its logits before each sample. It only touches sampling, so constrained
//! and unconstrained sequences share steps; see [`constraint`] for what it allocates.

pub mod arena;
pub mod constraint;
mod forward;
pub mod gbnf;
pub mod kv_cache;
pub mod lookup;
mod plan;
pub mod prompt_cache;
pub mod sampler;
pub mod session;

use std::fmt;
use std::sync::Arc;

use qwenrt_kernels::{Cpu, Dtype, Isa, ThreadPool};

use crate::engine::arena::{Arena, ArenaError, MemoryPlan};
use crate::engine::constraint::{Constraint, ConstraintError};
use crate::engine::kv_cache::{CacheError, CacheInfo, KvCache, KvShape};
use crate::engine::sampler::{Sampler, SamplerError, SamplerParams};
use crate::model::config::Config;
use crate::model::weights::Weights;

use plan::{ArenaBufs, Dims};

/// How an engine is sized and run.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Context length of each sequence: its KV cache's capacity in positions.
    pub ctx: usize,
    /// Sequences that can exist at once (each gets `ctx` positions of KV cache).
    pub max_sequences: usize,
    /// The most rows (tokens, over all sequences) one step computes.
    pub max_batch_tokens: usize,
    /// Threads for the forward pass (the calling thread counts).
    pub threads: usize,
    /// The kernels' instruction set; `None` means `QWENRT_ISA` or the best the CPU has.
    pub isa: Option<Isa>,
    /// Under [`Numerics::Prefill`], the MLP's gate/up input is rounded to bf16 for AVX512-BF16
    /// dot products on bf16 weights (see [`crate::engine::session::SessionOptions::prefill_bf16`]).
    pub prefill_bf16: bool,
    /// The KV cache's element type: F32, or BF16 / F16 (half the memory per sequence; rows are
    /// rounded to nearest-even as they are written, and attention reads them in 16 bits).
    pub kv_dtype: Dtype,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ctx: 4096,
            max_sequences: 1,
            max_batch_tokens: 512,
            threads: 1,
            isa: None,
            prefill_bf16: true,
            kv_dtype: Dtype::F32,
        }
    }
}

/// Why the engine refused a request. Nothing was changed.
#[derive(Debug)]
pub enum EngineError {
    /// A bad option (names the option).
    Option(String),
    /// The arena could not be planned or allocated.
    Arena(ArenaError),
    /// The request does not fit in the sequence's context.
    ContextFull {
        /// Positions the sequence would hold after the step.
        needed: usize,
        /// Positions its cache holds.
        ctx: usize,
    },
    /// A token id past the vocabulary.
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A step with no feeds, or a feed with no tokens.
    EmptyInput,
    /// Logits were asked for before any were computed (or after they were consumed).
    NoLogits,
    /// An embedding was asked for but the sequence's last step did not compute one.
    NoEmbedding,
    /// The KV cache refused a write (a bug if it happens: the step checks first).
    Cache(CacheError),
    /// Bad sampling parameters.
    Sampler(SamplerError),
    /// The sequence's constraint failed while masking or advancing (it stays attached, failed;
    /// remove it with [`Engine::set_constraint`] to go on unconstrained).
    Constraint(ConstraintError),
    /// The thread pool could not start.
    Pool(std::io::Error),
    /// Every sequence slot is taken.
    NoFreeSequence {
        /// Sequences the engine was sized for.
        max: usize,
    },
    /// The id names no live sequence (released, or from another engine).
    UnknownSequence(SeqId),
    /// A step named the same sequence twice.
    DuplicateSequence(SeqId),
    /// A step has more rows than the engine was sized for.
    BatchTooLarge {
        /// Rows in the step.
        rows: usize,
        /// Rows the engine was sized for.
        max: usize,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Option(s) => f.write_str(s),
            EngineError::Arena(e) => write!(f, "{e}"),
            EngineError::ContextFull { needed, ctx } => write!(
                f,
                "context full: {needed} tokens do not fit in a context of {ctx} (raise --ctx)"
            ),
            EngineError::TokenOutOfRange { token, vocab } => write!(
                f,
                "token id {token} is out of range for a vocabulary of {vocab}"
            ),
            EngineError::EmptyInput => f.write_str("empty input: there are no tokens to process"),
            EngineError::NoLogits => f.write_str("no logits yet: process a prompt first"),
            EngineError::NoEmbedding => f.write_str(
                "no embedding: the sequence's last step did not end with a feed that wants Want::Embedding",
            ),
            EngineError::Cache(e) => write!(f, "{e}"),
            EngineError::Sampler(e) => write!(f, "{e}"),
            EngineError::Constraint(e) => write!(f, "{e}"),
            EngineError::Pool(e) => write!(f, "cannot start the thread pool: {e}"),
            EngineError::NoFreeSequence { max } => {
                write!(f, "all {max} sequences are in use (raise max_sequences)")
            }
            EngineError::UnknownSequence(id) => write!(f, "sequence {id} does not exist"),
            EngineError::DuplicateSequence(id) => {
                write!(f, "sequence {id} appears twice in one step")
            }
            EngineError::BatchTooLarge { rows, max } => write!(
                f,
                "a step of {rows} tokens exceeds max_batch_tokens ({max})"
            ),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<CacheError> for EngineError {
    fn from(e: CacheError) -> Self {
        EngineError::Cache(e)
    }
}

impl From<ArenaError> for EngineError {
    fn from(e: ArenaError) -> Self {
        EngineError::Arena(e)
    }
}

impl From<ConstraintError> for EngineError {
    fn from(e: ConstraintError) -> Self {
        EngineError::Constraint(e)
    }
}

impl From<SamplerError> for EngineError {
    fn from(e: SamplerError) -> Self {
        EngineError::Sampler(e)
    }
}

/// A sequence of an [`Engine`]: a slot index and the slot's generation, so an id kept past
/// [`Engine::release`] is refused instead of reaching whoever holds the slot next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId {
    slot: u32,
    generation: u32,
}

impl SeqId {
    /// The slot index (`0..max_sequences`): the sequence's place in the arena.
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// How a step computes a feed's rows, chosen by the caller, never guessed from the row count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// Each row exactly as a lone decode step computes it: the decode matvec for every row
    /// (each matrix streamed once for all such rows of the step, the same numbers as a matvec
    /// per row), attention per row. Rows given together (a draft to verify, a short prompt,
    /// rows of other sequences) get the same logits as fed one at a time.
    Decode,
    /// Matmuls over the feed's rows; with [`EngineOptions::prefill_bf16`] on bf16 weights, the
    /// MLP's gate/up input rounded to bf16. The same for a chunk of any length, 1 included.
    Prefill,
}

/// Which logits a feed wants from a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// None (a prompt chunk before the last).
    None,
    /// The logits after the feed's last token, kept in the sequence for [`Engine::logits`]
    /// and [`Engine::sample`].
    Last,
    /// The logits after every token, passed to the step's callback; the last are also kept.
    All,
    /// No logits: the final-normed hidden state of the feed's last row (the model's output
    /// before the head), kept in the sequence for [`Engine::embedding`]. For embedding a
    /// prompt: feed its last chunk with this (the earlier ones with [`Want::None`]).
    Embedding,
}

/// One sequence's part of a step.
#[derive(Clone, Copy, Debug)]
pub struct Feed<'t> {
    /// The sequence the tokens belong to.
    pub seq: SeqId,
    /// Tokens appended to the sequence at its next positions.
    pub tokens: &'t [u32],
    /// Exact decode numerics or prefill's faster ones, for every row of this feed.
    pub numerics: Numerics,
    /// Which rows' logits to compute.
    pub logits: Want,
}

/// The bookkeeping of one sequence slot (its storage is in the arena).
struct Slot {
    live: bool,
    generation: u32,
    kv: KvCache,
    sampler: Sampler,
    /// The grammar this sequence's samples must follow, if any.
    constraint: Option<Box<Constraint>>,
    /// Whether `seq.logits` holds the distribution after the last processed token.
    logits_ready: bool,
    /// Whether `seq.embedding` holds the hidden state of the last processed token.
    embedding_ready: bool,
}

/// Shared weights, one thread pool, one arena; steps over many sequences.
pub struct Engine {
    weights: Arc<Weights>,
    /// What the kernels run on, decided once here ([`Cpu::choose`]) and passed to every call.
    cpu: Cpu,
    /// Every weight matrix with its kernel, chosen once here from its format, its layout and
    /// `cpu`.
    model: forward::Model,
    pool: ThreadPool,
    plan: MemoryPlan,
    arena: Arena,
    slots: Vec<Slot>,
    max_rows: usize,
}

impl Engine {
    /// Plans and allocates the arena (the only allocation the engine makes for inference),
    /// makes every sequence slot and starts the thread pool.
    pub fn new(weights: Arc<Weights>, opts: &EngineOptions) -> Result<Engine, EngineError> {
        let c = &weights.config;
        let dims = Engine::dims(c, opts, weights.has_quantized())?;
        if let Some(isa) = opts.isa.filter(|isa| !isa.is_supported()) {
            return Err(EngineError::Option(format!(
                "this CPU does not support ISA {isa}"
            )));
        }
        let cpu = Cpu::choose(opts.isa).map_err(EngineError::Option)?;
        let plan = plan::plan(c, dims)?;
        let mut arena = Arena::new(&plan)?;
        let pool = ThreadPool::new(opts.threads).map_err(EngineError::Pool)?;
        forward::init_rope(
            ArenaBufs::carve(arena.floats_mut(), &plan).inv_freq,
            c.rope_theta,
            c.head_dim,
        );
        let model = forward::Model::prepare(&weights, cpu, opts.prefill_bf16);
        let greedy = Sampler::new(SamplerParams::greedy())?;
        let slots = (0..dims.sequences)
            .map(|_| Slot {
                live: false,
                generation: 0,
                kv: KvCache::new(dims.kv),
                sampler: greedy.clone(),
                constraint: None,
                logits_ready: false,
                embedding_ready: false,
            })
            .collect();
        Ok(Engine {
            weights,
            cpu,
            model,
            pool,
            plan,
            arena,
            slots,
            max_rows: dims.rows,
        })
    }

    /// The arena plan of an engine of `opts` over a model of `config`, without allocating it
    /// (to report or check its size up front). Checks the options as [`Engine::new`] does.
    /// It plans for float weights; [`Engine::plan_for_weights`] plans for the formats of
    /// actual weights (block-quantized matrices add the `quant_scratch` region).
    pub fn plan_for(config: &Config, opts: &EngineOptions) -> Result<MemoryPlan, EngineError> {
        Ok(plan::plan(config, Engine::dims(config, opts, false)?)?)
    }

    /// The arena plan of an engine of `opts` over `weights`, without allocating it: the plan
    /// [`Engine::new`] would allocate.
    pub fn plan_for_weights(
        weights: &Weights,
        opts: &EngineOptions,
    ) -> Result<MemoryPlan, EngineError> {
        let c = &weights.config;
        Ok(plan::plan(
            c,
            Engine::dims(c, opts, weights.has_quantized())?,
        )?)
    }

    fn dims(c: &Config, opts: &EngineOptions, quantized: bool) -> Result<Dims, EngineError> {
        if opts.ctx == 0 {
            return Err(EngineError::Option("--ctx must be at least 1".into()));
        }
        if opts.ctx > c.max_position_embeddings {
            return Err(EngineError::Option(format!(
                "--ctx {} exceeds the model's max_position_embeddings ({})",
                opts.ctx, c.max_position_embeddings
            )));
        }
        if opts.threads == 0 || opts.threads > 1024 {
            return Err(EngineError::Option(format!(
                "--threads {} is out of range (1..=1024)",
                opts.threads
            )));
        }
        if opts.max_sequences == 0 || opts.max_sequences > 4096 {
            return Err(EngineError::Option(format!(
                "max_sequences {} is out of range (1..=4096)",
                opts.max_sequences
            )));
        }
        if opts.max_batch_tokens == 0 {
            return Err(EngineError::Option(
                "max_batch_tokens must be at least 1".into(),
            ));
        }
        Ok(Dims {
            sequences: opts.max_sequences,
            kv: KvShape {
                layers: c.num_hidden_layers,
                kv_heads: c.num_key_value_heads,
                capacity: opts.ctx,
                head_dim: c.head_dim,
                dtype: opts.kv_dtype,
            },
            rows: opts.max_batch_tokens.min(opts.ctx * opts.max_sequences),
            threads: opts.threads,
            quantized,
        })
    }

    /// The arena's regions (KV cache of every sequence, each sequence's logits, tokens and
    /// embedding, the step scratch) and total.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Address and size of the arena (it never changes for the life of the engine).
    pub fn arena_address(&self) -> (usize, usize) {
        self.arena.address()
    }

    /// The shared weights.
    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.cpu.isa()
    }

    /// What the kernels run on: the instruction set and the extensions in use.
    pub fn cpu(&self) -> Cpu {
        self.cpu
    }

    /// Threads in the engine's pool.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The KV cache's element type.
    pub fn kv_dtype(&self) -> Dtype {
        self.slots[0].kv.shape().dtype
    }

    /// Context length of each sequence.
    pub fn ctx(&self) -> usize {
        self.slots[0].kv.capacity()
    }

    /// The most sequences that can exist at once.
    pub fn max_sequences(&self) -> usize {
        self.slots.len()
    }

    /// The most rows one step computes.
    pub fn max_batch_tokens(&self) -> usize {
        self.max_rows
    }

    /// Sequences that exist now.
    pub fn live_sequences(&self) -> usize {
        self.slots.iter().filter(|s| s.live).count()
    }

    /// A new, empty sequence sampling with `params`. Takes a free slot; allocates nothing.
    pub fn create_sequence(&mut self, params: SamplerParams) -> Result<SeqId, EngineError> {
        let sampler = Sampler::new(params)?;
        let max = self.slots.len();
        let (i, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| !s.live)
            .ok_or(EngineError::NoFreeSequence { max })?;
        slot.live = true;
        slot.generation = slot.generation.wrapping_add(1);
        slot.kv.reset();
        slot.sampler = sampler;
        slot.constraint = None;
        slot.logits_ready = false;
        slot.embedding_ready = false;
        Ok(SeqId {
            slot: i as u32,
            generation: slot.generation,
        })
    }

    /// Frees the sequence's slot for reuse; `seq` is refused from now on.
    pub fn release(&mut self, seq: SeqId) -> Result<(), EngineError> {
        let slot = self.slot_mut(seq)?;
        slot.live = false;
        slot.kv.reset();
        slot.constraint = None;
        slot.logits_ready = false;
        slot.embedding_ready = false;
        Ok(())
    }

    fn slot(&self, seq: SeqId) -> Result<&Slot, EngineError> {
        match self.slots.get(seq.slot()) {
            Some(s) if s.live && s.generation == seq.generation => Ok(s),
            _ => Err(EngineError::UnknownSequence(seq)),
        }
    }

    fn slot_mut(&mut self, seq: SeqId) -> Result<&mut Slot, EngineError> {
        match self.slots.get_mut(seq.slot()) {
            Some(s) if s.live && s.generation == seq.generation => Ok(s),
            _ => Err(EngineError::UnknownSequence(seq)),
        }
    }

    /// Tokens in the sequence's KV cache (its next position).
    pub fn position(&self, seq: SeqId) -> Result<usize, EngineError> {
        Ok(self.slot(seq)?.kv.used())
    }

    /// How full `seq`'s cache is.
    pub fn cache_info(&self, seq: SeqId) -> Result<CacheInfo, EngineError> {
        Ok(self.slot(seq)?.kv.info())
    }

    /// The tokens in the sequence's cache, in order (what its positions hold).
    pub fn tokens(&mut self, seq: SeqId) -> Result<&[u32], EngineError> {
        let (i, used) = (seq.slot(), self.slot(seq)?.kv.used());
        let ctx = self.ctx();
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let all: &[u32] = bytemuck::cast_slice(bufs.seq_tokens);
        Ok(&all[i * ctx..i * ctx + used])
    }

    /// Empties the sequence (its sampler's history too, and its constraint is dropped); its
    /// slot and memory stay.
    pub fn reset(&mut self, seq: SeqId) -> Result<(), EngineError> {
        let slot = self.slot_mut(seq)?;
        slot.kv.reset();
        slot.sampler.reset();
        slot.constraint = None;
        slot.logits_ready = false;
        slot.embedding_ready = false;
        Ok(())
    }

    /// Rewinds the sequence to its first `len` positions (a no-op past its length), as for
    /// rolling back rejected draft tokens or reusing a shared prefix. A constraint is not
    /// rewound: it has seen the sampled tokens, not the fed ones.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), EngineError> {
        let slot = self.slot_mut(seq)?;
        slot.kv.truncate(len);
        slot.logits_ready = false;
        slot.embedding_ready = false;
        Ok(())
    }

    /// Makes `dst` a copy of the first `len` positions of `src`: their KV cache rows and
    /// tokens, and, when `len` is all of `src` and its logits are ready, those logits, so `dst`
    /// can be sampled at once (`n` completions of one prompt, prefilled once). `dst`'s sampler
    /// and constraint stay as they are (each fork samples with its own). Allocates nothing.
    /// Refused (nothing changed) if either sequence does not exist, they are the same, or
    /// `len` is past `src`'s length.
    pub fn fork(&mut self, src: SeqId, dst: SeqId, len: usize) -> Result<(), EngineError> {
        let used = self.slot(src)?.kv.used();
        self.slot(dst)?;
        if src == dst {
            return Err(EngineError::DuplicateSequence(src));
        }
        if len > used {
            return Err(EngineError::Option(format!(
                "cannot fork {len} positions of sequence {src}: it holds {used}"
            )));
        }
        let logits = len == used && self.slots[src.slot()].logits_ready;
        let (a, b) = (src.slot(), dst.slot());
        let (v, ctx) = (self.weights.config.vocab_size, self.ctx());
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let kv = &self.slots[a].kv;
        let bytes = kv.shape().elems().unwrap_or(0) * kv.shape().dtype.size();
        for region in [bufs.kv_k, bufs.kv_v] {
            let all: &mut [u8] = bytemuck::cast_slice_mut(region);
            let (src_bytes, dst_bytes) = two_mut(all, a * bytes, b * bytes, bytes);
            kv.copy_prefix(src_bytes, dst_bytes, len)?;
        }
        bufs.seq_tokens.copy_within(a * ctx..a * ctx + len, b * ctx);
        if logits {
            bufs.seq_logits.copy_within(a * v..(a + 1) * v, b * v);
        }
        let slot = &mut self.slots[b];
        slot.kv.adopt(len);
        slot.logits_ready = logits;
        Ok(())
    }

    /// Bytes one position of a sequence's KV cache takes (K and V of every layer and kv head,
    /// in the cache's dtype): the unit of [`Engine::export_kv`] and [`Engine::import_kv`].
    pub fn kv_row_bytes(&self) -> usize {
        self.slots.first().map_or(0, |s| s.kv.row_bytes())
    }

    /// Copies the KV rows of positions `start..start + n` of `seq` into `dst`, `n` being
    /// `dst.len() /` [`Engine::kv_row_bytes`] (the K rows, then the V rows, each `[layer,
    /// kv_head, n, head_dim]` of the cache's dtype, the bits as stored): to keep a prefix
    /// outside the arena, e.g. in a prompt cache. Allocates nothing; refused (nothing
    /// written) unless the positions are in `seq`'s cache and `dst` is whole rows.
    pub fn export_kv(
        &mut self,
        seq: SeqId,
        start: usize,
        dst: &mut [u8],
    ) -> Result<(), EngineError> {
        let i = seq.slot();
        self.slot(seq)?;
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let kv = &self.slots[i].kv;
        let bytes = kv.shape().elems().unwrap_or(0) * kv.shape().dtype.size();
        let k: &[u8] = bytemuck::cast_slice(bufs.kv_k);
        let v: &[u8] = bytemuck::cast_slice(bufs.kv_v);
        let r = i * bytes..(i + 1) * bytes;
        kv.export_rows(&k[r.clone()], &v[r], start, dst)?;
        Ok(())
    }

    /// Appends `tokens` to `seq` with their KV rows taken from `src` (laid out as
    /// [`Engine::export_kv`] writes them, `tokens.len()` rows) instead of computing them: the
    /// sequence then holds what a prefill of those tokens would have left, provided the rows
    /// came from one. Its logits are not ready until its next step. Allocates nothing; refused
    /// (nothing changed) if `src` is not `tokens.len()` rows, a token is past the vocabulary
    /// or the context would overflow.
    pub fn import_kv(&mut self, seq: SeqId, tokens: &[u32], src: &[u8]) -> Result<(), EngineError> {
        let i = seq.slot();
        let (used, row) = {
            let kv = &self.slot(seq)?.kv;
            (kv.used(), kv.row_bytes())
        };
        if src.len() != tokens.len() * row {
            return Err(EngineError::Cache(CacheError::RowLength {
                expected: tokens.len() * row,
                found: src.len(),
            }));
        }
        let vocab = self.weights.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::TokenOutOfRange { token, vocab });
        }
        let ctx = self.ctx();
        if used + tokens.len() > ctx {
            return Err(EngineError::ContextFull {
                needed: used + tokens.len(),
                ctx,
            });
        }
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let slot = &mut self.slots[i];
        let bytes = slot.kv.shape().elems().unwrap_or(0) * slot.kv.shape().dtype.size();
        let k: &mut [u8] = bytemuck::cast_slice_mut(bufs.kv_k);
        let v: &mut [u8] = bytemuck::cast_slice_mut(bufs.kv_v);
        let r = i * bytes..(i + 1) * bytes;
        slot.kv.import_rows(&mut k[r.clone()], &mut v[r], src)?;
        bufs.seq_tokens[i * ctx + used..i * ctx + used + tokens.len()]
            .copy_from_slice(bytemuck::cast_slice(tokens));
        slot.logits_ready = false;
        slot.embedding_ready = false;
        Ok(())
    }

    /// The sequence's sampler: the one way a sequence is sampled ([`Engine::sample`]). Each
    /// sequence owns one, made by [`Engine::create_sequence`] and replaced by
    /// [`Engine::set_sampler`]; through this, observe prompt tokens for the repetition penalty,
    /// record accepted draft tokens, or change its parameters ([`Sampler::set_params`], checked).
    pub fn sampler_mut(&mut self, seq: SeqId) -> Result<&mut Sampler, EngineError> {
        Ok(&mut self.slot_mut(seq)?.sampler)
    }

    /// The sequence's sampler, to read its parameters.
    pub fn sampler(&self, seq: SeqId) -> Result<&Sampler, EngineError> {
        Ok(&self.slot(seq)?.sampler)
    }

    /// Gives the sequence a fresh sampler for `params` (no recorded tokens, the RNG at its
    /// seed), as a new request on a reused sequence wants; an error names the parameter out of
    /// range, and then the old sampler stays.
    pub fn set_sampler(&mut self, seq: SeqId, params: SamplerParams) -> Result<(), EngineError> {
        let sampler = Sampler::new(params)?;
        self.slot_mut(seq)?.sampler = sampler;
        Ok(())
    }

    /// Attaches `constraint` to the sequence (replacing any it had; `None` removes it) and
    /// returns the one it replaced. From the next sample on, [`Engine::sample`] sets the
    /// logits of the tokens it forbids to -inf before the sampler sees them (so every mode,
    /// greedy included, picks an allowed token) and advances it with the sampled token. It can be attached at any point: the grammar starts at the
    /// next sampled token, whatever the sequence holds. A constrained sequence should not take
    /// drafted tokens its constraint has not checked (the session cuts a draft to what the
    /// constraint allows and verifies it on the masked logits; see [`Engine::is_constrained`]).
    pub fn set_constraint(
        &mut self,
        seq: SeqId,
        constraint: Option<Constraint>,
    ) -> Result<Option<Constraint>, EngineError> {
        let slot = self.slot_mut(seq)?;
        let old = std::mem::replace(&mut slot.constraint, constraint.map(Box::new));
        Ok(old.map(|c| *c))
    }

    /// Whether the sequence carries a constraint.
    pub fn is_constrained(&self, seq: SeqId) -> Result<bool, EngineError> {
        Ok(self.slot(seq)?.constraint.is_some())
    }

    /// The sequence's constraint, to ask whether it is complete ([`Constraint::is_accepting`]),
    /// finished, failed, or what its masks cost.
    pub fn constraint_mut(&mut self, seq: SeqId) -> Result<Option<&mut Constraint>, EngineError> {
        Ok(self.slot_mut(seq)?.constraint.as_deref_mut())
    }

    /// The logits after the sequence's last processed token.
    pub fn logits(&mut self, seq: SeqId) -> Result<&[f32], EngineError> {
        if !self.slot(seq)?.logits_ready {
            return Err(EngineError::NoLogits);
        }
        let v = self.weights.config.vocab_size;
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let i = seq.slot();
        Ok(&bufs.seq_logits[i * v..(i + 1) * v])
    }

    /// The sequence's embedding: the final-normed hidden state (`[hidden]`, not normalized to
    /// unit length) after its last processed token, computed by a step whose feed for it
    /// wanted [`Want::Embedding`]. It stays until the sequence's next step, truncate, reset or
    /// release; [`EngineError::NoEmbedding`] when its last step computed none. Like the
    /// logits, it does not depend on which other sequences shared the step.
    pub fn embedding(&mut self, seq: SeqId) -> Result<&[f32], EngineError> {
        if !self.slot(seq)?.embedding_ready {
            return Err(EngineError::NoEmbedding);
        }
        let h = self.weights.config.hidden_size;
        let bufs = ArenaBufs::carve(self.arena.floats_mut(), &self.plan);
        let i = seq.slot();
        Ok(&bufs.seq_embedding[i * h..(i + 1) * h])
    }

    /// Samples the sequence's next token with its own sampler and records it in the
    /// sampler's history (for the repetition, frequency and presence penalties). Consumes the
    /// logits: the token must be fed in a step before the next sample. With a constraint, the
    /// token is one it allows, and it advances the constraint.
    pub fn sample(&mut self, seq: SeqId) -> Result<u32, EngineError> {
        let i = seq.slot();
        let slot = self.slots.get_mut(i);
        let slot = match slot {
            Some(s) if s.live && s.generation == seq.generation => s,
            _ => return Err(EngineError::UnknownSequence(seq)),
        };
        let token = sample_slot(&self.weights, &self.plan, &mut self.arena, i, slot)?;
        slot.sampler.observe_generated(token);
        Ok(token)
    }

    /// One step over several sequences: every feed's tokens are appended to its sequence and
    /// run through the model together (each weight matrix streamed once per numerics group
    /// for all of the step's rows). `each(seq, pos, logits)` gets the logits after position
    /// `pos` of every feed that wants [`Want::All`]. Checked before anything runs: every
    /// sequence exists and appears once, no feed is empty, every token is in the vocabulary,
    /// every feed fits its sequence's context, and the rows fit `max_batch_tokens`; on an
    /// error nothing changed.
    pub fn step(
        &mut self,
        feeds: &[Feed<'_>],
        each: &mut dyn FnMut(SeqId, usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.check(feeds)?;
        let result = forward::run(self, feeds, each);
        for f in feeds {
            let slot = &mut self.slots[f.seq.slot()];
            if result.is_ok() {
                slot.kv.commit();
                slot.logits_ready = matches!(f.logits, Want::Last | Want::All);
                slot.embedding_ready = f.logits == Want::Embedding;
            } else {
                slot.kv.rollback();
                slot.logits_ready = false;
                slot.embedding_ready = false;
            }
        }
        result
    }

    fn check(&self, feeds: &[Feed<'_>]) -> Result<(), EngineError> {
        if feeds.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let vocab = self.weights.config.vocab_size;
        let mut rows = 0usize;
        for (i, f) in feeds.iter().enumerate() {
            let slot = self.slot(f.seq)?;
            if feeds[..i].iter().any(|g| g.seq == f.seq) {
                return Err(EngineError::DuplicateSequence(f.seq));
            }
            if f.tokens.is_empty() {
                return Err(EngineError::EmptyInput);
            }
            if let Some(&token) = f.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(EngineError::TokenOutOfRange { token, vocab });
            }
            let needed = slot.kv.used() + f.tokens.len();
            if needed > slot.kv.capacity() {
                return Err(EngineError::ContextFull {
                    needed,
                    ctx: slot.kv.capacity(),
                });
            }
            rows += f.tokens.len();
        }
        if rows > self.max_rows {
            return Err(EngineError::BatchTooLarge {
                rows,
                max: self.max_rows,
            });
        }
        Ok(())
    }
}

/// Disjoint `n`-element windows of `all` at `a` and `b` (`a != b`, both in range).
fn two_mut<T>(all: &mut [T], a: usize, b: usize, n: usize) -> (&[T], &mut [T]) {
    if a < b {
        let (lo, hi) = all.split_at_mut(b);
        (&lo[a..a + n], &mut hi[..n])
    } else {
        let (lo, hi) = all.split_at_mut(a);
        (&hi[..n], &mut lo[b..b + n])
    }
}

/// Samples from slot `i`'s logits with the slot's sampler and the arena's sampler scratch, consuming the logits (sampling modifies them); a constraint masks them first and
/// is advanced with the token.
fn sample_slot(
    weights: &Weights,
    plan: &MemoryPlan,
    arena: &mut Arena,
    i: usize,
    slot: &mut Slot,
) -> Result<u32, EngineError> {
    if !slot.logits_ready {
        return Err(EngineError::NoLogits);
    }
    let v = weights.config.vocab_size;
    let bufs = ArenaBufs::carve(arena.floats_mut(), plan);
    let candidates: &mut [u32] = bytemuck::cast_slice_mut(bufs.candidates);
    let logits = &mut bufs.seq_logits[i * v..(i + 1) * v];
    if let Some(c) = slot.constraint.as_deref_mut() {
        // on an error the logits are untouched and stay ready
        c.mask_logits(logits)?;
    }
    let token = slot.sampler.sample(logits, bufs.probs, candidates);
    // the logits were modified (penalty, temperature); they no longer describe the distribution
    slot.logits_ready = false;
    if let Some(c) = slot.constraint.as_deref_mut() {
        c.commit(token)?;
    }
    Ok(token)
}
