//! The forward pass of Qwen2, Qwen3 and Qwen3-MoE over one step's rows, reading top to bottom
//! like the model card: embed; per layer: rmsnorm, q/k/v (+ bias in Qwen2), per-head q/k
//! rmsnorm (Qwen3), rope, cache write, attention, o_proj, residual, rmsnorm, the MLP (gate/up,
//! silu*mul, down; or, in a Qwen3-MoE sparse layer, the router's top-k experts, each that
//! SwiGLU, summed by weight), residual; final norm; lm_head.
//!
//! A step's rows are laid out by numerics: first the rows of every [`Numerics::Decode`] feed,
//! then those of every [`Numerics::Prefill`] feed, each feed's rows together. Every matrix
//! runs once over the decode rows (the decode matvec per row, the weights streamed once for
//! all of them) and once over the prefill rows (a matmul). Each matrix is a prepared
//! [`linear::Linear`] whose kernel (format, layout, bf16 prefill) was chosen once in
//! [`Engine::new`]; [`linear::Matmul`] runs it.

use qwenrt_kernels::par::{self, KvLayout};
use qwenrt_kernels::{ops, quant, Bf16, Cpu, Dtype, Format, KvType, ThreadPool, F16, F32};

use super::plan::{ArenaBufs, LOGIT_ROWS, MIN_MATMUL_ROWS};
use super::{Engine, EngineError, Feed, Numerics, SeqId, Slot, Want};
use crate::engine::kv_cache::{KvCache, KvStore};
use crate::model::weights::{Layer, TensorRef, Weights};

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

pub(super) mod linear;

pub(super) use linear::Model;
use linear::{Ffn, FfnBlock, Linear, Matmul, Routing};

/// The feeds in row order (decode feeds first, then prefill feeds), each with its first row.
fn in_row_order<'a, 't>(feeds: &'a [Feed<'t>]) -> impl Iterator<Item = (usize, &'a Feed<'t>)> + 'a {
    let decode = feeds.iter().filter(|f| f.numerics == Numerics::Decode);
    let prefill = feeds.iter().filter(|f| f.numerics == Numerics::Prefill);
    decode.chain(prefill).scan(0, |row, f| {
        let row0 = *row;
        *row += f.tokens.len();
        Some((row0, f))
    })
}

