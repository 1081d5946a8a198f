//! Matvecs on Q4_0 / Q5_0 / Q8_0 matrices repacked by [`crate::quant::repack`] (AVX-512 only).
//!
//! Each input is quantized to 8-bit blocks exactly as [`crate::quant::quantize_row_q8`] does, then
//! *prepared* ([`prepare_repacked_x`]) into the weights' layout: per group of 16 units, 8
//! operands of 4 bytes per unit, then per unit the integer sum of its quants and its step
//! `d_x`. The kernel then only does plain 64-byte loads (see `avx512::quant_repack`).

use super::*;
use crate::quant::{q8_len, row_range, RepackedMatrix, REPACK_GROUP};

/// Rows each group of inputs runs over before the next group, when a call has more inputs than
/// one kernel call takes: 32 rows of the widest repacked matrix here (Q5_0, 4864 columns) are
/// 104 KiB, which stay in L2 for the next group.
#[cfg(target_arch = "x86_64")]
const REPACKED_ROW_TILE: usize = 32;

/// Inputs from which a call on AVX512-VNNI runs the register-tiled kernel
/// (`avx512::gemm_repacked`) rather than the matvec in groups of 4; the same bits either way.
pub const REPACKED_GEMM_MIN: usize = 8;

/// f32 words of scratch one input of `cols` columns takes once prepared: per unit of 32
/// columns, 8 words of quants, its integer sum and its step.
pub fn repacked_x_len(cols: usize) -> usize {
    cols.div_ceil(32) * 10
}

/// Inputs prepared by [`prepare_repacked_x`] for the repacked kernels: `n` inputs of `cols`
/// columns, [`repacked_x_len`]`(cols)` words each.
#[derive(Clone, Copy, Debug)]
pub struct RepackedX<'a> {
    words: &'a [f32],
    n: usize,
    cols: usize,
}

impl<'a> RepackedX<'a> {
    /// How many inputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Their columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Inputs `t0..t1` alone.
    ///
    /// # Panics
    /// Unless `t0 <= t1 <= n`.
    pub fn inputs(&self, t0: usize, t1: usize) -> RepackedX<'a> {
        let per = repacked_x_len(self.cols);
        RepackedX {
            words: row_range("RepackedX::inputs", self.words, per, self.n, t0, t1),
            n: t1 - t0,
            ..*self
        }
    }

    /// Input `t` as the kernels read it.
    #[cfg(target_arch = "x86_64")]
    fn kernel_x(&self, t: usize) -> avx512::PreparedX {
        let units = self.cols / 32;
        let per = repacked_x_len(self.cols);
        let (q, rest) = self.words[t * per..(t + 1) * per].split_at(8 * units);
        avx512::PreparedX {
            q: q.as_ptr().cast(),
            isum: rest.as_ptr().cast(),
            d: rest[units..].as_ptr(),
        }
    }
}

/// Prepares the `xs.len() / cols` inputs of `xs` (row-major) into `scratch`
/// ([`repacked_x_len`]`(cols)` words per input), for [`matvec_repacked_prepared`] and
/// [`gemm_repacked_prepared`].
///
/// # Panics
/// Unless `cols % 32 == 0`, `xs` is whole rows of `cols` and `scratch` long enough.
pub fn prepare_repacked_x<'a>(
    isa: impl Into<Isa>,
    cols: usize,
    xs: &[f32],
    scratch: &'a mut [f32],
) -> RepackedX<'a> {
    let isa: Isa = isa.into();
    assert!(
        cols > 0 && cols.is_multiple_of(32) && xs.len().is_multiple_of(cols),
        "prepare_repacked_x: {} floats are not whole rows of {cols} (a multiple of 32)",
        xs.len()
    );
    let per = repacked_x_len(cols);
    let n = xs.len() / cols;
    assert!(
        scratch.len() >= n * per,
        "prepare_repacked_x: scratch holds {} words, {} needed",
        scratch.len(),
        n * per
    );
    let units = cols / 32;
    const GC: usize = REPACK_GROUP * 32;
    let mut buf = [0f32; q8_len(GC)];
    for (x, out) in xs.chunks_exact(cols).zip(scratch.chunks_exact_mut(per)) {
        let (q, rest) = out.split_at_mut(8 * units);
        let (isum, dx) = rest.split_at_mut(units);
        for (g, xg) in x.chunks(GC).enumerate() {
            let n = xg.len() / 32;
            let u0 = g * REPACK_GROUP;
            let buf = &mut buf[..q8_len(xg.len())];
            quantize_rows(isa, xg, xg.len(), 1, buf);
            let (d, words) = (&buf[..n], &buf[3 * n..]);
            let qg = &mut q[8 * u0..8 * (u0 + n)];
            for u in 0..n {
                let uw = &words[8 * u..8 * u + 8];
                for s in 0..4 {
                    for h in 0..2 {
                        qg[(2 * s + h) * n + u] = uw[4 * h + s];
                    }
                }
                let sum: i32 = uw
                    .iter()
                    .flat_map(|w| w.to_ne_bytes())
                    .map(|b| b as i8 as i32)
                    .sum();
                isum[u0 + u] = f32::from_bits(sum as u32);
                dx[u0 + u] = d[u];
            }
        }
    }
    RepackedX {
        words: &scratch[..n * per],
        n,
        cols,
    }
}

