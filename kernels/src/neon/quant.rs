//! NEON matvecs on ggml block-quantized weights against 8-bit input blocks ([`Q8Row`]):
//! integer dot products per scale unit (32 columns, 16 for Q6_K), scaled in f32.
//!
//! A row is walked in quads of 4 scale units, one f32 lane each. A quad's weights are unpacked
//! once into signed bytes in the input's column order (the formats' offsets, `q - 8`, `q - 16`,
//! `q - 32`, folded into the bytes, so only Q4_K and Q5_K keep a per-unit bias, `-dmin * m`,
//! against the input's scaled sums), with a per-unit weight scale. For each input the integer
//! dots are reduced to one i32 per unit and the input's accumulator takes `idot * (scale *
//! d_x) (+ bias * s_x)` per lane, then is summed once per row.
//!
//! The integer dots are exact whichever instruction takes them ([`DotInsn`]): widening
//! multiplies (`smull` + `sadalp`: `|q_w| <= 128`, `|q_x| <= 127`, so no i16 product
//! overflows), `sdot`, or `smmla` on pairs of weight rows against pairs of inputs (the odd row
//! or input left over takes `sdot`). The f32 work after them is the same in every case and for
//! every grouping of inputs, so all three give the same bits, and output `t` of a many-input
//! call is bit for bit the single-input one.

use core::arch::aarch64::*;

pub(crate) use crate::generic::Q_GROUP;
use crate::generic::{by_format, by_inputs, Matvec};
use crate::quant::{k_scales_mins, Q8Row, QuantType};

/// The instruction that takes the integer dots, chosen from the [`crate::Cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DotInsn {
    /// `smull` / `smull2` + `sadalp` (baseline NEON).
    Widen,
    /// `sdot` (FEAT_DotProd).
    Sdot,
    /// `smmla` on row and input pairs (FEAT_I8MM), `sdot` for the ones left over.
    Smmla,
}

/// One quad (4 scale units) of one weight row, unpacked.
#[derive(Clone, Copy)]
struct Quad {
    /// Signed weight bytes in column order: unit `u`'s in `w[2u]`, `w[2u + 1]` (units of 32),
    /// or in `w[u]` (units of 16); zero for units past the row's end.
    w: [int8x16_t; 8],
    /// Per unit: the weight scale of its integer dot; 0.0 past the row's end.
    scale: float32x4_t,
    /// Per unit: the factor of the input's scaled sum (Q4_K / Q5_K only).
    bias: float32x4_t,
}

/// A weight format's quad unpacking.
trait Fmt {
    /// Columns per scale unit (32, or 16 for Q6_K).
    const UNIT: usize;
    /// Bytes of a block.
    const BLOCK_BYTES: usize;
    /// Scale units per block (1 for Q4_0 / Q5_0 / Q8_0, 8 for Q4_K / Q5_K, 16 for Q6_K).
    const BLOCK_UNITS: usize;
    /// Whether [`Quad::bias`] is used.
    const BIAS: bool = false;
    /// Unpacks units `4 qi..4 qi + n` (`1 <= n <= 4`; `n == 4` unless the format has one unit
    /// per block) of the row at `row` into `g`, in place (a returned quad would be copied into
    /// the tile): every field the format uses, [`Quad::w`] zero past the row's end.
    ///
    /// # Safety
    /// The row holds those units (whole blocks); NEON.
    unsafe fn unpack(row: *const u8, qi: usize, n: usize, g: &mut Quad);
}

/// The f16 at `p` as f32 (exact).
///
/// # Safety
/// `p` is valid for reading 2 bytes.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: forwarded contract; unaligned read.
    let bits = unsafe { u16::from_le(std::ptr::read_unaligned(p as *const u16)) };
    half::f16::from_bits(bits).to_f32()
}

/// A vector of the 4 floats of `v`.
#[inline(always)]
fn f32x4(v: [f32; 4]) -> float32x4_t {
    // SAFETY: NEON (baseline); v holds 4 floats.
    unsafe { vld1q_f32(v.as_ptr()) }
}

/// An all-zero quad.
#[inline(always)]
fn zero_quad() -> Quad {
    // SAFETY: register-only NEON (baseline).
    unsafe {
        Quad {
            w: [vdupq_n_s8(0); 8],
            scale: vdupq_n_f32(0.0),
            bias: vdupq_n_f32(0.0),
        }
    }
}

