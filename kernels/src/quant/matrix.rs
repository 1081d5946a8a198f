//! A block-quantized weight matrix as one checked value ([`QMatrix`], [`RepackedMatrix`]):
//! its format, bytes and shape travel together, checked once where the value is made, so the
//! quantized entry points (`ops::matvec_q_rows`, `par::matmul_q`, ...) take one argument for
//! the matrix and check only what they are given with it.

use super::{repackable, QuantType};

/// `rows` rows of `cols` weights of a [`QuantType`] in ggml's layout: row `r` is the `cols /
/// qt.block_elems()` blocks at byte `r * row_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    qt: QuantType,
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl<'a> QMatrix<'a> {
    /// The matrix of `rows` rows of `cols` weights of `qt` at the front of `bytes`.
    ///
    /// # Panics
    /// Unless `cols` is a whole, nonzero number of `qt` blocks and `bytes` holds `rows` rows.
    pub fn new(qt: QuantType, bytes: &'a [u8], rows: usize, cols: usize) -> QMatrix<'a> {
        QMatrix::checked("QMatrix::new", qt, bytes, rows, cols)
    }

    /// [`QMatrix::new`] with `what` (the constructor) named in its panics.
    fn checked(
        what: &str,
        qt: QuantType,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> QMatrix<'a> {
        let row_bytes = qt
            .row_bytes(cols)
            .filter(|_| cols > 0)
            .unwrap_or_else(|| panic!("{what}: {cols} columns are not whole {qt} blocks"));
        let len = rows
            .checked_mul(row_bytes)
            .filter(|&len| len <= bytes.len())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: {} bytes hold fewer than {rows} rows of {cols} {qt} weights \
                     ({row_bytes} bytes each)",
                    bytes.len()
                )
            });
        QMatrix {
            qt,
            bytes: &bytes[..len],
            rows,
            cols,
            row_bytes,
        }
    }

    /// The block format.
    pub fn qt(&self) -> QuantType {
        self.qt
    }

    /// The rows' bytes, exactly `rows * row_bytes`.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Rows (outputs of a matvec).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the input width).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Rows `r0..r1` as a matrix of their own (a block of rows a thread runs).
    ///
    /// # Panics
    /// Unless `r0 <= r1 <= rows`.
    pub fn row_block(&self, r0: usize, r1: usize) -> QMatrix<'a> {
        let what = "QMatrix::row_block";
        QMatrix {
            bytes: row_range(what, self.bytes, self.row_bytes, self.rows, r0, r1),
            rows: r1 - r0,
            ..*self
        }
    }

    /// How many inputs `x_len` floats are (whole rows of `cols`).
    ///
    /// # Panics
    /// Unless `x_len` floats are whole input rows and `y_len` floats one output row
    /// (`rows` floats) per input; `what` names the caller.
    pub(crate) fn inputs(&self, what: &str, x_len: usize, y_len: usize) -> usize {
        assert!(
            x_len.is_multiple_of(self.cols),
            "{what}: x holds {x_len} floats, not whole rows of {}",
            self.cols
        );
        let n = x_len / self.cols;
        self.check_outputs(what, n, y_len);
        n
    }

    /// # Panics
    /// Unless `y_len` floats are one output row (`rows` floats) for each of `n` inputs;
    /// `what` names the caller.
    pub(crate) fn check_outputs(&self, what: &str, n: usize, y_len: usize) {
        assert!(
            n.checked_mul(self.rows) == Some(y_len),
            "{what}: y holds {y_len} floats, not {n} rows of {}",
            self.rows
        );
    }
}

/// Rows `r0..r1` of `buf`, `rows` rows of `per` items each.
///
/// # Panics
/// Unless `r0 <= r1 <= rows` (`what` names the caller) and `buf` holds the rows.
pub(crate) fn row_range<'a, T>(
    what: &str,
    buf: &'a [T],
    per: usize,
    rows: usize,
    r0: usize,
    r1: usize,
) -> &'a [T] {
    assert!(r0 <= r1 && r1 <= rows, "{what}: rows {r0}..{r1} of {rows}");
    &buf[r0 * per..r1 * per]
}

/// A [`QMatrix`] repacked by [`super::repack`] for the AVX-512 matvecs (Q4_0, Q5_0 and Q8_0):
/// the same shape and row bytes, another order within each row.
#[derive(Clone, Copy, Debug)]
pub struct RepackedMatrix<'a>(QMatrix<'a>);

impl<'a> RepackedMatrix<'a> {
    /// The repacked matrix of `rows` rows of `cols` weights of `qt` at the front of `bytes`.
    ///
    /// # Panics
    /// Unless `qt` has a repacked layout ([`repackable`]), `cols` is a whole, nonzero number
    /// of blocks and `bytes` holds `rows` rows.
    pub fn new(qt: QuantType, bytes: &'a [u8], rows: usize, cols: usize) -> RepackedMatrix<'a> {
        assert!(
            repackable(qt),
            "RepackedMatrix::new: {qt} has no repacked layout"
        );
        RepackedMatrix(QMatrix::checked(
            "RepackedMatrix::new",
            qt,
            bytes,
            rows,
            cols,
        ))
    }

    /// Its format, bytes and shape (the bytes in the repacked order).
    pub fn matrix(&self) -> &QMatrix<'a> {
        &self.0
    }

    /// Rows `r0..r1` as a matrix of their own.
    ///
    /// # Panics
    /// Unless `r0 <= r1 <= rows`.
    pub fn row_block(&self, r0: usize, r1: usize) -> RepackedMatrix<'a> {
        RepackedMatrix(self.0.row_block(r0, r1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_block_is_its_rows() {
        let bytes: Vec<u8> = (0..3 * 34).map(|i| i as u8).collect();
        let w = QMatrix::new(QuantType::Q8_0, &bytes, 3, 32);
        let b = w.row_block(1, 3);
        assert_eq!((b.rows(), b.cols(), b.row_bytes()), (2, 32, 34));
        assert_eq!(b.bytes(), &bytes[34..]);
        assert_eq!(w.inputs("t", 2 * 32, 2 * 3), 2);
    }

    #[test]
    #[should_panic(expected = "QMatrix::new: 96 columns are not whole Q4_K blocks")]
    fn refuses_partial_blocks() {
        QMatrix::new(QuantType::Q4K, &[0; 144], 1, 96);
    }

    #[test]
    #[should_panic(expected = "hold fewer than 2 rows")]
    fn refuses_short_bytes() {
        QMatrix::new(QuantType::Q8_0, &[0; 67], 2, 32);
    }

    #[test]
    #[should_panic(expected = "RepackedMatrix::new: Q6_K has no repacked layout")]
    fn refuses_unrepackable_format() {
        RepackedMatrix::new(QuantType::Q6K, &[0; 210], 1, 256);
    }

    #[test]
    #[should_panic(expected = "t: y holds 5 floats, not 2 rows of 3")]
    fn inputs_checks_outputs() {
        let w = QMatrix::new(QuantType::Q8_0, &[0; 3 * 34], 3, 32);
        w.inputs("t", 2 * 32, 5);
    }
}
