//! The quantized matvec and matmul split across a pool: weight rows in blocks claimed from
//! a counter, every input row quantized once before the split.

use super::*;
use crate::ops::QuantX;
use crate::quant::{q8_len, QMatrix, RepackedMatrix};

/// Weight rows per block of [`matvec_q_rows`] / [`matmul_q`], at least.
const Q_ROWS_BLOCK: usize = 32;

/// Rows per block a decode matvec over `rows` rows hands out on `nt` threads: as long as
/// leaves each thread [`CHUNKS_PER_THREAD`] blocks to claim (so a slowed thread takes fewer),
/// a multiple of [`Q_ROWS_BLOCK`]. Long blocks are long sequential streams for the hardware
/// prefetcher (faster decode than blocks of 32 rows: docs/performance.md).
fn stream_rows(rows: usize, nt: usize) -> usize {
    rows.div_ceil(nt.max(1) * CHUNKS_PER_THREAD)
        .next_multiple_of(Q_ROWS_BLOCK)
        .max(Q_ROWS_BLOCK)
}

/// Words of scratch [`matvec_q_rows`] needs for `n` input rows of `cols`: each input
/// quantized, and prepared for the tiled kernel ([`ops::q_tile_x_len`]).
pub fn quant_scratch_len(n: usize, cols: usize) -> usize {
    n * (q8_len(cols) + ops::q_tile_x_len(cols))
}

/// Runs `run(r0, r1, y)` for every block `r0..r1` of a decode matvec's `rows` weight rows
/// ([`stream_rows`] each) as [`for_each_block`] does: on the calling thread when `serial`,
/// else each block claimed by one of the pool's threads.
fn for_each_row_block(
    pool: &ThreadPool,
    rows: usize,
    serial: bool,
    y: *mut f32,
    run: &(dyn Fn(usize, usize, *mut f32) + Sync),
) {
    let rows_block = stream_rows(rows, pool.n_threads());
    let blocks = rows.div_ceil(rows_block);
    let run_block = |b: usize, yp: *mut f32| {
        run(b * rows_block, ((b + 1) * rows_block).min(rows), yp);
    };
    for_each_block(pool, blocks, serial, y, &run_block);
}

/// `n` matvecs over one quantized matrix `w` (`x` is `[n, cols]`, `y` is `[n, rows]`): each
/// input is quantized once into `scratch` ([`quant_scratch_len`]), then blocks of weight rows
/// are run through every input while in cache: from [`ops::Q_GEMM_MIN`] inputs where
/// [`ops::q_tile_runs`], through the register-tiled kernel (inputs prepared once, each weight
/// group unpacked once for all of them), else the inputs in groups of up to 4 per matvec call
/// (each weight group unpacked once per group). Each output row is bit for bit that of
/// [`ops::matvec_q`] on its input alone.
///
/// # Panics
/// Unless `x` is whole rows of `cols`, `y` as many rows of `rows` and `scratch` long enough.
pub fn matvec_q_rows(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    w: &QMatrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    let isa = cpu.isa();
    let (rows, cols) = (w.rows(), w.cols());
    let n = w.inputs("matvec_q_rows", x.len(), y.len());
    let per = q8_len(cols);
    let tile_per = ops::q_tile_x_len(cols);
    assert!(
        scratch.len() >= quant_scratch_len(n, cols),
        "matvec_q_rows: scratch holds {} words, {} needed",
        scratch.len(),
        quant_scratch_len(n, cols)
    );
    let (scratch, tiles) = scratch.split_at_mut(n * per);
    for (g, (xg, yg)) in x
        .chunks(MATVEC_ROWS_MAX * cols)
        .zip(y.chunks_mut(MATVEC_ROWS_MAX * rows))
        .enumerate()
    {
        let gn = xg.len() / cols;
        let sc = &mut scratch[g * MATVEC_ROWS_MAX * per..];
        let mut xs = [QuantX::new(Isa::Scalar, &[], &mut []); MATVEC_ROWS_MAX];
        for ((slot, xr), s) in xs
            .iter_mut()
            .zip(xg.chunks_exact(cols))
            .zip(sc.chunks_mut(per))
        {
            *slot = QuantX::new(isa, xr, s);
        }
        let xs = &xs[..gn];
        let serial = pool.n_threads() == 1 || rows * cols * gn < SERIAL_BELOW;
        // From Q_GEMM_MIN inputs where it runs, the tiled kernel on the inputs prepared once;
        // else all the group's inputs in one matvec call, so each weight group is unpacked
        // once per up to 4 inputs rather than once per input.
        let tiled = (gn >= ops::Q_GEMM_MIN && ops::q_tile_runs(cpu, w.qt(), cols)).then(|| {
            let px = &mut tiles[g * MATVEC_ROWS_MAX * tile_per..][..gn * tile_per];
            ops::prepare_q_tile(cpu, w, xs, px)
        });
        let run = |r0: usize, r1: usize, yp: *mut f32| {
            let (wb, yb) = (w.row_block(r0, r1), yp.wrapping_add(r0));
            // SAFETY: output row t's columns [r0, r1) (t < gn) lie inside this group's y (gn
            // rows of `rows`, row t at t * rows); each block is run by exactly one thread, so
            // no two threads write the same floats, and the `&mut` behind `yp` is held by this
            // function until they are done.
            unsafe {
                match tiled {
                    Some(px) => ops::gemm_q_raw(cpu, &wb, &px, yb, rows),
                    None => ops::matvec_q_raw(cpu, &wb, xs, yb, rows),
                }
            }
        };
        for_each_row_block(pool, rows, serial, yg.as_mut_ptr(), &run);
    }
}

