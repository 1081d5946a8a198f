//! Matvecs on Q4_0 / Q5_0 / Q8_0 matrices repacked by [`crate::quant::repack`] (AVX-512 only).
//!
//! Each input is quantized to 8-bit blocks exactly as [`crate::quant::quantize_row_q8`] does, then
//! *prepared* ([`prepare_repacked_x`]) into the weights' layout: per group of 16 units, 8
//! operands of 4 bytes per unit, then per unit the integer sum of its quants and its step
//! `d_x`. The kernel then only does plain 64-byte loads (see `avx512::quant_repack`).

use super::*;
use crate::quant::{q8_len, RepackedMatrix, REPACK_GROUP};

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

/// Prepares the `xs.len() / cols` inputs of `xs` (row-major) into `scratch`
/// ([`repacked_x_len`]`(cols)` words per input, input `t` at `t * repacked_x_len(cols)`).
///
/// # Panics
/// Unless `cols % 32 == 0`, `xs` is whole rows of `cols` and `scratch` long enough.
pub fn prepare_repacked_x(isa: impl Into<Isa>, cols: usize, xs: &[f32], scratch: &mut [f32]) {
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
}

/// Runs `y[t * rows + r] = sum_c w[r, c] * x_t[c]` for the `n` inputs prepared in `px` by
/// [`prepare_repacked_x`] against the repacked matrix `w`. Output `t` is bit for bit the same
/// whatever `n` and whichever inputs share the call.
///
/// # Panics
/// Unless `cpu` runs the repacked layout ([`Cpu::runs_repacked`]), `y` is `n` rows of
/// `w.rows()` and `px` holds `n` prepared inputs of `w.cols()`.
pub fn matvec_repacked_prepared(
    cpu: impl Into<Cpu>,
    w: &RepackedMatrix<'_>,
    n: usize,
    px: &[f32],
    y: &mut [f32],
) {
    let rows = w.matrix().rows();
    w.matrix().check_outputs("matvec_repacked", n, y.len());
    // SAFETY: y (borrowed mutably here) holds n rows of `rows` floats, row t at t * rows.
    unsafe { matvec_repacked_raw(cpu.into(), w, n, px, y.as_mut_ptr(), rows) }
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

/// Input `t` of the prepared inputs `px` (rows of `units` units) as the kernels read it.
#[cfg(target_arch = "x86_64")]
fn prepared_x(px: &[f32], units: usize, t: usize) -> avx512::PreparedX {
    let per = units * 10;
    let (q, rest) = px[t * per..(t + 1) * per].split_at(8 * units);
    avx512::PreparedX {
        q: q.as_ptr().cast(),
        isum: rest.as_ptr().cast(),
        d: rest[units..].as_ptr(),
    }
}

/// The body of the repacked matvecs: `y[t * ldy + r]` for `t < n`, `r < w.rows()`, the
/// inputs in groups of up to 4 per kernel call.
///
/// # Safety
/// `y` must be valid for writes at `t * ldy + r` (`t < n`, `r < w.rows()`), with nothing
/// else reading or writing those floats during the call.
pub(crate) unsafe fn matvec_repacked_raw(
    cpu: Cpu,
    w: &RepackedMatrix<'_>,
    n: usize,
    px: &[f32],
    y: *mut f32,
    ldy: usize,
) {
    let isa = cpu.isa();
    assert!(
        cpu.runs_repacked(),
        "matvec_repacked: the repacked layout runs on AVX-512 only, not {isa}"
    );
    check(isa);
    let (rows, cols) = (w.matrix().rows(), w.matrix().cols());
    assert!(
        px.len() >= n * repacked_x_len(cols),
        "matvec_repacked: prepared inputs too short"
    );
    assert!(n <= 1 || ldy >= rows, "matvec_repacked: rows overlap");
    if rows == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use avx512::RQ_GROUP;
        let k = repacked_kind(w.matrix().qt());
        let units = cols / 32;
        let vnni = cpu.vnni();
        // Enough inputs to be compute-bound: the register-tiled kernel.
        if vnni && n >= REPACKED_GEMM_MIN && avx512::gemm_repacked_fits(units) {
            // SAFETY: forwarded contract; the checks above hold for the same arguments.
            unsafe { gemm_repacked_raw(w, n, px, y, ldy) };
            return;
        }
        // More inputs than one kernel call takes: every group of inputs runs over a tile of
        // rows before the next tile, so the weights come from DRAM once and the later groups
        // find them in cache (over the whole block, 8 inputs streamed the weights twice).
        let tile = if n > RQ_GROUP {
            REPACKED_ROW_TILE
        } else {
            rows
        };
        for r0 in (0..rows).step_by(tile) {
            let rt = (rows - r0).min(tile);
            let wt = w.row_block(r0, r0 + rt).matrix().bytes();
            for t0 in (0..n).step_by(RQ_GROUP) {
                let g = (n - t0).min(RQ_GROUP);
                let xs: [_; RQ_GROUP] = group_of(g, |i| prepared_x(px, units, t0 + i));
                // SAFETY: CPU support checked (VNNI detected when `vnni`: a `Cpu` claims it
                // only where detected); `wt` holds rows r0..r0 + rt of `w`, repacked rows of
                // `units` units (a `RepackedMatrix`); each input's pointers cover its
                // prepared words (`px` holds n * per, checked); y's columns r0..r0 + rt of
                // rows t0..t0 + g are forwarded from the contract (r0 + rt <= rows <= ldy).
                unsafe {
                    avx512::matvec_repacked(
                        k,
                        wt.as_ptr(),
                        rt,
                        units,
                        &xs[..g],
                        y.wrapping_add(t0 * ldy + r0),
                        ldy,
                        vnni,
                    )
                }
            }
        }
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
    n: usize,
    px: &[f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    assert!(
        cpu.runs_repacked() && cpu.vnni(),
        "gemm_repacked: the tiled kernel needs AVX512-VNNI, not {cpu}"
    );
    let (rows, cols) = (w.matrix().rows(), w.matrix().cols());
    w.matrix().check_outputs("gemm_repacked", n, y.len());
    assert!(
        px.len() >= n * repacked_x_len(cols),
        "gemm_repacked: prepared inputs too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(
            avx512::gemm_repacked_fits(cols / 32),
            "gemm_repacked: rows of {cols} columns do not fit the tile buffer"
        );
        // SAFETY: checked above: AVX512-VNNI, the buffer fit, `px` the `n` prepared inputs;
        // y (borrowed mutably here) holds n rows of `rows`.
        unsafe { gemm_repacked_raw(w, n, px, y.as_mut_ptr(), rows) };
    }
}

/// The tiled kernel on `n` prepared inputs, up to 64 per call of the kernel.
///
/// # Safety
/// The CPU has AVX-512 and AVX512-VNNI; `avx512::gemm_repacked_fits(units)`; `px` holds `n`
/// prepared inputs; `y` is valid for writes at `t * ldy + r` (`t < n`, `r < w.rows()`), with
/// nothing else accessing those floats.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_repacked_raw(w: &RepackedMatrix<'_>, n: usize, px: &[f32], y: *mut f32, ldy: usize) {
    const CHUNK: usize = 64;
    let w = w.matrix();
    let k = repacked_kind(w.qt());
    let units = w.cols() / 32;
    for t0 in (0..n).step_by(CHUNK) {
        let g = (n - t0).min(CHUNK);
        let xs: [_; CHUNK] = group_of(g, |i| prepared_x(px, units, t0 + i));
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

/// `y[t * rows + r] = sum_c w[r, c] * xs[t * cols + c]` for the `n = xs.len() / cols` inputs
/// and the rows of the repacked matrix `w`: each input quantized to 8 bits and prepared into
/// `scratch` (`n *` [`repacked_x_len`]`(cols)` words), then the kernel. Output `t` is bit for
/// bit the same whatever `n`.
///
/// # Panics
/// Unless `cpu` runs the repacked layout ([`Cpu::runs_repacked`]: AVX-512, no other ISA has
/// the kernel), and on buffer lengths that do not match.
pub fn matvec_repacked_rows(
    cpu: impl Into<Cpu>,
    w: &RepackedMatrix<'_>,
    xs: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    assert!(
        cpu.runs_repacked(),
        "matvec_repacked_rows: the repacked layout runs on AVX-512 only, not {cpu}"
    );
    let n = w.matrix().inputs("matvec_repacked_rows", xs.len(), y.len());
    if n == 0 {
        return;
    }
    prepare_repacked_x(cpu, w.matrix().cols(), xs, scratch);
    matvec_repacked_prepared(cpu, w, n, scratch, y);
}
