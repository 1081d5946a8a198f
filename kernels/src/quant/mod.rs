//! ggml's block-quantized weight formats (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K): their layouts,
//! the dequantization every kernel is held to, and the 8-bit quantization of activations that
//! the SIMD kernels take integer dot products against.
//!
//! Overview:
//! - [`QuantType`]: a block format, with its block size and bytes per block.
//! - [`Format`]: the format of one weight tensor, a float [`Dtype`] or a [`QuantType`].
//! - [`QMatrix`] and [`RepackedMatrix`]: a quantized weight matrix (format, bytes, shape),
//!   checked once, as the quantized matvecs and matmuls take it.
//! - [`dequantize_row`]: blocks to f32, operation for operation as ggml's
//!   `dequantize_row_*` (no fused multiply-add), so the results are bit-exact with ggml.
//! - [`quantize_row_q8`] and [`q8_len`]: an activation row as 8-bit blocks of 32 ([`Q8Row`]
//!   reads them). Every ISA runs the same scalar quantizer, so the quantized input is
//!   bit-identical whichever kernel then reads it.
//! - [`matvec_ref`]: the scalar reference matvec: each row dequantized as ggml does, then an
//!   f32 dot with the unquantized input. The [`crate::Isa::Scalar`] path runs it; the SIMD
//!   kernels (which read the 8-bit input) are tested against it with the bound
//!   [`q8_error_bound`] on what quantizing the input can change.

use crate::dtype::Dtype;

// (the panels are the x86 quantized matmuls' layout; elsewhere only their row count is used)
mod matrix;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod panel;
mod repack;
pub(crate) use matrix::row_range;
pub use matrix::{QMatrix, RepackedMatrix};
pub use repack::*;

/// A ggml block-quantized weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// 32 weights: f16 d, 16 bytes of 4-bit q; w = d * (q - 8). 18 bytes.
    Q4_0,
    /// 32 weights: f16 d, u32 of 5th bits, 16 bytes of low nibbles; w = d * (q - 16). 22 bytes.
    Q5_0,
    /// 32 weights: f16 d, 32 signed bytes; w = d * q. 34 bytes.
    Q8_0,
    /// 256 weights: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles;
    /// w = d * sc * q - dmin * m per sub-block of 32. 144 bytes.
    Q4K,
    /// 256 weights: as Q4_K with a 5th bit per weight (32 bytes). 176 bytes.
    Q5K,
    /// 256 weights: 128 bytes of low nibbles, 64 of 2-bit highs, 16 signed scales, f16 d;
    /// w = d * sc * (q - 32) per sub-block of 16. 210 bytes.
    Q6K,
}

