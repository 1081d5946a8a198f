//! AVX-512 bodies (512-bit, AVX-512F/BW/VL plus FMA and F16C). Same names and contracts as
//! [`crate::scalar`]; [`crate::ops`] checks buffer lengths before calling in here.
//!
//! Every load is unaligned; tails use masked loads/stores (masked-off lanes never fault), so no
//! body reads or writes a byte outside the slices it was given. Where a fixed group of vectors
//! runs past the end (the second vector of a pair, the last ones of a four-vector block), the
//! masks of the vectors past the end are all zero and their addresses are formed with
//! `wrapping_add`: such a pointer may lie beyond the allocation, where `add` would be undefined
//! behaviour, but an all-zero mask makes the intrinsic touch no memory through it.

use core::arch::x86_64::*;

use crate::dtype::{Dtype, WeightType};
use crate::ops::AttnTile;

/// Lane mask selecting the first `n` (`<= 16`) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 16 weights of dtype `W` starting at element `i` of `p`, widened to f32.
///
/// # Safety
/// `p` must be valid for reading elements `i..i + 16`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn ld<W: WeightType>(p: *const u8, i: usize) -> __m512 {
    // SAFETY: the caller guarantees elements i..i+16 are readable; loads are unaligned.
    unsafe {
        match W::DTYPE {
            Dtype::F32 => _mm512_loadu_ps(p.add(4 * i) as *const f32),
            Dtype::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i)),
            Dtype::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.add(2 * i) as *const __m256i),
            ))),
        }
    }
}

/// Like [`ld`], but only the lanes in `m` are read (the others are 0.0).
///
/// # Safety
/// `p` must be valid for reading the selected elements of `i..i + 16`, and element `i` must lie
/// inside (or one past the end of) `p`'s allocation, as it does whenever `m` selects lane 0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn ld_mask<W: WeightType>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: `p.add(SIZE * i)` stays inside the allocation (element i is in it or one past it,
    // by the contract); masked-off lanes are not accessed (fault suppression) and the selected
    // ones are readable by the contract.
    unsafe {
        match W::DTYPE {
            Dtype::F32 => _mm512_maskz_loadu_ps(m, p.add(4 * i) as *const f32),
            Dtype::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16)),
            Dtype::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(m, p.add(2 * i) as *const i16),
            ))),
        }
    }
}

/// Vectorized `exp`, within ~1 ulp of the correctly rounded result over the whole f32 range:
/// `exp(x) = 2^n * p(r)`, `r = x - n ln2` (Cody-Waite split), `p` a degree-7 Taylor polynomial
/// (truncation error < 0.15 ulp on `|r| <= ln2/2`), scaled with `vscalefps`, which rounds once
/// into the subnormal range, saturates to +inf above ~88.72 and to 0 below ~-103.97. NaN stays
/// NaN.
///
/// # Safety
/// The CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn exp_ps(x: __m512) -> __m512 {
    // min/max return their second operand when either is NaN: keep x second.
    let x = _mm512_min_ps(_mm512_set1_ps(89.0), x);
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 720.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 120.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(p, n)
}

/// `sum(a[i] * b[i])` over `n` elements of two raw pointers.
///
/// # Safety
/// `a` and `b` must be valid for reading `n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn dot_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every access below is to elements < n of a and b (full vectors while i+64 <= n
    // or i+16 <= n, masked lanes for the tail).
    unsafe {
        while i + 64 <= n {
            for (j, a_j) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                *a_j = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(o)), _mm512_loadu_ps(b.add(o)), *a_j);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m = lanes(n - i);
            acc[1] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a.add(i)),
                _mm512_maskz_loadu_ps(m, b.add(i)),
                acc[1],
            );
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// `y[r] = sum_c w[r, c] * x[c]`, one row at a time with eight accumulators.
///
/// Each row is read as one sequential stream, front to back: on the EPYC machines this was
/// tuned on, that reaches ~95% of a plain streaming read, while interleaving four rows (four
/// concurrent streams) reached under half of it.
///
/// # Safety
/// `w` must hold at least `y.len() * x.len()` elements of `W`; the CPU must support
/// AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn matvec<W: WeightType>(w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    debug_assert!(w.len() >= y.len() * cols * W::SIZE);
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let rb = cols * W::SIZE; // bytes per row
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r is inside w (length checked by the caller); full vectors are read while
        // c + 128 (then c + 16) <= cols, and the tail is masked to the columns left.
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [_mm512_setzero_ps(); 8];
            let mut c = 0;
            while c + 128 <= cols {
                for (k, acc) in a.iter_mut().enumerate() {
                    let cc = c + 16 * k;
                    *acc = _mm512_fmadd_ps(ld::<W>(w0, cc), _mm512_loadu_ps(xp.add(cc)), *acc);
                }
                c += 128;
            }
            while c + 16 <= cols {
                a[0] = _mm512_fmadd_ps(ld::<W>(w0, c), _mm512_loadu_ps(xp.add(c)), a[0]);
                c += 16;
            }
            if c < cols {
                let m = lanes(cols - c);
                let xv = _mm512_maskz_loadu_ps(m, xp.add(c));
                a[1] = _mm512_fmadd_ps(ld_mask::<W>(w0, c, m), xv, a[1]);
            }
            let s01 = _mm512_add_ps(a[0], a[1]);
            let s23 = _mm512_add_ps(a[2], a[3]);
            let s45 = _mm512_add_ps(a[4], a[5]);
            let s67 = _mm512_add_ps(a[6], a[7]);
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(s01, s23),
                _mm512_add_ps(s45, s67),
            ));
        }
    }
}

/// Columns per block of a [`pack_hilo`] input: 32 bf16 `hi` parts, then 32 bf16 `lo` parts.
pub const HILO_BLOCK: usize = 32;

/// Splits `x` for [`matvec_bf16_hilo`]: `x[c] ≈ hi[c] + lo[c]` with `hi = bf16(x)` and
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

