//! `config.json`: the model's architecture ([`Arch`]: Qwen2, Qwen3, Qwen3-MoE) and shape, read in
//! the classic hub style (`rope_theta`, `torch_dtype` at the top level) or the newer one
//! (`rope_parameters.rope_theta`, `dtype`), then validated.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The architectures qwenrt runs, by `model_type` (and `architectures`) of config.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `qwen2` (`Qwen2ForCausalLM`): biases on q, k and v; `head_dim = hidden / heads`.
    Qwen2,
    /// `qwen3` (`Qwen3ForCausalLM`): no q/k/v bias, a per-head RMSNorm on q and k before RoPE,
    /// `head_dim` set in the config.
    Qwen3,
    /// `qwen3_moe` (`Qwen3MoeForCausalLM`): Qwen3's attention, and in the sparse layers a router
    /// over experts in place of the MLP ([`MoeConfig`]).
    Qwen3Moe,
}

impl Arch {
    /// Every architecture, for messages that list them.
    pub const ALL: [Arch; 3] = [Arch::Qwen2, Arch::Qwen3, Arch::Qwen3Moe];

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3_moe",
        }
    }

    /// config.json's `architectures` entry (the transformers class).
    pub fn class(self) -> &'static str {
        match self {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Qwen3Moe => "Qwen3MoeForCausalLM",
        }
    }

    /// GGUF's `general.architecture` (llama.cpp's name).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
        }
    }

    /// Whether q, k and v have biases (Qwen2).
    pub fn qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Whether q and k go through a per-head RMSNorm before RoPE (Qwen3).
    pub fn qk_norm(self) -> bool {
        self != Arch::Qwen2
    }

    fn from_model_type(t: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.model_type() == t)
    }

    fn from_class(c: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.class() == c)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// The mixture-of-experts part of a Qwen3-MoE config.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Experts per sparse layer (`num_experts`).
    pub num_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`, the top-k).
    pub experts_per_tok: usize,
    /// Width of each expert's SwiGLU hidden layer (`moe_intermediate_size`).
    pub moe_intermediate_size: usize,
    /// Whether the top-k routing probabilities are renormalized to sum to 1 (`norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Per layer: whether it is sparse (experts) rather than a dense MLP of
    /// `intermediate_size`. From `mlp_only_layers` and `decoder_sparse_step`, as transformers
    /// decides: layer `i` is sparse unless listed, and when `(i + 1) % decoder_sparse_step == 0`.
    pub sparse_layers: Vec<bool>,
}

/// How an embedding model pools its hidden states into one vector: llama.cpp's
/// `<arch>.pooling_type` (its converter writes it from a sentence-transformers model's pooling
/// module; Qwen3-Embedding's is [`Pooling::Last`]). qwenrt serves [`Pooling::Last`] only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// 0: no pooling (per-token vectors).
    None,
    /// 1: the mean over the tokens.
    Mean,
    /// 2: the first token's.
    Cls,
    /// 3: the last token's (Qwen3-Embedding).
    Last,
    /// 4: a reranker's classification head.
    Rank,
}

impl Pooling {
    /// The pooling of llama.cpp's `LLAMA_POOLING_TYPE_*` value `v` (`None` for another value).
    pub fn from_gguf(v: u64) -> Option<Pooling> {
        Some(match v {
            0 => Pooling::None,
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            4 => Pooling::Rank,
            _ => return None,
        })
    }

