//! Safe entry points. Each checks its buffer lengths, then dispatches on the [`Isa`] to the
//! scalar reference or a SIMD body (`avx2`, `avx512`), which have the same names and contracts.
//!
//! Weights are little-endian bytes of dtype `W` (or a run-time [`Dtype`] for the small vectors:
//! norm weights and biases), never assumed aligned.

use crate::cpu::Cpu;
use crate::dtype::{Dtype, KvType, WeightType};
use crate::isa::Isa;
pub use crate::layout::AttnHead;
pub(crate) use crate::layout::{AttnTile, MatmulBlock};
use crate::scalar;

#[cfg(target_arch = "x86_64")]
use crate::avx512;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::generic::{self, MatvecRows};
#[cfg(target_arch = "x86_64")]
use crate::simd::{avx2::Avx2, avx512::Avx512};
#[cfg(target_arch = "aarch64")]
use crate::{neon, simd::neon::Neon};

/// Dispatches `$f(args)` to the scalar reference, or to the body written once over
/// [`Simd`](crate::simd::Simd) in [`crate::generic`], monomorphized for the backend of `$isa`
/// (whose token is made only where the CPU has its features). The `unsafe` bodies also rely
/// on the length checks each entry point performs before dispatching.
macro_rules! dispatch_simd {
    ($isa:expr, $f:ident $(::<$t:ty>)?, ($($arg:expr),*)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                let s = Avx512::new().unwrap_or_else(|| unsupported(Isa::Avx512));
                // SAFETY: the caller checked the buffer lengths the body's contract requires.
                unsafe { generic::$f::<_ $(, $t)?>(s, $($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                let s = Avx2::new().unwrap_or_else(|| unsupported(Isa::Avx2));
                // SAFETY: the caller checked the buffer lengths the body's contract requires.
                unsafe { generic::$f::<_ $(, $t)?>(s, $($arg),*) }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                let s = Neon::new().unwrap_or_else(|| unsupported(Isa::Neon));
                // SAFETY: the caller checked the buffer lengths the body's contract requires.
                unsafe { generic::$f::<_ $(, $t)?>(s, $($arg),*) }
            }
            _ => scalar::$f $(::<$t>)? ($($arg),*),
        }
    };
}

/// Panics for an `isa` the CPU does not run (`Isa` values can be built by hand).
#[cold]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn unsupported(isa: Isa) -> ! {
    panic!("this CPU does not support {isa}")
}

/// Panics unless the CPU runs `isa`: a SIMD body on a CPU without its features would be undefined
/// behaviour, and `Isa` values can be built by hand. The detection result is cached by std, so this
/// is a couple of loads.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn check(isa: Isa) {
    assert!(isa.is_supported(), "this CPU does not support {isa}");
}

/// Floats of scratch a matvec over `cols` input columns needs ([`MatvecX::new`]).
pub fn matvec_scratch_len(cols: usize) -> usize {
    cols.next_multiple_of(32)
}

/// A matvec's input `x`, prepared once for every row block that reads it. For bf16 weights:
/// - on AVX-512 with AVX512-BF16 ([`MatvecX::new`]), split into bf16 `hi + lo` parts, so the
///   rows stream through `vdpbf16ps` (within 2^-17 of the f32 result, ~20% faster than widening
///   each weight to f32);
/// - on AVX-512 otherwise (or for a CPU [`without_bf16`](Cpu::without_bf16)), reordered into
///   even and odd columns, so the kernel turns 32-bit lanes of weight pairs into f32 with a
///   shift and a mask instead of a widening shuffle (exact; on Zen 4 8% faster from DRAM, 27%
///   from L3, one thread). The same trick on AVX2 was no faster in decode there, so AVX2 keeps
///   the widening kernel.
///
/// Otherwise it is `x` as is.
#[derive(Clone, Copy)]
pub struct MatvecX<'a> {
    x: &'a [f32],
    prep: Prep<'a>,
}

/// How a [`MatvecX`] was prepared (the layouts are described at the kernels that read them).
#[derive(Clone, Copy)]
enum Prep<'a> {
    Plain,
    /// `avx512::pack_hilo`'s layout.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    HiLo(&'a [f32]),
    /// Even then odd columns in blocks of 32 (for AVX-512).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    EvenOdd(&'a [f32]),
}