/// Words of scratch [`matmul_q`] needs for `n` rows of `k` on a pool of `n_threads`: the
/// quantized inputs ([`quant_scratch_len`]) and one packed panel
/// ([`ops::matmul_q_panel_len`]) per thread.
pub fn matmul_q_scratch_len(n_threads: usize, n: usize, k: usize) -> usize {
    n * q8_len(k) + n_threads.max(1) * ops::matmul_q_panel_len(k)
}

/// `y = x · wᵀ` on the quantized matrix `w` (`x` is `[n, k]`, `w` is `[rows, k]`, `y` is
/// `[n, rows]`): the prefill matmul of [`ops::matmul_q`] split across the pool. `scratch`
/// holds [`matmul_q_scratch_len`] words: the inputs are quantized into its front once (rows
/// split across the threads) before panels of 16 weight rows (output columns) are claimed
/// from a counter, each packed into the claiming thread's own part of the rest.
///
/// # Panics
/// Unless `x` is whole rows of `k`, `y` as many rows of `rows` and `scratch` long enough.
pub fn matmul_q(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    w: &QMatrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    let isa = cpu.isa();
    let (rows, k) = (w.rows(), w.cols());
    let n = w.inputs("matmul_q", x.len(), y.len());
    if n == 0 {
        return;
    }
    let (per, pl) = (q8_len(k), ops::matmul_q_panel_len(k));
    let nt = pool.n_threads();
    let serial = nt == 1 || rows * k * n < SERIAL_BELOW;
    let need = n * per + if serial { 1 } else { nt } * pl;
    assert!(
        scratch.len() >= need,
        "matmul_q: scratch holds {} words, {need} needed",
        scratch.len()
    );
    let (xq, packs) = scratch.split_at_mut(n * per);
    if serial {
        if isa != Isa::Scalar {
            ops::quantize_rows(isa, x, k, n, xq);
        }
        // SAFETY: x holds n*k floats (checked), xq n quantized rows, packs a panel (checked);
        // y (borrowed mutably here) holds n*rows floats.
        unsafe { ops::matmul_q_strided(cpu, w, x, xq, n, y.as_mut_ptr(), rows, packs) };
        return;
    }
    if isa != Isa::Scalar {
        let xp = SendPtr(xq.as_mut_ptr());
        pool.run(&|tid| {
            let (t0, t1) = split(n, nt, tid, 1);
            // SAFETY: the threads' row ranges [t0, t1) are disjoint and inside xq (n rows of
            // `per` words), whose `&mut` this function holds until `run` returns.
            let out =
                unsafe { std::slice::from_raw_parts_mut(xp.get().add(t0 * per), (t1 - t0) * per) };
            ops::quantize_rows(isa, &x[t0 * k..t1 * k], k, t1 - t0, out);
        });
    }
    let xq = &*xq;
    let panels = rows.div_ceil(crate::quant::panel::QNR);
    let yp = SendPtr(y.as_mut_ptr());
    let pp = SendPtr(packs.as_mut_ptr());
    let next = AtomicUsize::new(0);
    pool.run(&|tid| {
        // SAFETY: tid < nt and packs holds nt * pl words (asserted): this thread's panel at
        // tid * pl is inside it and no other thread's; packs' `&mut` is held until `run` returns.
        let pack = unsafe { std::slice::from_raw_parts_mut(pp.get().add(tid * pl), pl) };
        loop {
            let p = next.fetch_add(1, Ordering::Relaxed);
            if p >= panels {
                break;
            }
            let (r0, r1) = (
                p * crate::quant::panel::QNR,
                ((p + 1) * crate::quant::panel::QNR).min(rows),
            );
            let wp = w.row_block(r0, r1);
            // SAFETY: Panel p is claimed by one thread only (the counter hands each index out
            // once), which writes only y[t * rows + j] for j in [r0, r1): disjoint between
            // claims, inside y (n * rows floats), whose `&mut` this function holds until `run`
            // returns.
            unsafe { ops::matmul_q_strided(cpu, &wp, x, xq, n, yp.get().add(r0), rows, pack) };
        }
    });
}

/// Words of scratch [`matvec_repacked_rows`] needs for `n` inputs of `cols`.
pub fn repacked_scratch_len(n: usize, cols: usize) -> usize {
    n * ops::repacked_x_len(cols)
}

