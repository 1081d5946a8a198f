//! What this CPU runs, detected once: [`Cpu`], an ISA level ([`Isa`]) plus the extensions the
//! kernels use at that level. Every kernel choice comes from it; nothing below it detects
//! features or reads the environment.
//!
//! - [`Cpu::detect`]: the best ISA and every extension found.
//! - [`Cpu::from_env`]: the same, with the user's overrides applied (`QWENRT_ISA`,
//!   `QWENRT_AMX=0`): the only place the kernels read the environment.
//! - [`Cpu::for_isa`], [`Cpu::available`]: a lower level, each with the extensions this CPU has
//!   for it (tests and benches run every level).
//! - [`Cpu::without_vnni`], [`Cpu::without_amx`], [`Cpu::without_bf16`]: the same CPU with an
//!   extension left unused, so a test can run a fallback on a CPU that has the extension.
//!
//! A `Cpu` only ever claims what was detected (the constructors detect, the `without_*`
//! methods only remove), which is what the kernels' `unsafe` extension paths rely on.

use std::fmt;

use crate::isa::Isa;

/// An ISA level and the extensions the kernels use at it. Made by detection (see the module
/// docs); `Copy`, so the engine stores one and passes it down. The kernel entry points that
/// choose among extensions take `impl Into<Cpu>` (an [`Isa`] converts to [`Cpu::for_isa`] of
/// it), the others `impl Into<Isa>` (a `Cpu` converts to its level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cpu {
    isa: Isa,
    vnni: bool,
    bf16: bool,
    amx: bool,
}

impl Cpu {
    /// The best ISA this CPU runs, with every extension it has for it.
    pub fn detect() -> Cpu {
        Cpu::detected(Isa::detect())
    }

    /// `isa` with the extensions this CPU has for it; an error naming the ISA if the CPU does
    /// not run it.
    pub fn for_isa(isa: Isa) -> Result<Cpu, String> {
        if isa.is_supported() {
            Ok(Cpu::detected(isa))
        } else {
            Err(format!("this CPU does not support {isa}"))
        }
    }

    /// [`Cpu::detect`] with the user's overrides: `QWENRT_ISA=avx512|avx2|scalar` picks the
    /// level (an error if unknown or unsupported), `QWENRT_AMX=0` leaves AMX unused.
    pub fn from_env() -> Result<Cpu, String> {
        Cpu::choose(None)
    }

    /// `isa` if given (the caller's own choice, e.g. a command-line option; an error if the
    /// CPU does not run it), else as [`Cpu::from_env`]; `QWENRT_AMX=0` applies either way.
    pub fn choose(isa: Option<Isa>) -> Result<Cpu, String> {
        let cpu = match (isa, std::env::var("QWENRT_ISA")) {
            (Some(isa), _) => Cpu::for_isa(isa)?,
            (None, Ok(s)) if !s.is_empty() => {
                let isa: Isa = s.parse()?;
                Cpu::for_isa(isa).map_err(|e| format!("QWENRT_ISA={s}: {e}"))?
            }
            _ => Cpu::detect(),
        };
        if std::env::var("QWENRT_AMX").is_ok_and(|v| v == "0") {
            return Ok(cpu.without_amx());
        }
        Ok(cpu)
    }

    /// Every ISA level this CPU runs, best last, each with its extensions.
    pub fn available() -> Vec<Cpu> {
        Isa::available().into_iter().map(Cpu::detected).collect()
    }

    /// `isa` (which the CPU runs) with the extensions detected for it.
    fn detected(isa: Isa) -> Cpu {
        let (vnni, bf16, amx) = extensions_for(isa);
        Cpu {
            isa,
            vnni,
            bf16,
            amx,
        }
    }

    /// The ISA level.
    pub fn isa(self) -> Isa {
        self.isa
    }

    /// Whether the quantized dots use `vpdpbusd`: AVX512-VNNI at the AVX-512 level, AVX-VNNI
    /// at the AVX2 one.
    pub fn vnni(self) -> bool {
        self.vnni
    }

    /// Whether the bf16 kernels use AVX512-BF16 `vdpbf16ps` (AVX-512 level only): the decode
    /// matvec on a hi/lo split of its input, and `ops::matmul_bf16dot`.
    pub fn bf16(self) -> bool {
        self.bf16
    }

    /// Whether the AVX-512 quantized prefill matmul may use AMX tiles (AMX-TILE and AMX-INT8,
    /// the tile data granted by Linux; they also need VNNI). Before serving they check
    /// themselves against the AVX-512 tiles once (`ops::prefill_amx`).
    pub fn amx(self) -> bool {
        self.amx
    }

    /// Whether the Q4_0 / Q5_0 / Q8_0 decode matvec runs on the repacked layout
    /// ([`crate::quant::repack`]): at the AVX-512 level, the only one with that kernel. The
    /// model loader repacks the matrices where this holds.
    pub fn runs_repacked(self) -> bool {
        self.isa == Isa::Avx512
    }