impl<'a> MatvecX<'a> {
    /// Prepares `x` for matvecs over `W` weights on `cpu`, in `scratch`, which must hold at least
    /// [`matvec_scratch_len`]`(x.len())` floats: for the fastest kernel the CPU has. For the
    /// kernels whose result is exactly the f32 one (bf16 weights widened exactly, f32 sums: no
    /// hi/lo split), pass the CPU [`without_bf16`](Cpu::without_bf16).
    pub fn new<W: WeightType>(
        cpu: impl Into<Cpu>,
        x: &'a [f32],
        scratch: &'a mut [f32],
    ) -> MatvecX<'a> {
        let cpu: Cpu = cpu.into();
        let need = check_scratch(x, scratch);
        if W::DTYPE != Dtype::BF16 || cpu.isa() != Isa::Avx512 {
            return MatvecX::plain(x);
        }
        #[cfg(target_arch = "x86_64")]
        if cpu.bf16() {
            // SAFETY: a `Cpu` claims AVX512-BF16 (at the AVX-512 level) only where it was
            // detected; scratch length checked.
            unsafe { avx512::pack_hilo(x, scratch) };
            return MatvecX {
                x,
                prep: Prep::HiLo(&scratch[..need]),
            };
        }
        let block = 32;
        let half = block / 2;
        for (src, dst) in x.chunks(block).zip(scratch.chunks_mut(block)) {
            if src.len() == block {
                for i in 0..half {
                    dst[i] = src[2 * i];
                    dst[half + i] = src[2 * i + 1];
                }
            } else {
                for i in 0..half {
                    dst[i] = src.get(2 * i).copied().unwrap_or(0.0);
                    dst[half + i] = src.get(2 * i + 1).copied().unwrap_or(0.0);
                }
            }
        }
        MatvecX {
            x,
            prep: Prep::EvenOdd(&scratch[..need]),
        }
    }

    /// `x` unprepared: every ISA's plain kernel (widening each weight to f32) reads it.
    pub fn plain(x: &'a [f32]) -> MatvecX<'a> {
        MatvecX {
            x,
            prep: Prep::Plain,
        }
    }

    /// The input columns.
    pub fn cols(&self) -> usize {
        self.x.len()
    }
}

/// Panics unless `scratch` can hold the prepared `x`; returns the floats it needs.
fn check_scratch(x: &[f32], scratch: &[f32]) -> usize {
    let need = matvec_scratch_len(x.len());
    assert!(
        scratch.len() >= need,
        "matvec: scratch holds {} floats, {need} needed",
        scratch.len()
    );
    need
}

/// `y[r] = sum_c w[r, c] * x[c]`: `w` is row-major `[y.len(), x.len()]` of dtype `W`; `scratch`
/// holds [`matvec_scratch_len`]`(x.len())` floats for the prepared input.
pub fn matvec<W: WeightType>(
    cpu: impl Into<Cpu>,
    w: &[u8],
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    matvec_x::<W>(cpu, w, &MatvecX::new::<W>(cpu, x, scratch), y)
}

/// [`matvec`] on an input prepared by [`MatvecX::new`] (for the same `isa` and `W`) or
/// [`MatvecX::plain`].
pub fn matvec_x<W: WeightType>(isa: impl Into<Isa>, w: &[u8], x: &MatvecX<'_>, y: &mut [f32]) {
    let isa: Isa = isa.into();
    let cols = x.cols();
    assert!(
        w.len() >= y.len() * cols * W::SIZE,
        "matvec: weight buffer too short"
    );
    match x.prep {
        Prep::Plain => dispatch_simd!(isa, matvec::<W>, (w, x.x, y)),
        // The prepared inputs have only the multi-row kernels, which take one input as well.
        // SAFETY: `y` (borrowed mutably here) holds the one input's `y.len()` outputs.
        _ => unsafe { matvec_x_rows::<W>(isa, w, y.len(), &[*x], y.as_mut_ptr(), y.len()) },
    }
}

