//! GGUF (Qwen2 family) to a Hugging Face style model directory.
//!
//! [`convert`] writes into the output directory:
//! - `model.safetensors`: every tensor dequantized exactly as ggml does, rounded to bf16
//!   (round to nearest even, NaN kept quiet), HF names and row-major shapes. Written streaming
//!   (header first, then tensor by tensor in windows of [`WINDOW_ELEMS`] elements dequantized
//!   in parallel), under a temporary name renamed into place at the end.
//! - `config.json` (classic hub style, `rope_theta` at top level), `generation_config.json`.
//! - `tokenizer.json` (official Qwen2 layout, rebuilt from the GGUF vocab and merges, and
//!   checked by loading it with `tokenizers`) and `tokenizer_config.json`.
//!
//! Every file is written to `NAME.tmp-PID` and renamed, so an interrupted conversion never
//! leaves a complete-looking but truncated file.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Map, Value as Json};

use crate::model::config::{Arch, Pooling};
use crate::model::gguf::{dequantize, GgufError, GgufFile, GgufHeader, TensorInfo, Value};

/// Elements dequantized per window (bounded memory: 4 MiB of f32 scratch spread over threads
/// plus 2 MiB of bf16 output per window).
pub const WINDOW_ELEMS: usize = 1 << 20;
/// Elements per parallel task within a window.
const TASK_ELEMS: usize = 1 << 14;

