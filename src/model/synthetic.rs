//! Synthetic models for tests and benchmarks: a Qwen2 of any shape with seeded random weights,
//! written as a real model directory (config.json + model.safetensors) so it goes through the
//! same validating, memory-mapping loader as a downloaded model.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use qwenrt_kernels::Dtype;

/// The shape of a synthetic model.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticShape {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP's hidden layer.
    pub ffn: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// `max_position_embeddings` in the config.
    pub max_positions: usize,
    /// Whether the output head shares the embedding.
    pub tied: bool,
}

impl SyntheticShape {
    /// Qwen2.5-0.5B's shape.
    pub const QWEN2_5_0_5B: SyntheticShape = SyntheticShape {
        vocab: 151_936,
        hidden: 896,
        ffn: 4864,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        max_positions: 32_768,
        tied: true,
    };

    /// A small model for fast tests.
    pub const SMALL: SyntheticShape = SyntheticShape {
        vocab: 512,
        hidden: 64,
        ffn: 176,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        max_positions: 2048,
        tied: false,
    };

    /// Every tensor's name and shape, in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, kv) = (self.hidden, self.hidden / self.heads * self.kv_heads);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            t.push((format!("{p}.self_attn.q_proj.bias"), vec![h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![self.ffn, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![self.ffn, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, self.ffn]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    /// A classic hub-style config.json for this shape.
    pub fn config_json(&self) -> String {
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "eos_token_id": 2
        })
        .to_string()
    }
}

/// Writes config.json and model.safetensors for `shape` into `dir`, weights of `dtype` drawn
/// from a seeded generator (norm weights near 1, matrices scaled by 1/sqrt(fan_in)).
pub fn write_synthetic_model(
    dir: &Path,
    shape: SyntheticShape,
    dtype: Dtype,
    seed: u64,
) -> io::Result<()> {
    write_model(dir, shape, seed, &|_| dtype, false)
}

/// Like [`write_synthetic_model`], but each tensor in the format `format_of(name)` returns, and
/// every value drawn so that it is exact in f32, f16 and bf16 alike (rounded to bf16's 8
/// significant bits, magnitudes below f16's smallest normal, 2^-14, flushed to zero). Two models
/// written with the same seed and shape hold the same numbers whatever formats they use, so
/// they differ only in how the kernels read them.
pub fn write_synthetic_model_mixed(
    dir: &Path,
    shape: SyntheticShape,
    seed: u64,
    format_of: &dyn Fn(&str) -> Dtype,
) -> io::Result<()> {
    write_model(dir, shape, seed, format_of, true)
}

fn write_model(
    dir: &Path,
    shape: SyntheticShape,
    seed: u64,
    format_of: &dyn Fn(&str) -> Dtype,
    exact_everywhere: bool,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), shape.config_json())?;
    let tensors = shape.tensors();
    let st_dtype = |dtype: Dtype| match dtype {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dims) in &tensors {
        let dtype = format_of(name);
        let st_dtype = st_dtype(dtype);
        let bytes = dims.iter().product::<usize>() * dtype.size();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": dims, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    // written under a temporary name and renamed, so an interrupted write never looks complete
    let tmp = dir.join("model.safetensors.partial");
    let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut state = seed ^ 0x5851_f42d_4c95_7f2d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    for (name, dims) in &tensors {
        let is_norm = name.ends_with("layernorm.weight") || name == "model.norm.weight";
        let scale = if dims.len() == 2 {
            1.0 / (dims[1] as f32).sqrt()
        } else {
            0.1
        };
        let count: usize = dims.iter().product();
        let dtype = format_of(name);
        for _ in 0..count {
            let mut v = if is_norm {
                1.0 + 0.1 * next()
            } else {
                next() * scale * 1.7
            };
            if exact_everywhere {
                v = half::bf16::from_f32(v).to_f32();
                if v.abs() < f32::powi(2.0, -14) {
                    v = 0.0;
                }
            }
            match dtype {
                Dtype::F32 => out.write_all(&v.to_le_bytes())?,
                Dtype::F16 => out.write_all(&half::f16::from_f32(v).to_le_bytes())?,
                Dtype::BF16 => out.write_all(&half::bf16::from_f32(v).to_le_bytes())?,
            }
        }
    }
    out.flush()?;
    drop(out);
    std::fs::rename(tmp, dir.join("model.safetensors"))
}
