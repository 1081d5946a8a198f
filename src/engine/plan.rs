//! The engine's arena layout: every region by name, sized from the model and the options.

use qwenrt_kernels::par;

use crate::engine::arena::{ArenaError, MemoryPlan, RegionSpec};
use crate::engine::kv_cache::KvShape;
use crate::model::config::Config;

crate::arena_regions! {
    /// The size of every region of an engine's arena.
    pub(crate) struct ArenaSpec;
    /// Every region of an engine's arena, borrowed at once.
    pub(crate) struct ArenaBufs;
    {
        /// K of every sequence: `[sequence, layer, kv_head, position, head_dim]` of the KV
        /// dtype (f32, or bf16 / f16 as u16 bits: two per float of the region).
        kv_k: "kv_cache.k",
        /// V of every sequence, laid out as `kv_k`.
        kv_v: "kv_cache.v",
        /// Each sequence's logits after its last processed token: `[sequence, vocab]`.
        seq_logits: "seq.logits",
        /// Each sequence's tokens in its cache (u32): `[sequence, ctx]`.
        seq_tokens: "seq.tokens",
        /// Each sequence's embedding: the final-normed hidden state of the last row of its
        /// last feed that asked for it ([`crate::engine::Want::Embedding`]): `[sequence,
        /// hidden]`.
        seq_embedding: "seq.embedding",
        /// The residual stream of a step's rows: `[rows, hidden]`.
        x: "x",
        x_norm: "x_norm",
        /// Queries of a step's rows: `[rows, heads * head_dim]`.
        q: "q",
        k: "k",
        v: "v",
        attn_out: "attn_out",
        proj_out: "proj_out",
        /// The gate (then silu(gate) * up) of the dense MLP or of one expert: `[rows (+ pad),
        /// ffn]`.
        mlp_gate: "mlp_gate",
        mlp_up: "mlp_up",
        /// One head's q or k while it is normalized in place (Qwen3): `[head_dim]`.
        head_norm: "qk_norm.head",
        /// The router's logits of every row (Qwen3-MoE): `[rows, experts]`.
        router_logits: "moe.router_logits",
        /// The experts each row is routed to (u32): `[rows, top_k]`.
        route_expert: "moe.route_expert",
        /// Their routing weights: `[rows, top_k]`.
        route_weight: "moe.route_weight",
        /// The rows of the step routed to the expert being run (u32), in row order: `[rows]`.
        expert_rows: "moe.expert_rows",
        /// Each of those rows' weight for that expert: `[rows]`.
        expert_weights: "moe.expert_weights",
        /// Those rows' normalized inputs, gathered (prefill rows padded to
        /// [`MIN_MATMUL_ROWS`]): `[rows + pad, hidden]`.
        expert_x: "moe.x",
        /// The expert's outputs for them: `[rows + pad, hidden]`.
        expert_out: "moe.out",
        /// Attention's per-thread score rows and tile scratch.
        attn_scores: "attn_scores",
        /// Head output of up to [`LOGIT_ROWS`] rows at once.
        logits: "logits",
        probs: "sampler.probs",
        /// u32 candidate ids of the sampler.
        candidates: "sampler.candidates",
        inv_freq: "rope.inv_freq",
        /// cos of every row's angles: `[rows, head_dim/2]`.
        rope_cos: "rope.cos",
        rope_sin: "rope.sin",
        /// The activations prepared for the decode matvecs' dot products.
        x_prep: "x_prep",
        /// Prefill matmuls' packed weight panels (one per thread), after the bf16 pairs of the
        /// activations where the gate/up matmuls round them.
        matmul_pack: "matmul_pack",
        /// The 8-bit blocks of the inputs of block-quantized matrices (and the quantized
        /// matmul's per-thread panels); empty for a model without such matrices.
        quant_scratch: "quant_scratch",
    }
}