/// The low nibbles of `v` (`HIGH == false`) or the high ones.
#[inline(always)]
fn nibbles<const HIGH: bool>(v: uint8x16_t) -> uint8x16_t {
    // SAFETY: register-only NEON (baseline).
    unsafe {
        if HIGH {
            vshrq_n_u8::<4>(v)
        } else {
            vandq_u8(v, vdupq_n_u8(0x0f))
        }
    }
}

/// Unsigned bytes `v` minus `off`, as signed bytes (`v <= 63`, `off <= 32`: no wrap).
#[inline(always)]
fn signed_minus(v: uint8x16_t, off: i8) -> int8x16_t {
    // SAFETY: register-only NEON (baseline).
    unsafe { vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(off)) }
}

/// Q4_0 / Q5_0 / Q8_0, told apart by their block bytes `BB` (18, 22, 34): one block per unit,
/// its f16 step `d` first; `w = d * (q - off)` (`off` 8, 16, 0).
struct Blocks<const BB: usize>;
type Q40 = Blocks<18>;
type Q50 = Blocks<22>;
type Q80 = Blocks<34>;

impl<const BB: usize> Blocks<BB> {
    /// The signed quants `q - off` of the block at `b`: its columns 0..16 and 16..32.
    ///
    /// # Safety
    /// `b` is valid for reading `BB` bytes; NEON.
    #[inline(always)]
    unsafe fn quants(b: *const u8) -> [int8x16_t; 2] {
        const SPREAD_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
        const SPREAD_HI: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];
        const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        let q5 = BB == 22;
        // SAFETY: reads inside the block (contract); the tables are 16 bytes each.
        unsafe {
            if BB == 34 {
                return [
                    vld1q_s8(b.add(2) as *const i8),
                    vld1q_s8(b.add(18) as *const i8),
                ];
            }
            let v = vld1q_u8(b.add(if q5 { 6 } else { 2 }));
            let (mut lo, mut hi) = (nibbles::<false>(v), nibbles::<true>(v));
            if q5 {
                // bit j of qh is the 5th bit of element j: elements 0..16 are the low nibbles,
                // 16..32 the high ones
                let qh = u32::from_le(std::ptr::read_unaligned(b.add(2) as *const u32));
                let bytes = vreinterpretq_u8_u32(vdupq_n_u32(qh));
                let bit = vld1q_u8(BIT.as_ptr());
                let fifth = |idx: &[u8; 16]| {
                    let sel = vqtbl1q_u8(bytes, vld1q_u8(idx.as_ptr()));
                    vandq_u8(vtstq_u8(sel, bit), vdupq_n_u8(0x10))
                };
                lo = vorrq_u8(lo, fifth(&SPREAD_LO));
                hi = vorrq_u8(hi, fifth(&SPREAD_HI));
            }
            let off = if q5 { 16 } else { 8 };
            [signed_minus(lo, off), signed_minus(hi, off)]
        }
    }
}

impl<const BB: usize> Fmt for Blocks<BB> {
    const UNIT: usize = 32;
    const BLOCK_BYTES: usize = BB;
    const BLOCK_UNITS: usize = 1;
    #[inline(always)]
    unsafe fn unpack(row: *const u8, qi: usize, n: usize, g: &mut Quad) {
        *g = zero_quad();
        let mut d = [0f32; 4];
        // SAFETY: only blocks 4 qi + u, u < n, are read (BB bytes each, inside the row by the
        // contract).
        unsafe {
            for (u, du) in d.iter_mut().enumerate().take(n) {
                let b = row.add(BB * (4 * qi + u));
                *du = f16_at(b);
                [g.w[2 * u], g.w[2 * u + 1]] = Self::quants(b);
            }
        }
        g.scale = f32x4(d);
    }
}

/// Q4_K / Q5_K (`Q5`): quad `qi` is half `qi % 2` (sub-blocks `4h..4h + 4`) of superblock
/// `qi / 2`; `w = d * sc * q - dmin * m`, the quants unsigned (0..31).
struct K45<const Q5: bool>;
type Q4K = K45<false>;
type Q5K = K45<true>;