/// One forward pass over `feeds` (checked by the caller), writing their KV rows (uncommitted)
/// and their logits or embeddings.
pub(super) fn run(
    e: &mut Engine,
    feeds: &[Feed<'_>],
    each: &mut dyn FnMut(SeqId, usize, &[f32]),
) -> Result<(), EngineError> {
    let (weights, model, cpu, pool) = (&*e.weights, &e.model, e.cpu, &e.pool);
    let c = &weights.config;
    let (h, qd, kvd, hd, eps) = (
        c.hidden_size,
        c.q_dim(),
        c.kv_dim(),
        c.head_dim,
        c.rms_norm_eps,
    );
    let slots = &mut e.slots;
    let n: usize = feeds.iter().map(|f| f.tokens.len()).sum(); // rows of the step
    let nd: usize = feeds // its decode rows, the first nd
        .iter()
        .filter(|f| f.numerics == Numerics::Decode)
        .map(|f| f.tokens.len())
        .sum();
    let b = ArenaBufs::carve(e.arena.floats_mut(), &e.plan);
    let x = &mut b.x[..n * h]; // [n, hidden]: the residual stream
    let x_norm = &mut b.x_norm[..n * h]; // [n, hidden]
    let q = &mut b.q[..n * qd]; // [n, heads * head_dim]
    let k = &mut b.k[..n * kvd]; // [n, kv_heads * head_dim]
    let v = &mut b.v[..n * kvd]; // [n, kv_heads * head_dim]
    let attn_out = &mut b.attn_out[..n * qd]; // [n, heads * head_dim]
    let proj_out = &mut b.proj_out[..n * h]; // [n, hidden]
    let mut ffn_bufs = FfnBufs {
        gate: b.mlp_gate,                                       // [n, ffn]
        up: b.mlp_up,                                           // [n, ffn]
        router_logits: b.router_logits,                         // [n, experts]
        route_expert: bytemuck::cast_slice_mut(b.route_expert), // [n, top_k]
        route_weight: b.route_weight,                           // [n, top_k]
        expert_rows: bytemuck::cast_slice_mut(b.expert_rows),   // [n]
        expert_weights: b.expert_weights,                       // [n]
        expert_x: b.expert_x,                                   // [n + pad, hidden]
        expert_out: b.expert_out,                               // [n + pad, hidden]
    };
    let mut mm = Matmul {
        pool,
        cpu,
        weights,
        prep: b.x_prep,
        matmul_pack: b.matmul_pack,
        quant_scratch: b.quant_scratch,
    };
    let rope_cos = &mut b.rope_cos[..n * hd / 2]; // [n, head_dim / 2]: each row's angles
    let rope_sin = &mut b.rope_sin[..n * hd / 2];

    // embed: each row's token and rope angles; each feed's tokens into its sequence's history
    let history = bytemuck::cast_slice_mut(b.seq_tokens); // [sequences, ctx]
    embed_rows(
        weights, feeds, slots, b.inv_freq, history, rope_cos, rope_sin, x,
    );

    for (l, (layer, mats)) in weights.layers.iter().zip(&model.layers).enumerate() {
        // attention block
        rmsnorm_rows(cpu, x, x_norm, h, &layer.input_layernorm, weights, eps);
        mm.qkv(&mats.qkv, x_norm, [&mut *q, &mut *k, &mut *v], nd);
        // Qwen2: biases on q, k and v; Qwen3: each head of q and of k RMS-normalized
        bias_and_head_norm(
            cpu,
            weights,
            layer,
            [&mut *q, &mut *k, &mut *v],
            b.head_norm,
        );
        rope_rows(cpu, hd, [&mut *q, &mut *k], rope_cos, rope_sin);
        // per feed: its rows into its own cache, then attention over that cache
        let layout = KvLayout {
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: hd,
            cap: slots[0].kv.capacity(),
        };
        let kv = KvRegions {
            k: &mut *b.kv_k,
            v: &mut *b.kv_v,
            scores: &mut *b.attn_scores,
        };
        attend_feeds(
            pool,
            cpu,
            layout,
            feeds,
            slots,
            l,
            [&*q, &*k, &*v],
            attn_out,
            kv,
        )?;
        mm.rows(&mats.o, attn_out, proj_out, nd); // [n, hidden]
        ops::add(cpu, x, proj_out);

        // MLP block: dense, or the experts the router picks for each row
        rmsnorm_rows(
            cpu,
            x,
            x_norm,
            h,
            &layer.post_attention_layernorm,
            weights,
            eps,
        );
        match &mats.ffn {
            FfnBlock::Dense(ffn) => {
                let (gate, up) = (&mut *ffn_bufs.gate, &mut *ffn_bufs.up);
                swiglu(&mut mm, ffn, x_norm, h, nd, gate, up, proj_out)
            }
            FfnBlock::Moe {
                router,
                experts,
                routing,
            } => {
                let b = &mut ffn_bufs;
                moe_rows(
                    &mut mm, router, experts, *routing, x_norm, h, nd, b, proj_out,
                )
            }
        }
        ops::add(cpu, x, proj_out);
    }

    // final norm: the embeddings wanted, then lm_head over the rows whose logits are wanted
    embeddings_out(cpu, weights, feeds, x, b.seq_embedding);
    let head = Head {
        lm_head: &model.lm_head,
        logits: b.logits,
        seq_logits: b.seq_logits,
    };
    head_rows(&mut mm, feeds, slots, x, x_norm, head, each);
    Ok(())
}

/// Each row's token embedding into `x` (`[rows, hidden]`) and the rope angles of its position
/// into `rope_cos`/`rope_sin` (`[rows, head_dim / 2]`, once for every layer); each feed's
/// tokens into its sequence's `history` (`[sequences, ctx]`, past the committed length until
/// the step commits).
#[allow(clippy::too_many_arguments)]
fn embed_rows(
    weights: &Weights,
    feeds: &[Feed<'_>],
    slots: &[Slot],
    inv_freq: &[f32],
    history: &mut [u32],
    rope_cos: &mut [f32],
    rope_sin: &mut [f32],
    x: &mut [f32],
) {
    let (h, half) = (weights.config.hidden_size, weights.config.head_dim / 2);
    let ctx = slots[0].kv.capacity();
    let embed = weights.bytes(&weights.embed_tokens);
    let ef = weights.embed_tokens.format;
    // bytes of one embedding row (whole blocks: checked at load)
    let er = ef.row_bytes(h).unwrap_or(0);
    for (row0, fd) in in_row_order(feeds) {
        let i = fd.seq.slot();
        let pos0 = slots[i].kv.used();
        history[i * ctx + pos0..i * ctx + pos0 + fd.tokens.len()].copy_from_slice(fd.tokens);
        for (t, &token) in fd.tokens.iter().enumerate() {
            let r = row0 + t;
            let (cos, sin) = (
                &mut rope_cos[r * half..(r + 1) * half],
                &mut rope_sin[r * half..(r + 1) * half],
            );
            rope_at(inv_freq, cos, sin, pos0 + t);
            let row = &embed[token as usize * er..(token as usize + 1) * er];
            let out = &mut x[r * h..(r + 1) * h];
            match ef {
                Format::Float(d) => d.to_f32(row, out),
                Format::Quant(qt) => quant::dequantize_row(qt, row, out),
            }
        }
    }
}

/// The arena's KV regions of every sequence and attention's score scratch.
struct KvRegions<'a> {
    k: &'a mut [f32],
    v: &'a mut [f32],
    scores: &'a mut [f32],
}

/// Per feed, at layer `layer`: its rows of `k`/`v` (`[rows, kv_heads * head_dim]`) into its
/// sequence's cache, then attention of its rows of `q` (`[rows, heads * head_dim]`) over that
/// cache into `out` (as `q`), reading the cache in its own element type.
#[allow(clippy::too_many_arguments)]
fn attend_feeds(
    pool: &ThreadPool,
    cpu: Cpu,
    layout: KvLayout,
    feeds: &[Feed<'_>],
    slots: &mut [Slot],
    layer: usize,
    [q, k, v]: [&[f32]; 3],
    out: &mut [f32],
    kv: KvRegions<'_>,
) -> Result<(), EngineError> {
    let (qd, kvd) = (
        layout.n_heads * layout.head_dim,
        layout.n_kv_heads * layout.head_dim,
    );
    let kv_dtype = slots[0].kv.shape().dtype;
    for (row0, fd) in in_row_order(feeds) {
        let i = fd.seq.slot();
        let m = fd.tokens.len();
        let rows = row0 * qd..(row0 + m) * qd;
        let kv_rows = row0 * kvd..(row0 + m) * kvd;
        let feed = FeedRows {
            slot: i,
            numerics: fd.numerics,
            k: &k[kv_rows.clone()],
            v: &v[kv_rows],
            q: &q[rows.clone()],
            out: &mut out[rows],
        };
        let (kv_k, kv_v, scores) = (&mut *kv.k, &mut *kv.v, &mut *kv.scores);
        by_format!(kv_dtype, T => cache_and_attend::<T>(
            pool, cpu, layout, &mut slots[i].kv, layer, feed, kv_k, kv_v, scores,
        ))?;
    }
    Ok(())
}

/// The head and where its outputs go.
struct Head<'a> {
    lm_head: &'a Linear,
    /// A group's logits: `[LOGIT_ROWS, vocab]`.
    logits: &'a mut [f32],
    /// Each sequence's logits after its last row: `[sequences, vocab]`.
    seq_logits: &'a mut [f32],
}

/// The final norm and lm_head over the rows whose logits are wanted, up to [`LOGIT_ROWS`] at a
/// time (the head is streamed once per group; the same numbers as one matvec per row): `each`
/// gets the rows of [`Want::All`] feeds, and every such feed's last row goes to its sequence.
/// `x_norm` is scratch of at least `[LOGIT_ROWS, hidden]`.
fn head_rows(
    mm: &mut Matmul<'_>,
    feeds: &[Feed<'_>],
    slots: &[Slot],
    x: &[f32],
    x_norm: &mut [f32],
    head: Head<'_>,
    each: &mut dyn FnMut(SeqId, usize, &[f32]),
) {
    let (weights, cpu) = (mm.weights, mm.cpu);
    let c = &weights.config;
    let (h, vocab, eps) = (c.hidden_size, c.vocab_size, c.rms_norm_eps);
    let wanted = in_row_order(feeds).flat_map(|(row0, fd)| {
        let m = fd.tokens.len();
        let ts = match fd.logits {
            Want::None | Want::Embedding => 0..0,
            Want::Last => m - 1..m,
            Want::All => 0..m,
        };
        ts.map(move |t| (fd, row0 + t, t))
    });
    // (feed, row, row within the feed) of each row of the group being computed
    let mut group: [Option<(&Feed<'_>, usize, usize)>; LOGIT_ROWS] = [None; LOGIT_ROWS];
    let mut g = 0;
    let mut wanted = wanted.peekable();
    while wanted.peek().is_some() {
        for (j, item) in wanted.by_ref().take(LOGIT_ROWS).enumerate() {
            let (_, r, _) = item;
            ops::rmsnorm(
                cpu,
                &x[r * h..(r + 1) * h],
                weights.bytes(&weights.norm),
                weights.norm.dtype(),
                eps,
                &mut x_norm[j * h..(j + 1) * h],
            );
            group[j] = Some(item);
            g = j + 1;
        }
        let out = &mut head.logits[..g * vocab]; // [g, vocab]
        mm.rows(head.lm_head, &x_norm[..g * h], out, g);
        for (j, row) in out.chunks_exact(vocab).enumerate() {
            let Some((fd, _, t)) = group[j] else { continue };
            let i = fd.seq.slot();
            let pos = slots[i].kv.used() + t;
            if fd.logits == Want::All {
                each(fd.seq, pos, row);
            }
            if t + 1 == fd.tokens.len() {
                head.seq_logits[i * vocab..(i + 1) * vocab].copy_from_slice(row);
            }
        }
    }
}

/// `out = down(silu(gate(x)) * up(x))` over the rows `x` (`[rows, hidden]`, the first `nd`
/// decode rows): the dense MLP, and each expert over the rows routed to it. `gate` and `up`
/// are scratch of at least `[rows, ffn]`.
#[allow(clippy::too_many_arguments)]
fn swiglu(
    mm: &mut Matmul<'_>,
    ffn: &Ffn,
    x: &[f32],
    h: usize,
    nd: usize,
    gate: &mut [f32],
    up: &mut [f32],
    out: &mut [f32],
) {
    let (n, f) = (x.len() / h, ffn.width());
    let (gate, up) = (&mut gate[..n * f], &mut up[..n * f]); // [n, ffn]
    mm.gate_up(ffn, x, gate, up, nd);
    ops::silu_mul(mm.cpu, gate, up);
    mm.rows(&ffn.down, gate, out, nd);
}

/// The scratch of a layer's feed-forward block (arena regions; see the plan for shapes).
struct FfnBufs<'a> {
    gate: &'a mut [f32],
    up: &'a mut [f32],
    router_logits: &'a mut [f32],
    route_expert: &'a mut [u32],
    route_weight: &'a mut [f32],
    expert_rows: &'a mut [u32],
    expert_weights: &'a mut [f32],
    expert_x: &'a mut [f32],
    expert_out: &'a mut [f32],
}

/// A layer of experts over the rows `x` (`[rows, hidden]`, the first `nd` decode rows), into
/// `out` (`[rows, hidden]`): the router picks each row's experts and weights ([`route`]), then
/// each expert runs once over all the rows routed to it, gathered in row order (so its decode
/// rows come first, and its weights are streamed once per step), and each row sums its experts'
/// outputs times their weights, in expert order: a row's numbers do not depend on which other
/// rows share the step.
#[allow(clippy::too_many_arguments)]
fn moe_rows(
    mm: &mut Matmul<'_>,
    router: &Linear,
    experts: &[Ffn],
    routing: Routing,
    x: &[f32],
    h: usize,
    nd: usize,
    b: &mut FfnBufs<'_>,
    out: &mut [f32],
) {
    let n = x.len() / h;
    let (ne, top_k) = (experts.len(), routing.top_k);
    let logits = &mut b.router_logits[..n * ne]; // [n, experts]
    mm.rows(router, x, logits, nd);
    let chosen = &mut b.route_expert[..n * top_k]; // [n, top_k]
    let chosen_weight = &mut b.route_weight[..n * top_k];
    for ((l, c), w) in logits
        .chunks_exact_mut(ne)
        .zip(chosen.chunks_exact_mut(top_k))
        .zip(chosen_weight.chunks_exact_mut(top_k))
    {
        route(l, c, w, routing.renormalize);
    }
    if n == 1 && nd == 1 {
        let (gate, expert_out) = (&mut *b.gate, &mut *b.expert_out);
        if moe_one_row(
            mm,
            experts,
            chosen,
            chosen_weight,
            x,
            h,
            gate,
            expert_out,
            out,
        ) {
            return;
        }
    }
    out.fill(0.0);
    for (e, expert) in experts.iter().enumerate() {
        // the rows routed to expert e, their weights for it, their inputs gathered
        let (mut m, mut m_decode) = (0, 0);
        for r in 0..n {
            let Some(j) = chosen[r * top_k..(r + 1) * top_k]
                .iter()
                .position(|&c| c as usize == e)
            else {
                continue;
            };
            b.expert_rows[m] = r as u32;
            b.expert_weights[m] = chosen_weight[r * top_k + j];
            b.expert_x[m * h..(m + 1) * h].copy_from_slice(&x[r * h..(r + 1) * h]);
            m += 1;
            m_decode += usize::from(r < nd);
        }
        if m == 0 {
            continue;
        }
        // fewer prefill rows than the matmul tiles take: copies of the last one up to that many
        // (their outputs unused), so each row's sums are those of its feed alone
        let prefill = m - m_decode;
        let run = if prefill > 0 && prefill < MIN_MATMUL_ROWS {
            let (gathered, pad) = b.expert_x.split_at_mut(m * h);
            let last = &gathered[(m - 1) * h..];
            for copy in pad[..(MIN_MATMUL_ROWS - prefill) * h].chunks_exact_mut(h) {
                copy.copy_from_slice(last);
            }
            m_decode + MIN_MATMUL_ROWS
        } else {
            m
        };
        let y = &mut b.expert_out[..run * h]; // [run, hidden]
        swiglu(
            mm,
            expert,
            &b.expert_x[..run * h],
            h,
            m_decode,
            b.gate,
            b.up,
            y,
        );
        for (j, yr) in y.chunks_exact(h).take(m).enumerate() {
            let (r, w) = (b.expert_rows[j] as usize, b.expert_weights[j]);
            for (o, &v) in out[r * h..(r + 1) * h].iter_mut().zip(yr) {
                *o += w * v;
            }
        }
    }
}

/// [`moe_rows`] for one decode row whose experts are all block-quantized and read from the
/// file's blocks: the gates and ups of its `top_k` experts in one dispatch of the pool, their
/// downs in a second, rather than three dispatches per expert (on a loaded 2-core machine the
/// wake-ups of ~24 small dispatches a layer cost more than the matvecs). The same numbers as
/// the general path: each matvec is the one [`Linear::run`] makes on that row, the experts'
/// outputs summed in expert order. Returns false, having touched nothing, where it does not
/// apply.
#[allow(clippy::too_many_arguments)]
fn moe_one_row(
    mm: &mut Matmul<'_>,
    experts: &[Ffn],
    chosen: &[u32],
    chosen_weight: &[f32],
    x: &[f32],
    h: usize,
    gate_up: &mut [f32],
    expert_out: &mut [f32],
    out: &mut [f32],
) -> bool {
    let (pool, cpu, weights) = (mm.pool, mm.cpu, mm.weights);
    let top_k = chosen.len();
    let Some(first) = experts.first() else {
        return false;
    };
    let f = first.width();
    let (per_h, per_f) = (quant::q8_len(h), quant::q8_len(f));
    let fits = 2 * top_k <= par::MANY_MAX
        && gate_up.len() >= 2 * top_k * f
        && expert_out.len() >= top_k * h
        && mm.quant_scratch.len() >= per_h.max(top_k * per_f);
    // every chosen expert's matrices read from the file's blocks
    let quantized = chosen
        .iter()
        .all(|&e| experts[e as usize].file_blocks().is_some());
    if !fits || !quantized {
        return false;
    }
    // (expert, weight) in expert order, the order the general path sums them in
    let mut order = [(0u32, 0f32); par::MANY_MAX / 2];
    let order = &mut order[..top_k];
    for (o, (&e, &w)) in order.iter_mut().zip(chosen.iter().zip(chosen_weight)) {
        *o = (e, w);
    }
    order.sort_unstable_by_key(|&(e, _)| e);
    // (checked above: every chosen expert has its block formats)
    const ANY: [quant::QuantType; 3] = [quant::QuantType::Q8_0; 3];
    fn job<'a>(
        weights: &'a Weights,
        qt: quant::QuantType,
        t: &TensorRef,
        x: ops::QuantX<'a>,
        rows: usize,
    ) -> par::QJob<'a> {
        par::QJob {
            w: quant::QMatrix::new(qt, weights.bytes(t), rows, x.cols()),
            x,
        }
    }
    // (fills the jobs arrays past the jobs run: never run)
    let placeholder = par::QJob {
        w: quant::QMatrix::new(quant::QuantType::Q8_0, &[], 0, 32),
        x: ops::QuantX::new(qwenrt_kernels::Isa::Scalar, &[], &mut []),
    };
    let scratch = &mut *mm.quant_scratch;
    // the gates, then the ups: [2 * top_k, f]
    let gu = &mut gate_up[..2 * top_k * f];
    {
        let xq = ops::QuantX::new(cpu, x, &mut scratch[..per_h]);
        let mut jobs = [placeholder; par::MANY_MAX];
        for (i, &(e, _)) in order.iter().enumerate() {
            let ex = &experts[e as usize];
            let ([gq, uq, _], [gate, up, _]) = (ex.file_blocks().unwrap_or(ANY), ex.tensors());
            jobs[i] = job(weights, gq, gate, xq, f);
            jobs[top_k + i] = job(weights, uq, up, xq, f);
        }
        par::matvec_q_many(pool, cpu, &jobs[..2 * top_k], gu);
    }
    let (gate, up) = gu.split_at_mut(top_k * f);
    ops::silu_mul(cpu, gate, up);
    // the downs, each on its expert's activations: [top_k, hidden]
    let y = &mut expert_out[..top_k * h];
    {
        let mut jobs = [placeholder; par::MANY_MAX];
        let acts = gate.chunks_exact(f).zip(scratch.chunks_mut(per_f));
        for (i, (&(e, _), (act, sc))) in order.iter().zip(acts).enumerate() {
            let ex = &experts[e as usize];
            let ([_, _, dq], [_, _, down]) = (ex.file_blocks().unwrap_or(ANY), ex.tensors());
            let xa = ops::QuantX::new(cpu, act, sc);
            jobs[i] = job(weights, dq, down, xa, h);
        }
        par::matvec_q_many(pool, cpu, &jobs[..top_k], y);
    }
    out.fill(0.0);
    for (&(_, w), yr) in order.iter().zip(y.chunks_exact(h)) {
        for (o, &v) in out.iter_mut().zip(yr) {
            *o += w * v;
        }
    }
    true
}

/// One row's routing, as transformers' Qwen3-MoE computes it: `logits` (`[experts]`) become the
/// softmax over every expert; `chosen` gets the `top_k` most probable (the lower index first
/// among equals) and `weight` their probabilities, renormalized to sum to 1 when `renormalize`
/// (`norm_topk_prob`).
fn route(logits: &mut [f32], chosen: &mut [u32], weight: &mut [f32], renormalize: bool) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for p in logits.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in logits.iter_mut() {
        *p /= sum;
    }
    for j in 0..chosen.len() {
        let mut best: Option<usize> = None;
        for (e, &p) in logits.iter().enumerate() {
            let taken = chosen[..j].contains(&(e as u32));
            if !taken && best.is_none_or(|b| p > logits[b]) {
                best = Some(e);
            }
        }
        let best = best.unwrap_or(0);
        chosen[j] = best as u32;
        weight[j] = logits[best];
    }
    if renormalize {
        let total: f32 = weight.iter().sum();
        for w in weight.iter_mut() {
            *w /= total;
        }
    }
}

