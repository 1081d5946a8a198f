//! The quantized prefill matmul written once over [`QSimd`]: panels of [`QNR`] weight rows
//! repacked as unsigned 8-bit quants
//! ([`crate::quant::panel::pack_q_panel`]), tiles of up to `Q_MR` input rows
//! (8-bit blocks) against them, one i32 lane per weight row (`16 / LANES` vectors of them):
//! `vpdpbusd` with VNNI, else `vpmaddubsw` + `vpmaddwd` (Q8_0 then keeps its signed quants:
//! `|w|` times `x` negated where `w < 0`). A backend may pack panels its own way (the same
//! bytes) and run them on a matrix unit (AMX), scaling through [`add_sub_block`] so that every
//! tile gives the same bits.

use super::qsimd::{dispatch_vnni, PanelRun, QSimd};
use crate::quant::panel::{panel_bytes, q_sub_block, q_sub_block_bytes, QNR};
use crate::quant::{q8_len, QMatrix, QuantType};

/// Adds sub-block `i`'s integer dots `idot` (one lane per weight row) of one input row into
/// that row's f32 accumulator `f`: `f += f32(idot) * (scale * d_x) + bias * s_x`, with `sc` and
/// `bi` the sub-block's scales and biases of those weight rows, `xr` the input row's
/// [`q8_len`] words (`nb` blocks of 32). Every tile (VNNI, plain, AMX) scales through here, in
/// this order, so they give the same bits for the same integer dots.
///
/// # Safety
/// `xr` holds `nb` blocks and sub-block `i` of `S` weights lies inside them; inside the
/// backend's `vectorize`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn add_sub_block<B: QSimd, const S: usize>(
    b: B,
    f: &mut B::F32,
    idot: B::I,
    sc: B::F32,
    bi: B::F32,
    xr: *const f32,
    nb: usize,
    i: usize,
) {
    let blk = i * S / 32;
    // SAFETY: d and the half sums of block blk < nb are words blk and nb + 2 blk (+1) of the
    // row (contract).
    let (dx, sx) = unsafe {
        let hs = xr.add(nb + 2 * blk);
        let sx = if S == 32 {
            *hs + *hs.add(1)
        } else {
            *hs.add(i & 1)
        };
        (*xr.add(blk), sx)
    };
    let scx = b.mul(sc, b.splat(dx));
    *f = b.fma(b.i32_to_f32(idot), scx, *f);
    *f = b.fma(bi, b.splat(sx), *f);
}

/// Stores each tile row's accumulators (`16 / LANES` vectors) to columns `0..nr` of its row of
/// `y`.
///
/// # Safety
/// `y` valid for writes to `facc.len()` rows of `ldy` floats at columns `0..nr`, `nr <= 16`;
/// inside the backend's `vectorize`.
#[inline(always)]
pub(crate) unsafe fn store_rows<B: QSimd>(
    b: B,
    facc: &[[B::F32; 2]],
    y: *mut f32,
    ldy: usize,
    nr: usize,
) {
    for (t, f) in facc.iter().enumerate() {
        for (h, v) in f.iter().enumerate().take(QNR / B::LANES) {
            let cols = nr.saturating_sub(B::LANES * h);
            if cols > 0 {
                // SAFETY: row t, columns LANES h..LANES h + cols < nr of y: writable (contract).
                unsafe { b.store_tail(y.add(t * ldy + B::LANES * h), cols, *v) };
            }
        }
    }
}

/// `acc + dot(w, x)`: with `SIGNED` (Q8_0's own i8 quants, never with `VNNI`), `|w|` times `x`
/// with the sign of `w`, at most `2 * 128 * 127` per `vpmaddubsw` pair; else unsigned `w`,
/// below 64 on the plain path (`2 * 63 * 127`).
///
/// # Safety
/// With `VNNI`, only inside the backend's `vectorize_vnni`.
#[inline(always)]
unsafe fn dot<B: QSimd, const SIGNED: bool, const VNNI: bool>(
    b: B,
    acc: B::I,
    w: B::I,
    x: B::I,
) -> B::I {
    // SAFETY: forwarded contract.
    unsafe {
        if SIGNED {
            b.udot::<VNNI>(acc, b.abs_i8(w), b.apply_sign(x, b.sign_of(w)))
        } else {
            b.udot::<VNNI>(acc, w, x)
        }
    }
}

