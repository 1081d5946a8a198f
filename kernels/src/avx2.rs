//! AVX2 bodies (256-bit, AVX2 + FMA + F16C). Same names and contracts as [`crate::scalar`];
//! [`crate::ops`] checks buffer lengths before calling in here.
//!
//! Every load is unaligned. f32 tails use `vmaskmovps` (masked-off lanes never fault); 16-bit
//! weight tails are copied into a zeroed stack buffer first, so no body touches a byte outside
//! the slices it was given. Where a fixed group of vectors runs past the end (the second half
//! of a 16-column tile, the last ones of a four-vector block), the masks of the vectors past
//! the end are all zero and their addresses are formed with `wrapping_add`: such a pointer may
//! lie beyond the allocation, where `add` would be undefined behaviour, but `vmaskmovps` with an
//! all-zero mask touches no memory through it.

use core::arch::x86_64::*;

use crate::dtype::{Dtype, WeightType};

/// A lane mask (all-ones in lanes `< n`) for `vmaskmovps`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mask8(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// 8 weights of dtype `W` starting at element `i` of `p`, widened to f32.
///
/// # Safety
/// `p` must be valid for reading elements `i..i + 8`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld<W: WeightType>(p: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees elements i..i+8 are readable; loads are unaligned.
    unsafe {
        match W::DTYPE {
            Dtype::F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
            Dtype::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            Dtype::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.add(2 * i) as *const __m128i),
            ))),
        }
    }
}

/// The first `cnt` (`< 8`) weights at element `i`, widened, the other lanes 0.0.
///
/// # Safety
/// `p` must be valid for reading elements `i..i + cnt`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_part<W: WeightType>(p: *const u8, i: usize, cnt: usize) -> __m256 {
    let mut tmp = [0u8; 32];
    // SAFETY: cnt elements (cnt * SIZE <= 32 bytes) are readable at element i; tmp is a full
    // vector's worth of bytes for `ld`.
    unsafe {
        std::ptr::copy_nonoverlapping(p.add(i * W::SIZE), tmp.as_mut_ptr(), cnt * W::SIZE);
        ld::<W>(tmp.as_ptr(), 0)
    }
}

/// Horizontal sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal max.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Vectorized `exp`, within ~1 ulp over the whole f32 range: `exp(x) = 2^n * p(r)`,
/// `r = x - n ln2` (Cody-Waite), `p` a degree-7 Taylor polynomial. `2^n` is applied as two
/// exact power-of-two factors `2^(n>>1) * 2^(n - (n>>1))` so that results in the subnormal range
/// are rounded once and overflow gives +inf; below ~-103.97 the result is 0. NaN stays NaN.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn exp_ps(x: __m256) -> __m256 {
    // min/max return their second operand when either is NaN: keep x second.
    let x = _mm256_min_ps(_mm256_set1_ps(89.0), x);
    let x = _mm256_max_ps(_mm256_set1_ps(-104.0), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 720.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    // n is in [-150, 129] (or NaN, which converts to i32::MIN and leaves p NaN anyway).
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let bias = _mm256_set1_epi32(127);
    let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
    let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
    _mm256_mul_ps(_mm256_mul_ps(p, s1), s2)
}

