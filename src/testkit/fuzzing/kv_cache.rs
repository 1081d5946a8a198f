//! KV cache programs against a plain model of the cache.

use super::*;
use qwenrt_kernels::{Bf16, KvType, F16, F32};

/// A cache shape (each dimension reduced to a small range, zero included), its element type
/// (`dtype % 3`: f32, bf16, f16) and operations.
#[derive(Arbitrary, Clone, Debug)]
pub struct KvProgram {
    pub layers: u8,
    pub kv_heads: u8,
    pub capacity: u8,
    pub head_dim: u8,
    pub dtype: u8,
    pub ops: Vec<KvOp>,
}

/// A position or length argument.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Pos {
    /// The committed length (`used`): the one position a write may start at.
    Used,
    Frontier,
    At(u8),
    /// `usize::MAX - x`, to probe overflow.
    Huge(u8),
}

/// One cache operation.
#[derive(Arbitrary, Clone, Debug)]
pub enum KvOp {
    /// A prefill write of `n` positions; `k_extra`/`v_extra` (when non-zero) make the rows
    /// the wrong length.
    Prefill {
        layer: u8,
        pos: Pos,
        n: u8,
        k_extra: i8,
        v_extra: i8,
    },
    /// A decode step's write of one position.
    Step {
        layer: u8,
        pos: Pos,
    },
    /// A write into storage of the wrong size (`delta` elements off, never zero).
    WrongStorage {
        layer: u8,
        pos: Pos,
        delta: i8,
    },
    /// A write into storage of the right length but another element type.
    WrongType {
        layer: u8,
        pos: Pos,
    },
    View {
        layer: u8,
        len: Pos,
    },
    Commit,
    Rollback,
    Reset,
    Truncate(u8),
}

/// The reference: K and V as `[layer][kv_head][position][head_dim]` nested vectors.
struct KvModel {
    k: Vec<Vec<Vec<Vec<f32>>>>,
    v: Vec<Vec<Vec<Vec<f32>>>>,
    used: usize,
    frontier: usize,
}

impl KvModel {
    fn flat(x: &[Vec<Vec<Vec<f32>>>]) -> Vec<f32> {
        x.iter().flatten().flatten().flatten().copied().collect()
    }
}

/// Which refusals a write deserves (empty: it must succeed).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Refusal {
    Storage,
    NoSuchLayer,
    RowLength,
    NotNext,
    Full,
}

fn refusal_of(e: &CacheError) -> Option<Refusal> {
    Some(match e {
        CacheError::Storage { .. } => Refusal::Storage,
        CacheError::NoSuchLayer { .. } => Refusal::NoSuchLayer,
        CacheError::RowLength { .. } => Refusal::RowLength,
        CacheError::NotNext { .. } => Refusal::NotNext,
        CacheError::Full { .. } => Refusal::Full,
        CacheError::Dtype { .. } => Refusal::Storage,
        CacheError::ViewPastFrontier { .. } => return None,
    })
}

/// Decodes a [`KvProgram`] from raw bytes ([`KvProgram::from_bytes`]) and runs it.
pub fn kv_cache_ops(data: &[u8]) {
    run_kv_program(&KvProgram::from_bytes(data));
}

impl KvProgram {
    /// Five shape bytes, then operations for as long as the bytes last (densely: random
    /// bytes give long programs, unlike `Vec`'s coin-flip continuation).
    pub fn from_bytes(data: &[u8]) -> KvProgram {
        let mut u = Unstructured::new(data);
        let mut byte = || u8::arbitrary(&mut u).unwrap_or(0);
        let (layers, kv_heads, capacity, head_dim) = (byte(), byte(), byte(), byte());
        let dtype = byte();
        KvProgram {
            layers,
            kv_heads,
            capacity,
            head_dim,
            dtype,
            ops: dense(&mut u),
        }
    }
}

/// As many `T`s as the bytes give, until they run out (or one fails to decode).
pub fn dense<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Vec<T> {
    let mut items = Vec::new();
    while !u.is_empty() {
        match T::arbitrary(u) {
            Ok(t) => items.push(t),
            Err(_) => break,
        }
    }
    items
}

/// Runs `p` against [`KvCache`] and the reference model, checking after every operation that
/// the storage and bookkeeping agree, and that each write is refused exactly when it is out of
/// bounds or out of order (and then writes nothing).
pub fn run_kv_program(p: &KvProgram) {
    match p.dtype % 3 {
        0 => run_kv_program_of::<F32>(p),
        1 => run_kv_program_of::<Bf16>(p),
        _ => run_kv_program_of::<F16>(p),
    }
}

