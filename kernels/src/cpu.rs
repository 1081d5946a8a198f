//! What this CPU runs, detected once: [`Cpu`], an ISA level ([`Isa`]) plus the extensions the
//! kernels use at that level. Every kernel choice comes from it; nothing below it detects
//! features or reads the environment.
//!
//! - [`Cpu::detect`]: the best ISA and every extension found.
//! - [`Cpu::from_env`]: the same, with the user's overrides applied (`QWENRT_ISA`,
//!   `QWENRT_AMX=0`): the only place the kernels read the environment.
//! - [`Cpu::for_isa`], [`Cpu::available`]: a lower level, each with the extensions this CPU has
//!   for it (tests and benches run every level; on aarch64 `available` also lists each NEON
//!   feature level: plain, dotprod, i8mm).
//! - [`Cpu::without_vnni`], [`Cpu::without_amx`], [`Cpu::without_bf16`],
//!   [`Cpu::without_dotprod`], [`Cpu::without_i8mm`]: the same CPU with an extension left
//!   unused, so a test can run a fallback on a CPU that has the extension.
//!
//! `QWENRT_ISA` takes `avx512`, `avx2`, `scalar` on x86-64 and `neon` (no extensions),
//! `neon-dotprod` (`sdot`), `neon-i8mm` (`sdot` and `smmla`) or `scalar` on aarch64; a value
//! the CPU does not run is an error naming it.
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
    dotprod: bool,
    i8mm: bool,
    /// aarch64 FEAT_BF16, detected; not an extension in use (no kernel takes `bfdot` yet).
    neon_bf16: bool,
}

/// The NEON feature levels `QWENRT_ISA` names, lowest first: each caps the extensions of a
/// [`Isa::Neon`] `Cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NeonLevel {
    /// `neon`: widening multiplies only.
    Plain,
    /// `neon-dotprod`: `sdot`.
    Dotprod,
    /// `neon-i8mm`: `sdot`, `smmla`.
    I8mm,
}

/// A parsed `QWENRT_ISA`: the level, and for a NEON one its feature level.
fn parse_forced(s: &str) -> Result<(Isa, Option<NeonLevel>), String> {
    let level = match s.to_ascii_lowercase().as_str() {
        "neon" => Some(NeonLevel::Plain),
        "neon-dotprod" => Some(NeonLevel::Dotprod),
        "neon-i8mm" => Some(NeonLevel::I8mm),
        _ => None,
    };
    match level {
        Some(l) => Ok((Isa::Neon, Some(l))),
        None => s.parse::<Isa>().map(|isa| (isa, None)).map_err(|_| {
            format!(
                "unknown ISA {s:?}: expected one of avx512, avx2, neon, neon-dotprod, \
                 neon-i8mm, scalar"
            )
        }),
    }
}

impl Cpu {
    /// The best ISA this CPU runs, with every extension it has for it.
    pub fn detect() -> Cpu {
        detected(Isa::detect())
    }

    /// `isa` with the extensions this CPU has for it; an error naming the ISA if the CPU does
    /// not run it.
    pub fn for_isa(isa: Isa) -> Result<Cpu, String> {
        if isa.is_supported() {
            Ok(detected(isa))
        } else {
            Err(format!("this CPU does not support {isa}"))
        }
    }

    /// [`Cpu::detect`] with the user's overrides: `QWENRT_ISA` picks the level (see the
    /// module docs; an error if unknown or unsupported), `QWENRT_AMX=0` leaves AMX unused.
    pub fn from_env() -> Result<Cpu, String> {
        Cpu::choose(None)
    }

    /// `isa` if given (the caller's own choice, e.g. a command-line option; an error if the
    /// CPU does not run it), else as [`Cpu::from_env`]. `QWENRT_AMX=0` applies either way, and
    /// so does a NEON feature level in `QWENRT_ISA` (`neon`, `neon-dotprod`, `neon-i8mm`) where
    /// the level chosen is [`Isa::Neon`]: that is how CI runs the tests that go through every
    /// ISA at each NEON level.
    pub fn choose(isa: Option<Isa>) -> Result<Cpu, String> {
        let env = std::env::var("QWENRT_ISA").ok().filter(|s| !s.is_empty());
        let forced = |s: &str| parse_forced(s).map_err(|e| format!("QWENRT_ISA={s}: {e}"));
        let cpu = match (isa, env) {
            (Some(Isa::Neon), Some(s)) => match forced(&s)? {
                (Isa::Neon, Some(level)) => Cpu::for_isa(Isa::Neon)?
                    .capped(level)
                    .map_err(|e| format!("QWENRT_ISA={s}: {e}"))?,
                _ => Cpu::for_isa(Isa::Neon)?,
            },
            (Some(isa), _) => Cpu::for_isa(isa)?,
            (None, Some(s)) => {
                let (isa, level) = forced(&s)?;
                let cpu = Cpu::for_isa(isa).map_err(|e| format!("QWENRT_ISA={s}: {e}"))?;
                match level {
                    Some(level) => cpu
                        .capped(level)
                        .map_err(|e| format!("QWENRT_ISA={s}: {e}"))?,
                    None => cpu,
                }
            }
            (None, None) => Cpu::detect(),
        };
        if std::env::var("QWENRT_AMX").is_ok_and(|v| v == "0") {
            return Ok(cpu.without_amx());
        }
        Ok(cpu)
    }

