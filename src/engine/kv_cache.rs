//! The fixed KV cache: sized once, never grown or moved.
//!
//! Storage is `[layer, kv_head, position, head_dim]` for K and again for V, of the cache's
//! element type ([`KvShape::dtype`]: f32, or bf16 / f16 stored as their `u16` bits, half the
//! memory), carved from the session arena (or any slice of [`KvShape::elems`] elements for
//! standalone use). [`KvCache`] holds only the bookkeeping, so it cannot reallocate anything:
//! - `used`: positions committed by earlier forward passes;
//! - `frontier`: positions written so far in the current pass (`used <= frontier`).
//!
//! A pass writes positions `used..used+n` in every layer ([`KvCache::write`], which rounds the
//! f32 rows to the element type: to nearest, ties to even), reads the valid prefix
//! `0..frontier` ([`KvCache::view`]), and then [`KvCache::commit`]s. A write that is past
//! capacity or not at the next position is an error and writes nothing.
//!
//! [`KvCache::write`] and [`KvCache::view`] are generic over the element type's
//! [`KvType`] marker ([`F32`](qwenrt_kernels::F32), [`Bf16`](qwenrt_kernels::Bf16),
//! [`F16`](qwenrt_kernels::F16)), which must be the shape's dtype.

use std::fmt;

use qwenrt_kernels::{Dtype, KvType};

/// The cache's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Positions the cache holds.
    pub capacity: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// The element type: F32, or BF16 / F16 (2 bytes each).
    pub dtype: Dtype,
}

impl KvShape {
    /// Elements in one of K or V, or `None` on overflow.
    pub fn elems(&self) -> Option<usize> {
        self.layers
            .checked_mul(self.kv_heads)?
            .checked_mul(self.capacity)?
            .checked_mul(self.head_dim)
    }

    /// Bytes of K and V together, or `None` on overflow.
    pub fn bytes(&self) -> Option<usize> {
        self.elems()?.checked_mul(2 * self.dtype.size())
    }

    /// Elements of one layer of K (or V).
    pub fn layer_elems(&self) -> usize {
        self.kv_heads * self.capacity * self.head_dim
    }

    /// Elements of one position of one layer (all kv heads).
    pub fn row_elems(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Why a cache operation was refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheError {
    /// The write would end past the capacity.
    Full {
        /// The first position written.
        pos: usize,
        /// Positions written.
        n: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// The write does not start at the next position.
    NotNext {
        /// The position given.
        pos: usize,
        /// The next position the cache expects.
        next: usize,
    },
    /// A layer index past the model's layers.
    NoSuchLayer {
        /// The layer given.
        layer: usize,
        /// Layers in the cache.
        layers: usize,
    },
    /// The K/V rows given do not have `n * kv_heads * head_dim` floats.
    RowLength {
        /// Floats needed.
        expected: usize,
        /// Floats given.
        found: usize,
    },
    /// The view asks past what has been written.
    ViewPastFrontier {
        /// Positions asked for.
        len: usize,
        /// Positions written so far.
        frontier: usize,
    },
    /// The storage given is not the size of the shape.
    Storage {
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        found: usize,
    },
    /// The storage given is not of the shape's element type.
    Dtype {
        /// The shape's element type.
        expected: Dtype,
        /// The type of the storage given.
        found: Dtype,
    },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Full { pos, n, capacity } => write!(
                f,
                "KV cache full: writing {n} position(s) at {pos} would pass its capacity of {capacity}"
            ),
            CacheError::NotNext { pos, next } => {
                write!(f, "KV cache write at position {pos}, but the next position is {next}")
            }
            CacheError::NoSuchLayer { layer, layers } => {
                write!(f, "KV cache has {layers} layers; layer {layer} does not exist")
            }
            CacheError::RowLength { expected, found } => {
                write!(f, "KV cache write of {found} floats; expected {expected}")
            }
            CacheError::ViewPastFrontier { len, frontier } => {
                write!(f, "KV cache view of {len} positions, but only {frontier} are written")
            }
            CacheError::Storage { expected, found } => {
                write!(f, "KV cache storage has {found} elements; the shape needs {expected}")
            }
            CacheError::Dtype { expected, found } => {
                write!(f, "KV cache storage of {found} given to a {expected} cache")
            }
        }
    }
}

impl std::error::Error for CacheError {}

/// Cache information for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    /// Positions the cache holds.
    pub capacity: usize,
    /// Positions written.
    pub used: usize,
    /// Bytes of K and V together.
    pub bytes: usize,
    /// Bytes holding valid positions.
    pub used_bytes: usize,
}

