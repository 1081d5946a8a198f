//! AVX512-VNNI register tiles for many inputs against one repacked Q4_0 / Q5_0 / Q8_0 matrix
//! ([`crate::quant::repack`]): the many-row decode step as a GEMM.
//!
//! [`matvec_repacked`](super::matvec_repacked) unpacks every weight group once per group of up
//! to 4 inputs and keeps one row in flight. Here a tile of up to [`TILE_ROWS`] rows is
//! unpacked once into a stack buffer (each group as 8 unsigned operand vectors and its 16 unit
//! scales as f32) for all the inputs of the call, then blocks of [`RW`] rows x up to [`TI`]
//! inputs run over the whole row with their accumulators in registers: per operand, `RW`
//! weight vectors and `TI` input vectors feed `RW * TI` `vpdpbusd`.
//!
//! Every (row, input) pair does the float operations of the single-row kernel in the same
//! order: per group, the integer dot per unit lane (exact, whatever the order of the
//! `vpdpbusd`), `cvt(idot) * (d_w * d_x)` fused into its 16-lane accumulator, the same masked
//! loads on a tail group, and `_mm512_reduce_add_ps` at the end. So each output is bit for bit
//! what `matvec_repacked` gives that input alone.

use core::arch::x86_64::*;

use super::quant_repack::{PreparedX, RQ4_0, RQ5_0, RQ8_0};
use super::{lanes, prefetch, PREFETCH_BYTES};
use crate::stream::Ahead;

/// Weight rows of one register block.
pub const RW: usize = 4;
/// Inputs of one register block.
pub const TI: usize = 3;
/// Rows unpacked together at most: each input block runs over all of them before the next.
pub const TILE_ROWS: usize = 16;
/// 64-byte vectors of the stack buffer the unpacked row tile lives in (64 KiB).
const BUF_VECS: usize = 1024;
/// Vectors per unpacked group: 8 operands, then the 16 unit scales as f32.
const GROUP_VECS: usize = 9;

/// The unpacked row tile (cache-line aligned).
#[repr(align(64))]
struct Buf([[u8; 64]; BUF_VECS]);

/// Bytes per unit of format `K` (ggml's block bytes).
const fn unit_bytes(k: u8) -> usize {
    match k {
        RQ4_0 => 18,
        RQ5_0 => 22,
        _ => 34,
    }
}

/// Whether [`gemm_repacked`] takes rows of `units` units: their unpacked tile must fit its
/// buffer.
pub fn gemm_repacked_fits(units: usize) -> bool {
    units.div_ceil(16) * GROUP_VECS <= BUF_VECS
}

/// 64 bytes at `p` (`FULL`), or the first `4 n` of them (the rest zero).
///
/// # Safety
/// Those bytes are readable; the CPU has AVX-512F.
#[inline(always)]
unsafe fn ld<const FULL: bool>(p: *const u8, n: usize) -> __m512i {
    // SAFETY: the caller guarantees the bytes read are readable; masked-off lanes are not.
    unsafe {
        if FULL {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi32(lanes(n), p.cast())
        }
    }
}

/// Unpacks group `g` (`n` units) of the repacked row at `wg` into the 9 vectors at `out`: the
/// 8 operands as unsigned bytes (lanes past `n` zero) and the unit scales `d_w` as f32 (0.0
/// past `n`), exactly as `matvec_repacked` forms them.
///
/// # Safety
/// `wg` points at a group of `n` units of format `K`; `out` is valid for 9 vector writes;
/// AVX-512F/BW/VL and F16C.
#[inline(always)]
unsafe fn unpack_group<const K: u8, const FULL: bool>(wg: *const u8, n: usize, out: *mut __m512i) {
    // SAFETY: reads stay inside the group (`unit_bytes(K) * n` bytes, masked past `4 n` bytes
    // of an operand unless FULL); the prefetch touches no memory; writes are the 9 vectors.
    unsafe {
        let step = 4 * n;
        let pf = PREFETCH_BYTES;
        if K == RQ8_0 {
            for o in 0..8 {
                prefetch(wg.wrapping_add(o * step + pf));
                _mm512_storeu_si512(out.add(o).cast(), ld::<FULL>(wg.add(o * step), n));
            }
        } else {
            let low = _mm512_set1_epi8(0x0f);
            let sixteen = _mm512_set1_epi8(16);
            let hb = if K == RQ5_0 {
                prefetch(wg.wrapping_add(16 * n + pf));
                ld::<FULL>(wg.add(16 * n), n)
            } else {
                _mm512_setzero_si512()
            };
            for s in 0..4 {
                let v = ld::<FULL>(wg.add(s * step), n);
                prefetch(wg.wrapping_add(s * step + pf));
                let mut lo = _mm512_and_si512(v, low);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                if K == RQ5_0 {
                    let bl = _mm512_set1_epi8(1 << (2 * s));
                    let bh = _mm512_set1_epi8(2 << (2 * s));
                    lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hb, bl), lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(hb, bh), hi, sixteen);
                }
                _mm512_storeu_si512(out.add(2 * s).cast(), lo);
                _mm512_storeu_si512(out.add(2 * s + 1).cast(), hi);
            }
        }
        let d_at = match K {
            RQ4_0 => 16 * n,
            RQ5_0 => 20 * n,
            _ => 32 * n,
        };
        let dp = wg.add(d_at);
        let dh = if FULL {
            _mm256_loadu_si256(dp.cast())
        } else {
            _mm256_maskz_loadu_epi16(lanes(n), dp.cast())
        };
        _mm512_storeu_ps(out.add(8).cast(), _mm512_cvtph_ps(dh));
    }
}

