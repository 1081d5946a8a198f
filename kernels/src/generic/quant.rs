//! The matvec on ggml block-quantized weights against 8-bit input blocks ([`Q8Row`]), written
//! once over [`QSimd`]: the walk over rows, groups and inputs, the scaling and the order of
//! every f32 operation are here; the integer dot, the reductions and the unpacking are the
//! backend's.
//!
//! A row is walked in groups of scale units (32 columns, 16 for
//! Q6_K): `LANES` units for the 32-column formats, 16 for Q6_K, so one f32 lane per unit (two
//! vectors of them for Q6_K on 8 lanes). A group's weights are unpacked once into unsigned
//! bytes with a per-unit weight scale and bias; then, for each input, the integer dots are
//! reduced to one i32 per unit and the input's accumulator takes
//! `idot * (scale * d_x) + bias * s_x` per lane (`d_x` the input block's step, `s_x` its scaled
//! sum over the unit). Each input has one accumulator, reduced once per row, and its work is
//! the same whichever other inputs share the call, so results do not depend on the grouping of
//! inputs. No `vpmaddubsw` pair saturates (`|q_w| <= 128`, `|q_x| <= 127`,
//! `2 * 128 * 127 < 2^15`).

use super::qcall::{by_format, by_inputs, Matvec};
use super::qsimd::{dispatch_vnni, Group, QSimd, QUnpack};
use crate::quant::{Q8Row, QuantType};
use crate::stream::prefetch_ahead;

/// A ggml weight format of the matvec (and of the AVX-512 tiles, `avx512::quant::tile`): its
/// geometry and which unpacking it takes.
pub(crate) trait QFmt {
    /// Columns per scale unit (32, or 16 for Q6_K).
    const UNIT: usize;
    /// Columns and bytes of a ggml block.
    const BLOCK: (usize, usize);
    /// Whether the quants are signed (Q8_0): `Group::sgn` is set and `Group::bias` unused.
    const SIGNED: bool = false;
    /// Units per group on backend `B`: one f32 lane each, 16 for Q6_K.
    #[inline(always)]
    fn group_units<B: QSimd>() -> usize {
        if Self::UNIT == 32 {
            B::LANES
        } else {
            16
        }
    }
    /// Bytes of a whole group on backend `B`.
    #[inline(always)]
    fn group_bytes<B: QSimd>() -> usize {
        Self::group_units::<B>() * Self::UNIT / Self::BLOCK.0 * Self::BLOCK.1
    }
    /// Unpacks the first `n` (`1..=group_units`) units of the group at `p`.
    ///
    /// # Safety
    /// `p` points at a group with at least `n` units of bytes.
    unsafe fn unpack<B: QUnpack>(b: B, p: *const u8, n: usize) -> Group<B>;
}

/// Defines the format markers: `name, unit, (block columns, block bytes), signed, |b, p, n|
/// unpacking`.
macro_rules! formats {
    ($(
        $name:ident, $unit:literal, $block:expr, $signed:literal,
        |$b:ident, $p:ident, $n:ident| $unpack:expr;
    )*) => {
        $(
            /// A weight format marker for [`QFmt`].
            pub(crate) struct $name;
            impl QFmt for $name {
                const UNIT: usize = $unit;
                const BLOCK: (usize, usize) = $block;
                const SIGNED: bool = $signed;
                #[inline(always)]
                unsafe fn unpack<B: QUnpack>($b: B, $p: *const u8, $n: usize) -> Group<B> {
                    // SAFETY: forwarded contract.
                    unsafe { $unpack }
                }
            }
        )*
    };
}

