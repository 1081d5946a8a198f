//! The matmuls (prefill and batched rows): `y = x · wᵀ`, packed weight panels in caller
//! scratch.

use super::*;

/// Floats of scratch [`matmul`] needs for its packed weight panel (on every ISA: the largest
/// panel of any body; the contents on entry do not matter).
pub fn matmul_scratch_len() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        generic::matmul_pack::<Avx512>().max(generic::matmul_pack::<Avx2>())
    }
    #[cfg(target_arch = "aarch64")]
    {
        generic::matmul_pack::<Neon>()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        0
    }
}

/// A row-major weight matrix as the float matmuls read it: little-endian bytes (never assumed
/// aligned) of the kernel's dtype, `cols` weights per row (the depth `k`, the input width);
/// the rows are the outputs per token.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The weights, at least `rows * cols` of them.
    pub bytes: &'a [u8],
    /// Weights per row.
    pub cols: usize,
}

impl<'a> Matrix<'a> {
    /// The matrix of `cols` weights per row in `bytes` (checked against the rows when used).
    pub fn new(bytes: &'a [u8], cols: usize) -> Matrix<'a> {
        Matrix { bytes, cols }
    }

    /// `y = x · selfᵀ` as one block, the whole of `y` ([`scalar::matmul_dims`] gives its shape),
    /// or `None` when there is nothing to compute. The block points into `y`, so it must be
    /// used while `y`'s borrow is held and `y` is not otherwise accessed.
    ///
    /// # Panics
    /// If the matrix holds fewer than `rows * cols` weights of `wsize` bytes (`what` names the
    /// caller).
    pub(crate) fn block(
        &self,
        wsize: usize,
        x: &'a [f32],
        y: &mut [f32],
        what: &str,
    ) -> Option<MatmulBlock<'a>> {
        let (n, rows) = scalar::matmul_dims(self.cols, x, y)?;
        assert!(
            self.bytes.len() >= rows * self.cols * wsize,
            "{what}: weight buffer too short"
        );
        Some(MatmulBlock {
            w: self.bytes,
            k: self.cols,
            x,
            n,
            y: y.as_mut_ptr(),
            ldy: rows,
            rows,
        })
    }
}

/// Panics unless `scratch` holds a matmul's packed panel.
fn check_pack(scratch: &[f32], need: usize, what: &str) {
    assert!(
        scratch.len() >= need,
        "{what}: scratch holds {} floats, {need} needed",
        scratch.len()
    );
}

/// `y = x · wᵀ`: `x` is `[n, k]`, `w` is `[rows, k]` (`k = w.cols`), `y` is `[n, rows]`,
/// row-major. `scratch` holds the packed weight panel: [`matmul_scratch_len`] floats.
pub fn matmul<W: WeightType>(
    isa: impl Into<Isa>,
    w: Matrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    check_pack(scratch, matmul_scratch_len(), "matmul");
    let Some(block) = w.block(W::SIZE, x, y, "matmul") else {
        return;
    };
    // SAFETY: the block is the whole of `y`, borrowed mutably here (n rows of `rows` floats:
    // row t < n, column j < rows at t*rows + j); `scratch` holds the panel (checked).
    unsafe { matmul_strided::<W>(isa.into(), &block, scratch) }
}

/// The matmul body behind [`matmul`] and `par::matmul`: one column block of `W` weights;
/// `pack` is the thread's own packed panel.
///
/// # Safety
/// `block` must satisfy [`MatmulBlock`]'s contract (the lengths are checked here, `y` cannot
/// be).
pub(crate) unsafe fn matmul_strided<W: WeightType>(
    isa: Isa,
    block: &MatmulBlock<'_>,
    pack: &mut [f32],
) {
    block.check(W::SIZE);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let s = Avx512::new().unwrap_or_else(|| unsupported(Isa::Avx512));
            // SAFETY: buffer contract forwarded from our caller; the body checks the panel's
            // length itself.
            unsafe { generic::matmul_strided::<_, W>(s, block, pack) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let s = Avx2::new().unwrap_or_else(|| unsupported(Isa::Avx2));
            // SAFETY: as above.
            unsafe { generic::matmul_strided::<_, W>(s, block, pack) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            let s = Neon::new().unwrap_or_else(|| unsupported(Isa::Neon));
            // SAFETY: buffer contract forwarded from our caller; the body checks the panel's
            // length itself.
            unsafe { generic::matmul_strided::<_, W>(s, block, pack) }
        }
        _ => {
            let _ = pack;
            let (k, rows) = (block.k, block.rows);
            for t in 0..block.n {
                // SAFETY: row t of y has `rows` writable, unaliased floats at t*ldy (contract).
                let yt =
                    unsafe { std::slice::from_raw_parts_mut(block.y.add(t * block.ldy), rows) };
                scalar::matvec::<W>(block.w, &block.x[t * k..(t + 1) * k], yt);
            }
        }
    }
}

