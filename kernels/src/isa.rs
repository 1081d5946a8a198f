//! The instruction-set levels the kernels are written for. Which one runs, with which
//! extensions, is a [`crate::Cpu`], detected once (or forced by `QWENRT_ISA`).

use std::fmt;

/// The instruction set a kernel body is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every other body is tested against.
    Scalar,
    /// AVX2 with FMA and F16C (256-bit). Where the CPU also has AVX-VNNI ([`crate::Cpu::vnni`]),
    /// the quantized kernels take their integer dots with the 256-bit `vpdpbusd`.
    Avx2,
    /// AVX-512F/BW/VL (512-bit; BW/VL for masked 16-bit tail loads). Where the CPU also has
    /// AVX512-BF16 ([`crate::Cpu::bf16`]), the bf16 matvec runs `vdpbf16ps` against a hi/lo bf16 split of its input
    /// (f32-level accuracy) and `ops::matmul_bf16dot` rounds activations to bf16; otherwise the
    /// bf16 kernels widen weights to f32.
    Avx512,
    /// aarch64's Advanced SIMD (128-bit; every aarch64 CPU has it). The float kernels are the
    /// bodies written once over the SIMD layer; the quantized dots take `sdot` where the CPU has
    /// dotprod ([`crate::Cpu::dotprod`]), `smmla` where it has i8mm ([`crate::Cpu::i8mm`]),
    /// else widening multiplies (`smull` + `sadalp`), all giving the same bits.
    Neon,
}

impl Isa {
    /// Every ISA this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::Avx2.is_supported() {
            v.push(Isa::Avx2);
        }
        if Isa::Avx512.is_supported() {
            v.push(Isa::Avx512);
        }
        if Isa::Neon.is_supported() {
            v.push(Isa::Neon);
        }
        v
    }

    /// Whether this CPU can run the given ISA's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The best ISA this CPU supports.
    pub fn detect() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::Scalar)
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            other => Err(format!(
                "unknown ISA {other:?}: expected one of avx512, avx2, neon, scalar"
            )),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        })
    }
}
