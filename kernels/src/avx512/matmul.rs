//! The AVX-512 `vdpbf16ps` matmul (activations rounded to bf16): packed weight panels and a
//! register-blocked microkernel. (The f32 matmul is `crate::generic`'s.)

use core::arch::x86_64::*;

use super::{lanes, transpose16};
use crate::generic::blocks;

/// Vectors (of 16 columns) per packed panel of the `vdpbf16ps` matmul.
const NVB: usize = 4;
/// Weight rows per packed panel of the `vdpbf16ps` matmul.
const NRB: usize = 16 * NVB;
/// Tokens per `vdpbf16ps` microkernel tile: `MRB * NVB` accumulators.
const MRB: usize = 6;
/// bf16 pairs (along k) per packed panel: `KCP * NRB` u32 = 112 KiB, which stays in L2 while
/// the tiles stream it; 448 pairs hold all of Qwen2.5-0.5B's hidden=896 in one depth block, so
/// `y` is written once. (Tuned on Zen 4: 6x64 tiles at 448 pairs beat 12x32, 8x48 and 9x48,
/// and shallower panels, by 2-15%.)
const KCP: usize = 448;
/// Floats of the packed weight panel [`matmul_bf16dot_strided`] needs from its caller (one
/// bf16 pair per float).
pub const BF16DOT_PACK: usize = KCP * NRB;

/// Packs bf16 weight rows `0..nr`, elements `k0..k0 + 2 * kcp` (clipped to `k`, zero beyond) as
/// k-pairs: `buf[p * NRB + j] = w[j, k0 + 2p] | w[j, k0 + 2p + 1] << 16`, zero for `j >= nr`.
///
/// # Safety
/// `w` must be valid for `nr` rows of `k` bf16 elements; `k0 < k`, `kcp <= KCP`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pack_pairs(
    w: *const u8,
    k: usize,
    k0: usize,
    kcp: usize,
    nr: usize,
    buf: &mut [f32; KCP * NRB],
) {
    let rb = k * 2;
    let elems = (k - k0).min(2 * kcp);
    let bp = buf.as_mut_ptr();
    for jb in (0..NRB).step_by(16) {
        let mut e = 0;
        while e < elems {
            let cnt = (elems - e).min(32);
            let m: __mmask32 = if cnt >= 32 { !0 } else { (1u32 << cnt) - 1 };
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                if jb + i < nr {
                    // SAFETY: row jb+i < nr is inside w; the mask reads elements k0+e.. < k only.
                    *ri = _mm512_castsi512_ps(unsafe {
                        _mm512_maskz_loadu_epi16(
                            m,
                            w.add((jb + i) * rb + (k0 + e) * 2) as *const i16,
                        )
                    });
                }
            }
            // r[i] holds 16 pairs of row jb+i; after the transpose r[c] holds pair c of 16 rows.
            transpose16(&mut r);
            let p0 = e / 2;
            for (c, rc) in r.iter().enumerate().take(kcp - p0) {
                // SAFETY: pair p0+c < kcp <= KCP, columns jb..jb+16 <= NRB: inside buf.
                unsafe { _mm512_storeu_ps(bp.add((p0 + c) * NRB + jb), *rc) };
            }
            e += 32;
        }
    }
}

/// `vdpbf16ps` microkernel: `R` tokens × `NRB` columns over `kcp` k-pairs; `xb[t * ldx + p]`
/// holds token `t`'s activations `2p, 2p + 1` as a bf16 pair. Stores (`first`) or accumulates
/// into `y[t * ldy + j]`, `j < nr`.
///
/// # Safety
/// `xb` valid for reading `R` rows of `ldx` pairs with `kcp` in each; `y` valid for writes to
/// `R` rows of `ldy` floats at columns `0..nr`; the CPU must support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_bf16<const R: usize>(
    buf: &[f32; KCP * NRB],
    kcp: usize,
    xb: *const u32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NVB]; R];
    let bp = buf.as_ptr();
    // SAFETY: p < kcp <= KCP keeps buf in bounds; xb rows t < R hold kcp pairs (contract).
    unsafe {
        for p in 0..kcp {
            // (a loop, not a closure: closures do not inherit `target_feature`)
            let mut b = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NVB];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    bp.add(p * NRB + 16 * v) as *const __m512i,
                ));
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*xb.add(t * ldx + p) as i32));
                for v in 0..NVB {
                    a[v] = _mm512_dpbf16_ps(a[v], xv, b[v]);
                }
            }
        }
    }
    // SAFETY: `y` is valid for these R rows and nr columns by this function's contract.
    // The CPU has AVX-512F/BW/VL (this function's contract), which the token stands for.
    unsafe {
        let s = crate::simd::avx512::Avx512::new_unchecked();
        crate::generic::store_tile(s, &acc, y, ldy, nr, first)
    }
}

