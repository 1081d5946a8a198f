//! Kernels split across a [`ThreadPool`]. The runtime calls only these for its heavy work, so
//! every disjoint-write split lives here, next to the pool.
//!
//! - [`matvec`] (and [`matvec_n`], several matrices over one input in one dispatch): rows
//!   split in chunks of a multiple of [`ROW_ALIGN`] rows that the threads claim in order.
//! - [`matmul`]: output columns (weight rows) split in chunks of a multiple of [`COL_ALIGN`], each
//!   thread writing a column block of every token's output row.
//! - [`Attention`] (one call's queries and cache layer; [`Attention::run`]): on AVX-512, tiles
//!   of (kv head, up to 32 query rows of its group) streamed against key blocks with an online
//!   softmax ([`Attention::run_tiled`]); elsewhere (and for decode with more threads than kv
//!   heads) (query token, head) pairs ([`Attention::run_rows`]). Both hand out work with an
//!   atomic counter, longest causal rows first.
//!
//! Nothing here allocates: each dispatch passes a stack closure to [`ThreadPool::run`].

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu::Cpu;
use crate::dtype::WeightType;
use crate::isa::Isa;
use crate::ops::{self, Matrix};
use crate::pool::ThreadPool;
use crate::scalar;

mod attention;
pub use attention::*;
mod quant;
pub use quant::*;

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

/// Floats of scratch the [`Attention`] runs need in `scores`: a `cap`-long row of scores
/// for each thread of the per-row path, or a tile's scratch for each thread of the blocked one.
pub fn scores_len(n_threads: usize, n_heads: usize, cap: usize) -> usize {
    (n_threads.max(n_heads).max(1) * cap).max(n_threads.max(1) * attention::TILE_SCRATCH)
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
    cpu: impl Into<Cpu>,
    w: &[u8],
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    matvec_n::<W, 1>(pool, cpu, [w], x, scratch, [y]);
}

/// `N` matvecs sharing the input `x` in one dispatch, `ys[i] = ws[i] · x` (e.g. the FFN's gate
/// and up projections, or attention's q, k and v): `x` is prepared once, in `scratch`
/// ([`ops::matvec_scratch_len`] floats), and the concatenation of the matrices' rows is split
/// across the threads. Each output is bit for bit that of [`matvec`] on its matrix alone.
pub fn matvec_n<W: WeightType, const N: usize>(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    ws: [&[u8]; N],
    x: &[f32],
    scratch: &mut [f32],
    ys: [&mut [f32]; N],
) {
    let cpu: Cpu = cpu.into();
    let cols = x.len();
    let x = &ops::MatvecX::new::<W>(cpu, x, scratch);
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
            ops::matvec_x::<W>(cpu, w, x, y);
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
    claim_items(pool, nt, total.div_ceil(chunk), &|_tid, c| {
        let g0 = c * chunk;
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
            // SAFETY: every chunk [g0, g1) is claimed by exactly one thread ([`claim_items`]),
            // so the per-matrix ranges [r0, r1) of different claims are
            // disjoint; they lie inside y_i (length `len`), whose `&mut` is held (unused) by this
            // function until `run` returns.
            let y = unsafe { std::slice::from_raw_parts_mut(ptrs[i].get().add(r0), r1 - r0) };
            let w = &ws[i][r0 * cols * W::SIZE..];
            ops::matvec_x::<W>(cpu, w, x, y);
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
    isa: impl Into<Isa>,
    w: Matrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let isa: Isa = isa.into();
    let per = ops::matmul_scratch_len();
    matmul_cols(pool, w, W::SIZE, x, y, scratch, per, &|block, pack| {
        // SAFETY: forwarded from `matmul_cols`'s contract on `body`.
        unsafe { ops::matmul_strided::<W>(isa, block, pack) }
    });
}

/// [`ops::matmul_bf16dot`] (activations rounded to bf16, AVX512-BF16 where available) with output
/// columns split across the pool. `w` is bf16. The activations are rounded once, into the front
/// of `scratch`, before the columns are handed out; after them come the threads' packed panels
/// ([`matmul_bf16dot_scratch_len`] floats in all).
pub fn matmul_bf16dot(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    w: Matrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    let k = w.cols;
    let Some((n, _)) = scalar::matmul_dims(k, x, y) else {
        return;
    };
    let (pairs, packs) = ops::split_bf16dot_scratch(scratch, n, k);
    let xb = ops::bf16dot_pairs(cpu, x, k, n, pairs);
    let per = ops::BF16DOT_PACK;
    matmul_cols(pool, w, 2, x, y, packs, per, &|block, pack| {
        // SAFETY: forwarded from `matmul_cols`'s contract on `body`; `xb` was made for this x,
        // k and n (`matmul_cols` passes the same ones).
        unsafe { ops::matmul_bf16dot_strided(cpu, block, xb, pack) }
    });
}

/// The body of one thread's column block: `(block, pack)`.
type ColsBody<'a> = dyn Fn(&ops::MatmulBlock<'_>, &mut [f32]) + Sync + 'a;

/// The column split shared by the matmuls. `body(block, pack)` must compute the block; it is
/// called with a block that satisfies [`ops::MatmulBlock`]'s contract (its `y` valid for
/// exactly its writes and not accessed by anyone else), and with `pack`, `per` floats of
/// `packs` that are the calling thread's alone.
#[allow(clippy::too_many_arguments)]
fn matmul_cols(
    pool: &ThreadPool,
    w: Matrix<'_>,
    wsize: usize,
    x: &[f32],
    y: &mut [f32],
    packs: &mut [f32],
    per: usize,
    body: &ColsBody<'_>,
) {
    let Some(whole) = w.block(wsize, x, y, "matmul") else {
        return;
    };
    let (n, rows, k) = (whole.n, whole.rows, whole.k);
    let nt = pool.n_threads();
    if nt == 1 || rows * k * n < SERIAL_BELOW {
        assert!(packs.len() >= per, "matmul: scratch too short for a panel");
        body(&whole, &mut packs[..per]);
        return;
    }
    assert!(
        packs.len() >= nt * per,
        "matmul: scratch holds {} floats, {} needed for {nt} threads' panels",
        packs.len(),
        nt * per
    );
    let yp = SendPtr(whole.y);
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
        let y_block = unsafe { yp.get().add(c0) };
        let block = ops::MatmulBlock {
            w: &w.bytes[c0 * k * wsize..],
            k,
            x,
            n,
            y: y_block,
            ldy: rows,
            rows: c1 - c0,
        };
        body(&block, pack);
    });
}