/// `n` matvecs over one repacked Q4_0 / Q5_0 / Q8_0 matrix ([`crate::quant::repack`]; `x` is
/// `[n, cols]`, `y` is `[n, rows]`), AVX-512 only: every input is prepared once into `scratch`
/// ([`repacked_scratch_len`]), then blocks of weight rows, claimed from a counter, are run
/// through all inputs (up to 4 per kernel call). Bit for bit [`ops::matvec_repacked_prepared`]
/// whatever the thread count.
///
/// # Panics
/// Unless `cpu` runs the repacked layout, `x` is whole rows of `cols`, `y` as many rows of
/// `rows` and `scratch` long enough.
pub fn matvec_repacked_rows(
    pool: &ThreadPool,
    cpu: impl Into<Cpu>,
    w: &RepackedMatrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    assert!(
        cpu.runs_repacked(),
        "matvec_repacked_rows: the repacked layout runs on AVX-512 only, not {cpu}"
    );
    let (rows, cols) = (w.matrix().rows(), w.matrix().cols());
    let n = w.matrix().inputs("matvec_repacked_rows", x.len(), y.len());
    let px = ops::prepare_repacked_x(cpu, cols, x, scratch);
    let run = |r0: usize, r1: usize, yp: *mut f32| {
        let wb = w.row_block(r0, r1);
        // SAFETY: output row t's columns [r0, r1) (t < n) lie inside y (n rows of `rows`, row
        // t at t * rows); each block is run by exactly one thread, so no two threads write the
        // same floats, and the `&mut` behind `yp` is held by this function until they are done.
        unsafe { ops::matvec_repacked_raw(cpu, &wb, &px, yp.wrapping_add(r0), rows) };
    };
    let serial = pool.n_threads() == 1 || rows * cols * n < SERIAL_BELOW;
    for_each_row_block(pool, rows, serial, y.as_mut_ptr(), &run);
}

/// The most matvecs one [`matvec_q_many`] dispatch takes (more go in groups of this many).
pub const MANY_MAX: usize = 32;

/// One matvec of [`matvec_q_many`]: the `w.rows()` outputs of `w` on the prepared input `x`
/// (of `w.cols()` columns).
#[derive(Clone, Copy)]
pub struct QJob<'a> {
    /// The weights.
    pub w: QMatrix<'a>,
    /// The input, prepared by [`QuantX::new`].
    pub x: QuantX<'a>,
}

/// Several one-input matvecs on different matrices in one dispatch of the pool: `y` is their
/// outputs one after another (`jobs[0].rows`, then `jobs[1].rows`, ...), and the blocks of
/// weight rows of all of them are claimed from one counter, so a MoE layer's small expert
/// matrices cost one wake-up of the pool rather than one each. Each output is bit for bit that
/// of [`matvec_q_rows`] on its input alone.
///
/// # Panics
/// If `y` is not the jobs' rows together, or a job's weights are not its rows of its input's
/// width.
pub fn matvec_q_many(pool: &ThreadPool, cpu: impl Into<Cpu>, jobs: &[QJob<'_>], y: &mut [f32]) {
    let cpu: Cpu = cpu.into();
    let total_rows: usize = jobs.iter().map(|j| j.w.rows()).sum();
    assert_eq!(
        y.len(),
        total_rows,
        "matvec_q_many: y is not the jobs' rows"
    );
    let nt = pool.n_threads();
    let mut y = y;
    for group in jobs.chunks(MANY_MAX) {
        let group_rows: usize = group.iter().map(|j| j.w.rows()).sum();
        let (yg, rest) = y.split_at_mut(group_rows);
        y = rest;
        // per job: its first block (over the group), rows per block, first output row
        let mut first = [0usize; MANY_MAX + 1];
        let mut per_block = [0usize; MANY_MAX];
        let mut y0 = [0usize; MANY_MAX + 1];
        let mut work = 0;
        for (j, job) in group.iter().enumerate() {
            let (rows, cols) = (job.w.rows(), job.w.cols());
            assert_eq!(
                job.x.cols(),
                cols,
                "matvec_q_many: an input of {} columns for a matrix of {cols}",
                job.x.cols()
            );
            per_block[j] = stream_rows(rows, nt);
            first[j + 1] = first[j] + rows.div_ceil(per_block[j]);
            y0[j + 1] = y0[j] + rows;
            work += rows * cols;
        }
        let blocks = first[group.len()];
        let run_block = |b: usize, yp: *mut f32| {
            // the job whose blocks hold b
            let j = first[1..=group.len()].partition_point(|&f| f <= b);
            let job = &group[j];
            let r0 = (b - first[j]) * per_block[j];
            let wb = job.w.row_block(r0, (r0 + per_block[j]).min(job.w.rows()));
            let xs = [job.x];
            let yb = yp.wrapping_add(y0[j] + r0);
            // SAFETY: job j's output rows [r0, r0 + wb.rows()) lie inside this group's y (its
            // rows start at y0[j], the jobs' rows laid one after another); block b is run by
            // exactly one thread, so no two threads write the same floats, and the `&mut`
            // behind `yp` is held by this function until they are done.
            unsafe { ops::matvec_q_raw(cpu, &wb, &xs, yb, job.w.rows()) };
        };
        let serial = nt == 1 || work < SERIAL_BELOW;
        for_each_block(pool, blocks, serial, yg.as_mut_ptr(), &run_block);
    }
}
