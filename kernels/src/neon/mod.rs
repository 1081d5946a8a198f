//! NEON bodies (aarch64) where the instructions are the algorithm: the quantized dots, with
//! `sdot` (dotprod), `smmla` (i8mm) or widening multiplies (`smull` + `sadalp`). The float
//! kernels are the bodies written once over [`crate::simd::Simd`] in [`crate::generic`], on
//! the `Neon` backend. Same contracts as [`crate::scalar`]; [`crate::ops`] checks buffer lengths
//! before calling in here.
//!
//! NEON has no masked loads: every body reads only the blocks of a row and the input units it
//! was given, and builds partial vectors in registers or zeroed stack buffers, so no address
//! past an allocation is formed.

mod quant;

pub(crate) use quant::*;
