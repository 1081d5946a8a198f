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
use crate::stream::prefetch_ahead;

mod attention;
mod elementwise;
mod matmul;
mod matvec;
mod quant;
mod quant_gemm;

pub use attention::*;
pub use elementwise::*;
pub use matmul::*;
pub use matvec::*;
pub use quant::*;
pub use quant_gemm::*;

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

/// `sum(a[i] * b[i])` over `n` elements of two raw pointers: the attention's dot product on
/// an f32 cache, the same sums in the same order.
///
/// # Safety
/// `a` and `b` must be valid for reading `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    // SAFETY: forwarded contract (an f32 cache's elements are floats).
    unsafe { attention::dot_kv::<crate::dtype::F32>(a, b, n) }
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
