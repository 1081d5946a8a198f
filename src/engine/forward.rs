//! The Qwen2 forward pass over one step's rows, reading top to bottom like the model card:
//! embed; per layer: rmsnorm, q/k/v + bias, rope, cache write, attention, o_proj, residual,
//! rmsnorm, gate/up, silu*mul, down, residual; final norm; lm_head.
//!
//! A step's rows are laid out by numerics: first the rows of every [`Numerics::Decode`] feed,
//! then those of every [`Numerics::Prefill`] feed, each feed's rows together. Every matrix
//! runs once over the decode rows (the decode matvec per row, the weights streamed once for
//! all of them) and once over the prefill rows (a matmul). Every weight matrix is read in its
//! own format: each call dispatches once on its tensor's [`Dtype`] to a kernel monomorphized
//! for it.

use qwenrt_kernels::par::{self, KvLayout};
use qwenrt_kernels::{ops, quant, Bf16, Dtype, Format, Isa, KvType, ThreadPool, F16, F32};

use super::plan::{ArenaBufs, LOGIT_ROWS};
use super::{Engine, EngineError, Feed, Numerics, SeqId, Want};
use crate::engine::kv_cache::{KvCache, KvStore};
use crate::model::weights::{TensorRef, Weights};

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
/// and their logits.
pub(super) fn run(
    e: &mut Engine,
    feeds: &[Feed<'_>],
    each: &mut dyn FnMut(SeqId, usize, &[f32]),
) -> Result<(), EngineError> {
    let weights = &*e.weights;
    let c = &weights.config;
    let (isa, pool, prefill_bf16) = (e.isa, &e.pool, e.prefill_bf16);
    let slots = &mut e.slots;
    let n: usize = feeds.iter().map(|f| f.tokens.len()).sum();
    let nd: usize = feeds
        .iter()
        .filter(|f| f.numerics == Numerics::Decode)
        .map(|f| f.tokens.len())
        .sum();
    let (h, kvd, f, hd) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
    let (nh, nkv, eps, vocab) = (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.rms_norm_eps,
        c.vocab_size,
    );
    let ctx = slots[0].kv.capacity();
    let kv_dtype = slots[0].kv.shape().dtype;
    let b = ArenaBufs::carve(e.arena.floats_mut(), &e.plan);
    let x = &mut b.x[..n * h]; // [n, hidden]: the residual stream
    let x_norm = &mut b.x_norm[..n * h];
    let q = &mut b.q[..n * h]; // [n, heads * head_dim]
    let k = &mut b.k[..n * kvd]; // [n, kv_heads * head_dim]
    let v = &mut b.v[..n * kvd];
    let attn_out = &mut b.attn_out[..n * h];
    let proj_out = &mut b.proj_out[..n * h];
    let mlp_gate = &mut b.mlp_gate[..n * f]; // [n, ffn]
    let mlp_up = &mut b.mlp_up[..n * f];
    let x_prep = &mut *b.x_prep;
    let matmul_pack = &mut *b.matmul_pack;
    let quant_scratch = &mut *b.quant_scratch;
    let wb = |t: &TensorRef| weights.bytes(t);

    // `out = input · wᵀ` over the step's rows, in w's own format: the decode rows through the
    // decode matvec (matvec_rows: the same numbers as one matvec per row), the prefill rows
    // through one matmul (bf16 dot products for the MLP's gate/up on bf16 weights when on).
    let mut linear = |w: &TensorRef,
                      input: &[f32],
                      k_in: usize,
                      out: &mut [f32],
                      gate_up: bool,
                      prep: &mut [f32]| {
        let wbytes = weights.bytes(w);
        let width = out.len() / n;
        let (in_d, in_p) = input.split_at(nd * k_in);
        let (out_d, out_p) = out.split_at_mut(nd * width);
        let d = match w.format {
            Format::Float(d) => d,
            Format::Quant(qt) => {
                // the inputs quantized to 8-bit blocks once per call, integer dot products
                if nd > 0 {
                    matvec_quant(pool, isa, weights, w, qt, k_in, in_d, quant_scratch, out_d);
                }
                if nd < n {
                    par::matmul_q(pool, isa, qt, wbytes, k_in, in_p, quant_scratch, out_p);
                }
                return;
            }
        };
        if nd > 0 {
            by_format!(d, W => par::matvec_rows::<W>(pool, isa, wbytes, k_in, in_d, prep, out_d));
        }
        if nd < n {
            if gate_up && prefill_bf16 && d == Dtype::BF16 {
                par::matmul_bf16dot(pool, isa, wbytes, k_in, in_p, matmul_pack, out_p)
            } else {
                by_format!(d, W => par::matmul::<W>(pool, isa, wbytes, k_in, in_p, matmul_pack, out_p))
            }
        }
    };
    let layout = KvLayout {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        cap: ctx,
    };

    // per row: its position's rope angles (once for every layer), its embedding; per feed:
    // its tokens into the sequence's token history (past the committed length until the
    // step commits)
    let half = hd / 2;
    let embed = wb(&weights.embed_tokens);
    let ef = weights.embed_tokens.format;
    // bytes of one embedding row (whole blocks: checked at load)
    let er = ef.row_bytes(h).unwrap_or(0);
    let history: &mut [u32] = bytemuck::cast_slice_mut(b.seq_tokens);
    for (row0, fd) in in_row_order(feeds) {
        let i = fd.seq.slot();
        let pos0 = slots[i].kv.used();
        history[i * ctx + pos0..i * ctx + pos0 + fd.tokens.len()].copy_from_slice(fd.tokens);
        for (t, &token) in fd.tokens.iter().enumerate() {
            let r = row0 + t;
            rope_at(
                b.inv_freq,
                &mut b.rope_cos[r * half..(r + 1) * half],
                &mut b.rope_sin[r * half..(r + 1) * half],
                pos0 + t,
            );
            let row = &embed[token as usize * er..(token as usize + 1) * er];
            match ef {
                Format::Float(d) => d.to_f32(row, &mut x[r * h..(r + 1) * h]),
                Format::Quant(qt) => quant::dequantize_row(qt, row, &mut x[r * h..(r + 1) * h]),
            }
        }
    }
    let rope_cos = &b.rope_cos[..n * half];
    let rope_sin = &b.rope_sin[..n * half];

    for (l, layer) in weights.layers.iter().enumerate() {
        // attention block
        rmsnorm_rows(isa, x, x_norm, h, &layer.input_layernorm, weights, eps);
        let qkv_format = layer.q_proj.format;
        if let (Format::Float(qkv_format), true) = (
            qkv_format,
            n == 1 && nd == 1 && [layer.k_proj.format, layer.v_proj.format] == [qkv_format; 2],
        ) {
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
        // per feed: its rows into its own cache, then attention over that cache, read in the
        // cache's own element type
        for (row0, fd) in in_row_order(feeds) {
            let i = fd.seq.slot();
            let m = fd.tokens.len();
            let rows = row0 * h..(row0 + m) * h;
            let kv_rows = row0 * kvd..(row0 + m) * kvd;
            let feed = FeedRows {
                slot: i,
                numerics: fd.numerics,
                k: &k[kv_rows.clone()],
                v: &v[kv_rows],
                q: &q[rows.clone()],
                out: &mut attn_out[rows],
            };
            let (kv_k, kv_v) = (&mut *b.kv_k, &mut *b.kv_v);
            by_format!(kv_dtype, T => cache_and_attend::<T>(
                pool, isa, layout, &mut slots[i].kv, l, feed, kv_k, kv_v, b.attn_scores,
            ))?;
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
        let gu_format = layer.gate_proj.format;
        if let (Format::Float(gu_format), true) = (
            gu_format,
            n == 1 && nd == 1 && layer.up_proj.format == gu_format,
        ) {
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

    // final norm and lm_head over the rows whose logits are wanted, up to LOGIT_ROWS at a
    // time (the head is streamed once per group; the same numbers as one matvec per row)
    let head = wb(&weights.lm_head);
    let hdt = weights.lm_head.format;
    let wanted = in_row_order(feeds).flat_map(|(row0, fd)| {
        let m = fd.tokens.len();
        let ts = match fd.logits {
            Want::None => 0..0,
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
                isa,
                &x[r * h..(r + 1) * h],
                wb(&weights.norm),
                weights.norm.dtype(),
                eps,
                &mut x_norm[j * h..(j + 1) * h],
            );
            group[j] = Some(item);
            g = j + 1;
        }
        let out = &mut b.logits[..g * vocab];
        match hdt {
            Format::Quant(qt) => {
                let lm_head = &weights.lm_head;
                matvec_quant(
                    pool,
                    isa,
                    weights,
                    lm_head,
                    qt,
                    h,
                    &x_norm[..g * h],
                    quant_scratch,
                    out,
                )
            }
            Format::Float(d) if g == 1 => matvec(pool, isa, d, head, &x_norm[..h], x_prep, out),
            Format::Float(d) => {
                by_format!(d, W => par::matvec_rows::<W>(pool, isa, head, h, &x_norm[..g * h], x_prep, out))
            }
        }
        for (j, row) in out.chunks_exact(vocab).enumerate() {
            let Some((fd, _, t)) = group[j] else { continue };
            let i = fd.seq.slot();
            let pos = slots[i].kv.used() + t;
            if fd.logits == Want::All {
                each(fd.seq, pos, row);
            }
            if t + 1 == fd.tokens.len() {
                b.seq_logits[i * vocab..(i + 1) * vocab].copy_from_slice(row);
            }
        }
    }
    Ok(())
}

/// `out = x · wᵀ` for decode rows `x` (`cols` each) on `w`, quantized as `qt`: on AVX-512 from
/// the decode layout where the matrix was repacked at load, else from the file's blocks; the
/// inputs quantized to 8-bit blocks into `scratch` once per call.
#[allow(clippy::too_many_arguments)]
fn matvec_quant(
    pool: &ThreadPool,
    isa: Isa,
    weights: &Weights,
    w: &TensorRef,
    qt: quant::QuantType,
    cols: usize,
    x: &[f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    match weights.repacked(w) {
        Some(wr) if isa == Isa::Avx512 => {
            par::matvec_repacked_rows(pool, isa, qt, wr, cols, x, scratch, out)
        }
        _ => par::matvec_q_rows(pool, isa, qt, weights.bytes(w), cols, x, scratch, out),
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
    isa: Isa,
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
    if feed.numerics == Numerics::Decode {
        // each row as a lone decode step attends: one query at its own position
        let qdim = layout.n_heads * layout.head_dim;
        for t in 0..m {
            let r = t * qdim..(t + 1) * qdim;
            par::attention::<T>(
                pool,
                isa,
                layout,
                pos0 + t,
                &feed.q[r.clone()],
                layer_k,
                layer_v,
                attn_scores,
                &mut feed.out[r],
            );
        }
    } else {
        par::attention::<T>(
            pool,
            isa,
            layout,
            pos0,
            feed.q,
            layer_k,
            layer_v,
            attn_scores,
            feed.out,
        );
    }
    Ok(())
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
        ops::rmsnorm(isa, xr, wb, weight.dtype(), eps, or);
    }
}

/// `y[t] += bias` for every row.
fn bias_rows(isa: Isa, y: &mut [f32], width: usize, bias: &TensorRef, weights: &Weights) {
    let b = weights.bytes(bias);
    for row in y.chunks_exact_mut(width) {
        ops::add_bias(isa, row, b, bias.dtype());
    }
}

/// [`par::matvec`] on a matrix of format `d`.
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
