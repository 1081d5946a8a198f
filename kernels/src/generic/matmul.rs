//! The f32 matmul: packed weight panels and a register-blocked microkernel. (The AVX-512
//! `vdpbf16ps` matmul is `crate::avx512`'s.)

use super::matvec::matvec_body;
use crate::dtype::WeightType;
use crate::layout::MatmulBlock;
use crate::simd::{Panel, Simd};

/// Vectors per packed panel (its width: `NV * LANES` weight rows).
const NV: usize = 2;
/// Tokens per microkernel tile: `MR * NV` accumulators, plus `NV` panel vectors and one
/// broadcast, fit 16 registers.
const MR: usize = 6;

/// Floats of the packed weight panel [`matmul_strided`] needs on backend `S`.
pub(crate) const fn matmul_pack<S: Simd>() -> usize {
    S::MATMUL_KC * NV * S::LANES
}

/// Writes the `R` × `nr` tile held in `acc` (vector `v` of row `t`: columns `LANES v..`) to
/// `y`, or adds it to what `y` holds unless this is the `first` depth block. (Also the
/// AVX-512 `vdpbf16ps` matmul's.)
///
/// # Safety
/// `y` valid for reads and writes of `R` rows of `ldy` floats at columns `0..nr`.
#[inline(always)]
pub(crate) unsafe fn store_tile<S: Simd, const R: usize, const V: usize>(
    s: S,
    acc: &[[S::F32; V]; R],
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    for (t, a) in acc.iter().enumerate() {
        for (v, &av) in a.iter().enumerate() {
            let cnt = nr.saturating_sub(S::LANES * v);
            if cnt == 0 {
                // (columns past nr: no address past the row is formed)
                continue;
            }
            // SAFETY: column LANES v < nr of row t < R is inside y (contract), and the tail
            // accesses touch its columns below nr only.
            unsafe {
                let yp = y.add(t * ldy + S::LANES * v);
                let sum = if first {
                    av
                } else {
                    s.add(av, s.load_tail(yp, cnt))
                };
                s.store_tail(yp, cnt, sum);
            }
        }
    }
}

/// The register-blocked microkernel: `R` tokens (`R <= MR`) × `NV * LANES` packed weight rows
/// over `kc` of depth. `y[t * ldy + j] (+)= sum_kk x[t * ldx + kk] * buf[kk * NR + j]` for
/// `j < nr`; stores (first depth block) or accumulates into `y`.
///
/// # Safety
/// `buf` holds `kc * NV * LANES` floats; `x` valid for `R` rows of `ldx` floats with `kc`
/// readable in each; `y` valid for writes to `R` rows of `ldy` floats at columns `0..nr`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<S: Simd, const R: usize>(
    s: S,
    buf: *const f32,
    kc: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    let nrp = NV * S::LANES;
    let mut acc = [[s.zero(); NV]; R];
    // SAFETY: kk < kc keeps buf accesses inside its kc rows of nrp; x accesses are rows < R,
    // columns < kc.
    unsafe {
        for kk in 0..kc {
            let mut b = [s.zero(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = s.load(buf.add(kk * nrp + S::LANES * v));
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xv = s.splat(*x.add(t * ldx + kk));
                for v in 0..NV {
                    a[v] = s.fma(xv, b[v], a[v]);
                }
            }
        }
    }
    // SAFETY: `y` is valid for these R rows and nr columns by this function's contract.
    unsafe { store_tile(s, &acc, y, ldy, nr, first) }
}

/// `y[t * ldy + j] = sum_c w[j, c] * x[t * k + c]` for `t < n`, `j < rows` (a
/// [`MatmulBlock`]): the matmul of [`crate::scalar::matmul`] writing a column block of a wider
/// output. Under three tokens the weights are streamed once per token ([`matvec_body`]);
/// otherwise panels of `NV * LANES` rows by `S::MATMUL_KC` of depth are packed and swept by the
/// microkernel.
///
/// # Safety
/// `block` satisfies [`MatmulBlock`]'s contract for weights of `W`; `panel` holds at least
/// [`matmul_pack`] floats (the packed panel; any contents).
#[inline(always)]
pub(crate) unsafe fn matmul_strided<S: Simd, W: WeightType>(
    s: S,
    block: &MatmulBlock<'_>,
    panel: &mut [f32],
) {
    let MatmulBlock {
        w,
        k,
        x,
        n,
        y,
        ldy,
        rows,
    } = *block;
    s.vectorize(
        #[inline(always)]
        || {
            debug_assert!(w.len() >= rows * k * W::SIZE && x.len() >= n * k && k > 0);
            if n < 3 {
                // Too few tokens to amortize packing: stream the weights once per token.
                for t in 0..n {
                    // SAFETY: row t of y has `rows` writable floats at t*ldy (contract); x row
                    // t exists.
                    unsafe {
                        let yt = std::slice::from_raw_parts_mut(y.add(t * ldy), rows);
                        matvec_body::<S, W>(s, w, &x[t * k..(t + 1) * k], yt);
                    }
                }
                return;
            }
            let nrp = NV * S::LANES;
            assert!(
                panel.len() >= matmul_pack::<S>(),
                "matmul: pack scratch too short"
            );
            let buf = &mut panel[..matmul_pack::<S>()];
            let wp = w.as_ptr();
            let xp = x.as_ptr();
            let mut j0 = 0;
            while j0 < rows {
                let nr = (rows - j0).min(nrp);
                let mut k0 = 0;
                while k0 < k {
                    let kc = (k - k0).min(S::MATMUL_KC);
                    let at = Panel { k, k0, kc, nr, nrp };
                    // SAFETY: rows j0..j0+nr of w exist, k0+kc <= k; buf holds kc rows of nrp.
                    unsafe { s.pack_panel::<W>(wp.add(j0 * k * W::SIZE), at, buf) };
                    let bp = buf.as_ptr();
                    let mut t0 = 0;
                    while t0 < n {
                        let mr = (n - t0).min(MR);
                        // SAFETY: tokens t0..t0+mr < n, columns k0..k0+kc < k of x; y rows
                        // t0..t0+mr, columns j0..j0+nr < rows, writable by the contract.
                        unsafe {
                            let xt = xp.add(t0 * k + k0);
                            let yt = y.add(t0 * ldy + j0);
                            let f = k0 == 0;
                            match mr {
                                6 => micro::<S, 6>(s, bp, kc, xt, k, yt, ldy, nr, f),
                                5 => micro::<S, 5>(s, bp, kc, xt, k, yt, ldy, nr, f),
                                4 => micro::<S, 4>(s, bp, kc, xt, k, yt, ldy, nr, f),
                                3 => micro::<S, 3>(s, bp, kc, xt, k, yt, ldy, nr, f),
                                2 => micro::<S, 2>(s, bp, kc, xt, k, yt, ldy, nr, f),
                                _ => micro::<S, 1>(s, bp, kc, xt, k, yt, ldy, nr, f),
                            }
                        }
                        t0 += mr;
                    }
                    k0 += kc;
                }
                j0 += nr;
            }
        },
    )
}