/// `y[r] = sum_c w[r, c] * x[c]` for bf16 weights with AVX512-BF16: `xp` is `x` split by
/// [`pack_hilo`], and each 32 weights take two `vdpbf16ps` (one against `hi`, one against `lo`),
/// with exact products and f32 accumulation. The result is as accurate as the f32 kernel's to
/// within ~2^-17 of `sum |w x|`, and with fewer instructions per cache line of weights (no
/// widening shuffles) it streams them ~20% faster.
///
/// # Safety
/// `w` holds at least `y.len() * cols` bf16, `xp` was filled by [`pack_hilo`] from `cols`
/// columns; the CPU must support AVX-512F/BW/VL and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn matvec_bf16_hilo(w: &[u8], xp: &[f32], cols: usize, y: &mut [f32]) {
    debug_assert!(w.len() >= y.len() * cols * 2 && xp.len() >= cols.next_multiple_of(HILO_BLOCK));
    let x = xp.as_ptr() as *const u16;
    let wp = w.as_ptr();
    let rb = cols * 2; // bytes per row
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512-bit vectors; every bit pattern is a valid value of either.
        unsafe { std::mem::transmute(v) }
    };
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r is inside w (the contract); weight loads cover columns < cols (full
        // vectors while c + 32 <= cols, then a 16-bit lane mask); the packed input is read in
        // whole blocks, which `xp` holds for every column rounded up to a block.
        unsafe {
            let w0 = wp.add(r * rb);
            // hi and lo products go into the same accumulators: every instruction per cache
            // line of weights counts (fewer of them keep more lines in flight), and 8 blocks
            // per iteration keep the loop and per-row overhead small.
            let mut a = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c + 8 * HILO_BLOCK <= cols {
                for k in 0..8 {
                    let cc = c + HILO_BLOCK * k;
                    let wv = bh(_mm512_loadu_si512(w0.add(2 * cc) as *const __m512i));
                    let hi = bh(_mm512_loadu_si512(x.add(2 * cc) as *const __m512i));
                    let lo = bh(_mm512_loadu_si512(
                        x.add(2 * cc + HILO_BLOCK) as *const __m512i
                    ));
                    a[k % 4] = _mm512_dpbf16_ps(a[k % 4], wv, hi);
                    a[k % 4] = _mm512_dpbf16_ps(a[k % 4], wv, lo);
                }
                c += 8 * HILO_BLOCK;
            }
            // (constant accumulator indices only: a runtime index would keep `a` in memory)
            while c < cols {
                let left = cols - c;
                let m: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
                let wv = bh(_mm512_maskz_loadu_epi16(m, w0.add(2 * c) as *const i16));
                let hi = bh(_mm512_loadu_si512(x.add(2 * c) as *const __m512i));
                let lo = bh(_mm512_loadu_si512(
                    x.add(2 * c + HILO_BLOCK) as *const __m512i
                ));
                a[0] = _mm512_dpbf16_ps(a[0], wv, hi);
                a[1] = _mm512_dpbf16_ps(a[1], wv, lo);
                c += HILO_BLOCK;
            }
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(a[0], a[1]),
                _mm512_add_ps(a[2], a[3]),
            ));
        }
    }
}

/// `y[r] = sum_c w[r, c] * x[c]` for bf16 weights without widening shuffles: `xp` holds `x` in
/// blocks of 32 columns, the 16 even columns then the 16 odd ones (zero past the end; see
/// `ops::MatvecX`). 32 weights are loaded as 16 32-bit lanes; a shift left by 16 gives the even
/// weights as f32, a mask of the high half the odd ones: exact, like [`matvec`], and with
/// fewer instructions per cache line of weights.
///
/// # Safety
/// `w` holds at least `y.len() * cols` bf16, `xp` at least `cols` rounded up to 32 floats in
/// that layout; the CPU must support AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn matvec_bf16_evenodd(w: &[u8], xp: &[f32], cols: usize, y: &mut [f32]) {
    debug_assert!(w.len() >= y.len() * cols * 2 && xp.len() >= cols.next_multiple_of(32));
    let x = xp.as_ptr();
    let wp = w.as_ptr();
    let rb = cols * 2;
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r is inside w (the contract); weight loads cover columns < cols (full
        // vectors while c + 32 <= cols, then a 16-bit lane mask); xp is read in whole blocks,
        // which it holds for every column rounded up to 32.
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c + 8 * 32 <= cols {
                for k in 0..8 {
                    let cc = c + 32 * k;
                    let v = _mm512_loadu_si512(w0.add(2 * cc) as *const __m512i);
                    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                    a[k % 4] = _mm512_fmadd_ps(even, _mm512_loadu_ps(x.add(cc)), a[k % 4]);
                    a[k % 4] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(x.add(cc + 16)), a[k % 4]);
                }
                c += 8 * 32;
            }
            while c < cols {
                let left = cols - c;
                let m: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
                let v = _mm512_maskz_loadu_epi16(m, w0.add(2 * c) as *const i16);
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                let odd = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                a[0] = _mm512_fmadd_ps(even, _mm512_loadu_ps(x.add(c)), a[0]);
                a[1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(x.add(c + 16)), a[1]);
                c += 32;
            }
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(a[0], a[1]),
                _mm512_add_ps(a[2], a[3]),
            ));
        }
    }
}

/// [`matvec`] for `R` inputs at once: `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `t < R`,
/// `r < rows`, where `x_t` is `cols` floats at `xs[t]`. Each weight vector is loaded (and
/// widened) once and multiplied into all `R` inputs. Every input keeps the accumulators of
/// [`matvec`] and adds into them in the same order, with the same final reduction, so output
/// `t` is bit for bit what [`matvec`] computes for `x_t` alone. (8 accumulators per input:
/// `R <= 3` fits the 32 registers.)
///
/// # Safety
/// `w` holds at least `rows * cols` elements of `W`; each `xs[t]` is valid for reading `cols`
/// floats; `y` is valid for writes at `t * ldy + r` (`t < R`, `r < rows`) with nothing else
/// accessing them during the call; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
pub unsafe fn matvec_rows<W: WeightType, const R: usize>(
    w: &[u8],
    rows: usize,
    xs: [*const f32; R],
    cols: usize,
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(w.len() >= rows * cols * W::SIZE);
    let wp = w.as_ptr();
    let rb = cols * W::SIZE;
    for r in 0..rows {
        // SAFETY: row r < rows is inside w (contract); full vectors are read while c + 128
        // (then c + 16) <= cols, the tail masked to the columns left, from the weights and
        // from every input (each valid for cols floats); the stores go to y[t * ldy + r].
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [[_mm512_setzero_ps(); 8]; R];
            let mut c = 0;
            while c + 128 <= cols {
                for k in 0..8 {
                    let cc = c + 16 * k;
                    let wv = ld::<W>(w0, cc);
                    for t in 0..R {
                        a[t][k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs[t].add(cc)), a[t][k]);
                    }
                }
                c += 128;
            }
            while c + 16 <= cols {
                let wv = ld::<W>(w0, c);
                for t in 0..R {
                    a[t][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs[t].add(c)), a[t][0]);
                }
                c += 16;
            }
            if c < cols {
                let m = lanes(cols - c);
                let wv = ld_mask::<W>(w0, c, m);
                for t in 0..R {
                    let xv = _mm512_maskz_loadu_ps(m, xs[t].add(c));
                    a[t][1] = _mm512_fmadd_ps(wv, xv, a[t][1]);
                }
            }
            for (t, a) in a.iter().enumerate() {
                let s01 = _mm512_add_ps(a[0], a[1]);
                let s23 = _mm512_add_ps(a[2], a[3]);
                let s45 = _mm512_add_ps(a[4], a[5]);
                let s67 = _mm512_add_ps(a[6], a[7]);
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(s01, s23),
                    _mm512_add_ps(s45, s67),
                ));
            }
        }
    }
}

