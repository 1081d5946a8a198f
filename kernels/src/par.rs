//! Kernels split across a [`ThreadPool`]. The runtime calls only these for its heavy work, so
//! every disjoint-write split lives here, next to the pool.
//!
//! - [`matvec`] (and the fused [`matvec2`], [`matvec3`]): rows split in balanced chunks of a
//!   multiple of [`ROW_ALIGN`] rows, one contiguous chunk of `y` per thread.
//! - [`matmul`]: output columns (weight rows) split in chunks of a multiple of [`COL_ALIGN`], each
//!   thread writing a column block of every token's output row.
//! - [`attention`]: on AVX-512, tiles of (kv head, up to 32 query rows of its group) streamed
//!   against key blocks with an online softmax ([`attention_tiled`]); elsewhere (and for decode
//!   with more threads than kv heads) (query token, head) pairs ([`attention_rows`]). Both hand
//!   out work with an atomic counter, longest causal rows first.
//!
//! Nothing here allocates: each dispatch passes a stack closure to [`ThreadPool::run`].

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::dtype::WeightType;
use crate::isa::Isa;
use crate::ops;
use crate::pool::ThreadPool;
use crate::scalar;

/// Rows per matvec chunk are a multiple of this (whole 64-byte lines of `y` per thread).
pub const ROW_ALIGN: usize = 16;
/// Columns per matmul chunk are a multiple of this (whole packed panels on every ISA).
pub const COL_ALIGN: usize = 64;
/// Below this many weight elements a matvec runs on the calling thread alone: a dispatch costs
/// more than the work.
const SERIAL_BELOW: usize = 1 << 14;
/// Chunks per thread a matvec is cut into for dynamic claiming.
const CHUNKS_PER_THREAD: usize = 8;

/// A raw pointer to an output buffer that threads write in disjoint parts.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: a SendPtr is only used to build non-overlapping sub-slices (each thread gets its own
// rows / columns / heads, as argued at every use), while the `&mut` it came from is held by the
// dispatching function for the whole `run`.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its raw field).
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Floats of scratch the `attention_*` functions need in `scores`: a `cap`-long row of scores
/// for each thread of the per-row path, or a tile's scratch for each thread of the blocked one.
pub fn scores_len(n_threads: usize, n_heads: usize, cap: usize) -> usize {
    (n_threads.max(n_heads).max(1) * cap).max(n_threads.max(1) * TILE_SCRATCH)
}

/// Rows `[r0, r1)` of thread `tid` out of `n_threads`, for `rows` rows in chunks aligned to
/// `align`, balanced to within one aligned chunk.
fn split(rows: usize, n_threads: usize, tid: usize, align: usize) -> (usize, usize) {
    let blocks = rows.div_ceil(align);
    let per = blocks / n_threads;
    let extra = blocks % n_threads;
    let b0 = tid * per + tid.min(extra);
    let b1 = b0 + per + usize::from(tid < extra);
    ((b0 * align).min(rows), (b1 * align).min(rows))
}

/// [`ops::matvec`] with rows split across the pool. The input is prepared once, in `scratch`
/// ([`ops::matvec_scratch_len`] floats), before the rows are handed out.
pub fn matvec<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    w: &[u8],
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    matvec_n::<W, 1>(pool, isa, [w], x, scratch, [y]);
}

/// Two matvecs sharing the input `x` (e.g. the FFN's gate and up projections) in one dispatch:
/// `y0 = w0 · x`, `y1 = w1 · x`.
#[allow(clippy::too_many_arguments)]
pub fn matvec2<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    x: &[f32],
    scratch: &mut [f32],
    w0: &[u8],
    y0: &mut [f32],
    w1: &[u8],
    y1: &mut [f32],
) {
    matvec_n::<W, 2>(pool, isa, [w0, w1], x, scratch, [y0, y1]);
}

