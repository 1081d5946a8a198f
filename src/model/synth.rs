//! Random-weight GGUF files of real Qwen shapes, for measuring any size against llama.cpp on the
//! very same file (`qwenrt synth`, `qwenrt bench --synthetic`).
//!
//! - [`SHAPES`]: the shapes, with their Hugging Face configs' values (below).
//! - [`SynthQuant`]: the tensor-type mix, as llama.cpp makes it: `q4_k_m` by llama-quantize's
//!   rules for `Q4_K_M`, `q8_0` by its rules for `Q8_0`, `bf16` as the converter writes
//!   `--outtype bf16` ([`SynthSpec::tensors`] says which).
//! - [`SynthSpec`]: a shape (optionally cut to its first `layers`), a mix and a seed; its
//!   [`tensors`](SynthSpec::tensors) and [`metadata`](SynthSpec::metadata) in llama.cpp's naming
//!   (`qwen2` / `qwen3` / `qwen3moe` keys, 3-D `ffn_*_exps` expert tensors), the tokenizer
//!   copied from another GGUF (the default model's) with its token list padded to the vocab
//!   as llama.cpp's converter pads it (`[PAD{id}]`, type UNUSED).
//! - [`write_synth_gguf`]: writes the file streaming, through
//!   [`GgufWriter`], under a temporary name renamed into place.
//!   The payload is seeded blocks generated directly in their format (no float quantization):
//!   finite f16 scales and quants of every value, sized so a weight's magnitude is about
//!   `1.7 / sqrt(fan_in)` (as [`crate::model::synthetic`] draws them) and norms near 1, so the
//!   activations stay finite through every layer. The bytes depend only on the spec and the
//!   seed (each piece of a tensor has its own generator), not on the threads writing them.
//!
//! The shapes (`hidden`, FFN width, layers, query heads, key/value heads, `head_dim`, vocab,
//! tied head; all have `rope_theta` 1e6 and `rms_norm_eps` 1e-6):
//!
//! | shape          | arch     | hidden | ffn   | layers | heads | kv | head_dim | vocab   | tied | max positions |
//! |----------------|----------|--------|-------|--------|-------|----|----------|---------|------|---------------|
//! | qwen2.5-0.5b   | qwen2    | 896    | 4864  | 24     | 14    | 2  | 64       | 151 936 | yes  | 32 768        |
//! | qwen2.5-1.5b   | qwen2    | 1536   | 8960  | 28     | 12    | 2  | 128      | 151 936 | yes  | 32 768        |
//! | qwen2.5-3b     | qwen2    | 2048   | 11008 | 36     | 16    | 2  | 128      | 151 936 | yes  | 32 768        |
//! | qwen2.5-7b     | qwen2    | 3584   | 18944 | 28     | 28    | 4  | 128      | 152 064 | no   | 32 768        |
//! | qwen2.5-14b    | qwen2    | 5120   | 13824 | 48     | 40    | 8  | 128      | 152 064 | no   | 32 768        |
//! | qwen3-0.6b     | qwen3    | 1024   | 3072  | 28     | 16    | 8  | 128      | 151 936 | yes  | 40 960        |
//! | qwen3-4b       | qwen3    | 2560   | 9728  | 36     | 32    | 8  | 128      | 151 936 | yes  | 40 960        |
//! | qwen3-8b       | qwen3    | 4096   | 12288 | 36     | 32    | 8  | 128      | 151 936 | no   | 40 960        |
//! | qwen3-14b      | qwen3    | 5120   | 17408 | 40     | 40    | 8  | 128      | 151 936 | no   | 40 960        |
//! | qwen3-30b-a3b  | qwen3moe | 2048   | 6144  | 48     | 32    | 4  | 128      | 151 936 | no   | 40 960        |
//!
//! qwen3-30b-a3b: every layer sparse, 128 experts, top 8, `moe_intermediate_size` 768,
//! `norm_topk_prob` true (llama.cpp's qwen3moe always renormalizes); its dense `ffn` (6144) is
//! written as `feed_forward_length`, as the converter does, but no layer uses it.

use std::fmt;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::model::config::Arch;
use crate::model::convert::token_type;
use crate::model::gguf::{Array, GgmlType, GgufHeader, GgufWriter, TensorSpec, Value};

