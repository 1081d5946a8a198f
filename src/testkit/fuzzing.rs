//! Harnesses for untrusted input, shared by the cargo-fuzz targets in `fuzz/` and by the
//! seeded-random tests in `tests/fuzz_harnesses.rs`, so plain `cargo test` runs the same checks
//! without a fuzzer. Each harness panics only when the code under test breaks its contract.
//!
//! Overview:
//! - [`kv_cache_ops`] / [`run_kv_program`]: [`KvProgram`]s (create, prefill and step writes,
//!   views, commit, rollback, reset, truncate over small shapes) against a plain nested-`Vec`
//!   model of the cache.
//! - [`safetensors_load`]: raw bytes, and [`StMutation`]s of the tiny fixture model and its
//!   config, through the validating loader ([`Weights::from_bytes`]) and, when that accepts
//!   them, one forward pass.
//! - [`config_parse`]: raw bytes and structured [`ConfigSizes`] through [`Config::from_json`],
//!   then the arena plan of every accepted config.
//! - [`gguf_read`]: raw bytes, and [`GgufMutation`]s of [`tiny_gguf`], through the GGUF reader,
//!   the dequantizers and the converter's metadata readers.
//! - [`tokenizer_roundtrip`]: text through encode and decode of the real tokenizer
//!   ([`tokenizer`], from the committed copy of the default model's tokenizer.json).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use qwenrt_kernels::Dtype;

use crate::engine::kv_cache::{CacheError, KvCache, KvShape, KvStore};
use crate::engine::sampler::{Sampler, SamplerParams};
use crate::engine::session::{Session, SessionOptions};
use crate::model::config::Config;
use crate::model::gguf::{GgmlType, GgufFile, Value, ValueType};
use crate::model::weights::{LoadError, Weights};
use crate::testkit::gguf::{array_of, GgufBuilder};
use crate::text::tokenizer::Tokenizer;

/// The repository's `tests/fixtures` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---------------------------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------------------------

/// A cache shape (each dimension reduced to a small range, zero included) and operations.
#[derive(Arbitrary, Clone, Debug)]
pub struct KvProgram {
    pub layers: u8,
    pub kv_heads: u8,
    pub capacity: u8,
    pub head_dim: u8,
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
    /// A write into storage of the wrong size (`delta` floats off, never zero).
    WrongStorage {
        layer: u8,
        pos: Pos,
        delta: i8,
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
        CacheError::ViewPastFrontier { .. } => return None,
    })
}

/// Decodes a [`KvProgram`] from raw bytes ([`KvProgram::from_bytes`]) and runs it.
pub fn kv_cache_ops(data: &[u8]) {
    run_kv_program(&KvProgram::from_bytes(data));
}