/// Three matvecs sharing the input `x` (e.g. attention's q, k and v projections) in one dispatch.
#[allow(clippy::too_many_arguments)]
pub fn matvec3<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    x: &[f32],
    scratch: &mut [f32],
    w0: &[u8],
    y0: &mut [f32],
    w1: &[u8],
    y1: &mut [f32],
    w2: &[u8],
    y2: &mut [f32],
) {
    matvec_n::<W, 3>(pool, isa, [w0, w1, w2], x, scratch, [y0, y1, y2]);
}

/// `N` matvecs over one `x`: the concatenation of their rows is split across the threads.
fn matvec_n<W: WeightType, const N: usize>(
    pool: &ThreadPool,
    isa: Isa,
    ws: [&[u8]; N],
    x: &[f32],
    scratch: &mut [f32],
    ys: [&mut [f32]; N],
) {
    let cols = x.len();
    let x = &ops::MatvecX::new::<W>(isa, x, scratch);
    for (w, y) in ws.iter().zip(&ys) {
        assert!(
            w.len() >= y.len() * cols * W::SIZE,
            "matvec: weight buffer too short"
        );
    }
    let total: usize = ys.iter().map(|y| y.len()).sum();
    let nt = pool.n_threads();
    if nt == 1 || total * cols < SERIAL_BELOW {
        for (w, y) in ws.into_iter().zip(ys) {
            ops::matvec_x::<W>(isa, w, x, y);
        }
        return;
    }
    let mut ys = ys;
    let lens: [usize; N] = std::array::from_fn(|i| ys[i].len());
    let ptrs: [SendPtr; N] = std::array::from_fn(|i| SendPtr(ys[i].as_mut_ptr()));
    // The matrices' rows are numbered globally (matrix 0 first) and cut into chunks that the
    // threads claim from an atomic counter, in order: a thread slowed by a noisy neighbour (or
    // the caller, who also does the serial work between dispatches) takes fewer chunks instead
    // of holding everyone at the barrier. Each chunk is a contiguous run of rows, so reads
    // stay sequential.
    let chunk = total
        .div_ceil(nt * CHUNKS_PER_THREAD)
        .next_multiple_of(ROW_ALIGN);
    let next = AtomicUsize::new(0);
    pool.run(&|_tid| loop {
        let g0 = next.fetch_add(1, Ordering::Relaxed) * chunk;
        if g0 >= total {
            break;
        }
        let g1 = (g0 + chunk).min(total);
        let mut base = 0;
        for i in 0..N {
            let len = lens[i];
            let r0 = g0.clamp(base, base + len) - base;
            let r1 = g1.clamp(base, base + len) - base;
            base += len;
            if r0 >= r1 {
                continue;
            }
            // SAFETY: every chunk [g0, g1) is claimed by exactly one thread (the counter hands
            // each index out once), so the per-matrix ranges [r0, r1) of different claims are
            // disjoint; they lie inside y_i (length `len`), whose `&mut` is held (unused) by this
            // function until `run` returns.
            let y = unsafe { std::slice::from_raw_parts_mut(ptrs[i].get().add(r0), r1 - r0) };
            let w = &ws[i][r0 * cols * W::SIZE..];
            ops::matvec_x::<W>(isa, w, x, y);
        }
    });
}

/// Floats of scratch [`matmul`] needs on a pool of `n_threads`: one packed weight panel
/// ([`ops::matmul_scratch_len`]) per thread.
pub fn matmul_scratch_len(n_threads: usize) -> usize {
    n_threads.max(1) * ops::matmul_scratch_len()
}

/// Floats of scratch [`matmul_bf16dot`] needs on a pool of `n_threads` for `n` tokens of `k`
/// activations: the rounded activations once, and one packed weight panel per thread.
pub fn matmul_bf16dot_scratch_len(n_threads: usize, n: usize, k: usize) -> usize {
    ops::bf16dot_pairs_len(n, k) + n_threads.max(1) * ops::BF16DOT_PACK
}

/// [`ops::matmul`] with output columns (weight rows) split across the pool. `scratch` holds a
/// packed panel for every thread: [`matmul_scratch_len`]`(pool.n_threads())` floats.
pub fn matmul<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    w: &[u8],
    k: usize,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let per = ops::matmul_scratch_len();
    matmul_cols(
        pool,
        w,
        W::SIZE,
        k,
        x,
        y,
        scratch,
        per,
        &|w, n, yp, ldy, cols, pack| {
            // SAFETY: forwarded from `matmul_cols`'s contract on `body`.
            unsafe { ops::matmul_strided::<W>(isa, w, k, x, n, yp, ldy, cols, pack) }
        },
    );
}

