//! AVX2 quantized prefill matmul: the AVX-512 design ([`crate::quant::panel::pack_q_panel`] panels of 16
//! weight rows, unsigned 8-bit quants) on two 256-bit halves of 8 rows, with `vpdpbusd` where
//! the CPU has AVX-VNNI, else `vpmaddubsw` + `vpmaddwd`.

use core::arch::x86_64::*;

use super::mask8;
use crate::quant::panel::{pack_q_panel, panel_bytes, q_sub_block, q_sub_block_bytes, QNR};
use crate::quant::{q8_len, QuantType};

/// Input rows per tile: `2 * MR` i32 accumulators and the two weight halves in the 16 ymm
/// registers (the f32 accumulators, touched once per sub-block, may live in L1).
const MR: usize = 4;

/// `acc += sum of 4 u8 × i8 products per lane`: with `VNNI`, `vpdpbusd` (the caller's target
/// features include AVX-VNNI; quants never come `SIGNED` then). Else `vpmaddubsw` + `vpmaddwd`:
/// the pairs' i16 sums cannot saturate for quants below 64 (`2 * 63 * 127`); Q8_0 comes
/// `SIGNED` (its own i8 quants): `|w|` times `x` with the sign of `w`, at most `2 * 128 * 127`.
#[inline(always)]
fn dot<const SIGNED: bool, const VNNI: bool>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 (with VNNI, AVX-VNNI) intrinsics, enabled by the calling tile.
    unsafe {
        if VNNI {
            return _mm256_dpbusd_avx_epi32(acc, w, x);
        }
        let p = if SIGNED {
            _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
        } else {
            _mm256_maddubs_epi16(w, x)
        };
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
}

/// `y[t * ldy + j] = sum_i (scale[j, i] * d_x[t, i] * idot + bias[j, i] * d_x[t, i] *
/// sum x_q[t, i])` over the `nsb` sub-blocks `i` of `S` weights, for rows `t < R` and columns
/// `j < nr`: `panel` as [`pack_q_panel`] lays it out (quants of `SIGNED` form), `xq` the first
/// row's [`q8_len`] words (`xs` words per row, `nb` blocks of 32).
///
/// # Safety
/// `panel` valid for `nsb` sub-blocks; `xq` for `R` rows of `xs` words holding
/// `nb = nsb * S / 32` blocks; `y` valid for writes to `R` rows of `ldy` floats at columns
/// `0..nr`, `1 <= nr <= 16`; the CPU must support AVX2, FMA and F16C (and AVX-VNNI with
/// `VNNI`), enabled by the caller ([`tile_vnni`], [`tile_plain`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const S: usize, const SIGNED: bool, const VNNI: bool>(
    panel: *const u8,
    nsb: usize,
    xq: *const f32,
    xs: usize,
    nb: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
) {
    let sbb = q_sub_block_bytes(S);
    // SAFETY: register-only AVX intrinsics, enabled by the calling tile function.
    let (zero_f, zero_i) = unsafe { (_mm256_setzero_ps(), _mm256_setzero_si256()) };
    let mut facc = [[zero_f; 2]; R];
    for i in 0..nsb {
        let k0 = i * S;
        let b = k0 / 32;
        let mut iacc = [[zero_i; 2]; R];
        // SAFETY: sub-block i < nsb of the panel: its quants (16 * S bytes), scales and biases
        // (64 bytes each) are inside it. x row t < R: its quants start at word 3 * nb of the
        // row, and bytes k0 + 4s..k0 + 4s + 4 < nb * 32 lie inside them; d and the half sums
        // of block b < nb are words b and nb + 2b (+1).
        unsafe {
            let p = panel.add(i * sbb);
            for s in 0..S / 4 {
                let w0 = _mm256_loadu_si256(p.add(64 * s).cast());
                let w1 = _mm256_loadu_si256(p.add(64 * s + 32).cast());
                for (t, a) in iacc.iter_mut().enumerate() {
                    let xp = xq.add(t * xs + 3 * nb).cast::<u8>().add(k0 + 4 * s);
                    let xv = _mm256_set1_epi32(xp.cast::<i32>().read_unaligned());
                    a[0] = dot::<SIGNED, VNNI>(a[0], w0, xv);
                    a[1] = dot::<SIGNED, VNNI>(a[1], w1, xv);
                }
            }
            let o = QNR * S;
            let sc = [
                _mm256_loadu_ps(p.add(o).cast()),
                _mm256_loadu_ps(p.add(o + 32).cast()),
            ];
            let bi = [
                _mm256_loadu_ps(p.add(o + 64).cast()),
                _mm256_loadu_ps(p.add(o + 96).cast()),
            ];
            for (t, (f, a)) in facc.iter_mut().zip(&iacc).enumerate() {
                let xr = xq.add(t * xs);
                let dx = _mm256_set1_ps(*xr.add(b));
                let hs = xr.add(nb + 2 * b);
                let sx = _mm256_set1_ps(if S == 32 {
                    *hs + *hs.add(1)
                } else {
                    *hs.add(i & 1)
                });
                for h in 0..2 {
                    let scx = _mm256_mul_ps(sc[h], dx);
                    f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[h]), scx, f[h]);
                    f[h] = _mm256_fmadd_ps(bi[h], sx, f[h]);
                }
            }
        }
    }
    // SAFETY: `mask8` is register-only AVX2, enabled by the calling tile function.
    let (m0, m1) = unsafe { (mask8(nr), mask8(nr.saturating_sub(8))) };
    for (t, f) in facc.iter().enumerate() {
        // SAFETY: row t < R, columns 0..nr of y are writable by the contract. When nr <= 8 the
        // second mask is zero and nothing is written through the second address, which may
        // then lie past the end of y (last row), so it is formed with `wrapping_add`.
        unsafe {
            let yp = y.add(t * ldy);
            _mm256_maskstore_ps(yp, m0, f[0]);
            _mm256_maskstore_ps(yp.wrapping_add(8), m1, f[1]);
        }
    }
}