impl QuantType {
    /// Every format, for tests and benches.
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q5_0,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// Weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => 32,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q5_0 => 22,
            QuantType::Q8_0 => 34,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` weights, or `None` unless `cols` is a whole number of blocks.
    pub const fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_elems()) {
            return None;
        }
        Some(cols / self.block_elems() * self.block_bytes())
    }

    /// ggml's name for the format.
    pub const fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The format of one weight tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Plain floats (f32, f16, bf16).
    Float(Dtype),
    /// ggml blocks.
    Quant(QuantType),
}

impl Format {
    /// Bytes of one row of `cols` weights, or `None` unless `cols` is a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            Format::Float(d) => cols.checked_mul(d.size()),
            Format::Quant(q) => q.row_bytes(cols),
        }
    }

    /// The float dtype, if it is one.
    pub fn float(self) -> Option<Dtype> {
        match self {
            Format::Float(d) => Some(d),
            Format::Quant(_) => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Float(d) => d.fmt(f),
            Format::Quant(q) => q.fmt(f),
        }
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes whole blocks of `qt`: `src` holds `dst.len() / qt.block_elems()` blocks.
///
/// # Panics
/// If `dst.len()` is not a whole number of blocks or `src` is shorter than those blocks.
pub fn dequantize_row(qt: QuantType, src: &[u8], dst: &mut [f32]) {
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    assert!(
        dst.len().is_multiple_of(be) && src.len() >= dst.len() / be * bb,
        "dequantize_row: {} bytes of {qt} for {} weights",
        src.len(),
        dst.len()
    );
    let blocks = src.chunks_exact(bb).zip(dst.chunks_exact_mut(be));
    match qt {
        QuantType::Q8_0 => blocks.for_each(|(s, d)| dequantize_block_q8_0(s, d)),
        QuantType::Q4_0 => blocks.for_each(|(s, d)| dequantize_block_q4_0(s, d)),
        QuantType::Q5_0 => blocks.for_each(|(s, d)| dequantize_block_q5_0(s, d)),
        QuantType::Q4K => blocks.for_each(|(s, d)| dequantize_block_q45_k::<false>(s, d)),
        QuantType::Q5K => blocks.for_each(|(s, d)| dequantize_block_q45_k::<true>(s, d)),
        QuantType::Q6K => blocks.for_each(|(s, d)| dequantize_block_q6_k(s, d)),
    }
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
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Every sub-block's [`scale_min_k4`] at once: the 6-bit scales of sub-blocks 0..8 as the
/// bytes of the first u64 (little-endian order), the mins as those of the second. Reads the
/// 12 bytes as three u32 and moves each byte's fields in all four lanes at once.
#[inline(always)]
pub(crate) fn k_scales_mins(q: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let (m6, m4, m2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    // sub-blocks 0..4: the low 6 bits of bytes 0..4 (scales) and 4..8 (mins)
    let (sc_lo, mn_lo) = (a & m6, b & m6);
    // sub-blocks 4..8: low (scales) or high (mins) nibble of bytes 8..12, and the top two
    // bits of bytes 0..4 (scales) or 4..8 (mins) as bits 4 and 5
    let sc_hi = (c & m4) | ((a >> 6) & m2) << 4;
    let mn_hi = ((c >> 4) & m4) | ((b >> 6) & m2) << 4;
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// Q4_K block (144 bytes): d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]. Four groups
/// of 64 elements; each group's 32 bytes give 32 low nibbles (sub-block 2g) then 32 high
/// nibbles (sub-block 2g+1); y = d*sc * q - dmin*m. With `Q5` a Q5_K block (176 bytes), whose
/// qh: [u8; 32] between the scales and qs gives element l of sub-block s a 5th bit (16) in
/// bit s of qh[l].
fn dequantize_block_q45_k<const Q5: bool>(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let (qh, qs) = if Q5 {
        (&b[16..48], &b[48..176])
    } else {
        (&b[..0], &b[16..144])
    };
    // the 5th bit of element l where qh[l] has `bit` set
    let high = |l: usize, bit: u8| if Q5 && qh[l] & bit != 0 { 16 } else { 0 };
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            out[l] = d1 * ((q[l] & 0x0F) + high(l, u1)) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + high(l, u2)) as f32 - m2;
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

/// Activations per 8-bit input block.
pub const Q8_BLOCK: usize = 32;

/// f32 words of scratch one input row of `cols` (a multiple of [`Q8_BLOCK`]) takes once
/// quantized by [`quantize_row_q8`]: per block of 32, its scale `d`, the two half sums
/// `d * sum(q[0..16])` and `d * sum(q[16..32])`, and 32 signed bytes (8 words).
pub const fn q8_len(cols: usize) -> usize {
    cols.div_ceil(Q8_BLOCK) * 11
}

/// Quantizes `x` (`cols` a multiple of [`Q8_BLOCK`]) into `out` ([`q8_len`] words) in the
/// layout [`Q8Row`] reads: per block `b` of 32, `d = max|x| / 127`, `q = round(x / d)`
/// (ties to even, so `|q| <= 127`), `d = 0` and `q = 0` for an all-zero block.
///
/// # Panics
/// If `cols` is not a multiple of 32 or `out` is shorter than [`q8_len`]`(cols)`.
pub fn quantize_row_q8(x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    assert!(
        cols.is_multiple_of(Q8_BLOCK),
        "quantize_row_q8: {cols} columns are not whole blocks of 32"
    );
    let nb = cols / Q8_BLOCK;
    assert!(out.len() >= q8_len(cols), "quantize_row_q8: out too short");
    let (d_out, rest) = out[..q8_len(cols)].split_at_mut(nb);
    let (s_out, q_out) = rest.split_at_mut(2 * nb);
    for (b, xb) in x.chunks_exact(Q8_BLOCK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i8; Q8_BLOCK];
        for (qj, &v) in q.iter_mut().zip(xb) {
            // round to nearest, ties to even, as `round_ties_even` (which is a libm call per
            // element on baseline x86-64): adding and subtracting 1.5 * 2^23 leaves the f32
            // rounded to an integer in the current (nearest-even) mode; exact for |v * id| <= 127
            const MAGIC: f32 = 12_582_912.0;
            let r = ((v * id).clamp(-127.0, 127.0) + MAGIC) - MAGIC;
            *qj = r as i8;
        }
        let s0: i32 = q[..16].iter().map(|&v| v as i32).sum();
        let s1: i32 = q[16..].iter().map(|&v| v as i32).sum();
        d_out[b] = d;
        s_out[2 * b] = d * s0 as f32;
        s_out[2 * b + 1] = d * s1 as f32;
        for (w, c) in q_out[8 * b..8 * b + 8].iter_mut().zip(q.chunks_exact(4)) {
            *w = f32::from_ne_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
        }
    }
}

/// A view of one input row quantized by [`quantize_row_q8`].
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    /// Per block: the scale `d`.
    pub d: &'a [f32],
    /// Per block: `d * sum(q[0..16])`, `d * sum(q[16..32])`.
    pub half_sums: &'a [f32],
    /// Per block: 32 signed bytes (as f32 words, in memory order).
    words: &'a [f32],
}

impl<'a> Q8Row<'a> {
    /// The view of `cols` columns quantized into `buf` by [`quantize_row_q8`].
    pub fn new(buf: &'a [f32], cols: usize) -> Q8Row<'a> {
        assert!(cols.is_multiple_of(Q8_BLOCK) && buf.len() >= q8_len(cols));
        let nb = cols / Q8_BLOCK;
        let (d, rest) = buf[..q8_len(cols)].split_at(nb);
        let (half_sums, words) = rest.split_at(2 * nb);
        Q8Row {
            d,
            half_sums,
            words,
        }
    }

    /// Blocks of 32.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Block `b`'s 32 quants.
    pub fn q(&self, b: usize) -> [i8; Q8_BLOCK] {
        let mut q = [0i8; Q8_BLOCK];
        for (c, w) in q.chunks_exact_mut(4).zip(&self.words[8 * b..8 * b + 8]) {
            for (o, v) in c.iter_mut().zip(w.to_ne_bytes()) {
                *o = v as i8;
            }
        }
        q
    }

    /// The quants of every block, 32 bytes per block, contiguous (for the SIMD kernels: a
    /// pointer to block `b`'s bytes is `qs_ptr().add(32 * b)`).
    pub fn qs_ptr(&self) -> *const i8 {
        self.words.as_ptr().cast()
    }
}

/// `y[r] = sum_c w[r, c] * x[c]` for a row-major matrix of `qt` blocks: the scalar reference.
/// Each row is dequantized exactly as ggml does, a block at a time, and dotted with `x` in
/// f32, in column order.
///
/// # Panics
/// If `x.len()` is not a whole number of blocks or `w` holds fewer than `y.len()` rows.
pub fn matvec_ref(qt: QuantType, w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    let rb = qt
        .row_bytes(cols)
        .unwrap_or_else(|| panic!("matvec_ref: {cols} columns are not whole {qt} blocks"));
    assert!(
        w.len() >= y.len() * rb,
        "matvec_ref: weight buffer too short"
    );
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    let mut deq = [0f32; 256];
    for (r, yr) in y.iter_mut().enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        let mut acc = 0f32;
        for (blk, xb) in row.chunks_exact(bb).zip(x.chunks_exact(be)) {
            dequantize_row(qt, blk, &mut deq[..be]);
            for (a, b) in deq[..be].iter().zip(xb) {
                acc += a * b;
            }
        }
        *yr = acc;
    }
}

/// A bound on `|w · x - w · x̂|` for one row `w` (dequantized, `cols` weights) where `x̂` is
/// `x` quantized by [`quantize_row_q8`]: each element moves by at most half its block's step
/// `d`, so the dot moves by at most `sum_c |w[c]| * d(c) / 2`. The SIMD kernels' distance from
/// [`matvec_ref`] is this plus f32 rounding.
pub fn q8_error_bound(w_row: &[f32], x: &[f32]) -> f32 {
    let mut bound = 0f64;
    for (wb, xb) in w_row.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax as f64 / 127.0;
        bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * d / 2.0;
    }
    bound as f32
}