/// Fewest rows a prefill matmul takes through its tiles: the kernels run fewer rows as one
/// matvec each, whose sums round differently (`par::matmul_bf16dot`'s doc: "for fewer than 3
/// tokens, it is exactly `matmul::<Bf16>`", and that, below 3, streams the weights per token).
/// An expert given fewer prefill rows gets copies of its last one up to this many, so that a
/// row's numbers never depend on how many other rows a step routes to the same expert.
pub(crate) const MIN_MATMUL_ROWS: usize = 3;

/// Rows of logits computed at once (the head is streamed once per group of this many rows).
pub(crate) const LOGIT_ROWS: usize = 32;

/// What an arena is planned for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub sequences: usize,
    pub kv: KvShape,
    /// Rows (tokens) one step computes at most.
    pub rows: usize,
    pub threads: usize,
    /// Whether any matrix is block-quantized.
    pub quantized: bool,
}

pub(crate) fn plan(c: &Config, d: Dims) -> Result<MemoryPlan, ArenaError> {
    let (h, qd, kvd, f, v, hd) = (
        c.hidden_size,
        c.q_dim(),
        c.kv_dim(),
        c.max_ffn(),
        c.vocab_size,
        c.head_dim,
    );
    // the experts and the top-k of a MoE model (0 for a dense one: its MoE regions are empty)
    let (experts, top_k, moe_f) = c.moe.as_ref().map_or((0, 0, 0), |m| {
        (m.num_experts, m.experts_per_tok, m.moe_intermediate_size)
    });
    let (s, kv, n) = (d.sequences, d.kv, d.rows);
    let spec = |shape: String, floats: Option<usize>| RegionSpec::new(shape, floats);
    // one of K or V: elements per sequence, and the region's floats (16-bit elements two to a
    // float, rounded up)
    let per_seq = kv.elems();
    let esize = kv.dtype.size();
    let kv_floats = per_seq
        .and_then(|p| p.checked_mul(s))
        .and_then(|e| e.checked_mul(esize))
        .map(|b| b.div_ceil(4));
    let kv_spec = || {
        spec(
            format!(
                "[sequence, layer, kv_head, position, head_dim] {} = [{s}, {}, {}, {}, {}]; {:.1} MiB per sequence",
                kv.dtype.to_string().to_lowercase(),
                kv.layers,
                kv.kv_heads,
                kv.capacity,
                kv.head_dim,
                per_seq.unwrap_or(0) as f64 * esize as f64 / (1 << 20) as f64
            ),
            kv_floats,
        )
    };
    let rows = |what: &str, width: usize| {
        spec(
            format!("[rows, {what}] = [{n}, {width}]"),
            n.checked_mul(width),
        )
    };
    // an expert's rows: every row of the step, and the copies that pad its prefill rows to
    // MIN_MATMUL_ROWS
    let n_pad = if experts == 0 {
        n
    } else {
        n + MIN_MATMUL_ROWS - 1
    };
    let padded = |what: &str, width: usize| {
        spec(
            format!("[rows + pad, {what}] = [{n_pad}, {width}]"),
            n_pad.checked_mul(width),
        )
    };
    // `padded`, with at least `floor` floats
    let padded_at_least = |what: &str, width: usize, floor: usize| match n_pad.checked_mul(width) {
        Some(floats) if floats < floor => spec(
            format!("[rows + pad, {what}] = [{n_pad}, {width}], at least {floor}"),
            Some(floor),
        ),
        _ => padded(what, width),
    };
    let moe_rows = |what: &str, width: usize| {
        let width = if experts == 0 { 0 } else { width };
        rows(what, width)
    };
    let scores = par::scores_len(d.threads, c.num_attention_heads, kv.capacity);
    let lr = LOGIT_ROWS.min(n);
    // the widest input of any matrix: hidden, the attention output (heads * head_dim), or an
    // MLP's hidden layer
    let widest = h.max(qd).max(f);
    // the activations prepared for the decode matvec's dot products (the bf16 hi/lo split)
    let split = par::matvec_rows_scratch_len(n, widest);
    // the prefill matmuls' per-thread panels, after prefill's bf16 pairs for gate/up
    let t = d.threads;
    let panels = par::matmul_scratch_len(t);
    let pairs_panels = par::matmul_bf16dot_scratch_len(t, n_pad, h);
    let kmax = widest.next_multiple_of(32);
    let quant = if d.quantized {
        par::matmul_q_scratch_len(t, n_pad, kmax)
            .max(par::quant_scratch_len(n.max(LOGIT_ROWS), kmax))
            .max(par::repacked_scratch_len(n.max(LOGIT_ROWS), kmax))
            // a lone decode row's experts' activations, each quantized ([top_k, moe_ffn])
            .max(par::quant_scratch_len(top_k, moe_f))
    } else {
        0
    };
    ArenaSpec {
        kv_k: kv_spec(),
        kv_v: kv_spec(),
        seq_logits: spec(
            format!("[sequence, vocab] = [{s}, {v}]"),
            s.checked_mul(v),
        ),
        seq_tokens: spec(
            format!("[sequence, ctx] u32 = [{s}, {}]", kv.capacity),
            s.checked_mul(kv.capacity),
        ),
        seq_embedding: spec(
            format!("[sequence, hidden] = [{s}, {h}]"),
            s.checked_mul(h),
        ),
        x: rows("hidden", h),
        x_norm: rows("hidden", h),
        q: rows("heads*head_dim", qd),
        k: rows("kv_heads*head_dim", kvd),
        v: rows("kv_heads*head_dim", kvd),
        attn_out: rows("heads*head_dim", qd),
        proj_out: rows("hidden", h),
        // a lone decode row's experts: their gates and ups together, [2 * top_k, moe_ffn]
        mlp_gate: padded_at_least("ffn", f, 2 * top_k * moe_f),
        mlp_up: padded("ffn", f),
        head_norm: {
            let width = if c.arch.qk_norm() { hd } else { 0 };
            spec(format!("[head_dim] = [{width}]"), Some(width))
        },
        router_logits: moe_rows("experts", experts),
        route_expert: moe_rows("top_k", top_k),
        route_weight: moe_rows("top_k", top_k),
        expert_rows: moe_rows("1", 1),
        expert_weights: moe_rows("1", 1),
        expert_x: padded("hidden", if experts == 0 { 0 } else { h }),
        // and their outputs, [top_k, hidden]
        expert_out: padded_at_least("hidden", if experts == 0 { 0 } else { h }, top_k * h),
        attn_scores: spec(
            format!("[max(threads, heads), ctx] -> {scores}"),
            Some(scores),
        ),
        logits: spec(
            format!("[min(rows, {LOGIT_ROWS}), vocab] = [{lr}, {v}]"),
            lr.checked_mul(v),
        ),
        probs: spec(format!("[vocab] = [{v}]"), Some(v)),
        candidates: spec(format!("[vocab] u32 = [{v}]"), Some(v)),
        inv_freq: spec(format!("[head_dim/2] = [{}]", hd / 2), Some(hd / 2)),
        rope_cos: rows("head_dim/2", hd / 2),
        rope_sin: rows("head_dim/2", hd / 2),
        x_prep: spec(
            format!(
                "matvec split [min(rows, {}), max(hidden, heads*head_dim, ffn)] = {split}",
                par::MATVEC_ROWS_MAX
            ),
            Some(split),
        ),
        matmul_pack: spec(
            format!(
                "max(f32 panels [threads = {t}] = {panels}, bf16 pairs [rows, hidden/2] + bf16 panels [threads] = {pairs_panels})"
            ),
            Some(panels.max(pairs_panels)),
        ),
        quant_scratch: spec(
            format!("8-bit input blocks [rows, max(hidden, heads*head_dim, ffn)] + quantized panels [threads = {t}] = {quant}"),
            Some(quant),
        ),
    }
    .plan()
}
