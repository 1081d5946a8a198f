//! AVX-512 bodies (512-bit, AVX-512F/BW/VL plus FMA and F16C). Same names and contracts as
//! [`crate::scalar`]; [`crate::ops`] checks buffer lengths before calling in here.
//!
//! Every load is unaligned; tails use masked loads/stores (masked-off lanes never fault), so no
//! body reads or writes a byte outside the slices it was given. Where a fixed group of vectors
//! runs past the end (the second vector of a pair, the last ones of a four-vector block), the
//! masks of the vectors past the end are all zero and their addresses are formed with
//! `wrapping_add`: such a pointer may lie beyond the allocation, where `add` would be undefined
//! behaviour, but an all-zero mask makes the intrinsic touch no memory through it.

use core::arch::x86_64::*;

use crate::dtype::{Dtype, WeightType};
use crate::stream::{prefetch, prefetch_ahead, PREFETCH_BYTES};

mod amx;
mod attention;
mod elementwise;
mod matmul;
mod matvec;
mod quant;
mod quant_gemm;
mod quant_repack;

pub use amx::amx_available;
pub use attention::*;
pub use elementwise::*;
pub use matmul::*;
pub use matvec::*;
pub use quant::*;
pub use quant_gemm::*;
pub use quant_repack::*;

/// Lane mask selecting the first `n` (`<= 16`) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 16 weights of dtype `W` starting at element `i` of `p`, widened to f32.
///
/// # Safety
/// `p` must be valid for reading elements `i..i + 16`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn ld<W: WeightType>(p: *const u8, i: usize) -> __m512 {
    // SAFETY: the caller guarantees elements i..i+16 are readable; loads are unaligned.
    unsafe {
        match W::DTYPE {
            Dtype::F32 => _mm512_loadu_ps(p.add(4 * i) as *const f32),
            Dtype::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i)),
            Dtype::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.add(2 * i) as *const __m256i),
            ))),
        }
    }
}

/// Like [`ld`], but only the lanes in `m` are read (the others are 0.0).
///
/// # Safety
/// `p` must be valid for reading the selected elements of `i..i + 16`, and element `i` must lie
/// inside (or one past the end of) `p`'s allocation, as it does whenever `m` selects lane 0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn ld_mask<W: WeightType>(p: *const u8, i: usize, m: __mmask16) -> __m512 {
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
///
/// # Safety
/// The CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn exp_ps(x: __m512) -> __m512 {
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

/// `sum(a[i] * b[i])` over `n` elements of two raw pointers: the attention's dot product on
/// an f32 cache, the same sums in the same order.
///
/// # Safety
/// `a` and `b` must be valid for reading `n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
        if !crate::Isa::Avx512.is_supported() {
            eprintln!("exp_ps: skipping avx512, which this CPU lacks");
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
        for (x, o) in xs.chunks_exact(16).zip(e.chunks_exact_mut(16)) {
            // SAFETY: AVX-512 support checked above; each chunk holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), exp_ps(_mm512_loadu_ps(x.as_ptr()))) };
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