/// [`ops::matmul_bf16dot`] (activations rounded to bf16, AVX512-BF16 where available) with output
/// columns split across the pool. `w` is bf16. The activations are rounded once, into the front
/// of `scratch`, before the columns are handed out; after them come the threads' packed panels
/// ([`matmul_bf16dot_scratch_len`] floats in all).
pub fn matmul_bf16dot(
    pool: &ThreadPool,
    isa: Isa,
    w: &[u8],
    k: usize,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let Some((n, _)) = scalar::matmul_dims(k, x, y) else {
        return;
    };
    let (pairs, packs) = ops::split_bf16dot_scratch(scratch, n, k);
    let xb = ops::bf16dot_pairs(isa, x, k, n, pairs);
    let per = ops::BF16DOT_PACK;
    matmul_cols(
        pool,
        w,
        2,
        k,
        x,
        y,
        packs,
        per,
        &|w, n, yp, ldy, cols, pack| {
            // SAFETY: forwarded from `matmul_cols`'s contract on `body`; `xb` was made for this x,
            // k and n (`matmul_cols` passes the same n).
            unsafe { ops::matmul_bf16dot_strided(isa, w, k, x, xb, n, yp, ldy, cols, pack) }
        },
    );
}

/// The body of one thread's column block: `(w_block, n, y_block, ldy, cols, pack)`.
type ColsBody<'a> = dyn Fn(&[u8], usize, *mut f32, usize, usize, &mut [f32]) + Sync + 'a;

/// The column split shared by the matmuls. `body(w_block, n, y_block, ldy, cols, pack)` must
/// compute `y_block[t * ldy + j]` for `t < n`, `j < cols` from the first `cols` rows of
/// `w_block`; it is called with a `y_block` valid for exactly those writes and not accessed by
/// anyone else, and with `pack`, `per` floats of `packs` that are the calling thread's alone.
#[allow(clippy::too_many_arguments)]
fn matmul_cols(
    pool: &ThreadPool,
    w: &[u8],
    wsize: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
    packs: &mut [f32],
    per: usize,
    body: &ColsBody<'_>,
) {
    let Some((n, rows)) = scalar::matmul_dims(k, x, y) else {
        return;
    };
    assert!(
        w.len() >= rows * k * wsize,
        "matmul: weight buffer too short"
    );
    let nt = pool.n_threads();
    if nt == 1 || rows * k * n < SERIAL_BELOW {
        assert!(packs.len() >= per, "matmul: scratch too short for a panel");
        body(w, n, y.as_mut_ptr(), rows, rows, &mut packs[..per]);
        return;
    }
    assert!(
        packs.len() >= nt * per,
        "matmul: scratch holds {} floats, {} needed for {nt} threads' panels",
        packs.len(),
        nt * per
    );
    let yp = SendPtr(y.as_mut_ptr());
    let pp = SendPtr(packs.as_mut_ptr());
    pool.run(&|tid| {
        let (c0, c1) = split(rows, nt, tid, COL_ALIGN);
        if c0 >= c1 {
            return;
        }
        // SAFETY: tid < nt and packs holds nt * per floats (asserted), so this thread's `per`
        // floats at tid * per lie inside it, disjoint from every other thread's; `packs`' `&mut`
        // is held by this function until `run` returns.
        let pack = unsafe { std::slice::from_raw_parts_mut(pp.get().add(tid * per), per) };
        // SAFETY: w holds rows*k weights (checked), so rows c0..c1 exist. Thread tid writes only
        // y[t * rows + j] for j in its column range [c0, c1), and the ranges of different tids
        // are disjoint; all lie in y (n*rows <= y.len()), whose `&mut` this function holds until
        // `run` returns.
        body(
            &w[c0 * k * wsize..],
            n,
            unsafe { yp.get().add(c0) },
            rows,
            c1 - c0,
            pack,
        );
    });
}

