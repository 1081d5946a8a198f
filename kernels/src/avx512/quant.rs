//! AVX-512 matvecs on ggml block-quantized weights against 8-bit input blocks
//! ([`Q8Row`]): integer dot products (`vpdpbusd` with AVX512-VNNI, else `vpmaddubsw` +
//! `vpmaddwd`), scaled per scale unit (32 columns, 16 for Q6_K) in f32.
//!
//! A row is walked in groups of 16 scale units, one f32 lane each. A group's weights are
//! unpacked once into unsigned bytes in the input's column order (64 columns per vector), with
//! a per-unit weight scale and bias; then, for each input, the integer dots of the group's
//! vectors are reduced to one i32 per unit, and the input's accumulator takes
//! `idot * (scale * d_x) + bias * s_x` per lane (`d_x` the input block's step, `s_x` its scaled
//! sum over the unit). Each input has one accumulator, reduced once per row, and the work per
//! input is the same whichever other inputs share the call, so results do not depend on the
//! grouping of inputs. The integer dots are exact on both paths (no `vpmaddubsw` pair can
//! saturate: `|q_w| <= 128`, `|q_x| <= 127`, `2 * 128 * 127 < 2^15`), so the VNNI and the
//! plain path give the same bits.

use core::arch::x86_64::*;

use super::{lanes, prefetch_ahead};
use crate::quant::{Q8Row, QuantType};

mod tile;
mod unpack;

pub use tile::*;

use unpack::*;

/// Sums lanes of `v` in units of 8 (`unit == 32`: vector i holds units 2i, 2i+1) or of 4
/// (`unit == 16`: vector i holds units 4i..4i+4): one i32 per unit, in unit order.
#[inline(always)]
fn reduce_units(unit: usize, v: &[__m512i; 8]) -> __m512i {
    // SAFETY: register-only AVX-512F intrinsics, enabled by the calling kernel.
    unsafe {
        let pair = |a: __m512i, b: __m512i| {
            _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
        };
        let quad = |a: __m512i, b: __m512i| {
            _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
        };
        if unit == 16 {
            // chunk c, lane j: unit 4j + c
            let x = quad(pair(v[0], v[1]), pair(v[2], v[3]));
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            return _mm512_permutexvar_epi32(idx, x);
        }
        // x_k chunk c, lane j: the sum of chunk c of v[4k + j]
        let x0 = quad(pair(v[0], v[1]), pair(v[2], v[3]));
        let x1 = quad(pair(v[4], v[5]), pair(v[6], v[7]));
        let y = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(x0, x1),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(x0, x1),
        );
        // y: units 0 2 4 6 | 1 3 5 7 | 8 10 12 14 | 9 11 13 15
        let idx = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        _mm512_permutexvar_epi32(idx, y)
    }
}

/// Per unit of group `gi` (`n` units) of the input `x`: its step `d_x` and its scaled sum
/// `s_x` over the unit, one f32 lane each (0.0 past `n`).
///
/// # Safety
/// `gi` and `n` describe a group of the row `x` was quantized for; AVX-512F.
#[inline(always)]
unsafe fn unit_steps<F: Fmt>(x: &Q8Row<'_>, gi: usize, n: usize) -> (__m512, __m512) {
    // SAFETY: the input's scales and sums are read for the blocks (and half blocks) of the
    // group's columns, masked to them; the calling kernel has the features.
    unsafe {
        if F::UNIT == 32 {
            let b0 = 16 * gi;
            let dx = _mm512_maskz_loadu_ps(lanes(n), x.d.as_ptr().add(b0));
            let hs = x.half_sums.as_ptr();
            let a = _mm512_maskz_loadu_ps(lanes(2 * n), hs.add(2 * b0));
            let b = _mm512_maskz_loadu_ps(
                lanes((2 * n).saturating_sub(16)),
                hs.wrapping_add(2 * b0 + 16),
            );
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
            let sx = _mm512_add_ps(
                _mm512_permutex2var_ps(a, even, b),
                _mm512_permutex2var_ps(a, odd, b),
            );
            (dx, sx)
        } else {
            let d8 = _mm256_loadu_ps(x.d.as_ptr().add(8 * gi));
            let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            let dx = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(d8));
            (dx, _mm512_loadu_ps(x.half_sums.as_ptr().add(16 * gi)))
        }
    }
}

/// One input's contribution to its accumulator from group `gi` (`n` units) of a row.
///
/// # Safety
/// `gi` and `n` describe a group of the row `x` was quantized for; the CPU supports
/// AVX-512F/BW/VL (and AVX512-VNNI if `VNNI`).
#[inline(always)]
unsafe fn group_dot<F: Fmt, const VNNI: bool>(
    g: &Group,
    x: &Q8Row<'_>,
    gi: usize,
    n: usize,
    acc: __m512,
) -> __m512 {
    // SAFETY: the input's bytes read are columns [gi * 16 * UNIT, + n * UNIT) of its quants
    // (full vectors while they fit, then a byte mask); its scales and sums are read for the
    // blocks (and half blocks) of those columns, masked to them; the calling kernel has the
    // features.
    unsafe {
        let valid = n * F::UNIT;
        let xq = x.qs_ptr().add(gi * 16 * F::UNIT);
        let zero = _mm512_setzero_si512();
        let mut v = [zero; 8];
        for (i, vi) in v.iter_mut().enumerate() {
            if 64 * i >= valid {
                break;
            }
            let xp = xq.add(64 * i);
            let mut xv = if valid >= 64 * (i + 1) {
                _mm512_loadu_si512(xp as *const __m512i)
            } else {
                _mm512_maskz_loadu_epi8((1u64 << (valid - 64 * i)) - 1, xp)
            };
            if F::SIGNED {
                xv = _mm512_mask_sub_epi8(xv, g.neg[i], zero, xv);
            }
            *vi = if VNNI {
                _mm512_dpbusd_epi32(zero, g.q[i], xv)
            } else {
                _mm512_madd_epi16(_mm512_maddubs_epi16(g.q[i], xv), _mm512_set1_epi16(1))
            };
        }
        let idot = _mm512_cvtepi32_ps(reduce_units(F::UNIT, &v));
        let (dx, sx) = unit_steps::<F>(x, gi, n);
        let acc = _mm512_fmadd_ps(idot, _mm512_mul_ps(g.scale, dx), acc);
        if F::SIGNED {
            acc
        } else {
            _mm512_fmadd_ps(g.bias, sx, acc)
        }
    }
}