/// [`matvec_bf16_hilo`] for `R` inputs at once, each `xs[t]` packed by [`pack_hilo`] from
/// `cols` columns: every 32 weights are loaded once and go through `vdpbf16ps` against each
/// input's `hi` and `lo` parts. Each input keeps [`matvec_bf16_hilo`]'s four accumulators,
/// adds into them in the same order and is reduced the same way, so output `t` is bit for bit
/// [`matvec_bf16_hilo`]'s for input `t` alone. (`R <= 6` fits the 32 registers.)
///
/// # Safety
/// `w` holds at least `rows * cols` bf16; each `xs[t]` is valid for reading
/// `cols.next_multiple_of(32)` floats of [`pack_hilo`] output; `y` is valid for writes at
/// `t * ldy + r` (`t < R`, `r < rows`) with nothing else accessing them during the call; the
/// CPU must support AVX-512F/BW/VL and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
pub unsafe fn matvec_bf16_hilo_rows<const R: usize>(
    w: &[u8],
    rows: usize,
    xs: [*const f32; R],
    cols: usize,
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(w.len() >= rows * cols * 2);
    let x: [*const u16; R] = std::array::from_fn(|t| xs[t] as *const u16);
    let wp = w.as_ptr();
    let rb = cols * 2;
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512-bit vectors; every bit pattern is a valid value of either.
        unsafe { std::mem::transmute(v) }
    };
    for r in 0..rows {
        // SAFETY: row r < rows is inside w (contract); weight loads cover columns < cols (full
        // vectors while c + 256 <= cols, then a 16-bit lane mask per block); every packed
        // input is read in whole blocks, which it holds for every column rounded up to a
        // block; the stores go to y[t * ldy + r].
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [[_mm512_setzero_ps(); 4]; R];
            let mut c = 0;
            while c + 8 * HILO_BLOCK <= cols {
                for k in 0..8 {
                    let cc = c + HILO_BLOCK * k;
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
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[1]),
                    _mm512_add_ps(a[2], a[3]),
                ));
            }
        }
    }
}

/// [`matvec_bf16_evenodd`] for `R` inputs at once (each `xs[t]` in its even/odd layout): the
/// 32 weights of a block are loaded and split into even and odd f32 once, then multiplied into
/// every input. Same accumulators, order and reduction per input as [`matvec_bf16_evenodd`],
/// so output `t` is bit for bit its result for input `t` alone. (`R <= 6` fits.)
///
/// # Safety
/// `w` holds at least `rows * cols` bf16; each `xs[t]` is valid for reading
/// `cols.next_multiple_of(32)` floats in that layout; `y` is valid for writes at `t * ldy + r`
/// (`t < R`, `r < rows`) with nothing else accessing them during the call; the CPU must
/// support AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
pub unsafe fn matvec_bf16_evenodd_rows<const R: usize>(
    w: &[u8],
    rows: usize,
    xs: [*const f32; R],
    cols: usize,
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(w.len() >= rows * cols * 2);
    let wp = w.as_ptr();
    let rb = cols * 2;
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for r in 0..rows {
        // SAFETY: row r < rows is inside w (contract); weight loads cover columns < cols (full
        // vectors while c + 256 <= cols, then a 16-bit lane mask per block); every input is
        // read in whole blocks, which it holds for every column rounded up to 32; the stores
        // go to y[t * ldy + r].
        unsafe {
            let w0 = wp.add(r * rb);
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
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[1]),
                    _mm512_add_ps(a[2], a[3]),
                ));
            }
        }
    }
}

/// Vectors (of 16 columns) per packed panel of the f32 matmul.
const NV: usize = 2;
/// Weight rows per packed panel of the f32 matmul.
const NR: usize = 16 * NV;
/// Tokens per microkernel tile: `MR * NV` accumulators.
const MR: usize = 6;
/// Depth of a packed panel: `KC * NR` f32 = 16 KiB, half of L1d. (Tuned on Zen 4: 6x64 tiles
/// and 256-deep panels measured the same, within 2%, at ~91% of FMA peak.)
const KC: usize = 128;
/// Floats of the packed weight panel [`matmul_strided`] needs from its caller.
pub const MATMUL_PACK: usize = KC * NR;

/// Transposes a 16×16 block of f32: `r[i]` holds row `i`; on return `r[c]` holds column `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Per 128-bit lane L, u[4g + m] holds column 4L + m of rows 4g..4g+4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (
            _mm512_castps_pd(t[4 * g]),
            _mm512_castps_pd(t[4 * g + 1]),
            _mm512_castps_pd(t[4 * g + 2]),
            _mm512_castps_pd(t[4 * g + 3]),
        );
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for m in 0..4 {
        let v = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
        let w = _mm512_shuffle_f32x4::<0xDD>(u[m], u[4 + m]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
        let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + m], u[12 + m]);
        r[m] = _mm512_shuffle_f32x4::<0x88>(v, v2);
        r[8 + m] = _mm512_shuffle_f32x4::<0xDD>(v, v2);
        r[4 + m] = _mm512_shuffle_f32x4::<0x88>(w, w2);
        r[12 + m] = _mm512_shuffle_f32x4::<0xDD>(w, w2);
    }
}

/// Packs rows `0..nr` (`nr <= NR`), columns `k0..k0 + kc` of `w` (row-major, `k` per row)
/// transposed into `buf[kk * NR + j]` as f32, zero for `j >= nr`: 16×16 blocks are widened and
/// transposed in registers.
///
/// # Safety
/// `w` must be valid for `nr` rows of `k` elements of `W`; `k0 + kc <= k`, `kc <= KC`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pack<W: WeightType>(
    w: *const u8,
    k: usize,
    k0: usize,
    kc: usize,
    nr: usize,
    buf: &mut [f32; KC * NR],
) {
    let rb = k * W::SIZE;
    let bp = buf.as_mut_ptr();
    for jh in (0..NR).step_by(16) {
        let mut kk = 0;
        while kk < kc {
            let m = lanes(kc - kk);
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                if jh + i < nr {
                    // SAFETY: row jh+i < nr is inside w; lanes masked below column k0+kc <= k.
                    *ri = unsafe { ld_mask::<W>(w.add((jh + i) * rb), k0 + kk, m) };
                }
            }
            transpose16(&mut r);
            for (q, rq) in r.iter().enumerate().take((kc - kk).min(16)) {
                // SAFETY: (kk + q) < kc <= KC, jh + 16 <= NR: inside buf.
                unsafe { _mm512_storeu_ps(bp.add((kk + q) * NR + jh), *rq) };
            }
            kk += 16;
        }
    }
}