/// Shape of one layer of the KV cache as the attention kernels see it: `k` and `v` are
/// `[n_kv_heads, cap, head_dim]`.
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

/// Attention of `n` new queries at positions `pos0..pos0+n` (causal: query `t` sees keys
/// `0..=pos0+t`). `q` and `out` are `[n, n_heads * head_dim]`; `k`/`v` are one layer of the
/// cache, `[n_kv_heads, cap, head_dim]`, valid up to `pos0 + n`. Grouped-query: query head `h`
/// reads kv head `h / (n_heads / n_kv_heads)`. `scores` holds [`scores_len`] floats.
///
/// Runs [`attention_tiled`] where the ISA has a blocked body and there are enough query rows
/// per kv head to fill the tiles and the threads, else [`attention_rows`].
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
    if use_tiles(pool.n_threads(), isa, layout, q.len()) {
        attention_tiled(pool, isa, layout, pos0, q, k, v, scores, out);
    } else {
        attention_rows(pool, isa, layout, pos0, q, k, v, scores, out);
    }
}

/// Largest head dim of the blocked path.
const TILE_MAX_HD: usize = 256;
/// Floats of each thread's tile scratch (a slice of the caller's `scores`, see
/// [`scores_len`]): room for 32-row tiles at [`TILE_MAX_HD`] with 64-key blocks.
const TILE_SCRATCH: usize = (2 * TILE_MAX_HD + 64) * 32;

/// Whether [`attention`] takes the blocked path.
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

/// Checks the buffers of an attention call; returns `(n, group)`.
fn attention_checks(
    layout: KvLayout,
    pos0: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
) -> (usize, usize) {
    let KvLayout {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        cap,
    } = layout;
    let qdim = n_heads * hd;
    let n = q.len().checked_div(qdim).unwrap_or(0);
    if n == 0 {
        return (0, 1);
    }
    assert!(
        pos0 + n <= cap,
        "attention: positions past the cache capacity"
    );
    assert!(k.len() >= n_kv_heads * cap * hd && v.len() >= n_kv_heads * cap * hd);
    assert!(
        n_kv_heads > 0 && n_heads % n_kv_heads == 0,
        "attention: bad head counts"
    );
    assert!(out.len() >= n * qdim, "attention: out too short");
    (n, n_heads / n_kv_heads)
}

/// [`attention`] computed in tiles, FlashAttention-2 style: each work item is one kv head and
/// a tile of up to 32 of its query rows (token-major over the heads of its group, so the
/// group's heads share every key/value read), streamed against blocks of keys with an online
/// softmax, f32 throughout. Work items are handed out by an atomic counter, latest (longest)
/// tiles first. Allocation-free: thread `tid` keeps its tile scratch in
/// `scores[tid * TILE_SCRATCH..]`, so `scores` must hold [`scores_len`] floats, like for
/// [`attention`].
///
/// ISAs without a blocked body (and head dims above 256) run [`attention_rows`].
#[allow(clippy::too_many_arguments)]
pub fn attention_tiled(
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
    let hd = layout.head_dim;
    let rt1 = ops::attention_tile_rows(isa, 1);
    // (The tiles address query rows and compare causal limits in 32-bit lanes.)
    let big = q.len() > i32::MAX as usize || layout.cap > i32::MAX as usize;
    if rt1.is_none() || hd == 0 || hd > TILE_MAX_HD || big {
        attention_rows(pool, isa, layout, pos0, q, k, v, scores, out);
        return;
    }
    let (n, group) = attention_checks(layout, pos0, q, k, v, out);
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
    let next = AtomicUsize::new(0);
    let work = |tid: usize| {
        if tid >= nt {
            return;
        }
        // SAFETY: tid < nt and scores holds nt * TILE_SCRATCH floats (asserted), so this
        // thread's TILE_SCRATCH floats at tid * TILE_SCRATCH lie inside it, disjoint from every
        // other thread's; `scores`' `&mut` is held by this function until `run` returns.
        let sp = unsafe { sc.get().add(tid * TILE_SCRATCH) };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            let tile = tiles - 1 - i / n_kv_heads;
            let g = i % n_kv_heads;
            let row0 = tile * rt;
            let t = ops::AttnTile {
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
            // SAFETY: the tile's rows are tokens t < n (row < n * group) of heads of group g,
            // so q and out hold their hd floats at t * qdim + head * hd (checked n * qdim <=
            // q.len(), out.len()), an offset below q.len() <= i32::MAX (checked); kv head g's
            // slab starts at g * cap * hd and holds cap >= pos0 + n >= pos0 + t + 1 rows
            // (checked). Work item i is claimed by exactly one thread and its (token, head) rows
            // belong to no other item, so the out rows it writes are disjoint from every other
            // thread's; `out`'s `&mut` is held here until `run` returns. scratch is this
            // thread's own TILE_SCRATCH >= attention_tile_scratch(hd, rv) floats of `scores`
            // (asserted; see above), and rows <= rt (min above).
            unsafe { ops::attention_tile(isa, rv, &t, sp) };
        }
    };
    if nt <= 1 {
        work(0);
    } else {
        pool.run(&work);
    }
}

