//! Widening matvecs: one row of weights at a time, and the multi-row version for several
//! inputs at once. (The AVX-512-only bf16 layouts, hi/lo with `vdpbf16ps` and even/odd, are in
//! `crate::avx512`: there the instruction is the algorithm.)

use crate::dtype::WeightType;
use crate::simd::Simd;

/// `y[r] = sum_c w[r, c] * x[c]`, one row at a time with eight accumulators.
///
/// Each row is read as one sequential stream, front to back: on the EPYC machines this was
/// tuned on, that reaches ~95% of a plain streaming read, while interleaving four rows (four
/// concurrent streams) reached under half of it.
///
/// # Safety
/// `w` must hold at least `y.len() * x.len()` elements of `W`.
#[inline(always)]
pub(crate) unsafe fn matvec<S: Simd, W: WeightType>(s: S, w: &[u8], x: &[f32], y: &mut [f32]) {
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: forwarded contract.
            unsafe { matvec_body::<S, W>(s, w, x, y) }
        },
    )
}

/// [`matvec`] inside [`Simd::vectorize`].
///
/// # Safety
/// As [`matvec`].
#[inline(always)]
pub(crate) unsafe fn matvec_body<S: Simd, W: WeightType>(s: S, w: &[u8], x: &[f32], y: &mut [f32]) {
    let l = S::LANES;
    let cols = x.len();
    debug_assert!(w.len() >= y.len() * cols * W::SIZE);
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let rb = cols * W::SIZE; // bytes per row
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r is inside w (length checked by the caller); full vectors are read while
        // c + 8 LANES (then c + LANES) <= cols, and the tail covers the columns left, from
        // column c < cols.
        unsafe {
            let w0 = wp.add(r * rb);
            let mut a = [s.zero(); 8];
            let mut c = 0;
            while c + 8 * l <= cols {
                if S::PREFETCH_MATVEC {
                    s.prefetch_ahead(w0.wrapping_add(c * W::SIZE), 8 * l * W::SIZE);
                }
                for (k, acc) in a.iter_mut().enumerate() {
                    let cc = c + l * k;
                    *acc = s.fma(s.load_w::<W>(w0, cc), s.load(xp.add(cc)), *acc);
                }
                c += 8 * l;
            }
            while c + l <= cols {
                a[0] = s.fma(s.load_w::<W>(w0, c), s.load(xp.add(c)), a[0]);
                c += l;
            }
            if c < cols {
                let xv = s.load_tail(xp.add(c), cols - c);
                a[1] = s.fma(s.load_w_tail::<W>(w0, c, cols - c), xv, a[1]);
            }
            *yr = reduce8(s, &a);
        }
    }
}