/// Runs `y[t * rows + r] = sum_c w[r, c] * x_t[c]` for the inputs `x` against the repacked
/// matrix `w`. Output `t` is bit for bit the same whatever `x.n()` and whichever inputs share
/// the call.
///
/// # Panics
/// Unless `cpu` runs the repacked layout ([`Cpu::runs_repacked`]), `x` has `w.cols()`
/// columns and `y` is `x.n()` rows of `w.rows()`.
pub fn matvec_repacked_prepared(
    cpu: impl Into<Cpu>,
    w: &RepackedMatrix<'_>,
    x: &RepackedX<'_>,
    y: &mut [f32],
) {
    let rows = w.matrix().rows();
    w.matrix().check_outputs("matvec_repacked", x.n, y.len());
    // SAFETY: y (borrowed mutably here) holds n rows of `rows` floats, row t at t * rows.
    unsafe { matvec_repacked_raw(cpu.into(), w, x, y.as_mut_ptr(), rows) }
}

/// The repacked kernels' name for `qt`'s layout.
#[cfg(target_arch = "x86_64")]
fn repacked_kind(qt: crate::quant::QuantType) -> u8 {
    use crate::quant::QuantType;
    match qt {
        QuantType::Q4_0 => avx512::RQ4_0,
        QuantType::Q5_0 => avx512::RQ5_0,
        _ => avx512::RQ8_0,
    }
}

/// Panics (naming `what`) unless the inputs `x` are as wide as the rows of `w`.
fn check_widths(what: &str, w: &RepackedMatrix<'_>, x: &RepackedX<'_>) {
    let cols = w.matrix().cols();
    assert!(
        x.cols == cols,
        "{what}: inputs of {} columns for a matrix of {cols}",
        x.cols
    );
}