/// [`attention`] one (query token, head) pair at a time: each pair runs the single-head kernel
/// [`ops::attention`] over its keys, pairs handed out by an atomic counter (longest first), each
/// thread with its own `cap`-sized slice of `scores`. Every ISA; the path for decode with more
/// threads than kv heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
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
    let (n, group) = attention_checks(layout, pos0, q, k, v, out);
    if n == 0 {
        return;
    }
    let KvLayout {
        n_heads,
        head_dim: hd,
        cap,
        ..
    } = layout;
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
    let one = |t: usize, h: usize, sc: &mut [f32], o: &mut [f32]| {
        let len = pos0 + t + 1;
        let base = (h / group) * cap * hd;
        let qh = &q[t * qdim + h * hd..t * qdim + (h + 1) * hd];
        ops::attention(
            isa,
            qh,
            &k[base..base + len * hd],
            &v[base..base + len * hd],
            scale,
            &mut sc[..len],
            o,
        );
    };
    if nt <= 1 {
        for t in 0..n {
            for h in 0..n_heads {
                one(
                    t,
                    h,
                    &mut scores[..cap],
                    &mut out[t * qdim + h * hd..t * qdim + (h + 1) * hd],
                );
            }
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let sp = SendPtr(scores.as_mut_ptr());
    let op = SendPtr(out.as_mut_ptr());
    pool.run(&|tid| {
        if tid >= nt {
            return;
        }
        // SAFETY: thread tid < nt <= slots owns scores[tid*cap..(tid+1)*cap], inside `scores`
        // (slots * cap <= scores.len()) and disjoint from every other thread's slice.
        let sc = unsafe { std::slice::from_raw_parts_mut(sp.get().add(tid * cap), cap) };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= pairs {
                break;
            }
            // Longest (latest) queries first, for balance.
            let t = n - 1 - i / n_heads;
            let h = i % n_heads;
            // SAFETY: each pair index i is claimed by exactly one thread (atomic counter), and
            // pair (t, h) owns out[t*qdim + h*hd .. + hd], disjoint across pairs and inside `out`
            // (checked n*qdim <= out.len()), whose `&mut` we hold until `run` returns.
            let o = unsafe { std::slice::from_raw_parts_mut(op.get().add(t * qdim + h * hd), hd) };
            one(t, h, sc, o);
        }
    });
}

/// The most input rows one [`matvec_rows`] dispatch takes (their prepared inputs live in a
/// stack array of this many handles); more rows go in groups of this many.
pub const MATVEC_ROWS_MAX: usize = 64;
/// Weight rows per block that [`matvec_rows`] runs every group of inputs through before moving
/// on: 32 rows of bf16 at hidden 896 are 56 KiB, which stay in L2 while each group reads them.
const ROWS_BLOCK: usize = 32;