/// `crate::generic::matmul_strided` for bf16 weights with AVX512-BF16 `vdpbf16ps`: activations
/// are ROUNDED TO BF16 (round to nearest even) before the products, which are accumulated in
/// f32. About twice
/// the throughput of the f32 path, with a relative error of up to ~2^-8 of `sum |w x|`.
///
/// # Safety
/// As `crate::generic::matmul_strided` with `W = Bf16`, except that the activations come as `xb`, filled by
/// [`pack_x_pairs`] from `n` rows of `k`, and `panel` holds at least [`BF16DOT_PACK`] floats
/// (the packed panel; any contents); the CPU must also support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_bf16dot_strided(
    w: &[u8],
    k: usize,
    xb: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    rows: usize,
    panel: &mut [f32],
) {
    let kp = k.div_ceil(2);
    debug_assert!(w.len() >= rows * k * 2 && xb.len() >= n * kp && k > 0);
    let buf: &mut [f32; KCP * NRB] = (&mut panel[..KCP * NRB])
        .try_into()
        .expect("matmul_bf16dot: pack scratch too short");
    let xb = xb.as_ptr() as *const u32;
    let wp = w.as_ptr();
    for (j0, nr) in blocks(rows, NRB) {
        for (k0, kc) in blocks(k, 2 * KCP) {
            let kcp = kc.div_ceil(2);
            // SAFETY: rows j0..j0+nr of w exist, k0 < k.
            unsafe { pack_pairs(wp.add(j0 * k * 2), k, k0, kcp, nr, buf) };
            for (t0, mr) in blocks(n, MRB) {
                // SAFETY: y rows t0..t0+mr < n, columns j0..j0+nr < rows, writable by contract;
                // xb rows t0..t0+mr hold pairs k0/2..k0/2+kcp <= kp.
                unsafe {
                    let yt = y.add(t0 * ldy + j0);
                    let xt = xb.add(t0 * kp + k0 / 2);
                    let f = k0 == 0;
                    match mr {
                        6 => micro_bf16::<6>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        5 => micro_bf16::<5>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        4 => micro_bf16::<4>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        3 => micro_bf16::<3>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        2 => micro_bf16::<2>(buf, kcp, xt, kp, yt, ldy, nr, f),
                        _ => micro_bf16::<1>(buf, kcp, xt, kp, yt, ldy, nr, f),
                    }
                }
            }
        }
    }
}

/// Rounds `n` rows of `k` activations to bf16 pairs (round to nearest even), one pair per float
/// of `out`: the bits of `out[t * kp + p]` are `bf16(x[t, 2p]) | bf16(x[t, 2p + 1]) << 16` with
/// `kp = k.div_ceil(2)` (an odd `k`'s last pair is padded with 0).
///
/// # Safety
/// `x.len() >= n * k`, `out.len() >= n * k.div_ceil(2)`; the CPU must support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn pack_x_pairs(x: &[f32], k: usize, n: usize, out: &mut [f32]) {
    let kp = k.div_ceil(2);
    debug_assert!(x.len() >= n * k && out.len() >= n * kp);
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    for t in 0..n {
        let mut e = 0;
        while e < k {
            // SAFETY: e < k, so `src` (element e of row t < n) is inside x. The loads read
            // x[t * k + e..] below column k of row t (masks). When e + 16 >= k the second mask
            // is 0 and nothing is read, but src + 16 may then lie past the end of x (last row),
            // so that address is formed with `wrapping_add`. The store writes pairs e/2..
            // min(kp, e/2 + 16) of row t (mask; e/2 < kp), inside `out` (n * kp floats).
            unsafe {
                let src = xp.add(t * k + e);
                let lo = _mm512_maskz_loadu_ps(lanes(k - e), src);
                let hi =
                    _mm512_maskz_loadu_ps(lanes(k.saturating_sub(e + 16)), src.wrapping_add(16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(op.add(t * kp + e / 2) as *mut i32, lanes(kp - e / 2), v);
            }
            e += 32;
        }
    }
}