/// Writes the `R` × `nr` tile held in `acc` (vector `v` of row `t`: columns `16v..16v + 16`) to
/// `y`, or adds it to what `y` holds unless this is the `first` depth block.
///
/// # Safety
/// `y` valid for reads and writes of `R` rows of `ldy` floats at columns `0..nr`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn store_tile<const R: usize, const V: usize>(
    acc: &[[__m512; V]; R],
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    for (t, a) in acc.iter().enumerate() {
        for (v, &av) in a.iter().enumerate() {
            let m = lanes(nr.saturating_sub(16 * v));
            // SAFETY: the masked load and store touch only row t < R, columns 16v..min(nr,
            // 16v + 16) of y, valid by the contract. When 16v >= nr the mask is 0 and nothing
            // is touched, but y + t * ldy + 16v may then lie past the end of y's allocation
            // (the last row of a narrow output), so that address is formed with `wrapping_add`.
            unsafe {
                let yp = y.wrapping_add(t * ldy + 16 * v);
                let sum = if first {
                    av
                } else {
                    _mm512_add_ps(av, _mm512_maskz_loadu_ps(m, yp))
                };
                _mm512_mask_storeu_ps(yp, m, sum);
            }
        }
    }
}

/// The register-blocked microkernel: `R` tokens (`R <= MR`) × `NR` packed weight rows over `kc`
/// of depth. `y[t * ldy + j] (+)= sum_kk x[t * ldx + kk] * buf[kk * NR + j]` for `j < nr`;
/// stores (first depth block) or accumulates into `y`.
///
/// # Safety
/// `x` valid for `R` rows of `ldx` floats with `kc` readable in each; `y` valid for writes to
/// `R` rows of `ldy` floats at columns `0..nr`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const R: usize>(
    buf: &[f32; KC * NR],
    kc: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let bp = buf.as_ptr();
    // SAFETY: kk < kc <= KC keeps buf accesses in bounds; x accesses are rows < R, columns < kc.
    unsafe {
        for kk in 0..kc {
            let mut b = [_mm512_setzero_ps(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(bp.add(kk * NR + 16 * v));
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(t * ldx + kk));
                for v in 0..NV {
                    a[v] = _mm512_fmadd_ps(xv, b[v], a[v]);
                }
            }
        }
    }
    // SAFETY: `y` is valid for these R rows and nr columns by this function's contract.
    unsafe { store_tile(&acc, y, ldy, nr, first) }
}

/// `y[t * ldy + j] = sum_c w[j, c] * x[t * k + c]` for `t < n`, `j < rows`: the matmul of
/// [`crate::scalar::matmul`] writing a column block of a wider output (`ldy >= rows`).
///
/// # Safety
/// `w` must hold `rows * k` elements of `W`, `x` at least `n * k` floats, `y` must be valid for
/// writes at `t * ldy + j` for `t < n`, `j < rows` with nothing else accessing those elements;
/// `k > 0`; `panel` holds at least [`MATMUL_PACK`] floats (the packed panel; any contents).
/// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_strided<W: WeightType>(
    w: &[u8],
    k: usize,
    x: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    rows: usize,
    panel: &mut [f32],
) {
    debug_assert!(w.len() >= rows * k * W::SIZE && x.len() >= n * k && k > 0);
    if n < 3 {
        // Too few tokens to amortize packing: stream the weights once per token.
        for t in 0..n {
            // SAFETY: row t of y has `rows` writable floats at t*ldy (contract); x row t exists.
            unsafe {
                let yt = std::slice::from_raw_parts_mut(y.add(t * ldy), rows);
                matvec::<W>(w, &x[t * k..(t + 1) * k], yt);
            }
        }
        return;
    }
    let buf: &mut [f32; KC * NR] = (&mut panel[..KC * NR])
        .try_into()
        .expect("matmul: pack scratch too short");
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let mut j0 = 0;
    while j0 < rows {
        let nr = (rows - j0).min(NR);
        let mut k0 = 0;
        while k0 < k {
            let kc = (k - k0).min(KC);
            // SAFETY: rows j0..j0+nr of w exist, k0+kc <= k.
            unsafe { pack::<W>(wp.add(j0 * k * W::SIZE), k, k0, kc, nr, buf) };
            let mut t0 = 0;
            while t0 < n {
                let mr = (n - t0).min(MR);
                // SAFETY: tokens t0..t0+mr < n, columns k0..k0+kc < k of x; y rows t0..t0+mr,
                // columns j0..j0+nr < rows, writable by the contract.
                unsafe {
                    let xt = xp.add(t0 * k + k0);
                    let yt = y.add(t0 * ldy + j0);
                    let f = k0 == 0;
                    match mr {
                        6 => micro::<6>(buf, kc, xt, k, yt, ldy, nr, f),
                        5 => micro::<5>(buf, kc, xt, k, yt, ldy, nr, f),
                        4 => micro::<4>(buf, kc, xt, k, yt, ldy, nr, f),
                        3 => micro::<3>(buf, kc, xt, k, yt, ldy, nr, f),
                        2 => micro::<2>(buf, kc, xt, k, yt, ldy, nr, f),
                        _ => micro::<1>(buf, kc, xt, k, yt, ldy, nr, f),
                    }
                }
                t0 += mr;
            }
            k0 += kc;
        }
        j0 += nr;
    }
}

/// `sum(x²)` for rmsnorm.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn sumsq(x: &[f32]) -> f32 {
    // SAFETY: same slice twice.
    unsafe { dot_raw(x.as_ptr(), x.as_ptr(), x.len()) }
}

/// `out[i] = x[i] * inv * w[i]`.
///
/// # Safety
/// `w` holds `x.len()` elements of `W`; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scale_mul<W: WeightType>(x: &[f32], inv: f32, w: &[u8], out: &mut [f32]) {
    let n = x.len();
    let vi = _mm512_set1_ps(inv);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in x, w and out.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
            let r = _mm512_mul_ps(_mm512_mul_ps(v, vi), ld_mask::<W>(w.as_ptr(), i, m));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, r);
        }
        i += 16;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Safety
/// `weight` holds `x.len()` elements of `wdtype`, `out.len() == x.len()`; the CPU must support
/// AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn rmsnorm(x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        let ss = sumsq(x) / x.len() as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        match wdtype {
            Dtype::F32 => scale_mul::<crate::F32>(x, inv, weight, out),
            Dtype::F16 => scale_mul::<crate::F16>(x, inv, weight, out),
            Dtype::BF16 => scale_mul::<crate::Bf16>(x, inv, weight, out),
        }
    }
}

