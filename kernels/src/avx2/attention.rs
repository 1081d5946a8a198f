//! AVX2 attention: one query head at a time, reading the KV cache in its own type `T`
//! ([`KvType`]): f32 as it is, bf16 and f16 widened to f32 in registers as they are loaded
//! (bf16: zero-extend and shift left 16; f16: `vcvtph2ps`).

use core::arch::x86_64::*;

use super::elementwise::softmax;
use super::{hsum, ld, ld_part, mask8};
use crate::dtype::{Dtype, KvType};

/// The first `cnt` (`1..=8`) KV elements at `p`, widened to f32 (the other lanes 0.0).
///
/// # Safety
/// `p` must be valid for reading `cnt` elements, `1 <= cnt <= 8`; the CPU must support the
/// enabled features.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_kv<T: KvType>(p: *const T::Elem, cnt: usize) -> __m256 {
    debug_assert!((1..=8).contains(&cnt));
    // SAFETY: cnt elements are readable at p (contract). A full vector is one plain load; a
    // partial f32 one is a masked load (masked-off lanes are not accessed); a partial 16-bit one
    // copies the cnt elements into a zeroed vector first (`ld_part`; AVX2 has no masked 16-bit
    // load).
    unsafe {
        if cnt == 8 {
            ld::<T>(p as *const u8, 0)
        } else if T::DTYPE == Dtype::F32 {
            _mm256_maskload_ps(p as *const f32, mask8(cnt))
        } else {
            ld_part::<T>(p as *const u8, 0, cnt)
        }
    }
}

/// `sum(q[i] * widen(k[i]))` over `n` elements: the same sums, in the same order, as the f32
/// dot product, on the widened keys.
///
/// # Safety
/// `q` must be valid for reading `n` floats, `k` `n` elements; the CPU must support the enabled
/// features.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_kv<T: KvType>(q: *const f32, k: *const T::Elem, n: usize) -> f32 {
    let kb = k as *const u8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every access is to elements < n of q and k (full vectors, then a tail of n - i
    // elements starting inside both).
    unsafe {
        while i + 32 <= n {
            for (j, a_j) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a_j = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(o)), ld::<T>(kb, o), *a_j);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), ld::<T>(kb, i), acc[0]);
            i += 8;
        }
        if i < n {
            acc[1] = _mm256_fmadd_ps(
                _mm256_maskload_ps(q.add(i), mask8(n - i)),
                ld_kv::<T>(k.add(i), n - i),
                acc[1],
            );
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// `out[..hd] = sum_p s[p] * widen(v[p * hd..])` over `len` rows, four vectors of `out` at a
/// time.
///
/// # Safety
/// `s` holds `len` floats, `v` `len * hd` elements, `out` `hd` floats; the CPU must support the
/// enabled features.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn weighted_sum<T: KvType>(
    s: *const f32,
    v: *const T::Elem,
    len: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut o = 0;
    while o < hd {
        // vector j holds columns o + 8j .. o + 8j + cnt[j] (cnt 0: past hd, skipped, so no
        // address past a row or past `out` is ever formed)
        let cnt = [0, 8, 16, 24].map(|c: usize| hd.saturating_sub(o + c).min(8));
        let mut acc = [_mm256_setzero_ps(); 4];
        // SAFETY: s[p] for p < len is inside s. For cnt[j] > 0, o + 8j < hd, so `v.add(p * hd +
        // o + 8j)` is an element of row p < len of v with cnt[j] elements of the row from it,
        // and `out.add(o + 8j)` an element of out, stored masked to its cnt[j] columns.
        unsafe {
            for p in 0..len {
                let sp = _mm256_set1_ps(*s.add(p));
                let vp = v.add(p * hd + o);
                for j in 0..4 {
                    if cnt[j] > 0 {
                        let x = ld_kv::<T>(vp.add(8 * j), cnt[j]);
                        acc[j] = _mm256_fmadd_ps(sp, x, acc[j]);
                    }
                }
            }
            for j in 0..4 {
                if cnt[j] > 0 {
                    _mm256_maskstore_ps(out.add(o + 8 * j), mask8(cnt[j]), acc[j]);
                }
            }
        }
        o += 32;
    }
}

/// One query head over `len = keys.len() / q.len()` cached positions of KV type `T`:
/// `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` elements, `scores` at least `len` floats, `out.len() ==
/// q.len()`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attention<T: KvType>(
    q: &[f32],
    keys: &[T::Elem],
    values: &[T::Elem],
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
                dot_kv::<T>(q.as_ptr(), keys.as_ptr().add(p * hd), hd) * scale;
        }
        softmax(&mut scores[..len]);
        weighted_sum::<T>(scores.as_ptr(), values.as_ptr(), len, hd, out.as_mut_ptr());
    }
}
