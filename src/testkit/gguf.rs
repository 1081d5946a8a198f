//! Builders of GGUF bytes for tests and fuzz targets.

use crate::model::gguf::{Array, GgmlType, Value, ValueType, GGUF_MAGIC};

/// Writes GGUF bytes. By default the output is a valid file: tensor offsets are assigned
/// in order, aligned, and the data section is padded. The `raw_*` hooks and the public
/// fields allow building hostile files.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<BuilderTensor>,
    /// When set, written instead of the real tensor count.
    pub tensor_count_override: Option<u64>,
    /// When set, written instead of the real metadata count.
    pub kv_count_override: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct BuilderTensor {
    pub name: String,
    pub dims: Vec<u64>,
    /// Raw ggml type id (so unknown ids can be written).
    pub type_id: u32,
    pub data: Vec<u8>,
    /// When set, written instead of the computed offset.
    pub offset_override: Option<u64>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            alignment: crate::model::gguf::DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
            tensor_count_override: None,
            kv_count_override: None,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (no type id).
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&a.elem_type().id().to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for it in a.values() {
                put_value(out, &it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Convenience: an array of strings.
    pub fn kv_strings(self, key: &str, items: &[&str]) -> Self {
        let items = items.iter().map(|s| s.to_string()).collect();
        self.kv(key, Value::Array(Array::String(items)))
    }

    /// Adds a tensor with its raw bytes (dims fastest-first, as GGUF stores them).
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push(BuilderTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id: ty.id(),
            data,
            offset_override: None,
        });
        self
    }

    /// Adds an f32 tensor.
    pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    /// The GGUF bytes.
    pub fn build(&self) -> Vec<u8> {
        let a = self.alignment.max(1) as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        let tc = self
            .tensor_count_override
            .unwrap_or(self.tensors.len() as u64);
        let kc = self.kv_count_override.unwrap_or(self.kvs.len() as u64);
        out.extend_from_slice(&tc.to_le_bytes());
        out.extend_from_slice(&kc.to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offsets = Vec::new();
        let mut next = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            let off = t.offset_override.unwrap_or(next as u64);
            out.extend_from_slice(&off.to_le_bytes());
            offsets.push(next);
            next = (next + t.data.len()).div_ceil(a) * a;
        }
        while out.len() % a != 0 {
            out.push(0);
        }
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// A `Value::Array` of `elem_type` from loose values, for [`GgufBuilder::kv`].
///
/// # Panics
/// If an item does not have type `elem_type` (a bug in the calling test).
pub fn array_of(elem_type: ValueType, items: Vec<Value>) -> Value {
    Value::Array(
        Array::from_values(elem_type, items).expect("array_of: items must all be elem_type"),
    )
}