/// `sum(a[i] * b[i])` over `n` elements of two raw pointers.
///
/// # Safety
/// `a` and `b` must be valid for reading `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every access is to elements < n (full vectors, then a masked tail).
    unsafe {
        while i + 32 <= n {
            for (j, a_j) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a_j = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *a_j);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[0]);
            i += 8;
        }
        if i < n {
            let m = mask8(n - i);
            acc[1] = _mm256_fmadd_ps(
                _mm256_maskload_ps(a.add(i), m),
                _mm256_maskload_ps(b.add(i), m),
                acc[1],
            );
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// `y[r] = sum_c w[r, c] * x[c]`, one row at a time with eight accumulators: each row is one
/// sequential stream (see the AVX-512 body for why).
///
/// # Safety
/// `w` must hold at least `y.len() * x.len()` elements of `W`; the CPU must support AVX2, FMA
/// and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matvec<W: WeightType>(w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    debug_assert!(w.len() >= y.len() * cols * W::SIZE);
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let rb = cols * W::SIZE;
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r is inside w; full vectors are read while c + 64 (then c + 8) <= cols,
        // and the tail goes through a partial copy / masked load.
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [_mm256_setzero_ps(); 8];
            let mut c = 0;
            while c + 64 <= cols {
                for (k, acc) in a.iter_mut().enumerate() {
                    let cc = c + 8 * k;
                    *acc = _mm256_fmadd_ps(ld::<W>(w0, cc), _mm256_loadu_ps(xp.add(cc)), *acc);
                }
                c += 64;
            }
            while c + 8 <= cols {
                a[0] = _mm256_fmadd_ps(ld::<W>(w0, c), _mm256_loadu_ps(xp.add(c)), a[0]);
                c += 8;
            }
            if c < cols {
                let cnt = cols - c;
                let xv = _mm256_maskload_ps(xp.add(c), mask8(cnt));
                a[1] = _mm256_fmadd_ps(ld_part::<W>(w0, c, cnt), xv, a[1]);
            }
            let s01 = _mm256_add_ps(a[0], a[1]);
            let s23 = _mm256_add_ps(a[2], a[3]);
            let s45 = _mm256_add_ps(a[4], a[5]);
            let s67 = _mm256_add_ps(a[6], a[7]);
            *yr = hsum(_mm256_add_ps(
                _mm256_add_ps(s01, s23),
                _mm256_add_ps(s45, s67),
            ));
        }
    }
}

/// [`matvec`] for `R` inputs at once: `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `t < R`,
/// `r < rows`, where `x_t` is `cols` floats at `xs[t]`; each weight vector is loaded (and
/// widened) once for all `R` inputs. [`matvec`]'s eight accumulators per input do not fit 16
/// registers twice, but each of them is a sum of its own columns, so the row is read in two
/// passes: accumulators 0..4 (with the 8-column steps and the tail, which add into 0 and 1),
/// then 4..8. Every accumulator receives the same additions in the same order as in
/// [`matvec`], and the reduction is the same, so output `t` is bit for bit [`matvec`]'s for
/// `x_t` alone.
///
/// # Safety
/// `w` holds at least `rows * cols` elements of `W`; each `xs[t]` is valid for reading `cols`
/// floats; `y` is valid for writes at `t * ldy + r` (`t < R`, `r < rows`) with nothing else
/// accessing them during the call; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
        // SAFETY: row r < rows is inside w (contract); full vectors are read while c + 64
        // (then c + 8) <= cols, the tail through a partial copy / masked load, from the
        // weights and from every input (each valid for cols floats); the stores go to
        // y[t * ldy + r].
        unsafe {
            let w0 = wp.add(r * rb);
            let mut lo = [[_mm256_setzero_ps(); 4]; R];
            let mut c = 0;
            while c + 64 <= cols {
                for k in 0..4 {
                    let cc = c + 8 * k;
                    let wv = ld::<W>(w0, cc);
                    for t in 0..R {
                        lo[t][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t].add(cc)), lo[t][k]);
                    }
                }
                c += 64;
            }
            let main = c;
            while c + 8 <= cols {
                let wv = ld::<W>(w0, c);
                for t in 0..R {
                    lo[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t].add(c)), lo[t][0]);
                }
                c += 8;
            }
            if c < cols {
                let cnt = cols - c;
                let wv = ld_part::<W>(w0, c, cnt);
                for t in 0..R {
                    let xv = _mm256_maskload_ps(xs[t].add(c), mask8(cnt));
                    lo[t][1] = _mm256_fmadd_ps(wv, xv, lo[t][1]);
                }
            }
            let mut hi = [[_mm256_setzero_ps(); 4]; R];
            let mut c = 0;
            while c < main {
                for k in 0..4 {
                    let cc = c + 8 * (4 + k);
                    let wv = ld::<W>(w0, cc);
                    for t in 0..R {
                        hi[t][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t].add(cc)), hi[t][k]);
                    }
                }
                c += 64;
            }
            for t in 0..R {
                let s01 = _mm256_add_ps(lo[t][0], lo[t][1]);
                let s23 = _mm256_add_ps(lo[t][2], lo[t][3]);
                let s45 = _mm256_add_ps(hi[t][0], hi[t][1]);
                let s67 = _mm256_add_ps(hi[t][2], hi[t][3]);
                *y.add(t * ldy + r) = hsum(_mm256_add_ps(
                    _mm256_add_ps(s01, s23),
                    _mm256_add_ps(s45, s67),
                ));
            }
        }
    }
}

