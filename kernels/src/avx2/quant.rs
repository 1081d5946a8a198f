//! AVX2 matvecs on ggml block-quantized weights against 8-bit input blocks ([`Q8Row`]):
//! integer dot products (`vpdpbusd` where the CPU has AVX-VNNI, else `vpmaddubsw` + `vpmaddwd`),
//! scaled per scale unit (32 columns, 16 for Q6_K) in f32.
//!
//! A row is walked in groups of 8 scale units (16 for Q6_K, as two halves of 8), one f32 lane
//! each. A group's weights are unpacked once into unsigned bytes in the input's column order
//! (32 columns per vector), with a per-unit weight scale and bias; then, for each input, the
//! integer dots are reduced to one i32 per unit and the input's accumulator takes
//! `idot * (scale * d_x) + bias * s_x` per lane. Each input has one accumulator, reduced once
//! per row, and its work is the same whichever other inputs share the call, so results do not
//! depend on the grouping of inputs. No `vpmaddubsw` pair saturates (`|q_w| <= 128`,
//! `|q_x| <= 127`), so both integer dots give the same i32 sums and the same bits.

use core::arch::x86_64::*;

use super::{hsum, mask8, prefetch_ahead};
use crate::quant::{Q8Row, QuantType};

mod unpack;

use unpack::*;

/// Sums lanes of `v` in units of 8 (`unit == 32`: vector i is unit i) or of 4 (`unit == 16`:
/// vector i holds units 2i, 2i+1): one i32 per unit, in unit order.
#[inline(always)]
fn reduce_units(unit: usize, v: &[__m256i]) -> __m256i {
    // SAFETY: register-only AVX2 intrinsics, enabled by the calling kernel.
    unsafe {
        let h = _mm256_hadd_epi32;
        if unit == 16 {
            // 128-bit lane 0: units 0 2 4 6, lane 1: units 1 3 5 7
            let s = h(h(v[0], v[1]), h(v[2], v[3]));
            return _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        }
        // lane 0: sums of the low halves of v[0..4], lane 1: of their high halves
        let s0 = h(h(v[0], v[1]), h(v[2], v[3]));
        let s1 = h(h(v[4], v[5]), h(v[6], v[7]));
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(s0, s1),
            _mm256_permute2x128_si256::<0x31>(s0, s1),
        )
    }
}

/// The four `u8 × i8` products of each i32 lane of `w` and `x`, summed: `vpdpbusd` with `VNNI`
/// (the caller's target features include AVX-VNNI), else `vpmaddubsw` + `vpmaddwd`.
#[inline(always)]
fn udot<const VNNI: bool>(w: __m256i, x: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 (and, with VNNI, AVX-VNNI) intrinsics, enabled by the calling
    // kernel.
    unsafe {
        if VNNI {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
        }
    }
}

/// One input's contribution to its accumulator from group `gi` (`n` units) of a row.
///
/// # Safety
/// `gi` and `n` describe a group of the row `x` was quantized for; AVX2, FMA (and AVX-VNNI
/// with `VNNI`).
#[inline(always)]
unsafe fn group_dot<F: Fmt, const VNNI: bool>(
    g: &Group,
    x: &Q8Row<'_>,
    gi: usize,
    n: usize,
    mut acc: __m256,
) -> __m256 {
    // SAFETY: the input's bytes read are columns [gi * UNITS * UNIT, + n * UNIT) (whole
    // vectors: a unit of 32 is one vector, Q6_K groups are whole); its scales and sums are
    // read for the blocks (and half blocks) of those columns, masked to them.
    unsafe {
        let xq = x.qs_ptr().add(gi * F::UNITS * F::UNIT);
        let mut v = [_mm256_setzero_si256(); 8];
        for (i, vi) in v.iter_mut().enumerate() {
            if 32 * i >= n * F::UNIT {
                break;
            }
            let mut xv = _mm256_loadu_si256(xq.add(32 * i) as *const __m256i);
            if F::SIGNED {
                xv = _mm256_sign_epi8(xv, g.sgn[i]);
            }
            *vi = udot::<VNNI>(g.q[i], xv);
        }
        let (d, hs) = (x.d.as_ptr(), x.half_sums.as_ptr());
        if F::UNIT == 32 {
            let b0 = 8 * gi;
            let idot = _mm256_cvtepi32_ps(reduce_units(32, &v));
            let dx = _mm256_maskload_ps(d.add(b0), mask8(n));
            let a = _mm256_maskload_ps(hs.add(2 * b0), mask8(2 * n));
            let b = _mm256_maskload_ps(
                hs.wrapping_add(2 * b0 + 8),
                mask8((2 * n).saturating_sub(8)),
            );
            let sx = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                _mm256_hadd_ps(a, b),
            )));
            acc = _mm256_fmadd_ps(idot, _mm256_mul_ps(g.scale[0], dx), acc);
            if !F::SIGNED {
                acc = _mm256_fmadd_ps(g.bias[0], sx, acc);
            }
            return acc;
        }
        let dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        for h in 0..2 {
            let idot = _mm256_cvtepi32_ps(reduce_units(16, &v[4 * h..4 * h + 4]));
            let d4 = _mm256_castps128_ps256(_mm_loadu_ps(d.add(8 * gi + 4 * h)));
            let dx = _mm256_permutevar8x32_ps(d4, dup);
            let sx = _mm256_loadu_ps(hs.add(16 * gi + 8 * h));
            acc = _mm256_fmadd_ps(idot, _mm256_mul_ps(g.scale[h], dx), acc);
            acc = _mm256_fmadd_ps(g.bias[h], sx, acc);
        }
        acc
    }
}

