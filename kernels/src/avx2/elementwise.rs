//! AVX2 [`crate::scalar::stream_sum`] (integer adds; the float elementwise kernels are
//! `crate::generic`'s).

use core::arch::x86_64::*;

use super::prefetch_ahead;

/// [`crate::scalar::stream_sum`], reading 128 bytes per step in four independent loads, with
/// the decode matvecs' prefetch ([`crate::stream::prefetch_ahead`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn stream_sum(b: &[u8]) -> u64 {
    let steps = b.len() / 128;
    let p = b.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 4];
    for i in 0..steps {
        // SAFETY: step i < steps covers bytes 128 i..128 i + 128 <= b.len(); the prefetches may
        // point past b, where they are no-op hints (formed with wrapping_add).
        unsafe {
            let q = p.add(128 * i);
            prefetch_ahead(q, 128);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(q.add(32 * j).cast()));
            }
        }
    }
    let v = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut w = [0u64; 4];
    // SAFETY: w holds 32 bytes.
    unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), v) };
    w.iter()
        .fold(0u64, |a, &x| a.wrapping_add(x))
        .wrapping_add(crate::scalar::stream_sum(&b[128 * steps..]))
}
