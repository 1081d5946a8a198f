//! AVX2 matvecs: one row of weights at a time, and the multi-row version for several
//! inputs at once.

use core::arch::x86_64::*;

use super::{hsum, ld, ld_part, mask8, prefetch_ahead};
use crate::dtype::WeightType;

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
                prefetch_ahead(w0.wrapping_add(c * W::SIZE), 64 * W::SIZE);
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
                prefetch_ahead(w0.wrapping_add(c * W::SIZE), 64 * W::SIZE);
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
