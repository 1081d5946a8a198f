//! Many inputs against one ggml block-quantized matrix as register tiles (AVX512-VNNI): the
//! decode step's rows as a GEMM. Each input, quantized to 8-bit blocks ([`QuantX`]), is
//! *prepared* once per call ([`prepare_q_tile`]: its quants in the kernel's operand order, its
//! per-unit steps and sums); then the kernel (`avx512::gemm_q_tile`) unpacks each weight group
//! once for all inputs. Each output is bit for bit [`matvec_q`]'s on its input alone.

use super::*;
use crate::quant::{QMatrix, QuantType};

/// Inputs from which [`crate::par::matvec_q_rows`] takes the tiled kernel where it runs
/// ([`q_tile_runs`]); the same bits either way.
pub const Q_GEMM_MIN: usize = 8;

/// Rows of up to this many 32-column units fit the tiled kernel's buffer (see
/// [`q_tile_runs`]): 102 groups of 16 units of 10 vectors, or 170 superblocks of Q6_K.
const fn fits(qt: QuantType, cols: usize) -> bool {
    let (unit_cols, vecs) = match qt {
        QuantType::Q6K => (256, 6),
        _ => (512, 10),
    };
    cols.div_ceil(unit_cols) * vecs <= 1024
}

/// Whether `cpu` runs the tiled kernel on `qt` rows of `cols`: AVX-512 with AVX512-VNNI, a
/// format with unsigned quants (not Q8_0), rows that fit the kernel's buffer.
pub fn q_tile_runs(cpu: impl Into<Cpu>, qt: QuantType, cols: usize) -> bool {
    let cpu: Cpu = cpu.into();
    cpu.isa() == Isa::Avx512 && cpu.vnni() && qt != QuantType::Q8_0 && fits(qt, cols)
}

/// f32 words one input of `cols` columns takes once prepared by [`prepare_q_tile`], for any
/// format: per 512 columns 10 vectors of 16 words (Q6_K: per 256 columns 6).
pub fn q_tile_x_len(cols: usize) -> usize {
    (cols.div_ceil(512) * 10).max(cols.div_ceil(256) * 6) * 16
}

/// Inputs prepared by [`prepare_q_tile`] for the tiled kernel on a matrix of `qt` rows of
/// `cols` columns: `n` inputs, [`q_tile_x_len`]`(cols)` words each.
#[derive(Clone, Copy, Debug)]
pub struct QTileX<'a> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    words: &'a [f32],
    n: usize,
    qt: QuantType,
    cols: usize,
}

impl QTileX<'_> {
    /// How many inputs.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// Prepares the quantized inputs `xs` for [`gemm_q_prepared`] on the matrix `w`: input `t`
/// into `out[t * q_tile_x_len(cols)..]`.
///
/// # Panics
/// Unless [`q_tile_runs`]`(cpu, w.qt(), w.cols())`, the inputs are all quantized from
/// `w.cols()` columns for a SIMD ISA, and `out` is long enough.
pub fn prepare_q_tile<'a, 'o>(
    cpu: impl Into<Cpu>,
    w: &QMatrix<'_>,
    xs: &[QuantX<'a>],
    out: &'o mut [f32],
) -> QTileX<'o> {
    let cpu: Cpu = cpu.into();
    let (qt, cols) = (w.qt(), w.cols());
    assert!(
        q_tile_runs(cpu, qt, cols),
        "prepare_q_tile: no tiled kernel for {qt} rows of {cols} on {cpu}"
    );
    let per = q_tile_x_len(cols);
    let n = xs.len();
    assert!(
        out.len() >= n * per,
        "prepare_q_tile: out holds {} words, {} needed",
        out.len(),
        n * per
    );
    for x in xs {
        assert_eq!(
            x.cols(),
            cols,
            "prepare_q_tile: an input of {} columns for a matrix of {cols}",
            x.cols()
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        let q8 = |x: &QuantX<'a>| {
            x.q8()
                .expect("prepare_q_tile: input not quantized for a SIMD ISA")
        };
        for (c, grp) in xs.chunks(64).enumerate() {
            let q: [crate::quant::Q8Row<'a>; 64] = group_of(grp.len(), |i| q8(&grp[i]));
            // SAFETY: AVX-512 (q_tile_runs); qt is not Q8_0 (q_tile_runs); every input holds
            // `cols` quantized columns (checked); out holds this chunk's words (checked).
            unsafe {
                avx512::prepare_q_tile_x(
                    qt,
                    cols,
                    &q[..grp.len()],
                    out.as_mut_ptr().add(c * 64 * per),
                )
            }
        }
    }
    QTileX {
        words: &out[..n * per],
        n,
        qt,
        cols,
    }
}

/// `y[t * rows + r] = sum_c w[r, c] * x_t[c]` for the inputs `x` prepared by
/// [`prepare_q_tile`] for the quantized matrix `w`, through the tiled kernel: each output bit
/// for bit [`matvec_q`]'s on its input alone.
///
/// # Panics
/// Unless `x` was prepared for `w`'s format and width and `y` is `x.n()` rows of `w.rows()`.
pub fn gemm_q_prepared(cpu: impl Into<Cpu>, w: &QMatrix<'_>, x: &QTileX<'_>, y: &mut [f32]) {
    w.check_outputs("gemm_q_prepared", x.n, y.len());
    // SAFETY: y (borrowed mutably here) holds n rows of `rows` floats, row t at t * rows.
    unsafe { gemm_q_raw(cpu.into(), w, x, y.as_mut_ptr(), w.rows()) }
}

/// The body of [`gemm_q_prepared`] with a row stride: `y[t * ldy + r]`.
///
/// # Safety
/// `y` must be valid for writes at `t * ldy + r` (`t < x.n()`, `r < w.rows()`), with nothing
/// else reading or writing those floats during the call.
pub(crate) unsafe fn gemm_q_raw(
    cpu: Cpu,
    w: &QMatrix<'_>,
    x: &QTileX<'_>,
    y: *mut f32,
    ldy: usize,
) {
    let (qt, rows, cols, n) = (w.qt(), w.rows(), w.cols(), x.n);
    assert!(
        q_tile_runs(cpu, qt, cols),
        "gemm_q: no tiled kernel for {qt} rows of {cols} on {cpu}"
    );
    assert!(
        (x.qt, x.cols) == (qt, cols),
        "gemm_q: inputs prepared for {} rows of {} columns, not {qt} rows of {cols}",
        x.qt,
        x.cols
    );
    assert!(n <= 1 || ldy >= rows, "gemm_q: rows overlap");
    if rows == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        check(cpu.isa());
        let (w, px) = (w.bytes(), x.words.as_ptr());
        // SAFETY: checked above: AVX-512 with VNNI, a tiled format whose rows fit, `w` holds
        // `rows` rows of `cols` (a `QMatrix`), `px` `n` inputs prepared for them; y is
        // forwarded from the contract.
        unsafe { avx512::gemm_q_tile(qt, w, rows, cols, n, px, y, ldy) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (y, ldy);
}
