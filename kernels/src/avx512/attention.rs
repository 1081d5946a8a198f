//! AVX-512 attention: one query head at a time, and the blocked (tiled) prefill attention.

use core::arch::x86_64::*;

use super::elementwise::softmax;
use super::{dot_raw, exp_ps, lanes};
use crate::ops::AttnTile;

/// `out[..hd] = sum_p s[p] * v[p * hd..]` over `len` rows, four vectors of `out` at a time.
///
/// # Safety
/// `s` holds `len` floats, `v` `len * hd`, `out` `hd`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
            lanes(hd - o),
            lanes(hd.saturating_sub(o + 16)),
            lanes(hd.saturating_sub(o + 32)),
            lanes(hd.saturating_sub(o + 48)),
        ];
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: s[p] for p < len is inside s. o < hd, so `v.add(p * hd + o)` is inside row
        // p < len of v. Vector j reads v[p * hd + o + 16j..] and writes out[o + 16j..], masked
        // to columns below hd: inside v's row p and out. A vector with o + 16j >= hd has mask 0
        // and touches nothing, but its address may lie past the end of v (last row) or out, so
        // those addresses are formed with `wrapping_add`.
        unsafe {
            for p in 0..len {
                let sp = _mm512_set1_ps(*s.add(p));
                let vp = v.add(p * hd + o);
                for j in 0..4 {
                    let x = _mm512_maskz_loadu_ps(ms[j], vp.wrapping_add(16 * j));
                    acc[j] = _mm512_fmadd_ps(sp, x, acc[j]);
                }
            }
            for j in 0..4 {
                _mm512_mask_storeu_ps(out.wrapping_add(o + 16 * j), ms[j], acc[j]);
            }
        }
        o += 64;
    }
}

/// One query head against `len = keys.len() / q.len()` cached positions:
/// `out = softmax(keys · q * scale) · values`.
///
/// # Safety
/// `values` holds `len * q.len()` floats, `scores` at least `len`, `out.len() == q.len()`; the CPU
/// must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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

/// Keys per block of [`attention_tile`]: the score block (`ATT_KB` keys x 32 rows) stays in L1.
pub(crate) const ATT_KB: usize = 64;

/// `JR` keys of `S = Q·Kᵀ` for the `16 * RV` rows of a tile: `s[jj * rt + r] = sum_d qt[d * rt +
/// r] * k[jj * hd + d]`. Register-blocked: `JR * RV` accumulators, one vector load of `qt` per
/// row vector and one broadcast of each key element per `d`.
///
/// # Safety
/// `qt` holds `hd * rt` floats, `k` `JR` rows of `hd`, `s` `JR * rt` writable floats, where
/// `rt = 16 * RV`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn qk_block<const RV: usize, const JR: usize>(
    qt: *const f32,
    k: *const f32,
    hd: usize,
    s: *mut f32,
) {
    let rt = 16 * RV;
    let mut acc = [[_mm512_setzero_ps(); RV]; JR];
    // SAFETY: d < hd, jj < JR, rv < RV: inside the buffers of the contract.
    unsafe {
        for d in 0..hd {
            let mut qv = [_mm512_setzero_ps(); RV];
            for (rv, q) in qv.iter_mut().enumerate() {
                *q = _mm512_loadu_ps(qt.add(d * rt + 16 * rv));
            }
            for (jj, a) in acc.iter_mut().enumerate() {
                let kk = _mm512_set1_ps(*k.add(jj * hd + d));
                for rv in 0..RV {
                    a[rv] = _mm512_fmadd_ps(kk, qv[rv], a[rv]);
                }
            }
        }
        for (jj, a) in acc.iter().enumerate() {
            for (rv, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(s.add(jj * rt + 16 * rv), x);
            }
        }
    }
}

