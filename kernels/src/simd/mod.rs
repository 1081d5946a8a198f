//! The SIMD layer: one trait, [`Simd`], over a vector of f32 lanes, implemented once per
//! backend (`avx2::Avx2`, `avx512::Avx512` on x86-64, `neon::Neon` on aarch64), so that a
//! kernel whose algorithm is the same on every ISA (the elementwise ops, the widening matvecs,
//! the per-row attention) is written once in [`crate::generic`] and monomorphized per backend.
//!
//! A backend value is a token: it exists only where the CPU runs the backend's instructions
//! (its constructor detects them), which is what makes the intrinsics inside its methods sound.
//! [`Simd::vectorize`] runs a closure inside a function compiled for the backend's features, and
//! the bodies and the trait methods are `#[inline(always)]`, so the whole kernel is compiled
//! with them and every method becomes the instruction it wraps.
//!
//! Nothing in the trait assumes x86: lane counts are associated constants, tails are counts of
//! lanes (a backend without masked loads copies them), and each backend keeps its own
//! reductions and `exp`, whose rounding the bit-exactness tests pin per backend.
//!
//! Loads and stores take raw pointers (the kernels walk rows of weights that the entry points
//! in [`crate::ops`] have length-checked): a full access needs [`Simd::LANES`] readable
//! (writable) elements at the pointer; a tail access of `n` lanes needs `min(n, LANES)` of them
//! and a pointer to an element inside the allocation (or one past its end), so no kernel forms
//! an address past an allocation.

use crate::dtype::{Dtype, WeightType};

/// Defines backend methods that are an intrinsic or a short expression of their arguments:
/// rows `fn name(arg: type, ...) -> type = expression;` (a name may take one type parameter,
/// `name<W: Bound>`), or `unsafe fn ...` for those with a contract of their own (pointers, an
/// extension). Sound because the backend's token, which every method takes, exists only where
/// the CPU has the backend's features.
macro_rules! intrinsics {
    () => {};
    (
        $($head:ident)+ $(<$g:ident: $bound:path>)? ($($a:ident: $t:ty),*) $(-> $r:ty)? = $e:expr;
        $($rest:tt)*
    ) => {
        #[inline(always)]
        $($head)+ $(<$g: $bound>)? (self, $($a: $t),*) $(-> $r)? {
            // SAFETY: the token proves the CPU has the backend's features; the rest of an
            // `unsafe` method's contract (pointers, an extension) is its caller's.
            unsafe { $e }
        }
        $crate::simd::intrinsics!($($rest)*);
    };
}
pub(crate) use intrinsics;

/// One backend's column of a table: rows `const NAME: type = avx2, avx512[, neon];`,
/// `type Name = ...;` and methods as [`intrinsics!`]'s but with a body per backend, of which
/// `$isa` (`avx2`, `avx512` or `neon`) picks its own. The tables ([`simd_methods!`],
/// `crate::generic::qsimd_methods!`) define a backend once for all and show the backends'
/// parameters and instructions side by side; the names in a body resolve where the backend's
/// impl invokes its column.
macro_rules! column {
    ($isa:ident;) => {};
    ($isa:ident; const $name:ident: $t:ty = $($v:expr),+; $($rest:tt)*) => {
        const $name: $t = $crate::simd::pick!($isa, $($v),+);
        $crate::simd::column!($isa; $($rest)*);
    };
    ($isa:ident; type $name:ident = $($t:ty),+; $($rest:tt)*) => {
        type $name = $crate::simd::pick!(type $isa, $($t),+);
        $crate::simd::column!($isa; $($rest)*);
    };
    (
        $isa:ident;
        $($head:ident)+ $(<$g:ident: $bound:path>)? ($($a:ident: $t:ty),*) $(-> $r:ty)? =
            $($body:expr),+;
        $($rest:tt)*
    ) => {
        $crate::simd::intrinsics! {
            $($head)+ $(<$g: $bound>)? ($($a: $t),*) $(-> $r)? =
                $crate::simd::pick!($isa, $($body),+);
        }
        $crate::simd::column!($isa; $($rest)*);
    };
}
pub(crate) use column;