impl<const Q5: bool> Fmt for K45<Q5> {
    const UNIT: usize = 32;
    const BLOCK_BYTES: usize = if Q5 { 176 } else { 144 };
    const BLOCK_UNITS: usize = 8;
    const BIAS: bool = true;
    #[inline(always)]
    unsafe fn unpack(row: *const u8, qi: usize, _n: usize, g: &mut Quad) {
        let h = qi % 2;
        let qs = if Q5 { 48 } else { 16 };
        // SAFETY: reads bytes 0..BLOCK_BYTES of the superblock at row + BLOCK_BYTES * (qi / 2),
        // which the row holds (contract: a quad is half a superblock).
        unsafe {
            let p = row.add(Self::BLOCK_BYTES * (qi / 2));
            let qh = if Q5 {
                [vld1q_u8(p.add(16)), vld1q_u8(p.add(32))]
            } else {
                [vdupq_n_u8(0); 2]
            };
            for u in 0..4 {
                let s = 4 * h + u; // the sub-block
                let chunk = p.add(qs + 32 * (s / 2));
                for (half, &qh_half) in qh.iter().enumerate() {
                    let v = vld1q_u8(chunk.add(16 * half));
                    let mut q = if s.is_multiple_of(2) {
                        nibbles::<false>(v)
                    } else {
                        nibbles::<true>(v)
                    };
                    if Q5 {
                        // bit s of qh[l] is the 5th bit of element l of sub-block s
                        let on = vtstq_u8(qh_half, vdupq_n_u8(1 << s));
                        q = vorrq_u8(q, vandq_u8(on, vdupq_n_u8(0x10)));
                    }
                    g.w[2 * u + half] = vreinterpretq_s8_u8(q);
                }
            }
            let (sc, mn) = k_scales_mins(&*(p.add(4) as *const [u8; 12]));
            let widen = |v: u64| {
                let b = (v >> (32 * h)) as u32 as u64;
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vcreate_u8(b)))))
            };
            g.scale = vmulq_f32(vdupq_n_f32(f16_at(p)), widen(sc));
            // -(dmin * m), exactly as the AVX kernels form it
            g.bias = vnegq_f32(vmulq_f32(vdupq_n_f32(f16_at(p.add(2))), widen(mn)));
        }
    }
}

/// Q6_K: quad `qi` is units `4 (qi % 4)..+4` (of 16 columns) of superblock `qi / 4`;
/// `w = d * sc * (q - 32)`.
struct Q6K;
impl Fmt for Q6K {
    const UNIT: usize = 16;
    const BLOCK_BYTES: usize = 210;
    const BLOCK_UNITS: usize = 16;
    #[inline(always)]
    unsafe fn unpack(row: *const u8, qi: usize, _n: usize, g: &mut Quad) {
        let q4 = qi % 4;
        // element e = 16 (4 q4 + u) + i of the superblock: half h = q4 / 2, quarter
        // k = 2 (q4 % 2) + u / 2, column l = 16 (u % 2) + i; low 4 bits from
        // ql[64 h + 32 (k % 2) + l] (low nibble for k < 2), high 2 from qh[32 h + l] >> 2k
        let h = q4 / 2;
        // SAFETY: reads bytes 0..210 of the superblock at row + 210 * (qi / 4).
        unsafe {
            let p = row.add(210 * (qi / 4));
            let d = f16_at(p.add(208));
            let mut sc = [0f32; 4];
            for (u, s) in sc.iter_mut().enumerate() {
                let k = 2 * (q4 % 2) + u / 2;
                let l0 = 16 * (u % 2);
                let ql = vld1q_u8(p.add(64 * h + 32 * (k % 2) + l0));
                let lo = if k < 2 {
                    nibbles::<false>(ql)
                } else {
                    nibbles::<true>(ql)
                };
                let qh = vld1q_u8(p.add(128 + 32 * h + l0));
                let hi = vandq_u8(vshlq_u8(qh, vdupq_n_s8(-2 * k as i8)), vdupq_n_u8(3));
                g.w[u] = signed_minus(vorrq_u8(lo, vshlq_n_u8::<4>(hi)), 32);
                *s = d * (*p.add(192 + 4 * q4 + u) as i8) as f32;
            }
            g.scale = f32x4(sc);
        }
    }
}

