//! AVX-512 matvec on Q4_0 / Q5_0 / Q8_0 weights in the repacked layout of
//! [`crate::quant::repack`], against inputs prepared in the same layout
//! (`ops::prepare_repacked_x`).
//!
//! Per group of 16 units, lane `u` of every 32-bit vector belongs to unit `u`: the 8 operand
//! dots (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`) accumulate each unit's whole integer dot in
//! its lane, starting from `-bias * isum_x` (the weights' unsigned offset times the input
//! unit's integer sum), so the lane ends with `sum q_w * q_x` for the signed weight quants.
//! Each (row, input) pair keeps one f32 accumulator that takes `idot * (d_w * d_x)` per group
//! (one fma) and is reduced once per row. The operations per pair are the same whichever other
//! rows and inputs share the call, and the integer dots are exact on both paths, so results
//! do not depend on the grouping nor on VNNI.
//!
//! The plain path's `vpmaddubsw` must not saturate: Q4_0 / Q5_0 operands are at most 31
//! (`2 * 31 * 127 < 2^15`); Q8_0's `q + 128` could reach 255, so there the signed `q` is
//! split into `|q|` (at most 128) and the input's bytes negated where `q < 0`
//! (`2 * 128 * 127 < 2^15`), which gives the signed dot directly, without the bias.

use core::arch::x86_64::*;

use super::{lanes, prefetch, PREFETCH_BYTES};
use crate::generic::{by_inputs, dispatch_vnni, QSimd};
use crate::simd::avx512::Avx512;
use crate::simd::Simd;

/// Format codes for the kernels' const parameter.
pub const RQ4_0: u8 = 0;
/// Q5_0.
pub const RQ5_0: u8 = 1;
/// Q8_0.
pub const RQ8_0: u8 = 2;

/// Inputs one call of [`matvec_repacked`] takes at most.
pub const RQ_GROUP: usize = 4;

/// Bytes per unit of format `K` (ggml's block bytes).
pub(super) const fn unit_bytes(k: u8) -> usize {
    match k {
        RQ4_0 => 18,
        RQ5_0 => 22,
        _ => 34,
    }
}

/// One prepared input, as pointers into its `ops::repacked_x_len` words: quant bytes (group
/// `g` at byte `512 g`, operand `o` of a group of `n` units at `4 n o`), then per unit its
/// integer sum and its step `d_x`.
#[derive(Clone, Copy)]
pub struct PreparedX {
    /// Quant bytes.
    pub q: *const u8,
    /// Per unit: the integer sum of its 32 quants.
    pub isum: *const i32,
    /// Per unit: the step `d_x`.
    pub d: *const f32,
}

impl PreparedX {
    /// The same input from group `g` on.
    ///
    /// # Safety
    /// The input holds group `g`.
    #[inline(always)]
    pub(super) unsafe fn at(self, g: usize) -> PreparedX {
        // SAFETY: group g's bytes, sums and steps are inside the input (contract).
        unsafe {
            PreparedX {
                q: self.q.add(512 * g),
                isum: self.isum.add(16 * g),
                d: self.d.add(16 * g),
            }
        }
    }
}

/// 64 bytes at `p` (`FULL`), or the first `4 n` of them (the rest zero).
///
/// # Safety
/// Those bytes are readable; the CPU has AVX-512F.
#[inline(always)]
pub(super) unsafe fn ld<const FULL: bool>(p: *const u8, n: usize) -> __m512i {
    // SAFETY: the caller guarantees the bytes read are readable; masked-off lanes are not.
    unsafe {
        if FULL {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi32(lanes(n), p.cast())
        }
    }
}

/// Where each unit lane's integer dot starts for format `K`, from the input's unit sums
/// `isum`: `-bias * isum`, the weights' unsigned offset (8, 16, or Q8_0's 128 where `VNNI`
/// reads `q + 128`; the plain path reads Q8_0 signed and starts at 0).
///
/// # Safety
/// AVX-512F.
#[inline(always)]
pub(super) unsafe fn dot_init<const K: u8, const VNNI: bool>(isum: __m512i) -> __m512i {
    // SAFETY: register-only AVX-512F intrinsics.
    unsafe {
        let zero = _mm512_setzero_si512();
        match K {
            RQ4_0 => _mm512_sub_epi32(zero, _mm512_slli_epi32::<3>(isum)),
            RQ5_0 => _mm512_sub_epi32(zero, _mm512_slli_epi32::<4>(isum)),
            _ if VNNI => _mm512_sub_epi32(zero, _mm512_slli_epi32::<7>(isum)),
            _ => zero,
        }
    }
}