/// The body of the repacked matvecs: `y[t * ldy + r]` for `t < x.n()`, `r < w.rows()`, the
/// inputs in groups of up to 4 per kernel call.
///
/// # Safety
/// `y` must be valid for writes at `t * ldy + r` (`t < x.n()`, `r < w.rows()`), with nothing
/// else reading or writing those floats during the call.
pub(crate) unsafe fn matvec_repacked_raw(
    cpu: Cpu,
    w: &RepackedMatrix<'_>,
    x: &RepackedX<'_>,
    y: *mut f32,
    ldy: usize,
) {
    let isa = cpu.isa();
    assert!(
        cpu.runs_repacked(),
        "matvec_repacked: the repacked layout runs on AVX-512 only, not {isa}"
    );
    check(isa);
    check_widths("matvec_repacked", w, x);
    let (rows, n) = (w.matrix().rows(), x.n);
    assert!(n <= 1 || ldy >= rows, "matvec_repacked: rows overlap");
    if rows == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use avx512::RQ_GROUP;
        let k = repacked_kind(w.matrix().qt());
        let units = w.matrix().cols() / 32;
        let vnni = cpu.vnni();
        // Enough inputs to be compute-bound: the register-tiled kernel.
        if vnni && n >= REPACKED_GEMM_MIN && avx512::gemm_repacked_fits(units) {
            // SAFETY: forwarded contract; the checks above hold for the same arguments.
            unsafe { gemm_repacked_raw(w, x, y, ldy) };
            return;
        }
        // More inputs than one kernel call takes: tiles of rows (over the whole block, 8
        // inputs streamed the weights twice).
        let tile = if n > RQ_GROUP {
            REPACKED_ROW_TILE
        } else {
            rows
        };
        for_each_tile(rows, tile, n, RQ_GROUP, |r0, rt, t0, g| {
            let wt = w.row_block(r0, r0 + rt).matrix().bytes().as_ptr();
            let xs: [_; RQ_GROUP] = group_of(g, |i| x.kernel_x(t0 + i));
            let yt = y.wrapping_add(t0 * ldy + r0);
            // SAFETY: CPU support checked (VNNI detected when `vnni`: a `Cpu` claims it only
            // where detected); `wt` holds rows r0..r0 + rt of `w`, repacked rows of `units`
            // units (a `RepackedMatrix`); each input's pointers cover its prepared words (a
            // `RepackedX` of `w`'s width, checked); y's columns r0..r0 + rt of rows t0..t0 + g are
            // forwarded from the contract (r0 + rt <= rows <= ldy).
            unsafe { avx512::matvec_repacked(k, wt, rt, units, &xs[..g], yt, ldy, vnni) }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (y, ldy, cpu);
}

/// [`matvec_repacked_prepared`] through the register-tiled AVX512-VNNI kernel whatever `n`
/// (the dispatch takes it from [`REPACKED_GEMM_MIN`] inputs): the same bits.
///
/// # Panics
/// Unless `cpu` runs the repacked layout with AVX512-VNNI, its rows fit the kernel's buffer
/// (rows of up to 58 000 columns do), and on buffer lengths that do not match.
pub fn gemm_repacked_prepared(
    cpu: impl Into<Cpu>,
    w: &RepackedMatrix<'_>,
    x: &RepackedX<'_>,
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    assert!(
        cpu.runs_repacked() && cpu.vnni(),
        "gemm_repacked: the tiled kernel needs AVX512-VNNI, not {cpu}"
    );
    w.matrix().check_outputs("gemm_repacked", x.n, y.len());
    check_widths("gemm_repacked", w, x);
    #[cfg(target_arch = "x86_64")]
    {
        let (rows, cols) = (w.matrix().rows(), w.matrix().cols());
        assert!(
            avx512::gemm_repacked_fits(cols / 32),
            "gemm_repacked: rows of {cols} columns do not fit the tile buffer"
        );
        // SAFETY: checked above: AVX512-VNNI, the buffer fit, `x` prepared for `w`'s width;
        // y (borrowed mutably here) holds n rows of `rows`.
        unsafe { gemm_repacked_raw(w, x, y.as_mut_ptr(), rows) };
    }
}

/// The tiled kernel on the prepared inputs `x`, up to 64 per call of the kernel.
///
/// # Safety
/// The CPU has AVX-512 and AVX512-VNNI; `avx512::gemm_repacked_fits(units)`; `x` has `w`'s
/// columns; `y` is valid for writes at `t * ldy + r` (`t < x.n()`, `r < w.rows()`), with
/// nothing else accessing those floats.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_repacked_raw(w: &RepackedMatrix<'_>, x: &RepackedX<'_>, y: *mut f32, ldy: usize) {
    const CHUNK: usize = 64;
    let w = w.matrix();
    let k = repacked_kind(w.qt());
    let units = w.cols() / 32;
    for t0 in (0..x.n).step_by(CHUNK) {
        let g = (x.n - t0).min(CHUNK);
        let xs: [_; CHUNK] = group_of(g, |i| x.kernel_x(t0 + i));
        // SAFETY: forwarded contract; each input's pointers cover its prepared words; y's
        // rows t0..t0 + g are inside the contract's.
        unsafe {
            avx512::gemm_repacked(
                k,
                w.bytes().as_ptr(),
                w.rows(),
                units,
                &xs[..g],
                y.wrapping_add(t0 * ldy),
                ldy,
            )
        }
    }
}
