//! AVX512-VNNI register tiles for many inputs against one ggml block-quantized matrix (Q4_0,
//! Q5_0, Q4_K, Q5_K, Q6_K): the many-row decode step as a GEMM.
//!
//! The matvec ([`crate::generic::matvec_q`]) dots a group's column-ordered vectors and then
//! reduces 8 (or 4) lanes to one per scale unit, for every (row, input) pair. Here both sides
//! are put once into *operand order* instead: operand vector `o` holds, in 32-bit lane `u`,
//! the 4 bytes `4 o .. 4 o + 4` of unit `u` of the group, so chained `vpdpbusd` over the
//! operands leave each lane with its unit's whole integer dot, with no reduction. Each weight
//! group is unpacked and reordered once per call (for all inputs), each input once per call
//! ([`prepare_q_tile_x`]); blocks of [`QRW`] rows x [`QTI`] inputs then keep their
//! accumulators in registers over the whole row.
//!
//! Every (row, input) pair does the float operations of the matvec in the same order: per
//! group, `cvt(idot) * (scale * d_x)` then `bias * s_x` fused into its 16-lane accumulator
//! (the integer dot is exact whichever way it is summed; `scale`, `bias`, `d_x`, `s_x` are
//! the matvec's own vectors, tail lanes included), `_mm512_reduce_add_ps` at the end. So each
//! output is bit for bit the matvec's on that input alone.

use core::arch::x86_64::*;

use crate::generic::{unit_steps, QFmt, QSimd, Q40, Q4K, Q50, Q5K, Q6K};
use crate::ops::q_tile_x_len;
use crate::quant::{Q8Row, QuantType};
use crate::simd::avx512::Avx512;
use crate::stream::{prefetch_ahead, Ahead};

/// Weight rows of one register block.
pub const QRW: usize = 4;
/// Inputs of one register block.
pub const QTI: usize = 3;
/// Rows unpacked together at most.
const TILE_ROWS: usize = 16;
/// 64-byte vectors of the stack buffer the unpacked row tile lives in (64 KiB).
const BUF_VECS: usize = 1024;

/// The unpacked row tile (cache-line aligned).
#[repr(align(64))]
struct Buf([[u8; 64]; BUF_VECS]);

/// Operand vectors per group of format `F` (8 for 32-column units, 4 for 16-column ones).
const fn operands<F: QFmt>() -> usize {
    F::UNIT / 4
}

/// Vectors per group in the tile's buffers: the operands, then two vectors of per-unit
/// factors (weights: scale and bias; inputs: `d_x` and `s_x`).
const fn group_vecs<F: QFmt>() -> usize {
    operands::<F>() + 2
}

/// `v[..V]` (column order: vector `i` holds columns `64 i .. 64 i + 64` of the group) into
/// operand order: vector `o`, lane `u` = bytes `4 o .. 4 o + 4` of unit `u`. Three (or two)
/// steps each swap one bit of the vector index with one of the lane index, then one
/// permutation puts the units in lane order.
///
/// # Safety
/// AVX-512F.
#[inline(always)]
unsafe fn to_operands<const V: usize>(v: &mut [__m512i; 8]) {
    // SAFETY: register-only AVX-512F intrinsics.
    unsafe {
        let steps = if V == 8 { 3 } else { 2 };
        for b in (0..steps).rev() {
            let bit = 1usize << b;
            let idx = |sel: usize| {
                let mut i = [0i32; 16];
                for (l, e) in i.iter_mut().enumerate() {
                    *e = (16 * ((l >> b) & 1) + ((l & !bit) | (sel << b))) as i32;
                }
                _mm512_loadu_si512(i.as_ptr().cast())
            };
            let (i0, i1) = (idx(0), idx(1));
            let mut out = *v;
            for j in 0..V {
                if j & bit != 0 {
                    continue;
                }
                out[j] = _mm512_permutex2var_epi32(v[j], i0, v[j | bit]);
                out[j | bit] = _mm512_permutex2var_epi32(v[j], i1, v[j | bit]);
            }
            *v = out;
        }
        let last = if V == 8 {
            _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
        } else {
            _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
        };
        for vj in v.iter_mut().take(V) {
            *vj = _mm512_permutexvar_epi32(last, *vj);
        }
    }
}