/// Weight rows per packed panel (two vectors) of the matmul microkernel.
const NR: usize = 16;
/// Tokens per microkernel tile (12 accumulators + 2 panel vectors + 1 broadcast = 15 registers).
const MR: usize = 6;
/// Depth of a packed panel: `KC * NR` f32 = 16 KiB.
const KC: usize = 256;
/// Floats of the packed weight panel [`matmul_strided`] needs from its caller.
pub const MATMUL_PACK: usize = KC * NR;

/// Packs rows `0..nr` (`nr <= NR`), columns `k0..k0 + kc` of `w` transposed into
/// `buf[kk * NR + j]` as f32, zero for `j >= nr`.
///
/// # Safety
/// `w` must be valid for `nr` rows of `k` elements of `W`; `k0 + kc <= k`, `kc <= KC`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    if nr < NR {
        buf[..kc * NR].iter_mut().for_each(|v| *v = 0.0);
    }
    let mut tmp = [0f32; 8];
    for j in 0..nr {
        // SAFETY: row j < nr is inside w; columns k0..k0+kc inside the row.
        unsafe {
            let row = w.add(j * rb);
            let mut kk = 0;
            while kk < kc {
                let cnt = (kc - kk).min(8);
                let v = if cnt == 8 {
                    ld::<W>(row, k0 + kk)
                } else {
                    ld_part::<W>(row, k0 + kk, cnt)
                };
                _mm256_storeu_ps(tmp.as_mut_ptr(), v);
                for (q, t) in tmp.iter().enumerate().take(cnt) {
                    *buf.get_unchecked_mut((kk + q) * NR + j) = *t;
                }
                kk += 8;
            }
        }
    }
}

/// Microkernel: `R` tokens × `NR` packed weight rows over `kc` of depth, storing (first depth
/// block) or accumulating into `y[t * ldy + j]`, `j < nr`.
///
/// # Safety
/// `x` valid for `R` rows of `ldx` floats with `kc` readable in each; `y` valid for writes to `R`
/// rows of `ldy` floats at columns `0..nr`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let bp = buf.as_ptr();
    // SAFETY: kk < kc <= KC keeps buf accesses in bounds; x rows < R, columns < kc.
    unsafe {
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(bp.add(kk * NR));
            let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
            for t in 0..R {
                let a = _mm256_broadcast_ss(&*x.add(t * ldx + kk));
                acc0[t] = _mm256_fmadd_ps(a, b0, acc0[t]);
                acc1[t] = _mm256_fmadd_ps(a, b1, acc1[t]);
            }
        }
    }
    let m0 = mask8(nr);
    let m1 = mask8(nr.saturating_sub(8));
    for t in 0..R {
        // SAFETY: `y.add(t * ldy)` is row t < R of y (valid by the contract; nr >= 1). The
        // masked loads/stores touch only columns 0..nr of that row: m0 selects columns
        // 0..min(nr, 8), m1 columns 8..nr. When nr <= 8, m1 is 0 and nothing is touched
        // through yp + 8, but that address may lie past the end of y's allocation (the last row
        // of a narrow output), so it is formed with `wrapping_add`.
        unsafe {
            let yp = y.add(t * ldy);
            let yp8 = yp.wrapping_add(8);
            let (mut v0, mut v1) = (acc0[t], acc1[t]);
            if !first {
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(yp, m0));
                v1 = _mm256_add_ps(v1, _mm256_maskload_ps(yp8, m1));
            }
            _mm256_maskstore_ps(yp, m0, v0);
            _mm256_maskstore_ps(yp8, m1, v1);
        }
    }
}