/// One input's data for one quad: its quants in the units' column order (zero past the
/// row's end), `d_x` per unit and (for the formats with a bias) its scaled sum per unit.
struct XQuad {
    q: [int8x16_t; 8],
    dx: float32x4_t,
    sx: float32x4_t,
}

/// The quad `qi` (`n` units) of input `x`.
///
/// # Safety
/// `x` was quantized from a row holding those units; NEON.
#[inline(always)]
unsafe fn x_quad<F: Fmt>(x: &Q8Row<'_>, qi: usize, n: usize) -> XQuad {
    // SAFETY: units 4 qi..4 qi + n are columns [4 qi UNIT, (4 qi + n) UNIT) of the input,
    // within its quants; blocks (and half blocks) of those columns within d and half_sums.
    unsafe {
        let z = vdupq_n_s8(0);
        let mut q = [z; 8];
        let c0 = 4 * qi * F::UNIT;
        let xq = x.qs_ptr().add(c0);
        for (i, v) in q.iter_mut().enumerate().take(n * F::UNIT / 16) {
            *v = vld1q_s8(xq.add(16 * i));
        }
        let d = x.d.as_ptr();
        let zero = vdupq_n_f32(0.0);
        let (dx, sx) = if F::UNIT == 16 {
            // units 4 qi + u lie in blocks 2 qi + u / 2
            let d2 = vld1_f32(d.add(2 * qi));
            let dd = vcombine_f32(d2, d2);
            (vzip1q_f32(dd, dd), zero)
        } else if n == 4 {
            let dx = vld1q_f32(d.add(4 * qi));
            let sx = if F::BIAS {
                let hs = x.half_sums.as_ptr().add(8 * qi);
                vpaddq_f32(vld1q_f32(hs), vld1q_f32(hs.add(4)))
            } else {
                zero
            };
            (dx, sx)
        } else {
            // a partial quad (the formats of one unit per block, which have no bias)
            let mut dv = [0f32; 4];
            std::ptr::copy_nonoverlapping(d.add(4 * qi), dv.as_mut_ptr(), n);
            (f32x4(dv), zero)
        };
        XQuad { q, dx, sx }
    }
}

/// The instruction behind one 16-byte integer dot: the four i32 lanes of `acc` plus products
/// of `w` and `x` bytes (which bytes feed which lane is the instruction's own; only the sum
/// of the lanes is used).
trait Dot {
    /// # Safety
    /// The CPU has the instruction's feature, enabled in the calling function.
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t;
}

/// `smull` / `smull2` (products to i16) + `sadalp` (pairs added into i32).
struct Widen;
impl Dot for Widen {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: register-only baseline NEON.
        unsafe {
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
}

/// Defines `unsafe fn $name(acc, a, b)`: the instruction `$insn` adding products of the bytes
/// of `a` and `b` into the four i32 lanes of `acc`, as inline assembly (its intrinsic is not
/// stable Rust yet); the CPU must have `$feature`, enabled in the calling function.
macro_rules! accumulate_insn {
    ($(#[$doc:meta])* $name:ident, $insn:literal, $feature:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $feature, ", enabled in the calling function.")]
        #[inline(always)]
        unsafe fn $name(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            let mut r = acc;
            // SAFETY: the instruction reads and writes only these registers; its feature is
            // enabled and present (contract).
            unsafe {
                core::arch::asm!(
                    concat!($insn, " {r:v}.4s, {a:v}.16b, {b:v}.16b"),
                    r = inout(vreg) r,
                    a = in(vreg) a,
                    b = in(vreg) b,
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
            r
        }
    };
}

accumulate_insn!(
    /// `sdot`: four byte products per i32 lane.
    sdot, "sdot", "dotprod"
);
accumulate_insn!(
    /// `smmla`: `acc + [a0 . b0, a0 . b1, a1 . b0, a1 . b1]` where `a0`, `a1` (`b0`, `b1`) are
    /// the low and high 8 bytes of `a` (`b`).
    smmla, "smmla", "i8mm"
);

/// [`sdot`] as a [`Dot`].
struct Sdot;
impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: forwarded contract (dotprod).
        unsafe { sdot(acc, w, x) }
    }
}

/// The integer dots of one quad of one row with one input: one i32 per unit.
///
/// # Safety
/// As [`Dot::dot`].
#[inline(always)]
unsafe fn quad_idot<F: Fmt, D: Dot>(g: &Quad, x: &XQuad) -> int32x4_t {
    // SAFETY: forwarded contract; the rest is register-only baseline NEON.
    unsafe {
        let z = vdupq_n_s32(0);
        let mut a = [z; 4];
        for (u, au) in a.iter_mut().enumerate() {
            *au = if F::UNIT == 32 {
                D::dot(
                    D::dot(z, g.w[2 * u], x.q[2 * u]),
                    g.w[2 * u + 1],
                    x.q[2 * u + 1],
                )
            } else {
                D::dot(z, g.w[u], x.q[u])
            };
        }
        vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3]))
    }
}

