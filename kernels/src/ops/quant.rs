//! Matvecs and matmuls on block-quantized weights ([`QMatrix`]). The scalar path is the
//! reference ([`quant::matvec_ref`]: ggml's dequantization, an f32 dot with the unquantized
//! input); the SIMD paths take integer dot products of the weights' quants against the input
//! quantized to 8-bit blocks ([`quant::quantize_row_q8`]), scaled per block.

use super::*;
use crate::quant::{self, q8_len, Q8Row, QMatrix};

/// A quantized matvec's input: the f32 row (which the scalar reference reads) and, on the SIMD
/// ISAs, its 8-bit blocks (which the SIMD kernels read).
#[derive(Clone, Copy)]
pub struct QuantX<'a> {
    x: &'a [f32],
    q8: Option<Q8Row<'a>>,
}

impl<'a> QuantX<'a> {
    /// Prepares `x` (a whole number of blocks of 32) for `isa`: quantized into `scratch`
    /// ([`q8_len`]`(x.len())` words) unless the ISA is scalar.
    pub fn new(isa: impl Into<Isa>, x: &'a [f32], scratch: &'a mut [f32]) -> QuantX<'a> {
        let isa: Isa = isa.into();
        if isa == Isa::Scalar {
            return QuantX { x, q8: None };
        }
        let need = q8_len(x.len());
        assert!(
            scratch.len() >= need,
            "QuantX: scratch holds {} words, {need} needed",
            scratch.len()
        );
        quant::quantize_row_q8(x, scratch);
        QuantX {
            x,
            q8: Some(Q8Row::new(&scratch[..need], x.len())),
        }
    }

    /// The input columns.
    pub fn cols(&self) -> usize {
        self.x.len()
    }

    /// The unquantized input.
    pub fn x(&self) -> &'a [f32] {
        self.x
    }

    /// The 8-bit blocks (`None` on the scalar ISA).
    pub fn q8(&self) -> Option<Q8Row<'a>> {
        self.q8
    }
}

/// The first `n` (1..=`N`) of `item(0), item(1), ...` at the front of an array of `N` (the
/// rest copies of `item(0)`, never read): the inputs of a kernel call that takes up to `N`.
#[inline]
pub(crate) fn group_of<T: Copy, const N: usize>(n: usize, item: impl Fn(usize) -> T) -> [T; N] {
    let mut group = [item(0); N];
    for (i, slot) in group.iter_mut().enumerate().take(n).skip(1) {
        *slot = item(i);
    }
    group
}

/// Runs `kernel(r0, rt, t0, g)` on tiles of up to `tile` of `rows` weight rows (`r0..r0 +
/// rt`) and, within each tile, groups of up to `group` of `n` inputs (`t0..t0 + g`): every
/// group of inputs over a tile before the next tile, so the tile's weights come from memory
/// for the first group and from cache for the others.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) fn for_each_tile(
    rows: usize,
    tile: usize,
    n: usize,
    group: usize,
    mut kernel: impl FnMut(usize, usize, usize, usize),
) {
    for r0 in (0..rows).step_by(tile) {
        let rt = (rows - r0).min(tile);
        for t0 in (0..n).step_by(group) {
            kernel(r0, rt, t0, (n - t0).min(group));
        }
    }
}

/// `y[r] = sum_c w[r, c] * x[c]` on the quantized matrix `w` (`y.len() == w.rows()`).
pub fn matvec_q(cpu: impl Into<Cpu>, w: &QMatrix<'_>, x: &QuantX<'_>, y: &mut [f32]) {
    matvec_q_rows(cpu, w, std::slice::from_ref(x), y)
}

/// Many inputs against one quantized matrix: `y[t * rows + r] = sum_c w[r, c] * xs[t][c]`.
/// Output `t` is bit for bit [`matvec_q`]'s for `xs[t]` alone. On the SIMD ISAs each weight
/// group is unpacked once for up to 4 inputs.
///
/// # Panics
/// Unless `y` is `xs.len()` rows of `w.rows()` and every input has `w.cols()` columns.
pub fn matvec_q_rows(cpu: impl Into<Cpu>, w: &QMatrix<'_>, xs: &[QuantX<'_>], y: &mut [f32]) {
    w.check_outputs("matvec_q_rows", xs.len(), y.len());
    // SAFETY: y (borrowed mutably here) holds xs.len() rows of `rows` floats, row t at t * rows.
    unsafe { matvec_q_raw(cpu.into(), w, xs, y.as_mut_ptr(), w.rows()) }
}