impl KvProgram {
    /// Four shape bytes, then operations for as long as the bytes last (densely: random
    /// bytes give long programs, unlike `Vec`'s coin-flip continuation).
    pub fn from_bytes(data: &[u8]) -> KvProgram {
        let mut u = Unstructured::new(data);
        let mut byte = || u8::arbitrary(&mut u).unwrap_or(0);
        let (layers, kv_heads, capacity, head_dim) = (byte(), byte(), byte(), byte());
        KvProgram {
            layers,
            kv_heads,
            capacity,
            head_dim,
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
    let shape = KvShape {
        layers: usize::from(p.layers % 4),
        kv_heads: usize::from(p.kv_heads % 4),
        capacity: usize::from(p.capacity % 17),
        head_dim: usize::from(p.head_dim % 5),
    };
    let floats = shape.floats().expect("small shapes do not overflow");
    let (mut k, mut v) = (vec![0f32; floats], vec![0f32; floats]);
    let mut cache = KvCache::new(shape);
    let zeros = || vec![vec![vec![0f32; shape.head_dim]; shape.capacity]; shape.kv_heads];
    let mut model = KvModel {
        k: (0..shape.layers).map(|_| zeros()).collect(),
        v: (0..shape.layers).map(|_| zeros()).collect(),
        used: 0,
        frontier: 0,
    };
    let row = shape.row_floats();
    // Every write carries fresh values, so a misplaced row cannot go unnoticed.
    let mut stamp = 1.0f32;
    let resolve = |pos: Pos, cache: &KvCache| match pos {
        Pos::Used => cache.used(),
        Pos::Frontier => cache.frontier(),
        Pos::At(x) => usize::from(x),
        Pos::Huge(x) => usize::MAX - usize::from(x),
    };

    for op in p.ops.iter().take(256) {
        match *op {
            KvOp::Prefill { .. } | KvOp::Step { .. } | KvOp::WrongStorage { .. } => {
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
                    _ => unreachable!(),
                };
                let layer = usize::from(layer % 5);
                let pos = resolve(pos, &cache);
                let len = |extra: i8| (n * row).saturating_add_signed(isize::from(extra));
                let (k_len, v_len) = (len(k_extra), len(v_extra));
                let rows: Vec<f32> = (0..k_len.max(v_len))
                    .map(|i| stamp + i as f32 / 1024.0)
                    .collect();
                stamp += 1.0;
                let (k_rows, v_rows) = (&rows[..k_len], &rows[..v_len]);

                let mut expect = Vec::new();
                if store_delta != 0 {
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

                let result = if store_delta != 0 {
                    let wrong = match floats.saturating_add_signed(isize::from(store_delta)) {
                        w if w == floats => floats + 1,
                        w => w,
                    };
                    let (mut sk, mut sv) = (vec![0f32; wrong], vec![0f32; wrong]);
                    let r = cache.write(
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
                        sk.iter().chain(&sv).all(|&x| x == 0.0),
                        "a refused write touched the storage"
                    );
                    r
                } else {
                    cache.write(
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
                match cache.view(&k, &v, layer, len) {
                    Ok((lk, lv)) => {
                        assert!(layer < shape.layers && len <= model.frontier);
                        assert_eq!(lk.len(), shape.layer_floats());
                        assert_eq!(lv.len(), shape.layer_floats());
                        for h in 0..shape.kv_heads {
                            let want_k: Vec<f32> =
                                model.k[layer][h][..len].iter().flatten().copied().collect();
                            let want_v: Vec<f32> =
                                model.v[layer][h][..len].iter().flatten().copied().collect();
                            assert_eq!(cache.head(lk, h, len), want_k.as_slice());
                            assert_eq!(cache.head(lv, h, len), want_v.as_slice());
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
        assert_eq!(k, KvModel::flat(&model.k), "K storage after {op:?}");
        assert_eq!(v, KvModel::flat(&model.v), "V storage after {op:?}");
        let info = cache.info();
        assert_eq!(info.bytes, 2 * floats * 4);
        assert_eq!(info.used_bytes, 2 * shape.layers * row * model.used * 4);
    }
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

/// A size: small, a power of two (products of a few of them overflow), or any u64.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Size {
    Small(u8),
    Pow2(u8),
    Any(u64),
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Small(x) => u64::from(x),
            Size::Pow2(x) => 1u64 << (x % 64),
            Size::Any(x) => x,
        }
    }
}

/// The fields of a config.json, to reach the size checks past the JSON syntax.
#[derive(Arbitrary, Clone, Debug)]
pub struct ConfigSizes {
    pub vocab: Size,
    pub hidden: Size,
    pub ffn: Size,
    pub layers: Size,
    pub heads: Size,
    pub kv_heads: Option<Size>,
    pub head_dim: Option<Size>,
    pub max_positions: Size,
    pub eps: f64,
    pub theta: Option<f64>,
    pub tied: bool,
    pub eos: Vec<u64>,
}

impl ConfigSizes {
    pub fn json(&self) -> String {
        let mut v = serde_json::json!({
            "model_type": "qwen2",
            "vocab_size": self.vocab.get(),
            "hidden_size": self.hidden.get(),
            "intermediate_size": self.ffn.get(),
            "num_hidden_layers": self.layers.get(),
            "num_attention_heads": self.heads.get(),
            "max_position_embeddings": self.max_positions.get(),
            "rms_norm_eps": self.eps,
            "tie_word_embeddings": self.tied,
            "eos_token_id": self.eos,
        });
        let o = v.as_object_mut().expect("an object");
        if let Some(k) = self.kv_heads {
            o.insert("num_key_value_heads".into(), k.get().into());
        }
        if let Some(h) = self.head_dim {
            o.insert("head_dim".into(), h.get().into());
        }
        if let Some(t) = self.theta {
            o.insert("rope_theta".into(), t.into());
        }
        v.to_string()
    }
}

/// Raw bytes, then [`ConfigSizes`] decoded from the same bytes, through [`Config::from_json`].
pub fn config_parse(data: &[u8]) {
    check_config(Config::from_json(data).ok());
    if let Ok(sizes) = ConfigSizes::arbitrary_take_rest(Unstructured::new(data)) {
        check_config(Config::from_json(sizes.json().as_bytes()).ok());
    }
}

/// An accepted config keeps its invariants, and every session it allows can be planned
/// without overflow.
fn check_config(c: Option<Config>) {
    let Some(c) = c else { return };
    for x in [
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.max_position_embeddings,
    ] {
        assert!((1..=1 << 24).contains(&x), "size {x} accepted in {c:?}");
    }
    assert_eq!(c.head_dim * c.num_attention_heads, c.hidden_size);
    assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0);
    assert!(c.head_dim > 0 && c.head_dim % 2 == 0);
    assert!(c.rms_norm_eps > 0.0 && c.rms_norm_eps.is_finite());
    assert!(c.rope_theta > 1.0 && c.rope_theta.is_finite());
    assert!(c.parameter_count().is_some());
    let kv_bytes = c
        .max_kv_cache_bytes()
        .expect("accepted configs bound the KV cache");
    for ctx in [1, 7, c.max_position_embeddings] {
        for threads in [1, 1024] {
            let opts = SessionOptions {
                ctx,
                threads,
                ..Default::default()
            };
            // Too large for memory is fine (that is Session::new's check); overflow is not
            // possible once the full-context KV cache fits in usize, short of the other
            // regions pushing the total over.
            if let Ok(plan) = Session::plan_for(&c, &opts) {
                if ctx == c.max_position_embeddings {
                    assert!(plan.total_bytes() >= kv_bytes);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

/// The tiny f32 fixture model: (config.json, model.safetensors).
pub fn tiny_model() -> &'static (Vec<u8>, Vec<u8>) {
    static TINY: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    TINY.get_or_init(|| {
        let dir = fixtures_dir().join("tiny-qwen2-f32");
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
        };
        (read("config.json"), read("model.safetensors"))
    })
}

/// One change to the tiny model.
#[derive(Arbitrary, Clone, Debug)]
pub enum StMutation {
    /// XOR a byte anywhere (offset taken modulo the length).
    FlipByte {
        at: u32,
        xor: u8,
    },
    /// XOR a byte of the length prefix or the JSON header.
    FlipHeaderByte {
        at: u16,
        xor: u8,
    },
    Truncate {
        keep: u32,
    },
    /// Replace the header length prefix.
    HeaderLen(u64),
    /// Set the dtype of the `tensor`-th entry (names sorted) to one of a list.
    Dtype {
        tensor: u8,
        dtype: u8,
    },
    Shape {
        tensor: u8,
        shape: Vec<u32>,
    },
    Offsets {
        tensor: u8,
        start: u32,
        end: u32,
    },
    Remove {
        tensor: u8,
    },
    /// Give the entry another entry's name (or a new one).
    Rename {
        tensor: u8,
        to: u8,
    },
    /// Set one config.json field.
    ConfigField {
        field: u8,
        value: i64,
    },
}

const ST_DTYPES: [&str; 14] = [
    "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
    "F8_E4M3",
];

const CONFIG_FIELDS: [&str; 9] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "head_dim",
    "eos_token_id",
];

/// Splits a safetensors file into (header JSON, data section), if the prefix is sane.
fn split_safetensors(bytes: &[u8]) -> Option<(serde_json::Map<String, serde_json::Value>, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    Some((header, &bytes[end..]))
}

fn join_safetensors(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).expect("a JSON map serializes");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Sets `field` of the header entry `name`, if that entry is an object.
fn set_field(
    h: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    field: &str,
    value: serde_json::Value,
) {
    if let Some(entry) = h.get_mut(name).and_then(|e| e.as_object_mut()) {
        entry.insert(field.into(), value);
    }
}

/// Applies `m` to (config.json, model.safetensors).
pub fn mutate_model(config: &mut Vec<u8>, st: &mut Vec<u8>, m: &StMutation) {
    let mut edit_header = |f: &mut dyn FnMut(&mut serde_json::Map<String, serde_json::Value>)| {
        if let Some((mut header, data)) = split_safetensors(st) {
            f(&mut header);
            *st = join_safetensors(&header, data);
        }
    };
    let nth = |h: &serde_json::Map<String, serde_json::Value>, i: u8| -> Option<String> {
        let names: Vec<&String> = h.keys().filter(|k| *k != "__metadata__").collect();
        (!names.is_empty()).then(|| names[usize::from(i) % names.len()].clone())
    };
    match m {
        StMutation::FlipByte { at, xor } => {
            if !st.is_empty() {
                let i = *at as usize % st.len();
                st[i] ^= xor;
            }
        }
        StMutation::FlipHeaderByte { at, xor } => {
            let header_end = st
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .map_or(0, |n| n.saturating_add(8).min(st.len() as u64) as usize);
            if header_end > 0 {
                st[usize::from(*at) % header_end] ^= xor;
            }
        }
        StMutation::Truncate { keep } => st.truncate(*keep as usize),
        StMutation::HeaderLen(n) => {
            if st.len() >= 8 {
                st[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
        StMutation::Dtype { tensor, dtype } => edit_header(&mut |h| {
            if let Some(name) = nth(h, *tensor) {
                set_field(
                    h,
                    &name,
                    "dtype",
                    ST_DTYPES[usize::from(*dtype) % ST_DTYPES.len()].into(),
                );
            }
        }),
        StMutation::Shape { tensor, shape } => edit_header(&mut |h| {
            if let Some(name) = nth(h, *tensor) {
                set_field(h, &name, "shape", shape.iter().take(6).copied().collect());
            }
        }),
        StMutation::Offsets { tensor, start, end } => edit_header(&mut |h| {
            if let Some(name) = nth(h, *tensor) {
                set_field(h, &name, "data_offsets", serde_json::json!([start, end]));
            }
        }),
        StMutation::Remove { tensor } => edit_header(&mut |h| {
            if let Some(name) = nth(h, *tensor) {
                h.remove(&name);
            }
        }),
        StMutation::Rename { tensor, to } => edit_header(&mut |h| {
            if let (Some(from), Some(other)) = (nth(h, *tensor), nth(h, *to)) {
                let entry = h.remove(&from).expect("present");
                let to = if from == other {
                    format!("{from}.renamed")
                } else {
                    other
                };
                h.insert(to, entry);
            }
        }),
        StMutation::ConfigField { field, value } => {
            if let Ok(serde_json::Value::Object(mut c)) = serde_json::from_slice(config) {
                let f = CONFIG_FIELDS[usize::from(*field) % CONFIG_FIELDS.len()];
                c.insert(f.into(), (*value).into());
                *config = serde_json::to_vec(&c).expect("a JSON map serializes");
            }
        }
    }
}

/// The [`StMutation`]s `data` decodes to (at most 16).
pub fn st_mutations(data: &[u8]) -> Vec<StMutation> {
    let mut ms = dense(&mut Unstructured::new(data));
    ms.truncate(16);
    ms
}

/// Raw bytes as model.safetensors beside the tiny model's config, then a list of
/// [`StMutation`]s decoded from the same bytes applied to the tiny model.
pub fn safetensors_load(data: &[u8]) {
    let (config, st) = tiny_model();
    check_weights(Weights::from_bytes(config, data.to_vec()));
    let (mut config, mut st) = (config.clone(), st.clone());
    for m in st_mutations(data) {
        mutate_model(&mut config, &mut st, &m);
    }
    check_weights(Weights::from_bytes(&config, st));
}

/// Accepted weights are internally consistent and run a forward pass without panicking
/// (their values may be garbage; errors are allowed, panics are not).
fn check_weights(w: Result<Weights, LoadError>) {
    let w = match w {
        Ok(w) => w,
        Err(e) => {
            // every refusal is explained in one line
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    let c = w.config.clone();
    let mut refs = vec![&w.embed_tokens, &w.norm, &w.lm_head];
    for l in &w.layers {
        refs.extend(l.tensors());
    }
    for t in refs {
        let elems: usize = t.shape.iter().product();
        assert_eq!(w.bytes(t).len(), elems * t.dtype.size(), "{t:?}");
    }
    for t in w.matrices() {
        assert!(matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16));
    }
    let opts = SessionOptions {
        ctx: 4.min(c.max_position_embeddings),
        threads: 1,
        ..Default::default()
    };
    let Ok(mut s) = Session::new(Arc::new(w), &opts) else {
        return;
    };
    let vocab = c.vocab_size as u32;
    let prompt = [0, vocab - 1];
    if s.prefill(&prompt[..opts.ctx.min(2)]).is_ok() {
        let mut sampler =
            Sampler::new(SamplerParams::default()).expect("default parameters are valid");
        if let Ok(t) = s.sample(&mut sampler) {
            assert!(t < vocab);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------

/// A small valid GGUF: qwen2 metadata, a tiny vocabulary, and one tensor of every type the
/// reader can dequantize.
pub fn tiny_gguf_builder() -> GgufBuilder {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut blocks = |ty: GgmlType, n: u64| -> Vec<u8> {
        let mut data: Vec<u8> = (0..ty.bytes_for(n).expect("whole blocks"))
            .map(|_| next() as u8)
            .collect();
        // keep the f16 scales finite and small (the first two bytes of every block)
        if ty.block_size() > 1 {
            for b in data.chunks_exact_mut(ty.type_size() as usize) {
                b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        data
    };
    let tokens = ["a", "b", "Ġ", "Ġa", "<|endoftext|>", "<|im_end|>"];
    let mut b = GgufBuilder::new()
        .kv("general.architecture", Value::String("qwen2".into()))
        .kv("qwen2.embedding_length", Value::U32(32))
        .kv("qwen2.feed_forward_length", Value::U32(64))
        .kv("qwen2.block_count", Value::U32(1))
        .kv("qwen2.attention.head_count", Value::U32(2))
        .kv("qwen2.attention.head_count_kv", Value::U32(1))
        .kv("qwen2.context_length", Value::U32(64))
        .kv("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .kv("qwen2.rope.freq_base", Value::F32(1e6))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .kv_strings("tokenizer.ggml.tokens", &tokens)
        .kv(
            "tokenizer.ggml.token_type",
            array_of(ValueType::I32, [1, 1, 1, 1, 3, 3].map(Value::I32).to_vec()),
        )
        .kv_strings("tokenizer.ggml.merges", &["Ġ a"])
        .kv("tokenizer.ggml.eos_token_id", Value::U32(5))
        .kv("tokenizer.chat_template", Value::String("{{ x }}".into()))
        .tensor(
            "token_embd.weight",
            &[32, 6],
            GgmlType::Q8_0,
            blocks(GgmlType::Q8_0, 32 * 6),
        );
    for (name, ty, n) in [
        ("blk.0.attn_norm.weight", GgmlType::F32, 32),
        ("blk.0.ffn_norm.weight", GgmlType::F16, 32),
        ("output_norm.weight", GgmlType::BF16, 32),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, 64),
        ("blk.0.attn_k.weight", GgmlType::Q5_0, 64),
        ("blk.0.ffn_up.weight", GgmlType::Q4K, 256),
        ("blk.0.ffn_gate.weight", GgmlType::Q5K, 256),
        ("blk.0.ffn_down.weight", GgmlType::Q6K, 256),
    ] {
        let data = if ty.block_size() == 1 {
            (0..n)
                .flat_map(|i| match ty {
                    GgmlType::F32 => (i as f32 / 7.0).to_le_bytes().to_vec(),
                    GgmlType::F16 => half::f16::from_f32(i as f32).to_le_bytes().to_vec(),
                    _ => half::bf16::from_f32(i as f32).to_le_bytes().to_vec(),
                })
                .collect()
        } else {
            blocks(ty, n)
        };
        b = b.tensor(name, &[n], ty, data);
    }
    b
}

/// The bytes of [`tiny_gguf_builder`].
pub fn tiny_gguf() -> Vec<u8> {
    tiny_gguf_builder().build()
}

/// One change to [`tiny_gguf`], at the builder level (counts, types, offsets, dims,
/// alignment) or on the bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum GgufMutation {
    TensorCount(u64),
    KvCount(u64),
    TensorType { tensor: u8, type_id: u32 },
    TensorOffset { tensor: u8, offset: u64 },
    Dims { tensor: u8, dims: Vec<u64> },
    Alignment(u32),
    Version(u32),
    DropData { tensor: u8, keep: u16 },
    FlipByte { at: u32, xor: u8 },
    Truncate { keep: u32 },
}

/// Builds [`tiny_gguf_builder`] with `ms` applied.
pub fn mutate_gguf(ms: &[GgufMutation]) -> Vec<u8> {
    let mut b = tiny_gguf_builder();
    let n = b.tensors.len();
    let mut byte_ops = Vec::new();
    for m in ms {
        match m {
            GgufMutation::TensorCount(c) => b.tensor_count_override = Some(*c),
            GgufMutation::KvCount(c) => b.kv_count_override = Some(*c),
            GgufMutation::TensorType { tensor, type_id } => {
                b.tensors[usize::from(*tensor) % n].type_id = *type_id % 64
            }
            GgufMutation::TensorOffset { tensor, offset } => {
                b.tensors[usize::from(*tensor) % n].offset_override = Some(*offset)
            }
            GgufMutation::Dims { tensor, dims } => {
                b.tensors[usize::from(*tensor) % n].dims = dims.iter().take(6).copied().collect()
            }
            GgufMutation::Alignment(a) => {
                b.kvs.retain(|(k, _)| k != "general.alignment");
                b.kvs.push(("general.alignment".into(), Value::U32(*a)));
                b.alignment = u64::from(*a).clamp(1, 4096);
            }
            GgufMutation::Version(v) => b.version = *v,
            GgufMutation::DropData { tensor, keep } => b.tensors[usize::from(*tensor) % n]
                .data
                .truncate(usize::from(*keep)),
            GgufMutation::FlipByte { .. } | GgufMutation::Truncate { .. } => byte_ops.push(m),
        }
    }
    let mut bytes = b.build();
    for m in byte_ops {
        match m {
            GgufMutation::FlipByte { at, xor } if !bytes.is_empty() => {
                let i = *at as usize % bytes.len();
                bytes[i] ^= xor;
            }
            GgufMutation::Truncate { keep } => bytes.truncate(*keep as usize),
            _ => {}
        }
    }
    bytes
}

/// The [`GgufMutation`]s `data` decodes to (at most 16).
pub fn gguf_mutations(data: &[u8]) -> Vec<GgufMutation> {
    let mut ms = dense(&mut Unstructured::new(data));
    ms.truncate(16);
    ms
}

/// Raw bytes, then [`GgufMutation`]s decoded from the same bytes, through the reader, the
/// dequantizers and the converter's metadata readers.
pub fn gguf_read(data: &[u8]) {
    check_gguf(data.to_vec());
    check_gguf(mutate_gguf(&gguf_mutations(data)));
}

fn check_gguf(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    let file = match GgufFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    let h = &file.header;
    assert!(h.alignment.is_power_of_two());
    assert_eq!(h.data_offset % h.alignment, 0);
    for t in &h.tensors {
        assert_eq!(file.tensor_bytes(t).len() as u64, t.n_bytes);
        assert!(h.data_offset + t.offset + t.n_bytes <= len);
        let _ = crate::model::convert::hf_tensor_name(&t.name);
        // the header vouches for the sizes, so dequantizing a supported type cannot fail
        if t.ty.can_dequantize() && t.n_elements <= 1 << 16 {
            let values = file
                .dequantize_tensor(&t.name)
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            assert_eq!(values.len() as u64, t.n_elements);
        }
    }
    let _ = crate::model::convert::config_json(h);
    let _ = crate::model::convert::tokenizer_json(h);
    let _ = crate::model::convert::tokenizer_config_json(h);
    let _ = crate::model::convert::generation_config_json(h);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// The real model's tokenizer.json, committed at `tests/fixtures/qwen2.5-coder-0.5b/`.
pub fn tokenizer_path() -> PathBuf {
    fixtures_dir().join("qwen2.5-coder-0.5b/tokenizer.json")
}

/// The tokenizer at [`tokenizer_path`], loaded once.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_file(&tokenizer_path()).unwrap_or_else(|e| panic!("{e}")))
}

/// Encodes `text` and decodes the ids: no error, the text comes back exactly as the
/// tokenizer's own normalizer gives it (NFC with the `tokenizers` crate's Unicode tables, as
/// in Hugging Face's tokenizer; an independent, newer NFC can order combining marks that older
/// tables do not know differently, which is what fuzz/regressions/tokenizer_roundtrip holds),
/// ASCII comes back unchanged, and streaming decode agrees with [`Tokenizer::decode`].
pub fn tokenizer_roundtrip(tok: &Tokenizer, text: &str) {
    let ids = tok
        .encode(text)
        .unwrap_or_else(|e| panic!("encode {text:?}: {e}"));
    let decoded = tok
        .decode(&ids)
        .unwrap_or_else(|e| panic!("decode {ids:?}: {e}"));
    let normalized = tok
        .normalize(text)
        .unwrap_or_else(|e| panic!("normalize {text:?}: {e}"));
    assert_eq!(decoded, normalized, "round trip of {text:?} via {ids:?}");
    if text.is_ascii() {
        assert_eq!(decoded, text, "ASCII round trip of {text:?} via {ids:?}");
    }
    let mut stream = tok.stream_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(stream.push(id));
    }
    streamed.push_str(stream.finish());
    assert_eq!(streamed, decoded, "streaming decode of {ids:?}");
}
