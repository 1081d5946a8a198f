//! The AVX-512 backend (512-bit, AVX-512F/BW/VL plus AVX2, FMA and F16C; BW/VL for the masked
//! 16-bit tail loads): the [`Simd`] token [`Avx512`], and the 16-lane helpers the AVX-512-only
//! kernels (`crate::avx512`: quantized dots, `vdpbf16ps`, AMX, the blocked attention) share
//! with it.
//!
//! Tails are masked loads and stores: masked-off lanes are never accessed (fault suppression).

use core::arch::x86_64::*;

use super::{Panel, Simd};
use crate::dtype::{Dtype, WeightType};

/// Proof that the CPU runs AVX-512F/BW/VL, AVX2, FMA and F16C: made only by [`Avx512::new`],
/// which detects them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The token, where the CPU has AVX-512F/BW/VL, AVX2, FMA and F16C.
    #[inline]
    pub(crate) fn new() -> Option<Avx512> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx512(()))
    }

    /// The token without detection, for code already running under the features.
    ///
    /// # Safety
    /// The CPU must support the features [`Avx512::new`] detects.
    #[inline(always)]
    pub(crate) unsafe fn new_unchecked() -> Avx512 {
        Avx512(())
    }
}

/// Lane mask selecting the first `n` (`<= 16`; more selects all) lanes.
#[inline(always)]
pub(crate) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 16 weights of dtype `W` starting at element `i` of `p`, widened to f32, but only the lanes
/// in `m` are read (the others are 0.0).
///
/// # Safety
/// `p` must be valid for reading the selected elements of `i..i + 16`, and element `i` must lie
/// inside (or one past the end of) `p`'s allocation, as it does whenever `m` selects lane 0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn ld_mask<W: WeightType>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) fn exp_ps(x: __m512) -> __m512 {
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

/// Transposes a 16×16 block of f32: `r[i]` holds row `i`; on return `r[c]` holds column `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) fn transpose16(r: &mut [__m512; 16]) {
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

// SAFETY (every `unsafe` block below that calls an intrinsic or a `#[target_feature]` helper):
// an `Avx512` exists only where `Avx512::new` detected AVX-512F/BW/VL, AVX2, FMA and F16C, which
// is all these instructions need; pointer contracts are the trait's, forwarded from the caller.
impl Simd for Avx512 {
    super::simd_methods!(avx512);
    super::vectorize_with!(fn vectorize = "avx512f,avx512bw,avx512vl,avx2,fma,f16c");
    #[inline(always)]
    fn add_tail(self, a: __m512, b: __m512, n: usize) -> __m512 {
        // SAFETY: AVX-512F (token).
        unsafe { _mm512_mask_add_ps(a, lanes(n), a, b) }
    }
    #[inline(always)]
    unsafe fn load_tail(self, p: *const f32, n: usize) -> __m512 {
        // SAFETY: token; the selected floats are readable and p is inside its allocation
        // (contract); masked-off lanes are not accessed.
        unsafe { _mm512_maskz_loadu_ps(lanes(n), p) }
    }
    #[inline(always)]
    unsafe fn load_tail_or(self, p: *const f32, n: usize, fill: __m512) -> __m512 {
        // SAFETY: as `load_tail`.
        unsafe { _mm512_mask_loadu_ps(fill, lanes(n), p) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize, v: __m512) {
        // SAFETY: token; the selected floats are writable and p is inside its allocation
        // (contract); masked-off lanes are not accessed.
        unsafe { _mm512_mask_storeu_ps(p, lanes(n), v) }
    }
    #[inline(always)]
    unsafe fn load_w_tail<W: WeightType>(self, p: *const u8, i: usize, n: usize) -> __m512 {
        // SAFETY: token; the selected elements are readable and element i is inside the
        // allocation (contract).
        unsafe { ld_mask::<W>(p, i, lanes(n)) }
    }
    #[inline(always)]
    fn hsum_u64(self, v: __m512i) -> u64 {
        // SAFETY: AVX-512F (token).
        unsafe { _mm512_reduce_add_epi64(v) as u64 }
    }
    #[inline(always)]
    fn prefetch_ahead(self, p: *const u8, len: usize) {
        crate::stream::prefetch_ahead(p, len)
    }
    /// 16×16 blocks are widened and transposed in registers.
    #[inline(always)]
    unsafe fn pack_panel<W: WeightType>(self, w: *const u8, at: Panel, buf: &mut [f32]) {
        let Panel { k, k0, kc, nr, nrp } = at;
        debug_assert!(buf.len() >= kc * nrp && nrp.is_multiple_of(16));
        let rb = k * W::SIZE;
        let bp = buf.as_mut_ptr();
        for jh in (0..nrp).step_by(16) {
            let mut kk = 0;
            while kk < kc {
                let m = lanes(kc - kk);
                // SAFETY: AVX-512F (token).
                let mut r = [unsafe { _mm512_setzero_ps() }; 16];
                for (i, ri) in r.iter_mut().enumerate() {
                    if jh + i < nr {
                        // SAFETY: token; row jh+i < nr is inside w; lanes masked below column
                        // k0+kc <= k.
                        *ri = unsafe { ld_mask::<W>(w.add((jh + i) * rb), k0 + kk, m) };
                    }
                }
                // SAFETY: token.
                unsafe { transpose16(&mut r) };
                for (q, rq) in r.iter().enumerate().take((kc - kk).min(16)) {
                    // SAFETY: token; (kk + q) < kc, jh + 16 <= nrp: inside buf's kc * nrp.
                    unsafe { _mm512_storeu_ps(bp.add((kk + q) * nrp + jh), *rq) };
                }
                kk += 16;
            }
        }
    }
}