/// `y[t * ldy + j] = sum_c w[j, c] * x[t * k + c]` for `t < n`, `j < rows`.
///
/// # Safety
/// `w` must hold `rows * k` elements of `W`, `x` at least `n * k` floats, `y` must be valid for
/// writes at `t * ldy + j` for `t < n`, `j < rows` with nothing else accessing those elements;
/// `k > 0`; `panel` holds at least [`MATMUL_PACK`] floats (the packed panel; any contents).
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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

/// `out[i] = x[i] * inv * w[i]`.
///
/// # Safety
/// `w` holds `x.len()` elements of `W`; `out.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_mul<W: WeightType>(x: &[f32], inv: f32, w: &[u8], out: &mut [f32]) {
    let n = x.len();
    let vi = _mm256_set1_ps(inv);
    let mut i = 0;
    while i < n {
        let cnt = (n - i).min(8);
        let m = mask8(cnt);
        // SAFETY: lanes masked / copied below n in x, w and out.
        unsafe {
            let v = _mm256_maskload_ps(x.as_ptr().add(i), m);
            let wv = if cnt == 8 {
                ld::<W>(w.as_ptr(), i)
            } else {
                ld_part::<W>(w.as_ptr(), i, cnt)
            };
            _mm256_maskstore_ps(
                out.as_mut_ptr().add(i),
                m,
                _mm256_mul_ps(_mm256_mul_ps(v, vi), wv),
            );
        }
        i += 8;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Safety
/// `weight` holds `x.len()` elements of `wdtype`, `out.len() == x.len()`; the CPU must support
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rmsnorm(x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        let ss = dot_raw(x.as_ptr(), x.as_ptr(), x.len()) / x.len() as f32;
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_w<W: WeightType>(y: &mut [f32], b: &[u8]) {
    let n = y.len();
    let mut i = 0;
    while i < n {
        let cnt = (n - i).min(8);
        let m = mask8(cnt);
        // SAFETY: lanes masked / copied below n in y and b.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let bv = if cnt == 8 {
                ld::<W>(b.as_ptr(), i)
            } else {
                ld_part::<W>(b.as_ptr(), i, cnt)
            };
            _mm256_maskstore_ps(p, m, _mm256_add_ps(_mm256_maskload_ps(p, m), bv));
        }
        i += 8;
    }
}

/// `y[i] += b[i]` with `b` of dtype `bdtype`.
///
/// # Safety
/// `b` holds `y.len()` elements of `bdtype`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
/// `x.len() >= y.len()`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn add(y: &mut [f32], x: &[f32]) {
    // SAFETY: x has at least y.len() floats, viewed as their bytes.
    unsafe {
        let xb = std::slice::from_raw_parts(x.as_ptr() as *const u8, y.len() * 4);
        add_w::<crate::F32>(y, xb)
    }
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
///
/// # Safety
/// `up.len() >= gate.len()`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = mask8(n - i);
        // SAFETY: lanes masked below n in gate and up.
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            let g = _mm256_maskload_ps(p, m);
            let u = _mm256_maskload_ps(up.as_ptr().add(i), m);
            let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let r = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            _mm256_maskstore_ps(p, m, r);
        }
        i += 8;
    }
}

/// Largest element (NaN ignored; -inf for an empty slice).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn max_of(x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut m0 = ninf;
    let mut m1 = ninf;
    let mut i = 0;
    // SAFETY: full vectors while i + 16 <= n.
    unsafe {
        while i + 16 <= n {
            // max(v, acc) returns acc when v is NaN.
            m0 = _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(i)), m0);
            m1 = _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8)), m1);
            i += 16;
        }
    }
    let mut m = hmax(_mm256_max_ps(m0, m1));
    for &v in &x[i..] {
        if v > m {
            m = v;
        }
    }
    m
}

