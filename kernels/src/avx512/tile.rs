//! The register-tile driver of the many-input AVX512-VNNI kernels, written once over the weight
//! layout ([`TileLayout`]): the ggml block layout ([`super::gemm_q_tile`]) and the repacked
//! one ([`super::gemm_repacked`]).
//!
//! A tile of up to [`TILE_ROWS`] rows is unpacked once into a stack buffer (per group of 16
//! units its operand vectors, lane `u` of each holding 4 bytes of unit `u`, then its per-unit
//! weight factors) for all the inputs of the call; then blocks of [`RW`] rows x up to [`TI`]
//! inputs run over the whole row with their accumulators in registers: per operand, `RW`
//! weight vectors and `TI` input vectors feed `RW * TI` `vpdpbusd`, so each lane ends a group
//! with its unit's whole integer dot. The layout says how a row is unpacked, how a prepared
//! input is addressed, where a unit's dot starts and how it is scaled into the accumulator;
//! the order of every float operation per (row, input) pair is the layout's, whatever the
//! block shape, and the final `_mm512_reduce_add_ps` is the driver's.

use core::arch::x86_64::*;

use crate::stream::Ahead;

/// Weight rows of one register block.
pub const RW: usize = 4;
/// Inputs of one register block (a block of fewer, the call's last, has its own arm in
/// [`gemm_tiles`]).
pub const TI: usize = 3;
const _: () = assert!(TI == 3, "gemm_tiles has one arm per block width up to TI");
/// Rows unpacked together at most: each input block runs over all of them before the next.
pub const TILE_ROWS: usize = 16;
/// 64-byte vectors of the stack buffer the unpacked row tile lives in (64 KiB).
pub const BUF_VECS: usize = 1024;

/// The unpacked row tile (cache-line aligned).
#[repr(align(64))]
struct Buf([[u8; 64]; BUF_VECS]);

/// What differs between weight layouts in the tile kernel; a value carries the call's row
/// shape and its prepared inputs. Every method runs inside the kernel's target features
/// (AVX-512F/BW/VL, AVX512-VNNI, AVX2, FMA, F16C).
pub(super) trait TileLayout {
    /// One prepared input, addressed at one group.
    type X: Copy;
    /// A row group's weight factors, as [`TileLayout::w_factors`] loads them.
    type WFactors: Copy;
    /// An input group's factors, as [`TileLayout::x_factors`] loads them.
    type XFactors: Copy;
    /// Operand vectors per group.
    const OPERANDS: usize;
    /// Vectors per unpacked group in the buffer: the operands, then the weight factors.
    const GROUP_VECS: usize;

    /// Bytes of one weight row.
    fn row_bytes(&self) -> usize;
    /// Groups per row run whole (`FULL`), and the units of a last group run with masks (0 if
    /// none).
    fn groups(&self) -> (usize, usize);
    /// Inputs of the call.
    fn inputs(&self) -> usize;
    /// Input `t` at its first group.
    ///
    /// # Safety
    /// `t < self.inputs()`.
    unsafe fn input(&self, t: usize) -> Self::X;
    /// Unpacks the weight row at `row` into its groups at `out` (`GROUP_VECS` vectors each).
    ///
    /// # Safety
    /// `row` holds one row of the layout; `out` is valid for writes of its groups' vectors.
    unsafe fn unpack_row(&self, row: *const u8, out: *mut __m512i);
    /// `x` at group `g`.
    ///
    /// # Safety
    /// The input holds group `g`.
    unsafe fn input_group(x: Self::X, g: usize) -> Self::X;
    /// Where the integer dots of the `n` units of `x`'s group start.
    ///
    /// # Safety
    /// `x` is at a group of `n` units (16 if `FULL`).
    unsafe fn dot_init<const FULL: bool>(x: Self::X, n: usize) -> __m512i;
    /// Operand `o` of `x`'s group of `n` units (16 if `FULL`).
    ///
    /// # Safety
    /// As [`TileLayout::dot_init`], `o < OPERANDS`.
    unsafe fn x_operand<const FULL: bool>(x: Self::X, o: usize, n: usize) -> __m512i;
    /// The factors of `x`'s group of `n` units.
    ///
    /// # Safety
    /// As [`TileLayout::dot_init`].
    unsafe fn x_factors(x: Self::X, n: usize) -> Self::XFactors;
    /// The weight factors of the unpacked group at `wg`.
    ///
    /// # Safety
    /// `wg` points at an unpacked group's `GROUP_VECS` vectors.
    unsafe fn w_factors(wg: *const __m512i) -> Self::WFactors;
    /// `acc` plus the group's integer dots `idot` scaled by both sides' factors.
    ///
    /// # Safety
    /// The kernel's features.
    unsafe fn scale_add(idot: __m512i, w: Self::WFactors, x: Self::XFactors, acc: __m512)
        -> __m512;
}

/// One group (`n` units, all 16 if `FULL`) of `R` unpacked rows against `T` inputs, into
/// `acc[r][t]`.
///
/// # Safety
/// `wg[r]` points at the group's vectors of row `r` in the buffer, `xg[t]` is input `t` at the
/// same group; the kernel's features.
#[inline(always)]
unsafe fn group<L: TileLayout, const R: usize, const T: usize, const FULL: bool>(
    wg: &[*const __m512i; R],
    xg: &[L::X; T],
    n: usize,
    acc: &mut [[__m512; T]; R],
) {
    // SAFETY: every read is one of the group's vectors (contract).
    unsafe {
        let init: [__m512i; T] = std::array::from_fn(|t| L::dot_init::<FULL>(xg[t], n));
        let mut idot = [init; R];
        for o in 0..L::OPERANDS {
            let xv: [__m512i; T] = std::array::from_fn(|t| L::x_operand::<FULL>(xg[t], o, n));
            for r in 0..R {
                let w = _mm512_loadu_si512(wg[r].add(o).cast());
                for t in 0..T {
                    idot[r][t] = _mm512_dpbusd_epi32(idot[r][t], w, xv[t]);
                }
            }
        }
        let xf: [L::XFactors; T] = std::array::from_fn(|t| L::x_factors(xg[t], n));
        for r in 0..R {
            let wf = L::w_factors(wg[r]);
            for t in 0..T {
                acc[r][t] = L::scale_add(idot[r][t], wf, xf[t], acc[r][t]);
            }
        }
    }
}