    /// The pooling a sentence-transformers model directory declares: its `modules.json` names a
    /// `...Pooling` module whose `config.json` sets `pooling_mode_lasttoken` (or `_mean_tokens`,
    /// `_cls_token`, or `pooling_mode`), as llama.cpp's converter reads it. `None` without
    /// `modules.json` or a pooling module in it.
    pub fn from_sentence_transformers(dir: &Path) -> Result<Option<Pooling>, ConfigError> {
        let read = |path: &Path| -> Result<Option<Value>, ConfigError> {
            let text = match std::fs::read(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ConfigError::Io(path.display().to_string(), e)),
            };
            serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| ConfigError::Invalid {
                    field: "modules.json",
                    why: format!("{} is not valid JSON: {e}", path.display()),
                })
        };
        let Some(modules) = read(&dir.join("modules.json"))? else {
            return Ok(None);
        };
        let module = modules.as_array().into_iter().flatten().find(|m| {
            m.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("Pooling"))
        });
        let Some(sub) = module.and_then(|m| m.get("path")).and_then(Value::as_str) else {
            return Ok(None);
        };
        let path = dir.join(sub).join("config.json");
        let Some(p) = read(&path)? else {
            return Err(ConfigError::Invalid {
                field: "modules.json",
                why: format!(
                    "names the pooling module {sub:?} but {} is missing",
                    path.display()
                ),
            });
        };
        let on = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mode = p.get("pooling_mode").and_then(Value::as_str);
        Ok(Some(
            if on("pooling_mode_lasttoken") || mode == Some("lasttoken") {
                Pooling::Last
            } else if on("pooling_mode_mean_tokens") || mode == Some("mean") {
                Pooling::Mean
            } else if on("pooling_mode_cls_token") || mode == Some("cls") {
                Pooling::Cls
            } else {
                return Err(ConfigError::Invalid {
                field: "modules.json",
                why: format!(
                    "{} sets no pooling mode qwenrt knows (pooling_mode_lasttoken, _mean_tokens, _cls_token)",
                    path.display()
                ),
            });
            },
        ))
    }

    /// llama.cpp's name for it (`none`, `mean`, `cls`, `last`, `rank`).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
            Pooling::Rank => "rank",
        }
    }
}

/// A validated model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The architecture.
    pub arch: Arch,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one attention head: `hidden_size / num_attention_heads` in Qwen2, config.json's
    /// `head_dim` in Qwen3 (where `num_attention_heads * head_dim` need not be `hidden_size`).
    pub head_dim: usize,
    /// Positions the model was trained for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Whether the output head shares the embedding's weights.
    pub tie_word_embeddings: bool,
    /// The checkpoint's declared dtype (`torch_dtype` or `dtype`), if any; informational only:
    /// the tensors' own dtypes decide.
    pub torch_dtype: Option<String>,
    /// Beginning-of-sequence token, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (config.json's `eos_token_id`, a number or a list).
    pub eos_token_ids: Vec<u32>,
    /// The experts of a Qwen3-MoE model (`None` for a dense one).
    pub moe: Option<MoeConfig>,
    /// The pooling of an embedding model, when the file says (a GGUF's `<arch>.pooling_type`;
    /// `None` from config.json, which has no such field).
    pub pooling: Option<Pooling>,
}

/// What is wrong with a config.json.
#[derive(Debug)]
pub enum ConfigError {
    /// A file could not be read: its path and the error.
    Io(String, std::io::Error),
    /// The JSON does not parse (the message says where).
    Json(String),
    /// A required field is absent.
    Missing(&'static str),
    /// A field whose value is out of range or inconsistent.
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io(p, e) => write!(f, "cannot read {p}: {e}"),
            ConfigError::Json(e) => write!(f, "config.json is not valid: {e}"),
            ConfigError::Missing(field) => write!(f, "config.json: missing field `{field}`"),
            ConfigError::Invalid { field, why } => write!(f, "config.json: `{field}` {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u64),
    Many(Vec<u64>),
}

#[derive(Deserialize, Default)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    attention_bias: Option<bool>,
    num_experts: Option<u64>,
    num_experts_per_tok: Option<u64>,
    moe_intermediate_size: Option<u64>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<u64>,
    mlp_only_layers: Option<Vec<u64>>,
    vocab_size: Option<u64>,
    hidden_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    max_position_embeddings: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    bos_token_id: Option<u64>,
    eos_token_id: Option<OneOrMany>,
}

fn positive(field: &'static str, v: Option<u64>) -> Result<usize, ConfigError> {
    let v = v.ok_or(ConfigError::Missing(field))?;
    if v == 0 {
        return Err(ConfigError::Invalid {
            field,
            why: "must be greater than 0".into(),
        });
    }
    // Cap every size so that products of a few of them cannot overflow 64 bits, and a config
    // cannot ask for absurd shapes.
    if v > (1 << 24) {
        return Err(ConfigError::Invalid {
            field,
            why: format!("is {v}, larger than 2^24"),
        });
    }
    Ok(v as usize)
}

fn token_id(field: &'static str, v: u64) -> Result<u32, ConfigError> {
    u32::try_from(v).map_err(|_| ConfigError::Invalid {
        field,
        why: format!("{v} is not a u32"),
    })
}

impl Config {
    /// Reads and validates `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read(path).map_err(|e| ConfigError::Io(path.display().to_string(), e))?;
        Config::from_json(&text)
    }