/// `DR` dims of `O = O * alpha + P·V` for the tile: `ot[dd * rt + r] = ot[..] * alpha[r] +
/// sum_{j < nk} p[j * rt + r] * v[j * hd + dd]`.
///
/// # Safety
/// `p` holds `nk * rt` floats, `v` `nk` rows of stride `hd` with `DR` readable floats each,
/// `ot` `DR` rows of `rt` (read and written), `alpha` `rt`; `rt = 16 * RV`; the CPU must
/// support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pv_block<const RV: usize, const DR: usize>(
    p: *const f32,
    nk: usize,
    v: *const f32,
    hd: usize,
    ot: *mut f32,
    alpha: *const f32,
) {
    let rt = 16 * RV;
    // SAFETY: j < nk, dd < DR, rv < RV: inside the buffers of the contract.
    unsafe {
        let mut al = [_mm512_setzero_ps(); RV];
        for (rv, a) in al.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(alpha.add(16 * rv));
        }
        let mut acc = [[_mm512_setzero_ps(); RV]; DR];
        for (dd, a) in acc.iter_mut().enumerate() {
            for rv in 0..RV {
                a[rv] = _mm512_mul_ps(_mm512_loadu_ps(ot.add(dd * rt + 16 * rv)), al[rv]);
            }
        }
        for j in 0..nk {
            let mut pv = [_mm512_setzero_ps(); RV];
            for (rv, x) in pv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(p.add(j * rt + 16 * rv));
            }
            let vj = v.add(j * hd);
            for (dd, a) in acc.iter_mut().enumerate() {
                let vv = _mm512_set1_ps(*vj.add(dd));
                for rv in 0..RV {
                    a[rv] = _mm512_fmadd_ps(vv, pv[rv], a[rv]);
                }
            }
        }
        for (dd, a) in acc.iter().enumerate() {
            for (rv, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(ot.add(dd * rt + 16 * rv), x);
            }
        }
    }
}