/// `y[i] += b[i]`.
///
/// # Safety
/// `b` holds `y.len()` elements of `W`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn add_w<W: WeightType>(y: &mut [f32], b: &[u8]) {
    let n = y.len();
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in y and b.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), ld_mask::<W>(b.as_ptr(), i, m));
            _mm512_mask_storeu_ps(p, m, v);
        }
        i += 16;
    }
}

/// `y[i] += b[i]` with `b` of dtype `bdtype`.
///
/// # Safety
/// `b` holds `y.len()` elements of `bdtype`; the CPU must support AVX-512F/BW/VL, AVX2, FMA, F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn add_bias(y: &mut [f32], b: &[u8], bdtype: Dtype) {
    // SAFETY: forwarded contract.
    unsafe {
        match bdtype {
            Dtype::F32 => add_w::<crate::F32>(y, b),
            Dtype::F16 => add_w::<crate::F16>(y, b),
            Dtype::BF16 => add_w::<crate::Bf16>(y, b),
        }
    }
}

/// `y[i] += x[i]`.
///
/// # Safety
/// `x.len() >= y.len()`; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn add(y: &mut [f32], x: &[f32]) {
    // SAFETY: x has at least y.len() floats, read as f32 bytes.
    unsafe {
        let xb = std::slice::from_raw_parts(x.as_ptr() as *const u8, y.len() * 4);
        add_w::<crate::F32>(y, xb)
    }
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
///
/// # Safety
/// `up.len() >= gate.len()`; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in gate and up.
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            let g = _mm512_maskz_loadu_ps(m, p);
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            let e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
            _mm512_mask_storeu_ps(p, m, r);
        }
        i += 16;
    }
}

/// Largest element (NaN ignored; -inf for an empty slice).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn max_of(x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut m0 = ninf;
    let mut m1 = ninf;
    let mut i = 0;
    // SAFETY: full vectors while i + 32 <= n, masked tail (masked lanes read as -inf).
    unsafe {
        while i + 32 <= n {
            // max(v, acc) returns acc when v is NaN.
            m0 = _mm512_max_ps(_mm512_loadu_ps(x.as_ptr().add(i)), m0);
            m1 = _mm512_max_ps(_mm512_loadu_ps(x.as_ptr().add(i + 16)), m1);
            i += 32;
        }
        while i < n {
            let m = lanes(n - i);
            m0 = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, m, x.as_ptr().add(i)), m0);
            i += 16;
        }
    }
    _mm512_reduce_max_ps(_mm512_max_ps(m0, m1))
}

/// In-place softmax; returns `max + ln(sum(exp(x - max)))`.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn softmax(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let n = x.len();
    // SAFETY: all accesses are masked to lanes below n.
    unsafe {
        let max = max_of(x);
        let vm = _mm512_set1_ps(max);
        let p = x.as_mut_ptr();
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vm));
            let e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16)), vm));
            _mm512_storeu_ps(p.add(i), e0);
            _mm512_storeu_ps(p.add(i + 16), e1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            i += 32;
        }
        while i < n {
            let m = lanes(n - i);
            let e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vm));
            _mm512_mask_storeu_ps(p.add(i), m, e);
            s0 = _mm512_mask_add_ps(s0, m, s0, e);
            i += 16;
        }
        let sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        let inv = _mm512_set1_ps(1.0 / sum);
        let mut i = 0;
        while i < n {
            let m = lanes(n - i);
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(v, inv));
            i += 16;
        }
        max + sum.ln()
    }
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
///
/// # Safety
/// `cos` and `sin` hold at least `head_dim / 2` floats; the CPU must support AVX-512F/BW/VL,
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    if head_dim == 0 {
        return;
    }
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let h = head.as_mut_ptr();
        let mut i = 0;
        while i < half {
            let m = lanes(half - i);
            // SAFETY: lanes i..i+16 masked below half: inside head (twice) and the tables.
            unsafe {
                let a = _mm512_maskz_loadu_ps(m, h.add(i));
                let b = _mm512_maskz_loadu_ps(m, h.add(i + half));
                let c = _mm512_maskz_loadu_ps(m, cos.as_ptr().add(i));
                let s = _mm512_maskz_loadu_ps(m, sin.as_ptr().add(i));
                // Separate multiplies (no FMA) to round exactly like the scalar reference.
                let ra = _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s));
                let rb = _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s));
                _mm512_mask_storeu_ps(h.add(i), m, ra);
                _mm512_mask_storeu_ps(h.add(i + half), m, rb);
            }
            i += 16;
        }
    }
}

/// `out[..hd] = sum_p s[p] * v[p * hd..]` over `len` rows, four vectors of `out` at a time.
///
/// # Safety
/// `s` holds `len` floats, `v` `len * hd`, `out` `hd`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn weighted_sum(
    s: *const f32,
    v: *const f32,
    len: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut o = 0;
    while o < hd {
        let ms = [
            lanes(hd - o),
            lanes(hd.saturating_sub(o + 16)),
            lanes(hd.saturating_sub(o + 32)),
            lanes(hd.saturating_sub(o + 48)),
        ];
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: s[p] for p < len is inside s. o < hd, so `v.add(p * hd + o)` is inside row
        // p < len of v. Vector j reads v[p * hd + o + 16j..] and writes out[o + 16j..], masked
        // to columns below hd: inside v's row p and out. A vector with o + 16j >= hd has mask 0
        // and touches nothing, but its address may lie past the end of v (last row) or out, so
        // those addresses are formed with `wrapping_add`.
        unsafe {
            for p in 0..len {
                let sp = _mm512_set1_ps(*s.add(p));
                let vp = v.add(p * hd + o);
                for j in 0..4 {
                    let x = _mm512_maskz_loadu_ps(ms[j], vp.wrapping_add(16 * j));
                    acc[j] = _mm512_fmadd_ps(sp, x, acc[j]);
                }
            }
            for j in 0..4 {
                _mm512_mask_storeu_ps(out.wrapping_add(o + 16 * j), ms[j], acc[j]);
            }
        }
        o += 64;
    }
}

/// One query head against `len = keys.len() / q.len()` cached positions:
/// `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` floats, `scores` at least `len`, `out.len() == q.len()`; the CPU
/// must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    if hd == 0 {
        return;
    }
    let len = keys.len() / hd;
    if len == 0 {
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    // SAFETY: key p < len is inside keys; the other buffers are sized by the contract.
    unsafe {
        for p in 0..len {
            *scores.get_unchecked_mut(p) =
                dot_raw(q.as_ptr(), keys.as_ptr().add(p * hd), hd) * scale;
        }
        softmax(&mut scores[..len]);
        weighted_sum(scores.as_ptr(), values.as_ptr(), len, hd, out.as_mut_ptr());
    }
}