/// The `c`-th value written: exactly representable in f32, bf16 and f16 (7 fraction bits,
/// magnitudes 2^-7..2^9), so the model holds what every cache type must store, and distinct
/// from the 2047 values written before and after it (a misplaced element shows).
fn kv_value(c: usize) -> f32 {
    f32::from_bits(0x3c00_0000 | (((c % 2048) as u32) << 16))
}

fn run_kv_program_of<T: KvType>(p: &KvProgram) {
    let shape = KvShape {
        layers: usize::from(p.layers % 4),
        kv_heads: usize::from(p.kv_heads % 4),
        capacity: usize::from(p.capacity % 17),
        head_dim: usize::from(p.head_dim % 5),
        dtype: T::DTYPE,
    };
    let floats = shape.elems().expect("small shapes do not overflow");
    let zero = T::Elem::default();
    let (mut k, mut v) = (vec![zero; floats], vec![zero; floats]);
    let mut cache = KvCache::new(shape);
    let zeros = || vec![vec![vec![0f32; shape.head_dim]; shape.capacity]; shape.kv_heads];
    let mut model = KvModel {
        k: (0..shape.layers).map(|_| zeros()).collect(),
        v: (0..shape.layers).map(|_| zeros()).collect(),
        used: 0,
        frontier: 0,
    };
    let row = shape.row_elems();
    // Every write carries fresh values, so a misplaced row cannot go unnoticed.
    let mut stamp = 0usize;
    let resolve = |pos: Pos, cache: &KvCache| match pos {
        Pos::Used => cache.used(),
        Pos::Frontier => cache.frontier(),
        Pos::At(x) => usize::from(x),
        Pos::Huge(x) => usize::MAX - usize::from(x),
    };

    for op in p.ops.iter().take(256) {
        match *op {
            KvOp::Prefill { .. }
            | KvOp::Step { .. }
            | KvOp::WrongStorage { .. }
            | KvOp::WrongType { .. } => {
                let wrong_type = matches!(op, KvOp::WrongType { .. });
                let (layer, pos, n, k_extra, v_extra, store_delta) = match *op {
                    KvOp::Prefill {
                        layer,
                        pos,
                        n,
                        k_extra,
                        v_extra,
                    } => (layer, pos, usize::from(n % 20), k_extra, v_extra, 0),
                    KvOp::Step { layer, pos } => (layer, pos, 1, 0, 0, 0),
                    KvOp::WrongStorage { layer, pos, delta } => {
                        (layer, pos, 1, 0, 0, if delta == 0 { 1 } else { delta })
                    }
                    KvOp::WrongType { layer, pos } => (layer, pos, 1, 0, 0, 0),
                    _ => unreachable!(),
                };
                let layer = usize::from(layer % 5);
                let pos = resolve(pos, &cache);
                let len = |extra: i8| (n * row).saturating_add_signed(isize::from(extra));
                let (k_len, v_len) = (len(k_extra), len(v_extra));
                let rows: Vec<f32> = (0..k_len.max(v_len)).map(|i| kv_value(stamp + i)).collect();
                stamp += k_len.max(v_len);
                let (k_rows, v_rows) = (&rows[..k_len], &rows[..v_len]);

                let mut expect = Vec::new();
                if store_delta != 0 || wrong_type {
                    expect.push(Refusal::Storage);
                }
                if layer >= shape.layers {
                    expect.push(Refusal::NoSuchLayer);
                }
                let rows_ok = k_len == v_len && row != 0 && k_len % row == 0;
                if !rows_ok {
                    expect.push(Refusal::RowLength);
                }
                if pos != model.used {
                    expect.push(Refusal::NotNext);
                }
                let n_written = k_len.checked_div(row).unwrap_or(0);
                if rows_ok
                    && pos
                        .checked_add(n_written)
                        .is_none_or(|e| e > shape.capacity)
                {
                    expect.push(Refusal::Full);
                }

                let result = if wrong_type {
                    // the right length of another type: f32 storage for a 16-bit cache, bf16 for
                    // an f32 one
                    let (r, untouched) = if T::DTYPE == Dtype::F32 {
                        let (mut sk, mut sv) = (vec![0u16; floats], vec![0u16; floats]);
                        let mut st = KvStore {
                            k: &mut sk,
                            v: &mut sv,
                        };
                        let r = cache.write::<Bf16>(&mut st, layer, pos, k_rows, v_rows);
                        (r, sk.iter().chain(&sv).all(|&x| x == 0))
                    } else {
                        let (mut sk, mut sv) = (vec![0f32; floats], vec![0f32; floats]);
                        let mut st = KvStore {
                            k: &mut sk,
                            v: &mut sv,
                        };
                        let r = cache.write::<F32>(&mut st, layer, pos, k_rows, v_rows);
                        (r, sk.iter().chain(&sv).all(|&x| x == 0.0))
                    };
                    assert!(untouched, "a refused write touched the storage");
                    r
                } else if store_delta != 0 {
                    let wrong = match floats.saturating_add_signed(isize::from(store_delta)) {
                        w if w == floats => floats + 1,
                        w => w,
                    };
                    let (mut sk, mut sv) = (vec![zero; wrong], vec![zero; wrong]);
                    let r = cache.write::<T>(
                        &mut KvStore {
                            k: &mut sk,
                            v: &mut sv,
                        },
                        layer,
                        pos,
                        k_rows,
                        v_rows,
                    );
                    assert!(
                        sk.iter().chain(&sv).all(|&x| x == zero),
                        "a refused write touched the storage"
                    );
                    r
                } else {
                    cache.write::<T>(
                        &mut KvStore {
                            k: &mut k,
                            v: &mut v,
                        },
                        layer,
                        pos,
                        k_rows,
                        v_rows,
                    )
                };
                match result {
                    Ok(()) => {
                        assert!(
                            expect.is_empty(),
                            "write {op:?} accepted; expected {expect:?}"
                        );
                        let hd = shape.head_dim;
                        for t in 0..n_written {
                            for h in 0..shape.kv_heads {
                                let src = (t * shape.kv_heads + h) * hd;
                                model.k[layer][h][pos + t].copy_from_slice(&k_rows[src..src + hd]);
                                model.v[layer][h][pos + t].copy_from_slice(&v_rows[src..src + hd]);
                            }
                        }
                        model.frontier = model.frontier.max(pos + n_written);
                    }
                    Err(e) => {
                        let r = refusal_of(&e);
                        assert!(
                            r.is_some_and(|r| expect.contains(&r)),
                            "write {op:?} refused with {e:?}; expected {expect:?}"
                        );
                    }
                }
            }
            KvOp::View { layer, len } => {
                let layer = usize::from(layer % 5);
                let len = resolve(len, &cache);
                match cache.view::<T>(&k, &v, layer, len) {
                    Ok((lk, lv)) => {
                        assert!(layer < shape.layers && len <= model.frontier);
                        assert_eq!(lk.len(), shape.layer_elems());
                        assert_eq!(lv.len(), shape.layer_elems());
                        let wide =
                            |x: &[T::Elem]| x.iter().map(|&e| T::to_f32(e)).collect::<Vec<f32>>();
                        for h in 0..shape.kv_heads {
                            let want_k: Vec<f32> =
                                model.k[layer][h][..len].iter().flatten().copied().collect();
                            let want_v: Vec<f32> =
                                model.v[layer][h][..len].iter().flatten().copied().collect();
                            assert_eq!(wide(cache.head(lk, h, len)), want_k);
                            assert_eq!(wide(cache.head(lv, h, len)), want_v);
                        }
                    }
                    Err(CacheError::NoSuchLayer { .. }) => assert!(layer >= shape.layers),
                    Err(CacheError::ViewPastFrontier { .. }) => assert!(len > model.frontier),
                    Err(e) => panic!("view refused with {e:?}"),
                }
            }
            KvOp::Commit => {
                cache.commit();
                model.used = model.frontier;
            }
            KvOp::Rollback => {
                cache.rollback();
                model.frontier = model.used;
            }
            KvOp::Reset => {
                cache.reset();
                model.used = 0;
                model.frontier = 0;
            }
            KvOp::Truncate(len) => {
                cache.truncate(usize::from(len));
                model.used = model.used.min(usize::from(len));
                model.frontier = model.used;
            }
        }
        assert_eq!(
            (cache.used(), cache.frontier()),
            (model.used, model.frontier),
            "bookkeeping after {op:?}"
        );
        assert!(cache.frontier() <= shape.capacity);
        let wide = |x: &[T::Elem]| x.iter().map(|&e| T::to_f32(e)).collect::<Vec<f32>>();
        assert_eq!(wide(&k), KvModel::flat(&model.k), "K storage after {op:?}");
        assert_eq!(wide(&v), KvModel::flat(&model.v), "V storage after {op:?}");
        let info = cache.info();
        let size = T::DTYPE.size();
        assert_eq!(info.bytes, 2 * floats * size);
        assert_eq!(info.used_bytes, 2 * shape.layers * row * model.used * size);
    }
}
