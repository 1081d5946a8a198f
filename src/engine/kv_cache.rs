//! The fixed KV cache: sized once, never grown or moved.
//!
//! Storage is `[layer, kv_head, position, head_dim]` for K and again for V, carved from the
//! session arena (or any `&mut [f32]` of [`KvShape::floats`] for standalone use). [`KvCache`]
//! holds only the bookkeeping, so it cannot reallocate anything:
//! - `used`: positions committed by earlier forward passes;
//! - `frontier`: positions written so far in the current pass (`used <= frontier`).
//!
//! A pass writes positions `used..used+n` in every layer ([`KvCache::write`]), reads the valid
//! prefix `0..frontier` ([`KvCache::view`]), and then [`KvCache::commit`]s. A write that is past
//! capacity or not at the next position is an error and writes nothing.

use std::fmt;

/// The cache's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Positions the cache holds.
    pub capacity: usize,
    /// Floats per head.
    pub head_dim: usize,
}

impl KvShape {
    /// Floats in one of K or V, or `None` on overflow.
    pub fn floats(&self) -> Option<usize> {
        self.layers
            .checked_mul(self.kv_heads)?
            .checked_mul(self.capacity)?
            .checked_mul(self.head_dim)
    }

    /// Floats of one layer of K (or V).
    pub fn layer_floats(&self) -> usize {
        self.kv_heads * self.capacity * self.head_dim
    }

    /// Floats of one position of one layer (all kv heads).
    pub fn row_floats(&self) -> usize {
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
        /// Floats the shape needs.
        expected: usize,
        /// Floats given.
        found: usize,
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
                write!(f, "KV cache storage has {found} floats; the shape needs {expected}")
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

/// K and V storage borrowed for one operation.
pub struct KvStore<'a> {
    /// `[layer, kv_head, position, head_dim]`.
    pub k: &'a mut [f32],
    /// `[layer, kv_head, position, head_dim]`.
    pub v: &'a mut [f32],
}

/// Bookkeeping of the fixed cache.
#[derive(Clone, Debug)]
pub struct KvCache {
    shape: KvShape,
    used: usize,
    frontier: usize,
}

impl KvCache {
    /// A cache of `shape`, empty. Its storage is `shape.floats()` floats for K and for V.
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
        let f = std::mem::size_of::<f32>();
        let bytes = 2 * self.shape.floats().unwrap_or(0) * f;
        let used_bytes = 2 * self.shape.layers * self.shape.row_floats() * self.used * f;
        CacheInfo {
            capacity: self.shape.capacity,
            used: self.used,
            bytes,
            used_bytes,
        }
    }

    fn check_store(&self, store_k: usize, store_v: usize) -> Result<(), CacheError> {
        let expected = self.shape.floats().unwrap_or(usize::MAX);
        for found in [store_k, store_v] {
            if found != expected {
                return Err(CacheError::Storage { expected, found });
            }
        }
        Ok(())
    }