/// One group (`n` units, all 16 if `FULL`) of `R` unpacked rows against `T` inputs, into the
/// accumulators `acc[r][t]`.
///
/// # Safety
/// `wg[r]` points at the group's 9 unpacked vectors of row `r`; `xs[t]` at the same group of
/// a prepared input (its `q` at the group's first byte, `isum` and `d` at its first unit); the
/// CPU has AVX-512F/BW/VL and AVX512-VNNI.
#[inline(always)]
unsafe fn group<const K: u8, const R: usize, const T: usize, const FULL: bool>(
    wg: &[*const __m512i; R],
    xs: &[PreparedX; T],
    n: usize,
    acc: &mut [[__m512; T]; R],
) {
    // SAFETY: input reads stay inside the group (`32 n` quant bytes, masked past `4 n` bytes
    // of an operand unless FULL; `n` sums and steps, masked); weight reads are the 9 vectors.
    unsafe {
        let m = lanes(n);
        let zero = _mm512_setzero_si512();
        let step = 4 * n;
        let mut init = [zero; T];
        for t in 0..T {
            let isum = _mm512_maskz_loadu_epi32(m, xs[t].isum);
            init[t] = match K {
                RQ4_0 => _mm512_sub_epi32(zero, _mm512_slli_epi32::<3>(isum)),
                RQ5_0 => _mm512_sub_epi32(zero, _mm512_slli_epi32::<4>(isum)),
                _ => _mm512_sub_epi32(zero, _mm512_slli_epi32::<7>(isum)),
            };
        }
        let mut idot = [init; R];
        for o in 0..8 {
            let mut xv = [zero; T];
            for t in 0..T {
                xv[t] = ld::<FULL>(xs[t].q.add(o * step), n);
            }
            for r in 0..R {
                let v = _mm512_loadu_si512(wg[r].add(o).cast());
                for t in 0..T {
                    idot[r][t] = _mm512_dpbusd_epi32(idot[r][t], v, xv[t]);
                }
            }
        }
        let dx: [__m512; T] = std::array::from_fn(|t| _mm512_maskz_loadu_ps(m, xs[t].d));
        for r in 0..R {
            let dw = _mm512_loadu_ps(wg[r].add(8).cast());
            for t in 0..T {
                let scale = _mm512_mul_ps(dw, dx[t]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot[r][t]), scale, acc[r][t]);
            }
        }
    }
}