    /// Every ISA level this CPU runs, best last, each with its extensions; on aarch64 each
    /// NEON feature level the CPU runs is listed (plain, then dotprod, then everything
    /// detected), so a test over `available()` covers every kernel path.
    pub fn available() -> Vec<Cpu> {
        let mut v: Vec<Cpu> = Vec::new();
        for isa in Isa::available() {
            let full = detected(isa);
            if isa == Isa::Neon {
                for level in [NeonLevel::Plain, NeonLevel::Dotprod] {
                    let c = full.capped_to(level);
                    if !v.contains(&c) && c != full {
                        v.push(c);
                    }
                }
            }
            v.push(full);
        }
        v
    }

    /// `isa` with no extensions.
    fn plain(isa: Isa) -> Cpu {
        Cpu {
            isa,
            vnni: false,
            bf16: false,
            amx: false,
            dotprod: false,
            i8mm: false,
            neon_bf16: false,
        }
    }

    /// This NEON `Cpu` at most at `level` (extensions above it removed).
    fn capped_to(self, level: NeonLevel) -> Cpu {
        match level {
            NeonLevel::Plain => self.without_dotprod(),
            NeonLevel::Dotprod => self.without_i8mm(),
            NeonLevel::I8mm => self,
        }
    }

    /// [`Cpu::capped_to`], an error naming the extension the CPU lacks for `level`.
    fn capped(self, level: NeonLevel) -> Result<Cpu, String> {
        if level >= NeonLevel::Dotprod && !self.dotprod {
            return Err("this CPU lacks dotprod (sdot)".into());
        }
        if level >= NeonLevel::I8mm && !self.i8mm {
            return Err("this CPU lacks i8mm (smmla)".into());
        }
        Ok(self.capped_to(level))
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
    /// matvec on a hi/lo split of its input, and `ops::matmul_bf16dot`. False on aarch64, where
    /// no kernel takes bf16 dots yet (see [`Cpu::neon_bf16`]).
    pub fn bf16(self) -> bool {
        self.bf16
    }

    /// Whether this aarch64 CPU has FEAT_BF16 (`bfdot`, `bfmmla`): detected and reported (by
    /// `qwenrt info`, say), but no kernel uses it yet, so the bf16 kernels widen weights to f32
    /// exactly and [`Cpu::bf16`] stays false.
    pub fn neon_bf16(self) -> bool {
        self.neon_bf16
    }

    /// Whether the AVX-512 quantized prefill matmul may use AMX tiles (AMX-TILE and AMX-INT8,
    /// the tile data granted by Linux; they also need VNNI). Before serving they check
    /// themselves against the AVX-512 tiles once (`ops::prefill_amx`).
    pub fn amx(self) -> bool {
        self.amx
    }

    /// Whether the NEON quantized dots use `sdot` (aarch64 dotprod); else widening multiplies.
    pub fn dotprod(self) -> bool {
        self.dotprod
    }

    /// Whether the NEON quantized kernels take pairs of weight rows against pairs of inputs
    /// with `smmla` (aarch64 i8mm; claimed only with dotprod, which the odd row or input
    /// left over uses).
    pub fn i8mm(self) -> bool {
        self.i8mm
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

    /// This CPU with `sdot` unused (and `smmla`, which is claimed only beside it): the NEON
    /// quantized dots take widening multiplies.
    pub fn without_dotprod(self) -> Cpu {
        Cpu {
            dotprod: false,
            i8mm: false,
            ..self
        }
    }

    /// This CPU with `smmla` unused.
    pub fn without_i8mm(self) -> Cpu {
        Cpu {
            i8mm: false,
            ..self
        }
    }

    /// The extensions in use, by name: `vnni`, `bf16`, `amx`, `dotprod`, `i8mm`.
    pub fn extensions(self) -> Vec<&'static str> {
        [
            ("vnni", self.vnni),
            ("dotprod", self.dotprod),
            ("i8mm", self.i8mm),
            ("bf16", self.bf16),
            ("amx", self.amx),
        ]
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

/// `isa` (which the CPU runs) with the extensions this CPU has at that level.
#[cfg(target_arch = "x86_64")]
fn detected(isa: Isa) -> Cpu {
    match isa {
        Isa::Avx512 => {
            let vnni = is_x86_feature_detected!("avx512vnni");
            let bf16 = is_x86_feature_detected!("avx512bf16");
            Cpu {
                vnni,
                bf16,
                amx: vnni && amx::granted(),
                ..Cpu::plain(isa)
            }
        }
        Isa::Avx2 => Cpu {
            vnni: is_x86_feature_detected!("avxvnni"),
            ..Cpu::plain(isa)
        },
        _ => Cpu::plain(isa),
    }
}

/// `isa` (which the CPU runs) with the extensions this CPU has at that level: dotprod, i8mm
/// (claimed only with dotprod, which the kernels' leftover rows use) and FEAT_BF16 (reported
/// only) at the NEON level.
#[cfg(target_arch = "aarch64")]
fn detected(isa: Isa) -> Cpu {
    use std::arch::is_aarch64_feature_detected as has;
    match isa {
        Isa::Neon => {
            let dotprod = has!("dotprod");
            Cpu {
                dotprod,
                i8mm: dotprod && has!("i8mm"),
                neon_bf16: has!("bf16"),
                ..Cpu::plain(isa)
            }
        }
        _ => Cpu::plain(isa),
    }
}

/// `isa` without extensions elsewhere: only the scalar kernels run.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detected(isa: Isa) -> Cpu {
    Cpu::plain(isa)
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
            let plain = cpu
                .without_vnni()
                .without_bf16()
                .without_dotprod()
                .without_i8mm();
            assert!(!plain.vnni() && !plain.amx() && !plain.bf16());
            assert!(!plain.dotprod() && !plain.i8mm());
            assert!(
                !cpu.without_dotprod().i8mm(),
                "i8mm is claimed only with dotprod"
            );
            assert_eq!(plain.isa(), cpu.isa());
            assert_eq!(cpu.without_amx().vnni(), cpu.vnni());
            assert!(cpu.describe().starts_with(&cpu.isa().to_string()));
            // every listed level claims at most what detection found for its ISA
            let full = Cpu::from(cpu.isa());
            assert_eq!(
                Cpu {
                    vnni: cpu.vnni || full.vnni,
                    bf16: cpu.bf16 || full.bf16,
                    amx: cpu.amx || full.amx,
                    dotprod: cpu.dotprod || full.dotprod,
                    i8mm: cpu.i8mm || full.i8mm,
                    neon_bf16: cpu.neon_bf16 || full.neon_bf16,
                    ..cpu
                },
                full,
                "{cpu} claims more than detected"
            );
        }
        assert_eq!(Cpu::available().last().copied(), Some(Cpu::detect()));
    }

