//! AVX512-VNNI register tiles for many inputs against one ggml block-quantized matrix (Q4_0,
//! Q5_0, Q4_K, Q5_K, Q6_K): the many-row decode step as a GEMM.
//!
//! The matvec ([`crate::generic::matvec_q`]) dots a group's column-ordered vectors and then
//! reduces 8 (or 4) lanes to one per scale unit, for every (row, input) pair. Here both sides
//! are put once into *operand order* instead: operand vector `o` holds, in 32-bit lane `u`,
//! the 4 bytes `4 o .. 4 o + 4` of unit `u` of the group, so chained `vpdpbusd` over the
//! operands leave each lane with its unit's whole integer dot, with no reduction. Each weight
//! group is unpacked and reordered once per call (for all inputs), each input once per call
//! ([`prepare_q_tile_x`]); the tile driver ([`crate::avx512::tile`]) then runs blocks of
//! rows x inputs with their accumulators in registers over the whole row. This module is the
//! ggml layout of that driver ([`Ggml`]).
//!
//! Every (row, input) pair does the float operations of the matvec in the same order: per
//! group, `cvt(idot) * (scale * d_x)` then `bias * s_x` fused into its 16-lane accumulator
//! (the integer dot is exact whichever way it is summed; `scale`, `bias`, `d_x`, `s_x` are
//! the matvec's own vectors, tail lanes included), `_mm512_reduce_add_ps` at the end. So each
//! output is bit for bit the matvec's on that input alone.

use core::arch::x86_64::*;
use core::marker::PhantomData;

use crate::avx512::tile::{gemm_tiles, TileLayout};
use crate::generic::{unit_steps, QFmt, QSimd, Q40, Q4K, Q50, Q5K, Q6K};
use crate::ops::q_tile_x_len;
use crate::quant::{Q8Row, QuantType};
use crate::simd::avx512::Avx512;
use crate::stream::prefetch_ahead;

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

/// Stores one group at `out` as the tile reads it: its operands `v` (column order) in
/// operand order, then its two factor vectors `f`.
///
/// # Safety
/// `out` is valid for writes of `group_vecs::<F>()` vectors; AVX-512F.
#[inline(always)]
unsafe fn store_group<F: QFmt>(mut v: [__m512i; 8], f: [__m512; 2], out: *mut __m512i) {
    // SAFETY: the writes are the group's vectors (contract).
    unsafe {
        let v_n = operands::<F>();
        if v_n == 8 {
            to_operands::<8>(&mut v);
        } else {
            to_operands::<4>(&mut v);
        }
        for (i, vi) in v.iter().enumerate().take(v_n) {
            _mm512_storeu_si512(out.add(i).cast(), *vi);
        }
        _mm512_storeu_ps(out.add(v_n).cast(), f[0]);
        _mm512_storeu_ps(out.add(v_n + 1).cast(), f[1]);
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
        for gi in 0..units.div_ceil(16) {
            let n = (units - 16 * gi).min(16);
            let valid = n * F::UNIT;
            let xq = x.qs_ptr().cast::<u8>().add(gi * 16 * F::UNIT);
            let mut v = [b.zero_i(); 8];
            for (i, vi) in v.iter_mut().enumerate().take(operands::<F>()) {
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
            let (dx, sx) = unit_steps::<Avx512, F>(b, x, gi, n, 0);
            store_group::<F>(v, [dx, sx], out.add(gi * group_vecs::<F>()));
        }
    }
}

/// The ggml layout of format `F` for the tile driver: rows of `units` units of `F`, the `n`
/// inputs prepared at `px` (input `t` at `px + t * per`). Every group runs whole: the unpacked
/// weights and the prepared inputs are zero past a partial group's units, and its factors
/// are the matvec's own vectors, tail lanes included. A group's dot starts at 0 and takes
/// `cvt(idot) * (scale * d_x)`, then `bias * s_x`.
struct Ggml<F> {
    b: Avx512,
    units: usize,
    n: usize,
    px: *const f32,
    per: usize,
    format: PhantomData<F>,
}

impl<F: QFmt> TileLayout for Ggml<F> {
    type X = *const __m512i;
    /// Scale and bias.
    type WFactors = [__m512; 2];
    /// `d_x` and `s_x`.
    type XFactors = [__m512; 2];
    const OPERANDS: usize = operands::<F>();
    const GROUP_VECS: usize = group_vecs::<F>();

    #[inline(always)]
    fn row_bytes(&self) -> usize {
        self.units * F::group_bytes::<Avx512>() / 16
    }
    #[inline(always)]
    fn groups(&self) -> (usize, usize) {
        (self.units.div_ceil(16), 0)
    }
    #[inline(always)]
    fn inputs(&self) -> usize {
        self.n
    }
    #[inline(always)]
    unsafe fn input(&self, t: usize) -> *const __m512i {
        // SAFETY: input t's words start there (contract).
        unsafe { self.px.add(t * self.per).cast() }
    }
    #[inline(always)]
    unsafe fn unpack_row(&self, row: *const u8, out: *mut __m512i) {
        let gb = F::group_bytes::<Avx512>();
        // SAFETY: each group's bytes are inside the row and its vectors inside `out`
        // (contract); the prefetch touches no memory.
        unsafe {
            for gi in 0..self.groups().0 {
                let p = row.add(gi * gb);
                prefetch_ahead(p, gb);
                let nu = (self.units - 16 * gi).min(16);
                let g = F::unpack(self.b, p, nu);
                let f = [g.scale[0], g.bias[0]];
                store_group::<F>(g.q, f, out.add(gi * group_vecs::<F>()));
            }
        }
    }
    #[inline(always)]
    unsafe fn input_group(x: *const __m512i, g: usize) -> *const __m512i {
        // SAFETY: forwarded contract.
        unsafe { x.add(g * group_vecs::<F>()) }
    }
    #[inline(always)]
    unsafe fn dot_init<const FULL: bool>(_: *const __m512i, _: usize) -> __m512i {
        // SAFETY: register-only AVX-512F intrinsic.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn x_operand<const FULL: bool>(x: *const __m512i, o: usize, _: usize) -> __m512i {
        // SAFETY: one of the group's vectors (contract).
        unsafe { _mm512_loadu_si512(x.add(o).cast()) }
    }
    #[inline(always)]
    unsafe fn x_factors(x: *const __m512i, _: usize) -> [__m512; 2] {
        // SAFETY: the group's factor vectors (contract).
        unsafe { factors::<F>(x) }
    }
    #[inline(always)]
    unsafe fn w_factors(wg: *const __m512i) -> [__m512; 2] {
        // SAFETY: the group's factor vectors (contract).
        unsafe { factors::<F>(wg) }
    }
    #[inline(always)]
    unsafe fn scale_add(
        idot: __m512i,
        [scale, bias]: [__m512; 2],
        [dx, sx]: [__m512; 2],
        acc: __m512,
    ) -> __m512 {
        // SAFETY: register-only AVX-512F intrinsics.
        unsafe {
            let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), _mm512_mul_ps(scale, dx), acc);
            _mm512_fmadd_ps(bias, sx, a)
        }
    }
}

