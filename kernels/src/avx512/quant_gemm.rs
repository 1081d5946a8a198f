//! The AVX-512 parts of the quantized prefill matmul (the matmul itself is written once in
//! [`crate::generic`]): the prompt's quantization into 8-bit blocks, and the panel packer for
//! full panels of Q4_0, Q5_0 and Q8_0.

use core::arch::x86_64::*;

use crate::quant::panel::{q_sub_block_bytes, QNR};
use crate::quant::{q8_len, QuantType};

/// [`crate::quant::quantize_row_q8`] for rows `0..n` of `x` (`k` each, a multiple of 32) into
/// `xq` (`q8_len(k)` words per row), vectorized, with the same result bit for bit for finite
/// inputs: the same `amax` (max is exact in any order), `d = amax / 127`, `1 / d`, products
/// `x * (1 / d)` rounded to nearest even, clamped to ±127, and sums `d * sum(q)` of exact
/// integer sums. (The scalar quantizer's `round_ties_even` is a libm call per element without
/// SSE4.1 at compile time, which made quantizing the prompt cost as much as the matmul.)
///
/// # Safety
/// `x.len() >= n * k`, `xq.len() >= n * q8_len(k)`, `k % 32 == 0`; the CPU must support
/// AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn quantize_rows_q8(x: &[f32], k: usize, n: usize, xq: &mut [f32]) {
    let (nb, per) = (k / 32, q8_len(k));
    assert!(k.is_multiple_of(32) && x.len() >= n * k && xq.len() >= n * per);
    for (xr, out) in x.chunks_exact(k).zip(xq.chunks_exact_mut(per)).take(n) {
        let (d_out, rest) = out.split_at_mut(nb);
        let (s_out, q_out) = rest.split_at_mut(2 * nb);
        for (b, xb) in xr.chunks_exact(32).enumerate() {
            // SAFETY: xb holds 32 floats; q_out holds 8 words (32 bytes) per block, b < nb.
            unsafe {
                let v0 = _mm512_loadu_ps(xb.as_ptr());
                let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
                let m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
                let amax = _mm512_reduce_max_ps(m).max(0.0);
                let d = amax / 127.0;
                let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                let qp = q_out.as_mut_ptr().add(8 * b).cast::<__m128i>();
                let mut sums = [0i32; 2];
                for (h, v) in [v0, v1].into_iter().enumerate() {
                    let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm512_mul_ps(v, id),
                    );
                    let r = _mm512_min_ps(
                        _mm512_max_ps(r, _mm512_set1_ps(-127.0)),
                        _mm512_set1_ps(127.0),
                    );
                    let qi = _mm512_cvtps_epi32(r);
                    sums[h] = _mm512_reduce_add_epi32(qi);
                    _mm_storeu_si128(qp.add(h), _mm512_cvtepi32_epi8(qi));
                }
                d_out[b] = d;
                s_out[2 * b] = d * sums[0] as f32;
                s_out[2 * b + 1] = d * sums[1] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized quantizer is bit for bit the scalar one.
    #[test]
    fn quantize_rows_matches_scalar() {
        if !crate::Isa::Avx512.is_supported() {
            return;
        }
        let (k, n) = (256, 5);
        let mut s = 0x1234_5678u32;
        let mut x: Vec<f32> = (0..n * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as i32 as f32) * 1e-9
            })
            .collect();
        x[..32].fill(0.0); // an all-zero block
        x[40] = 3.5e-3; // ties and exact multiples land somewhere in the rest
        let per = q8_len(k);
        let (mut a, mut b) = (vec![0f32; n * per], vec![0f32; n * per]);
        for t in 0..n {
            crate::quant::quantize_row_q8(&x[t * k..(t + 1) * k], &mut a[t * per..(t + 1) * per]);
        }
        // SAFETY: AVX-512 checked; lengths as required.
        unsafe { quantize_rows_q8(&x, k, n, &mut b) };
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

/// [`crate::quant::panel::pack_q_panel`] for a full panel of [`QNR`] rows of Q4_0, Q5_0 or
/// Q8_0 (one sub-block per block): the same bytes, each row's block unpacked in registers and
/// the rows' 4-byte groups interleaved by gathers, where the portable version moves every byte
/// on its own (it made a prefill matmul call cost about 230 ms on the shipped GGUF however few
/// its input rows).
///
/// # Safety
/// The CPU has AVX-512F/BW/VL and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub(super) unsafe fn pack_panel_32(
    qt: QuantType,
    w: &[u8],
    rb: usize,
    k: usize,
    signed_q8: bool,
    panel: &mut [u8],
) {
    let bb = qt.block_bytes();
    let sbb = q_sub_block_bytes(32);
    assert!(w.len() >= QNR * rb && rb >= k / 32 * bb && panel.len() >= k / 32 * sbb);
    let low = _mm_set1_epi8(0x0f);
    let sixteen = _mm256_set1_epi8(16);
    let flip = _mm256_set1_epi8(if signed_q8 { 0 } else { -128 });
    // u32 index of row r's 4-byte group g in `rows` below: 8 r + g
    let rows_at = _mm512_setr_epi32(
        0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
    );
    for b in 0..k / 32 {
        // the 16 rows' unpacked quants, row r at words 8 r..8 r + 8
        let mut rows = [0u32; 8 * QNR];
        let (mut sc, mut bi) = ([0f32; QNR], [0f32; QNR]);
        for r in 0..QNR {
            let blk = &w[r * rb + b * bb..r * rb + (b + 1) * bb];
            let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
            // SAFETY: each load reads bytes inside `blk` (Q4_0: 2..18 of 18, Q5_0: 6..22 of
            // 22, Q8_0: 2..34 of 34); the store writes words 8 r..8 r + 8 of `rows` (r < 16).
            unsafe {
                let q = match qt {
                    QuantType::Q8_0 => {
                        _mm256_xor_si256(_mm256_loadu_si256(blk[2..34].as_ptr().cast()), flip)
                    }
                    _ => {
                        let at = if qt == QuantType::Q5_0 { 6 } else { 2 };
                        let x = _mm_loadu_si128(blk[at..at + 16].as_ptr().cast());
                        let lo = _mm_and_si128(x, low);
                        let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), low);
                        let nib = _mm256_set_m128i(hi, lo);
                        if qt == QuantType::Q5_0 {
                            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                            _mm256_or_si256(nib, _mm256_maskz_mov_epi8(qh, sixteen))
                        } else {
                            nib
                        }
                    }
                };
                _mm256_storeu_si256(rows[8 * r..8 * r + 8].as_mut_ptr().cast(), q);
            }
            (sc[r], bi[r]) = match qt {
                QuantType::Q4_0 => (d, -8.0 * d),
                QuantType::Q5_0 => (d, -16.0 * d),
                _ => (d, if signed_q8 { 0.0 } else { -128.0 * d }),
            };
        }
        let dst = &mut panel[b * sbb..(b + 1) * sbb];
        // SAFETY: the gathers read words 8 r + g < 128 of `rows`; the stores write bytes
        // 64 g..64 g + 64 (g < 8) and 512..640 of `dst`, which has sbb = 640 bytes.
        unsafe {
            for g in 0..8 {
                let at = _mm512_add_epi32(rows_at, _mm512_set1_epi32(g as i32));
                let v = _mm512_i32gather_epi32::<4>(at, rows.as_ptr().cast());
                _mm512_storeu_si512(dst[64 * g..64 * g + 64].as_mut_ptr().cast(), v);
            }
            _mm512_storeu_ps(
                dst[512..576].as_mut_ptr().cast(),
                _mm512_loadu_ps(sc.as_ptr()),
            );
            _mm512_storeu_ps(
                dst[576..640].as_mut_ptr().cast(),
                _mm512_loadu_ps(bi.as_ptr()),
            );
        }
    }
}