/// Runs `work(tid, i)` for every item `i < items`, each claimed exactly once, in order, from an
/// atomic counter by one of the first `nt` threads of the pool (`tid < nt`), so `work` may
/// write item `i`'s part of an output alone, and a thread slowed by a noisy neighbour (or the
/// caller, who also does the serial work between dispatches) takes fewer items instead of
/// holding everyone at the barrier. With `nt == 1`, all on the calling thread (`tid` 0).
fn claim_items(pool: &ThreadPool, nt: usize, items: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    if nt == 1 {
        for i in 0..items {
            work(0, i);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    pool.run(&|tid| {
        if tid >= nt {
            return;
        }
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            work(tid, i);
        }
    });
}

/// Runs `run_block(b, y)` for every block `b < blocks` of a matvec over rows: on the calling
/// thread when `serial`, else claimed from the pool's threads by [`claim_items`] (each index is
/// handed out once, so `run_block` may write block `b`'s part of `y` alone).
fn for_each_block(
    pool: &ThreadPool,
    blocks: usize,
    serial: bool,
    y: *mut f32,
    run_block: &(dyn Fn(usize, *mut f32) + Sync),
) {
    let yp = SendPtr(y);
    let nt = if serial { 1 } else { pool.n_threads() };
    claim_items(pool, nt, blocks, &|_tid, b| run_block(b, yp.get()));
}

/// `(n, rows)` of a many-input matvec over `cols` columns (`x` is `[n, cols]`, `y` is
/// `[n, rows]`), or `None` when there is nothing to do.
///
/// # Panics
/// If `x` is not whole rows or `y` not `n` rows (`what` names the caller).
fn rows_dims(what: &str, cols: usize, x: &[f32], y: &[f32]) -> Option<(usize, usize)> {
    if cols == 0 || x.is_empty() {
        return None;
    }
    assert!(x.len().is_multiple_of(cols), "{what}: x is not whole rows");
    let n = x.len() / cols;
    assert!(y.len().is_multiple_of(n), "{what}: y is not n rows");
    Some((n, y.len() / n))
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
/// `[n, cols]` (`cols = w.cols`), `y` is `[n, rows]` (row-major), `y[t] = w · x[t]`. Each block
/// of weight rows is read by every input while it is in cache, by the multi-row kernels: each
/// weight vector is loaded once into a register and multiplied into a group of inputs (up to
/// 4). Each input keeps the accumulators of the single-row kernel [`matvec`] runs, adds into
/// them in the same order and reduces them the same way, so the result is bit for bit that of
/// `n` separate [`matvec`] calls, whatever `n` and the thread count: a row's numbers never
/// depend on which other rows share the dispatch.
pub fn matvec_rows<W: WeightType>(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    w: Matrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    let Matrix { bytes: w, cols } = w;
    let Some((_, rows)) = rows_dims("matvec_rows", cols, x, y) else {
        return;
    };
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
            *slot = ops::MatvecX::new::<W>(cpu, xr, sc);
        }
        let xs = &xs[..g];
        let nt = pool.n_threads();
        let blocks = rows.div_ceil(ROWS_BLOCK);
        let run_block = |b: usize, yp: *mut f32| {
            let (r0, r1) = (b * ROWS_BLOCK, ((b + 1) * ROWS_BLOCK).min(rows));
            let wb = &w[r0 * cols * W::SIZE..r1 * cols * W::SIZE];
            // SAFETY: output row t's columns [r0, r1) are y[t * rows + r0 .. t * rows + r1),
            // inside this group's y (g rows of `rows`, r1 <= rows); block b is run by exactly
            // one thread ([`for_each_block`]), so no two threads write the same floats, and
            // the `&mut` behind `yp` is held by this function until they are done.
            unsafe {
                ops::matvec_x_rows::<W>(cpu.isa(), wb, r1 - r0, xs, yp.wrapping_add(r0), rows)
            };
        };
        let serial = nt == 1 || rows * cols * g < SERIAL_BELOW;
        for_each_block(pool, blocks, serial, yg.as_mut_ptr(), &run_block);
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
