//! AVX2 code (256-bit, AVX2 + FMA + F16C) where the instructions are the algorithm: the
//! quantized kernels' integer layer (`vpmaddubsw`, AVX-VNNI `vpdpbusd`, the unpacking of ggml
//! blocks), the AVX2 implementation of [`crate::generic::QSimd`]. The kernels themselves are
//! written once in [`crate::generic`]. Same contracts as [`crate::scalar`]; [`crate::ops`]
//! checks buffer lengths before calling in.
//!
//! Every load is unaligned. f32 tails use `vmaskmovps` (masked-off lanes never fault); 16-bit
//! weight tails are copied into a zeroed stack buffer first, so no body touches a byte outside
//! the slices it was given. Where a fixed group of vectors runs past the end (the second half
//! of a 16-column tile, the last ones of a four-vector block), the masks of the vectors past
//! the end are all zero and their addresses are formed with `wrapping_add`: such a pointer may
//! lie beyond the allocation, where `add` would be undefined behaviour, but `vmaskmovps` with an
//! all-zero mask touches no memory through it.

pub(crate) use crate::simd::avx2::mask8;

mod quant;