/// The cell of `$isa` among a row's (AVX2, AVX-512[, NEON]): an expression, or a type after
/// `type`.
macro_rules! pick {
    (avx2, $e:expr $(, $_others:expr)*) => {
        $e
    };
    (avx512, $_a:expr, $e:expr $(, $_others:expr)*) => {
        $e
    };
    (neon, $_a:expr, $_b:expr, $e:expr) => {
        $e
    };
    (type avx2, $t:ty $(, $_others:ty)*) => {
        $t
    };
    (type avx512, $_a:ty, $t:ty $(, $_others:ty)*) => {
        $t
    };
    (type neon, $_a:ty, $_b:ty, $t:ty) => {
        $t
    };
}
pub(crate) use pick;

/// Defines the method `name` (`fn vectorize`, or an `unsafe fn` that also enables an
/// extension the caller vouches for: `QSimd::vectorize_vnni`), which runs a closure inside a
/// function compiled with the target features `$features`.
#[cfg(target_arch = "x86_64")]
macro_rules! vectorize_with {
    ($($head:ident)+ = $features:literal) => {
        #[inline(always)]
        $($head)+<R>(self, f: impl FnOnce() -> R) -> R {
            /// Runs `f` compiled with the features.
            ///
            /// # Safety
            /// The CPU has them.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn with_features<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the token proves the backend's features (and the caller of an `unsafe`
            // one the extension's).
            unsafe { with_features(f) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use vectorize_with;

/// The backends' [`Simd`] parameters, and the methods that are an intrinsic (or a short
/// expression of the arguments) on every backend, a row each: AVX2, AVX-512, NEON. A
/// backend's impl defines them with `simd_methods!(avx2)` (`avx512`, `neon`); its own helpers
/// (`hsum`, `hmax`, `exp_ps`) are the ones its module defines.
macro_rules! simd_methods {
    ($isa:ident) => {
        $crate::simd::column! { $isa;
            // vector registers: LANES f32 (and a U64 of the same width), REGISTERS of them
            type F32 = __m256, __m512, float32x4_t;
            type U64 = __m256i, __m512i, uint64x2_t;
            const LANES: usize = 8, 16, 4;
            const REGISTERS: usize = 16, 32, 32;
            // the prefetch measured faster on AVX2; the AVX-512 matvec streams at ~95% of a
            // plain read without it; on NEON, unmeasured (the hardware prefetchers of ARM
            // server cores follow a sequential row)
            const PREFETCH_MATVEC: bool = true, false, false;
            // AVX-512: 16 KiB panels (`128 * 32` f32), half of L1d (tuned on Zen 4: 6x64 tiles
            // and 256-deep panels measured the same, within 2%, at ~91% of FMA peak)
            const MATMUL_KC: usize = 256, 128, 256;
            fn zero() -> Self::F32 = _mm256_setzero_ps(), _mm512_setzero_ps(), vdupq_n_f32(0.0);
            fn splat(x: f32) -> Self::F32 = _mm256_set1_ps(x), _mm512_set1_ps(x), vdupq_n_f32(x);
            fn add(a: Self::F32, b: Self::F32) -> Self::F32 =
                _mm256_add_ps(a, b), _mm512_add_ps(a, b), vaddq_f32(a, b);
            fn sub(a: Self::F32, b: Self::F32) -> Self::F32 =
                _mm256_sub_ps(a, b), _mm512_sub_ps(a, b), vsubq_f32(a, b);
            fn mul(a: Self::F32, b: Self::F32) -> Self::F32 =
                _mm256_mul_ps(a, b), _mm512_mul_ps(a, b), vmulq_f32(a, b);
            fn div(a: Self::F32, b: Self::F32) -> Self::F32 =
                _mm256_div_ps(a, b), _mm512_div_ps(a, b), vdivq_f32(a, b);
            // NEON: `a > b ? a : b`, so `b` where either is NaN as on x86 (`fmax` would give NaN)
            fn max(a: Self::F32, b: Self::F32) -> Self::F32 =
                _mm256_max_ps(a, b), _mm512_max_ps(a, b), vbslq_f32(vcgtq_f32(a, b), a, b);
            // NEON: `vfmaq_f32(c, a, b)` is `c + a * b`, rounded once
            fn fma(a: Self::F32, b: Self::F32, c: Self::F32) -> Self::F32 =
                _mm256_fmadd_ps(a, b, c), _mm512_fmadd_ps(a, b, c), vfmaq_f32(c, a, b);
            fn hsum(v: Self::F32) -> f32 = hsum(v), _mm512_reduce_add_ps(v), hsum(v);
            // NEON: `fmaxnmv` ignores NaN lanes where another lane is a number
            fn hmax(v: Self::F32) -> f32 = hmax(v), _mm512_reduce_max_ps(v), vmaxnmvq_f32(v);
            fn exp(v: Self::F32) -> Self::F32 = exp_ps(v), exp_ps(v), exp_ps(v);
            unsafe fn load(p: *const f32) -> Self::F32 =
                _mm256_loadu_ps(p), _mm512_loadu_ps(p), vld1q_f32(p);
            unsafe fn store(p: *mut f32, v: Self::F32) =
                _mm256_storeu_ps(p, v), _mm512_storeu_ps(p, v), vst1q_f32(p, v);
            // weights are bytes, unaligned for f32: NEON loads them as bytes and reinterprets
            unsafe fn load_f32_bytes(p: *const u8) -> Self::F32 =
                _mm256_loadu_ps(p.cast()),
                _mm512_loadu_ps(p.cast()),
                vreinterpretq_f32_u8(vld1q_u8(p));
            unsafe fn load_f16(p: *const u8) -> Self::F32 =
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
                vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
            // bf16: its bits shifted into the top half of an f32
            unsafe fn load_bf16(p: *const u8) -> Self::F32 =
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(p.cast()),
                ))),
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                    _mm256_loadu_si256(p.cast()),
                ))),
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(p))));
            fn zero_u64() -> Self::U64 =
                _mm256_setzero_si256(), _mm512_setzero_si512(), vdupq_n_u64(0);
            // integer adds wrap
            fn add_u64(a: Self::U64, b: Self::U64) -> Self::U64 =
                _mm256_add_epi64(a, b), _mm512_add_epi64(a, b), vaddq_u64(a, b);
            // NEON: loaded as bytes (no alignment)
            unsafe fn load_u64(p: *const u8) -> Self::U64 =
                _mm256_loadu_si256(p.cast()),
                _mm512_loadu_si512(p.cast()),
                vreinterpretq_u64_u8(vld1q_u8(p));
        }
    };
}
pub(crate) use simd_methods;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// A panel of the f32 matmul's weights ([`Simd::pack_panel`]): rows `0..nr` (`nr <= nrp`) of
/// a matrix of `k` columns, its columns `k0..k0 + kc`, packed `nrp` rows wide.
#[derive(Clone, Copy)]
pub(crate) struct Panel {
    /// Columns of the matrix (elements per row).
    pub(crate) k: usize,
    /// The panel's first column.
    pub(crate) k0: usize,
    /// The panel's columns (its depth).
    pub(crate) kc: usize,
    /// Rows read.
    pub(crate) nr: usize,
    /// Rows packed (the ones past `nr` zero).
    pub(crate) nrp: usize,
}

