//! A decode-friendly layout for Q4_0, Q5_0 and Q8_0 matrices, repacked once at load
//! ([`repack`]) and read by `ops::matvec_repacked_prepared`.
//!
//! A row is a sequence of *units* of 32 weights (one ggml block, one 8-bit input block), taken
//! in *groups* of 16 units; the last group holds the 1..=16 units left (no padding bytes: a
//! repacked row is exactly as long as the ggml row). A group of `n` units holds, in order:
//! - its quants as 8 *operands* of `4 * n` bytes (Q8_0) or 4 *nibble vectors* of `4 * n` bytes
//!   (Q4_0, Q5_0), unit `u` at bytes `4u..4u + 4`. Operand `o = 2s + h` (`s` in 0..4, `h` in
//!   0..2) holds elements `16h + 4s .. 16h + 4s + 4` of each unit; nibble vector `s` holds
//!   ggml's `qs[4s..4s + 4]`, whose low nibbles are operand `2s` and high nibbles operand
//!   `2s + 1`. Q8_0 stores `q + 128` (as `q ^ 0x80`), so every operand is unsigned;
//! - Q5_0 only: `4 * n` bytes of 5th bits, byte `4u + i` bit `2s + h` the 5th bit of element
//!   `16h + 4s + i` of unit `u` (bit `o` belongs to operand `o`, lane `4u + i`);
//! - the units' scales `d`, `n` little-endian f16.
//!
//! With the input laid out the same way, one 64-byte vector per operand, an integer dot of
//! weight and input operands leaves each 32-bit lane `u` with part of unit `u`'s dot: after the
//! 8 operands, the lane holds the unit's whole integer dot, with no horizontal reduction and no
//! gather of scales.

use super::{dequantize_row, QuantType};

/// Units (blocks of 32) per group of the repacked layout.
pub const REPACK_GROUP: usize = 16;

/// Whether [`repack`] takes matrices of `qt`: Q4_0, Q5_0 and Q8_0.
pub fn repackable(qt: QuantType) -> bool {
    matches!(qt, QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0)
}

/// Bytes of one repacked row of `cols` weights (the same as ggml's), or `None` unless `qt` is
/// [`repackable`] and `cols` a multiple of 32. A matrix is `rows` such rows, contiguous.
pub fn repacked_row_bytes(qt: QuantType, cols: usize) -> Option<usize> {
    if !repackable(qt) {
        return None;
    }
    qt.row_bytes(cols)
}

/// Byte offset of group `g` in a repacked row, and its units.
#[inline]
pub(crate) fn group_span(qt: QuantType, units: usize, g: usize) -> (usize, usize) {
    let u0 = g * REPACK_GROUP;
    (u0 * qt.block_bytes(), (units - u0).min(REPACK_GROUP))
}

/// Checks `src` (ggml rows) and `dst` (repacked rows) against `cols`; returns the row bytes.
fn check(qt: QuantType, cols: usize, a: usize, b: usize, what: &str) -> usize {
    let rb = repacked_row_bytes(qt, cols)
        .unwrap_or_else(|| panic!("{what}: {qt} with {cols} columns cannot be repacked"));
    assert!(
        a == b && a.is_multiple_of(rb),
        "{what}: {a} and {b} bytes are not the same whole rows of {rb} bytes"
    );
    rb
}

/// Repacks whole rows of `qt` weights from ggml's layout (`src`) into the layout of this
/// module (`dst`, the same length).
///
/// # Panics
/// Unless `qt` is [`repackable`], `cols % 32 == 0`, and `src` and `dst` are the same whole
/// number of rows.
pub fn repack(qt: QuantType, src: &[u8], cols: usize, dst: &mut [u8]) {
    let rb = check(qt, cols, src.len(), dst.len(), "repack");
    for (s, d) in src.chunks_exact(rb).zip(dst.chunks_exact_mut(rb)) {
        repack_row(qt, s, cols / 32, d);
    }
}