/// Vectors (of 16 columns) per packed panel of the `vdpbf16ps` matmul.
const NVB: usize = 4;
/// Weight rows per packed panel of the `vdpbf16ps` matmul.
const NRB: usize = 16 * NVB;
/// Tokens per `vdpbf16ps` microkernel tile: `MRB * NVB` accumulators.
const MRB: usize = 6;
/// bf16 pairs (along k) per packed panel: `KCP * NRB` u32 = 112 KiB, which stays in L2 while
/// the tiles stream it; 448 pairs hold all of Qwen2.5-0.5B's hidden=896 in one depth block, so
/// `y` is written once. (Tuned on Zen 4: 6x64 tiles at 448 pairs beat 12x32, 8x48 and 9x48,
/// and shallower panels, by 2-15%.)
const KCP: usize = 448;
/// Floats of the packed weight panel [`matmul_bf16dot_strided`] needs from its caller (one
/// bf16 pair per float).
pub const BF16DOT_PACK: usize = KCP * NRB;

/// Packs bf16 weight rows `0..nr`, elements `k0..k0 + 2 * kcp` (clipped to `k`, zero beyond) as
/// k-pairs: `buf[p * NRB + j] = w[j, k0 + 2p] | w[j, k0 + 2p + 1] << 16`, zero for `j >= nr`.
///
/// # Safety
/// `w` must be valid for `nr` rows of `k` bf16 elements; `k0 < k`, `kcp <= KCP`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pack_pairs(
    w: *const u8,
    k: usize,
    k0: usize,
    kcp: usize,
    nr: usize,
    buf: &mut [f32; KCP * NRB],
) {
    let rb = k * 2;
    let elems = (k - k0).min(2 * kcp);
    let bp = buf.as_mut_ptr();
    for jb in (0..NRB).step_by(16) {
        let mut e = 0;
        while e < elems {
            let cnt = (elems - e).min(32);
            let m: __mmask32 = if cnt >= 32 { !0 } else { (1u32 << cnt) - 1 };
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                if jb + i < nr {
                    // SAFETY: row jb+i < nr is inside w; the mask reads elements k0+e.. < k only.
                    *ri = _mm512_castsi512_ps(unsafe {
                        _mm512_maskz_loadu_epi16(
                            m,
                            w.add((jb + i) * rb + (k0 + e) * 2) as *const i16,
                        )
                    });
                }
            }
            // r[i] holds 16 pairs of row jb+i; after the transpose r[c] holds pair c of 16 rows.
            transpose16(&mut r);
            let p0 = e / 2;
            for (c, rc) in r.iter().enumerate().take(kcp - p0) {
                // SAFETY: pair p0+c < kcp <= KCP, columns jb..jb+16 <= NRB: inside buf.
                unsafe { _mm512_storeu_ps(bp.add((p0 + c) * NRB + jb), *rc) };
            }
            e += 32;
        }
    }
}

/// `vdpbf16ps` microkernel: `R` tokens × `NRB` columns over `kcp` k-pairs; `xb[t * ldx + p]`
/// holds token `t`'s activations `2p, 2p + 1` as a bf16 pair. Stores (`first`) or accumulates
/// into `y[t * ldy + j]`, `j < nr`.
///
/// # Safety
/// `xb` valid for reading `R` rows of `ldx` pairs with `kcp` in each; `y` valid for writes to
/// `R` rows of `ldy` floats at columns `0..nr`; the CPU must support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_bf16<const R: usize>(
    buf: &[f32; KCP * NRB],
    kcp: usize,
    xb: *const u32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NVB]; R];
    let bp = buf.as_ptr();
    // SAFETY: p < kcp <= KCP keeps buf in bounds; xb rows t < R hold kcp pairs (contract).
    unsafe {
        for p in 0..kcp {
            // (a loop, not a closure: closures do not inherit `target_feature`)
            let mut b = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NVB];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    bp.add(p * NRB + 16 * v) as *const __m512i,
                ));
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*xb.add(t * ldx + p) as i32));
                for v in 0..NVB {
                    a[v] = _mm512_dpbf16_ps(a[v], xv, b[v]);
                }
            }
        }
    }
    // SAFETY: `y` is valid for these R rows and nr columns by this function's contract.
    unsafe { store_tile(&acc, y, ldy, nr, first) }
}

/// [`matmul_strided`] for bf16 weights with AVX512-BF16 `vdpbf16ps`: activations are ROUNDED TO
/// BF16 (round to nearest even) before the products, which are accumulated in f32. About twice
/// the throughput of the f32 path, with a relative error of up to ~2^-8 of `sum |w x|`.
///
/// # Safety
/// As [`matmul_strided`] with `W = Bf16`, except that the activations come as `xb`, filled by
/// [`pack_x_pairs`] from `n` rows of `k`, and `panel` holds at least [`BF16DOT_PACK`] floats
/// (the packed panel; any contents); the CPU must also support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_bf16dot_strided(
    w: &[u8],
    k: usize,
    xb: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    rows: usize,
    panel: &mut [f32],
) {
    let kp = k.div_ceil(2);
    debug_assert!(w.len() >= rows * k * 2 && xb.len() >= n * kp && k > 0);
    let buf: &mut [f32; KCP * NRB] = (&mut panel[..KCP * NRB])
        .try_into()
        .expect("matmul_bf16dot: pack scratch too short");
    let xb = xb.as_ptr() as *const u32;
    let wp = w.as_ptr();
    let mut j0 = 0;
    while j0 < rows {
        let nr = (rows - j0).min(NRB);
        let mut k0 = 0;
        while k0 < k {
            let kc = (k - k0).min(2 * KCP);
            let kcp = kc.div_ceil(2);
            // SAFETY: rows j0..j0+nr of w exist, k0 < k.
            unsafe { pack_pairs(wp.add(j0 * k * 2), k, k0, kcp, nr, buf) };
            let mut t0 = 0;
            while t0 < n {
                let mr = (n - t0).min(MRB);
                // SAFETY: y rows t0..t0+mr < n, columns j0..j0+nr < rows, writable by contract;
                // xb rows t0..t0+mr hold pairs k0/2..k0/2+kcp <= kp.
                unsafe {
                    let yt = y.add(t0 * ldy + j0);
                    let xt = xb.add(t0 * kp + k0 / 2);
                    let f = k0 == 0;
                    match mr {
                        6 => micro_bf16::<6>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        5 => micro_bf16::<5>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        4 => micro_bf16::<4>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        3 => micro_bf16::<3>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        2 => micro_bf16::<2>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        _ => micro_bf16::<1>(buf, kcp, xt, kp, yt, ldy, nr, f),
                    }
                }
                t0 += mr;
            }
            k0 += kc;
        }
        j0 += nr;
    }
}

