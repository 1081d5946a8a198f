//! AVX-512 [`crate::scalar::stream_sum`] (integer adds; the float elementwise kernels are
//! `crate::generic`'s).

use core::arch::x86_64::*;

use super::prefetch_ahead;

/// [`crate::scalar::stream_sum`], reading 256 bytes per step in four independent loads, with
/// the decode matvecs' prefetch ([`crate::stream::prefetch_ahead`]).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn stream_sum(b: &[u8]) -> u64 {
    let steps = b.len() / 256;
    let p = b.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 4];
    for i in 0..steps {
        // SAFETY: step i < steps covers bytes 256 i..256 i + 256 <= b.len(); the prefetch may
        // point past b, where it is a no-op hint (wrapping_add forms no out-of-bounds pointer
        // arithmetic in the language's sense).
        unsafe {
            let q = p.add(256 * i);
            prefetch_ahead(q, 256);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(q.add(64 * j).cast()));
            }
        }
    }
    let v = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    (_mm512_reduce_add_epi64(v) as u64).wrapping_add(crate::scalar::stream_sum(&b[256 * steps..]))
}
