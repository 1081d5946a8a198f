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
mod qcall;
// the integer layer is implemented by the x86 backends; NEON's quantized kernels are its own
// (kernels/src/neon/quant.rs: it folds the quants' offsets into signed bytes, which `QSimd`'s
// unsigned dot cannot give the bits of) and share only `qcall` with them
#[cfg(target_arch = "x86_64")]
mod qsimd;
#[cfg(target_arch = "x86_64")]
mod quant;
#[cfg(target_arch = "x86_64")]
mod quant_gemm;

pub(crate) use attention::*;
pub(crate) use elementwise::*;
pub(crate) use matmul::*;
pub(crate) use matvec::*;
pub(crate) use qcall::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use qsimd::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use quant::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use quant_gemm::*;

/// The blocks `(start, len)` that cover `0..total` in order, `step` long but the last.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn blocks(total: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total)
        .step_by(step)
        .map(move |start| (start, step.min(total - start)))
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
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

    /// [`exp_ulps_whole_range`] on every backend this CPU runs.
    #[test]
    fn exp_ulps_whole_range_every_backend() {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = crate::simd::avx2::Avx2::new();
            let avx512 = crate::simd::avx512::Avx512::new();
            if let Some(s) = avx2 {
                exp_ulps_whole_range(s);
            }
            if let Some(s) = avx512 {
                exp_ulps_whole_range(s);
            }
            if avx2.is_none() || avx512.is_none() {
                eprintln!("exp: skipping the x86 backends this CPU lacks");
            }
        }
        #[cfg(target_arch = "aarch64")]
        exp_ulps_whole_range(crate::simd::neon::Neon::new().expect("every aarch64 CPU has NEON"));
    }

    /// The NEON backend's own semantics the trait documents: `max` gives `b` where either is
    /// NaN (as x86's `maxps`), `hmax` ignores NaN lanes, tails touch only their lanes.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_lane_semantics() {
        let s = crate::simd::neon::Neon::new().expect("every aarch64 CPU has NEON");
        let mut out = [0f32; 4];
        let a = [1.0, f32::NAN, 3.0, -0.0];
        let b = [2.0, 5.0, f32::NAN, 0.0];
        // SAFETY: every buffer holds 4 floats.
        unsafe {
            let m = s.max(s.load(a.as_ptr()), s.load(b.as_ptr()));
            s.store(out.as_mut_ptr(), m);
        }
        assert_eq!(out[0], 2.0);
        assert_eq!(out[1], 5.0);
        assert!(out[2].is_nan());
        assert_eq!(out[3].to_bits(), 0.0f32.to_bits());
        // SAFETY: 4 floats.
        let h = unsafe { s.hmax(s.load([f32::NAN, -1.0, 7.0, f32::NAN].as_ptr())) };
        assert_eq!(h, 7.0);
        // a tail of 3 reads 3 floats (the slice ends there) and writes 3
        let src = [1.0f32, 2.0, 3.0];
        let mut dst = [9.0f32; 4];
        // SAFETY: src holds 3 floats, dst 4 (3 written).
        unsafe {
            let v = s.load_tail(src.as_ptr(), 3);
            s.store(out.as_mut_ptr(), v);
            s.store_tail(dst.as_mut_ptr(), 3, v);
        }
        assert_eq!(out, [1.0, 2.0, 3.0, 0.0]);
        assert_eq!(dst, [1.0, 2.0, 3.0, 9.0]);
        let fill = s.splat(-5.0);
        // SAFETY: src holds 3 floats, 2 read.
        unsafe { s.store(out.as_mut_ptr(), s.load_tail_or(src.as_ptr(), 2, fill)) };
        assert_eq!(out, [1.0, 2.0, -5.0, -5.0]);
        assert_eq!(s.hsum(s.splat(0.25)), 1.0);
    }
}