/// Defines [`tile`] compiled for the given target features and integer dot.
macro_rules! tile_fn {
    ($name:ident, $features:literal, $vnni:literal) => {
        /// [`tile`] for one setting of `VNNI`.
        ///
        /// # Safety
        /// As [`tile`]; the CPU supports the enabled features.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const R: usize, const S: usize, const SIGNED: bool>(
            panel: *const u8,
            nsb: usize,
            xq: *const f32,
            xs: usize,
            nb: usize,
            y: *mut f32,
            ldy: usize,
            nr: usize,
        ) {
            // SAFETY: forwarded contract, with the features `tile` needs enabled here.
            unsafe { tile::<R, S, SIGNED, $vnni>(panel, nsb, xq, xs, nb, y, ldy, nr) }
        }
    };
}

tile_fn!(tile_vnni, "avx2,fma,f16c,avxvnni", true);
tile_fn!(tile_plain, "avx2,fma,f16c", false);

/// Runs every tile of `n` input rows against one packed panel.
///
/// # Safety
/// As [`tile`], for `n` rows of `xq` and `y`; with `vnni`, the CPU must support AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_panel<const S: usize, const SIGNED: bool>(
    vnni: bool,
    panel: *const u8,
    nsb: usize,
    xq: *const f32,
    xs: usize,
    n: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
) {
    let nb = nsb * S / 32;
    let mut t0 = 0;
    while t0 < n {
        let r = (n - t0).min(MR);
        // SAFETY: rows t0..t0 + r < n of xq and y exist (contract); VNNI only when supported.
        unsafe {
            let (x, yt) = (xq.add(t0 * xs), y.add(t0 * ldy));
            macro_rules! go {
                ($($r:literal)*) => {
                    match (r, vnni) {
                        $(
                            ($r, true) => tile_vnni::<$r, S, SIGNED>(panel, nsb, x, xs, nb, yt, ldy, nr),
                            ($r, false) => tile_plain::<$r, S, SIGNED>(panel, nsb, x, xs, nb, yt, ldy, nr),
                        )*
                        _ => unreachable!(),
                    }
                };
            }
            go!(1 2 3 4);
        }
        t0 += r;
    }
}

/// `y[t * ldy + j] = sum_c w[j, c] * x[t, c]` for `t < n`, `j < rows`, `x` given as its 8-bit
/// blocks `xq` (`q8_len(k)` words per row): panels of 16 weight rows packed into `panel`, then
/// run against every tile of input rows.
///
/// # Safety
/// `w` holds `rows` rows of `k` weights of `qt`, `xq` `n` quantized rows, `panel` at least
/// `ops::matmul_q_panel_len(k)` words; `y` valid for writes at `t * ldy + j` (`t < n`,
/// `j < rows`) with nothing else accessing them; the CPU must support AVX2, FMA and F16C, and
/// AVX-VNNI when `vnni`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_q_strided(
    qt: QuantType,
    vnni: bool,
    w: &[u8],
    k: usize,
    xq: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    rows: usize,
    panel: &mut [f32],
) {
    let rb = qt.row_bytes(k).expect("matmul_q: k is not whole blocks");
    let xs = q8_len(k);
    debug_assert!(w.len() >= rows * rb && xq.len() >= n * xs);
    let s = q_sub_block(qt);
    let nsb = k / s;
    let signed = qt == QuantType::Q8_0 && !vnni;
    let pb = panel_bytes(panel);
    let mut j0 = 0;
    while j0 < rows {
        let nr = (rows - j0).min(QNR);
        pack_q_panel(qt, &w[j0 * rb..(j0 + nr) * rb], k, nr, signed, pb);
        let p = pb.as_ptr();
        // SAFETY: the panel holds nsb packed sub-blocks; xq n rows; y columns j0..j0 + nr <
        // rows of rows t < n (contract); VNNI as our caller guarantees.
        unsafe {
            let yj = y.add(j0);
            match (s, signed) {
                (16, _) => run_panel::<16, false>(vnni, p, nsb, xq.as_ptr(), xs, n, yj, ldy, nr),
                (_, true) => run_panel::<32, true>(vnni, p, nsb, xq.as_ptr(), xs, n, yj, ldy, nr),
                _ => run_panel::<32, false>(vnni, p, nsb, xq.as_ptr(), xs, n, yj, ldy, nr),
            }
        }
        j0 += nr;
    }
}