/// Many inputs against one matrix: `y[t * rows + r] = sum_c w[r, c] * xs[t][c]` with
/// `rows = y.len() / xs.len()`, through the multi-row kernels (each weight vector loaded once
/// per group of inputs). Output `t` is bit for bit [`matvec_x`]'s for `xs[t]` alone. All inputs
/// must be prepared the same way (by [`MatvecX::new`] for this `isa` and `W`, or all
/// [`MatvecX::plain`]) over the same number of columns.
pub fn matvec_rows_x<W: WeightType>(
    isa: impl Into<Isa>,
    w: &[u8],
    xs: &[MatvecX<'_>],
    y: &mut [f32],
) {
    let Some(rows) = rows_per_input("matvec_rows_x", xs.len(), y) else {
        return;
    };
    // SAFETY: y (borrowed mutably here) holds xs.len() rows of `rows` floats, row t at t * rows.
    unsafe { matvec_x_rows::<W>(isa.into(), w, rows, xs, y.as_mut_ptr(), rows) }
}

/// The outputs per input of a many-input entry point writing one row of `y` per input:
/// `y.len() / inputs`, or `None` when there are no inputs (nothing to do).
///
/// # Panics
/// If `y` is not one row per input (`what` names the caller).
pub(crate) fn rows_per_input(what: &str, inputs: usize, y: &[f32]) -> Option<usize> {
    if inputs == 0 {
        return None;
    }
    assert!(
        y.len().is_multiple_of(inputs),
        "{what}: y is not one row per input"
    );
    Some(y.len() / inputs)
}

/// The most inputs one multi-row kernel call of [`matvec_x_rows`] takes.
pub(crate) const ROWS_GROUP: usize = 4;

/// Inputs per multi-row kernel call for inputs prepared as `prep` on `isa`: as many as keep
/// every input's accumulators in registers (4 per input for the bf16 kernels, 8 for the
/// widening ones: 3 inputs in 32 zmm registers, 2 in 16 ymm ones over two passes).
fn rows_group_len(isa: Isa, prep: &Prep<'_>) -> usize {
    match (prep, isa) {
        (Prep::HiLo(_) | Prep::EvenOdd(_), _) => ROWS_GROUP,
        (Prep::Plain, Isa::Avx512) => 3,
        (Prep::Plain, Isa::Avx2) => 2,
        // 8 accumulators per input: 3 inputs in 32 NEON registers
        (Prep::Plain, Isa::Neon) => 3,
        _ => ROWS_GROUP,
    }
}

/// `y[t * ldy + r] = sum_c w[r, c] * xs[t][c]` for every input `t < xs.len()` and weight row
/// `r < rows`: the inputs go through the multi-row kernels in groups of up to [`ROWS_GROUP`]
/// (each weight vector loaded once per group), and every output equals bit for bit what
/// [`matvec_x`] computes for its input alone. All inputs must be prepared the same way (by
/// [`MatvecX::new`] for this `isa` and `W`, or all [`MatvecX::plain`]) over the same columns.
///
/// # Safety
/// `y` must be valid for writes at `t * ldy + r` (`t < xs.len()`, `r < rows`), with nothing
/// else reading or writing those floats during the call.
pub(crate) unsafe fn matvec_x_rows<W: WeightType>(
    isa: Isa,
    w: &[u8],
    rows: usize,
    xs: &[MatvecX<'_>],
    y: *mut f32,
    ldy: usize,
) {
    let Some(x0) = xs.first() else { return };
    let cols = x0.cols();
    assert!(
        w.len() >= rows * cols * W::SIZE,
        "matvec: weight buffer too short"
    );
    assert!(xs.len() == 1 || ldy >= rows, "matvec_x_rows: rows overlap");
    let per = rows_group_len(isa, &x0.prep);
    for (g, grp) in xs.chunks(per).enumerate() {
        // (this group's outputs start at row g * per of y)
        let yg = y.wrapping_add(g * per * ldy);
        // SAFETY: forwarded contract for this group's rows of y.
        unsafe { rows_group::<W>(isa, w, rows, cols, grp, yg, ldy) }
    }
}

/// One group of [`matvec_x_rows`] (`1 <= xs.len() <= ROWS_GROUP`).
///
/// # Safety
/// As [`matvec_x_rows`], with `w` holding `rows * cols` weights (checked by it).
unsafe fn rows_group<W: WeightType>(
    isa: Isa,
    w: &[u8],
    rows: usize,
    cols: usize,
    xs: &[MatvecX<'_>],
    y: *mut f32,
    ldy: usize,
) {
    // Calls `$f::<.., R>` with the group's prepared (or plain) input pointers as an array of
    // its length.
    macro_rules! by_len {
        ($f:path, $get:expr $(, $pre:expr)*) => {{
            let get = $get;
            let m = MatvecRows { w, rows, cols, y, ldy };
            match xs.len() {
                1 => $f($($pre,)* m, [get(&xs[0])]),
                2 => $f($($pre,)* m, [get(&xs[0]), get(&xs[1])]),
                3 => $f($($pre,)* m, [get(&xs[0]), get(&xs[1]), get(&xs[2])]),
                _ => $f($($pre,)* m, [get(&xs[0]), get(&xs[1]), get(&xs[2]), get(&xs[3])]),
            }
        }};
    }
    assert!(!xs.is_empty() && xs.len() <= ROWS_GROUP);
    for x in xs {
        assert_eq!(x.cols(), cols, "matvec_x_rows: inputs of different widths");
    }
    match xs[0].prep {
        #[cfg(target_arch = "x86_64")]
        Prep::HiLo(_) => {
            assert!(W::DTYPE == Dtype::BF16);
            let get = |x: &MatvecX<'_>| match x.prep {
                Prep::HiLo(xp) => xp.as_ptr(),
                _ => panic!("matvec_x_rows: inputs prepared differently"),
            };
            // SAFETY: every input is a `HiLo` packed by `MatvecX::new` from `cols` columns (its
            // slice holds them rounded up to a block) for a `Cpu` claiming AVX512-BF16, which
            // it does only where detected; `w` length checked by the caller; `y` forwarded.
            unsafe { by_len!(avx512::matvec_bf16_hilo_rows, get) }
        }
        #[cfg(target_arch = "x86_64")]
        Prep::EvenOdd(_) => {
            assert!(W::DTYPE == Dtype::BF16 && isa == Isa::Avx512);
            check(Isa::Avx512);
            let get = |x: &MatvecX<'_>| match x.prep {
                Prep::EvenOdd(xp) => xp.as_ptr(),
                _ => panic!("matvec_x_rows: inputs prepared differently"),
            };
            // SAFETY: CPU support checked; `w` length checked by the caller; every input is an
            // `EvenOdd` laid out by `MatvecX::new` from `cols` columns; `y` forwarded.
            unsafe { by_len!(avx512::matvec_bf16_evenodd_rows, get) }
        }
        _ => {
            let get = |x: &MatvecX<'_>| match x.prep {
                Prep::Plain => x.x.as_ptr(),
                _ => panic!("matvec_x_rows: inputs prepared differently"),
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => {
                    let s = Avx512::new().unwrap_or_else(|| unsupported(Isa::Avx512));
                    // SAFETY: `w` length checked by the caller; every plain input is `cols`
                    // floats; `y` forwarded.
                    unsafe { by_len!(generic::matvec_rows::<_, W, _>, get, s) }
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => {
                    let s = Avx2::new().unwrap_or_else(|| unsupported(Isa::Avx2));
                    // SAFETY: as above.
                    unsafe { by_len!(generic::matvec_rows::<_, W, _>, get, s) }
                }
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => {
                    let s = Neon::new().unwrap_or_else(|| unsupported(Isa::Neon));
                    // SAFETY: `w` length checked by the caller; every plain input is `cols`
                    // floats; `y` forwarded.
                    unsafe { by_len!(generic::matvec_rows::<_, W, _>, get, s) }
                }
                _ => {
                    for (t, x) in xs.iter().enumerate() {
                        let _ = get(x);
                        // SAFETY: row t of y has `rows` writable, unaliased floats at t * ldy
                        // (contract).
                        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * ldy), rows) };
                        scalar::matvec::<W>(w, x.x, yt);
                    }
                }
            }
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
pub fn rmsnorm(
    isa: impl Into<Isa>,
    x: &[f32],
    weight: &[u8],
    wdtype: Dtype,
    eps: f32,
    out: &mut [f32],
) {
    assert!(
        weight.len() >= x.len() * wdtype.size(),
        "rmsnorm: weight too short"
    );
    assert_eq!(x.len(), out.len(), "rmsnorm: length mismatch");
    dispatch_simd!(isa.into(), rmsnorm, (x, weight, wdtype, eps, out))
}

/// `y += b`.
pub fn add_bias(isa: impl Into<Isa>, y: &mut [f32], b: &[u8], bdtype: Dtype) {
    assert!(
        b.len() >= y.len() * bdtype.size(),
        "add_bias: bias too short"
    );
    dispatch_simd!(isa.into(), add_bias, (y, b, bdtype))
}

/// `y += x`.
pub fn add(isa: impl Into<Isa>, y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add: length mismatch");
    dispatch_simd!(isa.into(), add, (y, x))
}

/// The wrapping sum of `b` as little-endian u64 words (trailing bytes added as themselves), the
/// same on every ISA: the SIMD bodies read it as fast as they can, with the decode matvecs'
/// prefetch, so timing it measures the read bandwidth decode could reach.
pub fn stream_sum(isa: impl Into<Isa>, b: &[u8]) -> u64 {
    match isa.into() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            generic::stream_sum(Avx512::new().unwrap_or_else(|| unsupported(Isa::Avx512)), b)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => generic::stream_sum(Avx2::new().unwrap_or_else(|| unsupported(Isa::Avx2)), b),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => generic::stream_sum(Neon::new().unwrap_or_else(|| unsupported(Isa::Neon)), b),
        _ => scalar::stream_sum(b),
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(isa: impl Into<Isa>, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    dispatch_simd!(isa.into(), silu_mul, (gate, up))
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
pub fn rope(isa: impl Into<Isa>, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    assert!(head_dim > 0, "rope: head_dim is 0");
    let half = head_dim / 2;
    assert!(
        cos.len() >= half && sin.len() >= half,
        "rope: table too short"
    );
    dispatch_simd!(isa.into(), rope, (x, head_dim, cos, sin))
}

/// One query head against its cached positions ([`AttnHead`]); `scores` needs `len` floats.
pub fn attention<T: KvType>(
    isa: impl Into<Isa>,
    head: AttnHead<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    head.checked_len(scores, out);
    dispatch_simd!(isa.into(), attention::<T>, (head, scores, out))
}

/// Rows per tile of the blocked attention on `isa` with `rv` vectors of rows, or `None` where
/// the ISA has no blocked body (it then runs the per-row kernel).
pub(crate) fn attention_tile_rows(isa: Isa, rv: usize) -> Option<usize> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(16 * rv),
        _ => {
            let _ = rv;
            None
        }
    }
}

/// Floats of tile scratch [`attention_tile`] needs for `rv` row vectors at head dim `hd`.
pub(crate) fn attention_tile_scratch(hd: usize, rv: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        (2 * hd + avx512::ATT_KB) * 16 * rv
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (hd, rv);
        0
    }
}

