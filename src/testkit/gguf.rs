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

use crate::model::gguf::put_str;
pub use crate::model::gguf::put_value;

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

/// The GGUF name (llama.cpp's) of a Hugging Face tensor name of a Qwen2, Qwen3 or Qwen3-MoE
/// model (the inverse of [`crate::model::convert::hf_tensor_name`]), for `layers` layers. The
/// experts' projections have one GGUF tensor per layer, named here by qwenrt's stacked name
/// `model.layers.N.mlp.experts.{gate,up,down}_proj.weight`.
pub fn gguf_tensor_name(hf: &str, layers: usize) -> Option<String> {
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
        "output.weight".to_string(),
    ];
    for i in 0..layers {
        for t in [
            "attn_norm.weight",
            "attn_q.weight",
            "attn_q.bias",
            "attn_k.weight",
            "attn_k.bias",
            "attn_v.weight",
            "attn_v.bias",
            "attn_q_norm.weight",
            "attn_k_norm.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
            "ffn_gate_inp.weight",
            "ffn_gate_exps.weight",
            "ffn_up_exps.weight",
            "ffn_down_exps.weight",
        ] {
            names.push(format!("blk.{i}.{t}"));
        }
    }
    names
        .into_iter()
        .find(|g| crate::model::convert::hf_tensor_name(g).as_deref() == Some(hf))
}

/// `(layer, expert, projection)` of a hub-style expert tensor name
/// (`model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`).
fn expert_of(hf: &str) -> Option<(usize, usize, String)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("mlp.experts.")?;
    let (expert, rest) = rest.split_once('.')?;
    let proj = rest.strip_suffix(".weight")?;
    Some((layer.parse().ok()?, expert.parse().ok()?, proj.to_string()))
}

/// `x` (whole blocks of 32) as Q8_0 blocks, as ggml's reference quantizer makes them:
/// `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// `x` (whole blocks of 32) as Q4_0 blocks, as ggml's reference quantizer makes them: the
/// element of largest magnitude maps to -8, `d = max / -8`, `q = min(15, x / d + 8.5)`.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for b in x.chunks_exact(32) {
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        for j in 0..16 {
            out.push(q(b[j]) | (q(b[j + 16]) << 4));
        }
    }
    out
}

/// A GGUF in llama.cpp's naming holding the tensors of a Hugging Face Qwen2, Qwen3 or Qwen3-MoE
/// model (`config.json` bytes and a safetensors file of f32 or bf16 tensors): every matrix
/// whose rows are whole blocks of 32 in `ty` (Q8_0 or Q4_0; F32 keeps every tensor f32), the
/// rest in f32; each layer's experts stacked into one `ffn_{gate,up,down}_exps` tensor per
/// projection (`[experts, rows, cols]`), as llama.cpp's converter writes them; the config as
/// `{arch}.*` metadata. No tokenizer.
///
/// # Panics
/// On a malformed input model or a `ty` other than F32 / Q8_0 / Q4_0 (bugs in the calling test).
pub fn quantized_gguf_from_hf(config_json: &[u8], safetensors: &[u8], ty: GgmlType) -> Vec<u8> {
    quantized_gguf_builder_from_hf(config_json, safetensors, ty).build()
}

/// The builder behind [`quantized_gguf_from_hf`] (for mutating before it is built).
pub fn quantized_gguf_builder_from_hf(
    config_json: &[u8],
    safetensors: &[u8],
    ty: GgmlType,
) -> GgufBuilder {
    use crate::model::config::Arch;
    let c = crate::model::config::Config::from_json(config_json).expect("config");
    let st = safetensors::SafeTensors::deserialize(safetensors).expect("safetensors");
    let arch = c.arch.gguf_name();
    let k = |key: &str| format!("{arch}.{key}");
    let mut b = GgufBuilder::new()
        .kv("general.architecture", Value::String(arch.into()))
        .kv(&k("embedding_length"), Value::U32(c.hidden_size as u32))
        .kv(
            &k("feed_forward_length"),
            Value::U32(c.intermediate_size as u32),
        )
        .kv(&k("block_count"), Value::U32(c.num_hidden_layers as u32))
        .kv(
            &k("attention.head_count"),
            Value::U32(c.num_attention_heads as u32),
        )
        .kv(
            &k("attention.head_count_kv"),
            Value::U32(c.num_key_value_heads as u32),
        )
        .kv(
            &k("context_length"),
            Value::U32(c.max_position_embeddings as u32),
        )
        .kv(
            &k("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps),
        )
        .kv(&k("rope.freq_base"), Value::F32(c.rope_theta));
    if c.arch != Arch::Qwen2 {
        b = b
            .kv(&k("attention.key_length"), Value::U32(c.head_dim as u32))
            .kv(&k("attention.value_length"), Value::U32(c.head_dim as u32));
    }
    if let Some(m) = &c.moe {
        b = b
            .kv(&k("expert_count"), Value::U32(m.num_experts as u32))
            .kv(
                &k("expert_used_count"),
                Value::U32(m.experts_per_tok as u32),
            )
            .kv(
                &k("expert_feed_forward_length"),
                Value::U32(m.moe_intermediate_size as u32),
            );
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    /// A tensor's dims (fastest-first) and values.
    type Data = (Vec<u64>, Vec<f32>);
    // (gguf name, data) of every tensor to write
    let mut out: Vec<(String, Data)> = Vec::new();
    // the experts' tensors, by (layer, projection): (expert, data) of each
    let mut stacks: std::collections::BTreeMap<(usize, String), Vec<(usize, Data)>> =
        Default::default();
    for name in names {
        let t = st.tensor(&name).expect("tensor");
        let values: Vec<f32> = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("{name}: {other:?} (the builder reads f32 and bf16)"),
        };
        let dims: Vec<u64> = t.shape().iter().rev().map(|&d| d as u64).collect();
        if let Some((layer, expert, proj)) = expert_of(&name) {
            stacks
                .entry((layer, proj))
                .or_default()
                .push((expert, (dims, values)));
            continue;
        }
        let gname = gguf_tensor_name(&name, c.num_hidden_layers).expect("a Qwen tensor");
        out.push((gname, (dims, values)));
    }
    for ((layer, proj), mut experts) in stacks {
        experts.sort_by_key(|(e, _)| *e);
        let mut dims = experts[0].1 .0.clone();
        dims.push(experts.len() as u64);
        let values = experts.into_iter().flat_map(|(_, (_, v))| v).collect();
        let stacked = format!("model.layers.{layer}.mlp.experts.{proj}.weight");
        let gname = gguf_tensor_name(&stacked, c.num_hidden_layers).expect("an expert tensor");
        out.push((gname, (dims, values)));
    }
    for (gname, (dims, values)) in out {
        let matrix = dims.len() >= 2 && dims[0].is_multiple_of(32);
        let data = match ty {
            _ if !matrix => None,
            GgmlType::F32 => None,
            GgmlType::Q8_0 => Some(quantize_q8_0(&values)),
            GgmlType::Q4_0 => Some(quantize_q4_0(&values)),
            other => panic!("quantized_gguf_from_hf: no quantizer for {other:?}"),
        };
        b = match data {
            Some(data) => b.tensor(&gname, &dims, ty, data),
            None => b.tensor_f32(&gname, &dims, &values),
        };
    }
    b
}