/// `R` unpacked rows (row `r`'s groups at `buf + r * row_vecs`) against `T` inputs, the whole
/// row: `y[t * ldy + r]`.
///
/// # Safety
/// As [`gemm_repacked`]; `buf` holds the `R` rows unpacked; `xs` are `T` prepared inputs of
/// `units` units.
#[inline(always)]
unsafe fn block<const K: u8, const R: usize, const T: usize>(
    buf: *const __m512i,
    row_vecs: usize,
    units: usize,
    xs: &[PreparedX],
    y: *mut f32,
    ldy: usize,
    ahead: &mut Ahead,
) {
    // SAFETY: every group offset is inside the unpacked rows and the prepared inputs
    // (contract); y[t * ldy + r] is writable (contract).
    unsafe {
        let full = units / 16;
        let tail = units % 16;
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let at = |g: usize| -> ([*const __m512i; R], [PreparedX; T]) {
            let wg = std::array::from_fn(|r| buf.add(r * row_vecs + g * GROUP_VECS));
            let xg = std::array::from_fn(|t| PreparedX {
                q: xs[t].q.add(512 * g),
                isum: xs[t].isum.add(16 * g),
                d: xs[t].d.add(16 * g),
            });
            (wg, xg)
        };
        for g in 0..full {
            let (wg, xg) = at(g);
            group::<K, R, T, true>(&wg, &xg, 16, &mut acc);
            ahead.step();
        }
        if tail > 0 {
            let (wg, xg) = at(full);
            group::<K, R, T, false>(&wg, &xg, tail, &mut acc);
            ahead.step();
        }
        for (r, ar) in acc.iter().enumerate() {
            for (t, a) in ar.iter().enumerate() {
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// `rt` unpacked rows against the `T` inputs `xs`, [`RW`] rows at a time.
///
/// # Safety
/// As [`block`], for `rt` rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_of<const K: u8, const T: usize>(
    buf: *const __m512i,
    rt: usize,
    row_vecs: usize,
    units: usize,
    xs: &[PreparedX],
    y: *mut f32,
    ldy: usize,
    ahead: &mut Ahead,
) {
    // SAFETY: forwarded contract; each block's rows are inside the tile.
    unsafe {
        let mut r = 0;
        while r + RW <= rt {
            block::<K, RW, T>(
                buf.add(r * row_vecs),
                row_vecs,
                units,
                xs,
                y.add(r),
                ldy,
                ahead,
            );
            r += RW;
        }
        while r < rt {
            block::<K, 1, T>(
                buf.add(r * row_vecs),
                row_vecs,
                units,
                xs,
                y.add(r),
                ldy,
                ahead,
            );
            r += 1;
        }
    }
}

/// The kernel for format `K`.
///
/// # Safety
/// As [`gemm_repacked`].
#[inline(always)]
unsafe fn body<const K: u8>(
    w: *const u8,
    rows: usize,
    units: usize,
    xs: &[PreparedX],
    y: *mut f32,
    ldy: usize,
) {
    let groups = units.div_ceil(16);
    let row_vecs = groups * GROUP_VECS;
    let rb = units * unit_bytes(K);
    let tile = (BUF_VECS / row_vecs).clamp(1, TILE_ROWS);
    let mut buf = Buf([[0; 64]; BUF_VECS]);
    let bp: *mut __m512i = buf.0.as_mut_ptr().cast();
    // SAFETY: rows r0..r0 + rt lie in w (contract) and their unpacked groups fit the buffer
    // (tile * row_vecs <= BUF_VECS); each input's pointers cover `units` units; y's columns
    // r0..r0 + rt of rows t0..t0 + T are forwarded from the contract.
    unsafe {
        for r0 in (0..rows).step_by(tile) {
            let rt = (rows - r0).min(tile);
            for r in 0..rt {
                let row = w.add((r0 + r) * rb);
                let out = bp.add(r * row_vecs);
                for g in 0..units / 16 {
                    let wg = row.add(16 * g * unit_bytes(K));
                    unpack_group::<K, true>(wg, 16, out.add(g * GROUP_VECS));
                }
                if !units.is_multiple_of(16) {
                    let g = units / 16;
                    let wg = row.add(16 * g * unit_bytes(K));
                    unpack_group::<K, false>(wg, units % 16, out.add(g * GROUP_VECS));
                }
            }
            // the next tile's rows, streamed in while this one is computed
            let next = (rows - r0 - rt).min(tile);
            let steps = xs.len().div_ceil(TI) * (rt / RW + rt % RW) * units.div_ceil(16);
            let mut ahead = Ahead::new(w.wrapping_add((r0 + rt) * rb), next * rb, steps);
            for t0 in (0..xs.len()).step_by(TI) {
                let xt = &xs[t0..(t0 + TI).min(xs.len())];
                let yt = y.add(t0 * ldy + r0);
                match xt.len() {
                    1 => rows_of::<K, 1>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead),
                    2 => rows_of::<K, 2>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead),
                    3 => rows_of::<K, 3>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead),
                    4 if TI > 4 => {
                        rows_of::<K, 4>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead)
                    }
                    5 if TI > 5 => {
                        rows_of::<K, 5>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead)
                    }
                    _ => rows_of::<K, TI>(bp, rt, row_vecs, units, xt, yt, ldy, &mut ahead),
                }
            }
        }
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` repacked rows of format `k`
/// ([`RQ4_0`], [`RQ5_0`], [`RQ8_0`]) with `units` units each and any number of prepared inputs
/// `xs`, in register tiles of [`RW`] rows x [`TI`] inputs: each output bit for bit what
/// [`matvec_repacked`](super::matvec_repacked) gives its input alone.
///
/// # Safety
/// [`gemm_repacked_fits`]`(units)`; `w` is valid for reading `rows` repacked rows of `units`
/// units of format `k`; every input's pointers cover its prepared `units` units; `y` is valid
/// for writes at `t * ldy + r` (`t < xs.len()`, `r < rows`) with nothing else accessing them
/// during the call; the CPU supports AVX-512F/BW/VL, AVX512-VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_repacked(
    k: u8,
    w: *const u8,
    rows: usize,
    units: usize,
    xs: &[PreparedX],
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(gemm_repacked_fits(units));
    // SAFETY: forwarded contract.
    unsafe {
        match k {
            RQ4_0 => body::<RQ4_0>(w, rows, units, xs, y, ldy),
            RQ5_0 => body::<RQ5_0>(w, rows, units, xs, y, ldy),
            _ => body::<RQ8_0>(w, rows, units, xs, y, ldy),
        }
    }
}