/// Rounds `n` rows of `k` activations to bf16 pairs (round to nearest even), one pair per float
/// of `out`: the bits of `out[t * kp + p]` are `bf16(x[t, 2p]) | bf16(x[t, 2p + 1]) << 16` with
/// `kp = k.div_ceil(2)` (an odd `k`'s last pair is padded with 0).
///
/// # Safety
/// `x.len() >= n * k`, `out.len() >= n * k.div_ceil(2)`; the CPU must support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn pack_x_pairs(x: &[f32], k: usize, n: usize, out: &mut [f32]) {
    let kp = k.div_ceil(2);
    debug_assert!(x.len() >= n * k && out.len() >= n * kp);
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    for t in 0..n {
        let mut e = 0;
        while e < k {
            // SAFETY: e < k, so `src` (element e of row t < n) is inside x. The loads read
            // x[t * k + e..] below column k of row t (masks). When e + 16 >= k the second mask
            // is 0 and nothing is read, but src + 16 may then lie past the end of x (last row),
            // so that address is formed with `wrapping_add`. The store writes pairs e/2..
            // min(kp, e/2 + 16) of row t (mask; e/2 < kp), inside `out` (n * kp floats).
            unsafe {
                let src = xp.add(t * k + e);
                let lo = _mm512_maskz_loadu_ps(lanes(k - e), src);
                let hi =
                    _mm512_maskz_loadu_ps(lanes(k.saturating_sub(e + 16)), src.wrapping_add(16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(op.add(t * kp + e / 2) as *mut i32, lanes(kp - e / 2), v);
            }
            e += 32;
        }
    }
}

/// Keys per block of [`attention_tile`]: the score block (`ATT_KB` keys x 32 rows) stays in L1.
pub(crate) const ATT_KB: usize = 64;

/// `JR` keys of `S = Q·Kᵀ` for the `16 * RV` rows of a tile: `s[jj * rt + r] = sum_d qt[d * rt +
/// r] * k[jj * hd + d]`. Register-blocked: `JR * RV` accumulators, one vector load of `qt` per
/// row vector and one broadcast of each key element per `d`.
///
/// # Safety
/// `qt` holds `hd * rt` floats, `k` `JR` rows of `hd`, `s` `JR * rt` writable floats, where
/// `rt = 16 * RV`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn qk_block<const RV: usize, const JR: usize>(
    qt: *const f32,
    k: *const f32,
    hd: usize,
    s: *mut f32,
) {
    let rt = 16 * RV;
    let mut acc = [[_mm512_setzero_ps(); RV]; JR];
    // SAFETY: d < hd, jj < JR, rv < RV: inside the buffers of the contract.
    unsafe {
        for d in 0..hd {
            let mut qv = [_mm512_setzero_ps(); RV];
            for (rv, q) in qv.iter_mut().enumerate() {
                *q = _mm512_loadu_ps(qt.add(d * rt + 16 * rv));
            }
            for (jj, a) in acc.iter_mut().enumerate() {
                let kk = _mm512_set1_ps(*k.add(jj * hd + d));
                for rv in 0..RV {
                    a[rv] = _mm512_fmadd_ps(kk, qv[rv], a[rv]);
                }
            }
        }
        for (jj, a) in acc.iter().enumerate() {
            for (rv, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(s.add(jj * rt + 16 * rv), x);
            }
        }
    }
}

/// `DR` dims of `O = O * alpha + P·V` for the tile: `ot[dd * rt + r] = ot[..] * alpha[r] +
/// sum_{j < nk} p[j * rt + r] * v[j * hd + dd]`.
///
/// # Safety
/// `p` holds `nk * rt` floats, `v` `nk` rows of stride `hd` with `DR` readable floats each,
/// `ot` `DR` rows of `rt` (read and written), `alpha` `rt`; `rt = 16 * RV`; the CPU must
/// support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pv_block<const RV: usize, const DR: usize>(
    p: *const f32,
    nk: usize,
    v: *const f32,
    hd: usize,
    ot: *mut f32,
    alpha: *const f32,
) {
    let rt = 16 * RV;
    // SAFETY: j < nk, dd < DR, rv < RV: inside the buffers of the contract.
    unsafe {
        let mut al = [_mm512_setzero_ps(); RV];
        for (rv, a) in al.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(alpha.add(16 * rv));
        }
        let mut acc = [[_mm512_setzero_ps(); RV]; DR];
        for (dd, a) in acc.iter_mut().enumerate() {
            for rv in 0..RV {
                a[rv] = _mm512_mul_ps(_mm512_loadu_ps(ot.add(dd * rt + 16 * rv)), al[rv]);
            }
        }
        for j in 0..nk {
            let mut pv = [_mm512_setzero_ps(); RV];
            for (rv, x) in pv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(p.add(j * rt + 16 * rv));
            }
            let vj = v.add(j * hd);
            for (dd, a) in acc.iter_mut().enumerate() {
                let vv = _mm512_set1_ps(*vj.add(dd));
                for rv in 0..RV {
                    a[rv] = _mm512_fmadd_ps(vv, pv[rv], a[rv]);
                }
            }
        }
        for (dd, a) in acc.iter().enumerate() {
            for (rv, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(ot.add(dd * rt + 16 * rv), x);
            }
        }
    }
}

