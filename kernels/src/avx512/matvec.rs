//! AVX-512 bf16 matvecs (the widening ones are `crate::generic`'s): hi/lo with `vdpbf16ps`,
//! and even/odd, for one or several inputs at once.

use core::arch::x86_64::*;

use super::{lanes, prefetch_ahead};
use crate::generic::MatvecRows;

/// Columns per block of a [`pack_hilo`] input: 32 bf16 `hi` parts, then 32 bf16 `lo` parts.
pub const HILO_BLOCK: usize = 32;

/// Splits `x` for [`matvec_bf16_hilo_rows`]: `x[c] ≈ hi[c] + lo[c]` with `hi = bf16(x)` and
/// `lo = bf16(x - hi)` (round to nearest even), which keeps ~17 significant bits of `x`.
/// Block `b` of 32 columns is written as 64 bf16 at bf16 offset `64 * b` of `out`: the 32 `hi`
/// parts, then the 32 `lo` parts; columns past `x.len()` are zero.
///
/// # Safety
/// `out.len() >= x.len().next_multiple_of(32)`; the CPU must support AVX-512F/BW/VL and
/// AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn pack_hilo(x: &[f32], out: &mut [f32]) {
    let n = x.len();
    debug_assert!(out.len() >= n.next_multiple_of(HILO_BLOCK));
    let xp = x.as_ptr();
    let op = out.as_mut_ptr() as *mut u16;
    let widen = |v: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)));
    let mut c = 0;
    while c < n {
        // SAFETY: c < n, so `xp.add(c)` is inside x, and the first load reads x[c..min(n,
        // c + 16)]. The second reads x[c + 16..min(n, c + 32)]; when c + 16 >= n its mask is 0
        // and it reads nothing, but c + 16 may then lie past the end of x, so that address is
        // formed with `wrapping_add` (never dereferenced out of bounds). The two stores write
        // the block's 64 bf16 at bf16 offsets 2c..2c + 64, inside `out`: its length is at least
        // n rounded up to a block of 32 floats, i.e. 2 * (c + 32) bf16.
        unsafe {
            let a = _mm512_maskz_loadu_ps(lanes(n - c), xp.add(c));
            let b = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(c + 16)), xp.wrapping_add(c + 16));
            let hi: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            let ha = widen(_mm512_castsi512_si256(hi));
            let hb = widen(_mm512_extracti64x4_epi64::<1>(hi));
            let lo: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
                _mm512_sub_ps(b, hb),
                _mm512_sub_ps(a, ha),
            ));
            _mm512_storeu_si512(op.add(2 * c) as *mut __m512i, hi);
            _mm512_storeu_si512(op.add(2 * c + HILO_BLOCK) as *mut __m512i, lo);
        }
        c += HILO_BLOCK;
    }
}

/// [`MatvecRows`] for bf16 weights with AVX512-BF16 and `R` inputs (`R = 1`: one matvec), each
/// `xs[t]` split by [`pack_hilo`] from its `cols` columns: each 32 weights are loaded once and take
/// two `vdpbf16ps` per input (one against `hi`, one against `lo`), with exact products and f32
/// accumulation. The result is as accurate as the f32 kernel's to within ~2^-17 of `sum |w x|`, and
/// with fewer instructions per cache line of weights (no widening shuffles) it streams them ~20%
/// faster. Each input has its own four accumulators, added into in the same order and reduced the
/// same way whatever `R`, so output `t` is bit for bit the same as for input `t` alone. (`R <= 6`
/// fits the 32 registers.)
///
/// # Safety
/// `w` holds at least `rows * cols` bf16; each `xs[t]` is valid for reading
/// `cols.next_multiple_of(32)` floats of [`pack_hilo`] output; `y` is valid for writes at
/// `t * ldy + r` (`t < R`, `r < rows`) with nothing else accessing them during the call; the
/// CPU must support AVX-512F/BW/VL and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn matvec_bf16_hilo_rows<const R: usize>(m: MatvecRows<'_>, xs: [*const f32; R]) {
    let cols = m.cols;
    debug_assert!(m.w.len() >= m.rows * cols * 2);
    let x: [*const u16; R] = std::array::from_fn(|t| xs[t] as *const u16);
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512-bit vectors; every bit pattern is a valid value of either.
        unsafe { std::mem::transmute(v) }
    };
    for r in 0..m.rows {
        // SAFETY: row r < rows is inside w (contract); weight loads cover columns < cols (full
        // vectors while c + 256 <= cols, then a 16-bit lane mask per block); every packed
        // input is read in whole blocks, which it holds for every column rounded up to a
        // block; the stores go to y[t * ldy + r].
        unsafe {
            let w0 = m.row(r, 2);
            let mut a = [[_mm512_setzero_ps(); 4]; R];
            let mut c = 0;
            while c + 8 * HILO_BLOCK <= cols {
                for k in 0..8 {
                    let cc = c + HILO_BLOCK * k;
                    prefetch_ahead(w0.wrapping_add(2 * cc), 64);
                    let wv = bh(_mm512_loadu_si512(w0.add(2 * cc) as *const __m512i));
                    for t in 0..R {
                        let hi = bh(_mm512_loadu_si512(x[t].add(2 * cc) as *const __m512i));
                        let lo = bh(_mm512_loadu_si512(
                            x[t].add(2 * cc + HILO_BLOCK) as *const __m512i
                        ));
                        a[t][k % 4] = _mm512_dpbf16_ps(a[t][k % 4], wv, hi);
                        a[t][k % 4] = _mm512_dpbf16_ps(a[t][k % 4], wv, lo);
                    }
                }
                c += 8 * HILO_BLOCK;
            }
            while c < cols {
                let left = cols - c;
                let m: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
                let wv = bh(_mm512_maskz_loadu_epi16(m, w0.add(2 * c) as *const i16));
                for t in 0..R {
                    let hi = bh(_mm512_loadu_si512(x[t].add(2 * c) as *const __m512i));
                    let lo = bh(_mm512_loadu_si512(
                        x[t].add(2 * c + HILO_BLOCK) as *const __m512i
                    ));
                    a[t][0] = _mm512_dpbf16_ps(a[t][0], wv, hi);
                    a[t][1] = _mm512_dpbf16_ps(a[t][1], wv, lo);
                }
                c += HILO_BLOCK;
            }
            for (t, a) in a.iter().enumerate() {
                *m.out(t, r) = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[1]),
                    _mm512_add_ps(a[2], a[3]),
                ));
            }
        }
    }
}