/// The operands `2 s` and `2 s + 1` of a Q4_0 / Q5_0 group as unsigned bytes: the low and
/// high nibbles of its packed vector `v`, plus 16 where Q5_0's fifth bits `hb` have bit `2 s`
/// (low) or `2 s + 1` (high).
///
/// # Safety
/// AVX-512F/BW.
#[inline(always)]
pub(super) unsafe fn nibbles<const K: u8>(v: __m512i, hb: __m512i, s: usize) -> [__m512i; 2] {
    // SAFETY: register-only AVX-512F/BW intrinsics.
    unsafe {
        let low = _mm512_set1_epi8(0x0f);
        let sixteen = _mm512_set1_epi8(16);
        let mut lo = _mm512_and_si512(v, low);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
        if K == RQ5_0 {
            let bl = _mm512_set1_epi8(1 << (2 * s));
            let bh = _mm512_set1_epi8(2 << (2 * s));
            lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hb, bl), lo, sixteen);
            hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(hb, bh), hi, sixteen);
        }
        [lo, hi]
    }
}

/// The unit scales `d_w` of the group of `n` units (16 if `FULL`) at `wg` as f32, 0.0 past
/// `n`.
///
/// # Safety
/// `wg` points at a group of `n` units of format `K`; AVX-512F/BW/VL and F16C.
#[inline(always)]
pub(super) unsafe fn weight_scales<const K: u8, const FULL: bool>(
    wg: *const u8,
    n: usize,
) -> __m512 {
    // SAFETY: the steps are the group's last `2 n` bytes (masked past them unless FULL).
    unsafe {
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
        _mm512_cvtph_ps(dh)
    }
}

/// One group (`n` units, all 16 if `FULL`) of `RW` rows against `T` inputs.
///
/// # Safety
/// `wg[r]` points at the group in a repacked row of format `K`; `xs[t]` at the same group of a
/// prepared input (its `q` at the group's first byte, `isum` and `d` at its first unit); the
/// CPU has AVX-512F/BW/VL, F16C (and AVX512-VNNI if `VNNI`).
#[inline(always)]
unsafe fn group<
    const K: u8,
    const VNNI: bool,
    const T: usize,
    const RW: usize,
    const FULL: bool,
>(
    b: Avx512,
    wg: &[*const u8; RW],
    xs: &[PreparedX; T],
    n: usize,
    pf: usize,
    acc: &mut [[__m512; T]; RW],
) {
    // SAFETY: every offset below stays inside the group (`unit_bytes(K) * n` bytes of weights,
    // `32 n` quant bytes and `n` sums and steps per input), loads past `4 n` bytes of an
    // operand are masked off unless FULL (n == 16); the features are enabled by the kernel.
    unsafe {
        let m = lanes(n);
        let zero = _mm512_setzero_si512();
        let step = 4 * n;
        let mut dx = [_mm512_setzero_ps(); T];
        let mut init = [zero; T];
        for t in 0..T {
            dx[t] = _mm512_maskz_loadu_ps(m, xs[t].d);
            init[t] = dot_init::<K, VNNI>(_mm512_maskz_loadu_epi32(m, xs[t].isum));
        }
        let mut idot = [init; RW];
        if K == RQ8_0 {
            let flip = _mm512_set1_epi8(-128);
            for o in 0..8 {
                let mut xv = [zero; T];
                for t in 0..T {
                    xv[t] = ld::<FULL>(xs[t].q.add(o * step), n);
                }
                for r in 0..RW {
                    let v = ld::<FULL>(wg[r].add(o * step), n);
                    prefetch(wg[r].wrapping_add(o * step + pf));
                    if VNNI {
                        for t in 0..T {
                            idot[r][t] = b.udot::<true>(idot[r][t], v, xv[t]);
                        }
                    } else {
                        let q = _mm512_xor_si512(v, flip);
                        let neg = _mm512_movepi8_mask(q);
                        let a = _mm512_abs_epi8(q);
                        for t in 0..T {
                            let sx = _mm512_mask_sub_epi8(xv[t], neg, zero, xv[t]);
                            idot[r][t] = b.udot::<false>(idot[r][t], a, sx);
                        }
                    }
                }
            }
        } else {
            let mut hb = [zero; RW];
            if K == RQ5_0 {
                for r in 0..RW {
                    hb[r] = ld::<FULL>(wg[r].add(16 * n), n);
                    prefetch(wg[r].wrapping_add(16 * n + pf));
                }
            }
            for s in 0..4 {
                let mut xl = [zero; T];
                let mut xh = [zero; T];
                for t in 0..T {
                    xl[t] = ld::<FULL>(xs[t].q.add(2 * s * step), n);
                    xh[t] = ld::<FULL>(xs[t].q.add((2 * s + 1) * step), n);
                }
                for r in 0..RW {
                    let v = ld::<FULL>(wg[r].add(s * step), n);
                    prefetch(wg[r].wrapping_add(s * step + pf));
                    let [lo, hi] = nibbles::<K>(v, hb[r], s);
                    for t in 0..T {
                        idot[r][t] = b.udot::<VNNI>(idot[r][t], lo, xl[t]);
                        idot[r][t] = b.udot::<VNNI>(idot[r][t], hi, xh[t]);
                    }
                }
            }
        }
        for r in 0..RW {
            let dw = weight_scales::<K, FULL>(wg[r], n);
            for t in 0..T {
                let scale = _mm512_mul_ps(dw, dx[t]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot[r][t]), scale, acc[r][t]);
            }
        }
    }
}

