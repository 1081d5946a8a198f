//! The quantized prefill tiles' epilogue, shared by the AVX512-VNNI, `vpmaddubsw` and AMX
//! tiles: integer dots scaled into f32 accumulators, and the accumulators stored.

use core::arch::x86_64::*;

use super::lanes;

/// Adds sub-block `i`'s integer dots `idot` (one lane per weight row) of one input row into
/// that row's f32 accumulator `f`: `f += f32(idot) * (scale * d_x) + bias * s_x`, with `sc` and
/// `bi` the sub-block's 16 scales and biases, `xr` the input row's [`crate::quant::q8_len`]
/// words (`nb` blocks of 32). Every tile (VNNI, plain, AMX) scales through here, in this
/// order, so they give the same bits for the same integer dots.
///
/// # Safety
/// `xr` holds `nb` blocks and sub-block `i` of `S` weights lies inside them; AVX-512F enabled
/// by the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn add_sub_block<const S: usize>(
    f: &mut __m512,
    idot: __m512i,
    sc: __m512,
    bi: __m512,
    xr: *const f32,
    nb: usize,
    i: usize,
) {
    let b = i * S / 32;
    // SAFETY: d and the half sums of block b < nb are words b and nb + 2b (+1) of the row
    // (contract); register-only AVX-512F otherwise.
    unsafe {
        let dx = *xr.add(b);
        let hs = xr.add(nb + 2 * b);
        let sx = if S == 32 {
            *hs + *hs.add(1)
        } else {
            *hs.add(i & 1)
        };
        let scx = _mm512_mul_ps(sc, _mm512_set1_ps(dx));
        *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), scx, *f);
        *f = _mm512_fmadd_ps(bi, _mm512_set1_ps(sx), *f);
    }
}

/// Stores each tile row's accumulator to columns `0..nr` of its row of `y`.
///
/// # Safety
/// `y` valid for writes to `facc.len()` rows of `ldy` floats at columns `0..nr`, `nr <= 16`;
/// AVX-512F enabled by the caller.
#[inline(always)]
pub(crate) unsafe fn store_rows(facc: &[__m512], y: *mut f32, ldy: usize, nr: usize) {
    let m = lanes(nr);
    for (t, f) in facc.iter().enumerate() {
        // SAFETY: row t < facc.len(), columns 0..nr of y: writable by the contract.
        unsafe { _mm512_mask_storeu_ps(y.add(t * ldy), m, *f) };
    }
}