/// [`MatvecRows`] for bf16 weights without widening shuffles and `R` inputs (`R = 1`: one matvec):
/// each `xs[t]` holds its `cols` columns in blocks of 32, the 16 even columns then the 16 odd ones
/// (zero past the end; see `ops::MatvecX`). 32 weights are loaded as 16 32-bit lanes; a shift left
/// by 16 gives the even weights as f32, a mask of the high half the odd ones: exact, like the
/// widening matvec, and with fewer instructions per cache line of weights. The split is made once
/// per block for every input; each input has its own accumulators, order and reduction whatever
/// `R`, so output `t` is bit for bit the same as for input `t` alone. (`R <= 6` fits.)
///
/// # Safety
/// `w` holds at least `rows * cols` bf16; each `xs[t]` is valid for reading
/// `cols.next_multiple_of(32)` floats in that layout; `y` is valid for writes at `t * ldy + r`
/// (`t < R`, `r < rows`) with nothing else accessing them during the call; the CPU must
/// support AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn matvec_bf16_evenodd_rows<const R: usize>(
    m: MatvecRows<'_>,
    xs: [*const f32; R],
) {
    let cols = m.cols;
    debug_assert!(m.w.len() >= m.rows * cols * 2);
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for r in 0..m.rows {
        // SAFETY: row r < rows is inside w (contract); weight loads cover columns < cols (full
        // vectors while c + 256 <= cols, then a 16-bit lane mask per block); every input is
        // read in whole blocks, which it holds for every column rounded up to 32; the stores
        // go to y[t * ldy + r].
        unsafe {
            let w0 = m.row(r, 2);
            let mut a = [[_mm512_setzero_ps(); 4]; R];
            let mut c = 0;
            while c + 8 * 32 <= cols {
                for k in 0..8 {
                    let cc = c + 32 * k;
                    let v = _mm512_loadu_si512(w0.add(2 * cc) as *const __m512i);
                    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                    for t in 0..R {
                        let xe = _mm512_loadu_ps(xs[t].add(cc));
                        let xo = _mm512_loadu_ps(xs[t].add(cc + 16));
                        a[t][k % 4] = _mm512_fmadd_ps(even, xe, a[t][k % 4]);
                        a[t][k % 4] = _mm512_fmadd_ps(odd, xo, a[t][k % 4]);
                    }
                }
                c += 8 * 32;
            }
            while c < cols {
                let left = cols - c;
                let m: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
                let v = _mm512_maskz_loadu_epi16(m, w0.add(2 * c) as *const i16);
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                for t in 0..R {
                    a[t][0] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xs[t].add(c)), a[t][0]);
                    a[t][1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xs[t].add(c + 16)), a[t][1]);
                }
                c += 32;
            }
            for (t, a) in a.iter().enumerate() {
                *m.out(t, r) = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[1]),
                    _mm512_add_ps(a[2], a[3]),
                ));
            }
        }
    }
}