/// [`matmul`] for bf16 weights using AVX512-BF16 `vdpbf16ps` where [`Cpu::bf16`]:
/// the activations are ROUNDED TO BF16 before the products (f32 accumulation), so results differ
/// from [`matmul`] by up to ~2^-8 relative to `sum |w x|`. About twice the f32 path's throughput.
/// Not the default: use it only where that rounding is acceptable. On other ISAs, and for fewer
/// than 3 tokens, it is exactly `matmul::<Bf16>`. `scratch` holds the rounded activations and
/// the packed weight panel: [`matmul_bf16dot_scratch_len`] floats.
pub fn matmul_bf16dot(
    cpu: impl Into<Cpu>,
    w: Matrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let cpu: Cpu = cpu.into();
    let Some(block) = w.block(2, x, y, "matmul_bf16dot") else {
        return;
    };
    let (pairs, pack) = split_bf16dot_scratch(scratch, block.n, block.k);
    check_pack(pack, BF16DOT_PACK, "matmul_bf16dot");
    let xb = bf16dot_pairs(cpu, x, block.k, block.n, pairs);
    // SAFETY: as in `matmul`; `xb` comes from `bf16dot_pairs` for this x, k and n, and `pack`
    // holds a panel of either path (checked).
    unsafe { matmul_bf16dot_strided(cpu, &block, xb, pack) }
}

/// Floats of one packed panel of [`matmul_bf16dot`]: room for the `vdpbf16ps` panel or the f32
/// one, whichever path runs.
pub(crate) const BF16DOT_PACK: usize = {
    #[cfg(target_arch = "x86_64")]
    {
        let (a, b) = (avx512::BF16DOT_PACK, generic::matmul_pack::<Avx512>());
        let c = generic::matmul_pack::<Avx2>();
        let ab = if a > b { a } else { b };
        if ab > c {
            ab
        } else {
            c
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        generic::matmul_pack::<Neon>()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        0
    }
};

/// Floats of the rounded activations of `n` tokens of `k` (one bf16 pair per float), rounded up
/// to whole 64-byte lines so that the panels after them start on one.
pub(crate) fn bf16dot_pairs_len(n: usize, k: usize) -> usize {
    (n * k.div_ceil(2)).next_multiple_of(16)
}

/// Splits a [`matmul_bf16dot`] scratch into the rounded activations and the rest (the panels).
pub(crate) fn split_bf16dot_scratch(
    scratch: &mut [f32],
    n: usize,
    k: usize,
) -> (&mut [f32], &mut [f32]) {
    let need = bf16dot_pairs_len(n, k);
    assert!(
        scratch.len() >= need,
        "matmul_bf16dot: scratch holds {} floats, {need} needed for the activations",
        scratch.len()
    );
    scratch.split_at_mut(need)
}

/// Floats of scratch [`matmul_bf16dot`] needs for `n` tokens of `k` activations: their bf16
/// pairs (one per float, rounded up to 16 floats) and one packed weight panel.
pub fn matmul_bf16dot_scratch_len(n: usize, k: usize) -> usize {
    bf16dot_pairs_len(n, k) + BF16DOT_PACK
}

/// Rounds the `n × k` activations to bf16 pairs in `scratch` once per matmul, where the
/// `vdpbf16ps` path will read them (AVX512-BF16, at least 3 tokens); `None` otherwise.
/// `scratch` is the activations' part of a [`split_bf16dot_scratch`].
pub(crate) fn bf16dot_pairs<'s>(
    cpu: Cpu,
    x: &[f32],
    k: usize,
    n: usize,
    scratch: &'s mut [f32],
) -> Option<&'s [f32]> {
    let need = n * k.div_ceil(2);
    assert!(
        scratch.len() >= need,
        "matmul_bf16dot: scratch holds {} floats, {need} needed",
        scratch.len()
    );
    assert!(x.len() >= n * k, "matmul_bf16dot: x too short");
    #[cfg(target_arch = "x86_64")]
    if cpu.bf16() && n >= 3 {
        // SAFETY: a `Cpu` claims AVX512-BF16 (at the AVX-512 level) only where detected; x and
        // scratch lengths checked.
        unsafe { avx512::pack_x_pairs(x, k, n, scratch) };
        return Some(&scratch[..need]);
    }
    let _ = cpu;
    None
}

/// The body behind [`matmul_bf16dot`] and `par::matmul_bf16dot`, writing a column block:
/// the `vdpbf16ps` path on `xb` (from [`bf16dot_pairs`]) where there is one, else the f32 path;
/// `pack` is the thread's own panel ([`BF16DOT_PACK`] floats).
///
/// # Safety
/// As [`matmul_strided`] with bf16 weights; `xb` must come from [`bf16dot_pairs`] with the same
/// `cpu`, and the block's `x`, `k` and `n`.
pub(crate) unsafe fn matmul_bf16dot_strided(
    cpu: Cpu,
    block: &MatmulBlock<'_>,
    xb: Option<&[f32]>,
    pack: &mut [f32],
) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xb;
    #[cfg(target_arch = "x86_64")]
    if let Some(xb) = xb {
        let b = block;
        b.check(2);
        assert!(cpu.bf16() && xb.len() >= b.n * b.k.div_ceil(2));
        // SAFETY: a `Cpu` claims AVX512-BF16 (at the AVX-512 level) only where detected;
        // buffer contract forwarded; the body checks the panel's length itself.
        unsafe { avx512::matmul_bf16dot_strided(b.w, b.k, xb, b.n, b.y, b.ldy, b.rows, pack) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { matmul_strided::<crate::Bf16>(cpu.isa(), block, pack) }
}
