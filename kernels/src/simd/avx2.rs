//! The AVX2 backend (256-bit, AVX2 + FMA + F16C): the [`Simd`] token [`Avx2`], and the
//! 8-lane helpers the AVX2-only kernels (`crate::avx2`: the quantized dots) share with it.
//!
//! f32 tails use `vmaskmovps` (masked-off lanes never fault); 16-bit tails are copied into a
//! zeroed stack buffer first (AVX2 has no masked 16-bit load), so nothing touches a byte
//! outside the elements asked for.

use core::arch::x86_64::*;

use super::Simd;
use crate::dtype::{Dtype, WeightType};

/// Proof that the CPU runs AVX2, FMA and F16C: made only by [`Avx2::new`], which detects them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The token, where the CPU has AVX2, FMA and F16C.
    #[inline]
    pub(crate) fn new() -> Option<Avx2> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2(()))
    }
}

/// A lane mask (all-ones in lanes `< n`) for `vmaskmovps`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn mask8(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The horizontal sum (`_mm_add_ps`, `_mm_add_ss`) or max (`_mm_max_ps`, `_mm_max_ss`) of the
/// lanes, in one fixed order: the two 128-bit halves, the high pair onto the low, lane 1 onto
/// lane 0.
macro_rules! horizontal {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $ps:ident, $ss:ident) => {
        $(#[$doc])*
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        $vis fn $name(v: __m256) -> f32 {
            let s = $ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = $ps(s, _mm_movehl_ps(s, s));
            let s = $ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    };
}
horizontal!(/** Horizontal sum. */ fn hsum = _mm_add_ps, _mm_add_ss);
horizontal!(/** Horizontal max. */ fn hmax = _mm_max_ps, _mm_max_ss);

/// Vectorized `exp`, within ~1 ulp over the whole f32 range: `exp(x) = 2^n * p(r)`,
/// `r = x - n ln2` (Cody-Waite), `p` a degree-7 Taylor polynomial. `2^n` is applied as two
/// exact power-of-two factors `2^(n>>1) * 2^(n - (n>>1))` so that results in the subnormal range
/// are rounded once and overflow gives +inf; below ~-103.97 the result is 0. NaN stays NaN.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn exp_ps(x: __m256) -> __m256 {
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

// SAFETY (every `unsafe` block below that calls an intrinsic or a `#[target_feature]` helper):
// an `Avx2` exists only where `Avx2::new` detected AVX2, FMA and F16C, which is all these
// instructions need; pointer contracts are the trait's, forwarded from the caller.
impl Simd for Avx2 {
    super::simd_methods!(avx2);
    super::vectorize_with!(fn vectorize = "avx2,fma,f16c");
    #[inline(always)]
    fn add_tail(self, a: __m256, b: __m256, n: usize) -> __m256 {
        // SAFETY: AVX2 (token). Lanes past n add +0.0 to `a`, which leaves every value but -0.0
        // as it is (the kernels add into sums that start at +0.0).
        unsafe { _mm256_add_ps(a, _mm256_and_ps(b, _mm256_castsi256_ps(mask8(n)))) }
    }
    #[inline(always)]
    unsafe fn load_tail(self, p: *const f32, n: usize) -> __m256 {
        // SAFETY: token; the first min(n, 8) floats are readable (contract), the masked-off lanes
        // are not accessed.
        unsafe { _mm256_maskload_ps(p, mask8(n)) }
    }
    #[inline(always)]
    unsafe fn load_tail_or(self, p: *const f32, n: usize, fill: __m256) -> __m256 {
        // SAFETY: as `load_tail`.
        unsafe {
            let m = mask8(n);
            _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))
        }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize, v: __m256) {
        // SAFETY: token; the first min(n, 8) floats are writable (contract), the masked-off
        // lanes are not accessed.
        unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
    }
    #[inline(always)]
    unsafe fn load_w_tail<W: WeightType>(self, p: *const u8, i: usize, n: usize) -> __m256 {
        // SAFETY: token; elements i..i+min(n, 8) readable and element i inside the allocation
        // (contract): a full vector is one load, an f32 tail a masked load, a 16-bit tail a copy
        // of its elements.
        unsafe {
            if n >= 8 {
                self.load_w::<W>(p, i)
            } else if W::DTYPE == Dtype::F32 {
                _mm256_maskload_ps(p.add(4 * i) as *const f32, mask8(n))
            } else {
                self.load_w_copied::<W>(p, i, n)
            }
        }
    }
    #[inline(always)]
    fn hsum_u64(self, v: __m256i) -> u64 {
        let mut w = [0u64; 4];
        // SAFETY: AVX (token); w holds 32 bytes.
        unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), v) };
        w.iter().fold(0u64, |a, &x| a.wrapping_add(x))
    }
    #[inline(always)]
    fn prefetch_ahead(self, p: *const u8, len: usize) {
        crate::stream::prefetch_ahead(p, len)
    }
}