/// The integer dots of one quad of two rows (`g0`, `g1`) with two inputs (`xa`, `xb`) on
/// `smmla`: `[[(g0, xa), (g0, xb)], [(g1, xa), (g1, xb)]]`, one i32 per unit each.
///
/// # Safety
/// As [`smmla`].
#[inline(always)]
unsafe fn quad_idot_mm<F: Fmt>(
    g0: &Quad,
    g1: &Quad,
    xa: &XQuad,
    xb: &XQuad,
) -> [[int32x4_t; 2]; 2] {
    // SAFETY: forwarded contract; the rest is register-only baseline NEON.
    unsafe {
        let per = F::UNIT / 16; // vectors per unit
        let mut c = [vdupq_n_s32(0); 4];
        for (u, cu) in c.iter_mut().enumerate() {
            for j in per * u..per * (u + 1) {
                let s64 = vreinterpretq_s64_s8;
                let (w0, w1) = (s64(g0.w[j]), s64(g1.w[j]));
                let (x0, x1) = (s64(xa.q[j]), s64(xb.q[j]));
                let lo = |a, b| vreinterpretq_s8_s64(vzip1q_s64(a, b));
                let hi = |a, b| vreinterpretq_s8_s64(vzip2q_s64(a, b));
                *cu = smmla(*cu, lo(w0, w1), lo(x0, x1));
                *cu = smmla(*cu, hi(w0, w1), hi(x0, x1));
            }
        }
        // c[u] = [r0 xa, r0 xb, r1 xa, r1 xb] of unit u: transpose to one vector per pair
        let t0 = vreinterpretq_s64_s32(vtrn1q_s32(c[0], c[1]));
        let t1 = vreinterpretq_s64_s32(vtrn2q_s32(c[0], c[1]));
        let t2 = vreinterpretq_s64_s32(vtrn1q_s32(c[2], c[3]));
        let t3 = vreinterpretq_s64_s32(vtrn2q_s32(c[2], c[3]));
        let s32 = vreinterpretq_s32_s64;
        [
            [s32(vzip1q_s64(t0, t2)), s32(vzip1q_s64(t1, t3))],
            [s32(vzip2q_s64(t0, t2)), s32(vzip2q_s64(t1, t3))],
        ]
    }
}

/// An input's accumulator after one quad: `acc + idot * (scale * d_x) (+ bias * s_x)`, the
/// same f32 operations whichever instruction took `idot`.
#[inline(always)]
fn update<F: Fmt>(acc: float32x4_t, idot: int32x4_t, g: &Quad, x: &XQuad) -> float32x4_t {
    // SAFETY: register-only baseline NEON.
    unsafe {
        let acc = vfmaq_f32(acc, vcvtq_f32_s32(idot), vmulq_f32(g.scale, x.dx));
        if F::BIAS {
            vfmaq_f32(acc, g.bias, x.sx)
        } else {
            acc
        }
    }
}

/// `(v0 + v1) + (v2 + v3)`.
#[inline(always)]
fn hsum(v: float32x4_t) -> f32 {
    // SAFETY: register-only baseline NEON.
    unsafe {
        let p = vpaddq_f32(v, v);
        vgetq_lane_f32::<0>(vpaddq_f32(p, p))
    }
}