/// One tile of causal attention, FlashAttention-2 style: the `a.rows <= 16 * RV` query rows of
/// one kv head (see [`AttnTile`]) against keys `0..` their causal limits, streamed in blocks of
/// [`ATT_KB`] keys with an online softmax. Rows live in vector lanes throughout (queries
/// transposed into `qt`, scores `[key][row]`, output `[dim][row]`), so the row max, the row sum
/// and the rescaling are plain vertical vector ops; only the diagonal blocks are masked. `JR`
/// keys (score step) and `DR` dims (output step) are the register blocks.
///
/// # Safety
/// The pointers in `a` must satisfy [`AttnTile`]'s contract, `scratch` must be valid for
/// writing `(2 * a.hd + ATT_KB) * 16 * RV` floats and not be accessed by anyone else during the
/// call; `1 <= a.rows <= 16 * RV`, `RV <= 2`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn attention_tile<const RV: usize, const JR: usize, const DR: usize>(
    a: &AttnTile,
    scratch: *mut f32,
) {
    let rt = 16 * RV;
    let hd = a.hd;
    debug_assert!(RV <= 2 && a.rows >= 1 && a.rows <= rt);
    // SAFETY: scratch holds (2 * hd + ATT_KB) * rt floats (contract): qt, ot and the score
    // block below are disjoint parts of it. Query/output rows and key/value rows are read and
    // written only at the positions AttnTile's contract makes valid: row r < a.rows maps to
    // token t < n and a head of this group; keys are read below the largest causal limit of the
    // tile, pos0 + t_last + 1 <= the valid length. Row offsets fit in i32 (contract); gathers
    // read only unmasked lanes: real rows' q elements (offset + d, d < hd) and ot elements
    // (d + i) * rt + r with d + i < hd.
    unsafe {
        let qt = scratch;
        let ot = scratch.add(hd * rt);
        let sb = scratch.add(2 * hd * rt);
        // Per-row causal limits (keys 0..lim visible) and row offsets into q / out. Padding
        // rows (r >= rows) copy the last real row's limit and offset.
        let mut lim = [0i32; 32];
        let mut off = [0i32; 32];
        for r in 0..rt {
            let g = a.row0 + r.min(a.rows - 1);
            let t = g / a.group;
            lim[r] = (a.pos0 + t + 1) as i32;
            off[r] = (t * a.qdim + (a.head0 + g % a.group) * hd) as i32;
        }
        // Transposed, pre-scaled queries (zero in padding rows): one gather per dim and row
        // vector. (Element-wise copies compile to scatters, which are slow.)
        let vs = _mm512_set1_ps(a.scale);
        for rv in 0..RV {
            let offv = _mm512_loadu_si512(off.as_ptr().add(16 * rv) as *const _);
            let km = lanes(a.rows.saturating_sub(16 * rv));
            for d in 0..hd {
                let x = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), km, offv, a.q.add(d));
                _mm512_storeu_ps(qt.add(d * rt + 16 * rv), _mm512_mul_ps(x, vs));
            }
        }
        for d in 0..hd * rt {
            *ot.add(d) = 0.0;
        }
        let kmin = lim[0] as usize;
        let kmax = lim[a.rows - 1] as usize;
        let mut limv = [_mm512_setzero_si512(); RV];
        let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); RV];
        let mut l = [_mm512_setzero_ps(); RV];
        for (rv, x) in limv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(lim.as_ptr().add(16 * rv) as *const _);
        }
        let mut alpha = [0f32; 32];
        let mut kb = 0;
        while kb < kmax {
            let nk = ATT_KB.min(kmax - kb);
            let kp = a.k.add(kb * hd);
            let mut j = 0;
            while j + JR <= nk {
                qk_block::<RV, JR>(qt, kp.add(j * hd), hd, sb.add(j * rt));
                j += JR;
            }
            while j < nk {
                qk_block::<RV, 1>(qt, kp.add(j * hd), hd, sb.add(j * rt));
                j += 1;
            }
            if kb + nk > kmin {
                // Diagonal block: hide key kb + j from rows whose limit is <= kb + j.
                let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
                for j in 0..nk {
                    let jv = _mm512_set1_epi32((kb + j) as i32);
                    for (rv, &lv) in limv.iter().enumerate() {
                        let sp = sb.add(j * rt + 16 * rv);
                        let vis = _mm512_cmpgt_epi32_mask(lv, jv);
                        _mm512_storeu_ps(sp, _mm512_mask_mov_ps(ninf, vis, _mm512_loadu_ps(sp)));
                    }
                }
            }
            // Online softmax. Key 0 is visible to every row, so after the first block every
            // row max is finite and exp(-inf - max) is exactly 0 for the masked scores.
            for rv in 0..RV {
                let mut bm = m[rv];
                for j in 0..nk {
                    bm = _mm512_max_ps(bm, _mm512_loadu_ps(sb.add(j * rt + 16 * rv)));
                }
                let al = exp_ps(_mm512_sub_ps(m[rv], bm));
                let mut sum = _mm512_setzero_ps();
                for j in 0..nk {
                    let sp = sb.add(j * rt + 16 * rv);
                    let p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sp), bm));
                    _mm512_storeu_ps(sp, p);
                    sum = _mm512_add_ps(sum, p);
                }
                l[rv] = _mm512_fmadd_ps(l[rv], al, sum);
                m[rv] = bm;
                _mm512_storeu_ps(alpha.as_mut_ptr().add(16 * rv), al);
            }
            let vp = a.v.add(kb * hd);
            let mut d = 0;
            while d + DR <= hd {
                pv_block::<RV, DR>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
                d += DR;
            }
            while d < hd {
                pv_block::<RV, 1>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
                d += 1;
            }
            kb += nk;
        }
        // out = O / l, transposed back into the rows.
        let mut inv = [0f32; 32];
        for (rv, &lv) in l.iter().enumerate() {
            _mm512_storeu_ps(
                inv.as_mut_ptr().add(16 * rv),
                _mm512_div_ps(_mm512_set1_ps(1.0), lv),
            );
        }
        // Row r of the output is lane r of every ot[d], gathered 16 dims at a time.
        let stride = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(rt as i32),
        );
        for r in 0..a.rows {
            let op = a.out.add(off[r] as usize);
            let ir = _mm512_set1_ps(inv[r]);
            let mut d = 0;
            while d < hd {
                let m = lanes(hd - d);
                let x = _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    m,
                    stride,
                    ot.add(d * rt + r),
                );
                _mm512_mask_storeu_ps(op.add(d), m, _mm512_mul_ps(x, ir));
                d += 16;
            }
        }
    }
}