/// One feed's rows of one layer, for [`cache_and_attend`].
struct FeedRows<'a> {
    /// The sequence's slot: its place in the KV regions.
    slot: usize,
    numerics: Numerics,
    /// `[m, kv_heads * head_dim]`: the feed's new keys and values.
    k: &'a [f32],
    v: &'a [f32],
    /// `[m, heads * head_dim]`: its queries, and the attention output.
    q: &'a [f32],
    out: &'a mut [f32],
}

/// Writes a feed's K/V rows into its sequence's cache at layer `layer` (rounded to `T`, the
/// cache's element type), then runs attention for its queries over that cache, reading it in
/// `T`. `kv_k`/`kv_v` are the arena's K and V regions of every sequence.
#[allow(clippy::too_many_arguments)]
fn cache_and_attend<T: KvType>(
    pool: &ThreadPool,
    cpu: Cpu,
    layout: KvLayout,
    kv: &mut KvCache,
    layer: usize,
    feed: FeedRows<'_>,
    kv_k: &mut [f32],
    kv_v: &mut [f32],
    attn_scores: &mut [f32],
) -> Result<(), EngineError> {
    // the sequence's `[layer, kv_head, position, head_dim]` of T (16-bit: two to a float)
    let elems = kv.shape().elems().unwrap_or(0);
    let seq = feed.slot * elems..(feed.slot + 1) * elems;
    let seq_k = &mut bytemuck::cast_slice_mut::<f32, T::Elem>(kv_k)[seq.clone()];
    let seq_v = &mut bytemuck::cast_slice_mut::<f32, T::Elem>(kv_v)[seq];
    let pos0 = kv.used();
    let m = feed.k.len() / (layout.n_kv_heads * layout.head_dim).max(1);
    kv.write::<T>(
        &mut KvStore { k: seq_k, v: seq_v },
        layer,
        pos0,
        feed.k,
        feed.v,
    )?;
    let (layer_k, layer_v) = kv.view::<T>(seq_k, seq_v, layer, pos0 + m)?;
    let attn = par::Attention::<T> {
        layout,
        pos0,
        q: feed.q,
        k: layer_k,
        v: layer_v,
    };
    if feed.numerics == Numerics::Decode {
        // each row as a lone decode step attends: one query at its own position
        let qdim = layout.n_heads * layout.head_dim;
        for t in 0..m {
            let r = t * qdim..(t + 1) * qdim;
            let row = par::Attention {
                pos0: pos0 + t,
                q: &feed.q[r.clone()],
                ..attn
            };
            row.run(pool, cpu, attn_scores, &mut feed.out[r]);
        }
    } else {
        attn.run(pool, cpu, attn_scores, feed.out);
    }
    Ok(())
}

