//! Dequantization, following ggml-quants.c `dequantize_row_*` operation for operation.

use super::*;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`. `dst.len()` must be the element count
/// that `src` holds.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedDequant { ty });
    }
    let n = dst.len() as u64;
    let expected = ty.bytes_for(n);
    if expected != Some(src.len() as u64) {
        return Err(GgufError::LengthMismatch {
            detail: format!(
                "{ty:?}: {} source bytes for {n} elements (expected {})",
                src.len(),
                expected.map_or("a whole number of blocks".to_string(), |e| e.to_string())
            ),
        });
    }
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(s, d)| d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(s, d)| d[0] = f16_at(s, 0)),
        GgmlType::BF16 => blocks.for_each(|(s, d)| {
            d[0] = half::bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32()
        }),
        GgmlType::Q8_0 => blocks.for_each(|(s, d)| dequantize_block_q8_0(s, d)),
        GgmlType::Q4_0 => blocks.for_each(|(s, d)| dequantize_block_q4_0(s, d)),
        GgmlType::Q5_0 => blocks.for_each(|(s, d)| dequantize_block_q5_0(s, d)),
        GgmlType::Q4K => blocks.for_each(|(s, d)| dequantize_block_q4_k(s, d)),
        GgmlType::Q5K => blocks.for_each(|(s, d)| dequantize_block_q5_k(s, d)),
        GgmlType::Q6K => blocks.for_each(|(s, d)| dequantize_block_q6_k(s, d)),
        _ => unreachable!("can_dequantize checked above"),
    }
    Ok(())
}

/// Q8_0 block (34 bytes): d: f16, qs: [i8; 32]. y = qs * d.
fn dequantize_block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// Q4_0 block (18 bytes): d: f16, qs: [u8; 16]. Low nibbles are elements 0..16, high nibbles
/// 16..32, each minus 8, times d.
fn dequantize_block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// Q5_0 block (22 bytes): d: f16, qh: u32 (LE, bit j = 5th bit of element j), qs: [u8; 16].
fn dequantize_block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        let x0 = ((qs[j] & 0x0F) as i32 | xh0) - 16;
        let x1 = ((qs[j] >> 4) as i32 | xh1) - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed K-quant scale bytes.
#[inline]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K block (144 bytes): d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]. Four groups
/// of 64 elements; each group's 32 bytes give 32 low nibbles (sub-block 2g) then 32 high
/// nibbles (sub-block 2g+1); y = d*sc * q - dmin*m.
fn dequantize_block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K block (176 bytes): d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128].
/// Like Q4_K, with the 5th bit of element l of sub-block s in bit s of qh[l].
fn dequantize_block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K block (210 bytes): ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16. Two halves
/// of 128 elements; y = (d * scale) * (q - 32) with q = 4 low bits from ql, 2 high from qh.
fn dequantize_block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &ql_all[64 * h..64 * h + 64];
        let qh = &qh_all[32 * h..32 * h + 32];
        let sc = &sc_all[8 * h..8 * h + 8];
        let out = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