/// In-place softmax; returns `max + ln(sum(exp(x - max)))`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let n = x.len();
    let max = max_of(x);
    let vm = _mm256_set1_ps(max);
    let p = x.as_mut_ptr();
    let mut s0 = _mm256_setzero_ps();
    let mut s1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: full vectors below n, then masked lanes below n.
    unsafe {
        while i + 16 <= n {
            let e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
            let e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8)), vm));
            _mm256_storeu_ps(p.add(i), e0);
            _mm256_storeu_ps(p.add(i + 8), e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
            i += 16;
        }
        while i < n {
            let m = mask8(n - i);
            let e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), m), vm));
            _mm256_maskstore_ps(p.add(i), m, e);
            s0 = _mm256_add_ps(s0, _mm256_and_ps(e, _mm256_castsi256_ps(m)));
            i += 8;
        }
        let sum = hsum(_mm256_add_ps(s0, s1));
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i < n {
            let m = mask8(n - i);
            let v = _mm256_maskload_ps(p.add(i), m);
            _mm256_maskstore_ps(p.add(i), m, _mm256_mul_ps(v, inv));
            i += 8;
        }
        max + sum.ln()
    }
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
///
/// # Safety
/// `cos` and `sin` hold at least `head_dim / 2` floats; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    if head_dim == 0 {
        return;
    }
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let h = head.as_mut_ptr();
        let mut i = 0;
        while i < half {
            let m = mask8(half - i);
            // SAFETY: lanes masked below half: inside head (twice) and the tables.
            unsafe {
                let a = _mm256_maskload_ps(h.add(i), m);
                let b = _mm256_maskload_ps(h.add(i + half), m);
                let c = _mm256_maskload_ps(cos.as_ptr().add(i), m);
                let s = _mm256_maskload_ps(sin.as_ptr().add(i), m);
                // Separate multiplies (no FMA) to round exactly like the scalar reference.
                let ra = _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s));
                let rb = _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s));
                _mm256_maskstore_ps(h.add(i), m, ra);
                _mm256_maskstore_ps(h.add(i + half), m, rb);
            }
            i += 8;
        }
    }
}

/// `out[..hd] = sum_p s[p] * v[p * hd..]` over `len` rows, four vectors of `out` at a time.
///
/// # Safety
/// `s` holds `len` floats, `v` `len * hd`, `out` `hd`.
#[target_feature(enable = "avx2,fma,f16c")]
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
            mask8(hd - o),
            mask8(hd.saturating_sub(o + 8)),
            mask8(hd.saturating_sub(o + 16)),
            mask8(hd.saturating_sub(o + 24)),
        ];
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: s[p] for p < len is inside s. o < hd, so `v.add(p * hd + o)` is inside row
        // p < len of v. Vector j reads v[p * hd + o + 8j..] and writes out[o + 8j..], masked to
        // columns below hd: inside v's row p and out. A vector with o + 8j >= hd has mask 0 and
        // touches nothing, but its address may lie past the end of v (last row) or out, so
        // those addresses are formed with `wrapping_add`.
        unsafe {
            for p in 0..len {
                let sp = _mm256_set1_ps(*s.add(p));
                let vp = v.add(p * hd + o);
                for j in 0..4 {
                    let x = _mm256_maskload_ps(vp.wrapping_add(8 * j), ms[j]);
                    acc[j] = _mm256_fmadd_ps(sp, x, acc[j]);
                }
            }
            for j in 0..4 {
                _mm256_maskstore_ps(out.wrapping_add(o + 8 * j), ms[j], acc[j]);
            }
        }
        o += 32;
    }
}

/// One query head: `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` floats, `scores` at least `len`, `out.len() == q.len()`; the CPU
/// must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_ps` within 2 ulps of the correctly rounded exp over the whole f32 range (subnormal
    /// results, overflow to +inf and underflow to 0 included), NaN kept.
    #[test]
    fn exp_ps_ulps_whole_range() {
        if !crate::Isa::Avx2.is_supported() {
            eprintln!("exp_ps: skipping avx2, which this CPU lacks");
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
        for (x, o) in xs.chunks_exact(8).zip(e.chunks_exact_mut(8)) {
            // SAFETY: AVX2 support checked above; each chunk holds 8 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), exp_ps(_mm256_loadu_ps(x.as_ptr()))) };
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
