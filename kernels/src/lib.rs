//! SIMD kernels for qwenrt.
//!
//! Overview:
//! - [`Cpu`]: what this CPU runs, detected once: an [`Isa`] level (the vector width the kernels
//!   are compiled for) plus the extensions in use (VNNI, AVX512-BF16, AMX on x86-64; dotprod,
//!   i8mm, bf16 on aarch64); `QWENRT_ISA=avx512|avx2|scalar` (x86-64) or
//!   `neon|neon-dotprod|neon-i8mm|scalar` (aarch64) forces the level ([`Cpu::from_env`]).
//!   Module order, without circles: data layouts ([`dtype`], [`quant`], the private `layout`)
//!   -> [`cpu`] -> backends (`simd`, `avx2`, `avx512`, `neon`; the bodies in `generic`) ->
//!   [`ops`] -> [`par`]. Kernels that choose among
//!   extensions take `impl Into<Cpu>`, the others `impl Into<Isa>`: both accept either.
//! - [`WeightType`] with the markers [`F32`], [`F16`], [`Bf16`]: the weight dtypes. Weights are
//!   passed as raw little-endian bytes (`&[u8]`), so a tensor that is not aligned for its dtype
//!   still works: every load is unaligned.
//! - [`KvType`] (on the same markers): the KV cache's element types. Attention reads the cache
//!   in its own type (f32, or bf16 / f16 widened in registers) through the same entry points.
//! - [`ops`]: the safe entry points, one per kernel, each dispatching on an [`Isa`] to the
//!   scalar reference, the bodies written once over a SIMD trait (private modules `simd`, the
//!   trait and its AVX2 / AVX-512 backends, and `generic`, the bodies), or the ISA-specific
//!   ones where the instruction is the algorithm (private modules `avx2`, `avx512`). Besides
//!   the kernels: [`ops::matmul_bf16dot`] (opt-in AVX512-BF16 matmul that rounds activations
//!   to bf16). A matvec prepares its input once ([`ops::MatvecX`]): on
//!   AVX512-BF16 with bf16 weights, a hi/lo bf16 split that `vdpbf16ps` streams against the
//!   weights as accurately as the f32 kernel; [`ops::matvec_rows_x`] runs several prepared
//!   inputs through multi-row kernels that load each weight vector once for all of them. All
//!   take caller scratch, so nothing allocates.
//! - [`scalar`]: the reference implementations every SIMD body is tested against.
//! - [`pool::ThreadPool`]: persistent workers meeting at a spin barrier; dispatch allocates nothing.
//! - [`par`]: the kernels split across a pool (matvec by rows, matmul by output columns,
//!   attention by tiles of (kv head, query rows) with an online softmax on AVX-512, else by
//!   (token, head) pairs), plus the fused [`par::matvec_n`] (several matrices sharing one
//!   input in a single dispatch) and [`par::matmul_bf16dot`].

#![deny(missing_docs)]

pub mod cpu;
pub mod dtype;
pub mod isa;
mod layout;
pub mod ops;
pub mod par;
pub mod pool;
pub mod quant;
pub mod scalar;

mod simd;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod generic;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod stream;

#[cfg(target_arch = "aarch64")]
mod neon;

pub use cpu::Cpu;
pub use dtype::{Bf16, Dtype, KvType, WeightType, F16, F32};
pub use isa::Isa;
pub use pool::ThreadPool;
pub use quant::{Format, QuantType};