/// The kernel for format `F` and `R` inputs.
///
/// # Safety
/// As [`matvec_q`], with `R == xs.len()` and `VNNI == vnni`.
#[inline(always)]
unsafe fn rows_body<F: Fmt, const R: usize, const VNNI: bool>(
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[Q8Row<'_>],
    y: *mut f32,
    ldy: usize,
) {
    let xs: [Q8Row<'_>; R] = std::array::from_fn(|t| xs[t]);
    let units = cols / F::UNIT;
    let groups = units.div_ceil(F::UNITS);
    let rb = units * F::GROUP_BYTES / F::UNITS;
    let wp = w.as_ptr();
    for r in 0..rows {
        // SAFETY: row r < rows lies in w (contract); group gi starts inside it and holds its n
        // units; every input holds `cols` columns; y[t * ldy + r] is writable (contract).
        unsafe {
            let row = wp.add(r * rb);
            let mut acc = [_mm256_setzero_ps(); R];
            for gi in 0..groups {
                let p = row.add(gi * F::GROUP_BYTES);
                prefetch_ahead(p, F::GROUP_BYTES);
                if gi + 1 < groups || units.is_multiple_of(F::UNITS) {
                    let g = F::unpack(p, F::UNITS);
                    for t in 0..R {
                        acc[t] = group_dot::<F, VNNI>(&g, &xs[t], gi, F::UNITS, acc[t]);
                    }
                } else {
                    let n = units - F::UNITS * gi;
                    let g = F::unpack(p, n);
                    for t in 0..R {
                        acc[t] = group_dot::<F, VNNI>(&g, &xs[t], gi, n, acc[t]);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                *y.add(t * ldy + r) = hsum(*a);
            }
        }
    }
}

/// Inputs one call of [`matvec_q`] takes at most.
pub const Q_GROUP: usize = 4;

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` rows of `cols` columns of `qt`
/// weights and the 1 to [`Q_GROUP`] inputs `xs` (8-bit blocks of `cols` columns): every
/// weight group is unpacked once for all inputs. With `vnni` the integer dots are `vpdpbusd`;
/// the bits are the same either way.
///
/// # Safety
/// `w` holds at least `rows` rows of `cols` (a whole number of `qt` blocks) weights; every
/// input was quantized from `cols` columns; `1 <= xs.len() <= Q_GROUP`; `y` is valid for
/// writes at `t * ldy + r` (`t < xs.len()`, `r < rows`) with nothing else accessing them during
/// the call; the CPU supports AVX2, FMA and F16C, and AVX-VNNI if `vnni`.
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
    // SAFETY: forwarded contract (AVX-VNNI support when `vnni`).
    unsafe {
        if vnni {
            with_vnni(qt, w, rows, cols, xs, y, ldy)
        } else {
            without_vnni(qt, w, rows, cols, xs, y, ldy)
        }
    }
}

/// Defines a [`matvec_q`] body compiled for the given target features and integer dot.
macro_rules! matvec_fn {
    ($name:ident, $features:literal, $vnni:literal) => {
        /// [`matvec_q`] for one setting of `vnni`.
        ///
        /// # Safety
        /// As [`matvec_q`]; the CPU supports the enabled features.
        #[target_feature(enable = $features)]
        unsafe fn $name(
            qt: QuantType,
            w: &[u8],
            rows: usize,
            cols: usize,
            xs: &[Q8Row<'_>],
            y: *mut f32,
            ldy: usize,
        ) {
            debug_assert!((1..=Q_GROUP).contains(&xs.len()));
            macro_rules! go {
                ($f:ty) => {
                    match xs.len() {
                        1 => rows_body::<$f, 1, $vnni>(w, rows, cols, xs, y, ldy),
                        2 => rows_body::<$f, 2, $vnni>(w, rows, cols, xs, y, ldy),
                        3 => rows_body::<$f, 3, $vnni>(w, rows, cols, xs, y, ldy),
                        _ => rows_body::<$f, 4, $vnni>(w, rows, cols, xs, y, ldy),
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
    };
}

matvec_fn!(with_vnni, "avx2,fma,f16c,avxvnni", true);
matvec_fn!(without_vnni, "avx2,fma,f16c", false);
