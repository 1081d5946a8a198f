//! The packed weight panel of the quantized prefill matmul (a data layout shared by the
//! AVX2, AVX-512 and AMX tiles and the code that packs it): [`QNR`] weight rows, per sub-block
//! of [`q_sub_block`] weights their unsigned quants interleaved 4 k at a time (AMX's "VNNI"
//! layout), then the rows' f32 scales and biases.

use super::QuantType;

/// Weight rows per packed panel: one 512-bit vector of i32 lanes (two 256-bit ones on AVX2).
pub(crate) const QNR: usize = 16;

/// Weights per sub-block of a packed panel: 16 for Q6_K (a scale per 16), else 32.
pub(crate) const fn q_sub_block(qt: QuantType) -> usize {
    match qt {
        QuantType::Q6K => 16,
        _ => 32,
    }
}

/// Bytes of one sub-block of a packed panel: `16 * s` quants, then 16 f32 scales and 16 f32
/// biases.
pub(crate) const fn q_sub_block_bytes(s: usize) -> usize {
    QNR * s + 2 * 4 * QNR
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// One block of `qt` as unsigned quants `q` (k order) and a scale and bias per sub-block of
/// [`q_sub_block`] weights, `w = scale * q + bias`. With `signed_q8`, Q8_0's quants are left as
/// their signed bytes (bias 0) for the `vpmaddubsw` kernels, which cannot take `q + 128`
/// without saturating.
fn unpack_block(
    qt: QuantType,
    b: &[u8],
    signed_q8: bool,
    q: &mut [u8; 256],
    sc: &mut [f32; 16],
    bi: &mut [f32; 16],
) {
    match qt {
        QuantType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                q[j] = b[2 + j] & 0x0F;
                q[j + 16] = b[2 + j] >> 4;
            }
            (sc[0], bi[0]) = (d, -8.0 * d);
        }
        QuantType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                q[j] = (b[6 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                q[j + 16] = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
            (sc[0], bi[0]) = (d, -16.0 * d);
        }
        QuantType::Q8_0 => {
            let d = f16_at(b, 0);
            let flip = if signed_q8 { 0 } else { 0x80 };
            for j in 0..32 {
                q[j] = b[2 + j] ^ flip; // i8 + 128 as u8 flips the sign bit
            }
            (sc[0], bi[0]) = (d, if signed_q8 { 0.0 } else { -128.0 * d });
        }
        QuantType::Q4K | QuantType::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let five = qt == QuantType::Q5K;
            let (qh, qs) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for g in 0..4 {
                for h in 0..2 {
                    let (s, m) = super::scale_min_k4(2 * g + h, scales);
                    sc[2 * g + h] = d * s as f32;
                    bi[2 * g + h] = -(dmin * m as f32);
                }
                for l in 0..32 {
                    let v = qs[32 * g + l];
                    let (mut lo, mut hi) = (v & 0x0F, v >> 4);
                    if five {
                        lo |= ((qh[l] >> (2 * g)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
                    }
                    q[64 * g + l] = lo;
                    q[64 * g + 32 + l] = hi;
                }
            }
        }
        QuantType::Q6K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (i, &s) in scales.iter().enumerate() {
                sc[i] = d * (s as i8) as f32;
                bi[i] = -32.0 * sc[i];
            }
            for h in 0..2 {
                for l in 0..32 {
                    let (a, c, hb) = (ql[64 * h + l], ql[64 * h + 32 + l], qh[32 * h + l]);
                    q[128 * h + l] = (a & 0x0F) | ((hb & 3) << 4);
                    q[128 * h + 32 + l] = (c & 0x0F) | (((hb >> 2) & 3) << 4);
                    q[128 * h + 64 + l] = (a >> 4) | (((hb >> 4) & 3) << 4);
                    q[128 * h + 96 + l] = (c >> 4) | (((hb >> 6) & 3) << 4);
                }
            }
        }
    }
}

/// Packs weight rows `0..nr` (`nr <= QNR`, `k` weights each, `w` row-major) into `panel`: per
/// sub-block `i` of `s = q_sub_block(qt)` weights, at byte `i * q_sub_block_bytes(s)`, the
/// quants with byte `(e / 4) * 64 + r * 4 + e % 4` holding element `e` of row `r`, then the 16
/// rows' f32 scales, then their f32 biases. Rows `nr..QNR` are zero. `signed_q8` as in
/// [`unpack_block`].
pub(crate) fn pack_q_panel(
    qt: QuantType,
    w: &[u8],
    k: usize,
    nr: usize,
    signed_q8: bool,
    panel: &mut [u8],
) {
    let rb = qt
        .row_bytes(k)
        .unwrap_or_else(|| panic!("{qt} panel: {k} columns are not whole blocks"));
    assert!(w.len() >= nr * rb, "{qt} panel: weight buffer too short");
    let s = q_sub_block(qt);
    let sbb = q_sub_block_bytes(s);
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    let per_block = be / s;
    assert!(nr <= QNR && panel.len() >= k / s * sbb);
    // One block of all 16 rows is unpacked into these (rows >= nr stay zero), then written out
    // in panel order, so the stores run sequentially through the panel.
    let mut q = [[0u8; 256]; QNR];
    let (mut sc, mut bi) = ([[0f32; 16]; QNR], [[0f32; 16]; QNR]);
    for b in 0..k / be {
        for r in 0..nr {
            let blk = &w[r * rb + b * bb..r * rb + (b + 1) * bb];
            unpack_block(qt, blk, signed_q8, &mut q[r], &mut sc[r], &mut bi[r]);
        }
        for j in 0..per_block {
            let base = (b * per_block + j) * sbb;
            let dst = &mut panel[base..base + sbb];
            let (dq, dsb) = dst.split_at_mut(QNR * s);
            for (c, d) in dq.chunks_exact_mut(4).enumerate() {
                let (e, r) = (j * s + 4 * (c / QNR), c % QNR);
                d.copy_from_slice(&q[r][e..e + 4]);
            }
            let (ds, db) = dsb.split_at_mut(4 * QNR);
            for r in 0..QNR {
                ds[4 * r..4 * r + 4].copy_from_slice(&sc[r][j].to_ne_bytes());
                db[4 * r..4 * r + 4].copy_from_slice(&bi[r][j].to_ne_bytes());
            }
        }
    }
}

/// `panel` (f32 words) as bytes, for [`pack_q_panel`] and the kernels.
pub(crate) fn panel_bytes(panel: &mut [f32]) -> &mut [u8] {
    bytemuck::cast_slice_mut(panel)
}
