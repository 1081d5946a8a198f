//! The AVX-512 backend of the quantized kernels ([`QSimd`] for [`Avx512`]): the integer dot
//! (`vpdpbusd` with AVX512-VNNI, else `vpmaddubsw` + `vpmaddwd`), the per-unit reductions of
//! 16-lane vectors, the ggml blocks' unpacking (`unpack`), the fast panel packer
//! (`quant_gemm`) and the AMX tiles (`amx`). The kernels are written once in
//! [`crate::generic`], but for the AVX512-VNNI register tiles of many decode rows (`tile`),
//! which unpack through the same [`QUnpack`](crate::generic::QUnpack) and form the inputs'
//! factors with the matvec's [`unit_steps`](crate::generic::unit_steps), so as to give its
//! bits.

use core::arch::x86_64::*;

use super::amx::amx_panel;
use super::lanes;
use super::quant_gemm::pack_panel_32;
use crate::generic::{qsimd_methods, PanelRun, QSimd};
use crate::quant::panel::{pack_q_panel, QNR};
use crate::quant::QuantType;
use crate::simd::avx512::Avx512;
use crate::stream::prefetch;

mod tile;
mod unpack;

pub use tile::{gemm_q_tile, prepare_q_tile_x};

// SAFETY (every `unsafe` block below that calls an intrinsic, here and in `unpack`): an
// `Avx512` exists only where the CPU has AVX-512F/BW/VL, AVX2, FMA and F16C; `vpdpbusd` runs
// only inside `vectorize_vnni`, whose caller guarantees AVX512-VNNI. Pointer contracts are the
// trait's, forwarded from the caller.
impl QSimd for Avx512 {
    qsimd_methods!(
        avx512,
        vnni = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
    );
    #[inline(always)]
    fn sign_of(self, w: __m512i) -> __mmask64 {
        // SAFETY: see the impl.
        unsafe { _mm512_movepi8_mask(w) }
    }
    /// `unit == 32`: vector i holds units 2i, 2i+1; `unit == 16`: vector i holds units
    /// 4i..4i+4.
    #[inline(always)]
    fn reduce_units(self, unit: usize, v: &[__m512i]) -> __m512i {
        // SAFETY: see the impl.
        unsafe {
            let pair = |a: __m512i, b: __m512i| {
                _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
            };
            let quad = |a: __m512i, b: __m512i| {
                _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
            };
            if unit == 16 {
                // chunk c, lane j: unit 4j + c
                let x = quad(pair(v[0], v[1]), pair(v[2], v[3]));
                let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                return _mm512_permutexvar_epi32(idx, x);
            }
            // x_k chunk c, lane j: the sum of chunk c of v[4k + j]
            let x0 = quad(pair(v[0], v[1]), pair(v[2], v[3]));
            let x1 = quad(pair(v[4], v[5]), pair(v[6], v[7]));
            let y = _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(x0, x1),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(x0, x1),
            );
            // y: units 0 2 4 6 | 1 3 5 7 | 8 10 12 14 | 9 11 13 15
            let idx = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
            _mm512_permutexvar_epi32(idx, y)
        }
    }
    #[inline(always)]
    unsafe fn pair_sums(self, hs: *const f32, n: usize) -> __m512 {
        // SAFETY: 2n floats readable at hs (contract), the masks select only those; the second
        // address is formed with `wrapping_add` as it may lie past them (its mask then zero).
        unsafe {
            let a = _mm512_maskz_loadu_ps(lanes(2 * n), hs);
            let b = _mm512_maskz_loadu_ps(lanes((2 * n).saturating_sub(16)), hs.wrapping_add(16));
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
            _mm512_add_ps(
                _mm512_permutex2var_ps(a, even, b),
                _mm512_permutex2var_ps(a, odd, b),
            )
        }
    }
    #[inline(always)]
    unsafe fn dup_steps(self, d: *const f32) -> __m512 {
        // SAFETY: 8 floats readable at d (contract).
        unsafe {
            let d8 = _mm256_loadu_ps(d);
            let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
            _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(d8))
        }
    }
    /// The panel's rows are one contiguous run of bytes, but packing reads them a row apart
    /// and stalled on every load (a prefill call on few inputs ran at a tenth of the read
    /// bandwidth): the whole run is asked for first, so the misses overlap. Full panels of
    /// Q4_0, Q5_0 and Q8_0 are packed in registers ([`pack_panel_32`]).
    #[inline(always)]
    fn pack_q_panel(self, qt: QuantType, w: &[u8], k: usize, signed: bool, pb: &mut [u8]) {
        let rb = qt.row_bytes(k).unwrap_or(usize::MAX);
        let nr = w.len() / rb;
        for line in (0..w.len()).step_by(64) {
            prefetch(w.as_ptr().wrapping_add(line));
        }
        if nr == QNR && matches!(qt, QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0) {
            // SAFETY: the token proves AVX-512F/BW/VL and F16C.
            unsafe { pack_panel_32(qt, w, rb, k, signed, pb) };
        } else {
            pack_q_panel(qt, w, k, nr, signed, pb);
        }
    }
    #[inline(always)]
    unsafe fn matrix_tiles<const S: usize>(self, run: PanelRun, n: usize) -> bool {
        // SAFETY: forwarded contract (AMX claimed).
        unsafe { amx_panel::<S>(run, n) };
        true
    }
}