/// One row tile unpacked in the buffer, with what every register block over it reads.
struct Unpacked<'l, L> {
    layout: &'l L,
    /// The first input of the blocks.
    t0: usize,
    /// Row `r`'s groups at `buf + r * row_vecs`.
    buf: *const __m512i,
    row_vecs: usize,
    /// Output `(t, r)` at `y + t * ldy + r` (`r` from the tile's first row).
    y: *mut f32,
    ldy: usize,
}

impl<L: TileLayout> Unpacked<'_, L> {
    /// Rows `r..r + R` of the tile against the `T` inputs from `t0`, the whole row.
    ///
    /// # Safety
    /// As [`gemm_tiles`]; the rows are inside the tile and the inputs inside the layout's.
    #[inline(always)]
    unsafe fn block<const R: usize, const T: usize>(&self, r: usize, ahead: &mut Ahead) {
        // SAFETY: every group offset is inside the unpacked rows and the prepared inputs
        // (contract); y[t * ldy + r] is writable (contract).
        unsafe {
            let (full, tail) = self.layout.groups();
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            let at = |g: usize| -> ([*const __m512i; R], [L::X; T]) {
                let wg = std::array::from_fn(|i| {
                    self.buf.add((r + i) * self.row_vecs + g * L::GROUP_VECS)
                });
                let xg = std::array::from_fn(|t| {
                    let x = self.layout.input(self.t0 + t);
                    L::input_group(x, g)
                });
                (wg, xg)
            };
            for g in 0..full {
                let (wg, xg) = at(g);
                group::<L, R, T, true>(&wg, &xg, 16, &mut acc);
                ahead.step();
            }
            if tail > 0 {
                let (wg, xg) = at(full);
                group::<L, R, T, false>(&wg, &xg, tail, &mut acc);
                ahead.step();
            }
            for (i, ai) in acc.iter().enumerate() {
                for (t, a) in ai.iter().enumerate() {
                    *self.y.add(t * self.ldy + r + i) = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }

    /// The tile's first `rt` rows against the `T` inputs from `t0`, [`RW`] rows at a time.
    ///
    /// # Safety
    /// As [`Unpacked::block`], for `rt` rows.
    #[inline(always)]
    unsafe fn rows<const T: usize>(&self, rt: usize, ahead: &mut Ahead) {
        // SAFETY: forwarded contract; each block's rows are inside the tile.
        unsafe {
            let mut r = 0;
            while r + RW <= rt {
                self.block::<RW, T>(r, ahead);
                r += RW;
            }
            while r < rt {
                self.block::<1, T>(r, ahead);
                r += 1;
            }
        }
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows` rows at `w` in `layout` and its
/// inputs, in register blocks of [`RW`] rows x [`TI`] inputs.
///
/// # Safety
/// `w` holds `rows` rows of the layout, whose unpacked groups fit the buffer
/// (`groups * GROUP_VECS <= BUF_VECS`); the layout's inputs hold its groups; `y` is valid for
/// writes at `t * ldy + r` (`t < inputs`, `r < rows`) with nothing else accessing them during
/// the call; the kernel's features.
#[inline(always)]
pub(super) unsafe fn gemm_tiles<L: TileLayout>(
    layout: &L,
    w: *const u8,
    rows: usize,
    y: *mut f32,
    ldy: usize,
) {
    let (full, tail) = layout.groups();
    let groups = full + usize::from(tail > 0);
    let row_vecs = groups * L::GROUP_VECS;
    let rb = layout.row_bytes();
    let n = layout.inputs();
    let tile = (BUF_VECS / row_vecs).clamp(1, TILE_ROWS);
    let mut buf = Buf([[0; 64]; BUF_VECS]);
    let bp: *mut __m512i = buf.0.as_mut_ptr().cast();
    // SAFETY: rows r0..r0 + rt lie in w (contract) and their unpacked groups fit the buffer
    // (tile * row_vecs <= BUF_VECS); each block's inputs t0..t0 + T exist (T is what is
    // left, up to TI); y's columns r0..r0 + rt of rows t0..t0 + T are forwarded from the
    // contract.
    unsafe {
        for r0 in (0..rows).step_by(tile) {
            let rt = (rows - r0).min(tile);
            for r in 0..rt {
                layout.unpack_row(w.add((r0 + r) * rb), bp.add(r * row_vecs));
            }
            // the next tile's rows, streamed in while this one is computed
            let next = (rows - r0 - rt).min(tile);
            let steps = n.div_ceil(TI) * (rt / RW + rt % RW) * groups;
            let mut ahead = Ahead::new(w.wrapping_add((r0 + rt) * rb), next * rb, steps);
            for t0 in (0..n).step_by(TI) {
                let tile = Unpacked {
                    layout,
                    t0,
                    buf: bp,
                    row_vecs,
                    y: y.add(t0 * ldy + r0),
                    ldy,
                };
                match (n - t0).min(TI) {
                    1 => tile.rows::<1>(rt, &mut ahead),
                    2 => tile.rows::<2>(rt, &mut ahead),
                    _ => tile.rows::<TI>(rt, &mut ahead),
                }
            }
        }
    }
}