/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`, summed across lanes.
#[inline(always)]
fn reduce8<S: Simd>(s: S, a: &[S::F32; 8]) -> f32 {
    let s01 = s.add(a[0], a[1]);
    let s23 = s.add(a[2], a[3]);
    let s45 = s.add(a[4], a[5]);
    let s67 = s.add(a[6], a[7]);
    s.hsum(s.add(s.add(s01, s23), s.add(s45, s67)))
}

/// A matrix and the outputs of the multi-row matvecs over it ([`matvec_rows`], the AVX-512
/// bf16 ones), which travel together from the entry points down to the row loops: for inputs
/// `x_t` of `cols` columns (`t < R`, the kernel's other argument),
/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `r < rows`.
#[derive(Clone, Copy)]
pub(crate) struct MatvecRows<'a> {
    /// The weights, row-major `[rows, cols]`.
    pub(crate) w: &'a [u8],
    /// Weight rows (outputs per input).
    pub(crate) rows: usize,
    /// Columns of `w` and of every input.
    pub(crate) cols: usize,
    /// Where output `t` starts: `y + t * ldy`.
    pub(crate) y: *mut f32,
    /// See `y`.
    pub(crate) ldy: usize,
}

impl<'a> MatvecRows<'a> {
    /// The first byte of weight row `r`, for weights of `size` bytes.
    ///
    /// # Safety
    /// `r < rows`; `w` holds `rows * cols` weights of `size` bytes.
    #[inline(always)]
    pub(crate) unsafe fn row(&self, r: usize, size: usize) -> *const u8 {
        // SAFETY: row r starts inside w (contract).
        unsafe { self.w.as_ptr().add(r * (self.cols * size)) }
    }

    /// Where output `r` of input `t` goes, `y + t * ldy + r`.
    ///
    /// # Safety
    /// The address lies inside the outputs' allocation (the kernels' contracts: `t < R`,
    /// `r < rows`).
    #[inline(always)]
    pub(crate) unsafe fn out(&self, t: usize, r: usize) -> *mut f32 {
        // SAFETY: contract.
        unsafe { self.y.add(t * self.ldy + r) }
    }
}

/// [`matvec`] for `R` inputs at once, `x_t` the `cols` floats at `xs[t]` (see [`MatvecRows`]): each
/// weight vector is loaded (and widened) once for all `R` inputs. Every input keeps [`matvec`]'s
/// eight accumulators and adds into them in the same order, with the same reduction, so output `t`
/// is bit for bit [`matvec`]'s for `x_t` alone.
///
/// Where the `8 R` accumulators do not fit the registers next to the weight vector (16
/// registers), the row is read in two passes, each a sum of its own columns: accumulators 0..4
/// (with the single-vector steps and the tail, which add into 0 and 1), then 4..8.
///
/// # Safety
/// `w` holds at least `rows * cols` elements of `W`; each `xs[t]` is valid for reading `cols`
/// floats; `y` is valid for writes at `t * ldy + r` (`t < R`, `r < rows`) with nothing else
/// accessing them during the call.
#[inline(always)]
pub(crate) unsafe fn matvec_rows<S: Simd, W: WeightType, const R: usize>(
    s: S,
    m: MatvecRows<'_>,
    xs: [*const f32; R],
) {
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: forwarded contract.
            unsafe {
                if 8 * R < S::REGISTERS {
                    matvec_rows_passes::<S, W, R, 8>(s, m, xs)
                } else {
                    matvec_rows_passes::<S, W, R, 4>(s, m, xs)
                }
            }
        },
    )
}

/// [`matvec_rows`] reading each row in `8 / K` passes of `K` accumulators per input (pass `p`
/// takes the vectors `p K..(p + 1) K` of every 8-vector block; the first pass also the
/// single-vector steps and the tail).
///
/// # Safety
/// As [`matvec_rows`]; `K` divides 8.
#[inline(always)]
// (index loops over constant ranges: unrolled, the accumulators stay in registers)
#[allow(clippy::needless_range_loop)]
unsafe fn matvec_rows_passes<S: Simd, W: WeightType, const R: usize, const K: usize>(
    s: S,
    m: MatvecRows<'_>,
    xs: [*const f32; R],
) {
    let l = S::LANES;
    let cols = m.cols;
    debug_assert!(m.w.len() >= m.rows * cols * W::SIZE && 8 % K == 0);
    let main = cols / (8 * l) * (8 * l);
    for r in 0..m.rows {
        // SAFETY: row r < rows is inside w (contract); full vectors are read below `main` (whole
        // 8-vector blocks) and while c + LANES <= cols, the tail from column c < cols, from the
        // weights and from every input (each valid for cols floats); the stores go to
        // y[t * ldy + r].
        unsafe {
            let w0 = m.row(r, W::SIZE);
            let mut a = [[s.zero(); 8]; R];
            for pass in 0..8 / K {
                let mut acc = [[s.zero(); K]; R];
                let mut c = 0;
                while c < main {
                    if pass == 0 && S::PREFETCH_MATVEC {
                        s.prefetch_ahead(w0.wrapping_add(c * W::SIZE), 8 * l * W::SIZE);
                    }
                    for k in 0..K {
                        let cc = c + l * (pass * K + k);
                        let wv = s.load_w::<W>(w0, cc);
                        for t in 0..R {
                            acc[t][k] = s.fma(wv, s.load(xs[t].add(cc)), acc[t][k]);
                        }
                    }
                    c += 8 * l;
                }
                if pass == 0 {
                    while c + l <= cols {
                        let wv = s.load_w::<W>(w0, c);
                        for t in 0..R {
                            acc[t][0] = s.fma(wv, s.load(xs[t].add(c)), acc[t][0]);
                        }
                        c += l;
                    }
                    if c < cols {
                        let wv = s.load_w_tail::<W>(w0, c, cols - c);
                        for t in 0..R {
                            let xv = s.load_tail(xs[t].add(c), cols - c);
                            acc[t][1] = s.fma(wv, xv, acc[t][1]);
                        }
                    }
                }
                for t in 0..R {
                    a[t][pass * K..(pass + 1) * K].copy_from_slice(&acc[t]);
                }
            }
            for (t, a) in a.iter().enumerate() {
                *m.out(t, r) = reduce8(s, a);
            }
        }
    }
}
