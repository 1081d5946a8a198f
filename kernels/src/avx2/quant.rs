//! The AVX2 backend of the quantized kernels ([`QSimd`] for [`Avx2`]): the integer dot
//! (`vpdpbusd` where the CPU has AVX-VNNI, else `vpmaddubsw` + `vpmaddwd`), the per-unit
//! reductions of 8-lane vectors and the ggml blocks' unpacking (`unpack`). The kernels are
//! written once in [`crate::generic`].

use core::arch::x86_64::*;

use super::mask8;
use crate::generic::{qsimd_methods, QSimd};
use crate::simd::avx2::Avx2;

mod unpack;

// SAFETY (every `unsafe` block below that calls an intrinsic, here and in `unpack`): an `Avx2`
// exists only where the CPU has AVX2, FMA and F16C; `vpdpbusd` runs only inside
// `vectorize_vnni`, whose caller guarantees AVX-VNNI. Pointer contracts are the trait's,
// forwarded from the caller.
impl QSimd for Avx2 {
    qsimd_methods!(avx2, vnni = "avx2,fma,f16c,avxvnni");
    /// `vpsignb` reads the signs from the weights themselves.
    #[inline(always)]
    fn sign_of(self, w: __m256i) -> __m256i {
        w
    }
    /// `unit == 32`: vector i is unit i; `unit == 16`: vector i holds units 2i, 2i+1.
    #[inline(always)]
    fn reduce_units(self, unit: usize, v: &[__m256i]) -> __m256i {
        // SAFETY: see the impl.
        unsafe {
            let h = _mm256_hadd_epi32;
            if unit == 16 {
                // 128-bit lane 0: units 0 2 4 6, lane 1: units 1 3 5 7
                let s = h(h(v[0], v[1]), h(v[2], v[3]));
                return _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            }
            // lane 0: sums of the low halves of v[0..4], lane 1: of their high halves
            let s0 = h(h(v[0], v[1]), h(v[2], v[3]));
            let s1 = h(h(v[4], v[5]), h(v[6], v[7]));
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(s0, s1),
                _mm256_permute2x128_si256::<0x31>(s0, s1),
            )
        }
    }
    #[inline(always)]
    unsafe fn pair_sums(self, hs: *const f32, n: usize) -> __m256 {
        // SAFETY: 2n floats readable at hs (contract), the masks select only those; the second
        // address is formed with `wrapping_add` as it may lie past them (its mask then zero).
        unsafe {
            let a = _mm256_maskload_ps(hs, mask8(2 * n));
            let b = _mm256_maskload_ps(hs.wrapping_add(8), mask8((2 * n).saturating_sub(8)));
            let s = _mm256_castps_pd(_mm256_hadd_ps(a, b));
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(s))
        }
    }
    #[inline(always)]
    unsafe fn dup_steps(self, d: *const f32) -> __m256 {
        // SAFETY: 4 floats readable at d (contract).
        unsafe {
            let d4 = _mm256_castps128_ps256(_mm_loadu_ps(d));
            _mm256_permutevar8x32_ps(d4, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3))
        }
    }
}