    /// This CPU with the `vpdpbusd` dots (and AMX, whose tiles stand in for them) unused.
    pub fn without_vnni(self) -> Cpu {
        Cpu {
            vnni: false,
            amx: false,
            ..self
        }
    }

    /// This CPU with the AMX tiles unused.
    pub fn without_amx(self) -> Cpu {
        Cpu { amx: false, ..self }
    }

    /// This CPU with AVX512-BF16 unused (the bf16 kernels widen weights to f32).
    pub fn without_bf16(self) -> Cpu {
        Cpu {
            bf16: false,
            ..self
        }
    }

    /// The extensions in use, by name: `vnni`, `bf16`, `amx`.
    pub fn extensions(self) -> Vec<&'static str> {
        [("vnni", self.vnni), ("bf16", self.bf16), ("amx", self.amx)]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }

    /// `avx512+vnni+bf16` style: the ISA and its [`Cpu::extensions`].
    pub fn describe(self) -> String {
        std::iter::once(self.isa.to_string())
            .chain(self.extensions().into_iter().map(String::from))
            .collect::<Vec<_>>()
            .join("+")
    }
}

impl From<Isa> for Cpu {
    /// [`Cpu::for_isa`]; panics if the CPU does not run `isa` (an `Isa` can be built by hand,
    /// and a SIMD body on a CPU without its features would be undefined behaviour).
    fn from(isa: Isa) -> Cpu {
        Cpu::for_isa(isa).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl From<Cpu> for Isa {
    /// The ISA level, for the kernels that need only the vector width.
    fn from(cpu: Cpu) -> Isa {
        cpu.isa
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `(vnni, bf16, amx)` this CPU has at level `isa`.
#[cfg(target_arch = "x86_64")]
fn extensions_for(isa: Isa) -> (bool, bool, bool) {
    match isa {
        Isa::Avx512 => {
            let vnni = is_x86_feature_detected!("avx512vnni");
            let bf16 = is_x86_feature_detected!("avx512bf16");
            (vnni, bf16, vnni && amx::granted())
        }
        Isa::Avx2 => (is_x86_feature_detected!("avxvnni"), false, false),
        Isa::Scalar => (false, false, false),
    }
}

/// `(vnni, bf16, amx)`: none off x86 (the NEON extensions come with the NEON backend).
#[cfg(not(target_arch = "x86_64"))]
fn extensions_for(_isa: Isa) -> (bool, bool, bool) {
    (false, false, false)
}

/// AMX detection: Linux keeps AMX's 8 KiB tile data out of a thread's saved state until the
/// process asks for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); a tile
/// instruction before that raises SIGILL. [`amx::granted`] asks once.
#[cfg(target_arch = "x86_64")]
mod amx {
    use core::arch::x86_64::__cpuid_count;
    use std::sync::OnceLock;

    /// Whether the AMX tiles may run: the CPU reports AMX-TILE and AMX-INT8 (with the
    /// AVX-512 their epilogue uses), and Linux granted the tile data (asked once per
    /// process). False where the kernel refuses or the platform is not Linux.
    pub(super) fn granted() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| cpu_has_amx_int8() && request_tile_data())
    }

    /// CPUID leaf 7: EDX bit 24 (AMX-TILE) and bit 25 (AMX-INT8), with AVX-512.
    fn cpu_has_amx_int8() -> bool {
        if !crate::Isa::Avx512.is_supported() {
            return false;
        }
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is reported as zeros where absent.
        #[allow(unused_unsafe)]
        let r = unsafe { __cpuid_count(7, 0) };
        r.edx & (1 << 24) != 0 && r.edx & (1 << 25) != 0
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0`: Linux lets this process
    /// (every thread of it) use the AMX tile data. False where refused or not Linux.
    fn request_tile_data() -> bool {
        #[cfg(target_os = "linux")]
        {
            const SYS_ARCH_PRCTL: usize = 158;
            const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
            const XFEATURE_XTILEDATA: usize = 18;
            let ret: isize;
            // SAFETY: the arch_prctl system call with two integer arguments; it reads and
            // writes no memory of ours, and the kernel clobbers only rax (the result), rcx
            // and r11.
            unsafe {
                core::arch::asm!(
                    "syscall",
                    inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_only_removes() {
        for cpu in Cpu::available() {
            let plain = cpu.without_vnni().without_bf16();
            assert!(!plain.vnni() && !plain.amx() && !plain.bf16());
            assert_eq!(plain.isa(), cpu.isa());
            assert_eq!(cpu.without_amx().vnni(), cpu.vnni());
            assert!(cpu.describe().starts_with(&cpu.isa().to_string()));
            assert_eq!(Cpu::from(cpu.isa()), cpu);
        }
        assert_eq!(Cpu::available().last().copied(), Some(Cpu::detect()));
    }
}
