//! The tiny fixture model, mutated, through the validating safetensors loader and one forward pass.

use super::*;

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
        assert_eq!(w.bytes(t).len(), elems * t.dtype().size(), "{t:?}");
    }
    for t in w.matrices() {
        assert!(matches!(t.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16));
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
        s.set_sampler(SamplerParams::default())
            .expect("default parameters are valid");
        if let Ok(t) = s.sample() {
            assert!(t < vocab);
        }
    }
}