/// `y[t * ldy + j] = sum_i (scale[j, i] * d_x[t, i] * idot + bias[j, i] * d_x[t, i] *
/// sum x_q[t, i])` over the sub-blocks `i` of `S` weights of the run, for rows `t < R` and
/// columns `j < nr` (quants of `SIGNED` form).
///
/// # Safety
/// The run's panel valid for `nsb` sub-blocks; `xq` for `R` rows of `xs` words holding `nb`
/// blocks; `y` valid for writes to `R` rows of `ldy` floats at columns `0..nr`; inside the
/// backend's `vectorize` (`vectorize_vnni` with `VNNI`).
#[inline(always)]
unsafe fn tile<B: QSimd, const R: usize, const S: usize, const SIGNED: bool, const VNNI: bool>(
    b: B,
    run: PanelRun,
) {
    let PanelRun { xq, xs, nb, .. } = run;
    let hn = QNR / B::LANES;
    let sbb = q_sub_block_bytes(S);
    let mut facc = [[b.zero(); 2]; R];
    for i in 0..run.nsb {
        let k0 = i * S;
        let mut iacc = [[b.zero_i(); 2]; R];
        // SAFETY: sub-block i < nsb of the panel: its quants (16 * S bytes), scales and biases
        // (64 bytes each) are inside it. x row t < R: its quants start at word 3 * nb of the
        // row, and bytes k0 + 4s..k0 + 4s + 4 < nb * 32 lie inside them; the row holds nb
        // blocks (add_sub_block's contract).
        unsafe {
            let p = run.panel.add(i * sbb);
            for s in 0..S / 4 {
                let mut wv = [b.zero_i(); 2];
                for (h, v) in wv.iter_mut().enumerate().take(hn) {
                    *v = b.load_i(p.add(64 * s + 4 * B::LANES * h));
                }
                for (t, a) in iacc.iter_mut().enumerate() {
                    let xp = xq.add(t * xs + 3 * nb).cast::<u8>().add(k0 + 4 * s);
                    let xv = b.splat_i32(xp.cast::<i32>().read_unaligned());
                    for h in 0..hn {
                        a[h] = dot::<B, SIGNED, VNNI>(b, a[h], wv[h], xv);
                    }
                }
            }
            let (mut sc, mut bi) = ([b.zero(); 2], [b.zero(); 2]);
            for h in 0..hn {
                let o = QNR * S + 4 * B::LANES * h;
                sc[h] = b.load(p.add(o).cast());
                bi[h] = b.load(p.add(o + 64).cast());
            }
            for (t, (f, a)) in facc.iter_mut().zip(&iacc).enumerate() {
                for h in 0..hn {
                    add_sub_block::<B, S>(b, &mut f[h], a[h], sc[h], bi[h], xq.add(t * xs), nb, i);
                }
            }
        }
    }
    // SAFETY: R rows, columns 0..nr of y: writable by the contract.
    unsafe { store_rows(b, &facc, run.y, run.ldy, run.nr) }
}

