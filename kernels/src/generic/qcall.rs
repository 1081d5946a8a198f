//! What every backend's quantized matvec takes and how it turns its run-time choices into types
//! and consts: the operands of one call ([`Matvec`]), the weight format as its marker type
//! ([`by_format!`]) and the number of inputs as a const ([`by_inputs!`]). Shared by the matvec
//! written once over `QSimd` (`super::quant`, x86-64) and NEON's own (`crate::neon`), whose
//! dispatch is the same.

use crate::quant::Q8Row;

/// Inputs one quantized matvec call takes at most.
pub(crate) const Q_GROUP: usize = 4;

/// The operands of one quantized matvec: `y[t * ldy + r] = sum_c w[r, c] * x_t[c]` for `rows`
/// rows of `cols` columns of ggml weights and the inputs `xs` (8-bit blocks of `cols` columns).
///
/// A kernel taking one relies on: `w` holds at least `rows` rows of `cols` (a whole number of
/// the format's blocks) weights; every input was quantized from `cols` columns;
/// `1 <= xs.len() <=` [`Q_GROUP`]; `y` is valid for writes at `t * ldy + r` (`t < xs.len()`,
/// `r < rows`) with nothing else accessing them during the call.
#[derive(Clone, Copy)]
pub(crate) struct Matvec<'a> {
    pub(crate) w: &'a [u8],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) xs: &'a [Q8Row<'a>],
    pub(crate) y: *mut f32,
    pub(crate) ldy: usize,
}

impl<'a> Matvec<'a> {
    /// The operands, in the order of the formula above.
    #[inline(always)]
    pub(crate) fn new(
        w: &'a [u8],
        rows: usize,
        cols: usize,
        xs: &'a [Q8Row<'a>],
        y: *mut f32,
        ldy: usize,
    ) -> Matvec<'a> {
        debug_assert!((1..=Q_GROUP).contains(&xs.len()));
        Matvec {
            w,
            rows,
            cols,
            xs,
            y,
            ldy,
        }
    }

    /// The inputs as an array of `R` (`R == xs.len()`).
    #[inline(always)]
    pub(crate) fn inputs<const R: usize>(&self) -> [Q8Row<'a>; R] {
        std::array::from_fn(|t| self.xs[t])
    }
}

/// `$m!($args.. T)` for the number of inputs `$n` as a const `T` (1 to 4; more is 4).
macro_rules! by_inputs {
    ($n:expr, $m:ident!($($args:tt)*)) => {
        match $n {
            1 => $m!($($args)* 1),
            2 => $m!($($args)* 2),
            3 => $m!($($args)* 3),
            _ => $m!($($args)* 4),
        }
    };
}
pub(crate) use by_inputs;

/// `$m!($args.. F)` for the weight format `$qt` as its marker type `F`: `Q40`, `Q50`, `Q80`,
/// `Q4K`, `Q5K` or `Q6K`, named where the macro is used (each backend has its own markers).
macro_rules! by_format {
    ($qt:expr, $m:ident!($($args:tt)*)) => {
        match $qt {
            $crate::quant::QuantType::Q4_0 => $m!($($args)* Q40),
            $crate::quant::QuantType::Q5_0 => $m!($($args)* Q50),
            $crate::quant::QuantType::Q8_0 => $m!($($args)* Q80),
            $crate::quant::QuantType::Q4K => $m!($($args)* Q4K),
            $crate::quant::QuantType::Q5K => $m!($($args)* Q5K),
            $crate::quant::QuantType::Q6K => $m!($($args)* Q6K),
        }
    };
}
pub(crate) use by_format;