    #[test]
    fn forced_values_parse() {
        assert_eq!(
            parse_forced("neon"),
            Ok((Isa::Neon, Some(NeonLevel::Plain)))
        );
        assert_eq!(
            parse_forced("NEON-dotprod"),
            Ok((Isa::Neon, Some(NeonLevel::Dotprod)))
        );
        assert_eq!(
            parse_forced("neon-i8mm"),
            Ok((Isa::Neon, Some(NeonLevel::I8mm)))
        );
        assert_eq!(parse_forced("avx2"), Ok((Isa::Avx2, None)));
        assert_eq!(parse_forced("scalar"), Ok((Isa::Scalar, None)));
        let e = parse_forced("neon-sve").unwrap_err();
        assert!(e.contains("neon-sve") && e.contains("neon-i8mm"), "{e}");
    }

    /// Each NEON level keeps only its extensions, and a level the CPU lacks is an error
    /// naming the missing one.
    #[test]
    fn neon_levels_cap() {
        let neon = Cpu {
            dotprod: true,
            i8mm: true,
            neon_bf16: true,
            ..Cpu::plain(Isa::Neon)
        };
        let plain = neon.capped(NeonLevel::Plain).unwrap();
        assert_eq!(plain.describe(), "neon");
        let dot = neon.capped(NeonLevel::Dotprod).unwrap();
        assert_eq!(dot.describe(), "neon+dotprod");
        assert_eq!(neon.capped(NeonLevel::I8mm), Ok(neon));
        assert_eq!(neon.describe(), "neon+dotprod+i8mm");
        assert!(plain.neon_bf16(), "FEAT_BF16 is reported at every level");
        let e = plain.capped(NeonLevel::Dotprod).unwrap_err();
        assert!(e.contains("dotprod"), "{e}");
        let e = dot.capped(NeonLevel::I8mm).unwrap_err();
        assert!(e.contains("i8mm"), "{e}");
    }
}
