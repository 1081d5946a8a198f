//! Kernel bodies written once over the [`Simd`](crate::simd::Simd) trait and monomorphized per
//! backend: the elementwise ops, the widening matvecs, the f32 matmul and the per-row
//! attention; and, over its integer extension [`QSimd`] / [`QUnpack`] (`qsimd`: the integer
//! dot, the per-unit reductions, the ggml unpacking, implemented in `avx2::quant` and
//! `avx512::quant`), the quantized matvec and prefill matmul. Same names and contracts as
//! [`crate::scalar`]; [`crate::ops`] checks buffer lengths before calling in here.
//!
//! Each entry takes the backend token first and runs its body inside
//! [`Simd::vectorize`](crate::simd::Simd::vectorize) (or `QSimd::vectorize_vnni`), so the body
//! is compiled for the backend's features; the helpers it calls are `#[inline(always)]` for
//! the same reason.

mod attention;
mod elementwise;
mod matmul;
mod matvec;
mod qsimd;
mod quant;
mod quant_gemm;

pub(crate) use attention::*;
pub(crate) use elementwise::*;
pub(crate) use matmul::*;
pub(crate) use matvec::*;
pub(crate) use qsimd::*;
pub(crate) use quant::*;
pub(crate) use quant_gemm::*;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use crate::simd::Simd;

    /// `S::exp` within 2 ulps of the correctly rounded exp over the whole f32 range (subnormal
    /// results, overflow to +inf and underflow to 0 included), NaN kept.
    fn exp_ulps_whole_range<S: Simd>(s: S) {
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
        s.vectorize(
            #[inline(always)]
            || {
                for (x, o) in xs.chunks_exact(S::LANES).zip(e.chunks_exact_mut(S::LANES)) {
                    // SAFETY: each chunk holds LANES floats.
                    unsafe { s.store(o.as_mut_ptr(), s.exp(s.load(x.as_ptr()))) };
                }
            },
        );
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

    #[test]
    fn exp_ulps_whole_range_avx2() {
        match crate::simd::avx2::Avx2::new() {
            Some(s) => exp_ulps_whole_range(s),
            None => eprintln!("exp: skipping avx2, which this CPU lacks"),
        }
    }

    #[test]
    fn exp_ulps_whole_range_avx512() {
        match crate::simd::avx512::Avx512::new() {
            Some(s) => exp_ulps_whole_range(s),
            None => eprintln!("exp: skipping avx512, which this CPU lacks"),
        }
    }
}
