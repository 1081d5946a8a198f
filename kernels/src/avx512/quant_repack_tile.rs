//! AVX512-VNNI register tiles for many inputs against one repacked Q4_0 / Q5_0 / Q8_0 matrix
//! ([`crate::quant::repack`]): the many-row decode step as a GEMM.
//!
//! [`matvec_repacked`](super::matvec_repacked) unpacks every weight group once per group of up
//! to 4 inputs and keeps one row in flight. Here [`super::tile`]'s driver unpacks a tile of
//! rows once for all the inputs of the call (each group as 8 unsigned operand vectors and its
//! 16 unit scales as f32) and runs register blocks of rows x inputs over it; this module is
//! the layout ([`Repacked`]): how a repacked group is unpacked, where a prepared input's
//! group lies, and how a group's integer dots are scaled.
//!
//! Every (row, input) pair does the float operations of the single-row kernel in the same
//! order: per group, the integer dot per unit lane (exact, whatever the order of the
//! `vpdpbusd`), `cvt(idot) * (d_w * d_x)` fused into its 16-lane accumulator, the same masked
//! loads on a tail group, and `_mm512_reduce_add_ps` at the end. So each output is bit for bit
//! what `matvec_repacked` gives that input alone.

use core::arch::x86_64::*;

use super::quant_repack::{
    dot_init, ld, nibbles, unit_bytes, weight_scales, PreparedX, RQ4_0, RQ5_0, RQ8_0,
};
use super::tile::{gemm_tiles, TileLayout, BUF_VECS};
use super::{lanes, prefetch, PREFETCH_BYTES};

/// Vectors per unpacked group: 8 operands, then the 16 unit scales as f32.
const GROUP_VECS: usize = 9;

/// Whether [`gemm_repacked`] takes rows of `units` units: their unpacked tile must fit its
/// buffer.
pub fn gemm_repacked_fits(units: usize) -> bool {
    units.div_ceil(16) * GROUP_VECS <= BUF_VECS
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
            let hb = if K == RQ5_0 {
                prefetch(wg.wrapping_add(16 * n + pf));
                ld::<FULL>(wg.add(16 * n), n)
            } else {
                _mm512_setzero_si512()
            };
            for s in 0..4 {
                let v = ld::<FULL>(wg.add(s * step), n);
                prefetch(wg.wrapping_add(s * step + pf));
                let [lo, hi] = nibbles::<K>(v, hb, s);
                _mm512_storeu_si512(out.add(2 * s).cast(), lo);
                _mm512_storeu_si512(out.add(2 * s + 1).cast(), hi);
            }
        }
        _mm512_storeu_ps(out.add(8).cast(), weight_scales::<K, FULL>(wg, n));
    }
}

/// The repacked layout of format `K` for the tile driver: rows of `units` units, the prepared
/// inputs `xs`. A group's dot starts at `-bias * isum_x` and takes `d_w * d_x` per unit; a
/// partial last group is read with masks, as the matvec reads it.
struct Repacked<'a, const K: u8> {
    units: usize,
    xs: &'a [PreparedX],
}

impl<const K: u8> TileLayout for Repacked<'_, K> {
    type X = PreparedX;
    type WFactors = __m512;
    type XFactors = __m512;
    const OPERANDS: usize = 8;
    const GROUP_VECS: usize = GROUP_VECS;

    #[inline(always)]
    fn row_bytes(&self) -> usize {
        self.units * unit_bytes(K)
    }
    #[inline(always)]
    fn groups(&self) -> (usize, usize) {
        (self.units / 16, self.units % 16)
    }
    #[inline(always)]
    fn inputs(&self) -> usize {
        self.xs.len()
    }
    #[inline(always)]
    unsafe fn input(&self, t: usize) -> PreparedX {
        self.xs[t]
    }
    #[inline(always)]
    unsafe fn unpack_row(&self, row: *const u8, out: *mut __m512i) {
        let (full, tail) = self.groups();
        // SAFETY: each group's bytes are inside the row and its 9 vectors inside `out`
        // (contract).
        unsafe {
            for g in 0..full {
                let wg = row.add(16 * g * unit_bytes(K));
                unpack_group::<K, true>(wg, 16, out.add(g * GROUP_VECS));
            }
            if tail > 0 {
                let wg = row.add(16 * full * unit_bytes(K));
                unpack_group::<K, false>(wg, tail, out.add(full * GROUP_VECS));
            }
        }
    }
    #[inline(always)]
    unsafe fn input_group(x: PreparedX, g: usize) -> PreparedX {
        // SAFETY: forwarded contract.
        unsafe { x.at(g) }
    }
    #[inline(always)]
    unsafe fn dot_init<const FULL: bool>(x: PreparedX, n: usize) -> __m512i {
        // SAFETY: the group's `n` sums (masked).
        unsafe { dot_init::<K, true>(_mm512_maskz_loadu_epi32(lanes(n), x.isum)) }
    }
    #[inline(always)]
    unsafe fn x_operand<const FULL: bool>(x: PreparedX, o: usize, n: usize) -> __m512i {
        // SAFETY: operand o's `4 n` bytes of the group (masked past them unless FULL).
        unsafe { ld::<FULL>(x.q.add(o * 4 * n), n) }
    }
    #[inline(always)]
    unsafe fn x_factors(x: PreparedX, n: usize) -> __m512 {
        // SAFETY: the group's `n` steps (masked).
        unsafe { _mm512_maskz_loadu_ps(lanes(n), x.d) }
    }
    #[inline(always)]
    unsafe fn w_factors(wg: *const __m512i) -> __m512 {
        // SAFETY: the group's scale vector (contract).
        unsafe { _mm512_loadu_ps(wg.add(8).cast()) }
    }
    #[inline(always)]
    unsafe fn scale_add(idot: __m512i, dw: __m512, dx: __m512, acc: __m512) -> __m512 {
        // SAFETY: register-only AVX-512F intrinsics.
        unsafe {
            let scale = _mm512_mul_ps(dw, dx);
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), scale, acc)
        }
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` repacked rows of format `k`
/// ([`RQ4_0`], [`RQ5_0`], [`RQ8_0`]) with `units` units each and any number of prepared inputs
/// `xs`, in register tiles of [`RW`](super::tile::RW) rows x
/// [`TI`](super::tile::TI) inputs: each output bit for bit what
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
            RQ4_0 => gemm_tiles(&Repacked::<RQ4_0> { units, xs }, w, rows, y, ldy),
            RQ5_0 => gemm_tiles(&Repacked::<RQ5_0> { units, xs }, w, rows, y, ldy),
            _ => gemm_tiles(&Repacked::<RQ8_0> { units, xs }, w, rows, y, ldy),
        }
    }
}
