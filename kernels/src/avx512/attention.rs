//! AVX-512 blocked (tiled) prefill attention (the per-row kernel is `crate::generic`'s). It
//! reads the KV cache in its own type `T` ([`KvType`]): f32 as it is, bf16 and f16 widened
//! to f32 in registers as they are loaded (bf16: zero-extend and shift left 16; f16:
//! `vcvtph2ps`), so the math after the load is the f32 path's.

use core::arch::x86_64::*;

use super::{exp_ps, lanes};
use crate::dtype::{Dtype, KvType};
use crate::layout::AttnTile;

/// The KV element at `p`, widened to f32, in every lane.
///
/// # Safety
/// `p` must be valid for reading one (aligned) `T::Elem`; the CPU must support the enabled
/// features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn bcast_kv<T: KvType>(p: *const T::Elem) -> __m512 {
    // SAFETY: one readable element at p (contract), which `&[T::Elem]` keeps aligned.
    let e = unsafe { p.read() };
    match T::DTYPE {
        // bf16 and f32: an exact integer shift (or nothing)
        Dtype::F32 | Dtype::BF16 => _mm512_set1_ps(T::to_f32(e)),
        Dtype::F16 => {
            let bits: u16 = bytemuck::cast(e);
            _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16))
        }
    }
}

/// Keys per block of [`attention_tile`]: the score block (`ATT_KB` keys x 32 rows) stays in L1.
pub(crate) const ATT_KB: usize = 64;

/// The register block both products of a tile are made of, rows in lanes: `out[i * rt + r] =
/// acc[i][r] + sum_{j < steps} kv[j * kv_step + i * kv_i] * rows[j * rt + r]` for `i < N`,
/// `r < rt = 16 * RV`, with the `N * RV` accumulators started at `acc`: per step one vector
/// load of `rows` per row vector and one broadcast of each of the `N` KV elements.
///
/// # Safety
/// `rows` holds `steps * rt` floats, `kv` the elements at the offsets above, `out` `N * rt`
/// writable floats; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn rank1_block<T: KvType, const RV: usize, const N: usize>(
    mut acc: [[__m512; RV]; N],
    rows: *const f32,
    kv: *const T::Elem,
    steps: usize,
    kv_step: usize,
    kv_i: usize,
    out: *mut f32,
) {
    let rt = 16 * RV;
    // SAFETY: j < steps, i < N, rv < RV: inside the buffers of the contract.
    unsafe {
        for j in 0..steps {
            let mut rv_j = [_mm512_setzero_ps(); RV];
            for (rv, x) in rv_j.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(rows.add(j * rt + 16 * rv));
            }
            let kv_j = kv.add(j * kv_step);
            for (i, a) in acc.iter_mut().enumerate() {
                let e = bcast_kv::<T>(kv_j.add(i * kv_i));
                for rv in 0..RV {
                    a[rv] = _mm512_fmadd_ps(e, rv_j[rv], a[rv]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (rv, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * rt + 16 * rv), x);
            }
        }
    }
}

/// `JR` keys of `S = Q·Kᵀ` for the `16 * RV` rows of a tile: `s[jj * rt + r] = sum_d qt[d * rt +
/// r] * k[jj * hd + d]` ([`rank1_block`] over the dims, a key per accumulator row).
///
/// # Safety
/// `qt` holds `hd * rt` floats, `k` `JR` rows of `hd` elements, `s` `JR * rt` writable floats,
/// where `rt = 16 * RV`; the CPU must support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn qk_block<T: KvType, const RV: usize, const JR: usize>(
    qt: *const f32,
    k: *const T::Elem,
    hd: usize,
    s: *mut f32,
) {
    // SAFETY: forwarded contract: step d reads qt[d * rt..] and k[jj * hd + d].
    unsafe { rank1_block::<T, RV, JR>([[_mm512_setzero_ps(); RV]; JR], qt, k, hd, 1, hd, s) }
}

/// `DR` dims of `O = O * alpha + P·V` for the tile: `ot[dd * rt + r] = ot[..] * alpha[r] +
/// sum_{j < nk} p[j * rt + r] * v[j * hd + dd]` ([`rank1_block`] over the keys, a dim per
/// accumulator row).
///
/// # Safety
/// `p` holds `nk * rt` floats, `v` `nk` rows of stride `hd` with `DR` readable elements each,
/// `ot` `DR` rows of `rt` (read and written), `alpha` `rt`; `rt = 16 * RV`; the CPU must
/// support the enabled features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pv_block<T: KvType, const RV: usize, const DR: usize>(
    p: *const f32,
    nk: usize,
    v: *const T::Elem,
    hd: usize,
    ot: *mut f32,
    alpha: *const f32,
) {
    let rt = 16 * RV;
    // SAFETY: dd < DR, rv < RV: inside the buffers of the contract; step j of the block reads
    // p[j * rt..] and v[j * hd + dd].
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
        rank1_block::<T, RV, DR>(acc, p, v, nk, hd, 1, ot)
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
pub(crate) unsafe fn attention_tile<
    T: KvType,
    const RV: usize,
    const JR: usize,
    const DR: usize,
>(
    a: &AttnTile<T>,
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
                qk_block::<T, RV, JR>(qt, kp.add(j * hd), hd, sb.add(j * rt));
                j += JR;
            }
            while j < nk {
                qk_block::<T, RV, 1>(qt, kp.add(j * hd), hd, sb.add(j * rt));
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
                pv_block::<T, RV, DR>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
                d += DR;
            }
            while d < hd {
                pv_block::<T, RV, 1>(sb, nk, vp.add(d), hd, ot.add(d * rt), alpha.as_ptr());
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