/// `RW` rows starting at row `r` against `T` inputs.
///
/// # Safety
/// As [`matvec_repacked`], with `r + RW <= rows`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_n<const K: u8, const VNNI: bool, const T: usize, const RW: usize>(
    b: Avx512,
    w: *const u8,
    units: usize,
    r: usize,
    xs: &[PreparedX; T],
    y: *mut f32,
    ldy: usize,
) {
    let rb = units * unit_bytes(K);
    let full = units / 16;
    let tail = units % 16;
    // Prefetch distance: PREFETCH_BYTES on in the stream of rows (one row ahead, as this was
    // first, measured slower on an Emerald Rapids Xeon: see PREFETCH_BYTES).
    let pf = PREFETCH_BYTES;
    // SAFETY: rows r..r + RW lie in w, every group offset in them is inside the row, and every
    // prepared input holds `units` units (contract); y[t * ldy + r + i] is writable (contract).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); T]; RW];
        let at = |g: usize| -> ([*const u8; RW], [PreparedX; T]) {
            let wg = std::array::from_fn(|i| w.add((r + i) * rb + 16 * g * unit_bytes(K)));
            (wg, std::array::from_fn(|t| xs[t].at(g)))
        };
        for g in 0..full {
            let (wg, xg) = at(g);
            group::<K, VNNI, T, RW, true>(b, &wg, &xg, 16, pf, &mut acc);
        }
        if tail > 0 {
            let (wg, xg) = at(full);
            group::<K, VNNI, T, RW, false>(b, &wg, &xg, tail, pf, &mut acc);
        }
        for (i, ai) in acc.iter().enumerate() {
            for (t, a) in ai.iter().enumerate() {
                *y.add(t * ldy + r + i) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` repacked rows of format `k`
/// ([`RQ4_0`], [`RQ5_0`], [`RQ8_0`]) with `units` units each, and the 1 to [`RQ_GROUP`]
/// prepared inputs `xs`. With `vnni` the dots use `vpdpbusd`; the bits are the same either way.
///
/// # Safety
/// `w` is valid for reading `rows` repacked rows of `units` units of format `k`; every input's
/// pointers cover its prepared `units` units; `1 <= xs.len() <= RQ_GROUP`; `y` is valid for
/// writes at `t * ldy + r` (`t < xs.len()`, `r < rows`) with nothing else accessing them during
/// the call; the CPU supports AVX-512F/BW/VL, AVX2, FMA and F16C, and AVX512-VNNI if `vnni`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matvec_repacked(
    k: u8,
    w: *const u8,
    rows: usize,
    units: usize,
    xs: &[PreparedX],
    y: *mut f32,
    ldy: usize,
    vnni: bool,
) {
    debug_assert!((1..=RQ_GROUP).contains(&xs.len()));
    // SAFETY: the CPU has the AVX-512 features (contract).
    let b = unsafe { Avx512::new_unchecked() };
    // Every row, one at a time, against the `T` inputs: `rows_n` can run two rows per pass
    // (each input vector load feeding both), which is a little faster while the matrix sits in
    // cache, but streaming from DRAM (where decode reads every matrix from) the two
    // interleaved rows ran the Q8_0 output head at half the ggml-layout kernel's speed even
    // with the prefetch; one row at a time matches or beats it (Zen 4).
    macro_rules! each_row {
        ($k:expr, $vnni:literal, $t:literal) => {{
            let xs: [PreparedX; $t] = std::array::from_fn(|t| xs[t]);
            for r in 0..rows {
                rows_n::<$k, $vnni, $t, 1>(b, w, units, r, &xs, y, ldy);
            }
        }};
    }
    macro_rules! by_format {
        ($vnni:literal) => {
            match k {
                RQ4_0 => by_inputs!(xs.len(), each_row!(RQ4_0, $vnni,)),
                RQ5_0 => by_inputs!(xs.len(), each_row!(RQ5_0, $vnni,)),
                _ => by_inputs!(xs.len(), each_row!(RQ8_0, $vnni,)),
            }
        };
    }
    dispatch_vnni!(b, vnni, by_format!())
}