/// One tile of causal attention, FlashAttention-2 style: the `a.rows <= 16 * RV` query rows of
/// one kv head (see [`AttnTile`]) against keys `0..` their causal limits, streamed in blocks of
/// [`ATT_KB`] keys with an online softmax. Rows live in vector lanes throughout (queries
/// transposed into `qt`, scores `[key][row]`, output `[dim][row]`), so the row max, the row sum
/// and the rescaling are plain vertical vector ops; only the diagonal blocks are masked. `JR`
/// keys (score step) and `DR` dims (output step) are the register blocks.
///
/// # Safety
/// The pointers in `a` must satisfy [`AttnTile`]'s contract, `scratch` must be valid for
/// writing `(2 * a.hd + ATT_KB) * 16 * RV` floats and not be accessed by anyone else during the
/// call; `1 <= a.rows <= 16 * RV`, `RV <= 2`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn attention_tile<const RV: usize, const JR: usize, const DR: usize>(
    a: &AttnTile,
    scratch: *mut f32,
) {
    let rt = 16 * RV;
    let hd = a.hd;
    debug_assert!(RV <= 2 && a.rows >= 1 && a.rows <= rt);
    // SAFETY: scratch holds (2 * hd + ATT_KB) * rt floats (contract): qt, ot and the score
    // block below are disjoint parts of it. Query/output rows and key/value rows are read and
    // written only at the positions AttnTile's contract makes valid: row r < a.rows maps to
    // token t < n and a head of this group; keys are read below the largest causal limit of the
    // tile, pos0 + t_last + 1 <= the valid length. Row offsets fit in i32 (contract); gathers
    // read only unmasked lanes: real rows' q elements (offset + d, d < hd) and ot elements
    // (d + i) * rt + r with d + i < hd.
    unsafe {
        let qt = scratch;
        let ot = scratch.add(hd * rt);
        let sb = scratch.add(2 * hd * rt);
        // Per-row causal limits (keys 0..lim visible) and row offsets into q / out. Padding
        // rows (r >= rows) copy the last real row's limit and offset.
        let mut lim = [0i32; 32];
        let mut off = [0i32; 32];
        for r in 0..rt {
            let g = a.row0 + r.min(a.rows - 1);
            let t = g / a.group;
            lim[r] = (a.pos0 + t + 1) as i32;
            off[r] = (t * a.qdim + (a.head0 + g % a.group) * hd) as i32;
        }
        // Transposed, pre-scaled queries (zero in padding rows): one gather per dim and row
        // vector. (Element-wise copies compile to scatters, which are slow.)
        let vs = _mm512_set1_ps(a.scale);
        for rv in 0..RV {
            let offv = _mm512_loadu_si512(off.as_ptr().add(16 * rv) as *const _);
            let km = lanes(a.rows.saturating_sub(16 * rv));
            for d in 0..hd {
                let x = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), km, offv, a.q.add(d));
                _mm512_storeu_ps(qt.add(d * rt + 16 * rv), _mm512_mul_ps(x, vs));
            }
        }
        for d in 0..hd * rt {
            *ot.add(d) = 0.0;
        }
        let kmin = lim[0] as usize;
        let kmax = lim[a.rows - 1] as usize;
        let mut limv = [_mm512_setzero_si512(); RV];
        let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); RV];
        let mut l = [_mm512_setzero_ps(); RV];
        for (rv, x) in limv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(lim.as_ptr().add(16 * rv) as *const _);
        }
        let mut alpha = [0f32; 32];
        let mut kb = 0;
        while kb < kmax {
            let nk = ATT_KB.min(kmax - kb);
            let kp = a.k.add(kb * hd);
            let mut j = 0;
            while j + JR <= nk {
                qk_block::<RV, JR>(qt, kp.add(j * hd), hd, sb.add(j * rt));
                j += JR;
            }
            while j < nk {
                qk_block::<RV, 1>(qt, kp.add(j * hd), hd, sb.add(j * rt));
                j += 1;
            }
            if kb + nk > kmin {
                // Diagonal block: hide key kb + j from rows whose limit is <= kb + j.
                let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
                for j in 0..nk {
                    let jv = _mm512_set1_epi32((kb + j) as i32);
                    for (rv, &lv) in limv.iter().enumerate() {
                        let sp = sb.add(j * rt + 16 * rv);
                        let vis = _mm512_cmpgt_epi32_mask(lv, jv);
                        _mm512_storeu_ps(sp, _mm512_mask_mov_ps(ninf, vis, _mm512_loadu_ps(sp)));
                    }
                }
            }
            // Online softmax. Key 0 is visible to every row, so after the first block every
            // row max is finite and exp(-inf - max) is exactly 0 for the masked scores.
            for rv in 0..RV {
                let mut bm = m[rv];
                for j in 0..nk {
                    bm = _mm512_max_ps(bm, _mm512_loadu_ps(sb.add(j * rt + 16 * rv)));
                }
                let al = exp_ps(_mm512_sub_ps(m[rv], bm));
                let mut sum = _mm512_setzero_ps();
                for j in 0..nk {
                    let sp = sb.add(j * rt + 16 * rv);
                    let p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sp), bm));
                    _mm512_storeu_ps(sp, p);
                    sum = _mm512_add_ps(sum, p);
                }
                l[rv] = _mm512_fmadd_ps(l[rv], al, sum);
                m[rv] = bm;
                _mm512_storeu_ps(alpha.as_mut_ptr().add(16 * rv), al);
            }
            let vp = a.v.add(kb * hd);
            let mut d = 0;
            while d + DR <= hd {
                pv_block::<RV, DR>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
                d += DR;
            }
            while d < hd {
                pv_block::<RV, 1>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
                d += 1;
            }
            kb += nk;
        }
        // out = O / l, transposed back into the rows.
        let mut inv = [0f32; 32];
        for (rv, &lv) in l.iter().enumerate() {
            _mm512_storeu_ps(
                inv.as_mut_ptr().add(16 * rv),
                _mm512_div_ps(_mm512_set1_ps(1.0), lv),
            );
        }
        // Row r of the output is lane r of every ot[d], gathered 16 dims at a time.
        let stride = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(rt as i32),
        );
        for r in 0..a.rows {
            let op = a.out.add(off[r] as usize);
            let ir = _mm512_set1_ps(inv[r]);
            let mut d = 0;
            while d < hd {
                let m = lanes(hd - d);
                let x = _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    m,
                    stride,
                    ot.add(d * rt + r),
                );
                _mm512_mask_storeu_ps(op.add(d), m, _mm512_mul_ps(x, ir));
                d += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_ps` within 2 ulps of the correctly rounded exp over the whole f32 range (subnormal
    /// results, overflow to +inf and underflow to 0 included), NaN kept.
    #[test]
    fn exp_ps_ulps_whole_range() {
        if !crate::Isa::Avx512.is_supported() {
            eprintln!("exp_ps: skipping avx512, which this CPU lacks");
            return;
        }
        let mut xs: Vec<f32> = (0..14600).map(|i| -110.0 + 0.0137 * i as f32).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.72, 88.7228, 88.73, -87.33, -103.9, -103.97,
        ]);
        xs.extend([
            -104.0,
            -1e30,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 0.0);
        xs.extend([f32::NAN; 16]);
        let mut e = vec![0f32; xs.len()];
        for (x, o) in xs.chunks_exact(16).zip(e.chunks_exact_mut(16)) {
            // SAFETY: AVX-512 support checked above; each chunk holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), exp_ps(_mm512_loadu_ps(x.as_ptr()))) };
        }
        for (&x, &v) in xs.iter().zip(&e) {
            let r = (x as f64).exp() as f32;
            if x.is_nan() {
                assert!(v.is_nan(), "exp NaN gave {v}");
                continue;
            }
            let ulps = if v == r {
                0
            } else if v.is_sign_negative() != r.is_sign_negative() {
                u32::MAX
            } else {
                v.to_bits().abs_diff(r.to_bits())
            };
            assert!(ulps <= 2, "exp x={x}: {v:e} vs {r:e} ({ulps} ulps)");
        }
    }
}