/// The experts of a MoE shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    /// Experts per layer (`expert_count`).
    pub experts: usize,
    /// Experts each token is routed to (`expert_used_count`).
    pub experts_used: usize,
    /// Each expert's FFN width (`moe_intermediate_size`).
    pub expert_ffn: usize,
}

/// A model shape: the values of its Hugging Face config (the table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthShape {
    /// The name `qwenrt synth` takes (`qwen2.5-7b`).
    pub name: &'static str,
    /// The architecture.
    pub arch: Arch,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of a dense MLP.
    pub ffn: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab: usize,
    /// Whether the output head is the embedding (no `output.weight`).
    pub tied: bool,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// The experts, for a MoE shape (then every layer is sparse).
    pub moe: Option<MoeShape>,
}

const fn dense(
    name: &'static str,
    arch: Arch,
    [hidden, ffn, layers, heads, kv_heads, head_dim, vocab]: [usize; 7],
    tied: bool,
    max_positions: usize,
) -> SynthShape {
    SynthShape {
        name,
        arch,
        hidden,
        ffn,
        layers,
        heads,
        kv_heads,
        head_dim,
        vocab,
        tied,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-6,
        max_positions,
        moe: None,
    }
}

/// Every shape `qwenrt synth` writes (the table in the module docs).
pub const SHAPES: [SynthShape; 10] = {
    use Arch::{Qwen2, Qwen3};
    const V: usize = 151_936;
    const V7: usize = 152_064;
    [
        dense(
            "qwen2.5-0.5b",
            Qwen2,
            [896, 4864, 24, 14, 2, 64, V],
            true,
            32_768,
        ),
        dense(
            "qwen2.5-1.5b",
            Qwen2,
            [1536, 8960, 28, 12, 2, 128, V],
            true,
            32_768,
        ),
        dense(
            "qwen2.5-3b",
            Qwen2,
            [2048, 11008, 36, 16, 2, 128, V],
            true,
            32_768,
        ),
        dense(
            "qwen2.5-7b",
            Qwen2,
            [3584, 18944, 28, 28, 4, 128, V7],
            false,
            32_768,
        ),
        dense(
            "qwen2.5-14b",
            Qwen2,
            [5120, 13824, 48, 40, 8, 128, V7],
            false,
            32_768,
        ),
        dense(
            "qwen3-0.6b",
            Qwen3,
            [1024, 3072, 28, 16, 8, 128, V],
            true,
            40_960,
        ),
        dense(
            "qwen3-4b",
            Qwen3,
            [2560, 9728, 36, 32, 8, 128, V],
            true,
            40_960,
        ),
        dense(
            "qwen3-8b",
            Qwen3,
            [4096, 12288, 36, 32, 8, 128, V],
            false,
            40_960,
        ),
        dense(
            "qwen3-14b",
            Qwen3,
            [5120, 17408, 40, 40, 8, 128, V],
            false,
            40_960,
        ),
        SynthShape {
            arch: Arch::Qwen3Moe,
            moe: Some(MoeShape {
                experts: 128,
                experts_used: 8,
                expert_ffn: 768,
            }),
            ..dense(
                "qwen3-30b-a3b",
                Qwen3,
                [2048, 6144, 48, 32, 4, 128, V],
                false,
                40_960,
            )
        },
    ]
};

impl SynthShape {
    /// The shape called `name`.
    pub fn by_name(name: &str) -> Result<&'static SynthShape, SynthError> {
        SHAPES
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SynthError::UnknownShape(name.to_string()))
    }
}

/// The tensor-type mix of a synthetic file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthQuant {
    /// llama-quantize's `Q4_K_M`: Q4_K, with Q6_K for the output head and for `attn_v` and
    /// `ffn_down` in the layers its `use_more_bits` picks.
    Q4KM,
    /// llama-quantize's `Q8_0`: every matrix Q8_0.
    Q8_0,
    /// The converter's `--outtype bf16`: every matrix bf16.
    BF16,
}

impl SynthQuant {
    /// Every mix, for messages that list them.
    pub const ALL: [SynthQuant; 3] = [SynthQuant::Q4KM, SynthQuant::Q8_0, SynthQuant::BF16];