/// Qwen2's biases on `q`, `k` and `v` and Qwen3's RMS norm of each head of `q` and of `k`
/// (`head_norm`: scratch of `[head_dim]`), where the layer has them.
fn bias_and_head_norm(
    cpu: Cpu,
    weights: &Weights,
    layer: &Layer,
    [q, k, v]: [&mut [f32]; 3],
    head_norm: &mut [f32],
) {
    let eps = weights.config.rms_norm_eps;
    for (y, bias) in [
        (&mut *q, &layer.q_bias),
        (&mut *k, &layer.k_bias),
        (v, &layer.v_bias),
    ] {
        if let Some(bias) = bias {
            bias_rows(cpu, y, bias, weights);
        }
    }
    for (y, norm) in [(q, &layer.q_norm), (k, &layer.k_norm)] {
        if let Some(norm) = norm {
            head_rmsnorm(cpu, y, norm, weights, eps, head_norm);
        }
    }
}

/// RoPE on every head of each row of `q` and `k`, at the row's angles (`rope_cos`/`rope_sin`:
/// `[rows, head_dim / 2]`).
fn rope_rows(cpu: Cpu, hd: usize, [q, k]: [&mut [f32]; 2], rope_cos: &[f32], rope_sin: &[f32]) {
    let half = hd / 2;
    let rows = rope_cos.len() / half.max(1);
    let (qd, kvd) = (q.len() / rows.max(1), k.len() / rows.max(1));
    for t in 0..rows {
        let cos = &rope_cos[t * half..(t + 1) * half];
        let sin = &rope_sin[t * half..(t + 1) * half];
        ops::rope(cpu, &mut q[t * qd..(t + 1) * qd], hd, cos, sin);
        ops::rope(cpu, &mut k[t * kvd..(t + 1) * kvd], hd, cos, sin);
    }
}