/// Prepares one input for the tile: per group, its quants in operand order and its
/// `d_x`, `s_x` vectors as the matvec forms them.
///
/// # Safety
/// `x` holds `cols` columns (a whole number of `F` units); `out` is valid for writes of
/// `groups * group_vecs::<F>()` vectors; inside `b`'s `vectorize`.
#[inline(always)]
unsafe fn prepare_x<F: QFmt>(b: Avx512, x: &Q8Row<'_>, cols: usize, out: *mut __m512i) {
    // SAFETY: as the matvec's `group_dot`: the quant bytes read are the group's valid columns
    // (a tail load past them); `unit_steps` reads the group's steps and sums; writes stay in
    // `out`.
    unsafe {
        let units = cols / F::UNIT;
        let v_n = operands::<F>();
        for gi in 0..units.div_ceil(16) {
            let n = (units - 16 * gi).min(16);
            let valid = n * F::UNIT;
            let xq = x.qs_ptr().cast::<u8>().add(gi * 16 * F::UNIT);
            let mut v = [b.zero_i(); 8];
            for (i, vi) in v.iter_mut().enumerate().take(v_n) {
                if 64 * i >= valid {
                    break;
                }
                let xp = xq.add(64 * i);
                *vi = if valid >= 64 * (i + 1) {
                    b.load_i(xp)
                } else {
                    b.load_i_tail(xp, valid - 64 * i)
                };
            }
            if v_n == 8 {
                to_operands::<8>(&mut v);
            } else {
                to_operands::<4>(&mut v);
            }
            let o = out.add(gi * group_vecs::<F>());
            for (i, vi) in v.iter().enumerate().take(v_n) {
                _mm512_storeu_si512(o.add(i).cast(), *vi);
            }
            let (dx, sx) = unit_steps::<Avx512, F>(b, x, gi, n, 0);
            _mm512_storeu_ps(o.add(v_n).cast(), dx);
            _mm512_storeu_ps(o.add(v_n + 1).cast(), sx);
        }
    }
}

/// One group of `R` unpacked rows against `T` prepared inputs, into `acc[r][t]`.
///
/// # Safety
/// `wg[r]` / `xg[t]` point at the group's vectors in a row tile / a prepared input;
/// AVX-512F/BW/VL and AVX512-VNNI.
#[inline(always)]
unsafe fn group<F: QFmt, const R: usize, const T: usize>(
    wg: &[*const __m512i; R],
    xg: &[*const __m512i; T],
    acc: &mut [[__m512; T]; R],
) {
    // SAFETY: every read is one of the group's vectors (contract).
    unsafe {
        let v_n = operands::<F>();
        let mut idot = [[_mm512_setzero_si512(); T]; R];
        for o in 0..v_n {
            let xv: [__m512i; T] = std::array::from_fn(|t| _mm512_loadu_si512(xg[t].add(o).cast()));
            for r in 0..R {
                let w = _mm512_loadu_si512(wg[r].add(o).cast());
                for t in 0..T {
                    idot[r][t] = _mm512_dpbusd_epi32(idot[r][t], w, xv[t]);
                }
            }
        }
        let dx: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(xg[t].add(v_n).cast()));
        let sx: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(xg[t].add(v_n + 1).cast()));
        for r in 0..R {
            let scale = _mm512_loadu_ps(wg[r].add(v_n).cast());
            let bias = _mm512_loadu_ps(wg[r].add(v_n + 1).cast());
            for t in 0..T {
                let a = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(idot[r][t]),
                    _mm512_mul_ps(scale, dx[t]),
                    acc[r][t],
                );
                acc[r][t] = _mm512_fmadd_ps(bias, sx[t], a);
            }
        }
    }
}