/// The kernel for format `F` and `R` inputs.
///
/// # Safety
/// As [`matvec_q`], with `R == xs.len()`; AVX512-VNNI too if `VNNI`.
#[inline(always)]
unsafe fn rows_body<F: Fmt, const VNNI: bool, const R: usize>(
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
) {
    let xs: [Q8Row<'_>; R] = std::array::from_fn(|t| xs[t]);
    let units = cols / F::UNIT;
    let groups = units.div_ceil(16);
    let rb = units * F::GROUP_BYTES / 16;
    let wp = w.as_ptr();
    for r in 0..rows {
        // SAFETY: row r < rows lies in w (contract); group gi starts inside it and holds its n
        // units; every input holds `cols` columns; y[t * ldy + r] is writable (contract).
        unsafe {
            let row = wp.add(r * rb);
            let mut acc = [_mm512_setzero_ps(); R];
            for gi in 0..groups {
                let p = row.add(gi * F::GROUP_BYTES);
                prefetch_ahead(p, F::GROUP_BYTES);
                if gi + 1 < groups || units.is_multiple_of(16) {
                    let g = F::unpack(p, 16);
                    for t in 0..R {
                        acc[t] = group_dot::<F, VNNI>(&g, &xs[t], gi, 16, acc[t]);
                    }
                } else {
                    let n = units - 16 * gi;
                    let g = F::unpack(p, n);
                    for t in 0..R {
                        acc[t] = group_dot::<F, VNNI>(&g, &xs[t], gi, n, acc[t]);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// Dispatches on the format and the number of inputs.
///
/// # Safety
/// As [`matvec_q`]; AVX512-VNNI too if `VNNI`.
#[inline(always)]
unsafe fn by_format<const VNNI: bool>(
    qt: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
) {
    macro_rules! go {
        ($f:ty) => {
            match xs.len() {
                1 => rows_body::<$f, VNNI, 1>(w, rows, cols, xs, y, ldy),
                2 => rows_body::<$f, VNNI, 2>(w, rows, cols, xs, y, ldy),
                3 => rows_body::<$f, VNNI, 3>(w, rows, cols, xs, y, ldy),
                _ => rows_body::<$f, VNNI, 4>(w, rows, cols, xs, y, ldy),
            }
        };
    }
    // SAFETY: forwarded contract.
    unsafe {
        match qt {
            QuantType::Q4_0 => go!(Q40),
            QuantType::Q5_0 => go!(Q50),
            QuantType::Q8_0 => go!(Q80),
            QuantType::Q4K => go!(Q4K),
            QuantType::Q5K => go!(Q5K),
            QuantType::Q6K => go!(Q6K),
        }
    }
}

/// Inputs one call of [`matvec_q`] takes at most.
pub const Q_GROUP: usize = 4;

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` rows of `cols` columns of `qt`
/// weights and the 1 to [`Q_GROUP`] inputs `xs` (8-bit blocks of `cols` columns): every
/// weight group is unpacked once for all inputs. With `vnni`, the integer dots use
/// `vpdpbusd`; the result is the same bits either way.
///
/// # Safety
/// `w` holds at least `rows` rows of `cols` (a whole number of `qt` blocks) weights; every
/// input was quantized from `cols` columns; `1 <= xs.len() <= Q_GROUP`; `y` is valid for
/// writes at `t * ldy + r` (`t < xs.len()`, `r < rows`) with nothing else accessing them during
/// the call; the CPU supports AVX-512F/BW/VL, AVX2, FMA and F16C, and AVX512-VNNI if `vnni`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matvec_q(
    qt: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
    vnni: bool,
) {
    debug_assert!((1..=Q_GROUP).contains(&xs.len()));
    // SAFETY: forwarded contract (VNNI support when `vnni`).
    unsafe {
        if vnni {
            with_vnni(qt, w, rows, cols, xs, y, ldy)
        } else {
            without_vnni(qt, w, rows, cols, xs, y, ldy)
        }
    }
}

/// [`matvec_q`] with `vpdpbusd`.
///
/// # Safety
/// As [`matvec_q`] with AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn with_vnni(
    qt: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: forwarded contract.
    unsafe { by_format::<true>(qt, w, rows, cols, xs, y, ldy) }
}

/// [`matvec_q`] with `vpmaddubsw` + `vpmaddwd`.
///
/// # Safety
/// As [`matvec_q`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn without_vnni(
    qt: QuantType,
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: forwarded contract.
    unsafe { by_format::<false>(qt, w, rows, cols, xs, y, ldy) }
}