    /// The name `qwenrt synth --quant` takes.
    pub fn name(self) -> &'static str {
        match self {
            SynthQuant::Q4KM => "q4_k_m",
            SynthQuant::Q8_0 => "q8_0",
            SynthQuant::BF16 => "bf16",
        }
    }

    /// The mix called `name` (any case).
    pub fn by_name(name: &str) -> Result<SynthQuant, SynthError> {
        SynthQuant::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| SynthError::UnknownQuant(name.to_string()))
    }

    /// `general.file_type`: llama.cpp's `llama_ftype` (MOSTLY_Q4_K_M 15, MOSTLY_Q8_0 7,
    /// MOSTLY_BF16 32).
    pub fn file_type(self) -> u32 {
        match self {
            SynthQuant::Q4KM => 15,
            SynthQuant::Q8_0 => 7,
            SynthQuant::BF16 => 32,
        }
    }
}

/// Why a synthetic file cannot be made.
#[derive(Debug)]
pub enum SynthError {
    /// No shape of that name.
    UnknownShape(String),
    /// No mix of that name.
    UnknownQuant(String),
    /// `--layers` out of 1..=the shape's layers.
    Layers {
        /// The shape.
        shape: &'static str,
        /// The layers asked for.
        layers: usize,
    },
    /// The tokenizer's GGUF cannot give the tokenizer (a key missing or of the wrong type, or
    /// more tokens than the shape's vocab).
    Tokenizer(String),
    /// A file could not be written.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl fmt::Display for SynthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SynthError::UnknownShape(s) => write!(
                f,
                "unknown shape {s:?} (known: {})",
                SHAPES.map(|s| s.name).join(", ")
            ),
            SynthError::UnknownQuant(q) => write!(
                f,
                "unknown quant {q:?} (known: {})",
                SynthQuant::ALL.map(SynthQuant::name).join(", ")
            ),
            SynthError::Layers { shape, layers } => {
                let max = SynthShape::by_name(shape).map_or(0, |s| s.layers);
                write!(
                    f,
                    "--layers {layers}: {shape} has layers 1 to {max}, so --layers must be in 1..={max}"
                )
            }
            SynthError::Tokenizer(why) => write!(f, "tokenizer: {why}"),
            SynthError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for SynthError {}

/// What to write: a shape, its first `layers` layers, a tensor-type mix and a seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthSpec {
    /// The shape (with `layers` cut to the layers written).
    pub shape: SynthShape,
    /// The tensor-type mix.
    pub quant: SynthQuant,
    /// The seed of every weight.
    pub seed: u64,
}

/// llama-quantize's counts of the `attn_v` and `ffn_down` tensors seen so far.
#[derive(Default)]
struct Counters {
    attn_v: usize,
    ffn_down: usize,
}

/// `use_more_bits` of llama-quantize: the layers whose `attn_v` / `ffn_down` get more bits in
/// the `_M` mixes (the first and last eighth, and every third layer between).
pub fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer as i64 - (layers / 8) as i64) % 3 == 2
}

impl SynthSpec {
    /// The spec of shape `shape` (a name of [`SHAPES`]), cut to `layers` layers when given
    /// (1 to the shape's layers).
    pub fn new(
        shape: &str,
        quant: SynthQuant,
        layers: Option<usize>,
        seed: u64,
    ) -> Result<SynthSpec, SynthError> {
        let mut shape = *SynthShape::by_name(shape)?;
        if let Some(n) = layers {
            if n == 0 || n > shape.layers {
                return Err(SynthError::Layers {
                    shape: shape.name,
                    layers: n,
                });
            }
            shape.layers = n;
        }
        Ok(SynthSpec { shape, quant, seed })
    }

    /// The file name `qwenrt bench --synthetic` keeps it under: `{shape}[-{layers}L]-{quant}.gguf`
    /// (the layer count only when cut), with `-seed{S}` when the seed is not 1.
    pub fn file_name(&self) -> String {
        let full = SynthShape::by_name(self.shape.name).map_or(0, |s| s.layers);
        let layers = if self.shape.layers == full {
            String::new()
        } else {
            format!("-{}L", self.shape.layers)
        };
        let seed = if self.seed == 1 {
            String::new()
        } else {
            format!("-seed{}", self.seed)
        };
        format!(
            "{}{layers}-{}{seed}.gguf",
            self.shape.name,
            self.quant.name()
        )
    }