/// A SIMD backend: a vector type of [`Simd::LANES`] f32 lanes and the operations the generic
/// kernels use. Every method is a single instruction or a short fixed sequence of them; the
/// generic kernels call them in the same order the per-ISA kernels did, so their results are
/// the same bit for bit.
pub(crate) trait Simd: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// Vector registers the backend has: a body keeps as many accumulators live as fit.
    const REGISTERS: usize;
    /// Whether the widening matvec prefetches its weight stream ([`crate::stream`]): measured
    /// faster on AVX2, not needed by the AVX-512 kernel, which streams at ~95% of a plain read.
    const PREFETCH_MATVEC: bool;
    /// Depth of the f32 matmul's packed weight panel (`crate::generic::matmul_strided`): a
    /// tuning constant, but also where the sums are split (each depth block is added to the
    /// output), so it fixes the results' rounding.
    const MATMUL_KC: usize;

    /// A vector of f32 lanes.
    type F32: Copy;
    /// A vector of the same width read as u64 lanes (`stream_sum`'s wrapping sums).
    type U64: Copy;

    /// Runs `f` inside a function compiled with the backend's target features: `f` (marked
    /// `#[inline(always)]`) and everything it inlines is compiled with them.
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;

    /// `x` in every lane.
    fn splat(self, x: f32) -> Self::F32;
    /// 0.0 in every lane.
    fn zero(self) -> Self::F32;
    /// `a + b`.
    fn add(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a - b`.
    fn sub(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a * b`.
    fn mul(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a / b`.
    fn div(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// Lane-wise maximum; `b` where either is NaN.
    fn max(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a * b + c`, rounded once.
    fn fma(self, a: Self::F32, b: Self::F32, c: Self::F32) -> Self::F32;
    /// `a + b` in the first `n` lanes, `a` in the others.
    fn add_tail(self, a: Self::F32, b: Self::F32, n: usize) -> Self::F32;
    /// The sum of the lanes, in the backend's fixed order.
    fn hsum(self, v: Self::F32) -> f32;
    /// The largest lane (NaN lanes ignored where another lane is a number).
    fn hmax(self, v: Self::F32) -> f32;
    /// Vectorized `exp` within ~1 ulp over the whole f32 range (subnormal results, +inf above
    /// ~88.72, 0 below ~-103.97, NaN kept).
    fn exp(self, v: Self::F32) -> Self::F32;

    /// [`Simd::LANES`] floats at `p`.
    ///
    /// # Safety
    /// `p` is valid for reading `LANES` floats.
    unsafe fn load(self, p: *const f32) -> Self::F32;
    /// The first `min(n, LANES)` floats at `p`, the other lanes 0.0.
    ///
    /// # Safety
    /// `p` is valid for reading `min(n, LANES)` floats and points inside (or one past) its
    /// allocation.
    unsafe fn load_tail(self, p: *const f32, n: usize) -> Self::F32;
    /// Like [`Simd::load_tail`], the other lanes `fill`.
    ///
    /// # Safety
    /// As [`Simd::load_tail`].
    unsafe fn load_tail_or(self, p: *const f32, n: usize, fill: Self::F32) -> Self::F32;
    /// Writes `LANES` floats at `p`.
    ///
    /// # Safety
    /// `p` is valid for writing `LANES` floats.
    unsafe fn store(self, p: *mut f32, v: Self::F32);
    /// Writes the first `min(n, LANES)` lanes at `p`; nothing else is touched.
    ///
    /// # Safety
    /// `p` is valid for writing `min(n, LANES)` floats and points inside (or one past) its
    /// allocation.
    unsafe fn store_tail(self, p: *mut f32, n: usize, v: Self::F32);
    /// `LANES` f32 at `p`, which need not be aligned for f32 (weights are bytes).
    ///
    /// # Safety
    /// `p` is valid for reading `4 * LANES` bytes.
    unsafe fn load_f32_bytes(self, p: *const u8) -> Self::F32;
    /// `LANES` f16 at `p`, widened to f32 (exactly).
    ///
    /// # Safety
    /// `p` is valid for reading `2 * LANES` bytes.
    unsafe fn load_f16(self, p: *const u8) -> Self::F32;
    /// `LANES` bf16 at `p`, widened to f32 (exactly).
    ///
    /// # Safety
    /// `p` is valid for reading `2 * LANES` bytes.
    unsafe fn load_bf16(self, p: *const u8) -> Self::F32;
    /// `LANES` elements of dtype `W` starting at element `i` of `p`, widened to f32.
    ///
    /// # Safety
    /// `p` is valid for reading elements `i..i + LANES`.
    #[inline(always)]
    unsafe fn load_w<W: WeightType>(self, p: *const u8, i: usize) -> Self::F32 {
        // SAFETY: elements i..i + LANES are readable (contract).
        unsafe {
            match W::DTYPE {
                Dtype::F32 => self.load_f32_bytes(p.add(4 * i)),
                Dtype::F16 => self.load_f16(p.add(2 * i)),
                Dtype::BF16 => self.load_bf16(p.add(2 * i)),
            }
        }
    }
    /// [`Simd::load_w_tail`] for a backend without masked 16-bit loads: the first
    /// `min(n, LANES)` elements copied into a zeroed vector's worth of bytes, then widened, so
    /// that no byte past them is read.
    ///
    /// # Safety
    /// As [`Simd::load_w_tail`]; `LANES <= 16`.
    #[inline(always)]
    unsafe fn load_w_copied<W: WeightType>(self, p: *const u8, i: usize, n: usize) -> Self::F32 {
        let mut tmp = [0u8; 64];
        // SAFETY: min(n, LANES) elements (at most 64 bytes) are readable at element i
        // (contract); tmp holds a full vector's worth of elements for `load_w`.
        unsafe {
            let bytes = n.min(Self::LANES) * W::SIZE;
            std::ptr::copy_nonoverlapping(p.add(i * W::SIZE), tmp.as_mut_ptr(), bytes);
            self.load_w::<W>(tmp.as_ptr(), 0)
        }
    }
    /// The first `min(n, LANES)` elements of dtype `W` at element `i` of `p`, widened, the other
    /// lanes 0.0.
    ///
    /// # Safety
    /// `p` is valid for reading elements `i..i + min(n, LANES)`, and element `i` lies inside
    /// (or one past) its allocation.
    unsafe fn load_w_tail<W: WeightType>(self, p: *const u8, i: usize, n: usize) -> Self::F32;

    /// 0 in every u64 lane.
    fn zero_u64(self) -> Self::U64;
    /// Lane-wise wrapping `a + b` of u64 lanes.
    fn add_u64(self, a: Self::U64, b: Self::U64) -> Self::U64;
    /// The wrapping sum of the u64 lanes.
    fn hsum_u64(self, v: Self::U64) -> u64;
    /// `4 * LANES` bytes at `p` as u64 lanes.
    ///
    /// # Safety
    /// `p` is valid for reading `4 * LANES` bytes.
    unsafe fn load_u64(self, p: *const u8) -> Self::U64;

    /// Hints that the `len` bytes starting [`crate::stream::PREFETCH_BYTES`] after `p` will be
    /// read soon (a no-op where the backend has no prefetch; `p` may lie past the data).
    fn prefetch_ahead(self, p: *const u8, len: usize);

    /// Packs the panel `at` of `w` (row-major, `at.k` elements of `W` per row) transposed into
    /// `buf[kk * nrp + j]` as f32, zero for `j >= nr`: the f32 matmul's weight panel. By
    /// default each row is widened a vector at a time and scattered; a backend with a fast
    /// register transpose overrides it (the result is the same).
    ///
    /// # Safety
    /// `w` must be valid for `nr` rows of `k` elements of `W`; `k0 + kc <= k`;
    /// `buf.len() >= kc * nrp`; `LANES <= 64`.
    #[inline(always)]
    unsafe fn pack_panel<W: WeightType>(self, w: *const u8, at: Panel, buf: &mut [f32]) {
        let Panel { k, k0, kc, nr, nrp } = at;
        let rb = k * W::SIZE;
        if nr < nrp {
            buf[..kc * nrp].iter_mut().for_each(|v| *v = 0.0);
        }
        let mut tmp = [0f32; 64];
        for j in 0..nr {
            let mut kk = 0;
            while kk < kc {
                let cnt = (kc - kk).min(Self::LANES);
                // SAFETY: row j < nr is inside w, and columns k0 + kk..k0 + kk + cnt <= k0 + kc
                // of it are readable (contract); tmp holds 64 >= LANES floats.
                unsafe {
                    let v = self.load_w_tail::<W>(w.add(j * rb), k0 + kk, cnt);
                    self.store(tmp.as_mut_ptr(), v);
                }
                for (q, t) in tmp.iter().enumerate().take(cnt) {
                    buf[(kk + q) * nrp + j] = *t;
                }
                kk += Self::LANES;
            }
        }
    }
}