/// The final norm of the last row of each feed that wants its embedding ([`Want::Embedding`]),
/// into its sequence's row of `seq_embedding` (`[sequences, hidden]`).
fn embeddings_out(
    cpu: Cpu,
    weights: &Weights,
    feeds: &[Feed<'_>],
    x: &[f32],
    seq_embedding: &mut [f32],
) {
    let (h, eps) = (weights.config.hidden_size, weights.config.rms_norm_eps);
    let (norm, norm_dtype) = (weights.bytes(&weights.norm), weights.norm.dtype());
    for (row0, fd) in in_row_order(feeds).filter(|(_, fd)| fd.logits == Want::Embedding) {
        let (i, r) = (fd.seq.slot(), row0 + fd.tokens.len() - 1);
        let out = &mut seq_embedding[i * h..(i + 1) * h];
        ops::rmsnorm(cpu, &x[r * h..(r + 1) * h], norm, norm_dtype, eps, out);
    }
}

/// `out[t] = rmsnorm(x[t]) * weight` for every row.
fn rmsnorm_rows(
    cpu: Cpu,
    x: &[f32],
    out: &mut [f32],
    width: usize,
    weight: &TensorRef,
    weights: &Weights,
    eps: f32,
) {
    let wb = weights.bytes(weight);
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        ops::rmsnorm(cpu, xr, wb, weight.dtype(), eps, or);
    }
}