/// `y[t * ldy + r] = sum_c w[r, c] * xs[t][c]` for every input `t` and weight row `r`: the
/// SIMD kernels take the inputs in groups of up to 4, each weight group unpacked once per
/// group of inputs, and every output is bit for bit what the kernel gives its input alone.
///
/// # Safety
/// `y` must be valid for writes at `t * ldy + r` (`t < xs.len()`, `r < w.rows()`), with
/// nothing else reading or writing those floats during the call.
pub(crate) unsafe fn matvec_q_raw(
    cpu: Cpu,
    w: &QMatrix<'_>,
    xs: &[QuantX<'_>],
    y: *mut f32,
    ldy: usize,
) {
    let isa = cpu.isa();
    let (qt, rows, cols) = (w.qt(), w.rows(), w.cols());
    let w = w.bytes();
    if xs.is_empty() {
        return;
    }
    assert!(xs.len() == 1 || ldy >= rows, "matvec_q_rows: rows overlap");
    for x in xs {
        assert_eq!(
            x.cols(),
            cols,
            "matvec_q_rows: an input of {} columns for a matrix of {cols}",
            x.cols()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx2) {
        check(isa);
        let group = generic::Q_GROUP;
        for (g, grp) in xs.chunks(group).enumerate() {
            let q: [Q8Row<'_>; generic::Q_GROUP] = group_of(grp.len(), |i| q8_of(&grp[i]));
            let q = &q[..grp.len()];
            let yg = y.wrapping_add(g * group * ldy);
            let vnni = cpu.vnni();
            let m = generic::Matvec::new(w, rows, cols, q, yg, ldy);
            if isa == Isa::Avx512 {
                let b = Avx512::new().unwrap_or_else(|| unsupported(isa));
                // SAFETY: VNNI detected when `vnni` (a `Cpu` claims it only where detected);
                // `w` holds `rows` rows of `cols` (a `QMatrix`); every input was quantized
                // from `cols` columns (checked, `QuantX::new`); this group's rows of y are
                // forwarded from the contract.
                unsafe { generic::matvec_q(b, qt, m, vnni) }
            } else {
                let b = Avx2::new().unwrap_or_else(|| unsupported(isa));
                // SAFETY: as above, for AVX2 (AVX-VNNI detected when `vnni`).
                unsafe { generic::matvec_q(b, qt, m, vnni) }
            }
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        check(isa);
        let dot = neon_dot(cpu);
        for (g, grp) in xs.chunks(neon::Q_GROUP).enumerate() {
            let q: [Q8Row<'_>; neon::Q_GROUP] = group_of(grp.len(), |i| q8_of(&grp[i]));
            let yg = y.wrapping_add(g * neon::Q_GROUP * ldy);
            let m = generic::Matvec::new(w, rows, cols, &q[..grp.len()], yg, ldy);
            // SAFETY: NEON checked, and dotprod / i8mm claimed by `dot` only where the `Cpu`
            // claims them, which it does only where detected; `w` holds `rows` rows of `cols`
            // (a `QMatrix`); every input was quantized from `cols` columns (checked,
            // `QuantX::new`); this group's rows of y are forwarded from the contract.
            unsafe { neon::matvec_q(qt, m, dot) }
        }
        return;
    }
    for (t, x) in xs.iter().enumerate() {
        // SAFETY: row t of y has `rows` writable, unaliased floats at t * ldy (contract).
        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * ldy), rows) };
        quant::matvec_ref(qt, w, x.x, yt);
    }
}

/// The 8-bit blocks of an input prepared for a SIMD ISA.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn q8_of<'a>(x: &QuantX<'a>) -> Q8Row<'a> {
    x.q8.expect("matvec_q_rows: input not quantized for a SIMD ISA")
}

/// The instruction the NEON quantized kernels take their integer dots with on `cpu`.
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_dot(cpu: Cpu) -> neon::DotInsn {
    if cpu.i8mm() && cpu.dotprod() {
        neon::DotInsn::Smmla
    } else if cpu.dotprod() {
        neon::DotInsn::Sdot
    } else {
        neon::DotInsn::Widen
    }
}