    /// Parses and validates config.json bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let arch = arch_of(&raw)?;
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(ConfigError::Invalid {
                    field: "hidden_act",
                    why: format!("is {act:?}; only \"silu\" is supported"),
                });
            }
        }
        let vocab_size = positive("vocab_size", raw.vocab_size)?;
        let hidden_size = positive("hidden_size", raw.hidden_size)?;
        let intermediate_size = positive("intermediate_size", raw.intermediate_size)?;
        let num_hidden_layers = positive("num_hidden_layers", raw.num_hidden_layers)?;
        let num_attention_heads = positive("num_attention_heads", raw.num_attention_heads)?;
        let num_key_value_heads = match raw.num_key_value_heads {
            None => num_attention_heads,
            v => positive("num_key_value_heads", v)?,
        };
        let head_dim = if arch == Arch::Qwen2 {
            // Qwen2's heads split the hidden size; a head_dim given must agree
            if hidden_size % num_attention_heads != 0 {
                return Err(ConfigError::Invalid {
                    field: "num_attention_heads",
                    why: format!(
                        "({num_attention_heads}) does not divide hidden_size ({hidden_size})"
                    ),
                });
            }
            let head_dim = hidden_size / num_attention_heads;
            if let Some(hd) = raw.head_dim {
                if hd as usize != head_dim {
                    return Err(ConfigError::Invalid {
                        field: "head_dim",
                        why: format!(
                            "is {hd}, but hidden_size / num_attention_heads is {head_dim}"
                        ),
                    });
                }
            }
            if head_dim % 2 != 0 {
                return Err(ConfigError::Invalid {
                    field: "num_attention_heads",
                    why: format!("gives an odd head_dim ({head_dim}); RoPE needs it even"),
                });
            }
            head_dim
        } else {
            // Qwen3 sets the head width itself (the 0.6B: hidden 1024, 16 heads of 128)
            let hd = positive("head_dim", raw.head_dim)?;
            if hd % 2 != 0 {
                return Err(ConfigError::Invalid {
                    field: "head_dim",
                    why: format!("is {hd}; RoPE needs it even"),
                });
            }
            if raw.attention_bias == Some(true) {
                return Err(ConfigError::Invalid {
                    field: "attention_bias",
                    why: format!("is true; {arch} models with attention biases are not supported"),
                });
            }
            hd
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ConfigError::Invalid {
                field: "num_key_value_heads",
                why: format!(
                    "({num_key_value_heads}) does not divide num_attention_heads ({num_attention_heads})"
                ),
            });
        }
        let moe = match arch {
            Arch::Qwen3Moe => Some(moe_config(&raw)?),
            _ => None,
        };
        let max_position_embeddings =
            positive("max_position_embeddings", raw.max_position_embeddings)?;
        let rms_norm_eps = raw
            .rms_norm_eps
            .ok_or(ConfigError::Missing("rms_norm_eps"))?;
        // checked as the f32 the model uses: 1e-50 is positive as f64 but 0 as f32
        if !((rms_norm_eps as f32).is_finite() && rms_norm_eps as f32 > 0.0) {
            return Err(ConfigError::Invalid {
                field: "rms_norm_eps",
                why: format!("is {rms_norm_eps}; must be a positive finite f32"),
            });
        }
        let rope_params = raw.rope_parameters.unwrap_or_default();
        if let Some(t) = rope_params.rope_type.as_deref() {
            if t != "default" {
                return Err(ConfigError::Invalid {
                    field: "rope_parameters.rope_type",
                    why: format!("is {t:?}; only \"default\" RoPE is supported"),
                });
            }
        }
        if let Some(s) = &raw.rope_scaling {
            if !s.is_null() {
                return Err(ConfigError::Invalid {
                    field: "rope_scaling",
                    why: "is set; RoPE scaling is not supported".into(),
                });
            }
        }
        let (rope_theta, theta_field) = match (raw.rope_theta, rope_params.rope_theta) {
            (Some(t), _) => (t, "rope_theta"),
            (None, Some(t)) => (t, "rope_parameters.rope_theta"),
            (None, None) => (10000.0, "rope_theta"),
        };
        if !((rope_theta as f32).is_finite() && rope_theta as f32 > 1.0) {
            return Err(ConfigError::Invalid {
                field: theta_field,
                why: format!("is {rope_theta}; must be a finite f32 above 1"),
            });
        }
        let eos_token_ids = match raw.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(v)) => vec![token_id("eos_token_id", v)?],
            Some(OneOrMany::Many(v)) => v
                .into_iter()
                .map(|x| token_id("eos_token_id", x))
                .collect::<Result<_, _>>()?,
        };
        let bos_token_id = raw
            .bos_token_id
            .map(|v| token_id("bos_token_id", v))
            .transpose()?;
        let config = Config {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id,
            eos_token_ids,
            moe,
            pooling: None,
        };
        config.parameter_count().ok_or(ConfigError::Invalid {
            field: "hidden_size",
            why: "and the other sizes multiply past usize".into(),
        })?;
        // Every --ctx the model allows must give an addressable KV cache, so that sizing a
        // session can only fail for lack of memory, never by overflow.
        config.max_kv_cache_bytes().ok_or(ConfigError::Invalid {
            field: "max_position_embeddings",
            why: format!(
                "({max_position_embeddings}) times num_hidden_layers ({num_hidden_layers}) and \
                 num_key_value_heads * head_dim ({}) gives a KV cache whose size overflows usize",
                config.kv_dim()
            ),
        })?;
        Ok(config)
    }

    /// Width of the K (and V) projection: `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Width of the Q projection and of the attention output: `num_attention_heads *
    /// head_dim` (the hidden size in Qwen2; not necessarily in Qwen3).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Whether decoder layer `layer` routes over experts (a Qwen3-MoE sparse layer) rather than
    /// running a dense MLP.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| m.sparse_layers.get(layer).copied().unwrap_or(false))
    }

    /// The widest hidden layer of any feed-forward block the model has: `intermediate_size`
    /// if a layer is dense, an expert's `moe_intermediate_size` if a layer is sparse.
    pub fn max_ffn(&self) -> usize {
        let dense = match &self.moe {
            None => true,
            Some(m) => m.sparse_layers.iter().any(|&sparse| !sparse),
        };
        let moe = self.moe.as_ref().map_or(0, |m| m.moe_intermediate_size);
        if dense {
            self.intermediate_size.max(moe)
        } else {
            moe
        }
    }

    /// Bytes of the f32 K and V caches at the full `max_position_embeddings`, or `None` if
    /// that overflows `usize`.
    pub fn max_kv_cache_bytes(&self) -> Option<usize> {
        (2 * std::mem::size_of::<f32>())
            .checked_mul(self.num_hidden_layers)?
            .checked_mul(self.kv_dim())?
            .checked_mul(self.max_position_embeddings)
    }

    /// Number of parameters, or `None` if it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        let h = self.hidden_size;
        let kv = self.kv_dim();
        let qd = self.num_attention_heads.checked_mul(self.head_dim)?;
        let f = self.intermediate_size;
        let embed = self.vocab_size.checked_mul(h)?;
        // q and o, k and v
        let attn = h
            .checked_mul(qd)?
            .checked_mul(2)?
            .checked_add(h.checked_mul(kv)?.checked_mul(2)?)?;
        let biases = if self.arch.qkv_bias() { qd + 2 * kv } else { 0 };
        let qk_norms = if self.arch.qk_norm() {
            2 * self.head_dim
        } else {
            0
        };
        let dense = h.checked_mul(f)?.checked_mul(3)?;
        let sparse = match &self.moe {
            Some(m) => h
                .checked_mul(m.moe_intermediate_size)?
                .checked_mul(3)?
                .checked_add(h)? // the router's row for the expert
                .checked_mul(m.num_experts)?,
            None => 0,
        };
        let mut layers = 0usize;
        for l in 0..self.num_hidden_layers {
            let mlp = if self.is_sparse(l) { sparse } else { dense };
            layers = layers
                .checked_add(attn)?
                .checked_add(mlp)?
                .checked_add(2 * h + biases + qk_norms)?;
        }
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed.checked_add(layers)?.checked_add(head)?.checked_add(h)
    }
}