    /// Every tensor, in the order llama.cpp's converter writes a one-file Hugging Face model
    /// (its tensors by sorted Hugging Face name: `output`, `token_embd`, the layers in the
    /// string order of their numbers, 0, 1, 10, 11, ..., each layer's tensors in the order of
    /// their Hugging Face names, the experts merged where their last tensor comes,
    /// `output_norm`), with the type llama.cpp gives each in this mix:
    /// - vectors (norms, biases) and the router `ffn_gate_inp` stay f32 (the converter and
    ///   llama-quantize both keep them so);
    /// - `bf16`: every other matrix bf16;
    /// - `q8_0`: every other matrix Q8_0;
    /// - `q4_k_m`: Q4_K; the output head Q6_K (or the embedding, when tied; the untied
    ///   embedding stays Q4_K); `attn_v` and `ffn_down` Q6_K where [`use_more_bits`] says so,
    ///   counted as llama-quantize counts: the i-th `attn_v` (and, in a dense model, the i-th
    ///   `ffn_down`) in file order, the layer number of an `ffn_down_exps`. A matrix whose rows
    ///   are not whole blocks falls back as llama-quantize does: Q4_K to Q5_0, Q6_K to Q8_0
    ///   (Qwen2.5-0.5B's width, 896, is not a multiple of 256). llama-quantize's further rules
    ///   for models of exactly 8 experts do not apply to these shapes.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let s = &self.shape;
        let (h, v) = (s.hidden as u64, s.vocab as u64);
        let (qd, kvd, hd) = (
            (s.heads * s.head_dim) as u64,
            (s.kv_heads * s.head_dim) as u64,
            s.head_dim as u64,
        );
        // (name, dims), in file order
        let mut names: Vec<(String, Vec<u64>)> = Vec::new();
        if !s.tied {
            names.push(("output.weight".into(), vec![h, v]));
        }
        names.push(("token_embd.weight".into(), vec![h, v]));
        let mut layers: Vec<usize> = (0..s.layers).collect();
        layers.sort_by_key(|i| i.to_string());
        for i in layers {
            let b = |t: &str| format!("blk.{i}.{t}");
            let mut push = |t: &str, dims: Vec<u64>| names.push((b(t), dims));
            // Hugging Face's order: input_layernorm, mlp.*, post_attention_layernorm, self_attn.*
            push("attn_norm.weight", vec![h]);
            match s.moe {
                Some(m) => {
                    let (e, f) = (m.experts as u64, m.expert_ffn as u64);
                    push("ffn_down_exps.weight", vec![f, h, e]);
                    push("ffn_gate_exps.weight", vec![h, f, e]);
                    push("ffn_up_exps.weight", vec![h, f, e]);
                    push("ffn_gate_inp.weight", vec![h, e]);
                }
                None => {
                    let f = s.ffn as u64;
                    push("ffn_down.weight", vec![f, h]);
                    push("ffn_gate.weight", vec![h, f]);
                    push("ffn_up.weight", vec![h, f]);
                }
            }
            push("ffn_norm.weight", vec![h]);
            if s.arch.qkv_bias() {
                push("attn_k.bias", vec![kvd]);
            }
            if s.arch.qk_norm() {
                push("attn_k_norm.weight", vec![hd]);
            }
            push("attn_k.weight", vec![h, kvd]);
            push("attn_output.weight", vec![qd, h]);
            if s.arch.qkv_bias() {
                push("attn_q.bias", vec![qd]);
            }
            if s.arch.qk_norm() {
                push("attn_q_norm.weight", vec![hd]);
            }
            push("attn_q.weight", vec![h, qd]);
            if s.arch.qkv_bias() {
                push("attn_v.bias", vec![kvd]);
            }
            push("attn_v.weight", vec![h, kvd]);
        }
        names.push(("output_norm.weight".into(), vec![h]));
        let mut counts = Counters::default();
        names
            .into_iter()
            .map(|(name, dims)| TensorSpec {
                ty: self.tensor_type(&name, &dims, &mut counts),
                name,
                dims,
            })
            .collect()
    }

    /// The type of tensor `name` of `dims` in this mix ([`SynthSpec::tensors`] says the rules),
    /// `counts` holding llama-quantize's counters of the tensors before it.
    fn tensor_type(&self, name: &str, dims: &[u64], counts: &mut Counters) -> GgmlType {
        if dims.len() < 2 || name.ends_with("_norm.weight") || name.contains("ffn_gate_inp") {
            return GgmlType::F32;
        }
        let n = self.shape.layers;
        let more_bits = if name.contains("attn_v.weight") {
            counts.attn_v += 1;
            use_more_bits(counts.attn_v - 1, n)
        } else if name.contains("ffn_down") {
            counts.ffn_down += 1;
            let layer = match self.shape.moe {
                // with experts, llama-quantize reads the layer from the name
                Some(_) => name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(0),
                None => counts.ffn_down - 1,
            };
            use_more_bits(layer, n)
        } else {
            false
        };
        let wanted = match self.quant {
            SynthQuant::BF16 => return GgmlType::BF16,
            SynthQuant::Q8_0 => GgmlType::Q8_0,
            SynthQuant::Q4KM => {
                let head =
                    name == "output.weight" || (self.shape.tied && name == "token_embd.weight");
                if head {
                    // the head is Q6_K, or Q8_0 when its rows are not whole 256-blocks
                    if !dims[0].is_multiple_of(GgmlType::Q6K.block_size()) {
                        GgmlType::Q8_0
                    } else {
                        GgmlType::Q6K
                    }
                } else if more_bits {
                    GgmlType::Q6K
                } else {
                    GgmlType::Q4K
                }
            }
        };
        // llama-quantize's fallback for rows that are not whole blocks of the type
        if dims[0].is_multiple_of(wanted.block_size()) {
            return wanted;
        }
        let fallback = match wanted {
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q6K => GgmlType::Q8_0,
            other => other,
        };
        if dims[0].is_multiple_of(fallback.block_size()) {
            fallback
        } else {
            GgmlType::F16
        }
    }

    /// Bytes of all tensor data (the file is this plus the header and padding).
    pub fn data_bytes(&self) -> u64 {
        self.tensors().iter().filter_map(TensorSpec::n_bytes).sum()
    }

    /// The metadata, in llama.cpp's naming: `general.*` (architecture, name, `file_type`,
    /// `quantization_version` 2), the shape as `{arch}.*` keys, then every `tokenizer.*` key of
    /// `tokenizer` (a GGUF's header: the default model's), its token list and token types
    /// padded to the vocab with `[PAD{id}]` tokens of type UNUSED, as llama.cpp's converter
    /// pads a vocab larger than the tokenizer's.
    pub fn metadata(&self, tokenizer: &GgufHeader) -> Result<Vec<(String, Value)>, SynthError> {
        let s = &self.shape;
        let arch = s.arch.gguf_name();
        let k = |key: &str| format!("{arch}.{key}");
        let u = |x: usize| Value::U32(x as u32);
        let mut m: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.type".into(), Value::String("model".into())),
            (
                "general.name".into(),
                Value::String(format!("qwenrt synthetic {} (random weights)", s.name)),
            ),
            (k("block_count"), u(s.layers)),
            (k("context_length"), u(s.max_positions)),
            (k("embedding_length"), u(s.hidden)),
            (k("feed_forward_length"), u(s.ffn)),
            (k("attention.head_count"), u(s.heads)),
            (k("attention.head_count_kv"), u(s.kv_heads)),
            (k("rope.freq_base"), Value::F32(s.rope_theta)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(s.rms_eps)),
        ];
        if s.arch != Arch::Qwen2 {
            m.push((k("attention.key_length"), u(s.head_dim)));
            m.push((k("attention.value_length"), u(s.head_dim)));
        }
        if let Some(e) = s.moe {
            m.push((k("expert_count"), u(e.experts)));
            m.push((k("expert_used_count"), u(e.experts_used)));
            m.push((k("expert_feed_forward_length"), u(e.expert_ffn)));
        }
        m.push((
            "general.file_type".into(),
            Value::U32(self.quant.file_type()),
        ));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        let bad = |why: String| SynthError::Tokenizer(why);
        let mut has_tokens = false;
        for (key, value) in &tokenizer.metadata {
            if !key.starts_with("tokenizer.") {
                continue;
            }
            let value = match key.as_str() {
                "tokenizer.ggml.tokens" => {
                    has_tokens = true;
                    let tokens = value
                        .as_array()
                        .and_then(Array::as_strings)
                        .ok_or_else(|| {
                            bad("tokenizer.ggml.tokens is not an array of strings".into())
                        })?;
                    if tokens.len() > s.vocab {
                        return Err(bad(format!(
                            "tokenizer.ggml.tokens has {} tokens, more than {}'s vocab of {}",
                            tokens.len(),
                            s.name,
                            s.vocab
                        )));
                    }
                    let mut tokens = tokens.to_vec();
                    tokens.extend((tokens.len()..s.vocab).map(|i| format!("[PAD{i}]")));
                    Value::Array(Array::String(tokens))
                }
                "tokenizer.ggml.token_type" => {
                    let types = value
                        .as_array()
                        .and_then(Array::to_i64s)
                        .ok_or_else(|| bad("tokenizer.ggml.token_type is not integers".into()))?;
                    if types.len() > s.vocab {
                        return Err(bad(format!(
                            "tokenizer.ggml.token_type has {} entries, more than the vocab of {}",
                            types.len(),
                            s.vocab
                        )));
                    }
                    let mut types: Vec<i32> = types.iter().map(|&t| t as i32).collect();
                    types.resize(s.vocab, token_type::UNUSED as i32);
                    Value::Array(Array::I32(types))
                }
                _ => value.clone(),
            };
            m.push((key.clone(), value));
        }
        if !has_tokens {
            return Err(bad("the GGUF has no tokenizer.ggml.tokens".into()));
        }
        Ok(m)
    }
}

