//! AVX2 attention: one query head at a time.

use core::arch::x86_64::*;

use super::elementwise::softmax;
use super::{dot_raw, mask8};

/// `out[..hd] = sum_p s[p] * v[p * hd..]` over `len` rows, four vectors of `out` at a time.
///
/// # Safety
/// `s` holds `len` floats, `v` `len * hd`, `out` `hd`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn weighted_sum(
    s: *const f32,
    v: *const f32,
    len: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut o = 0;
    while o < hd {
        let ms = [
            mask8(hd - o),
            mask8(hd.saturating_sub(o + 8)),
            mask8(hd.saturating_sub(o + 16)),
            mask8(hd.saturating_sub(o + 24)),
        ];
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: s[p] for p < len is inside s. o < hd, so `v.add(p * hd + o)` is inside row
        // p < len of v. Vector j reads v[p * hd + o + 8j..] and writes out[o + 8j..], masked to
        // columns below hd: inside v's row p and out. A vector with o + 8j >= hd has mask 0 and
        // touches nothing, but its address may lie past the end of v (last row) or out, so
        // those addresses are formed with `wrapping_add`.
        unsafe {
            for p in 0..len {
                let sp = _mm256_set1_ps(*s.add(p));
                let vp = v.add(p * hd + o);
                for j in 0..4 {
                    let x = _mm256_maskload_ps(vp.wrapping_add(8 * j), ms[j]);
                    acc[j] = _mm256_fmadd_ps(sp, x, acc[j]);
                }
            }
            for j in 0..4 {
                _mm256_maskstore_ps(out.wrapping_add(o + 8 * j), ms[j], acc[j]);
            }
        }
        o += 32;
    }
}

/// One query head: `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` floats, `scores` at least `len`, `out.len() == q.len()`; the CPU
/// must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    if hd == 0 {
        return;
    }
    let len = keys.len() / hd;
    if len == 0 {
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    // SAFETY: key p < len is inside keys; the other buffers are sized by the contract.
    unsafe {
        for p in 0..len {
            *scores.get_unchecked_mut(p) =
                dot_raw(q.as_ptr(), keys.as_ptr().add(p * hd), hd) * scale;
        }
        softmax(&mut scores[..len]);
        weighted_sum(scores.as_ptr(), values.as_ptr(), len, hd, out.as_mut_ptr());
    }
}