/// The two factor vectors after the operands of a group at `g` (weights or an input).
///
/// # Safety
/// `g` points at a group's `group_vecs::<F>()` vectors; AVX-512F.
#[inline(always)]
unsafe fn factors<F: QFmt>(g: *const __m512i) -> [__m512; 2] {
    // SAFETY: the group's last two vectors (contract).
    unsafe {
        let v_n = operands::<F>();
        [
            _mm512_loadu_ps(g.add(v_n).cast()),
            _mm512_loadu_ps(g.add(v_n + 1).cast()),
        ]
    }
}

/// `$body` with the type `$f` the format marker of `qt`, which is not Q8_0 (`$what` names the
/// caller in the panic if it is).
macro_rules! with_format {
    ($qt:expr, $what:literal, $f:ident => $body:expr) => {
        with_format!(@table $qt, $what, $f => $body;
            Q4_0: Q40, Q5_0: Q50, Q4K: Q4K, Q5K: Q5K, Q6K: Q6K)
    };
    (@table $qt:expr, $what:literal, $f:ident => $body:expr; $($v:ident: $m:ident),*) => {
        match $qt {
            $(QuantType::$v => {
                type $f = $m;
                $body
            })*
            QuantType::Q8_0 => unreachable!(concat!($what, ": Q8_0 is not tiled")),
        }
    };
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
    with_format!(qt, "prepare_q_tile_x", F => {
        for (t, x) in xs.iter().enumerate() {
            // SAFETY: forwarded contract; input t's words are inside `out`.
            unsafe { prepare_x::<F>(b, x, cols, out.add(t * per).cast()) }
        }
    })
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` rows of `cols` columns of `qt`
/// weights and the `n` inputs prepared at `px` by [`prepare_q_tile_x`], in register blocks of
/// [`RW`](crate::avx512::tile::RW) rows x [`TI`](crate::avx512::tile::TI) inputs: each output
/// bit for bit what [`crate::generic::matvec_q`] gives its input alone.
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
    // SAFETY: the CPU has the features (contract).
    let b = unsafe { Avx512::new_unchecked() };
    with_format!(qt, "gemm_q_tile", F => {
        let layout = Ggml::<F> {
            b,
            units: cols / F::UNIT,
            n,
            px,
            per: q_tile_x_len(cols),
            format: PhantomData,
        };
        // SAFETY: forwarded contract: `w` holds `rows` rows of `cols`, whose unpacked groups
        // fit the buffer; `px` the `n` prepared inputs.
        unsafe { gemm_tiles(&layout, w.as_ptr(), rows, y, ldy) }
    })
}
