//! Kernels split across a [`ThreadPool`]. The runtime calls only these for its heavy work, so
//! every disjoint-write split lives here, next to the pool.
//!
//! PLACEHOLDER bodies: sequential loops over the `ops` kernels.

use crate::dtype::WeightType;
use crate::isa::Isa;
use crate::ops;
use crate::pool::ThreadPool;

/// Floats of attention-score scratch the `attention_*` functions need.
pub fn scores_len(n_threads: usize, n_heads: usize, cap: usize) -> usize {
    n_threads.max(n_heads).max(1) * cap
}

/// [`ops::matvec`] with rows split across the pool.
pub fn matvec<W: WeightType>(pool: &ThreadPool, isa: Isa, w: &[u8], x: &[f32], y: &mut [f32]) {
    let _ = pool;
    ops::matvec::<W>(isa, w, x, y)
}

/// [`ops::matmul`] with output columns (weight rows) split across the pool.
pub fn matmul<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    w: &[u8],
    k: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let _ = pool;
    ops::matmul::<W>(isa, w, k, x, y)
}

/// Shape of one layer of the KV cache as the attention kernels see it: `k` and `v` are
/// `[n_kv_heads, cap, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KvLayout {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub cap: usize,
}

/// Attention of `n` new queries at positions `pos0..pos0+n` (causal: query `t` sees keys
/// `0..=pos0+t`). `q` and `out` are `[n, n_heads * head_dim]`; `k`/`v` are one layer of the
/// cache, `[n_kv_heads, cap, head_dim]`, valid up to `pos0 + n`. Grouped-query: query head `h`
/// reads kv head `h / (n_heads / n_kv_heads)`. `scores` holds [`scores_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    isa: Isa,
    layout: KvLayout,
    pos0: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let _ = pool;
    let KvLayout { n_heads, n_kv_heads, head_dim: hd, cap } = layout;
    let qdim = n_heads * hd;
    let n = if qdim == 0 { 0 } else { q.len() / qdim };
    assert!(pos0 + n <= cap, "attention: positions past the cache capacity");
    assert!(k.len() >= n_kv_heads * cap * hd && v.len() >= n_kv_heads * cap * hd);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    for t in 0..n {
        let len = pos0 + t + 1;
        for h in 0..n_heads {
            let kvh = h / group;
            let base = kvh * cap * hd;
            let qh = &q[t * qdim + h * hd..t * qdim + (h + 1) * hd];
            let oh = &mut out[t * qdim + h * hd..t * qdim + (h + 1) * hd];
            ops::attention(
                isa,
                qh,
                &k[base..base + len * hd],
                &v[base..base + len * hd],
                scale,
                &mut scores[..len],
                oh,
            );
        }
    }
}