/// Bytes per generated piece of a tensor: each piece has its own generator (seeded by the
/// spec's seed, the tensor's index and the piece's), so pieces are made in parallel and the
/// bytes do not depend on the threads.
const PIECE_BYTES: usize = 1 << 20;
/// Pieces generated in parallel before they are written.
const PIECES_PER_WINDOW: usize = 16;

/// splitmix64: a small, fast generator whose every seed gives a good stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, tensor: usize, piece: usize) -> Rng {
        let mut r = Rng(seed ^ 0x517c_c1b7_2722_0a95);
        r.0 ^= r.next().wrapping_add(tensor as u64);
        r.0 ^= r.next().wrapping_add((piece as u64) << 32);
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Random bytes into `out`.
    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let last = self.next().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }

    /// An integer in `lo..=hi`.
    fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Fill {
    /// Norm weights: `1 + 0.1 u`.
    Norm,
    /// Biases: `0.1 u`.
    Bias,
    /// Matrices: `amp * u`, `amp = 1.7 / sqrt(fan_in)` (or blocks of about that magnitude).
    Matrix(f32),
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Fills `out` (whole blocks of `ty`) with random blocks whose values lie within about
/// `[-amp, amp]`: finite f16 scales, every quant value allowed by the format.
fn fill_blocks(ty: GgmlType, fill: Fill, rng: &mut Rng, out: &mut [u8]) {
    let value = |rng: &mut Rng| match fill {
        Fill::Norm => 1.0 + 0.1 * rng.uniform(),
        Fill::Bias => 0.1 * rng.uniform(),
        Fill::Matrix(amp) => amp * rng.uniform(),
    };
    let amp = match fill {
        Fill::Matrix(amp) => amp,
        _ => 0.1,
    };
    let ts = ty.type_size() as usize;
    match ty {
        GgmlType::F32 => out
            .chunks_exact_mut(4)
            .for_each(|b| b.copy_from_slice(&value(rng).to_le_bytes())),
        GgmlType::F16 => out
            .chunks_exact_mut(2)
            .for_each(|b| b.copy_from_slice(&f16_bytes(value(rng)))),
        GgmlType::BF16 => out
            .chunks_exact_mut(2)
            .for_each(|b| b.copy_from_slice(&half::bf16::from_f32(value(rng)).to_le_bytes())),
        // d (f16), then 32 signed quants: d * q
        GgmlType::Q8_0 => out.chunks_exact_mut(ts).for_each(|b| {
            b[..2].copy_from_slice(&f16_bytes(amp / 127.0));
            rng.fill(&mut b[2..]);
        }),
        // d (f16), 4 bytes of high bits, 16 bytes of nibbles: d * (q - 16), q in 0..32
        GgmlType::Q5_0 => out.chunks_exact_mut(ts).for_each(|b| {
            b[..2].copy_from_slice(&f16_bytes(amp / 16.0));
            rng.fill(&mut b[2..]);
        }),
        // d, dmin (f16), 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes
        // of nibbles: d * sc * q - dmin * m. Scales in 16..=31 and m = round(sc * 7.5 / 6)
        // with dmin = 6 d centre each sub-block on 0.
        GgmlType::Q4K => out.chunks_exact_mut(ts).for_each(|b| {
            let d = half::f16::from_f32(amp / (23.5 * 7.5));
            let dmin = half::f16::from_f32(d.to_f32() * 6.0);
            b[..2].copy_from_slice(&d.to_le_bytes());
            b[2..4].copy_from_slice(&dmin.to_le_bytes());
            let sc: [u8; 8] = std::array::from_fn(|_| rng.int(16, 31) as u8);
            let m: [u8; 8] = sc.map(|s| (f32::from(s) * 7.5 / 6.0).round() as u8);
            let scales = &mut b[4..16];
            for j in 0..4 {
                scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
                scales[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
                scales[j + 8] = (sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4);
            }
            rng.fill(&mut b[16..]);
        }),
        // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed scales, d (f16):
        // d * scale * (q - 32), q in 0..64
        GgmlType::Q6K => out.chunks_exact_mut(ts).for_each(|b| {
            rng.fill(&mut b[..192]);
            for s in &mut b[192..208] {
                *s = rng.int(16, 31) as u8;
            }
            b[208..].copy_from_slice(&f16_bytes(amp / (23.5 * 32.0)));
        }),
        other => unreachable!("the synth mixes never choose {other:?}"),
    }
}

/// Writes the synthetic model `spec` to `path`, the tokenizer taken from `tokenizer` (a GGUF
/// header: the default model's), streaming: at most a window of 16 pieces of
/// 1 MiB is held at once, generated in parallel on rayon's pool. Written to
/// `{path}.partial-{pid}` and renamed into place, so an interrupted write never leaves a
/// complete-looking file.
pub fn write_synth_gguf(
    path: &Path,
    spec: &SynthSpec,
    tokenizer: &GgufHeader,
) -> Result<(), SynthError> {
    let metadata = spec.metadata(tokenizer)?;
    let tensors = spec.tensors();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SynthError::Io { path: p, source }
    };
    let result = (|| -> io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &metadata, &tensors)?;
        for (index, t) in tensors.iter().enumerate() {
            write_tensor(&mut w, spec.seed, index, t)?;
        }
        let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Generates and writes tensor number `index` (`t`).
fn write_tensor<W: io::Write>(
    w: &mut GgufWriter<W>,
    seed: u64,
    index: usize,
    t: &TensorSpec,
) -> io::Result<()> {
    let fill = if t.name.ends_with("norm.weight") {
        Fill::Norm
    } else if t.dims.len() == 1 {
        Fill::Bias
    } else {
        Fill::Matrix(1.7 / (t.dims[0] as f32).sqrt())
    };
    let ts = t.ty.type_size() as usize;
    let total = t.n_bytes().expect("the specs' rows are whole blocks") as usize;
    // whole blocks per piece
    let piece = (PIECE_BYTES / ts).max(1) * ts;
    let pieces = total.div_ceil(piece);
    let mut start = 0;
    while start < pieces {
        let end = (start + PIECES_PER_WINDOW).min(pieces);
        let bufs: Vec<Vec<u8>> = (start..end)
            .into_par_iter()
            .map(|p| {
                let len = piece.min(total - p * piece);
                let mut buf = vec![0u8; len];
                fill_blocks(t.ty, fill, &mut Rng::new(seed, index, p), &mut buf);
                buf
            })
            .collect();
        for b in &bufs {
            w.write(b)?;
        }
        start = end;
    }
    Ok(())
}