/// The architecture config.json names: `model_type`, else the `architectures` class, else
/// Qwen2 (a bare config of the original format). Both given must agree.
fn arch_of(raw: &RawConfig) -> Result<Arch, ConfigError> {
    let supported = || {
        let names: Vec<String> = Arch::ALL
            .iter()
            .map(|a| format!("{:?}", a.model_type()))
            .collect();
        names.join(", ")
    };
    let by_type = match raw.model_type.as_deref() {
        None => None,
        Some(t) => Some(
            Arch::from_model_type(t).ok_or_else(|| ConfigError::Invalid {
                field: "model_type",
                why: format!("is {t:?}; supported: {}", supported()),
            })?,
        ),
    };
    let by_class = match raw.architectures.as_deref() {
        None | Some([]) => None,
        Some([c]) => Some(Arch::from_class(c).ok_or_else(|| ConfigError::Invalid {
            field: "architectures",
            why: format!(
                "is [{c:?}]; supported: {}",
                Arch::ALL.map(|a| format!("{:?}", a.class())).join(", ")
            ),
        })?),
        Some(many) => {
            return Err(ConfigError::Invalid {
                field: "architectures",
                why: format!("lists {} classes ({many:?}); expected one", many.len()),
            })
        }
    };
    match (by_type, by_class) {
        (Some(t), Some(c)) if t != c => Err(ConfigError::Invalid {
            field: "architectures",
            why: format!(
                "is [{:?}] but model_type is {:?}",
                c.class(),
                t.model_type()
            ),
        }),
        (t, c) => Ok(t.or(c).unwrap_or(Arch::Qwen2)),
    }
}