/// Q4_0 / Q5_0 (`BB` bytes a block): the quants, the block scales `d` and the biases
/// `-off * d` (the quants' offset).
///
/// # Safety
/// As [`QFmt::unpack`].
#[inline(always)]
unsafe fn q4q5<B: QUnpack, const BB: usize, const Q5: bool>(
    b: B,
    p: *const u8,
    n: usize,
) -> Group<B> {
    // SAFETY: forwarded contract (each block starts with its f16 scale).
    unsafe {
        let mut g = b.unpack_q4q5::<Q5>(p, n);
        g.scale[0] = b.f16_lanes(p, BB, n);
        g.bias[0] = b.mul(g.scale[0], b.splat(if Q5 { -16.0 } else { -8.0 }));
        g
    }
}

formats! {
    Q40, 32, (32, 18), false, |b, p, n| q4q5::<B, 18, false>(b, p, n);
    Q50, 32, (32, 22), false, |b, p, n| q4q5::<B, 22, true>(b, p, n);
    Q80, 32, (32, 34), true, |b, p, n| {
        let mut g = b.unpack_q8_0(p, n);
        g.scale[0] = b.f16_lanes(p, 34, n);
        g
    };
    Q4K, 32, (256, 144), false, |b, p, n| b.unpack_k45::<false>(p, n);
    Q5K, 32, (256, 176), false, |b, p, n| b.unpack_k45::<true>(p, n);
    Q6K, 16, (256, 210), false, |b, p, _n| b.unpack_q6k(p);
}

/// One input's contribution to its accumulator from group `gi` (`n` units) of a row.
///
/// # Safety
/// `gi` and `n` describe a group of the row `x` was quantized for; inside the backend's
/// `vectorize` (`vectorize_vnni` with `VNNI`).
#[inline(always)]
unsafe fn group_dot<B: QUnpack, F: QFmt, const VNNI: bool>(
    b: B,
    g: &Group<B>,
    x: &Q8Row<'_>,
    gi: usize,
    n: usize,
    mut acc: B::F32,
) -> B::F32 {
    let gu = F::group_units::<B>();
    let vb = 4 * B::LANES;
    // SAFETY: the input's bytes read are columns [gi * gu * UNIT, + n * UNIT) of its quants
    // (whole vectors while they fit, then the rest of them); its steps and sums are read for
    // the blocks (and half blocks) of those columns only.
    unsafe {
        let valid = n * F::UNIT;
        let xq = x.qs_ptr().cast::<u8>().add(gi * gu * F::UNIT);
        let mut v = [b.zero_i(); 8];
        for (i, vi) in v.iter_mut().enumerate() {
            if vb * i >= valid {
                break;
            }
            let xp = xq.add(vb * i);
            let mut xv = if valid >= vb * (i + 1) {
                b.load_i(xp)
            } else {
                b.load_i_tail(xp, valid - vb * i)
            };
            if F::SIGNED {
                xv = b.apply_sign(xv, g.sgn[i]);
            }
            *vi = b.udot::<VNNI>(b.zero_i(), g.q[i], xv);
        }
        if F::UNIT == 32 {
            let idot = b.i32_to_f32(b.reduce_units(32, &v));
            let (dx, sx) = unit_steps::<B, F>(b, x, gi, n, 0);
            acc = b.fma(idot, b.mul(g.scale[0], dx), acc);
            if !F::SIGNED {
                acc = b.fma(g.bias[0], sx, acc);
            }
            return acc;
        }
        for h in 0..16 / B::LANES {
            let idot = b.i32_to_f32(b.reduce_units(16, &v[4 * h..]));
            let (dx, sx) = unit_steps::<B, F>(b, x, gi, n, h);
            acc = b.fma(idot, b.mul(g.scale[h], dx), acc);
            acc = b.fma(g.bias[h], sx, acc);
        }
        acc
    }
}