/// The Qwen2 pre-tokenizer split regex (official tokenizer.json).
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` values.
pub mod token_type {
    /// An ordinary token.
    pub const NORMAL: i64 = 1;
    /// The unknown token.
    pub const UNKNOWN: i64 = 2;
    /// A control token (special; not produced by encoding text).
    pub const CONTROL: i64 = 3;
    /// A token added by the user (special tokens such as `<|im_start|>`).
    pub const USER_DEFINED: i64 = 4;
    /// An unused slot.
    pub const UNUSED: i64 = 5;
    /// A byte-fallback token.
    pub const BYTE: i64 = 6;
}

#[derive(Debug)]
/// Why a GGUF file could not be converted.
pub enum ConvertError {
    /// The GGUF file itself is malformed.
    Gguf(GgufError),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Metadata that is present but unusable (wrong architecture, inconsistent vocab, ...).
    Metadata(String),
    /// A tensor this converter has no Hugging Face name for.
    UnknownTensor {
        /// The tensor's GGUF name.
        name: String,
    },
    /// The generated tokenizer.json does not load.
    Tokenizer(String),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Gguf(e) => write!(f, "{e}"),
            ConvertError::Io { path, source } => {
                write!(f, "convert: I/O error on {}: {source}", path.display())
            }
            ConvertError::Metadata(m) => write!(f, "convert: {m}"),
            ConvertError::UnknownTensor { name } => {
                write!(
                    f,
                    "convert: GGUF tensor {name:?} has no Hugging Face Qwen2 equivalent"
                )
            }
            ConvertError::Tokenizer(m) => {
                write!(f, "convert: generated tokenizer.json does not load: {m}")
            }
        }
    }
}

impl std::error::Error for ConvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConvertError::Gguf(e) => Some(e),
            ConvertError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<GgufError> for ConvertError {
    fn from(e: GgufError) -> Self {
        ConvertError::Gguf(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// f32 to bf16 bits, round to nearest even; NaN stays NaN (quiet bit set, sign kept).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    // For every non-NaN input this cannot overflow u32 (max 0xFF80_0000 + 0x8000).
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// The Hugging Face name of a GGUF Qwen2 / Qwen3 / Qwen3-MoE tensor (llama.cpp's naming), if it
/// has one. The stacked experts `blk.N.ffn_{gate,up,down}_exps` map to
/// `model.layers.N.mlp.experts.{gate,up,down}_proj.weight`, which the hub does not have (it
/// stores one tensor per expert): the loader splits them.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // Qwen3
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        // Qwen3-MoE: the router, and each projection of every expert stacked in one tensor
        // (`[experts, rows, cols]`; the loader splits it into the hub's one tensor per expert)
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" => "mlp.experts.gate_proj",
        "ffn_up_exps" => "mlp.experts.up_proj",
        "ffn_down_exps" => "mlp.experts.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Writes `bytes` to `dir/name` via a temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ConvertError> {
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let path = dir.join(name);
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

fn pretty(v: &Json) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("serializing a serde_json::Value cannot fail");
    s.push(b'\n');
    s
}

/// Converts the GGUF at `gguf` into a Hugging Face style directory `out_dir` (created if
/// needed). `progress(done, total)` is called with the bytes of bf16 tensor data written so
/// far and the total, after each window.
pub fn convert(
    gguf: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let file = GgufFile::open(gguf)?;
    let h = &file.header;
    let arch = h.get_str("general.architecture")?;
    if arch != "qwen2" {
        return Err(ConvertError::Metadata(format!(
            "{}: architecture {arch:?} is not supported (only qwen2; qwenrt runs qwen3 and \
             qwen3moe GGUF files as they are, without converting them)",
            gguf.display()
        )));
    }
    // Everything cheap is derived (and so validated) before anything is written, so bad
    // metadata fails before the long tensor write and leaves nothing behind.
    let tok = tokenizer_json(h)?;
    let tok_bytes = serde_json::to_vec(&tok).expect("serializing a serde_json::Value cannot fail");
    tokenizers::Tokenizer::from_bytes(&tok_bytes)
        .map_err(|e| ConvertError::Tokenizer(e.to_string()))?;
    let config = pretty(&config_json(h)?);
    let tok_config = pretty(&tokenizer_config_json(h)?);
    let gen_config = pretty(&generation_config_json(h)?);

    let created_dir = !out_dir.exists();
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    // config.json goes last: a directory without it is not a model, whatever else it holds.
    let small: [(&str, &[u8]); 4] = [
        ("tokenizer.json", &tok_bytes),
        ("tokenizer_config.json", &tok_config),
        ("generation_config.json", &gen_config),
        ("config.json", &config),
    ];
    let mut written: Vec<&str> = Vec::new();
    let mut result = write_safetensors(&file, &out_dir.join("model.safetensors"), progress);
    if result.is_ok() {
        written.push("model.safetensors");
        for (name, bytes) in small {
            result = write_atomic(out_dir, name, bytes);
            if result.is_err() {
                break;
            }
            written.push(name);
        }
    }
    if result.is_err() {
        // Leave no half-written model: remove what this run wrote (and the directory, if this
        // run made it).
        for name in written {
            let _ = fs::remove_file(out_dir.join(name));
        }
        if created_dir {
            let _ = fs::remove_dir(out_dir);
        }
    }
    result
}

/// Writes every tensor of `file` as bf16 safetensors at `path` (via `path.tmp-PID`).
pub fn write_safetensors(
    file: &GgufFile,
    path: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ConvertError> {
    let h = &file.header;
    // (hf name, gguf info), sorted by HF name so the header map order matches data order.
    let mut entries: Vec<(String, &TensorInfo)> = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let name = hf_tensor_name(&t.name).ok_or_else(|| ConvertError::UnknownTensor {
            name: t.name.clone(),
        })?;
        if !t.ty.can_dequantize() {
            return Err(ConvertError::Metadata(format!(
                "GGUF tensor {:?} is {:?}, which this converter cannot dequantize",
                t.name, t.ty
            )));
        }
        if usize::try_from(t.n_elements).is_err() {
            return Err(GgufError::DimsOverflow {
                tensor: t.name.clone(),
                dims: t.dims.clone(),
            }
            .into());
        }
        entries.push((name, t));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ConvertError::Metadata(format!(
            "two GGUF tensors map to {:?}",
            w[0].0
        )));
    }

    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, t) in &entries {
        let end = offset + 2 * t.n_elements;
        header.insert(
            name.clone(),
            json!({ "dtype": "BF16", "shape": t.row_major_shape(), "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let total = offset as usize;
    let mut header_bytes =
        serde_json::to_vec(&Json::Object(header)).expect("serializing JSON cannot fail");
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }

    let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
    let result = (|| {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp))?;
        w.write_all(&header_bytes).map_err(io_err(&tmp))?;
        let mut out = vec![0u8; 2 * WINDOW_ELEMS]; // bf16 bytes of one window
        let mut done = 0usize;
        progress(0, total);
        for (_, t) in &entries {
            let src = file.tensor_bytes(t);
            let (bs, ts) = (t.ty.block_size() as usize, t.ty.type_size() as usize);
            let n = t.n_elements as usize;
            let src_per_window = WINDOW_ELEMS / bs * ts;
            let src_per_task = TASK_ELEMS / bs * ts;
            for (w_idx, src_win) in src.chunks(src_per_window).enumerate() {
                let elems = (n - w_idx * WINDOW_ELEMS).min(WINDOW_ELEMS);
                let out_win = &mut out[..2 * elems];
                out_win
                    .par_chunks_mut(2 * TASK_ELEMS)
                    .zip(src_win.par_chunks(src_per_task))
                    .try_for_each_init(
                        || vec![0f32; TASK_ELEMS],
                        |scratch, (o, s)| -> Result<(), GgufError> {
                            let f = &mut scratch[..o.len() / 2];
                            dequantize(t.ty, s, f)?;
                            for (dst, &x) in o.chunks_exact_mut(2).zip(f.iter()) {
                                dst.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
                            }
                            Ok(())
                        },
                    )?;
                w.write_all(out_win).map_err(io_err(&tmp))?;
                done += out_win.len();
                progress(done, total);
            }
        }
        let f = w.into_inner().map_err(|e| ConvertError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(&tmp))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Shortest decimal form of an f32, as f64 (so 1e-6f32 is written as 1e-06, not 9.99e-07).
fn f32_json(x: f64) -> Json {
    let short: f64 = (x as f32).to_string().parse().unwrap_or(x);
    json!(short)
}

fn token_id_of(h: &GgufHeader, key: &str) -> Result<Option<u64>, ConvertError> {
    match h.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(h.get_u64(key)?)),
    }
}

/// `config.json` (classic hub style) from the `{arch}.*` metadata of a `qwen2`, `qwen3` or
/// `qwen3moe` GGUF (llama.cpp's keys). Qwen3's `head_dim` is `attention.key_length`; a
/// qwen3moe's experts are `expert_count`, `expert_used_count` and
/// `expert_feed_forward_length`, its router's top-k renormalized (`norm_topk_prob`, which
/// llama.cpp applies to every qwen3moe), and a layer without `ffn_gate_inp` a dense MLP
/// (`mlp_only_layers`).
pub fn config_json(h: &GgufHeader) -> Result<Json, ConvertError> {
    let arch_name = h.get_str("general.architecture")?;
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.gguf_name() == arch_name)
        .ok_or_else(|| {
            ConvertError::Metadata(format!(
                "general.architecture {arch_name:?} is not supported (supported: {})",
                Arch::ALL.map(Arch::gguf_name).join(", ")
            ))
        })?;
    let k = |s: &str| format!("{arch_name}.{s}");
    let optional = |key: &str| -> Result<Option<u64>, ConvertError> {
        match h.get(key) {
            Some(_) => Ok(Some(h.get_u64(key)?)),
            None => Ok(None),
        }
    };
    let hidden = h.get_u64(&k("embedding_length"))?;
    let heads = h.get_u64(&k("attention.head_count"))?;
    let kv_heads = optional(&k("attention.head_count_kv"))?.unwrap_or(heads);
    let layers = h.get_u64(&k("block_count"))?;
    let embd = h
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufError::MissingTensor {
            name: "token_embd.weight".into(),
        })?;
    if embd.dims.len() != 2 || embd.dims[0] != hidden {
        return Err(ConvertError::Metadata(format!(
            "token_embd.weight has dims {:?}, expected [{hidden}, vocab]",
            embd.dims
        )));
    }
    let vocab = embd.dims[1];
    let rope_theta = match h.get(&k("rope.freq_base")) {
        Some(_) => h.get_f64(&k("rope.freq_base"))?,
        None => 10000.0,
    };
    let tied = h.tensor("output.weight").is_none();
    let ffn = match (arch, optional(&k("feed_forward_length"))?) {
        (_, Some(f)) => f,
        // a qwen3moe GGUF need not say it: only dense layers have that width
        (Arch::Qwen3Moe, None) => h.get_u64(&k("expert_feed_forward_length"))?,
        (_, None) => h.get_u64(&k("feed_forward_length"))?,
    };
    let mut c = json!({
        "architectures": [arch.class()],
        "model_type": arch.model_type(),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": h.get_u64(&k("context_length"))?,
        "rms_norm_eps": f32_json(h.get_f64(&k("attention.layer_norm_rms_epsilon"))?),
        "rope_theta": f32_json(rope_theta),
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": tied,
        "use_cache": true,
        "use_sliding_window": false,
        "max_window_layers": layers,
        "attention_dropout": 0.0,
    });
    if arch != Arch::Qwen2 {
        let key_length = optional(&k("attention.key_length"))?;
        let value_length = optional(&k("attention.value_length"))?;
        let head_dim = key_length.or(value_length).unwrap_or(hidden / heads.max(1));
        if let (Some(kl), Some(vl)) = (key_length, value_length) {
            if kl != vl {
                return Err(ConvertError::Metadata(format!(
                    "{} is {kl} but {} is {vl}; qwenrt needs one head_dim",
                    k("attention.key_length"),
                    k("attention.value_length")
                )));
            }
        }
        c["head_dim"] = json!(head_dim);
        c["attention_bias"] = json!(false);
    }
    if arch == Arch::Qwen3Moe {
        let dense: Vec<u64> = (0..layers)
            .filter(|l| h.tensor(&format!("blk.{l}.ffn_gate_inp.weight")).is_none())
            .collect();
        c["num_experts"] = json!(h.get_u64(&k("expert_count"))?);
        c["num_experts_per_tok"] = json!(h.get_u64(&k("expert_used_count"))?);
        c["moe_intermediate_size"] = json!(h.get_u64(&k("expert_feed_forward_length"))?);
        c["norm_topk_prob"] = json!(true);
        c["decoder_sparse_step"] = json!(1);
        c["mlp_only_layers"] = json!(dense);
    }
    let obj = c.as_object_mut().expect("json! object");
    if let Some(bos) = token_id_of(h, "tokenizer.ggml.bos_token_id")? {
        obj.insert("bos_token_id".into(), json!(bos));
    }
    if let Some(eos) = token_id_of(h, "tokenizer.ggml.eos_token_id")? {
        obj.insert("eos_token_id".into(), json!(eos));
    }
    Ok(c)
}

/// The pooling an embedding model's GGUF names (`<arch>.pooling_type`, a llama.cpp
/// `LLAMA_POOLING_TYPE_*` value); `None` when the key is absent.
pub fn pooling(h: &GgufHeader) -> Result<Option<Pooling>, ConvertError> {
    let key = format!("{}.pooling_type", h.get_str("general.architecture")?);
    if h.get(&key).is_none() {
        return Ok(None);
    }
    let v = h.get_u64(&key)?;
    Pooling::from_gguf(v).map(Some).ok_or_else(|| {
        ConvertError::Metadata(format!(
            "{key} is {v}; llama.cpp's pooling types are 0 (none), 1 (mean), 2 (cls), 3 (last), 4 (rank)"
        ))
    })
}

/// The GGUF vocabulary: token strings and their types (NORMAL when types are absent).
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
}

fn vocab(h: &GgufHeader) -> Result<Vocab<'_>, ConvertError> {
    let tokens: Vec<&str> = h
        .get_array("tokenizer.ggml.tokens")?
        .as_strings()
        .ok_or_else(|| {
            ConvertError::Metadata("tokenizer.ggml.tokens is not an array of strings".into())
        })?
        .iter()
        .map(String::as_str)
        .collect();
    let types = match h.get("tokenizer.ggml.token_type") {
        None => vec![token_type::NORMAL; tokens.len()],
        Some(_) => h
            .get_array("tokenizer.ggml.token_type")?
            .to_i64s()
            .ok_or_else(|| {
                ConvertError::Metadata(
                    "tokenizer.ggml.token_type is not an array of integers".into(),
                )
            })?,
    };
    if types.len() != tokens.len() {
        return Err(ConvertError::Metadata(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            types.len(),
            tokens.len()
        )));
    }
    Ok(Vocab { tokens, types })
}

fn added_token_json(id: usize, content: &str, special: bool) -> Json {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// `tokenizer.json` in the official Qwen2 layout, from the GGUF vocab and merges.
pub fn tokenizer_json(h: &GgufHeader) -> Result<Json, ConvertError> {
    let model = h.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ConvertError::Metadata(format!(
            "tokenizer.ggml.model {model:?} is not supported (only gpt2 byte-level BPE)"
        )));
    }
    if let Some(pre) = h.get("tokenizer.ggml.pre") {
        let pre = pre.as_str().unwrap_or("");
        if pre != "qwen2" {
            return Err(ConvertError::Metadata(format!(
                "tokenizer.ggml.pre {pre:?} is not supported (only qwen2)"
            )));
        }
    }
    let v = vocab(h)?;
    let mut bpe_vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        match ty {
            token_type::CONTROL => added.push(added_token_json(id, tok, true)),
            token_type::USER_DEFINED => added.push(added_token_json(id, tok, false)),
            token_type::UNUSED => {}
            _ => {
                if bpe_vocab.insert(tok.to_string(), json!(id)).is_some() {
                    return Err(ConvertError::Metadata(format!(
                        "token {tok:?} appears twice in tokenizer.ggml.tokens (second at id {id})"
                    )));
                }
            }
        }
    }
    let merges = h
        .get_array("tokenizer.ggml.merges")?
        .as_strings()
        .ok_or_else(|| {
            ConvertError::Metadata("tokenizer.ggml.merges is not an array of strings".into())
        })?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let s = m.as_str();
            let mut parts = s.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
                _ => Err(ConvertError::Metadata(format!(
                    "tokenizer.ggml.merges[{i}] = {s:?} is not two tokens separated by one space"
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let post_processor = match added_around(h, &v)? {
        // llama.cpp's `add_bos_token` / `add_eos_token` (an embedding model's GGUF asks for its
        // end token after every text): what `encode` with special tokens adds around a text
        (bos, eos) if bos.is_some() || eos.is_some() => {
            let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
            let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
            let around = |inner: Vec<Json>| {
                let mut all: Vec<Json> = bos.iter().map(|(t, _)| special(t)).collect();
                all.extend(inner);
                all.extend(eos.iter().map(|(t, _)| special(t)));
                all
            };
            let mut specials = Map::new();
            for (t, id) in bos.iter().chain(eos.iter()) {
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
            json!({
                "type": "TemplateProcessing",
                "single": around(vec![seq("A")]),
                "pair": around(vec![seq("A"), seq("B")]),
                "special_tokens": specials,
            })
        }
        _ => byte_level.clone(),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "NFC" },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": { "Regex": QWEN2_SPLIT_REGEX },
                    "behavior": "Isolated",
                    "invert": false
                },
                byte_level
            ]
        },
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": bpe_vocab,
            "merges": merges
        }
    }))
}

/// The tokens (string, id) llama.cpp adds before and after a text: `tokenizer.ggml.bos_token_id`
/// when `tokenizer.ggml.add_bos_token`, the eos when `tokenizer.ggml.add_eos_token`.
type Added = Option<(String, u64)>;
fn added_around(h: &GgufHeader, v: &Vocab<'_>) -> Result<(Added, Added), ConvertError> {
    let token = |flag: &str, key: &str| -> Result<Added, ConvertError> {
        if !h.get(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let Some(id) = token_id_of(h, key)? else {
            return Err(ConvertError::Metadata(format!(
                "{flag} is true but {key} is absent"
            )));
        };
        match v.tokens.get(id as usize) {
            Some(t) => Ok(Some((t.to_string(), id))),
            None => Err(ConvertError::Metadata(format!(
                "{key} {id} is past the {} tokens of tokenizer.ggml.tokens",
                v.tokens.len()
            ))),
        }
    };
    Ok((
        token(
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
        )?,
        token(
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
        )?,
    ))
}

fn token_str<'a>(v: &Vocab<'a>, id: Option<u64>) -> Json {
    match id.and_then(|i| v.tokens.get(i as usize)) {
        Some(s) => json!(s),
        None => Json::Null,
    }
}

/// `tokenizer_config.json`: chat template, special tokens.
pub fn tokenizer_config_json(h: &GgufHeader) -> Result<Json, ConvertError> {
    let v = vocab(h)?;
    let bos = token_id_of(h, "tokenizer.ggml.bos_token_id")?;
    let eos = token_id_of(h, "tokenizer.ggml.eos_token_id")?;
    let pad = token_id_of(h, "tokenizer.ggml.padding_token_id")?;
    let mut decoder = Map::new();
    for (id, (&tok, &ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
            let mut t = added_token_json(id, tok, ty == token_type::CONTROL);
            t.as_object_mut().expect("object").remove("id");
            decoder.insert(id.to_string(), t);
        }
    }
    let add_bos = h
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut c = json!({
        "add_bos_token": add_bos,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": token_str(&v, bos),
        "eos_token": token_str(&v, eos),
        "pad_token": token_str(&v, pad.or(bos)),
        "unk_token": null,
        "clean_up_tokenization_spaces": false,
        "errors": "replace",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
    });
    let arch = h.get_str("general.architecture")?;
    if let Some(ctx) = h
        .get(&format!("{arch}.context_length"))
        .and_then(Value::as_u64)
    {
        c["model_max_length"] = json!(ctx);
    }
    if let Some(t) = h.get("tokenizer.chat_template") {
        let t = t.as_str().ok_or_else(|| {
            ConvertError::Metadata("tokenizer.chat_template is not a string".into())
        })?;
        c["chat_template"] = json!(t);
    }
    Ok(c)
}

/// `generation_config.json`: eos ids are the GGUF eos, then `<|endoftext|>` if distinct.
pub fn generation_config_json(h: &GgufHeader) -> Result<Json, ConvertError> {
    let v = vocab(h)?;
    let bos = token_id_of(h, "tokenizer.ggml.bos_token_id")?;
    let pad = token_id_of(h, "tokenizer.ggml.padding_token_id")?.or(bos);
    let mut eos: Vec<u64> = token_id_of(h, "tokenizer.ggml.eos_token_id")?
        .into_iter()
        .collect();
    if let Some(eot) = token_id_of(h, "tokenizer.ggml.eot_token_id")? {
        if !eos.contains(&eot) {
            eos.push(eot);
        }
    }
    if let Some(id) = v.tokens.iter().position(|&t| t == "<|endoftext|>") {
        if !eos.contains(&(id as u64)) {
            eos.push(id as u64);
        }
    }
    let mut c = json!({ "eos_token_id": eos, "do_sample": false });
    if let Some(b) = bos {
        c["bos_token_id"] = json!(b);
    }
    if let Some(p) = pad {
        c["pad_token_id"] = json!(p);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        // exactly halfway, even stays: 1 + 2^-8 -> 1.0
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
        // halfway with odd lower bit rounds up
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
        // just above halfway rounds up
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16_bits(-0.0), 0x8000);
        // largest finite f32 rounds to infinity
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7F80);
        // NaN stays NaN, even one whose payload lives only in the low bits
        let nan = f32::from_bits(0x7F80_0001);
        let b = f32_to_bf16_bits(nan);
        assert!(half::bf16::from_bits(b).is_nan(), "{b:#x}");
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0xFFC0_0000)), 0xFFC0);
        // agrees with the half crate on ordinary values
        for bits in (0..u32::MAX).step_by(65_537) {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                assert_eq!(
                    f32_to_bf16_bits(x),
                    half::bf16::from_f32(x).to_bits(),
                    "{bits:#x}"
                );
            }
        }
    }

    #[test]
    fn name_map() {
        assert_eq!(
            hf_tensor_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(
            hf_tensor_name("blk.12.attn_q.bias").unwrap(),
            "model.layers.12.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_tensor_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_tensor_name("blk.3.ffn_norm.weight").unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert!(hf_tensor_name("blk.x.attn_q.weight").is_none());
        assert!(hf_tensor_name("blk.1.attn_q.scale").is_none());
        assert!(hf_tensor_name("rope_freqs.weight").is_none());
    }
}
