//! Attention split across the pool: by tiles of (kv head, query rows) with an online
//! softmax, or by (token, head) pairs.

use super::*;
use crate::dtype::KvType;

/// Shape of one layer of the KV cache as the attention kernels see it: `k` and `v` are
/// `[n_kv_heads, cap, head_dim]` (of the cache's [`KvType`]).
#[derive(Clone, Copy, Debug)]
pub struct KvLayout {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (each serves `n_heads / n_kv_heads` query heads).
    pub n_kv_heads: usize,
    /// Floats per head.
    pub head_dim: usize,
    /// Positions the cache holds (the stride between heads is `cap * head_dim`).
    pub cap: usize,
}

/// One attention call: `n` new queries at positions `pos0..pos0+n` (causal: query `t` sees
/// keys `0..=pos0+t`) against one layer of the cache, `[n_kv_heads, cap, head_dim]` of KV type
/// `T` (f32, or bf16 / f16 widened to f32 as they are read), valid up to `pos0 + n`.
/// Grouped-query: query head `h` reads kv head `h / (n_heads / n_kv_heads)`. Its `run*`
/// methods write `out`, `[n, n_heads * head_dim]` like `q`, using `scores`, scratch of
/// [`scores_len`] floats.
pub struct Attention<'a, T: KvType> {
    /// The cache's shape.
    pub layout: KvLayout,
    /// Position of the first query.
    pub pos0: usize,
    /// The queries, `[n, n_heads * head_dim]`.
    pub q: &'a [f32],
    /// The layer's keys, `[n_kv_heads, cap, head_dim]`.
    pub k: &'a [T::Elem],
    /// The layer's values, `[n_kv_heads, cap, head_dim]`.
    pub v: &'a [T::Elem],
}

// (by hand: a derive would ask `T: Copy` of the marker type)
impl<T: KvType> Clone for Attention<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: KvType> Copy for Attention<'_, T> {}