/// Repacks one row of `units` blocks.
fn repack_row(qt: QuantType, src: &[u8], units: usize, dst: &mut [u8]) {
    let bb = qt.block_bytes();
    for g in 0..units.div_ceil(REPACK_GROUP) {
        let (off, n) = group_span(qt, units, g);
        let grp = &mut dst[off..off + n * bb];
        for u in 0..n {
            let blk = &src[off + u * bb..off + (u + 1) * bb];
            let q_bytes = match qt {
                QuantType::Q8_0 => 32 * n,
                _ => 16 * n,
            };
            grp[q_bytes + 2 * u + if qt == QuantType::Q5_0 { 4 * n } else { 0 }..][..2]
                .copy_from_slice(&blk[..2]);
            match qt {
                QuantType::Q8_0 => {
                    for o in 0..8 {
                        let e0 = 16 * (o & 1) + 4 * (o >> 1);
                        for i in 0..4 {
                            grp[o * 4 * n + 4 * u + i] = blk[2 + e0 + i] ^ 0x80;
                        }
                    }
                }
                _ => {
                    let qs = &blk[bb - 16..];
                    for s in 0..4 {
                        grp[s * 4 * n + 4 * u..][..4].copy_from_slice(&qs[4 * s..4 * s + 4]);
                    }
                    if qt == QuantType::Q5_0 {
                        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        for i in 0..4 {
                            let mut byte = 0u8;
                            for o in 0..8 {
                                let e = 16 * (o & 1) + 4 * (o >> 1) + i;
                                byte |= (((qh >> e) & 1) as u8) << o;
                            }
                            grp[16 * n + 4 * u + i] = byte;
                        }
                    }
                }
            }
        }
    }
}

/// The inverse of [`repack_row`]: one row back in ggml's layout.
fn unrepack_row(qt: QuantType, src: &[u8], units: usize, dst: &mut [u8]) {
    let bb = qt.block_bytes();
    for g in 0..units.div_ceil(REPACK_GROUP) {
        let (off, n) = group_span(qt, units, g);
        let grp = &src[off..off + n * bb];
        for u in 0..n {
            let blk = &mut dst[off + u * bb..off + (u + 1) * bb];
            let q_bytes = match qt {
                QuantType::Q8_0 => 32 * n,
                _ => 16 * n,
            };
            let d_at = q_bytes + 2 * u + if qt == QuantType::Q5_0 { 4 * n } else { 0 };
            blk[..2].copy_from_slice(&grp[d_at..d_at + 2]);
            match qt {
                QuantType::Q8_0 => {
                    for o in 0..8 {
                        let e0 = 16 * (o & 1) + 4 * (o >> 1);
                        for i in 0..4 {
                            blk[2 + e0 + i] = grp[o * 4 * n + 4 * u + i] ^ 0x80;
                        }
                    }
                }
                _ => {
                    for s in 0..4 {
                        blk[bb - 16 + 4 * s..][..4].copy_from_slice(&grp[s * 4 * n + 4 * u..][..4]);
                    }
                    if qt == QuantType::Q5_0 {
                        let mut qh = 0u32;
                        for i in 0..4 {
                            let byte = grp[16 * n + 4 * u + i];
                            for o in 0..8 {
                                let e = 16 * (o & 1) + 4 * (o >> 1) + i;
                                qh |= (((byte >> o) & 1) as u32) << e;
                            }
                        }
                        blk[2..6].copy_from_slice(&qh.to_le_bytes());
                    }
                }
            }
        }
    }
}

/// Dequantizes one repacked row of `cols` weights into `out`: bit for bit
/// [`dequantize_row`] of the row before [`repack`].
///
/// # Panics
/// Unless `qt` is [`repackable`], `cols % 32 == 0`, `src_row` is one row and `out` `cols` long.
pub fn dequantize_repacked_row(qt: QuantType, src_row: &[u8], cols: usize, out: &mut [f32]) {
    let rb = check(
        qt,
        cols,
        src_row.len(),
        src_row.len(),
        "dequantize_repacked_row",
    );
    assert!(
        src_row.len() == rb && out.len() == cols,
        "dequantize_repacked_row: one row of {rb} bytes into {cols} floats"
    );
    let mut blocks = vec![0u8; rb];
    unrepack_row(qt, src_row, cols / 32, &mut blocks);
    dequantize_row(qt, &blocks, out);
}