/// The experts of a `qwen3_moe` config, validated.
fn moe_config(raw: &RawConfig) -> Result<MoeConfig, ConfigError> {
    let num_experts = positive("num_experts", raw.num_experts)?;
    let experts_per_tok = positive("num_experts_per_tok", raw.num_experts_per_tok)?;
    if experts_per_tok > num_experts {
        return Err(ConfigError::Invalid {
            field: "num_experts_per_tok",
            why: format!("is {experts_per_tok}, more than num_experts ({num_experts})"),
        });
    }
    let moe_intermediate_size = positive("moe_intermediate_size", raw.moe_intermediate_size)?;
    let layers = raw.num_hidden_layers.unwrap_or(0) as usize;
    let step = match raw.decoder_sparse_step {
        None => 1,
        v => positive("decoder_sparse_step", v)?,
    };
    let dense = raw.mlp_only_layers.as_deref().unwrap_or(&[]);
    if let Some(&bad) = dense.iter().find(|&&l| l >= layers as u64) {
        return Err(ConfigError::Invalid {
            field: "mlp_only_layers",
            why: format!("lists layer {bad}; the model has {layers} (num_hidden_layers)"),
        });
    }
    let sparse_layers = (0..layers)
        .map(|i| !dense.contains(&(i as u64)) && (i + 1) % step == 0)
        .collect();
    Ok(MoeConfig {
        num_experts,
        experts_per_tok,
        moe_intermediate_size,
        // transformers' Qwen3MoeConfig default
        norm_topk_prob: raw.norm_topk_prob.unwrap_or(false),
        sparse_layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"{"model_type":"qwen2","vocab_size":512,"hidden_size":64,
        "intermediate_size":176,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"max_position_embeddings":256,"rms_norm_eps":1e-6,
        "rope_theta":10000.0,"tie_word_embeddings":false,"torch_dtype":"float32",
        "eos_token_id":2}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(CLASSIC).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn classic_style() {
        let c = Config::from_json(CLASSIC.as_bytes()).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.kv_dim(), 32);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn newer_style() {
        let mut v: serde_json::Value = serde_json::from_str(CLASSIC).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 1e6, "rope_type": "default"}),
        );
        o.insert("dtype".into(), "bfloat16".into());
        o.insert("eos_token_id".into(), serde_json::json!([2, 3]));
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_ids, vec![2, 3]);
    }

    /// Sizes whose parameter count fits but whose full-context KV cache overflows 64 bits.
    fn big_kv_config() -> String {
        let mut v: serde_json::Value = serde_json::from_str(CLASSIC).unwrap();
        for (k, x) in [
            ("hidden_size", 1u64 << 16),
            ("num_attention_heads", 1 << 9),
            ("num_key_value_heads", 1 << 9),
            ("num_hidden_layers", 1 << 24),
            ("max_position_embeddings", 1 << 24),
            ("intermediate_size", 1),
            ("vocab_size", 1),
        ] {
            v[k] = x.into();
        }
        v.to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (with("num_attention_heads", "0"), "num_attention_heads"),
            (with("num_attention_heads", "3"), "num_attention_heads"),
            (with("num_key_value_heads", "3"), "num_key_value_heads"),
            (with("hidden_size", "0"), "hidden_size"),
            (with("vocab_size", "1e300"), "config.json is not valid"),
            (with("vocab_size", "99999999999"), "vocab_size"),
            (with("rms_norm_eps", "-1"), "rms_norm_eps"),
            // positive as f64, but 0 or infinite as the f32 the model computes with
            (with("rms_norm_eps", "1e-50"), "rms_norm_eps"),
            (with("rms_norm_eps", "1e300"), "rms_norm_eps"),
            (with("rope_theta", "1e300"), "rope_theta"),
            (with("rope_theta", "1.00000001"), "rope_theta"),
            (with("model_type", "\"llama\""), "model_type"),
            (with("eos_token_id", "99999999999"), "eos_token_id"),
            (
                big_kv_config(),
                "gives a KV cache whose size overflows usize",
            ),
        ];
        for (json, needle) in cases {
            let e = Config::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should name {needle}");
        }
        let mut v: serde_json::Value = serde_json::from_str(CLASSIC).unwrap();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = Config::from_json(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `hidden_size`"), "{e}");
        assert!(Config::from_json(b"not json").is_err());
    }

    #[test]
    fn fixtures_parse() {
        let fixtures = [
            ("tiny-qwen2-f32", Arch::Qwen2, 16),
            ("tiny-qwen2-bf16-tied", Arch::Qwen2, 16),
            ("tiny-qwen3-f32-tied", Arch::Qwen3, 32),
            ("tiny-qwen3-moe-bf16", Arch::Qwen3Moe, 16),
        ];
        for (dir, arch, head_dim) in fixtures {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(dir)
                .join("config.json");
            let c = Config::from_file(&p).unwrap();
            assert_eq!(c.hidden_size, 64);
            assert_eq!(c.tie_word_embeddings, dir.contains("tied"));
            assert_eq!((c.arch, c.head_dim), (arch, head_dim), "{dir}");
            assert_eq!(c.q_dim(), 4 * head_dim, "{dir}");
            assert_eq!(c.moe.is_some(), arch == Arch::Qwen3Moe, "{dir}");
        }
    }

    #[test]
    fn architecture_from_model_type_or_class() {
        let qwen3 = |extra: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(CLASSIC).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("model_type");
            o.insert("head_dim".into(), 32.into());
            for (k, x) in extra.as_object().unwrap() {
                o.insert(k.clone(), x.clone());
            }
            Config::from_json(v.to_string().as_bytes())
        };
        let by_class = qwen3(serde_json::json!({"architectures": ["Qwen3ForCausalLM"]})).unwrap();
        assert_eq!((by_class.arch, by_class.head_dim), (Arch::Qwen3, 32));
        let by_type = qwen3(serde_json::json!({"model_type": "qwen3"})).unwrap();
        assert_eq!(by_type, by_class);
        // a bare config (neither) is the original Qwen2 format, where head_dim must agree
        let e = qwen3(serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("hidden_size / num_attention_heads is 16"), "{e}");
        let e = qwen3(serde_json::json!({"architectures": ["A", "B"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists 2 classes"), "{e}");
        // parameter count: q and o are heads * head_dim wide, no biases, two head norms
        let c = by_class;
        let (h, qd, kv, f) = (64, 128, 64, 176);
        let layer = 2 * h * qd + 2 * h * kv + 3 * h * f + 2 * h + 2 * 32;
        assert_eq!(c.parameter_count(), Some(512 * h * 2 + 2 * layer + h));
    }
}
