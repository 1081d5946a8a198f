//! The quantized kernels' integer layer: [`QSimd`] extends [`Simd`] with what a quantized
//! kernel does on integer vectors of `4 * LANES` bytes: the `u8 × i8` dot (`vpdpbusd` with
//! VNNI, else `vpmaddubsw` + `vpmaddwd`; exact on both paths where the kernels keep the i16
//! pair sums from saturating, so they give the same bits), the reduction of a group's dots to
//! one lane per scale unit, the unpacking of ggml blocks into unsigned bytes in column order,
//! and the prefill matmul's panel packing and matrix unit. Those are where the instructions
//! are the algorithm; the kernels over them are written once ([`super::quant`],
//! [`super::quant_gemm`]).

use crate::quant::panel::pack_q_panel;
use crate::quant::QuantType;
use crate::simd::Simd;

/// The [`QSimd`] types, and the methods that are an intrinsic or two on both backends, a row
/// each (as [`crate::simd::column!`]'s): AVX2, AVX-512. A backend's impl defines them
/// with `qsimd_methods!(avx2, vnni = "features")` (or `avx512`), and `vectorize_vnni` with the
/// features named, the VNNI extension among them.
macro_rules! qsimd_methods {
    ($isa:ident, vnni = $features:literal) => {
        $crate::simd::vectorize_with!(unsafe fn vectorize_vnni = $features);
        $crate::simd::column! { $isa;
            type I = __m256i, __m512i;
            // AVX2: the weights themselves (`vpsignb` reads their signs); AVX-512: a mask
            type Sign = __m256i, __mmask64;
            // AVX2: `2 * Q_MR` i32 accumulators and the two weight halves fill the 16 ymm
            // registers (the f32 accumulators, touched once per sub-block, may live in L1);
            // AVX-512: `Q_MR` i32 and `Q_MR` f32 accumulators, the weight vector, scale and
            // bias stay in the 32 zmm registers
            const Q_MR: usize = 4, 8;
            fn zero_i() -> Self::I = _mm256_setzero_si256(), _mm512_setzero_si512();
            fn splat_i32(x: i32) -> Self::I = _mm256_set1_epi32(x), _mm512_set1_epi32(x);
            fn i32_to_f32(v: Self::I) -> Self::F32 = _mm256_cvtepi32_ps(v), _mm512_cvtepi32_ps(v);
            fn abs_i8(w: Self::I) -> Self::I = _mm256_abs_epi8(w), _mm512_abs_epi8(w);
            // AVX2: `vpsignb` negates where the weight (its own sign) is negative
            fn apply_sign(x: Self::I, s: Self::Sign) -> Self::I =
                _mm256_sign_epi8(x, s),
                _mm512_mask_sub_epi8(x, s, _mm512_setzero_si512(), x);
            fn add_i32(a: Self::I, b: Self::I) -> Self::I =
                _mm256_add_epi32(a, b), _mm512_add_epi32(a, b);
            unsafe fn dpbusd(acc: Self::I, w: Self::I, x: Self::I) -> Self::I =
                _mm256_dpbusd_avx_epi32(acc, w, x), _mm512_dpbusd_epi32(acc, w, x);
            fn maddubs_pairs(w: Self::I, x: Self::I) -> Self::I =
                _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)),
                _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1));
            unsafe fn load_i(p: *const u8) -> Self::I =
                _mm256_loadu_si256(p.cast()), _mm512_loadu_si512(p.cast());
            // n bytes, a multiple of 4: masked-off words (bytes) are not accessed
            unsafe fn load_i_tail(p: *const u8, n: usize) -> Self::I =
                _mm256_maskload_epi32(p.cast(), mask8(n / 4)),
                _mm512_maskz_loadu_epi8((1u64 << n) - 1, p.cast());
        }
    };
}
pub(crate) use qsimd_methods;

