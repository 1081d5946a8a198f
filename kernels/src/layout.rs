//! Work layouts shared by the backends and the code that hands the work out: a float matmul's
//! column block, the single-head attention's input and the blocked prefill attention's tile.
//! (The quantized matmul's weight panel is [`crate::quant`]'s.)

use crate::dtype::KvType;

/// A column block of a float matmul, as the bodies behind `ops::matmul` and `par::matmul`
/// compute it: `y[t * ldy + j] = sum_c w[j, c] * x[t * k + c]` for the tokens `t < n` and the
/// block's weight rows `j < rows` (so that a thread can fill a column block of a wider output).
///
/// Contract (what the unsafe bodies rely on, checked by [`MatmulBlock::check`] but for `y`):
/// `k > 0`, `w` holds `rows * k` weights, `x` at least `n * k` floats, `ldy >= rows`, and `y`
/// is valid for writes at `t * ldy + j` (`t < n`, `j < rows`), touched by no one else during
/// the call.
#[derive(Clone, Copy)]
pub(crate) struct MatmulBlock<'a> {
    /// The block's weight rows, little-endian bytes of the kernel's dtype.
    pub w: &'a [u8],
    /// Weights per row (the depth).
    pub k: usize,
    /// The activations, `[n, k]`.
    pub x: &'a [f32],
    /// Tokens.
    pub n: usize,
    /// Token 0's output for the block's first weight row.
    pub y: *mut f32,
    /// Floats from one token's output row to the next.
    pub ldy: usize,
    /// Weight rows (output columns) in the block.
    pub rows: usize,
}

impl MatmulBlock<'_> {
    /// Panics unless the block's buffers hold what its contract asks, for weights of `wsize`
    /// bytes (all but `y`, which a pointer cannot show).
    pub fn check(&self, wsize: usize) {
        let k = self.k;
        assert!(
            k > 0
                && self.w.len() >= self.rows * k * wsize
                && self.x.len() >= self.n * k
                && self.ldy >= self.rows
        );
    }
}

/// One query head against `len` cached positions, the input of the single-head attention
/// ([`crate::ops::attention`], and the scalar and SIMD bodies behind it): `keys` and `values`
/// are `[len, head_dim]` of KV type `T`, `head_dim = q.len()`, and the result is
/// `softmax(keys · q * scale) · values`.
pub struct AttnHead<'a, T: KvType> {
    /// The query, `[head_dim]`.
    pub q: &'a [f32],
    /// The cached keys, `[len, head_dim]` (`len = keys.len() / head_dim`).
    pub keys: &'a [T::Elem],
    /// The cached values, at least `[len, head_dim]`.
    pub values: &'a [T::Elem],
    /// The factor on every `keys · q` before the softmax (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

// (by hand: a derive would ask `T: Copy` of the marker type)
impl<T: KvType> Clone for AttnHead<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: KvType> Copy for AttnHead<'_, T> {}

impl<T: KvType> AttnHead<'_, T> {
    /// Checks the buffers of an attention over this head, `scores` (scratch) and `out`; returns
    /// `len`, the cached positions.
    ///
    /// # Panics
    /// Unless `out` is `head_dim` floats, and `values` and `scores` hold `len` rows / floats.
    pub fn checked_len(&self, scores: &[f32], out: &[f32]) -> usize {
        let hd = self.q.len();
        assert_eq!(out.len(), hd, "attention: out length");
        let len = self.keys.len().checked_div(hd).unwrap_or(0);
        assert!(
            self.values.len() >= len * hd && scores.len() >= len,
            "attention: buffers too short"
        );
        len
    }
}

/// One tile of the blocked prefill attention (`par::Attention`): rows `row0..row0 + rows` of one
/// kv head's query rows, numbered token-major (`row = t * group + h_in_group`), so row `row`
/// is token `t = row / group` (position `pos0 + t`, keys `0..=pos0 + t` visible) and query head
/// `head0 + row % group`.
///
/// Contract (what the unsafe tile bodies rely on): for every row of the tile, `q` and `out` are
/// valid for `hd` floats at `t * qdim + head * hd` (read / written, the written ones touched by
/// no one else during the call), and `k`, `v` (this kv head's `[cap, hd]` slab) are readable
/// for `(pos0 + t + 1) * hd` elements. Every row offset `t * qdim + head * hd` is below
/// `i32::MAX` (the bodies gather with 32-bit indices).
/// `k` and `v` hold elements of the cache's KV type `T`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct AttnTile<T: KvType> {
    pub q: *const f32,
    pub out: *mut f32,
    pub k: *const T::Elem,
    pub v: *const T::Elem,
    /// Floats per token row of `q` / `out` (`n_heads * hd`).
    pub qdim: usize,
    pub hd: usize,
    pub group: usize,
    pub head0: usize,
    pub row0: usize,
    pub rows: usize,
    pub pos0: usize,
    pub scale: f32,
}