/// Runs every tile of `n` input rows against one packed panel (on the backend's matrix unit
/// where `amx` grants it and the quants are unsigned).
///
/// # Safety
/// As [`tile`], for `n` rows of `xq` and `y`; with `amx`, as [`QSimd::matrix_tiles`].
#[inline(always)]
unsafe fn run_panel<B: QSimd, const S: usize, const SIGNED: bool, const VNNI: bool>(
    b: B,
    amx: bool,
    run: PanelRun,
    n: usize,
) {
    // SAFETY: forwarded contract.
    if amx && !SIGNED && unsafe { b.matrix_tiles::<S>(run, n) } {
        return;
    }
    let mut t0 = 0;
    while t0 < n {
        let r = (n - t0).min(B::Q_MR);
        // SAFETY: rows t0..t0 + r < n of xq and y exist (contract).
        unsafe {
            let run = run.rows_from(t0);
            macro_rules! go {
                ($($r:literal)*) => {
                    match r {
                        $($r => tile::<B, $r, S, SIGNED, VNNI>(b, run),)*
                        _ => unreachable!("tiles hold at most 8 rows"),
                    }
                };
            }
            go!(1 2 3 4 5 6 7 8);
        }
        t0 += r;
    }
}

/// The operands of one [`matmul_q_strided`] call but the panel.
#[derive(Clone, Copy)]
struct Matmul<'a> {
    w: QMatrix<'a>,
    amx: bool,
    xq: &'a [f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
}

/// The panels of [`matmul_q_strided`], inside the backend's `vectorize` (`vectorize_vnni`
/// with `VNNI`).
///
/// # Safety
/// As [`matmul_q_strided`].
#[inline(always)]
unsafe fn panels<B: QSimd, const VNNI: bool>(b: B, m: &Matmul<'_>, panel: &mut [f32]) {
    let Matmul {
        w,
        amx,
        xq,
        n,
        y,
        ldy,
    } = *m;
    let (qt, k, rows) = (w.qt(), w.cols(), w.rows());
    let xs = q8_len(k);
    debug_assert!(xq.len() >= n * xs);
    let s = q_sub_block(qt);
    let nsb = k / s;
    // the VNNI and AMX dots take unsigned weight quants (Q8_0's offset by 128)
    let signed = qt == QuantType::Q8_0 && !VNNI && !amx;
    let pb = panel_bytes(panel);
    let mut j0 = 0;
    while j0 < rows {
        let nr = (rows - j0).min(QNR);
        b.pack_q_panel(qt, w.row_block(j0, j0 + nr).bytes(), k, signed, pb);
        // SAFETY: the panel holds nsb packed sub-blocks; xq n rows; y columns j0..j0 + nr <
        // rows of rows t < n (contract).
        unsafe {
            let run = PanelRun {
                panel: pb.as_ptr(),
                nsb,
                xq: xq.as_ptr(),
                xs,
                nb: nsb * s / 32,
                y: y.add(j0),
                ldy,
                nr,
            };
            match (s, signed) {
                (16, _) => run_panel::<B, 16, false, VNNI>(b, amx, run, n),
                (_, true) => run_panel::<B, 32, true, VNNI>(b, amx, run, n),
                _ => run_panel::<B, 32, false, VNNI>(b, amx, run, n),
            }
        }
        j0 += nr;
    }
}

/// `y[t * ldy + j] = sum_c w[j, c] * x[t, c]` for `t < n`, `j < w.rows()`, `x` given as its
/// 8-bit blocks `xq` (`q8_len(k)` words per row, `k = w.cols()`): panels of 16 weight rows
/// packed into `panel`, then run against every tile of input rows.
///
/// # Safety
/// `xq` holds `n` quantized rows, `panel` at least `ops::matmul_q_panel_len(k)` words; `y`
/// valid for writes at `t * ldy + j` (`t < n`, `j < w.rows()`) with nothing else accessing
/// them; with `vnni`, the CPU has the backend's VNNI extension; with `amx`, as
/// [`QSimd::matrix_tiles`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_q_strided<B: QSimd>(
    b: B,
    w: &QMatrix<'_>,
    vnni: bool,
    amx: bool,
    xq: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    panel: &mut [f32],
) {
    let m = Matmul {
        w: *w,
        amx,
        xq,
        n,
        y,
        ldy,
    };
    macro_rules! run {
        ($vnni:literal) => {
            panels::<B, $vnni>(b, &m, panel)
        };
    }
    dispatch_vnni!(b, vnni, run!())
}