/// `$m!($args.. VNNI)` inside the token `$b`'s `vectorize`, or `vectorize_vnni` with `VNNI`
/// `true` where `$vnni`: the one place a quantized kernel turns its run-time choice of integer
/// dot into a const parameter. The caller's contract must cover the call, and the VNNI
/// extension where `$vnni`.
macro_rules! dispatch_vnni {
    ($b:expr, $vnni:expr, $m:ident!($($args:tt)*)) => {
        if $vnni {
            // SAFETY: the caller's contract (the VNNI extension included).
            unsafe { $b.vectorize_vnni(#[inline(always)] || $m!($($args)* true)) }
        } else {
            // SAFETY: the caller's contract.
            $b.vectorize(#[inline(always)] || unsafe { $m!($($args)* false) })
        }
    };
}
pub(crate) use dispatch_vnni;

/// The integer operations of the quantized kernels on one backend (see the module docs). Like
/// [`Simd`], a value is a token proving the CPU runs the backend's instructions; the VNNI
/// forms additionally need [`QSimd::vectorize_vnni`]'s contract.
pub(crate) trait QSimd: Simd {
    /// A vector of `4 * LANES` bytes, read as i8 / u8, i16 or i32 lanes as each method says.
    type I: Copy;
    /// Which bytes of a vector of signed quants are negative: the vector itself on AVX2
    /// (`vpsignb` reads its signs), a mask register on AVX-512.
    type Sign: Copy;
    /// Input rows per tile of the quantized prefill matmul (`crate::generic::quant_gemm`).
    const Q_MR: usize;

    /// [`Simd::vectorize`] with the backend's VNNI extension (`vpdpbusd`) enabled as well.
    ///
    /// # Safety
    /// The CPU has that extension (AVX-VNNI on AVX2, AVX512-VNNI on AVX-512).
    unsafe fn vectorize_vnni<R>(self, f: impl FnOnce() -> R) -> R;

    /// All bytes 0.
    fn zero_i(self) -> Self::I;
    /// `x` in every i32 lane.
    fn splat_i32(self, x: i32) -> Self::I;
    /// `4 * LANES` bytes at `p`.
    ///
    /// # Safety
    /// `p` is valid for reading them.
    unsafe fn load_i(self, p: *const u8) -> Self::I;
    /// The first `n` (`< 4 * LANES`, a multiple of 4) bytes at `p`, the others 0.
    ///
    /// # Safety
    /// `p` is valid for reading `n` bytes.
    unsafe fn load_i_tail(self, p: *const u8, n: usize) -> Self::I;
    /// The i32 lanes as f32.
    fn i32_to_f32(self, v: Self::I) -> Self::F32;
    /// `|w|` per i8 lane (`-128` gives 128 as u8).
    fn abs_i8(self, w: Self::I) -> Self::I;
    /// The signs of the i8 lanes of `w`, for [`QSimd::apply_sign`].
    fn sign_of(self, w: Self::I) -> Self::Sign;
    /// `x` negated in the i8 lanes where the weight was negative (`s` from
    /// [`QSimd::sign_of`]); where it was 0, `x` or 0 (the product with `|w| = 0` is 0 either
    /// way).
    fn apply_sign(self, x: Self::I, s: Self::Sign) -> Self::I;
    /// `a + b` per i32 lane.
    fn add_i32(self, a: Self::I, b: Self::I) -> Self::I;
    /// `acc` plus, per i32 lane, the four `u8 × i8` products of `w` and `x`: `vpdpbusd`.
    ///
    /// # Safety
    /// Only inside [`QSimd::vectorize_vnni`] (the CPU has the VNNI extension).
    unsafe fn dpbusd(self, acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// Per i32 lane, the four `u8 × i8` products of `w` and `x` summed in two i16 pairs
    /// (`vpmaddubsw`, which saturates them) and then in i32 (`vpmaddwd` by 1).
    fn maddubs_pairs(self, w: Self::I, x: Self::I) -> Self::I;
    /// `acc` plus, per i32 lane, the four `u8 × i8` products of `w` and `x`: `vpdpbusd` with
    /// `VNNI` (inside [`QSimd::vectorize_vnni`]), else `vpmaddubsw` + `vpmaddwd`, whose i16 pair
    /// sums the callers keep from saturating, so both give the same sums.
    ///
    /// # Safety
    /// With `VNNI`, only inside [`QSimd::vectorize_vnni`].
    #[inline(always)]
    unsafe fn udot<const VNNI: bool>(self, acc: Self::I, w: Self::I, x: Self::I) -> Self::I {
        if VNNI {
            // SAFETY: forwarded contract.
            unsafe { self.dpbusd(acc, w, x) }
        } else {
            self.add_i32(acc, self.maddubs_pairs(w, x))
        }
    }
    /// The i32 lanes of a group's dot vectors `v` summed per scale unit of `unit` columns (32 or
    /// 16): one i32 per unit in unit order, `LANES` units from the first `unit / 4` vectors.
    fn reduce_units(self, unit: usize, v: &[Self::I]) -> Self::I;
    /// Lane `u < n`: `hs[2u] + hs[2u + 1]`, the other lanes 0.0: an input's scaled sums over
    /// `n` units of 32 from its half-block sums.
    ///
    /// # Safety
    /// `hs` is valid for reading `2 n` floats.
    unsafe fn pair_sums(self, hs: *const f32, n: usize) -> Self::F32;
    /// Lanes `2i` and `2i + 1`: `d[i]`, for `i < LANES / 2`: an input's block steps for units
    /// of 16 columns.
    ///
    /// # Safety
    /// `d` is valid for reading `LANES / 2` floats.
    unsafe fn dup_steps(self, d: *const f32) -> Self::F32;

    /// Packs the `nr` rows of `w` (`rb` bytes each, `k` weights of `qt`) into the panel `pb`
    /// as [`pack_q_panel`] does: that packer, unless the backend has a faster one writing the
    /// same bytes.
    #[inline(always)]
    fn pack_q_panel(self, qt: QuantType, w: &[u8], k: usize, signed: bool, pb: &mut [u8]) {
        let rb = qt.row_bytes(k).unwrap_or(usize::MAX);
        pack_q_panel(qt, w, k, w.len() / rb, signed, pb)
    }
    /// Runs every tile of `n` input rows against one packed panel of unsigned quants in
    /// sub-blocks of `S` on the backend's matrix unit (AMX), giving the vector tiles' bits,
    /// and returns true; false (the default) where the backend has none.
    ///
    /// # Safety
    /// As the vector tiles (`crate::generic::quant_gemm`), for `n` rows; a [`crate::Cpu`] has
    /// claimed the matrix unit (AMX: the tile data granted).
    #[inline(always)]
    unsafe fn matrix_tiles<const S: usize>(self, run: PanelRun, n: usize) -> bool {
        let _ = (run, n);
        false
    }
}

/// The unpacking of ggml blocks into a [`Group`] on one backend: the quants as unsigned bytes
/// in column order and, for the K-quants, each unit's scale and bias (the matvec sets the
/// simple formats' from [`QUnpack::f16_lanes`]).
pub(crate) trait QUnpack: QSimd {
    /// The f16 at byte offsets `stride * u` of `p`, as f32 in lane `u < n`, 0.0 in the other
    /// lanes: the block scales of Q4_0, Q5_0 and Q8_0.
    ///
    /// # Safety
    /// `p` is valid for reading 4 bytes at each `stride * u`, `u < n`.
    unsafe fn f16_lanes(self, p: *const u8, stride: usize, n: usize) -> Self::F32;
    /// Q4_0 (18-byte blocks) / Q5_0 (22-byte blocks with `Q5`): the quants of the first `n`
    /// units (blocks) of a group, 0..15 (0..31); no scales.
    ///
    /// # Safety
    /// `p` points at `n` blocks.
    unsafe fn unpack_q4q5<const Q5: bool>(self, p: *const u8, n: usize) -> Group<Self>;
    /// Q8_0: the quants of the first `n` units (blocks) of a group, `Group::sgn` set; no
    /// scales.
    ///
    /// # Safety
    /// `p` points at `n` blocks of 34 bytes.
    unsafe fn unpack_q8_0(self, p: *const u8, n: usize) -> Group<Self>;
    /// Q4_K (144-byte superblocks) / Q5_K (176-byte superblocks with `Q5`): the `n` units of a
    /// group, whole superblocks of 8 units.
    ///
    /// # Safety
    /// `p` points at `n / 8` superblocks.
    unsafe fn unpack_k45<const Q5: bool>(self, p: *const u8, n: usize) -> Group<Self>;
    /// Q6_K: the 16 units of one superblock.
    ///
    /// # Safety
    /// `p` points at a superblock of 210 bytes.
    unsafe fn unpack_q6k(self, p: *const u8) -> Group<Self>;
}

/// One group of one weight row, unpacked for every input.
pub(crate) struct Group<B: QSimd> {
    /// Unsigned weight quants, `4 * LANES` columns per vector in column order; zero past the
    /// row's end.
    pub(crate) q: [B::I; 8],
    /// Q8_0 only: the signs of the weights (`q` holds their magnitudes).
    pub(crate) sgn: [B::Sign; 8],
    /// Per unit: the weight scale of its integer dot (units `LANES h..` in `scale[h]`).
    pub(crate) scale: [B::F32; 2],
    /// Per unit: the factor of the input's scaled sum over the unit (`-8 d` for Q4_0, ...).
    pub(crate) bias: [B::F32; 2],
}

impl<B: QSimd> Group<B> {
    /// Everything zero (no signs).
    #[inline(always)]
    pub(crate) fn zero(b: B) -> Group<B> {
        Group {
            q: [b.zero_i(); 8],
            sgn: [b.sign_of(b.zero_i()); 8],
            scale: [b.zero(); 2],
            bias: [b.zero(); 2],
        }
    }
}

/// One packed panel against a run of input rows: where everything is, passed down to the
/// tiles.
#[derive(Clone, Copy)]
pub(crate) struct PanelRun {
    /// The panel as [`pack_q_panel`] lays it out.
    pub(crate) panel: *const u8,
    /// Sub-blocks of `S` weights in the panel.
    pub(crate) nsb: usize,
    /// The first input row's [`crate::quant::q8_len`] words.
    pub(crate) xq: *const f32,
    /// Words per input row.
    pub(crate) xs: usize,
    /// Blocks of 32 per input row (`nsb * S / 32`).
    pub(crate) nb: usize,
    /// The first output row, at column 0 of the panel.
    pub(crate) y: *mut f32,
    /// Floats per output row.
    pub(crate) ldy: usize,
    /// Weight rows of the panel in use (`1..=16`): the output columns written.
    pub(crate) nr: usize,
}

impl PanelRun {
    /// The same run from input row `t0` on.
    ///
    /// # Safety
    /// Input and output row `t0` exist.
    #[inline(always)]
    pub(crate) unsafe fn rows_from(self, t0: usize) -> PanelRun {
        // SAFETY: forwarded contract.
        unsafe {
            PanelRun {
                xq: self.xq.add(t0 * self.xs),
                y: self.y.add(t0 * self.ldy),
                ..self
            }
        }
    }
}

/// A little-endian u32 at `p` (any alignment).
///
/// # Safety
/// `p` is valid for reading 4 bytes.
#[inline(always)]
pub(crate) unsafe fn u32_le(p: *const u8) -> u32 {
    // SAFETY: forwarded contract; unaligned read.
    unsafe { u32::from_le(std::ptr::read_unaligned(p.cast::<u32>())) }
}