/// K and V storage borrowed for one operation, of elements `E` (a [`KvType::Elem`]).
pub struct KvStore<'a, E> {
    /// `[layer, kv_head, position, head_dim]`.
    pub k: &'a mut [E],
    /// `[layer, kv_head, position, head_dim]`.
    pub v: &'a mut [E],
}

/// Bookkeeping of the fixed cache.
#[derive(Clone, Debug)]
pub struct KvCache {
    shape: KvShape,
    used: usize,
    frontier: usize,
}

impl KvCache {
    /// A cache of `shape`, empty. Its storage is `shape.elems()` elements of `shape.dtype` for K
    /// and for V.
    pub fn new(shape: KvShape) -> KvCache {
        KvCache {
            shape,
            used: 0,
            frontier: 0,
        }
    }

    /// The cache's shape.
    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Positions committed.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Positions written, committed or not.
    pub fn frontier(&self) -> usize {
        self.frontier
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.shape.capacity
    }

    /// How full the cache is.
    pub fn info(&self) -> CacheInfo {
        let f = self.shape.dtype.size();
        let bytes = self.shape.bytes().unwrap_or(0);
        let used_bytes = 2 * self.shape.layers * self.shape.row_elems() * self.used * f;
        CacheInfo {
            capacity: self.shape.capacity,
            used: self.used,
            bytes,
            used_bytes,
        }
    }

    /// Refuses storage of another element type than the shape's, or of another length.
    fn check_store<T: KvType>(&self, store_k: usize, store_v: usize) -> Result<(), CacheError> {
        if T::DTYPE != self.shape.dtype {
            return Err(CacheError::Dtype {
                expected: self.shape.dtype,
                found: T::DTYPE,
            });
        }
        let expected = self.shape.elems().unwrap_or(usize::MAX);
        for found in [store_k, store_v] {
            if found != expected {
                return Err(CacheError::Storage { expected, found });
            }
        }
        Ok(())
    }

