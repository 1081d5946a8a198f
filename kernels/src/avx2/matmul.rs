//! AVX2 matmul: packed weight panels and a register-blocked microkernel.

use core::arch::x86_64::*;

use super::{ld, ld_part, mask8, matvec};
use crate::dtype::WeightType;

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