/// Floats of scratch [`matvec_rows`] needs for `n` input rows of `cols` columns.
pub fn matvec_rows_scratch_len(n: usize, cols: usize) -> usize {
    n.min(MATVEC_ROWS_MAX) * ops::matvec_scratch_len(cols)
}

/// `n` matvecs over one matrix, the weights streamed from memory once for all of them: `x` is
/// `[n, cols]`, `y` is `[n, rows]` (row-major), `y[t] = w · x[t]`. Each block of weight rows
/// is read by every input while it is in cache, by the multi-row kernels: each weight vector
/// is loaded once into a register and multiplied into a group of inputs (up to 4). Each input
/// keeps the accumulators of the single-row kernel [`matvec`] runs, adds into them in the same
/// order and reduces them the same way, so the result is bit for bit that of `n` separate
/// [`matvec`] calls, whatever `n` and the thread count: a row's numbers never depend on which
/// other rows share the dispatch.
pub fn matvec_rows<W: WeightType>(
    pool: &ThreadPool,
    isa: Isa,
    w: &[u8],
    cols: usize,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    if cols == 0 || x.is_empty() {
        return;
    }
    assert!(
        x.len().is_multiple_of(cols),
        "matvec_rows: x is not whole rows"
    );
    let n = x.len() / cols;
    assert!(y.len().is_multiple_of(n), "matvec_rows: y is not n rows");
    let rows = y.len() / n;
    assert!(
        w.len() >= rows * cols * W::SIZE,
        "matvec_rows: weight buffer too short"
    );
    let per = ops::matvec_scratch_len(cols);
    for (xg, yg) in x
        .chunks(MATVEC_ROWS_MAX * cols)
        .zip(y.chunks_mut(MATVEC_ROWS_MAX * rows))
    {
        let g = xg.len() / cols;
        assert!(scratch.len() >= g * per, "matvec_rows: scratch too short");
        let mut xs = [ops::MatvecX::plain(&[]); MATVEC_ROWS_MAX];
        for ((slot, xr), sc) in xs
            .iter_mut()
            .zip(xg.chunks_exact(cols))
            .zip(scratch.chunks_mut(per))
        {
            *slot = ops::MatvecX::new::<W>(isa, xr, sc);
        }
        let xs = &xs[..g];
        let nt = pool.n_threads();
        let blocks = rows.div_ceil(ROWS_BLOCK);
        let run_block = |b: usize, yp: *mut f32| {
            let (r0, r1) = (b * ROWS_BLOCK, ((b + 1) * ROWS_BLOCK).min(rows));
            let wb = &w[r0 * cols * W::SIZE..r1 * cols * W::SIZE];
            // SAFETY: output row t's columns [r0, r1) are y[t * rows + r0 .. t * rows + r1),
            // inside this group's y (g rows of `rows`, r1 <= rows); block b is run by exactly
            // one thread (see the callers below), so no two threads write the same floats, and
            // the `&mut` behind `yp` is held by this function until they are done.
            unsafe { ops::matvec_x_rows::<W>(isa, wb, r1 - r0, xs, yp.wrapping_add(r0), rows) };
        };
        if nt == 1 || rows * cols * g < SERIAL_BELOW {
            let yp = yg.as_mut_ptr();
            for b in 0..blocks {
                run_block(b, yp);
            }
            continue;
        }
        let yp = SendPtr(yg.as_mut_ptr());
        let next = AtomicUsize::new(0);
        // blocks claimed one at a time from a counter (each index handed out once)
        pool.run(&|_tid| loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= blocks {
                break;
            }
            run_block(b, yp.get());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_balanced() {
        for rows in [0, 1, 15, 16, 17, 100, 896, 4864, 151936] {
            for nt in 1..6 {
                let mut next = 0;
                for tid in 0..nt {
                    let (a, b) = split(rows, nt, tid, 16);
                    assert_eq!(a, next.min(rows));
                    assert!(b >= a);
                    assert!(a % 16 == 0 || a == rows);
                    assert!(b - a <= rows.div_ceil(16).div_ceil(nt) * 16);
                    next = b;
                }
                assert_eq!(next, rows);
            }
        }
    }
}