/// The input `x`'s factors for the units of vector `h` of group `gi` (`n` units) of format
/// `F`: per unit lane, its block step `d_x` and its scaled sum `s_x` over the unit (0.0 past
/// `n`). `h` is 0 but for Q6_K on a backend of fewer than 16 lanes. The one place they are
/// formed, for the matvec and for the AVX-512 tiles, which must give its bits.
///
/// # Safety
/// `gi` and `n` describe a group of the row `x` was quantized for; `h < 16 / LANES` for
/// 16-column units.
#[inline(always)]
pub(crate) unsafe fn unit_steps<B: QSimd, F: QFmt>(
    b: B,
    x: &Q8Row<'_>,
    gi: usize,
    n: usize,
    h: usize,
) -> (B::F32, B::F32) {
    let (d, hs) = (x.d.as_ptr(), x.half_sums.as_ptr());
    // SAFETY: the steps and sums read are those of the blocks (and half blocks) of the
    // group's columns only (contract).
    unsafe {
        if F::UNIT == 32 {
            let b0 = F::group_units::<B>() * gi;
            (b.load_tail(d.add(b0), n), b.pair_sums(hs.add(2 * b0), n))
        } else {
            (
                b.dup_steps(d.add(8 * gi + B::LANES / 2 * h)),
                b.load(hs.add(16 * gi + B::LANES * h)),
            )
        }
    }
}

/// The kernel for format `F` and `R` inputs.
///
/// # Safety
/// As [`matvec_q`], with `R == xs.len()`, inside the backend's `vectorize` (`vectorize_vnni`
/// with `VNNI`).
#[inline(always)]
unsafe fn rows_body<B: QUnpack, F: QFmt, const R: usize, const VNNI: bool>(b: B, m: &Matvec<'_>) {
    let Matvec {
        w,
        rows,
        cols,
        y,
        ldy,
        ..
    } = *m;
    let xs: [Q8Row<'_>; R] = m.inputs();
    let (gu, gb) = (F::group_units::<B>(), F::group_bytes::<B>());
    let units = cols / F::UNIT;
    let groups = units.div_ceil(gu);
    let rb = units * gb / gu;
    let wp = w.as_ptr();
    for r in 0..rows {
        // SAFETY: row r < rows lies in w (contract); group gi starts inside it and holds its n
        // units; every input holds `cols` columns; y[t * ldy + r] is writable (contract).
        unsafe {
            let row = wp.add(r * rb);
            let mut acc = [b.zero(); R];
            for gi in 0..groups {
                let p = row.add(gi * gb);
                prefetch_ahead(p, gb);
                if gi + 1 < groups || units.is_multiple_of(gu) {
                    let g = F::unpack(b, p, gu);
                    for t in 0..R {
                        acc[t] = group_dot::<B, F, VNNI>(b, &g, &xs[t], gi, gu, acc[t]);
                    }
                } else {
                    let n = units - gu * gi;
                    let g = F::unpack(b, p, n);
                    for t in 0..R {
                        acc[t] = group_dot::<B, F, VNNI>(b, &g, &xs[t], gi, n, acc[t]);
                    }
                }
            }
            for (t, a) in acc.iter().enumerate() {
                *y.add(t * ldy + r) = b.hsum(*a);
            }
        }
    }
}

/// The matvec `m` on `qt` weights (see [`Matvec`]): every weight group is unpacked once for
/// all inputs. With `vnni` the integer dots are `vpdpbusd`; the bits are the same either way.
///
/// # Safety
/// `m` as [`Matvec`] says, with `qt` its weights' format; with `vnni`, the CPU has the
/// backend's VNNI extension.
pub(crate) unsafe fn matvec_q<B: QUnpack>(b: B, qt: QuantType, m: Matvec<'_>, vnni: bool) {
    macro_rules! rows {
        ($vnni:literal, $f:ty, $t:literal) => {
            rows_body::<B, $f, $t, $vnni>(b, &m)
        };
    }
    macro_rules! each_input {
        ($vnni:literal, $f:ty) => {
            by_inputs!(m.xs.len(), rows!($vnni, $f,))
        };
    }
    macro_rules! each_format {
        ($vnni:literal) => {
            by_format!(qt, each_input!($vnni,))
        };
    }
    dispatch_vnni!(b, vnni, each_format!())
}
