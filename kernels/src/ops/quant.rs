//! Matvecs and matmuls on block-quantized weights ([`QuantType`]). The scalar path is the
//! reference ([`quant::matvec_ref`]: ggml's dequantization, an f32 dot with the unquantized
//! input); the SIMD paths take integer dot products of the weights' quants against the input
//! quantized to 8-bit blocks ([`quant::quantize_row_q8`]), scaled per block.

use super::*;
use crate::quant::{self, q8_len, QuantType, Q8Row};

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
    pub fn new(isa: Isa, x: &'a [f32], scratch: &'a mut [f32]) -> QuantX<'a> {
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

/// Panics unless `w` holds `rows` rows of `cols` weights of `qt`; returns the bytes per row.
pub(crate) fn check_q(qt: QuantType, w: &[u8], rows: usize, cols: usize) -> usize {
    let rb = qt
        .row_bytes(cols)
        .unwrap_or_else(|| panic!("{qt} matvec: {cols} columns are not whole blocks"));
    assert!(
        rows.checked_mul(rb).is_some_and(|n| w.len() >= n),
        "{qt} matvec: weight buffer too short"
    );
    rb
}

/// `y[r] = sum_c w[r, c] * x[c]` on `qt` weights (row-major, `y.len()` rows).
pub fn matvec_q(isa: Isa, qt: QuantType, w: &[u8], x: &QuantX<'_>, y: &mut [f32]) {
    matvec_q_rows(isa, qt, w, std::slice::from_ref(x), y)
}

/// Many inputs against one `qt` matrix: `y[t * rows + r] = sum_c w[r, c] * xs[t][c]` with
/// `rows = y.len() / xs.len()`. Output `t` is bit for bit [`matvec_q`]'s for `xs[t]` alone.
pub fn matvec_q_rows(isa: Isa, qt: QuantType, w: &[u8], xs: &[QuantX<'_>], y: &mut [f32]) {
    let Some(x0) = xs.first() else { return };
    assert!(
        y.len().is_multiple_of(xs.len()),
        "matvec_q_rows: y is not one row per input"
    );
    let rows = y.len() / xs.len();
    let cols = x0.cols();
    check_q(qt, w, rows, cols);
    // every ISA runs the reference until its SIMD bodies land
    let _ = isa;
    for (x, yt) in xs.iter().zip(y.chunks_exact_mut(rows.max(1))) {
        assert_eq!(x.cols(), cols, "matvec_q_rows: inputs of different widths");
        quant::matvec_ref(qt, w, x.x, yt);
    }
}