/// The row shape: quads per row, units in the last quad, bytes per row.
#[inline(always)]
fn row_shape<F: Fmt>(cols: usize) -> (usize, usize, usize) {
    let units = cols / F::UNIT;
    let quads = units.div_ceil(4);
    let last = units - 4 * (quads.max(1) - 1);
    let rb = units / F::BLOCK_UNITS * F::BLOCK_BYTES;
    (quads, last, rb)
}

/// One quad of a tile of `M` rows (1 or 2) against `R` inputs: the rows' quads unpacked and
/// the quad of the inputs that goes with them.
struct TileQuad<'a, const M: usize, const R: usize> {
    g: &'a [Quad; M],
    xs: &'a [Q8Row<'a>; R],
    /// The quad and its units.
    qi: usize,
    n: usize,
}

/// A tile's accumulators: `acc[i][t]` for row `i` and input `t`.
type Acc<const M: usize, const R: usize> = [[float32x4_t; R]; M];

impl<const M: usize, const R: usize> TileQuad<'_, M, R> {
    /// Input `t`'s quad.
    ///
    /// # Safety
    /// Input `t` holds the quad's units; NEON.
    #[inline(always)]
    unsafe fn x<F: Fmt>(&self, t: usize) -> XQuad {
        // SAFETY: forwarded contract.
        unsafe { x_quad::<F>(&self.xs[t], self.qi, self.n) }
    }

    /// Input `t`, its quad `x`, against every row with the dot `D`.
    ///
    /// # Safety
    /// As [`Dot::dot`].
    #[inline(always)]
    unsafe fn dot_rows<F: Fmt, D: Dot>(&self, t: usize, x: &XQuad, acc: &mut Acc<M, R>) {
        for (gi, ai) in self.g.iter().zip(acc.iter_mut()) {
            // SAFETY: forwarded contract.
            ai[t] = update::<F>(ai[t], unsafe { quad_idot::<F, D>(gi, x) }, gi, x);
        }
    }
}

/// The integer dots of a [`TileQuad`] with one instruction, added into the tile's
/// accumulators by [`update`].
trait Kernel {
    /// Whether the rows go in tiles of two (the last of an odd count alone), else of one.
    const ROW_PAIRS: bool = false;
    /// # Safety
    /// Every input holds the quad's units; the CPU has the kernel's features, enabled in the
    /// calling function.
    unsafe fn quad<F: Fmt, const M: usize, const R: usize>(
        q: &TileQuad<'_, M, R>,
        acc: &mut Acc<M, R>,
    );
}

/// A [`Dot`] one row and one input at a time.
impl<D: Dot> Kernel for D {
    #[inline(always)]
    unsafe fn quad<F: Fmt, const M: usize, const R: usize>(
        q: &TileQuad<'_, M, R>,
        acc: &mut Acc<M, R>,
    ) {
        for t in 0..R {
            // SAFETY: forwarded contract.
            unsafe { q.dot_rows::<F, D>(t, &q.x::<F>(t), acc) }
        }
    }
}

/// `smmla` on a pair of rows against inputs in pairs; the input left over of an odd `R` takes
/// `sdot`, and so does a row alone.
struct Mmla;
impl Kernel for Mmla {
    const ROW_PAIRS: bool = true;
    #[inline(always)]
    unsafe fn quad<F: Fmt, const M: usize, const R: usize>(
        q: &TileQuad<'_, M, R>,
        acc: &mut Acc<M, R>,
    ) {
        // SAFETY: forwarded contract (dotprod and i8mm); rows 0 and 1 exist where M == 2.
        unsafe {
            if M == 1 {
                return Sdot::quad::<F, M, R>(q, acc);
            }
            let mut t = 0;
            while t + 2 <= R {
                let x = [q.x::<F>(t), q.x::<F>(t + 1)];
                let idot = quad_idot_mm::<F>(&q.g[0], &q.g[1], &x[0], &x[1]);
                for (i, gi) in q.g.iter().enumerate() {
                    for (j, xj) in x.iter().enumerate() {
                        acc[i][t + j] = update::<F>(acc[i][t + j], idot[i][j], gi, xj);
                    }
                }
                t += 2;
            }
            if t < R {
                q.dot_rows::<F, Sdot>(t, &q.x::<F>(t), acc);
            }
        }
    }
}