#[cfg(test)]
mod pack_tests {
    use super::*;
    use crate::quant::panel::pack_q_panel;

    #[test]
    fn the_fast_panel_pack_writes_the_portable_bytes() {
        if !(is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")) {
            eprintln!("skipped: no AVX-512BW/VL");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for qt in [QuantType::Q4_0, QuantType::Q5_0, QuantType::Q8_0] {
            for k in [32, 96, 896] {
                for signed in [false, true] {
                    let rb = qt.row_bytes(k).unwrap();
                    let mut w: Vec<u8> = (0..QNR * rb).map(|_| next() as u8).collect();
                    // finite f16 scales (exponent below all-ones) so the bytes compare as such
                    for r in 0..QNR {
                        for b in 0..k / 32 {
                            w[r * rb + b * qt.block_bytes() + 1] &= 0x7b;
                        }
                    }
                    let len = k / 32 * q_sub_block_bytes(32);
                    let (mut want, mut got) = (vec![0u8; len], vec![1u8; len]);
                    pack_q_panel(qt, &w, k, QNR, signed, &mut want);
                    // SAFETY: AVX-512BW/VL checked above (the crate's AVX-512 ISA also
                    // implies F16C).
                    unsafe { pack_panel_32(qt, &w, rb, k, signed, &mut got) };
                    assert_eq!(got, want, "{qt:?} k {k} signed {signed}");
                }
            }
        }
    }
}