impl<T: KvType> Attention<'_, T> {
    /// Runs [`Attention::run_tiled`] where the ISA has a blocked body and there are enough
    /// query rows per kv head to fill the tiles and the threads, else [`Attention::run_rows`].
    pub fn run(&self, pool: &ThreadPool, isa: impl Into<Isa>, scores: &mut [f32], out: &mut [f32]) {
        let isa: Isa = isa.into();
        if use_tiles(pool.n_threads(), isa, self.layout, self.q.len()) {
            self.run_tiled(pool, isa, scores, out);
        } else {
            self.run_rows(pool, isa, scores, out);
        }
    }

    /// The attention computed in tiles, FlashAttention-2 style: each work item is one kv head
    /// and a tile of up to 32 of its query rows (token-major over the heads of its group, so
    /// the group's heads share every key/value read), streamed against blocks of keys with an
    /// online softmax, f32 throughout. Work items are handed out by an atomic counter, latest
    /// (longest) tiles first. Allocation-free: thread `tid` keeps its tile scratch in
    /// `scores[tid * TILE_SCRATCH..]`, so `scores` must hold [`scores_len`] floats, like for
    /// [`Attention::run`].
    ///
    /// ISAs without a blocked body (and head dims above 256) run [`Attention::run_rows`].
    pub fn run_tiled(&self, pool: &ThreadPool, isa: Isa, scores: &mut [f32], out: &mut [f32]) {
        let Attention {
            layout,
            pos0,
            q,
            k,
            v,
        } = *self;
        let hd = layout.head_dim;
        let rt1 = ops::attention_tile_rows(isa, 1);
        // (The tiles address query rows and compare causal limits in 32-bit lanes.)
        let big = q.len() > i32::MAX as usize || layout.cap > i32::MAX as usize;
        if rt1.is_none() || hd == 0 || hd > TILE_MAX_HD || big {
            self.run_rows(pool, isa, scores, out);
            return;
        }
        let (n, group) = self.checks(out);
        if n == 0 {
            return;
        }
        let KvLayout {
            n_heads,
            n_kv_heads,
            cap,
            ..
        } = layout;
        let rows = n * group;
        // Two vectors of rows per tile once there are enough rows, else one.
        let rv = if rows >= 32 { 2 } else { 1 };
        let rt = ops::attention_tile_rows(isa, rv).unwrap_or(16);
        assert!(ops::attention_tile_scratch(hd, rv) <= TILE_SCRATCH);
        let tiles = rows.div_ceil(rt);
        let items = tiles * n_kv_heads;
        let nt = pool.n_threads().min(items);
        assert!(
            scores.len() >= nt * TILE_SCRATCH,
            "attention: scores shorter than the threads' tile scratch (see scores_len)"
        );
        let qdim = n_heads * hd;
        let sc = SendPtr(scores.as_mut_ptr());
        let scale = 1.0 / (hd as f32).sqrt();
        let op = SendPtr(out.as_mut_ptr());
        let work = |tid: usize, i: usize| {
            // SAFETY: tid < nt and scores holds nt * TILE_SCRATCH floats (asserted), so this
            // thread's TILE_SCRATCH floats at tid * TILE_SCRATCH lie inside it, disjoint from
            // every other thread's; `scores`' `&mut` is held by this function until `run`
            // returns.
            let sp = unsafe { sc.get().add(tid * TILE_SCRATCH) };
            let tile = tiles - 1 - i / n_kv_heads;
            let g = i % n_kv_heads;
            let row0 = tile * rt;
            let t = ops::AttnTile::<T> {
                q: q.as_ptr(),
                out: op.get(),
                k: k[g * cap * hd..].as_ptr(),
                v: v[g * cap * hd..].as_ptr(),
                qdim,
                hd,
                group,
                head0: g * group,
                row0,
                rows: rt.min(rows - row0),
                pos0,
                scale,
            };
            // SAFETY: the tile's rows are tokens t < n (row < n * group) of heads of group
            // g, so q and out hold their hd floats at t * qdim + head * hd (checked n * qdim
            // <= q.len(), out.len()), an offset below q.len() <= i32::MAX (checked); kv head
            // g's slab starts at g * cap * hd and holds cap >= pos0 + n >= pos0 + t + 1 rows
            // (checked). Work item i is claimed by exactly one thread and its (token, head)
            // rows belong to no other item, so the out rows it writes are disjoint from every
            // other thread's; `out`'s `&mut` is held here until `run` returns. scratch is
            // this thread's own TILE_SCRATCH >= attention_tile_scratch(hd, rv) floats of
            // `scores` (asserted; see above), and rows <= rt (min above).
            unsafe { ops::attention_tile::<T>(isa, rv, &t, sp) };
        };
        claim_items(pool, nt, items, &work);
    }

    /// The attention one (query token, head) pair at a time: each pair runs the single-head
    /// kernel [`ops::attention`] over its keys, pairs handed out by an atomic counter (longest
    /// first), each thread with its own `cap`-sized slice of `scores`. Every ISA; the path for
    /// decode with more threads than kv heads.
    pub fn run_rows(&self, pool: &ThreadPool, isa: Isa, scores: &mut [f32], out: &mut [f32]) {
        let (n, group) = self.checks(out);
        if n == 0 {
            return;
        }
        let KvLayout {
            n_heads,
            head_dim: hd,
            cap,
            ..
        } = self.layout;
        let qdim = n_heads * hd;
        // Each participating thread needs `cap` floats of scores.
        let slots = scores.len() / cap;
        assert!(
            slots >= 1,
            "attention: scores shorter than cap (see scores_len)"
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let pairs = n * n_heads;
        let nt = pool.n_threads().min(slots).min(pairs);
        let sp = SendPtr(scores.as_mut_ptr());
        let op = SendPtr(out.as_mut_ptr());
        claim_items(pool, nt, pairs, &|tid, i| {
            // Longest (latest) queries first, for balance.
            let t = n - 1 - i / n_heads;
            let h = i % n_heads;
            // SAFETY: thread tid < nt <= slots owns scores[tid*cap..(tid+1)*cap], inside
            // `scores` (slots * cap <= scores.len()) and disjoint from every other thread's
            // slice.
            let sc = unsafe { std::slice::from_raw_parts_mut(sp.get().add(tid * cap), cap) };
            // SAFETY: each pair index i is claimed by exactly one thread ([`claim_items`]), and
            // pair (t, h) owns out[t*qdim + h*hd .. + hd], disjoint across pairs and inside
            // `out` (checked n*qdim <= out.len()), whose `&mut` we hold until `run` returns.
            let o = unsafe { std::slice::from_raw_parts_mut(op.get().add(t * qdim + h * hd), hd) };
            let len = self.pos0 + t + 1;
            let base = (h / group) * cap * hd;
            let head = ops::AttnHead::<T> {
                q: &self.q[t * qdim + h * hd..t * qdim + (h + 1) * hd],
                keys: &self.k[base..base + len * hd],
                values: &self.v[base..base + len * hd],
                scale,
            };
            ops::attention(isa, head, &mut sc[..len], o);
        });
    }

    /// Checks the buffers of the call against `out`; returns `(n, group)`.
    fn checks(&self, out: &[f32]) -> (usize, usize) {
        let KvLayout {
            n_heads,
            n_kv_heads,
            head_dim: hd,
            cap,
        } = self.layout;
        let qdim = n_heads * hd;
        let n = self.q.len().checked_div(qdim).unwrap_or(0);
        if n == 0 {
            return (0, 1);
        }
        assert!(
            self.pos0 + n <= cap,
            "attention: positions past the cache capacity"
        );
        assert!(self.k.len() >= n_kv_heads * cap * hd && self.v.len() >= n_kv_heads * cap * hd);
        assert!(
            n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            "attention: bad head counts"
        );
        assert!(out.len() >= n * qdim, "attention: out too short");
        (n, n_heads / n_kv_heads)
    }
}

/// Largest head dim of the blocked path.
const TILE_MAX_HD: usize = 256;
/// Floats of each thread's tile scratch (a slice of the caller's `scores`, see
/// [`scores_len`]): room for 32-row tiles at [`TILE_MAX_HD`] with 64-key blocks.
pub(super) const TILE_SCRATCH: usize = (2 * TILE_MAX_HD + 64) * 32;

/// Whether [`Attention::run`] takes the blocked path.
fn use_tiles(n_threads: usize, isa: Isa, layout: KvLayout, q_len: usize) -> bool {
    let KvLayout {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        ..
    } = layout;
    if hd == 0 || hd > TILE_MAX_HD || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return false;
    }
    let Some(rt) = ops::attention_tile_rows(isa, 1) else {
        return false;
    };
    let n = q_len / (n_heads * hd);
    let rows = n * (n_heads / n_kv_heads);
    // A tile shares each key/value read among its rows: worth it once a tile holds a quarter
    // vector of rows (decode with 7 query heads per kv head already gains) and there is a tile
    // for every thread (decode with many threads keeps the per-row split, which has `n_heads`
    // work items instead of `n_kv_heads`).
    rows >= rt / 4 && rows.div_ceil(rt) * n_kv_heads >= n_threads
}
