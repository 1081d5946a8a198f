//! The NEON backend (aarch64 Advanced SIMD, 128-bit): the [`Simd`] token [`Neon`].
//!
//! Written on `std::arch::aarch64` rather than the `wide` crate: every trait method is one NEON
//! instruction or a short fixed sequence, the masked tails and the lane orders of the
//! reductions must be exactly what the trait documents (they fix the results' rounding, which
//! the tests pin), and `wide`'s types would add a dependency for the four-lane arithmetic
//! alone, without the f16 / bf16 widening loads or the tails.
//!
//! NEON has no masked loads or stores: a tail is copied through a zeroed stack buffer, so no
//! access touches an element past the ones asked for. NEON is part of the aarch64 baseline,
//! so [`Simd::vectorize`] needs no extra target features; the token still comes from
//! detection, like every backend's.

use core::arch::aarch64::*;

use super::Simd;
use crate::dtype::WeightType;

/// Proof that the CPU runs NEON (with the FP16 conversions of the aarch64 baseline): made only
/// by [`Neon::new`], which detects it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    /// The token, where the CPU has NEON (every aarch64 Linux CPU).
    #[inline]
    pub(crate) fn new() -> Option<Neon> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

/// All-ones in the lanes `< n`.
#[inline(always)]
fn lane_mask(n: usize) -> uint32x4_t {
    const IDX: [u32; 4] = [0, 1, 2, 3];
    // SAFETY: NEON (baseline); IDX holds 4 u32.
    unsafe { vcltq_u32(vld1q_u32(IDX.as_ptr()), vdupq_n_u32(n.min(4) as u32)) }
}

/// Horizontal sum, `(v0 + v1) + (v2 + v3)`: two pairwise adds.
///
/// # Safety
/// NEON.
#[inline(always)]
unsafe fn hsum(v: float32x4_t) -> f32 {
    // SAFETY: register-only NEON (contract).
    unsafe {
        let p = vpaddq_f32(v, v);
        vgetq_lane_f32::<0>(vpaddq_f32(p, p))
    }
}

/// Vectorized `exp`, the AVX2 / AVX-512 backends' algorithm (within ~1 ulp over the whole f32
/// range): `exp(x) = 2^n * p(r)`, `r = x - n ln2` in two Cody-Waite steps, `p` a degree-7
/// Taylor polynomial, `2^n` applied as two exact power-of-two factors so that subnormal
/// results round once and overflow gives +inf; below ~-103.97 the result is 0. NaN stays NaN.
///
/// # Safety
/// NEON.
#[inline(always)]
unsafe fn exp_ps(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON (contract).
    unsafe {
        // vminq / vmaxq return NaN where either lane is NaN, so NaN passes through the clamp.
        let x = vminq_f32(vdupq_n_f32(89.0), x);
        let x = vmaxq_f32(vdupq_n_f32(-104.0), x);
        let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
        let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
        let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
        let mut p = vdupq_n_f32(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        // n is in [-150, 129] (NaN converts to 0, and p is NaN then anyway).
        let ni = vcvtq_s32_f32(n);
        let n1 = vshrq_n_s32::<1>(ni);
        let n2 = vsubq_s32(ni, n1);
        let bias = vdupq_n_s32(127);
        let s1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
        let s2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
        vmulq_f32(vmulq_f32(p, s1), s2)
    }
}

// SAFETY (every `unsafe` block below that calls an intrinsic): a `Neon` exists only where
// `Neon::new` detected NEON, which is all these instructions need; pointer contracts are the
// trait's, forwarded from the caller.
impl Simd for Neon {
    super::simd_methods!(neon);
    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        // NEON is in the aarch64 baseline: every function is already compiled with it.
        f()
    }
    #[inline(always)]
    fn add_tail(self, a: float32x4_t, b: float32x4_t, n: usize) -> float32x4_t {
        // SAFETY: NEON (token). Lanes past n add +0.0 to `a`, which leaves every value but -0.0
        // as it is (the kernels add into sums that start at +0.0).
        unsafe {
            let masked = vandq_u32(vreinterpretq_u32_f32(b), lane_mask(n));
            vaddq_f32(a, vreinterpretq_f32_u32(masked))
        }
    }
    #[inline(always)]
    unsafe fn load_tail(self, p: *const f32, n: usize) -> float32x4_t {
        // SAFETY: the first min(n, 4) floats at p are readable (contract); the rest of the
        // vector comes from the zeroed buffer.
        unsafe {
            if n >= 4 {
                return vld1q_f32(p);
            }
            let mut tmp = [0f32; 4];
            std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
            vld1q_f32(tmp.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn load_tail_or(self, p: *const f32, n: usize, fill: float32x4_t) -> float32x4_t {
        // SAFETY: as `load_tail`.
        unsafe { vbslq_f32(lane_mask(n), self.load_tail(p, n), fill) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize, v: float32x4_t) {
        // SAFETY: the first min(n, 4) floats at p are writable (contract); only they are
        // written, from a copy of the vector.
        unsafe {
            if n >= 4 {
                return vst1q_f32(p, v);
            }
            let mut tmp = [0f32; 4];
            vst1q_f32(tmp.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
        }
    }
    #[inline(always)]
    unsafe fn load_w_tail<W: WeightType>(self, p: *const u8, i: usize, n: usize) -> float32x4_t {
        // SAFETY: token; elements i..i+min(n, 4) readable and element i inside the allocation
        // (contract): a full vector is one load, a tail a copy of its elements.
        unsafe {
            if n >= 4 {
                self.load_w::<W>(p, i)
            } else {
                self.load_w_copied::<W>(p, i, n)
            }
        }
    }
    #[inline(always)]
    fn hsum_u64(self, v: uint64x2_t) -> u64 {
        // SAFETY: NEON (token).
        unsafe { vgetq_lane_u64::<0>(v).wrapping_add(vgetq_lane_u64::<1>(v)) }
    }
    #[inline(always)]
    fn prefetch_ahead(self, _p: *const u8, _len: usize) {
        // (PREFETCH_MATVEC is false: the hardware prefetchers of ARM server cores follow a
        // sequential row; unmeasured, see the README)
    }
}
