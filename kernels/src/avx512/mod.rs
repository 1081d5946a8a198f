//! AVX-512 bodies (512-bit, AVX-512F/BW/VL plus FMA and F16C) where the instructions are the
//! algorithm: the quantized kernels' integer layer ([`crate::generic::QSimd`]: `vpdpbusd` /
//! `vpmaddubsw`, the unpacking of ggml blocks, the fast panel packer, the AMX tiles) and the
//! repacked-layout matvec, `vdpbf16ps`, the blocked prefill attention. The kernels written
//! once over [`crate::simd::Simd`] and [`crate::generic::QSimd`] are in [`crate::generic`]. Same contracts as [`crate::scalar`]; [`crate::ops`] checks buffer
//! lengths before calling in here.
//!
//! Every load is unaligned; tails use masked loads/stores (masked-off lanes never fault), so no
//! body reads or writes a byte outside the slices it was given. Where a fixed group of vectors
//! runs past the end (the second vector of a pair, the last ones of a four-vector block), the
//! masks of the vectors past the end are all zero and their addresses are formed with
//! `wrapping_add`: such a pointer may lie beyond the allocation, where `add` would be undefined
//! behaviour, but an all-zero mask makes the intrinsic touch no memory through it.

pub(crate) use crate::simd::avx512::{exp_ps, lanes, transpose16};
use crate::stream::{prefetch, prefetch_ahead, PREFETCH_BYTES};

mod amx;
mod attention;
mod matmul;
mod matvec;
mod quant;
mod quant_gemm;
mod quant_repack;
mod quant_repack_tile;
mod tile;

pub(crate) use attention::*;
pub use matmul::*;
pub use matvec::*;
pub use quant::{gemm_q_tile, prepare_q_tile_x};
pub use quant_gemm::quantize_rows_q8;
pub use quant_repack::*;
pub use quant_repack_tile::*;