    /// Writes `n = k.len() / (kv_heads * head_dim)` positions starting at `pos` into `layer`.
    /// `k` and `v` are `[n, kv_heads, head_dim]` (the projections' row layout). `pos` must be the
    /// next position ([`KvCache::used`]) and `pos + n` must fit; otherwise nothing is written.
    pub fn write(
        &mut self,
        store: &mut KvStore<'_>,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), CacheError> {
        self.check_store(store.k.len(), store.v.len())?;
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::NoSuchLayer {
                layer,
                layers: s.layers,
            });
        }
        let row = s.row_floats();
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
        let layer_base = layer * s.layer_floats();
        for t in 0..n {
            for h in 0..s.kv_heads {
                let dst = layer_base + (h * s.capacity + pos + t) * hd;
                let src = (t * s.kv_heads + h) * hd;
                store.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                store.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
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

    /// Keeps only the first `len` committed positions (e.g. to rewind a chat turn).
    pub fn truncate(&mut self, len: usize) {
        self.used = self.used.min(len);
        self.frontier = self.used;
    }

    /// One layer's K and V (each `[kv_heads, capacity, head_dim]`) for attention over positions
    /// `0..len`, where `len` may include this pass's uncommitted writes.
    pub fn view<'s>(
        &self,
        k: &'s [f32],
        v: &'s [f32],
        layer: usize,
        len: usize,
    ) -> Result<(&'s [f32], &'s [f32]), CacheError> {
        self.check_store(k.len(), v.len())?;
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
        let lf = self.shape.layer_floats();
        let r = layer * lf..(layer + 1) * lf;
        Ok((&k[r.clone()], &v[r]))
    }

    /// The keys of one kv head at `0..len` (`[len, head_dim]`), from a layer view.
    pub fn head<'s>(&self, layer_view: &'s [f32], kv_head: usize, len: usize) -> &'s [f32] {
        let base = kv_head * self.shape.capacity * self.shape.head_dim;
        &layer_view[base..base + len * self.shape.head_dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape {
        layers: 2,
        kv_heads: 2,
        capacity: 8,
        head_dim: 4,
    };

    fn storage() -> (Vec<f32>, Vec<f32>) {
        let n = SHAPE.floats().unwrap();
        (vec![0.0; n], vec![0.0; n])
    }

    /// Rows for `n` positions starting at `pos`: value encodes (pos, head, dim, is_v).
    fn rows(pos: usize, n: usize, is_v: bool) -> Vec<f32> {
        let mut r = Vec::new();
        for t in 0..n {
            for h in 0..SHAPE.kv_heads {
                for d in 0..SHAPE.head_dim {
                    r.push(((pos + t) * 100 + h * 10 + d) as f32 + if is_v { 0.5 } else { 0.0 });
                }
            }
        }
        r
    }

    #[test]
    fn create() {
        let c = KvCache::new(SHAPE);
        assert_eq!(c.used(), 0);
        assert_eq!(c.capacity(), 8);
        assert_eq!(SHAPE.floats(), Some(2 * 2 * 8 * 4));
        let info = c.info();
        assert_eq!(info.bytes, 2 * 128 * 4);
        assert_eq!(info.used_bytes, 0);
    }

    #[test]
    fn prefill_write_then_view() {
        let (mut k, mut v) = storage();
        let mut c = KvCache::new(SHAPE);
        for layer in 0..2 {
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            c.write(&mut st, layer, 0, &rows(0, 5, false), &rows(0, 5, true))
                .unwrap();
        }
        assert_eq!(c.frontier(), 5);
        c.commit();
        assert_eq!(c.used(), 5);
        let (lk, lv) = c.view(&k, &v, 1, 5).unwrap();
        for h in 0..2 {
            let keys = c.head(lk, h, 5);
            let vals = c.head(lv, h, 5);
            assert_eq!(keys.len(), 5 * 4);
            for p in 0..5 {
                for d in 0..4 {
                    assert_eq!(keys[p * 4 + d], (p * 100 + h * 10 + d) as f32);
                    assert_eq!(vals[p * 4 + d], (p * 100 + h * 10 + d) as f32 + 0.5);
                }
            }
        }
        assert_eq!(c.info().used_bytes, 2 * 2 * 2 * 4 * 5 * 4);
    }

    #[test]
    fn step_writes_one_position_at_a_time() {
        let (mut k, mut v) = storage();
        let mut c = KvCache::new(SHAPE);
        for pos in 0..8 {
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            for layer in 0..2 {
                c.write(
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
        let (lk, _) = c.view(&k, &v, 0, 8).unwrap();
        assert_eq!(c.head(lk, 1, 8)[7 * 4 + 3], (700 + 10 + 3) as f32);
    }

    #[test]
    fn refused_writes_change_nothing() {
        let (mut k, mut v) = storage();
        let mut c = KvCache::new(SHAPE);
        let mut st = KvStore {
            k: &mut k,
            v: &mut v,
        };
        c.write(&mut st, 0, 0, &rows(0, 6, false), &rows(0, 6, true))
            .unwrap();
        c.commit();
        let before = (st.k.to_vec(), st.v.to_vec());
        // past capacity
        let e = c
            .write(&mut st, 0, 6, &rows(6, 3, false), &rows(6, 3, true))
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
            c.write(&mut st, 0, 7, &rows(7, 1, false), &rows(7, 1, true)),
            Err(CacheError::NotNext { .. })
        ));
        assert!(matches!(
            c.write(&mut st, 0, 2, &rows(2, 1, false), &rows(2, 1, true)),
            Err(CacheError::NotNext { .. })
        ));
        // bad layer, bad row length
        assert!(matches!(
            c.write(&mut st, 2, 6, &rows(6, 1, false), &rows(6, 1, true)),
            Err(CacheError::NoSuchLayer { .. })
        ));
        assert!(matches!(
            c.write(&mut st, 0, 6, &[1.0; 3], &[1.0; 3]),
            Err(CacheError::RowLength { .. })
        ));
        assert_eq!((st.k.to_vec(), st.v.to_vec()), before);
        assert_eq!((c.used(), c.frontier()), (6, 6));
        // view past what was written
        assert!(matches!(
            c.view(&k, &v, 0, 7),
            Err(CacheError::ViewPastFrontier { .. })
        ));
        // wrong storage size
        let mut small = vec![0.0; 3];
        let mut small_v = vec![0.0; 3];
        let mut st = KvStore {
            k: &mut small,
            v: &mut small_v,
        };
        assert!(matches!(
            c.write(&mut st, 0, 6, &rows(6, 1, false), &rows(6, 1, true)),
            Err(CacheError::Storage { .. })
        ));
    }

    #[test]
    fn shape_is_stable_across_prompts_and_resets() {
        let (mut k, mut v) = storage();
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        let mut c = KvCache::new(SHAPE);
        for round in 0..50 {
            let n = 1 + round % 8;
            let mut st = KvStore {
                k: &mut k,
                v: &mut v,
            };
            for layer in 0..2 {
                c.write(&mut st, layer, 0, &rows(0, n, false), &rows(0, n, true))
                    .unwrap();
            }
            c.commit();
            assert_eq!(c.info().capacity, 8);
            assert_eq!(c.info().bytes, 2 * SHAPE.floats().unwrap() * 4);
            c.reset();
            assert_eq!(c.used(), 0);
        }
        assert_eq!((k.as_ptr(), v.as_ptr()), (kp, vp));
        assert_eq!(k.len(), SHAPE.floats().unwrap());
    }

    #[test]
    fn rollback_and_truncate() {
        let (mut k, mut v) = storage();
        let mut c = KvCache::new(SHAPE);
        let mut st = KvStore {
            k: &mut k,
            v: &mut v,
        };
        c.write(&mut st, 0, 0, &rows(0, 4, false), &rows(0, 4, true))
            .unwrap();
        c.rollback();
        assert_eq!(c.frontier(), 0);
        c.write(&mut st, 0, 0, &rows(0, 4, false), &rows(0, 4, true))
            .unwrap();
        c.commit();
        c.truncate(2);
        assert_eq!(c.used(), 2);
        c.write(&mut st, 0, 2, &rows(2, 1, false), &rows(2, 1, true))
            .unwrap();
    }
}
