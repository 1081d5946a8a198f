//! Per-row attention: one query head at a time, reading the KV cache in its own type `T`
//! ([`KvType`]): f32 as it is, bf16 and f16 widened to f32 in registers as they are loaded, so
//! the math after the load is the f32 path's.

use super::elementwise::softmax;
use crate::dtype::KvType;
use crate::layout::AttnHead;
use crate::simd::Simd;

/// `sum(q[i] * widen(k[i]))` over `n` elements: the same sums, in the same order, as the f32
/// dot product, on the widened keys.
///
/// # Safety
/// `q` must be valid for reading `n` floats, `k` `n` elements.
#[inline(always)]
pub(crate) unsafe fn dot_kv<S: Simd, T: KvType>(
    s: S,
    q: *const f32,
    k: *const T::Elem,
    n: usize,
) -> f32 {
    let l = S::LANES;
    let kb = k as *const u8;
    let mut acc = [s.zero(); 4];
    let mut i = 0;
    // SAFETY: every access is to elements < n of q and k: full vectors while i + 4 LANES (then
    // i + LANES) <= n, then a tail of n - i elements whose first, i < n, is inside both.
    unsafe {
        while i + 4 * l <= n {
            for (j, a_j) in acc.iter_mut().enumerate() {
                let o = i + l * j;
                *a_j = s.fma(s.load(q.add(o)), s.load_w::<T>(kb, o), *a_j);
            }
            i += 4 * l;
        }
        while i + l <= n {
            acc[0] = s.fma(s.load(q.add(i)), s.load_w::<T>(kb, i), acc[0]);
            i += l;
        }
        if i < n {
            acc[1] = s.fma(
                s.load_tail(q.add(i), n - i),
                s.load_w_tail::<T>(kb, i, n - i),
                acc[1],
            );
        }
    }
    s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])))
}

/// `out[..hd] = sum_p s[p] * widen(v[p * hd..])` over `len` rows, four vectors of `out` at a
/// time.
///
/// # Safety
/// `sc` holds `len` floats, `v` `len * hd` elements, `out` `hd` floats.
#[inline(always)]
pub(crate) unsafe fn weighted_sum<S: Simd, T: KvType>(
    s: S,
    sc: *const f32,
    v: *const T::Elem,
    len: usize,
    hd: usize,
    out: *mut f32,
) {
    let l = S::LANES;
    let mut o = 0;
    while o < hd {
        // vector j holds columns o + LANES j .. o + LANES j + cnt[j] (cnt 0: past hd, skipped,
        // so no address past a row or past `out` is ever formed)
        let cnt = [0, 1, 2, 3].map(|j: usize| hd.saturating_sub(o + l * j).min(l));
        let mut acc = [s.zero(); 4];
        // SAFETY: sc[p] for p < len is inside sc. For cnt[j] > 0, o + LANES j < hd, so
        // `v.add(p * hd + o + LANES j)` is an element of row p < len of v with cnt[j] elements
        // of the row from it, and `out.add(o + LANES j)` an element of out, stored to its cnt[j]
        // columns.
        unsafe {
            for p in 0..len {
                let sp = s.splat(*sc.add(p));
                let vp = v.add(p * hd + o) as *const u8;
                for j in 0..4 {
                    if cnt[j] > 0 {
                        let x = s.load_w_tail::<T>(vp, l * j, cnt[j]);
                        acc[j] = s.fma(sp, x, acc[j]);
                    }
                }
            }
            for j in 0..4 {
                if cnt[j] > 0 {
                    s.store_tail(out.add(o + l * j), cnt[j], acc[j]);
                }
            }
        }
        o += 4 * l;
    }
}

/// One query head over its `len = keys.len() / q.len()` cached positions of KV type `T`:
/// `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` elements, `scores` at least `len` floats, `out.len() ==
/// q.len()`.
#[inline(always)]
pub(crate) unsafe fn attention<S: Simd, T: KvType>(
    s: S,
    head: AttnHead<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let AttnHead {
        q,
        keys,
        values,
        scale,
    } = head;
    let hd = q.len();
    if hd == 0 {
        return;
    }
    let len = keys.len() / hd;
    if len == 0 {
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: key p < len is inside keys; the other buffers are sized by the contract.
            unsafe {
                for p in 0..len {
                    *scores.get_unchecked_mut(p) =
                        dot_kv::<S, T>(s, q.as_ptr(), keys.as_ptr().add(p * hd), hd) * scale;
                }
                softmax(s, &mut scores[..len]);
                weighted_sum::<S, T>(
                    s,
                    scores.as_ptr(),
                    values.as_ptr(),
                    len,
                    hd,
                    out.as_mut_ptr(),
                );
            }
        },
    )
}
