//! Software prefetch of weight streams, shared by the AVX2 and AVX-512 bodies (`prefetcht0` is
//! baseline x86_64).

use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};

/// How far ahead of its loads a decode matvec prefetches the weight stream, in bytes. Decode
/// reads every matrix once per token from DRAM, and the hardware prefetcher alone left each
/// core's stream waiting on misses; 8 KiB was the best distance measured (2 to 16 KiB tried;
/// the sittings are in docs/performance.md, "Decode prefetch").
pub(crate) const PREFETCH_BYTES: usize = 8192;

/// Prefetches the line of `p` into L1 (a hint: `p` may lie past the data, where it does
/// nothing).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    // SAFETY: a prefetch never faults nor reads memory in the language's sense, whatever `p`.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Prefetches every line of the `len` bytes that start [`PREFETCH_BYTES`] after `p`: a kernel
/// about to read `p..p + len` of a row-major stream asks for the bytes it will read that far
/// on (rows are contiguous; past the matrix the hints do nothing).
#[inline(always)]
pub(crate) fn prefetch_ahead(p: *const u8, len: usize) {
    for o in (0..len).step_by(64) {
        prefetch(p.wrapping_add(PREFETCH_BYTES + o));
    }
}

/// A byte range prefetched into L2 a few lines at a time: a kernel that computes on a tile in
/// cache while the next tile's weights are still in memory spreads the next tile's lines over
/// its compute steps ([`Ahead::step`]), so the stream overlaps the compute rather than
/// following it.
pub(crate) struct Ahead {
    p: *const u8,
    end: *const u8,
    per_step: usize,
}

impl Ahead {
    /// The `len` bytes at `p`, over `steps` calls of [`Ahead::step`].
    #[inline(always)]
    pub(crate) fn new(p: *const u8, len: usize, steps: usize) -> Ahead {
        Ahead {
            p,
            end: p.wrapping_add(len),
            per_step: len.div_ceil(64).div_ceil(steps.max(1)),
        }
    }

    /// Prefetches the next few lines of the range.
    #[inline(always)]
    pub(crate) fn step(&mut self) {
        for _ in 0..self.per_step {
            if self.p >= self.end {
                return;
            }
            // SAFETY: a prefetch never faults nor reads memory in the language's sense.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.p.cast()) };
            self.p = self.p.wrapping_add(64);
        }
    }
}