/// `R` unpacked rows (row `r` at `w + r * row_vecs`) against `T` prepared inputs (input `t`
/// at `x[t]`), the whole row: `y[t * ldy + r]`.
///
/// # Safety
/// As [`gemm_q_tile`]; the rows and inputs hold `groups` groups.
#[inline(always)]
unsafe fn block<F: QFmt, const R: usize, const T: usize>(
    w: *const __m512i,
    row_vecs: usize,
    groups: usize,
    x: &[*const __m512i],
    y: *mut f32,
    ldy: usize,
    ahead: &mut Ahead,
) {
    // SAFETY: group offsets stay inside the rows and inputs (contract); y[t * ldy + r] is
    // writable (contract).
    unsafe {
        let gv = group_vecs::<F>();
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for g in 0..groups {
            let wg = std::array::from_fn(|r| w.add(r * row_vecs + g * gv));
            let xg = std::array::from_fn(|t| x[t].add(g * gv));
            group::<F, R, T>(&wg, &xg, &mut acc);
            ahead.step();
        }
        for (r, ar) in acc.iter().enumerate() {
            for (t, a) in ar.iter().enumerate() {
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// `rt` unpacked rows against `T` inputs, [`QRW`] rows at a time.
///
/// # Safety
/// As [`block`], for `rt` rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_of<F: QFmt, const T: usize>(
    w: *const __m512i,
    rt: usize,
    row_vecs: usize,
    groups: usize,
    x: &[*const __m512i],
    y: *mut f32,
    ldy: usize,
    ahead: &mut Ahead,
) {
    // SAFETY: forwarded contract; each block's rows are inside the tile.
    unsafe {
        let mut r = 0;
        while r + QRW <= rt {
            block::<F, QRW, T>(
                w.add(r * row_vecs),
                row_vecs,
                groups,
                x,
                y.add(r),
                ldy,
                ahead,
            );
            r += QRW;
        }
        while r < rt {
            block::<F, 1, T>(
                w.add(r * row_vecs),
                row_vecs,
                groups,
                x,
                y.add(r),
                ldy,
                ahead,
            );
            r += 1;
        }
    }
}

/// The kernel for format `F`.
///
/// # Safety
/// As [`gemm_q_tile`].
#[inline(always)]
unsafe fn body<F: QFmt>(
    w: &[u8],
    rows: usize,
    cols: usize,
    n: usize,
    px: *const f32,
    y: *mut f32,
    ldy: usize,
) {
    let units = cols / F::UNIT;
    let groups = units.div_ceil(16);
    let gv = group_vecs::<F>();
    let row_vecs = groups * gv;
    // SAFETY: the CPU has the features (contract).
    let b = unsafe { Avx512::new_unchecked() };
    let gb = F::group_bytes::<Avx512>();
    let rb = units * gb / 16;
    let per = q_tile_x_len(cols);
    let tile = (BUF_VECS / row_vecs).clamp(1, TILE_ROWS);
    let mut buf = Buf([[0; 64]; BUF_VECS]);
    let bp: *mut __m512i = buf.0.as_mut_ptr().cast();
    // SAFETY: rows r0..r0 + rt lie in w (contract) and their unpacked groups fit the buffer
    // (tile * row_vecs <= BUF_VECS); input t's prepared vectors start at px + t * per; y's
    // columns r0..r0 + rt of rows t0..t0 + T are forwarded from the contract.
    unsafe {
        for r0 in (0..rows).step_by(tile) {
            let rt = (rows - r0).min(tile);
            for r in 0..rt {
                let row = w.as_ptr().add((r0 + r) * rb);
                for gi in 0..groups {
                    let p = row.add(gi * gb);
                    prefetch_ahead(p, gb);
                    let nu = (units - 16 * gi).min(16);
                    let g = F::unpack(b, p, nu);
                    let mut q = g.q;
                    if operands::<F>() == 8 {
                        to_operands::<8>(&mut q);
                    } else {
                        to_operands::<4>(&mut q);
                    }
                    let o = bp.add(r * row_vecs + gi * gv);
                    for (i, qi) in q.iter().enumerate().take(operands::<F>()) {
                        _mm512_storeu_si512(o.add(i).cast(), *qi);
                    }
                    _mm512_storeu_ps(o.add(operands::<F>()).cast(), g.scale[0]);
                    _mm512_storeu_ps(o.add(operands::<F>() + 1).cast(), g.bias[0]);
                }
            }
            // the next tile's rows, streamed in while this one is computed
            let next = (rows - r0 - rt).min(tile);
            let steps = n.div_ceil(QTI) * (rt / QRW + rt % QRW) * groups;
            let mut ahead = Ahead::new(w.as_ptr().wrapping_add((r0 + rt) * rb), next * rb, steps);
            for t0 in (0..n).step_by(QTI) {
                let tn = (n - t0).min(QTI);
                let x: [*const __m512i; QTI] =
                    std::array::from_fn(|i| px.add((t0 + i.min(tn - 1)) * per).cast());
                let x = &x[..tn];
                let yt = y.add(t0 * ldy + r0);
                match tn {
                    1 => rows_of::<F, 1>(bp, rt, row_vecs, groups, x, yt, ldy, &mut ahead),
                    2 if QTI > 2 => {
                        rows_of::<F, 2>(bp, rt, row_vecs, groups, x, yt, ldy, &mut ahead)
                    }
                    3 if QTI > 3 => {
                        rows_of::<F, 3>(bp, rt, row_vecs, groups, x, yt, ldy, &mut ahead)
                    }
                    _ => rows_of::<F, QTI>(bp, rt, row_vecs, groups, x, yt, ldy, &mut ahead),
                }
            }
        }
    }
}

/// Prepares the inputs `xs` for [`gemm_q_tile`] on `qt` weights: input `t` into
/// `out + t * q_tile_x_len(cols)` (f32 words).
///
/// # Safety
/// `qt` is not Q8_0; every input was quantized from `cols` columns (a whole number of
/// `qt` blocks); `out` is valid for writes of `xs.len() * q_tile_x_len(cols)` words; the CPU
/// supports AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn prepare_q_tile_x(qt: QuantType, cols: usize, xs: &[Q8Row<'_>], out: *mut f32) {
    let per = q_tile_x_len(cols);
    // SAFETY: the CPU has the features (contract).
    let b = unsafe { Avx512::new_unchecked() };
    macro_rules! go {
        ($f:ty) => {
            for (t, x) in xs.iter().enumerate() {
                // SAFETY: forwarded contract; input t's words are inside `out`.
                unsafe { prepare_x::<$f>(b, x, cols, out.add(t * per).cast()) }
            }
        };
    }
    match qt {
        QuantType::Q4_0 => go!(Q40),
        QuantType::Q5_0 => go!(Q50),
        QuantType::Q4K => go!(Q4K),
        QuantType::Q5K => go!(Q5K),
        QuantType::Q6K => go!(Q6K),
        QuantType::Q8_0 => unreachable!("prepare_q_tile_x: Q8_0 is not tiled"),
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` rows of `cols` columns of `qt`
/// weights and the `n` inputs prepared at `px` by [`prepare_q_tile_x`], in register blocks of
/// [`QRW`] rows x [`QTI`] inputs: each output bit for bit what
/// [`crate::generic::matvec_q`] gives its input alone.
///
/// # Safety
/// `qt` is not Q8_0 and its rows of `cols` fit the buffer (`ops::q_tile_runs`); `w` holds `rows` rows of `cols`
/// `qt` weights; `px` holds `n` prepared inputs of `cols`; `y` is valid for writes at
/// `t * ldy + r` (`t < n`, `r < rows`) with nothing else accessing them during the call; the
/// CPU supports AVX-512F/BW/VL, AVX512-VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_q_tile(
    qt: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    n: usize,
    px: *const f32,
    y: *mut f32,
    ldy: usize,
) {
    if n == 0 {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        match qt {
            QuantType::Q4_0 => body::<Q40>(w, rows, cols, n, px, y, ldy),
            QuantType::Q5_0 => body::<Q50>(w, rows, cols, n, px, y, ldy),
            QuantType::Q4K => body::<Q4K>(w, rows, cols, n, px, y, ldy),
            QuantType::Q5K => body::<Q5K>(w, rows, cols, n, px, y, ldy),
            QuantType::Q6K => body::<Q6K>(w, rows, cols, n, px, y, ldy),
            QuantType::Q8_0 => unreachable!("gemm_q_tile: Q8_0 is not tiled"),
        }
    }
}