/// Runs one tile of the blocked attention with `rv` (1 or 2) vectors of rows.
///
/// # Safety
/// `isa` must have a blocked body ([`attention_tile_rows`] is `Some`), `tile` must satisfy
/// [`AttnTile`]'s contract with `1 <= tile.rows <= attention_tile_rows(isa, rv)`, and `scratch`
/// must be valid for writing [`attention_tile_scratch`]`(tile.hd, rv)` floats, used by no one
/// else during the call.
pub(crate) unsafe fn attention_tile<T: KvType>(
    isa: Isa,
    rv: usize,
    tile: &AttnTile<T>,
    scratch: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            check(Isa::Avx512);
            assert!(tile.rows >= 1 && tile.rows <= 16 * rv && (rv == 1 || rv == 2));
            // SAFETY: CPU support checked; tile and scratch contracts forwarded from the caller.
            unsafe {
                if rv == 1 {
                    avx512::attention_tile::<T, 1, 16, 16>(tile, scratch)
                } else {
                    avx512::attention_tile::<T, 2, 8, 8>(tile, scratch)
                }
            }
        }
        _ => {
            let _ = (rv, tile, scratch);
            unreachable!("attention_tile: no blocked body for {isa}")
        }
    }
}

// after `dispatch_simd!` and `unsupported`, which the matmuls use
mod matmul;
pub use matmul::*;
mod quant;
pub use quant::*;
mod quant_gemm;
pub use quant_gemm::*;
mod quant_repack;
mod quant_tile;
pub use quant_repack::*;
pub use quant_tile::*;