    /// Writes `n = k.len() / (kv_heads * head_dim)` positions starting at `pos` into `layer`,
    /// rounded to `T` (the shape's dtype). `k` and `v` are `[n, kv_heads, head_dim]` f32 (the
    /// projections' row layout). `pos` must be the next position ([`KvCache::used`]) and
    /// `pos + n` must fit; otherwise nothing is written.
    pub fn write<T: KvType>(
        &mut self,
        store: &mut KvStore<'_, T::Elem>,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), CacheError> {
        self.check_store::<T>(store.k.len(), store.v.len())?;
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::NoSuchLayer {
                layer,
                layers: s.layers,
            });
        }
        let row = s.row_elems();
        if k.len() != v.len() || row == 0 || !k.len().is_multiple_of(row) {
            return Err(CacheError::RowLength {
                expected: row,
                found: k.len().max(v.len()),
            });
        }
        let n = k.len() / row;
        if pos != self.used {
            return Err(CacheError::NotNext {
                pos,
                next: self.used,
            });
        }
        if pos.checked_add(n).is_none_or(|end| end > s.capacity) {
            return Err(CacheError::Full {
                pos,
                n,
                capacity: s.capacity,
            });
        }
        let hd = s.head_dim;
        let layer_base = layer * s.layer_elems();
        for t in 0..n {
            for h in 0..s.kv_heads {
                let dst = layer_base + (h * s.capacity + pos + t) * hd;
                let src = (t * s.kv_heads + h) * hd;
                T::store_row(&k[src..src + hd], &mut store.k[dst..dst + hd]);
                T::store_row(&v[src..src + hd], &mut store.v[dst..dst + hd]);
            }
        }
        self.frontier = self.frontier.max(pos + n);
        Ok(())
    }

    /// Marks everything written so far as committed: the next write starts at the frontier.
    pub fn commit(&mut self) {
        self.used = self.frontier;
    }

    /// Forgets uncommitted writes (after a failed pass).
    pub fn rollback(&mut self) {
        self.frontier = self.used;
    }

    /// Empties the cache. The storage is neither freed nor moved.
    pub fn reset(&mut self) {
        self.used = 0;
        self.frontier = 0;
    }

    /// Copies the first `len` positions of the cache stored at `src` into the one stored at
    /// `dst` (each `[layer, kv_head, position, head_dim]` of the shape's dtype, given as
    /// bytes), every layer and head; allocates nothing. The caller marks them used with
    /// [`KvCache::adopt`].
    pub fn copy_prefix(&self, src: &[u8], dst: &mut [u8], len: usize) -> Result<(), CacheError> {
        let s = self.shape;
        let expected = s.elems().unwrap_or(usize::MAX) * s.dtype.size();
        for found in [src.len(), dst.len()] {
            if found != expected {
                return Err(CacheError::Storage { expected, found });
            }
        }
        if len > s.capacity {
            return Err(CacheError::Full {
                pos: 0,
                n: len,
                capacity: s.capacity,
            });
        }
        let (row, head) = (
            s.head_dim * s.dtype.size(),
            s.capacity * s.head_dim * s.dtype.size(),
        );
        for lh in 0..s.layers * s.kv_heads {
            let at = lh * head;
            dst[at..at + len * row].copy_from_slice(&src[at..at + len * row]);
        }
        Ok(())
    }

    /// Bytes one position takes: K and V of every layer and kv head, in the shape's dtype.
    pub fn row_bytes(&self) -> usize {
        let s = self.shape;
        2 * s.layers * s.row_elems() * s.dtype.size()
    }

    /// Checks that `k` and `v` (a cache's storage, as bytes) fit the shape.
    fn check_bytes(&self, k: usize, v: usize) -> Result<(), CacheError> {
        let s = self.shape;
        let expected = s.elems().unwrap_or(usize::MAX) * s.dtype.size();
        for found in [k, v] {
            if found != expected {
                return Err(CacheError::Storage { expected, found });
            }
        }
        Ok(())
    }

    /// Copies the committed positions `start..start + n` of the cache stored at `k` and `v`
    /// (as bytes) into `dst`, `n` being `dst.len() /` [`KvCache::row_bytes`]: first the K
    /// rows, then the V rows, each `[layer, kv_head, n, head_dim]` of the shape's dtype, the
    /// bits as stored. Allocates nothing; refused (nothing written) if `dst` is not a whole
    /// number of rows or the positions are not all committed.
    pub fn export_rows(
        &self,
        k: &[u8],
        v: &[u8],
        start: usize,
        dst: &mut [u8],
    ) -> Result<(), CacheError> {
        self.check_bytes(k.len(), v.len())?;
        let row = self.row_bytes();
        if row == 0 || !dst.len().is_multiple_of(row) {
            return Err(CacheError::RowLength {
                expected: row,
                found: dst.len(),
            });
        }
        let n = dst.len() / row;
        if start.checked_add(n).is_none_or(|end| end > self.used) {
            return Err(CacheError::ViewPastFrontier {
                len: start.saturating_add(n),
                frontier: self.used,
            });
        }
        let s = self.shape;
        let (pos_bytes, head) = (
            s.head_dim * s.dtype.size(),
            s.capacity * s.head_dim * s.dtype.size(),
        );
        let part = n * pos_bytes;
        let (dk, dv) = dst.split_at_mut(dst.len() / 2);
        for (store, out) in [(k, dk), (v, dv)] {
            for lh in 0..s.layers * s.kv_heads {
                let at = lh * head + start * pos_bytes;
                out[lh * part..(lh + 1) * part].copy_from_slice(&store[at..at + part]);
            }
        }
        Ok(())
    }

    /// Appends the rows in `src` (laid out as [`KvCache::export_rows`] writes them) at the
    /// next positions of the cache stored at `k` and `v`, and commits them; returns how many
    /// positions that was. Allocates nothing; refused (nothing written) if `src` is not a
    /// whole number of rows, or they would not fit, or a pass is under way.
    pub fn import_rows(
        &mut self,
        k: &mut [u8],
        v: &mut [u8],
        src: &[u8],
    ) -> Result<usize, CacheError> {
        self.check_bytes(k.len(), v.len())?;
        let row = self.row_bytes();
        if row == 0 || !src.len().is_multiple_of(row) {
            return Err(CacheError::RowLength {
                expected: row,
                found: src.len(),
            });
        }
        let n = src.len() / row;
        let pos = self.used;
        if self.frontier != self.used {
            return Err(CacheError::NotNext {
                pos,
                next: self.frontier,
            });
        }
        if pos
            .checked_add(n)
            .is_none_or(|end| end > self.shape.capacity)
        {
            return Err(CacheError::Full {
                pos,
                n,
                capacity: self.shape.capacity,
            });
        }
        let s = self.shape;
        let (pos_bytes, head) = (
            s.head_dim * s.dtype.size(),
            s.capacity * s.head_dim * s.dtype.size(),
        );
        let part = n * pos_bytes;
        let (sk, sv) = src.split_at(src.len() / 2);
        for (store, rows) in [(k, sk), (v, sv)] {
            for lh in 0..s.layers * s.kv_heads {
                let at = lh * head + pos * pos_bytes;
                store[at..at + part].copy_from_slice(&rows[lh * part..(lh + 1) * part]);
            }
        }
        self.used = pos + n;
        self.frontier = self.used;
        Ok(n)
    }

    /// Takes `len` positions as committed (copied in by [`KvCache::copy_prefix`]); `len` is
    /// capped at the capacity.
    pub fn adopt(&mut self, len: usize) {
        self.used = len.min(self.shape.capacity);
        self.frontier = self.used;
    }

    /// Keeps only the first `len` committed positions (e.g. to rewind a chat turn).
    pub fn truncate(&mut self, len: usize) {
        self.used = self.used.min(len);
        self.frontier = self.used;
    }

    /// One layer's K and V (each `[kv_heads, capacity, head_dim]` of `T`, the shape's dtype)
    /// for attention over positions `0..len`, where `len` may include this pass's uncommitted
    /// writes.
    #[allow(clippy::type_complexity)]
    pub fn view<'s, T: KvType>(
        &self,
        k: &'s [T::Elem],
        v: &'s [T::Elem],
        layer: usize,
        len: usize,
    ) -> Result<(&'s [T::Elem], &'s [T::Elem]), CacheError> {
        self.check_store::<T>(k.len(), v.len())?;
        if layer >= self.shape.layers {
            return Err(CacheError::NoSuchLayer {
                layer,
                layers: self.shape.layers,
            });
        }
        if len > self.frontier {
            return Err(CacheError::ViewPastFrontier {
                len,
                frontier: self.frontier,
            });
        }
        let lf = self.shape.layer_elems();
        let r = layer * lf..(layer + 1) * lf;
        Ok((&k[r.clone()], &v[r]))
    }

    /// The keys of one kv head at `0..len` (`[len, head_dim]`), from a layer view.
    pub fn head<'s, E>(&self, layer_view: &'s [E], kv_head: usize, len: usize) -> &'s [E] {
        let base = kv_head * self.shape.capacity * self.shape.head_dim;
        &layer_view[base..base + len * self.shape.head_dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenrt_kernels::{Bf16, F16, F32};

    fn shape<T: KvType>() -> KvShape {
        KvShape {
            layers: 2,
            kv_heads: 2,
            capacity: 8,
            head_dim: 4,
            dtype: T::DTYPE,
        }
    }

    fn storage<T: KvType>() -> (Vec<T::Elem>, Vec<T::Elem>) {
        let n = shape::<T>().elems().unwrap();
        (vec![T::Elem::default(); n], vec![T::Elem::default(); n])
    }

    /// The value at (pos, head, dim) of K or V: distinct everywhere, and with a fraction that
    /// bf16 cannot hold at the larger positions (so rounding is exercised).
    fn value(pos: usize, h: usize, d: usize, is_v: bool) -> f32 {
        (pos * 100 + h * 10 + d) as f32 + if is_v { 0.5 } else { 0.0 }
    }

    /// `value` as the cache stores it: rounded to `T`, widened back.
    fn stored<T: KvType>(x: f32) -> f32 {
        T::to_f32(T::from_f32(x))
    }

    /// Rows for `n` positions starting at `pos`.
    fn rows(pos: usize, n: usize, is_v: bool) -> Vec<f32> {
        let mut r = Vec::new();
        for t in 0..n {
            for h in 0..2 {
                for d in 0..4 {
                    r.push(value(pos + t, h, d, is_v));
                }
            }
        }
        r
    }

    /// Runs `$check::<T>()` for every KV type.
    macro_rules! every_dtype {
        ($($name:ident => $check:ident;)*) => {
            $(
                #[test]
                fn $name() {
                    $check::<F32>();
                    $check::<Bf16>();
                    $check::<F16>();
                }
            )*
        };
    }

    every_dtype! {
        create => check_create;
        prefill_write_then_view => check_prefill_write_then_view;
        step_writes_one_position_at_a_time => check_step_writes;
        refused_writes_change_nothing => check_refused_writes;
        shape_is_stable_across_prompts_and_resets => check_shape_is_stable;
        rollback_and_truncate => check_rollback_and_truncate;
        export_then_import_is_the_same_bits => check_export_import;
    }

    fn check_create<T: KvType>() {
        let c = KvCache::new(shape::<T>());
        assert_eq!(c.used(), 0);
        assert_eq!(c.capacity(), 8);
        assert_eq!(shape::<T>().elems(), Some(2 * 2 * 8 * 4));
        let info = c.info();
        // K and V, 128 elements each, 4 or 2 bytes
        assert_eq!(info.bytes, 2 * 128 * T::DTYPE.size());
        assert_eq!(info.used_bytes, 0);
    }

    fn check_prefill_write_then_view<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let mut c = KvCache::new(shape::<T>());
        for layer in 0..2 {
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            c.write::<T>(&mut st, layer, 0, &rows(0, 5, false), &rows(0, 5, true))
                .unwrap();
        }
        assert_eq!(c.frontier(), 5);
        c.commit();
        assert_eq!(c.used(), 5);
        let (lk, lv) = c.view::<T>(&k, &v, 1, 5).unwrap();
        for h in 0..2 {
            let keys = c.head(lk, h, 5);
            let vals = c.head(lv, h, 5);
            assert_eq!(keys.len(), 5 * 4);
            for p in 0..5 {
                for d in 0..4 {
                    assert_eq!(
                        T::to_f32(keys[p * 4 + d]),
                        stored::<T>(value(p, h, d, false))
                    );
                    assert_eq!(
                        T::to_f32(vals[p * 4 + d]),
                        stored::<T>(value(p, h, d, true))
                    );
                }
            }
        }
        assert_eq!(c.info().used_bytes, 2 * 2 * 2 * 4 * 5 * T::DTYPE.size());
    }

    fn check_step_writes<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let mut c = KvCache::new(shape::<T>());
        for pos in 0..8 {
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            for layer in 0..2 {
                c.write::<T>(
                    &mut st,
                    layer,
                    pos,
                    &rows(pos, 1, false),
                    &rows(pos, 1, true),
                )
                .unwrap();
            }
            c.commit();
            assert_eq!(c.used(), pos + 1);
        }
        let (lk, _) = c.view::<T>(&k, &v, 0, 8).unwrap();
        assert_eq!(
            T::to_f32(c.head(lk, 1, 8)[7 * 4 + 3]),
            stored::<T>((700 + 10 + 3) as f32)
        );
    }

    fn check_refused_writes<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let mut c = KvCache::new(shape::<T>());
        let mut st = KvStore {
            k: &mut k,
            v: &mut v,
        };
        c.write::<T>(&mut st, 0, 0, &rows(0, 6, false), &rows(0, 6, true))
            .unwrap();
        c.commit();
        let before = (st.k.to_vec(), st.v.to_vec());
        // past capacity
        let e = c
            .write::<T>(&mut st, 0, 6, &rows(6, 3, false), &rows(6, 3, true))
            .unwrap_err();
        assert_eq!(
            e,
            CacheError::Full {
                pos: 6,
                n: 3,
                capacity: 8
            }
        );
        // not the next position (a gap and a rewrite)
        assert!(matches!(
            c.write::<T>(&mut st, 0, 7, &rows(7, 1, false), &rows(7, 1, true)),
            Err(CacheError::NotNext { .. })
        ));
        assert!(matches!(
            c.write::<T>(&mut st, 0, 2, &rows(2, 1, false), &rows(2, 1, true)),
            Err(CacheError::NotNext { .. })
        ));
        // bad layer, bad row length
        assert!(matches!(
            c.write::<T>(&mut st, 2, 6, &rows(6, 1, false), &rows(6, 1, true)),
            Err(CacheError::NoSuchLayer { .. })
        ));
        assert!(matches!(
            c.write::<T>(&mut st, 0, 6, &[1.0; 3], &[1.0; 3]),
            Err(CacheError::RowLength { .. })
        ));
        assert_eq!((st.k.to_vec(), st.v.to_vec()), before);
        assert_eq!((c.used(), c.frontier()), (6, 6));
        // view past what was written
        assert!(matches!(
            c.view::<T>(&k, &v, 0, 7),
            Err(CacheError::ViewPastFrontier { .. })
        ));
        // wrong storage size
        let mut small = vec![T::Elem::default(); 3];
        let mut small_v = vec![T::Elem::default(); 3];
        let mut st = KvStore {
            k: &mut small,
            v: &mut small_v,
        };
        assert!(matches!(
            c.write::<T>(&mut st, 0, 6, &rows(6, 1, false), &rows(6, 1, true)),
            Err(CacheError::Storage { .. })
        ));
        // storage of another element type (of the right length)
        let n = shape::<T>().elems().unwrap();
        let other = if T::DTYPE == Dtype::BF16 {
            let (mut k16, mut v16) = (vec![0u16; n], vec![0u16; n]);
            let mut st = KvStore {
                k: &mut k16,
                v: &mut v16,
            };
            let e = c.write::<F16>(&mut st, 0, 6, &rows(6, 1, false), &rows(6, 1, true));
            assert!(
                k16.iter().chain(&v16).all(|&x| x == 0),
                "a refused write wrote"
            );
            e
        } else {
            let (mut k16, mut v16) = (vec![0u16; n], vec![0u16; n]);
            let mut st = KvStore {
                k: &mut k16,
                v: &mut v16,
            };
            c.write::<Bf16>(&mut st, 0, 6, &rows(6, 1, false), &rows(6, 1, true))
        };
        let e = other.unwrap_err();
        assert!(matches!(e, CacheError::Dtype { expected, .. } if expected == T::DTYPE));
        assert!(e.to_string().contains("cache"), "{e}");
        assert_eq!((c.used(), c.frontier()), (6, 6));
    }

    fn check_shape_is_stable<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        let mut c = KvCache::new(shape::<T>());
        for round in 0..50 {
            let n = 1 + round % 8;
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            for layer in 0..2 {
                c.write::<T>(&mut st, layer, 0, &rows(0, n, false), &rows(0, n, true))
                    .unwrap();
            }
            c.commit();
            assert_eq!(c.info().capacity, 8);
            assert_eq!(
                c.info().bytes,
                2 * shape::<T>().elems().unwrap() * T::DTYPE.size()
            );
            c.reset();
            assert_eq!(c.used(), 0);
        }
        assert_eq!((k.as_ptr(), v.as_ptr()), (kp, vp));
        assert_eq!(k.len(), shape::<T>().elems().unwrap());
    }

    fn check_rollback_and_truncate<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let mut c = KvCache::new(shape::<T>());
        let mut st = KvStore {
            k: &mut k,
            v: &mut v,
        };
        c.write::<T>(&mut st, 0, 0, &rows(0, 4, false), &rows(0, 4, true))
            .unwrap();
        c.rollback();
        assert_eq!(c.frontier(), 0);
        c.write::<T>(&mut st, 0, 0, &rows(0, 4, false), &rows(0, 4, true))
            .unwrap();
        c.commit();
        c.truncate(2);
        assert_eq!(c.used(), 2);
        // position 2 is written again, with other values, over the truncated ones
        c.write::<T>(&mut st, 0, 2, &rows(5, 1, false), &rows(5, 1, true))
            .unwrap();
        c.commit();
        let (lk, lv) = c.view::<T>(&k, &v, 0, 3).unwrap();
        assert_eq!(
            T::to_f32(c.head(lk, 1, 3)[2 * 4 + 1]),
            stored::<T>(value(5, 1, 1, false))
        );
        assert_eq!(
            T::to_f32(c.head(lv, 0, 3)[4 + 2]),
            stored::<T>(value(1, 0, 2, true))
        );
    }

    fn check_export_import<T: KvType>() {
        let (mut k, mut v) = storage::<T>();
        let mut c = KvCache::new(shape::<T>());
        for layer in 0..2 {
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            c.write::<T>(&mut st, layer, 0, &rows(0, 6, false), &rows(0, 6, true))
                .unwrap();
        }
        c.commit();
        let row = c.row_bytes();
        assert_eq!(row, 2 * 2 * 2 * 4 * T::DTYPE.size());
        let bytes = |x: &[T::Elem]| bytemuck::cast_slice::<T::Elem, u8>(x).to_vec();
        let (kb, vb) = (bytes(&k), bytes(&v));
        // positions 2..5, into another cache that already holds two positions of its own
        let mut rows_out = vec![0u8; 3 * row];
        c.export_rows(&kb, &vb, 2, &mut rows_out).unwrap();
        let (mut k2, mut v2) = (vec![0u8; kb.len()], vec![0u8; vb.len()]);
        let mut d = KvCache::new(shape::<T>());
        let mut first = vec![0u8; 2 * row];
        c.export_rows(&kb, &vb, 0, &mut first).unwrap();
        assert_eq!(d.import_rows(&mut k2, &mut v2, &first).unwrap(), 2);
        assert_eq!(d.import_rows(&mut k2, &mut v2, &rows_out).unwrap(), 3);
        assert_eq!((d.used(), d.frontier()), (5, 5));
        // every stored bit of positions 0..5 is the source's
        let s = shape::<T>();
        let pos = s.head_dim * T::DTYPE.size();
        for lh in 0..s.layers * s.kv_heads {
            let at = lh * s.capacity * pos;
            assert_eq!(k2[at..at + 5 * pos], kb[at..at + 5 * pos]);
            assert_eq!(v2[at..at + 5 * pos], vb[at..at + 5 * pos]);
        }
        // refused: past what is committed, a partial row, past the capacity
        assert!(matches!(
            c.export_rows(&kb, &vb, 5, &mut vec![0u8; 2 * row]),
            Err(CacheError::ViewPastFrontier { .. })
        ));
        assert!(matches!(
            c.export_rows(&kb, &vb, 0, &mut vec![0u8; row + 1]),
            Err(CacheError::RowLength { .. })
        ));
        let before = (k2.clone(), v2.clone());
        let mut four = vec![0u8; 4 * row];
        c.export_rows(&kb, &vb, 0, &mut four).unwrap();
        assert!(matches!(
            d.import_rows(&mut k2, &mut v2, &four),
            Err(CacheError::Full {
                pos: 5,
                n: 4,
                capacity: 8
            })
        ));
        assert_eq!((k2, v2), before);
        assert_eq!(d.used(), 5);
    }
}
