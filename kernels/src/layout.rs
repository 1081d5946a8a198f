//! Work layouts shared by the backends and the code that hands the work out: the blocked
//! prefill attention's tile. (The quantized matmul's weight panel is [`crate::quant`]'s.)

use crate::dtype::KvType;

/// One tile of the blocked prefill attention (`par::attention`): rows `row0..row0 + rows` of one
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