/// Rows `r..r + M` of `m` against its inputs `xs` with the kernel `K`: `y[t * ldy + r + i]`.
///
/// # Safety
/// As [`matvec_q`] for rows `r + M <= m.rows`; the CPU has `K`'s features, enabled in the
/// caller.
#[inline(always)]
unsafe fn tile<F: Fmt, K: Kernel, const M: usize, const R: usize>(
    m: &Matvec<'_>,
    xs: &[Q8Row<'_>; R],
    r: usize,
) {
    let Matvec {
        w, cols, y, ldy, ..
    } = *m;
    let (quads, last, rb) = row_shape::<F>(cols);
    // SAFETY: rows r..r + M lie in w (contract); quad qi holds n units of them and of every
    // input (each quantized from `cols` columns); y[t * ldy + r + i] is writable (contract).
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); R]; M];
        let row = w.as_ptr().add(r * rb);
        for qi in 0..quads {
            let n = if qi + 1 == quads { last } else { 4 };
            // written out (M is 1 or 2) so that each is unpacked inline, not in a loop
            let mut g = [zero_quad(); M];
            F::unpack(row, qi, n, &mut g[0]);
            if M == 2 {
                F::unpack(row.add(rb), qi, n, &mut g[1]);
            }
            K::quad::<F, M, R>(&TileQuad { g: &g, xs, qi, n }, &mut acc);
        }
        for (i, ai) in acc.iter().enumerate() {
            for (t, a) in ai.iter().enumerate() {
                *y.add(t * ldy + r + i) = hsum(*a);
            }
        }
    }
}

/// Every row of `m` against its `R` inputs with the kernel `K`, in tiles of one or two rows.
///
/// # Safety
/// As [`matvec_q`] with `R == m.xs.len()`; the CPU has `K`'s features, enabled in the caller.
#[inline(always)]
unsafe fn rows<F: Fmt, K: Kernel, const R: usize>(m: &Matvec<'_>) {
    let xs = m.inputs::<R>();
    let mut r = 0;
    // SAFETY: forwarded contract, for rows below m.rows.
    unsafe {
        if K::ROW_PAIRS {
            while r + 2 <= m.rows {
                tile::<F, K, 2, R>(m, &xs, r);
                r += 2;
            }
        }
        for r in r..m.rows {
            tile::<F, K, 1, R>(m, &xs, r);
        }
    }
}

/// The matvec `m` on `qt` weights (see [`Matvec`]): every weight quad is unpacked once for
/// all inputs. The bits are the same whichever `dot`.
///
/// # Safety
/// `m` as [`Matvec`] says, with `qt` its weights' format; the CPU has dotprod for
/// [`DotInsn::Sdot`], dotprod and i8mm for [`DotInsn::Smmla`].
pub(crate) unsafe fn matvec_q(qt: QuantType, m: Matvec<'_>, dot: DotInsn) {
    // SAFETY: forwarded contract (the features of `dot` present).
    unsafe {
        match dot {
            DotInsn::Widen => plain(qt, &m),
            DotInsn::Sdot => with_dotprod(qt, &m),
            DotInsn::Smmla => with_i8mm(qt, &m),
        }
    }
}

/// Defines a [`matvec_q`] body compiled for the given target features and kernel.
macro_rules! matvec_fn {
    ($name:ident, $features:literal, $kernel:ty) => {
        /// [`matvec_q`] for one kernel.
        ///
        /// # Safety
        /// As [`matvec_q`]; the CPU supports the enabled features.
        #[target_feature(enable = $features)]
        unsafe fn $name(qt: QuantType, m: &Matvec<'_>) {
            macro_rules! run {
                ($f:ty, $t:literal) => {
                    rows::<$f, $kernel, $t>(m)
                };
            }
            macro_rules! each_input {
                ($f:ty) => {
                    by_inputs!(m.xs.len(), run!($f,))
                };
            }
            // SAFETY: forwarded contract.
            unsafe { by_format!(qt, each_input!()) }
        }
    };
}

matvec_fn!(plain, "neon", Widen);
matvec_fn!(with_dotprod, "neon,dotprod", Sdot);
matvec_fn!(with_i8mm, "neon,dotprod,i8mm", Mmla);