/// `y[t] += bias` for every row `t` (rows as wide as the bias).
fn bias_rows(cpu: Cpu, y: &mut [f32], bias: &TensorRef, weights: &Weights) {
    let b = weights.bytes(bias);
    for row in y.chunks_exact_mut(bias.shape[0]) {
        ops::add_bias(cpu, row, b, bias.dtype());
    }
}

/// `y[t, head] = rmsnorm(y[t, head]) * weight` for every head of every row (heads as wide as
/// the weight), each head copied into `scratch` first.
fn head_rmsnorm(
    cpu: Cpu,
    y: &mut [f32],
    weight: &TensorRef,
    weights: &Weights,
    eps: f32,
    scratch: &mut [f32],
) {
    let hd = weight.shape[0];
    let (wb, scratch) = (weights.bytes(weight), &mut scratch[..hd]);
    for head in y.chunks_exact_mut(hd) {
        scratch.copy_from_slice(head);
        ops::rmsnorm(cpu, scratch, wb, weight.dtype(), eps, head);
    }
}

/// `inv_freq[i] = 1 / theta^(2i / head_dim)`, in f32 as transformers computes it.
pub(super) fn init_rope(inv_freq: &mut [f32], theta: f32, head_dim: usize) {
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

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn route_takes_the_top_k_of_the_softmax() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let p = |i: usize| logits[i].exp() / z;
        for renormalize in [false, true] {
            let (mut l, mut chosen, mut weight) = (logits, [9u32; 3], [0f32; 3]);
            route(&mut l, &mut chosen, &mut weight, renormalize);
            // equal logits: the lower index first, as torch.topk
            assert_eq!(chosen, [1, 3, 4]);
            let want = [p(1), p(3), p(4)];
            let sum: f32 = want.iter().sum();
            for (w, v) in weight.iter().zip(want) {
                let v = if renormalize { v / sum } else { v };
                assert!(
                    (w - v).abs() < 1e-6,
                    "{weight:?} vs {want:?} ({renormalize})"
                );
            }
            if renormalize {
                assert!((weight.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
        // k = every expert: each once
        let (mut l, mut chosen, mut weight) = (logits, [0u32; 5], [0f32; 5]);
        route(&mut l, &mut chosen, &mut weight, false);
        let mut sorted = chosen;
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        // NaN logits give NaN weights, never an expert out of range
        let (mut l, mut chosen, mut weight) = ([f32::NAN; 4], [7u32; 2], [0f32; 2]);
        route(&mut l, &mut chosen, &mut weight, true);
        assert!(
            chosen.iter().all(|&c| c < 4) && chosen[0] != chosen[1],
            "{chosen:?}"
        );
    }
}
